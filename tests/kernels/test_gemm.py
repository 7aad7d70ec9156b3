"""Exact GEMM ops (linear, matmul of two activations): bit-equal to the int64 reference (spec §3, §4.2-4.3)."""
import numba
import numpy as np
import pytest

from tinysd.fixedpoint import accumulator_shift, narrow_i64, quantize_multiplier, requantize
from tinysd.kernels import (
    conv2d,
    linear,
    linear_accumulator,
    matmul,
    matmul_accumulator,
    plan_linear,
    plan_matmul,
    prepare_weight,
    set_debug,
    weight_bound,
)
from tinysd.kernels import gemm, gemm_i16
from tinysd.kernels.gemm import A8_METHOD, A16_METHOD, activation_operand
from tinysd.kernels.reference import conv2d_ref, linear_ref, matmul_ref

QMAX = {np.uint8: 255, np.uint16: 65535}


def _first_mismatches(got, want, n=5):
    bad = np.argwhere(got != want)[:n]
    return "; ".join(f"pos {tuple(p)} / actual {got[tuple(p)]} / expected {want[tuple(p)]}" for p in bad)


def assert_bit_equal(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    assert np.array_equal(got, want), _first_mismatches(got, want)


def _problem(rng, lead, k, n, xdt, zp):
    """Random operands and per-channel (multiplier, shift, acc_shift) putting outputs mostly in range."""
    x = rng.integers(0, QMAX[xdt] + 1, lead + (k,)).astype(xdt)
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    b = rng.integers(-(10**6), 10**6, n).astype(np.int32)
    acc = (x.reshape(-1, k).astype(np.int64) - zp) @ w.astype(np.int64).T + b  # (M, N)
    acc_shift = accumulator_shift(weight_bound(w, b, xdt))
    real = QMAX[xdt] / 8 / (acc.std(axis=0) + 1)
    mult, shift = quantize_multiplier(real * 2.0**acc_shift)
    return x, w, b, mult, shift, acc_shift


# --- the exactness bound of every plan ---------------------------------------------------------------
PLANS = [("linear", np.uint8, "split"), ("linear", np.uint8, "i16"), ("linear", np.uint16, "split"),
         *([("linear", np.uint8, "u8"), ("linear", np.uint16, "u8")] if gemm_i16.QUADS else []),
         ("linear", np.uint16, "f64"), ("linear", np.uint16, "i16"),
         ("matmul", np.uint8, np.uint8), ("matmul", np.uint16, np.uint16), ("matmul", np.uint8, np.uint16)]
METHODS = ["u8"] * gemm_i16.QUADS + ["i16", "split", "f64"]  # "u8" (vpdpbusd) where the CPU has VNNI
LIMIT = {np.float32: 2**24, np.float64: 2**53, np.int16: 2**31 - 1, np.uint8: 2**31 - 1}  # exact floats; int32 lanes


@pytest.mark.parametrize("kind, a, b", PLANS)
def test_plan_chunks_satisfy_the_exactness_bound(kind, a, b):
    plan = plan_linear(a, b) if kind == "linear" else plan_matmul(a, b)
    assert plan.chunk * plan.a_bound * plan.b_bound <= LIMIT[plan.dtype]
    assert plan.chunk >= 1024 or plan.dtype is not np.float32
    if plan.simd:  # the longest block of whole SIMD words
        w = plan.per_word
        assert plan.chunk % w == 0 and (plan.chunk + w) * plan.a_bound * plan.b_bound > LIMIT[plan.dtype]
    # the operand representation really stays within the plan's bound, for every input value and zp
    x = np.arange(np.iinfo(a).max + 1).astype(a)[None, :]  # (1, all values)
    for zp in (0, 1, int(np.iinfo(a).max)):
        op = activation_operand(x, zp, plan).astype(np.float64)
        assert np.abs(op).max() <= max(plan.a_bound, plan.b_bound)
        assert np.array_equal(op, np.round(op))  # exact integers


def test_default_methods():
    """uint16 activations use the int16 SIMD plan by default where Numba targets AVX2 / AVX-512 VNNI; uint8
    activations the byte-quad plan where it targets AVX-512 VNNI or AVX-VNNI, else the same as uint16."""
    assert A16_METHOD == ("i16" if gemm_i16.FAST else "split")
    assert A8_METHOD == ("u8" if gemm_i16.QUADS else A16_METHOD)
    assert gemm_i16.QUADS == (gemm_i16.VNNI or {"avxvnni", "avx2"} <= gemm_i16.target_features())
    assert plan_linear(np.uint16) == plan_linear(np.uint16, A16_METHOD)
    assert plan_linear(np.uint8) == plan_linear(np.uint8, A8_METHOD)
    with pytest.raises(ValueError, match="method"):
        plan_linear(np.uint16, "vnni")


# --- linear ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("xdt", [np.uint8, np.uint16])
@pytest.mark.parametrize("method", METHODS)
def test_linear_matches_reference_random(xdt, method):
    rng = np.random.default_rng(10)
    # K = 1100 spans three float32 chunks of 512; leading dims (2, 3) as in (B, T, C)
    for zp in (0, 77, QMAX[xdt]):
        x, w, b, mult, shift, acc_shift = _problem(rng, (2, 3), 1100, 24, xdt, zp)
        got = linear(x, zp, w, b, mult, shift, 5, 0, QMAX[xdt], acc_shift, method=method)
        assert_bit_equal(got, linear_ref(x, zp, w, b, mult, shift, 5, 0, QMAX[xdt], acc_shift))
    # prepared weights, no bias, scalar params, a signed int16 output range
    got = linear(x, 9, prepare_weight(w), None, int(mult[0]), int(shift[0]), -3, -32768, 32767, 7, method=method)
    assert got.dtype == np.int16
    assert_bit_equal(got, linear_ref(x, 9, w, None, int(mult[0]), int(shift[0]), -3, -32768, 32767, 7))


@pytest.mark.parametrize("xdt", [np.uint8, np.uint16])
@pytest.mark.parametrize("method", METHODS)
def test_linear_worst_case_accumulators_are_exact(xdt, method):
    """All-extreme operands: |partial sums| far above 2**24 (and 2**31 for uint16) must stay exact."""
    k, n = 2100, 4
    x = np.full((3, k), QMAX[xdt], xdt)
    x[1] = 0
    x[2, ::2] = 0
    w = np.full((n, k), -128, np.int8)
    w[1] = 127
    w[2, ::3] = 127
    b = np.array([2**31 - 1, -(2**31), 0, 5], np.int32)
    for zp in (0, QMAX[xdt]):
        want = (x.astype(np.int64) - zp) @ w.astype(np.int64).T + b.astype(np.int64)
        assert np.abs(want).max() > 2**24
        np.testing.assert_array_equal(linear_accumulator(x, zp, w, b, method=method), want)
        acc_shift = accumulator_shift(weight_bound(w, b, xdt))
        real = QMAX[xdt] / np.abs(want).max() / 2  # outputs span about half the range, some clip
        mult, shift = quantize_multiplier(np.full(n, real) * 2.0**acc_shift)
        got = linear(x, zp, w, b, mult, shift, 1, 0, QMAX[xdt], acc_shift, method=method)
        assert_bit_equal(got, linear_ref(x, zp, w, b, mult, shift, 1, 0, QMAX[xdt], acc_shift))


@pytest.mark.parametrize("method", METHODS)
def test_linear_saturating_narrow_matches_reference_and_debug_flag_raises(method):
    x = np.full((2, 3000), 65535, np.uint16)
    w = np.full((2, 3000), -128, np.int8)  # acc = -128 * 65535 * 3000 < -2**31
    args = (x, 0, w, None, 2**30, 0, 0, 0, 65535)
    assert_bit_equal(linear(*args, 0, method=method), linear_ref(*args, 0))
    set_debug(True)
    try:
        with pytest.raises(ValueError, match="acc_shift"):
            linear(*args, 0, method=method)
        linear(*args, accumulator_shift(int(weight_bound(w, None, np.uint16).max())), method=method)  # no saturation
    finally:
        set_debug(False)


# --- the int16 SIMD plan ("i16"): edge shapes and values ----------------------------------------------
def _check_i16_linear(x, zp, w, b, rng):
    """linear_accumulator and linear (per-channel params incl. left shifts, 3 output ranges) of the
    i16 plan against the int64 reference; also equal to the float "split" plan."""
    k = x.shape[-1]
    want = (x.reshape(-1, k).astype(np.int64) - zp) @ w.astype(np.int64).T  # (M, N)
    if b is not None:
        want += b.astype(np.int64)
    got = linear_accumulator(x, zp, w, b, method="i16")
    np.testing.assert_array_equal(got.reshape(want.shape), want)
    n = w.shape[0]
    qmax = QMAX[x.dtype.type]
    acc_shift = accumulator_shift(weight_bound(w, b, x.dtype))
    mult, shift = quantize_multiplier(rng.uniform(0.3, 3.0, n) * qmax / (np.abs(want).max(axis=0) + 1)
                                      * 2.0**acc_shift)
    shift = np.asarray(shift).copy()
    shift[::4] = rng.integers(1, 6, shift[::4].size)  # some left shifts (saturating in requantize)
    for out_zp, qmin, qmax_o in ((7, 0, qmax), (-3, -32768, 32767), (0, -(2**31), 2**31 - 1)):
        args = (x, zp, w, b, mult, shift, out_zp, qmin, qmax_o, acc_shift)
        got = linear(*args, method="i16")
        assert_bit_equal(got, linear_ref(*args))
        assert_bit_equal(got, linear(*args, method="split"))


@pytest.mark.parametrize("xdt", [np.uint16, np.uint8])
@pytest.mark.parametrize(
    "m, k, n",
    [
        (1, 1, 1),  # K = 1: one padded pair
        (1, 700, 3),  # M = 1, K over one int32 block (510), N far below a 16-lane vector
        (7, 510, 1),  # K exactly one block, N = 1
        (13, 1021, 70),  # odd K, two blocks, M not a multiple of the 6-row tile, N = 64 + 6
        (6, 2, 200),  # K = 2, N = 3 panels of 64 + one of 8
        (40, 1531, 17),  # four blocks (510, 510, 510, 1), N = 16 + 1
        (5, 9, 25),  # M < one 6-row tile; AVX2 panels of 16: one full, one 16 wide with 9 valid
        (11, 33, 24),  # AVX2: a full panel and a one-vector (8-lane) panel; AVX-512: 16 + 8 of 16 lanes
    ],
)
def test_linear_i16_edge_shapes_random(xdt, m, k, n):
    rng = np.random.default_rng(m * 100003 + k * 11 + n)
    x = rng.integers(0, QMAX[xdt] + 1, (m, k)).astype(xdt)
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    b = rng.integers(-(2**31), 2**31, n).astype(np.int32)
    for zp in (0, QMAX[xdt] // 2, QMAX[xdt]):
        _check_i16_linear(x, zp, w, b, rng)
    _check_i16_linear(x, 5, w, None, rng)


@pytest.mark.parametrize("xdt", [np.uint16, np.uint8])
def test_linear_i16_extreme_values(xdt):
    """All-0 and all-max activations, zp at both ends, weights all -128 / all 127 / alternating:
    every int32 lane of a 510-long block reaches +-510 * 32768 * 128 (just below 2**31)."""
    rng = np.random.default_rng(3)
    k, n = 2 * 510 + 3, 5  # two full int32 blocks and a partial one
    w = np.empty((n, k), np.int8)
    w[0], w[1], w[2] = -128, 127, 0
    w[3] = np.where(np.arange(k) % 2, -128, 127)
    w[4] = rng.integers(-128, 128, k)
    for fill in (0, QMAX[xdt]):
        x = np.full((7, k), fill, xdt)
        x[3, ::2] = QMAX[xdt] - fill  # one mixed row
        for zp in (0, QMAX[xdt]):
            _check_i16_linear(x, zp, w, np.array([2**31 - 1, -(2**31), 0, 1, -1], np.int32), rng)


def test_linear_i16_int32_lane_bound_is_tight():
    """x = 0 (x - 32768 = -32768) times w = -128 over one whole block: each lane sums to exactly
    510 * 2**22 = 2139095040 < 2**31; a wrong block length would wrap and differ from the reference."""
    x = np.zeros((6, 510 * 4), np.uint16)
    w = np.full((16, 510 * 4), -128, np.int8)
    want = np.full((6, 16), 510 * 4 * 32768 * 128, np.int64)
    np.testing.assert_array_equal(linear_accumulator(x, 32768, w, None, method="i16"), want)
    assert gemm_i16.block_length(32768) == 510


@pytest.mark.parametrize("threads", [1, 2])
def test_linear_i16_any_thread_count_same_bits(threads):
    rng = np.random.default_rng(21)
    x, w, b, mult, shift, acc_shift = _problem(rng, (3, 50), 777, 130, np.uint16, 1234)
    want = linear_ref(x, 1234, w, b, mult, shift, 9, 0, 65535, acc_shift)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        assert_bit_equal(linear(x, 1234, prepare_weight(w), b, mult, shift, 9, 0, 65535, acc_shift, method="i16"),
                         want)
    finally:
        numba.set_num_threads(previous)


@pytest.mark.parametrize("method", ["u8"] * gemm_i16.QUADS + ["i16"])
@pytest.mark.parametrize("xdt", [np.uint16, np.uint8])
@pytest.mark.parametrize(
    "c_in, hw, c_out, kernel, stride, padding",
    [
        (5, (9, 7), 19, 3, 2, (1, 0, 2, 1)),  # K = 45 (odd), asymmetric padding, stride 2
        (3, (6, 6), 3, 3, 1, 1),  # conv_out-like: N = 3
        (64, (5, 4), 70, 1, 1, 0),  # 1x1
        (70, (4, 4), 16, 3, 1, 1),  # K = 630: two int32 blocks
    ],
)
def test_conv2d_simd_plans_match_reference(method, xdt, c_in, hw, c_out, kernel, stride, padding):
    """conv2d uses the same plans: the SIMD plans (im2col into the padded int16 / uint8 operand, NCHW
    epilogue) against the direct-convolution reference, zp at both ends and inside."""
    rng = np.random.default_rng(c_in * 7 + c_out)
    x = rng.integers(0, QMAX[xdt] + 1, (2, c_in) + hw).astype(xdt)
    w = rng.integers(-128, 128, (c_out, c_in, kernel, kernel)).astype(np.int8)
    b = rng.integers(-(10**6), 10**6, c_out).astype(np.int32)
    acc_shift = accumulator_shift(weight_bound(w, b, xdt))
    mult, shift = quantize_multiplier(rng.uniform(0.5, 2.0, c_out) * 2.0 ** (acc_shift - 12))
    for zp in (0, 1000 % QMAX[xdt], QMAX[xdt]):
        args = (x, zp, w, b, mult, shift, 3, 0, QMAX[xdt])
        want = conv2d_ref(*args, stride, padding, acc_shift)
        assert_bit_equal(conv2d(*args, stride, padding, acc_shift, method=method), want)
        assert_bit_equal(conv2d(x, zp, prepare_weight(w), *args[3:], stride, padding, acc_shift, method=method), want)


def test_linear_within_one_lsb_of_float():
    """Output within 1 LSB of round(real result / s_out) + zp, real result computed in float64 from the
    dequantized operands (so only the kernel's rounding is measured; bound derivation in spec §4.2)."""
    rng = np.random.default_rng(11)
    for xdt in (np.uint8, np.uint16):
        qmax = QMAX[xdt]
        xf = rng.normal(0.3, 1.0, (64, 320))
        wf = rng.normal(0, 0.05, (40, 320))
        bf = rng.normal(0, 0.1, 40)
        s_x = (xf.max() - xf.min()) / qmax
        x_zp = int(np.clip(np.round(-xf.min() / s_x), 0, qmax))
        x = np.clip(np.round(xf / s_x) + x_zp, 0, qmax).astype(xdt)
        s_w = np.abs(wf).max(1) / 127
        w = np.round(wf / s_w[:, None]).astype(np.int8)
        b = np.round(bf / (s_x * s_w)).astype(np.int32)
        y = ((x.astype(np.float64) - x_zp) * s_x) @ (w * s_w[:, None]).T + b * s_x * s_w  # (64, 40)
        s_o = (y.max() - y.min()) / qmax
        o_zp = int(np.clip(np.round(-y.min() / s_o), 0, qmax))
        acc_shift = accumulator_shift(weight_bound(w, b, xdt))
        real = s_x * s_w / s_o
        assert np.max(real * 2.0 ** (acc_shift - 1.0) * (acc_shift > 0)) < 0.2  # narrowing error < 0.2 LSB
        mult, shift = quantize_multiplier(real * 2.0**acc_shift)
        got = linear(x, x_zp, w, b, mult, shift, o_zp, 0, qmax, acc_shift).astype(np.int64)
        want = np.clip(np.floor(y / s_o + 0.5) + o_zp, 0, qmax)
        assert np.max(np.abs(got - want)) <= 1


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(x_q=np.zeros((2, 8), np.float32)), "x_q"),
        (dict(x_q=np.zeros((2, 8), np.int8)), "x_q"),
        (dict(x_q=np.zeros((2, 9), np.uint8)), "x_q"),
        (dict(w_q=np.zeros((3, 8), np.uint8)), "w_q"),
        (dict(w_q=np.zeros((3, 8, 1), np.int8)), "w_q"),
        (dict(bias_q=np.zeros(3, np.int64)), "bias_q"),
        (dict(bias_q=np.zeros(4, np.int32)), "bias_q"),
        (dict(x_zp=256), "x_zp"),
        (dict(x_zp=-1), "x_zp"),
        (dict(multiplier=-5), "multiplier"),
        (dict(multiplier=np.array([1, 2], np.int32)), "multiplier"),
        (dict(shift=31), "shift"),
        (dict(out_zp=300), "out_zp"),
        (dict(qmin=10, qmax=0), "qmin"),
        (dict(acc_shift=63), "acc_shift"),
    ],
)
def test_linear_bad_input_names_argument(change, name):
    args = dict(x_q=np.zeros((2, 8), np.uint8), x_zp=0, w_q=np.zeros((3, 8), np.int8), bias_q=None,
                multiplier=2**30, shift=0, out_zp=0, qmin=0, qmax=255, acc_shift=0)
    args.update(change)
    with pytest.raises(ValueError, match=name):
        linear(**args)


