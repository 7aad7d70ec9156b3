"""conv2d (im2col + exact GEMM) bit-equal to the direct int64 reference (spec §4.1)."""
import numpy as np
import pytest

from tinysd.fixedpoint import accumulator_shift, quantize_multiplier, requantize
from tinysd.kernels import conv2d, prepare_weight, weight_bound
from tinysd.kernels import gemm_i16
from tinysd.kernels.conv import conv_bands
from tinysd.kernels.reference import conv2d_ref

QMAX = {np.uint8: 255, np.uint16: 65535}

# geometries named as in the UNet / VAE: (C, H, W, OUT, KH, KW, stride, padding)
GEOMETRIES = {
    "k3_stride1_pad1": (6, 9, 11, 5, 3, 3, 1, 1),
    "k3_stride2_pad0101": (6, 9, 10, 5, 3, 3, 2, (0, 1, 0, 1)),  # diffusers Downsample2D (pad=0 path)
    "k3_stride2_pad1": (6, 9, 11, 5, 3, 3, 2, 1),
    "k1_stride1_pad0": (7, 5, 6, 4, 1, 1, 1, 0),  # conv_shortcut / 1x1 proj
    "k3_stride1_pad1_c128": (128, 6, 7, 3, 3, 3, 1, 1),  # K = 1152 > one float32 chunk of 1024
    "k2x3_stride21_pad1203": (3, 8, 9, 4, 2, 3, (2, 1), (1, 2, 0, 3)),
}


