"""Each HVX kernel (tinysd/hvx/*.c under qemu-hexagon) equals its plain reference on random cases: shapes beyond
the default model's (K not a multiple of 4, more than 32 output channels, broadcasting, strides, causal masks,
every input/output width), and the ops the default model does not exercise (scale, requantized upsample)."""
import numpy as np
import pytest

from tinysd.fixedpoint import accumulator_shift, quantize_multiplier
from tinysd.hvx import ops, runner
from tinysd.kernels import reference as R
from tinysd.kernels import weight_bound
from tinysd.kernels.norm import group_norm_reference, layer_norm_reference, prepare_norm
from tinysd.kernels.softmax import make_exp_table, softmax_reference
from tinysd.kernels.tables import apply_table_reference, make_table

DT = {8: np.uint8, 16: np.uint16}


def codes(rng, bits, shape):
    return rng.integers(0, 2**bits, shape).astype(DT[bits])


def rms(a, zp=0):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - zp) ** 2))) + 1e-9


def spread(rms_acc, qmax):
    """Real multiplier that maps an accumulator of this RMS to about a quarter of the output range."""
    return qmax / 4 / rms_acc


def cases_linear_conv_matmul(rng, bits):
    qmax = 2**bits - 1
    for m, k, o in [(3, 5, 7), (8, 64, 16), (2, 130, 70), (1, 1, 1), (4, 1000, 33)]:
        x, w = codes(rng, bits, (m, k)), rng.integers(-128, 128, (o, k)).astype(np.int8)
        zp = int(rng.integers(0, qmax + 1))
        b = (rng.normal(0, 2, o) * np.sqrt(k) * rms(x, zp) * rms(w)).astype(np.int32)
        acc_shift = np.asarray(accumulator_shift(weight_bound(w, b, x.dtype)), np.int32)
        real = spread(np.sqrt(k) * rms(x, zp) * rms(w), qmax) * rng.uniform(0.5, 2.0, o)
        mult, shift = quantize_multiplier(real * 2.0**acc_shift)
        args = (x, zp, w, b, mult, shift, qmax // 2, 0, qmax)
        yield ops.linear_call(*args, acc_shift=acc_shift), R.linear_ref(*args, acc_shift=acc_shift)
    conv_geometries = [(1, 3, 5, 6, 4, 3, 1, 1, True), (2, 16, 8, 8, 33, 3, 2, (0, 1, 0, 1), False),
                       (1, 5, 4, 4, 8, 1, 1, 0, True), (1, 2, 9, 7, 3, 3, (2, 1), (1, 0, 2, 1), True)]
    for n, c, h, wd, o, kk, st, pad, bias in conv_geometries:
        x, w = codes(rng, bits, (n, c, h, wd)), rng.integers(-128, 128, (o, c, kk, kk)).astype(np.int8)
        zp = int(rng.integers(0, qmax + 1))
        b = (rng.normal(0, 2, o) * np.sqrt(c * kk * kk) * rms(x, zp) * rms(w)).astype(np.int32) if bias else None
        acc_shift = np.asarray(accumulator_shift(weight_bound(w.reshape(o, -1), b, x.dtype)), np.int32)
        real = spread(np.sqrt(c * kk * kk) * rms(x, zp) * rms(w), qmax) * rng.uniform(0.5, 2.0, o)
        mult, shift = quantize_multiplier(real * 2.0**acc_shift)
        args = (x, zp, w, b, mult, shift, qmax // 3, 0, qmax)
        kw = dict(stride=st, padding=pad, acc_shift=acc_shift)
        yield ops.conv2d_call(*args, **kw), R.conv2d_ref(*args, **kw)
    for sa, sb in [((2, 8, 32), (2, 32, 16)), ((1, 2, 8, 77), (1, 2, 77, 16)), ((3, 5), (5, 40)),
                   ((2, 1, 4, 6), (1, 3, 6, 5)), ((1, 64, 3), (1, 3, 70))]:
        a, b = codes(rng, bits, sa), codes(rng, bits, sb)
        za, zb = (int(v) for v in rng.integers(3 * qmax // 8, 5 * qmax // 8, 2))
        k = sa[-1]
        acc_shift = accumulator_shift(k * qmax * qmax)
        mult, shift = quantize_multiplier(spread(np.sqrt(k) * rms(a, za) * rms(b, zb), qmax) * 2.0**acc_shift)
        args = (a, za, b, zb, mult, shift, qmax // 2, 0, qmax)
        yield ops.matmul_call(*args, acc_shift=acc_shift), R.matmul_ref(*args, acc_shift=acc_shift)


def cases_elementwise(rng, bits):
    qmax = 2**bits - 1
    left_shift = 20 if bits == 8 else 14
    for sa, sb in [((1, 16, 8, 8), (1, 16, 8, 8)), ((2, 16, 8, 8), (2, 16, 1, 1)), ((3, 77), (3, 77)), ((5,), (1,)),
                   ((2, 130), (2, 130)), ((1, 3, 1), (2, 1, 4))]:
        a, b = codes(rng, bits, sa), codes(rng, bits, sb)
        za, zb = (int(v) for v in rng.integers(0, qmax + 1, 2))
        zo = qmax // 2
        s_a, s_b = rng.uniform(0.01, 0.1, 2)
        s_o = np.hypot(s_a * rms(a, za), s_b * rms(b, zb)) / (qmax / 4)
        twice = 2 * max(s_a, s_b)
        am, ash = quantize_multiplier(s_a / twice)
        bm, bsh = quantize_multiplier(s_b / twice)
        m, sh = quantize_multiplier(twice / (2**left_shift * s_o))
        args = (a, za, am, ash, b, zb, bm, bsh, m, sh, zo, 0, qmax, left_shift)
        yield ops.add_call(*args), R.add_ref(*args)
        acc_shift = 1 if bits == 16 else 0
        m, sh = quantize_multiplier(spread(rms(a, za) * rms(b, zb), qmax) * 2**acc_shift)
        args = (a, za, b, zb, m, sh, zo, 0, qmax)
        yield ops.mul_call(*args, acc_shift=acc_shift), R.mul_ref(*args, acc_shift=acc_shift)
        m, sh = quantize_multiplier(spread(rms(a, za), qmax))  # requantize_tensor, the `scale` op
        yield ops.requantize_tensor_call(a, za, m, sh, zo, 0, qmax), R.requantize_tensor_ref(a, za, m, sh, zo, 0, qmax)
    xs = [codes(rng, bits, (1, c, 3, 5)) for c in (4, 7)]
    zps = [int(v) for v in rng.integers(0, qmax + 1, 2)]
    ms, ss = zip(*(quantize_multiplier(float(v)) for v in rng.uniform(0.3, 2.0, 2)))
    xt = [x.transpose(0, 3, 2, 1).copy() for x in xs]
    yield ops.concat_call(xs, zps, ms, ss, 1, 100, 0, qmax), R.concat_ref(xs, zps, ms, ss, 1, 100, 0, qmax)
    yield ops.concat_call(xt, zps, ms, ss, -1, 100, 0, qmax), R.concat_ref(xt, zps, ms, ss, -1, 100, 0, qmax)
    x = codes(rng, bits, (2, 3, 4, 70))
    yield ops.upsample_nearest2x_call(x), R.upsample_nearest2x_ref(x)
    m, sh = quantize_multiplier(0.7)
    yield (ops.upsample_nearest2x_call(x, (5, m, sh, 9, 0, qmax)),
           R.requantize_tensor_ref(R.upsample_nearest2x_ref(x), 5, m, sh, 9, 0, qmax))
    for fn in ("silu", "gelu", "quick_gelu"):
        table = make_table(fn, 6.0 / qmax, qmax // 2, bits, 3.0 / qmax, qmax // 10, bits)
        x = codes(rng, bits, (3, 1000))
        x[0, : 2**bits if bits == 8 else 1000] = np.arange(min(2**bits, 1000))  # every 8-bit code
        yield ops.table_call(x, table), apply_table_reference(x, table)
    table_q = codes(rng, bits, (50, 20))
    ids = rng.integers(0, 50, (2, 9))
    yield ops.embedding_call(ids, table_q), R.embedding_ref(ids, table_q)


def cases_softmax_norm(rng, bits):
    qmax = 2**bits - 1
    for scale, shape, causal in [(0.1, (2, 8, 64), False), (0.05, (1, 2, 77, 77), True), (0.3, (3, 130), False),
                                 (0.01, (4, 1), False), (0.05, (1, 9, 9), True)]:
        table = make_exp_table(scale if bits == 8 else scale / 256, bits)
        x = codes(rng, bits, shape)
        for out_bits in (8, 16):
            yield ops.softmax_call(x, table, out_bits, causal), softmax_reference(x, table, out_bits, causal)
    for d, rows in [(64, 8), (37, 3), (320, 2)]:
        gamma, beta = rng.normal(1, 0.5, d), rng.normal(0, 0.3, d)
        gamma[0] = 0.0
        for out_bits in (8, 16):
            p = prepare_norm(gamma, beta, 1e-5, 12.0 / 2**bits, qmax // 2, bits, 0.02, 2 ** (out_bits - 1), out_bits)
            x = codes(rng, bits, (rows, d))
            x[0] = 7  # a zero-variance row
            yield ops.layer_norm_call(x, p), layer_norm_reference(x, p)
    for shape, groups in [((1, 16, 8, 8), 4), ((2, 12, 3, 5), 3), ((1, 4, 1, 2), 2), ((1, 16, 2, 2), 1)]:
        c = shape[1]
        p = prepare_norm(rng.normal(1, 0.5, c), rng.normal(0, 0.3, c), 1e-6, 12.0 / 2**bits, 0, bits, 4e-3, 100, bits)
        x = codes(rng, bits, shape)
        x[0, 0] = 77  # a constant channel
        yield ops.group_norm_call(x, groups, p), group_norm_reference(x, groups, p)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("family", [cases_linear_conv_matmul, cases_elementwise, cases_softmax_norm])
def test_kernels_equal_their_references(hvx, family, bits):
    calls, refs = zip(*family(np.random.default_rng(bits), bits))
    outs = ops.run_calls(hvx, calls)
    for call, got, want in zip(calls, outs, refs):
        assert got.dtype == want.dtype and got.shape == want.shape, (call.what, got.dtype, got.shape, want.shape)
        bad = np.flatnonzero(got.reshape(-1) != want.reshape(-1))
        assert bad.size == 0, (f"{call.what} {want.shape}: {bad.size} differ, first at "
                               f"{list(np.unravel_index(bad[0], want.shape))}: HVX {got.reshape(-1)[bad[0]]}, "
                               f"reference {want.reshape(-1)[bad[0]]}")
        if want.size >= 16:
            assert len(np.unique(want)) >= min(8, want.size // 4), f"{call.what} {want.shape}: degenerate test data"


def test_a_refused_request_is_one_line(hvx):
    x = np.zeros((2, 3), np.uint8)
    call = ops.linear_call(x, 0, np.zeros((4, 3), np.int8), None, [2**30] * 4, [0] * 4, 0, 0, 255)
    call.request.blobs[0] = np.zeros(5, np.uint8)  # the wrong number of activation bytes
    with pytest.raises(runner.HvxError, match=r"^HVX linear: bad request$"):
        ops.run_calls(hvx, [call])
    ids = ops.embedding_call(np.array([3]), np.zeros((2, 4), np.uint8))  # id outside the table
    with pytest.raises(runner.HvxError, match="HVX embedding: bad request"):
        ops.run_calls(hvx, [ids])
    # the process keeps serving after a refused request
    [y] = ops.run_calls(hvx, [ops.embedding_call(np.array([1]), np.arange(8, dtype=np.uint8).reshape(2, 4))])
    assert y.tolist() == [[4, 5, 6, 7]]


def test_missing_tools_are_named_with_the_install_line(monkeypatch):
    monkeypatch.setattr(runner.shutil, "which", lambda name: None if name == "qemu-hexagon" else "/usr/bin/" + name)
    assert runner.missing_tools() == ["qemu-hexagon"]
    msg = runner.missing_tools_message(["qemu-hexagon"])
    assert "qemu-hexagon" in msg and "apt-get install qemu-user clang lld" in msg
    with pytest.raises(runner.HvxError, match="apt-get install qemu-user clang lld"):
        runner.build()