# --- matmul of two activations ------------------------------------------------------------------------
@pytest.mark.parametrize("adt, bdt", [(np.uint8, np.uint8), (np.uint16, np.uint16), (np.uint8, np.uint16)])
def test_matmul_matches_reference(adt, bdt):
    rng = np.random.default_rng(12)
    # K = 1100 spans two uint8 x uint8 float32 chunks of 1024; batch dims broadcast (2, 3) x (1, 3)
    a = rng.integers(0, QMAX[adt] + 1, (2, 3, 17, 1100)).astype(adt)
    b = rng.integers(0, QMAX[bdt] + 1, (1, 3, 1100, 11)).astype(bdt)
    a_zp, b_zp = QMAX[adt] // 3, QMAX[bdt] // 2
    bound = 1100 * QMAX[adt] * QMAX[bdt]
    acc_shift = accumulator_shift(bound)
    want_acc = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp)
    mult, shift = quantize_multiplier(QMAX[bdt] / 8 / want_acc.std() * 2.0**acc_shift)
    np.testing.assert_array_equal(matmul_accumulator(a, a_zp, b, b_zp), want_acc)
    got = matmul(a, a_zp, b, b_zp, mult, shift, 100, 0, QMAX[bdt], acc_shift)
    assert_bit_equal(got, matmul_ref(a, a_zp, b, b_zp, mult, shift, 100, 0, QMAX[bdt], acc_shift))