def assert_bit_equal(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape, (got.shape, want.shape)
    bad = np.argwhere(got != want)[:5]
    assert bad.size == 0, "; ".join(f"pos {tuple(p)} / actual {got[tuple(p)]} / expected {want[tuple(p)]}"
                                    for p in bad)


def _case(rng, geom, xdt, zp):
    c, h, w, n_out, kh, kw, stride, padding = GEOMETRIES[geom]
    x = rng.integers(0, QMAX[xdt] + 1, (2, c, h, w)).astype(xdt)
    wq = rng.integers(-128, 128, (n_out, c, kh, kw)).astype(np.int8)
    b = rng.integers(-(10**5), 10**5, n_out).astype(np.int32)
    acc_shift = accumulator_shift(weight_bound(wq, b, xdt))
    real = QMAX[xdt] / 8 / (np.sqrt(c * kh * kw) * 74 * QMAX[xdt] / 3.5)  # ~ std of acc
    mult, shift = quantize_multiplier(np.full(n_out, real) * 2.0**acc_shift)
    return x, zp, wq, b, mult, shift, QMAX[xdt] // 2, 0, QMAX[xdt], stride, padding, acc_shift


@pytest.mark.parametrize("geom", sorted(GEOMETRIES))
@pytest.mark.parametrize("xdt", [np.uint8, np.uint16])
def test_conv2d_matches_reference(geom, xdt):
    rng = np.random.default_rng(20)
    args = _case(rng, geom, xdt, zp=QMAX[xdt] // 3)
    got = conv2d(*args)
    assert_bit_equal(got, conv2d_ref(*args))
    if xdt is np.uint16:  # the float64 plan gives the same bits
        assert_bit_equal(conv2d(*args, method="f64"), got)
    pw_args = list(args)
    pw_args[2] = prepare_weight(args[2])
    assert_bit_equal(conv2d(*pw_args), got)


@pytest.mark.parametrize("xdt", [np.uint8, np.uint16])
def test_conv2d_padding_contributes_exactly_zero(xdt):
    """x == x_zp everywhere (real zero): every output is requantize(bias), padded or not."""
    rng = np.random.default_rng(21)
    zp = QMAX[xdt] // 5
    x = np.full((1, 4, 5, 5), zp, xdt)
    w = rng.integers(-128, 128, (3, 4, 3, 3)).astype(np.int8)
    b = np.array([1000, -1000, 0], np.int32)
    got = conv2d(x, zp, w, b, 2**30, 0, 100, 0, QMAX[xdt], 1, 1)  # real multiplier 0.5
    want = requantize(b, 2**30, 0, 100, 0, QMAX[xdt])
    assert (got == want[None, :, None, None]).all()


def test_conv2d_extremes_exact():
    x = np.full((1, 64, 4, 4), 255, np.uint8)
    w = np.full((2, 64, 3, 3), -128, np.int8)  # |acc| = 64*9*128*255 > 2**24
    args = (x, 0, w, None, 2**30, -10, 255, 0, 255, 1, 1)
    assert_bit_equal(conv2d(*args), conv2d_ref(*args))


@pytest.mark.parametrize("nb, ho, row_bytes, budget", [(1, 7, 10, 1000), (3, 7, 10, 20), (3, 7, 10, 35),
                                                     (2, 5, 100, 1), (4, 3, 10, 65)])
def test_conv_bands_cover_every_pixel_once_within_the_budget(nb, ho, row_bytes, budget):
    seen = np.zeros((nb, ho), int)
    bands = conv_bands(nb, ho, row_bytes, budget)
    for n0, n1, y0, y1 in bands:
        assert n1 == n0 + 1 or (y0, y1) == (0, ho)  # whole images, or rows of one image
        assert (n1 - n0) * (y1 - y0) * row_bytes <= max(budget, row_bytes)
        seen[n0:n1, y0:y1] += 1
    assert (seen == 1).all()
    assert (len(bands) > 1) == (nb * ho * row_bytes > budget)


CONV_BAND_CASES = {  # (C, H, W, OUT, K, stride, padding)
    "k3_pad1": (5, 13, 9, 19, 3, 1, 1),
    "k3_stride2_pad0101": (4, 12, 9, 7, 3, 2, (0, 1, 0, 1)),
    "k3_stride2_pad2": (3, 11, 10, 5, 3, 2, 2),
    "k1": (6, 7, 5, 9, 1, 1, 0),
}


@pytest.mark.parametrize("method", ["u8"] * gemm_i16.QUADS + ["i16", "split", "f64"])
@pytest.mark.parametrize("xdt", [np.uint8, np.uint16])
@pytest.mark.parametrize("case", sorted(CONV_BAND_CASES))
def test_conv2d_in_bands_is_bit_equal(case, xdt, method):
    """Budgets of one output row, a few rows, one image and two images: the bands (rows of one image with
    the padding and stride seams, groups of whole images) give the unbanded integers and the reference's."""
    c, h, w, n_out, k, stride, padding = CONV_BAND_CASES[case]
    rng = np.random.default_rng(c * 31 + h)
    x = rng.integers(0, QMAX[xdt] + 1, (3, c, h, w)).astype(xdt)
    w = rng.integers(-128, 128, (n_out, c, k, k)).astype(np.int8)
    b = rng.integers(-(10**5), 10**5, n_out).astype(np.int32)
    acc_shift = accumulator_shift(weight_bound(w, b, xdt))
    mult, shift = quantize_multiplier(rng.uniform(0.5, 2.0, n_out) * 2.0 ** (acc_shift - 10))
    args = (x, QMAX[xdt] // 3, prepare_weight(w), b, mult, shift, 3, 0, QMAX[xdt], stride, padding, acc_shift, method)
    want = conv2d(*args)
    assert_bit_equal(want, conv2d_ref(x, *args[1:2], w, *args[3:12]))
    for budget in (1, 3000, 20000, 60000):
        assert_bit_equal(conv2d(*args, work_bytes=budget), want)


@pytest.mark.parametrize("method", ["u8"] * gemm_i16.QUADS + ["i16"])
@pytest.mark.parametrize("xdt", [np.uint8, np.uint16])
def test_conv2d_with_weights_taken_as_uncached_is_bit_equal(monkeypatch, xdt, method):
    """Weights over I16_CACHED_WEIGHT_BYTES get row blocks sized by one L1 K-block of activations: with every
    weight taken as that large, short K-blocks and small row blocks (several row blocks, several K-blocks
    each), the integers are the reference's."""
    from tinysd.kernels import gemm

    rng = np.random.default_rng(21)
    args = _case(rng, "k3_stride1_pad1_c128", xdt, zp=QMAX[xdt] // 3)
    want = conv2d_ref(*args)
    monkeypatch.setattr(gemm, "I16_CACHED_WEIGHT_BYTES", 0)
    monkeypatch.setattr(gemm_i16, "L1_PAIRS", 16)
    monkeypatch.setattr(gemm, "I16_ROW_BLOCK_BYTES", 3 * gemm_i16.MR * 64)  # 3 tiles of 32-element K-blocks
    assert_bit_equal(conv2d(*args, method=method), want)


def test_conv2d_work_buffers_stay_within_the_bound():
    """The NumPy allocations of a banded conv2d beyond its output stay under work_bytes (the unbanded
    one needs several times more: the bound is what limits them)."""
    import tracemalloc

    rng = np.random.default_rng(5)
    x = rng.integers(0, 65536, (1, 32, 96, 96)).astype(np.uint16)
    wq = prepare_weight(rng.integers(-128, 128, (32, 32, 3, 3)).astype(np.int8))
    args = (x, 7, wq, None, 2**30, -12, 0, 0, 65535, 1, 1, 6)
    budget = 1 << 20
    peaks = {}
    for bound in (budget, 1 << 30):
        conv2d(*args, work_bytes=bound)  # warm up: packed weight, JIT
        tracemalloc.start()
        out = conv2d(*args, work_bytes=bound)
        peaks[bound] = tracemalloc.get_traced_memory()[1] - out.nbytes
        tracemalloc.stop()
    assert peaks[budget] <= budget < peaks[1 << 30] / 4, peaks


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(x_q=np.zeros((4, 5, 5), np.uint8)), "x_q"),
        (dict(x_q=np.zeros((1, 3, 5, 5), np.uint8)), "x_q"),
        (dict(x_q=np.zeros((1, 4, 5, 5), np.float32)), "x_q"),
        (dict(x_q=np.zeros((1, 4, 1, 1), np.uint8)), "x_q"),
        (dict(w_q=np.zeros((2, 4, 3), np.int8)), "w_q"),
        (dict(padding=(1, 1, 1)), "padding"),
        (dict(padding=-1), "padding"),
        (dict(stride=0), "stride"),
        (dict(x_zp=256), "x_zp"),
        (dict(shift=np.array([0, 0, 0])), "shift"),
    ],
)
def test_conv2d_bad_input_names_argument(change, name):
    args = dict(x_q=np.zeros((1, 4, 5, 5), np.uint8), x_zp=0, w_q=np.zeros((2, 4, 3, 3), np.int8), bias_q=None,
                multiplier=2**30, shift=0, out_zp=0, qmin=0, qmax=255, stride=1, padding=0)
    args.update(change)
    with pytest.raises(ValueError, match=name):
        conv2d(**args)