def test_matmul_extremes_exact():
    a = np.full((1, 4, 5000), 255, np.uint8)
    b = np.zeros((1, 5000, 3), np.uint8)
    want = (a.astype(np.int64) - 0) @ (b.astype(np.int64) - 255)
    assert want.min() == -5000 * 255 * 255  # > 2**24 in magnitude
    np.testing.assert_array_equal(matmul_accumulator(a, 0, b, 255), want)


@pytest.mark.parametrize("method", ["u8"] * gemm_i16.QUADS + ["i16", "split"])
@pytest.mark.parametrize("shape_a, shape_b", [((2, 3, 13, 41), (1, 3, 41, 37)),  # odd K, N = 2 panels + 5, M % 6
                                              ((1, 5, 8), (8, 70)),  # b without batch dims, K = 8
                                              ((2, 7, 64), (2, 64, 16))])  # N one full AVX2 panel
def test_matmul_uint8_plans_match_reference(method, shape_a, shape_b):
    """uint8 x uint8 (attention in W8A8): the int16 SIMD plan (centred operands, no correction terms)
    and the float32 offset8 plan, against the reference, zero points at both ends and inside."""
    rng = np.random.default_rng(len(shape_a) * 100 + shape_b[-1])
    a = rng.integers(0, 256, shape_a).astype(np.uint8)
    b = rng.integers(0, 256, shape_b).astype(np.uint8)
    for a_zp, b_zp in ((0, 255), (255, 0), (37, 200)):
        want_acc = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp)
        np.testing.assert_array_equal(matmul_accumulator(a, a_zp, b, b_zp, method=method), want_acc)
        acc_shift = accumulator_shift(shape_a[-1] * 255 * 255)
        mult, shift = quantize_multiplier(40 / (want_acc.std() + 1) * 2.0**acc_shift)
        for out_zp, qmin, qmax in ((100, 0, 255), (0, -(2**31), 2**31 - 1)):
            args = (a, a_zp, b, b_zp, mult, shift, out_zp, qmin, qmax, acc_shift)
            assert_bit_equal(matmul(*args, method=method), matmul_ref(*args))


def test_matmul_with_a_packed_right_operand_gives_the_same_integers():
    """pack_matmul_right (k and v packed once for every query tile of an attention): the same integers as
    packing per call, for several left operands; a packing made for another b or zero point is refused; a b
    broadcast over a's batch dims falls back to packing per call; no int16 plan, no packing."""
    from tinysd.kernels import pack_matmul_right

    rng = np.random.default_rng(11)
    b = rng.integers(0, 256, (2, 3, 41, 37)).astype(np.uint8)
    packed = pack_matmul_right(b, 200)
    for rows in (1, 6, 13):
        a = rng.integers(0, 256, (2, 3, rows, 41)).astype(np.uint8)
        args = (a, 7, b, 200, 2**30, -9, 128, 0, 255)
        assert_bit_equal(matmul(*args, b_packed=packed), matmul_ref(*args))
    with pytest.raises(ValueError, match="b_packed"):
        matmul(a, 7, b, 199, 2**30, -9, 128, 0, 255, b_packed=packed)
    b1 = b[:1]
    a2 = rng.integers(0, 256, (2, 3, 5, 41)).astype(np.uint8)
    args = (a2, 7, b1, 200, 2**30, -9, 128, 0, 255)
    assert_bit_equal(matmul(*args, b_packed=pack_matmul_right(b1, 200)), matmul_ref(*args))
    assert pack_matmul_right(b, 200, method="split") is None
    assert pack_matmul_right(b.astype(np.uint16), 200, method="f64") is None


def test_matmul_uint16_with_a_packed_right_operand_gives_the_same_integers():
    """uint16 b packed once (byte planes and column sums of b - 32768, _u16_pack_right) for several left
    operands and both zero points of a: the reference's integers; another b zero point is refused; a b
    broadcast over a's batch dims packs per call."""
    from tinysd.kernels import pack_matmul_right

    rng = np.random.default_rng(13)
    b = rng.integers(0, 65536, (2, 41, 37)).astype(np.uint16)
    packed = pack_matmul_right(b, 65535, method="i16")
    for rows, a_zp in ((1, 0), (13, 65535), (7, 321)):
        a = rng.integers(0, 65536, (2, rows, 41)).astype(np.uint16)
        args = (a, a_zp, b, 65535, 2**30, -20, 30000, 0, 65535, 3)
        assert_bit_equal(matmul(*args, method="i16", b_packed=packed), matmul_ref(*args))
    with pytest.raises(ValueError, match="b_packed"):
        matmul(a, 7, b, 0, 2**30, -20, 128, 0, 65535, method="i16", b_packed=packed)
    a2 = rng.integers(0, 65536, (3, 2, 5, 41)).astype(np.uint16)
    args = (a2, 7, b, 65535, 2**30, -20, 128, 0, 65535, 3)
    assert_bit_equal(matmul(*args, method="i16", b_packed=packed), matmul_ref(*args))


@pytest.mark.skipif(not gemm_i16.QUADS, reason="the u8 plan (vpdpbusd) needs AVX-512 VNNI or AVX-VNNI")
def test_u8_plan_blocks_and_int64_paths_are_exact():
    """The "u8" plan (raw uint8 x int8 byte quads, vpdpbusd): K = one block of 65792 + 3 with every product
    255 * -128 sums 65792 * 32640 = 2147450880 < 2**31 in a lane before the int64 add (a longer block would
    wrap), through the int64 epilogue (int32_exact fails); and the activation product's row terms
    (cb sum_k a) on the int64 path (K = 20000: int32_exact fails) against the reference."""
    plan = plan_linear(np.uint8, "u8")
    assert plan.chunk == 65792 and (plan.chunk + 4) * 255 * 128 > 2**31 - 1
    k = plan.chunk + 3
    x = np.full((7, k), 255, np.uint8)
    w = np.full((17, k), -128, np.int8)
    np.testing.assert_array_equal(linear_accumulator(x, 0, w, None, method="u8"), np.full((7, 17), -k * 255 * 128))
    acc_shift = accumulator_shift(k * 255 * 128)
    args = (x, 3, w, None, 2**30, -4, 9, 0, 255, acc_shift)
    assert_bit_equal(linear(*args, method="u8"), linear_ref(*args))
    rng = np.random.default_rng(17)
    a = rng.integers(0, 256, (2, 13, 20000)).astype(np.uint8)
    b = rng.integers(0, 256, (2, 20000, 19)).astype(np.uint8)
    for a_zp, b_zp in ((0, 0), (255, 0), (9, 255)):
        want = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp)
        np.testing.assert_array_equal(matmul_accumulator(a, a_zp, b, b_zp, method="u8"), want)
        acc_shift = accumulator_shift(20000 * 255 * 255)
        args = (a, a_zp, b, b_zp, 2**30, -3, 100, 0, 255, acc_shift)
        assert_bit_equal(matmul(*args, method="u8"), matmul_ref(*args))


def test_matmul_i16_int32_lane_bound_is_tight():
    """|a - a_zp| = |b - b_zp| = 255 over K = one block of 33024 + 3: each lane sums 33024 * 65025 =
    2147385600 < 2**31 before the int64 add; a longer block would wrap."""
    assert plan_matmul(np.uint8, np.uint8, "i16").chunk == 33024
    k = 33024 + 3
    a = np.full((1, 7, k), 255, np.uint8)
    b = np.zeros((1, k, 17), np.uint8)
    b[0, :, 1] = 255
    got = matmul_accumulator(a, 0, b, 255, method="i16")
    want = np.full((1, 7, 17), -k * 255 * 255, np.int64)
    want[..., 1] = 0
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape_a, shape_b", [((2, 3, 13, 41), (1, 3, 41, 37)),  # odd K, N = 2 AVX2 panels + 5
                                              ((1, 5, 8), (8, 70)),  # b without batch dims
                                              ((2, 7, 40), (2, 40, 16)),  # K = 40 (SD head_dim), one AVX2 panel
                                              ((1, 4, 1300), (1, 1300, 9)),  # 2 high blocks, 5 low blocks (+ 20)
                                              ((1, 3, 4097), (1, 4097, 5))])  # SD's context K 4096, + 1 (odd)
def test_matmul_uint16_i16_matches_reference(shape_a, shape_b):
    """uint16 x uint16 (attention in W8A16) on the int16 SIMD kernel: a - 32768 against the two byte
    planes of b - 32768 with correction terms, bit-equal to the reference for zero points at both ends
    and inside, requantized to uint8 and uint16, and the exact int64 accumulator."""
    rng = np.random.default_rng(len(shape_a) * 100 + shape_b[-1])
    a = rng.integers(0, 65536, shape_a).astype(np.uint16)
    b = rng.integers(0, 65536, shape_b).astype(np.uint16)
    for a_zp, b_zp in ((0, 65535), (65535, 0), (1234, 40000)):
        want_acc = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp)
        np.testing.assert_array_equal(matmul_accumulator(a, a_zp, b, b_zp, method="i16"), want_acc)
        acc_shift = accumulator_shift(shape_a[-1] * 65535 * 65535)
        for out_zp, qmax in ((100, 255), (30000, 65535)):
            mult, shift = quantize_multiplier(qmax / 8 / (want_acc.std() + 1) * 2.0**acc_shift)
            args = (a, a_zp, b, b_zp, mult, shift, out_zp, 0, qmax, acc_shift)
            assert_bit_equal(matmul(*args, method="i16"), matmul_ref(*args))


@pytest.mark.parametrize("k", [510, 512, 2 * 510 + 3])
def test_matmul_uint16_i16_extreme_operands_are_exact(k):
    """All-0 / all-65535 operands with zero points 0 / 65535, K at and around the 510-term block of the
    high-byte product (|a'| = 32768, hi = -128: each lane sums 510 * 2**22 < 2**31 before the int64 add)
    and past the 256-term block of the low-byte product: every |acc| = K * 65535**2 or 0."""
    assert (gemm.U16_HI_PAIRS, gemm.U16_LO_PAIRS) == (255, 128)
    for a_val, b_val in ((0, 0), (65535, 65535), (0, 65535), (65535, 0)):
        a = np.full((1, 7, k), a_val, np.uint16)
        b = np.full((1, k, 17), b_val, np.uint16)
        b[0, :, 1] = 32768  # b' = 0: hi = lo = 0
        b[0, :, 2] = 255  # hi = -128, lo = 255
        for a_zp, b_zp in ((0, 65535), (65535, 0), (0, 0), (65535, 65535)):
            want = (a.astype(np.int64) - a_zp) @ (b.astype(np.int64) - b_zp)
            np.testing.assert_array_equal(matmul_accumulator(a, a_zp, b, b_zp, method="i16"), want)
    # the high-byte block is tight: a' = -32768 (a = 0), hi = -128 (b < 256) over one full block
    a = np.zeros((1, 1, 510), np.uint16)
    b = np.zeros((1, 510, 1), np.uint16)
    assert matmul_accumulator(a, 32768, b, 32768, method="i16")[0, 0, 0] == 510 * 2**30


def test_matmul_uint16_default_plan_and_saturation():
    """The int16 SIMD plan is the uint16 x uint16 default where the int16 kernels are; a saturating
    narrow (acc_shift 0) gives the reference's bits and trips the debug flag."""
    plan = plan_matmul(np.uint16, np.uint16)
    assert (plan.mode, plan.dtype) == (("offset16", np.int16) if gemm_i16.FAST else ("centred", np.float64))
    a = np.zeros((2, 3, 600), np.uint16)
    b = np.zeros((1, 600, 5), np.uint16)
    b[..., 0] = 65535
    args = (a, 65535, b, 0, 2**30, -20, 0, 0, 65535, 0)  # acc up to 600 * 65535**2 > 2**31
    assert_bit_equal(matmul(*args, method="i16"), matmul_ref(*args))
    set_debug(True)
    try:
        with pytest.raises(ValueError, match="saturated"):
            matmul(*args, method="i16")
    finally:
        set_debug(False)


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(a_q=np.zeros((4, 5), np.int8)), "a_q"),
        (dict(b_q=np.zeros((6, 3), np.uint8)), "b_q"),
        (dict(b_q=np.zeros((2, 5, 3), np.uint8), a_q=np.zeros((3, 4, 5), np.uint8)), "b_q"),
        (dict(a_zp=300), "a_zp"),
        (dict(b_zp=-2), "b_zp"),
        (dict(shift=-40), "shift"),
    ],
)
def test_matmul_bad_input_names_argument(change, name):
    args = dict(a_q=np.zeros((4, 5), np.uint8), a_zp=0, b_q=np.zeros((5, 3), np.uint8), b_zp=0,
                multiplier=2**30, shift=0, out_zp=0, qmin=0, qmax=255)
    args.update(change)
    with pytest.raises(ValueError, match=name):
        matmul(**args)


def _pack_panel(w):
    """Packed int16 pairs of one panel (width, K even) in the layout of gemm_i16 (word p*width + c)."""
    width, k = w.shape
    return np.ascontiguousarray(w.astype(np.int16).reshape(width, k // 2, 2).transpose(1, 0, 2)).reshape(-1)


@pytest.mark.parametrize("lanes", sorted(gemm_i16.TILES))
def test_i16_micro_kernel_of_every_target_tile_is_exact(lanes):
    """Each target's micro-tile (16 lanes x 6 x 4 for AVX-512, 8 lanes x 6 x 2 for AVX2), compiled
    here whatever the host (LLVM splits vectors wider than the CPU's): overwrite, then add into the
    int64 tile, with every lane at the int32 bound of a 510-long block and random rows."""
    mr, nv = gemm_i16.TILES[lanes]
    width = lanes * nv
    mk = gemm_i16._make_micro_kernel(mr, nv, lanes)

    @numba.njit(cache=False)
    def two_blocks(a, b, npairs, c):
        mk(a, 0, a.shape[1], b, 0, npairs, c, c.shape[1], 0)  # c = block 0
        mk(a, 2 * npairs, a.shape[1], b, npairs * (b.size // a.shape[1]), npairs, c, c.shape[1], 1)  # c += block 1

    rng = np.random.default_rng(lanes)
    k = 2 * 510
    a = np.full((mr, k), -32768, np.int16)
    a[1:] = rng.integers(-32768, 32768, (mr - 1, k))
    w = np.full((width, k), -128, np.int8)
    w[2:] = rng.integers(-128, 128, (width - 2, k))
    w[1, ::2] = 127
    c = np.full((mr, width), 99, np.int64)
    two_blocks(a, _pack_panel(w), 255, c)
    np.testing.assert_array_equal(c, a.astype(np.int64) @ w.astype(np.int64).T)
    assert c[0, 0] == 2 * 510 * 32768 * 128


def _inner_loop(asm, mnemonics):
    """Lines of the innermost loop holding one of `mnemonics`: from the label before the first use of one to the
    branch after it."""
    lines = asm.splitlines()
    first = next(i for i, line in enumerate(lines) if any(m in line for m in mnemonics))
    start = max(i for i in range(first) if lines[i].startswith("."))
    end = next(i for i in range(first, len(lines)) if lines[i].strip().startswith("j"))
    return lines[start:end + 1]


@pytest.mark.skipif(not gemm_i16.FAST, reason="needs a Numba target with AVX2 or AVX-512 VNNI")
@pytest.mark.parametrize("quads", [False] + [True] * gemm_i16.QUADS)
def test_micro_kernel_compiles_to_dot_products_without_spills(quads):
    """The speed of the SIMD plans rests on LLVM turning the micro-kernel's IR into one dot-product
    instruction per accumulator and K word (MR x NV per word, times the loop's unrolling), with every
    accumulator in a register (no stack access in the inner loop); a compiler change that loses either
    would still be exact but slow. int16 pairs ("i16"): vpdpwssd (AVX-512 VNNI, zmm), vpmaddwd + vpaddd
    (AVX2, ymm) or, with AVX-VNNI, either (LLVM mixes them); byte quads ("u8"): vpdpbusd (AVX-512 VNNI zmm,
    AVX-VNNI ymm)."""
    mk = gemm_i16._MK[gemm_i16.NV - 1]

    @numba.njit(cache=False)
    def one_tile(a, b, c):
        mk(a, 0, a.shape[1], b, 0, a.shape[1] // (4 // a.itemsize), c, c.shape[1], 0)

    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (gemm_i16.MR, 8)).astype(np.uint8) if quads else \
        rng.integers(-32768, 32768, (gemm_i16.MR, 8)).astype(np.int16)
    w = rng.integers(-128, 128, (gemm_i16.PANEL, 8)).astype(np.int8)
    b = gemm_i16.pack_weight(w, np.int8 if quads else np.int16)
    c = np.zeros((gemm_i16.MR, gemm_i16.PANEL), np.int64)
    one_tile(a, b, c)
    np.testing.assert_array_equal(c, a.astype(np.int64) @ w.astype(np.int64).T)
    asm = "\n".join(one_tile.inspect_asm().values())
    reg = "ymm" if gemm_i16.LANES == 8 else "zmm"
    mnemonics = ("vpdpbusd",) if quads else ("vpdpwssd",) if gemm_i16.VNNI else ("vpmaddwd", "vpdpwssd")
    loop = _inner_loop(asm, mnemonics)
    dots = [line for line in loop if any(m in line for m in mnemonics)]
    assert dots and len(dots) % (gemm_i16.MR * gemm_i16.NV) == 0
    assert all(reg in line for line in dots)
    assert not [line for line in loop if "(%rsp)" in line], "accumulators spilled to the stack"


# --- the int32 epilogue of the i16 plan (spec §3.3) ------------------------------------------------------
def _requant_table_ref(t, accs, mult, sh, zp, qmin, qmax):
    return requantize(narrow_i64(t, accs), mult, sh, zp, qmin, qmax)


@pytest.mark.parametrize("variant", [0, 1, 2, 3])
def test_int32_requant_tile_matches_primitives(variant):
    """gemm_i16.requant_tile on int32 accumulators over the whole int32 range (both ends included),
    acc_shift 0..31, shifts -31..30 (positive ones saturating sat32(acc << shift)), multipliers 0 and up
    to 2**31 - 1, output ranges int32-wide and narrow, zero points at both ends: the integers of
    requantize(narrow_i64(acc, acc_shift), ...) for every variant (steps left out only where unused)."""
    rng = np.random.default_rng(variant)
    n_pad, rows = 4 * gemm_i16.PANEL, 7
    narrow, left = variant >> 1, variant & 1
    accs = rng.integers(0, 32, n_pad) * narrow
    accs[:4] = (0, 1, 31, 30) if narrow else 0
    sh = rng.integers(-31, 31 if left else 1, n_pad)
    sh[4:8] = (-31, -1, 0, 30 if left else -30)
    mult = rng.integers(0, 2**31, n_pad)
    mult[8:12] = (2**31 - 1, 0, 2**30, 2**31 - 2)
    for zp, qmin, qmax in ((0, -(2**31), 2**31 - 1), (2**31 - 1, -(2**31), 2**31 - 1), (-(2**31), -(2**31), 0),
                           (0, 0, 255), (255, 0, 255), (-128, -128, 127)):
        bias = rng.integers(-1000, 1000, n_pad)
        bias[::5] = 0
        t = rng.integers(-(2**31) + 1001, 2**31 - 1001, (rows, n_pad))  # t = c + bias: |t|, |c| <= 2**31 - 1
        t[0] = np.minimum(2**31 - 1, 2**31 - 1 + bias)  # the int32 ends, where bias allows
        t[1] = np.maximum(-(2**31) + 1, -(2**31) + 1 + bias)
        t[2] = rng.integers(-300, 300, n_pad)
        t[3, ::2] = t[1, ::2] + rng.integers(0, 5, n_pad // 2)
        c = (t - bias).astype(np.int32)
        t_exact = c.astype(np.int64) + bias
        assert np.array_equal(t_exact, t)
        prm, lo, hi, var = gemm.i32_requant_params(bias, accs, mult, sh, zp, qmin, qmax, n_pad)
        assert var == variant
        got = c.copy()
        _run_requant_tile(got, prm, np.int64(lo), np.int64(hi), np.int64(zp), variant)
        want = _requant_table_ref(t_exact, accs, mult, sh, zp, qmin, qmax)
        assert_bit_equal(got, want.astype(np.int32))


@numba.njit(cache=False)
def _run_requant_tile(c, prm, lo, hi, zp, variant):
    """gemm_i16.requant_tile (variant 0-3) in place on c, one panel at a time."""
    for n0 in range(0, c.shape[1], gemm_i16.PANEL):
        tile = c[:, n0:]
        gemm_i16.requant_tile(tile, np.int64(c.shape[0]), np.int64(gemm_i16.PANEL), np.int64(c.shape[1]), prm,
                              np.int64(n0), lo, hi, zp, variant, tile, np.int64(0), np.int64(c.shape[1]),
                              np.int64(gemm_i16.PANEL))


@pytest.mark.parametrize("lanes", sorted(gemm_i16.TILES))
def test_int32_requant_tile_of_every_lane_width(lanes):
    """The full variant of the int32 epilogue at 8 and 16 lanes (AVX2 and AVX-512 vectors), compiled
    here whatever the host, storing into a uint8 output with a partial last vector: the integers of
    the primitives."""
    rq = gemm_i16._make_requant_tile(lanes, True, True)

    @numba.njit(cache=False)
    def run(c, prm, lo, hi, zp, out, n_valid):
        rq(c, np.int64(c.shape[0]), np.int64(c.shape[1]), np.int64(c.shape[1]), prm, np.int64(0), lo, hi, zp, out,
           np.int64(0), np.int64(n_valid), np.int64(n_valid))

    rng = np.random.default_rng(lanes)
    n = 2 * lanes
    accs, sh = rng.integers(0, 32, n), rng.integers(-31, 31, n)
    mult = rng.integers(0, 2**31, n)
    t = rng.integers(-(2**31) + 1, 2**31, (5, n))
    t[0] = rng.integers(-50, 50, n)
    prm, lo, hi, _ = gemm.i32_requant_params(np.zeros(n, np.int64), accs, mult, sh, 7, 0, 255, n)
    out = np.full((5, n - 3), 99, np.uint8)
    run(t.astype(np.int32), prm, np.int64(lo), np.int64(hi), np.int64(7), out, n - 3)
    want = _requant_table_ref(t, accs, mult, sh, 7, 0, 255)[:, :n - 3]
    assert_bit_equal(out, want.astype(np.uint8))


@pytest.mark.skipif(not gemm_i16.FAST, reason="needs a Numba target with AVX2 or AVX-512 VNNI")
def test_int32_requant_tile_compiles_to_vector_code():
    """The int32 epilogue's speed rests on LLVM keeping it in vectors: the srdhm products as vpmuldq
    on vector registers, per-lane shifts as vpsravd / vpsllvd."""
    c = np.zeros((2, gemm_i16.PANEL), np.int32)
    prm, lo, hi, _ = gemm.i32_requant_params(np.zeros(gemm_i16.PANEL, np.int64), np.ones(gemm_i16.PANEL, np.int64),
                                             np.full(gemm_i16.PANEL, 2**30), np.ones(gemm_i16.PANEL, np.int64), 0,
                                             -(2**31), 2**31 - 1, gemm_i16.PANEL)
    _run_requant_tile(c, prm, np.int64(lo), np.int64(hi), np.int64(0), 3)
    asm = "\n".join(_run_requant_tile.inspect_asm().values())
    reg = "ymm" if gemm_i16.LANES == 8 else "zmm"
    assert any("vpmuldq" in line and reg in line for line in asm.splitlines())
    assert any("vpsravd" in line and reg in line for line in asm.splitlines())
    assert any("vpsllvd" in line and reg in line for line in asm.splitlines())


def _int32_path_taken(plan, k, bias_eff, accs):
    return gemm.int32_exact(plan, k + k % 2, np.asarray(bias_eff, np.int64), np.asarray(accs, np.int64))


@pytest.mark.parametrize("zp", [0, 255])
def test_linear_int32_epilogue_edge_values(zp):
    """uint8 linear through the int32 epilogue (asserted taken), bit-equal to the reference, with
    multipliers near 2**31, shifts both ways, acc_shift > 0 (up to 31), saturating outputs, and output
    zero points at both ends of uint8 and of int32."""
    rng = np.random.default_rng(zp + 1)
    m, k, n = 13, 70, 37
    x = rng.integers(0, 256, (m, k)).astype(np.uint8)
    x[0], x[1] = 0, 255
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    w[0], w[1] = -128, 127
    b = rng.integers(-(10**8), 10**8, n).astype(np.int32)
    mult = rng.integers(2**30, 2**31, n)
    mult[:3] = 2**31 - 1
    sh = rng.integers(-20, 3, n)
    sh[:3] = (5, -31, 0)
    accs = rng.integers(0, 4, n)
    accs[3] = 31
    wsum = w.astype(np.int64).sum(axis=1)
    assert _int32_path_taken(plan_linear(np.uint8, "i16"), k, b + (128 - zp) * wsum, accs)
    for out_zp, qmin, qmax in ((0, 0, 255), (255, 0, 255), (5, 2, 9), (-(2**31), -(2**31), 2**31 - 1),
                               (2**31 - 1, -(2**31), 2**31 - 1)):
        want = linear_ref(x, zp, w, b, mult, sh, out_zp, qmin, qmax, accs)
        assert_bit_equal(linear(x, zp, w, b, mult, sh, out_zp, qmin, qmax, accs, method="i16"), want)


@pytest.mark.parametrize("excess", [0, 1])
def test_linear_int32_epilogue_bound_just_holds_or_fails(excess):
    """K * 128 * 128 + max|bias_eff| = 2**31 - 1 (+ excess): the int32 path exactly at its bound, where
    accumulators reach +-(2**31 - 1), and the int64 fall-back just beyond it; both bit-equal to the reference."""
    k, n = 40, 4
    room = 2**31 - 1 - k * 128 * 128 + excess
    x = np.zeros((7, k), np.uint8)  # zp = 128: x - zp = -128, bias_eff = bias
    x[3] = 255
    w = np.array([[-128] * k, [127] * k, [-128] * k, [1] * k], np.int8)
    b = np.array([room - 2 * excess, -room + excess, 1 - room, room], np.int32)  # max |.| = room
    plan = plan_linear(np.uint8, "i16")
    assert _int32_path_taken(plan, k, b, np.zeros(n)) == (excess == 0)
    acc = (x.astype(np.int64) - 128) @ w.astype(np.int64).T + b
    if not excess:
        assert acc.max() == 2**31 - 1 and acc.min() == -(2**31) + 1 + 128 * k
    for mult, sh, accs in ((2**31 - 1, 0, 0), (2**30, -3, 2), (2**31 - 1, 1, 0)):
        args = (x, 128, w, b, mult, sh, 0, -(2**31), 2**31 - 1, accs)
        assert_bit_equal(linear(*args, method="i16"), linear_ref(*args))


def test_matmul_int32_epilogue_bound_just_holds():
    """uint8 x uint8 with K = 33024 (one whole block): K * 255 * 255 <= 2**31 - 1, so the int32 tile and
    epilogue run with lanes at -33024 * 65025; K = 33026 (the next even K) falls back to int64."""
    plan = plan_matmul(np.uint8, np.uint8, "i16")
    assert _int32_path_taken(plan, 33024, np.zeros(1), np.zeros(1))
    assert not _int32_path_taken(plan, 33026, np.zeros(1), np.zeros(1))
    for k in (33024, 33025):
        a = np.full((1, 7, k), 255, np.uint8)
        b = np.zeros((1, k, 17), np.uint8)
        b[0, :, 1] = 255
        b[0, ::2, 2] = 128
        for mult, sh, accs in ((2**31 - 1, 0, 0), (2**30, -2, 3)):
            args = (a, 0, b, 255, mult, sh, 7, -(2**31), 2**31 - 1, accs)
            assert_bit_equal(matmul(*args, method="i16"), matmul_ref(*args))


@pytest.mark.parametrize("k, n", [(1, 1), (41, 37), (40, 2 * gemm_i16.PANEL + gemm_i16.LANES)])
def test_pack_centred_is_the_packed_transposed_centred_operand(k, n):
    """gemm_i16.pack_centred(b, zp) (the right operand of an activation product, read row by row) equals
    pack_weight of the (N, K) matrix b.T - zp: odd K and N, partial panels, zero points at both ends."""
    b = np.random.default_rng(k + n).integers(0, 256, (k, n)).astype(np.uint8)
    for zp in (0, 255, 77):
        want = gemm_i16.pack_weight((b.T.astype(np.int16) - zp).astype(np.int16))
        np.testing.assert_array_equal(gemm_i16.pack_centred(b, zp), want)


def test_pack_weight_layout_against_a_plain_reference():
    """pack_weight's panels (word p of channel c of panel j at PANEL*j*W + p*width + c, the word's 2 int16 or 4
    int8 values w[c, per*p + h], zeros beyond N and K; conv weights with K in (kh, kw, c) order) against
    element-by-element loops, for int16 pairs and int8 quads, odd K and N, 2-D and 4-D weights."""
    P = gemm_i16.PANEL

    def plain(w2, dtype):
        n, k = w2.shape
        per = 4 // np.dtype(dtype).itemsize
        nw, n_pad = -(-k // per), -(-n // gemm_i16.LANES) * gemm_i16.LANES
        out = np.zeros(n_pad * nw * per, dtype)
        for j in range(-(-n_pad // P)):
            width = min(P, n_pad - P * j)
            for p in range(nw):
                for c in range(width):
                    for h in range(per):
                        o, kk = P * j + c, per * p + h
                        if o < n and kk < k:
                            out[P * j * nw * per + (p * width + c) * per + h] = w2[o, kk]
        return out

    rng = np.random.default_rng(23)
    for shape in ((19, 45), (70, 3), (P + 16, 8), (17, 5, 3, 3), (33, 2, 1, 1)):
        w = rng.integers(-128, 128, shape).astype(np.int8)
        w2 = w.transpose(0, 2, 3, 1).reshape(shape[0], -1) if w.ndim == 4 else w
        for dtype in (np.int16, np.int8):
            got = gemm_i16.pack_weight(w, dtype)
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, plain(w2, dtype))
    unaligned = rng.integers(-128, 128, 1 + 20 * 64).astype(np.int8)[1:].reshape(20, 64)  # as a file slice may be
    np.testing.assert_array_equal(gemm_i16.pack_weight(unaligned, np.int8), plain(unaligned, np.int8))
