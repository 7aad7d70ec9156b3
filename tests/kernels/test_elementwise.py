"""Elementwise and data-movement ops bit-equal to their references (spec §4.4-4.9)."""
import numpy as np
import pytest

from tinysd.fixedpoint import quantize_multiplier
from tinysd.kernels import (
    ADD_LEFT_SHIFT,
    add,
    concat,
    embedding,
    mul,
    requantize_tensor,
    upsample_nearest2x,
)
from tinysd.kernels.reference import (
    add_ref,
    concat_ref,
    embedding_ref,
    mul_ref,
    requantize_tensor_ref,
    upsample_nearest2x_ref,
)

QMAX = {np.uint8: 255, np.uint16: 65535}


def assert_bit_equal(got, want):
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    bad = np.argwhere(got != want)[:5]
    assert bad.size == 0, "; ".join(f"pos {tuple(p)} / actual {got[tuple(p)]} / expected {want[tuple(p)]}"
                                    for p in bad)


def add_params(s_a, s_b, s_out, left_shift):
    """TFLite-style add parameters (float64, quantization time), spec §4.5."""
    twice = 2 * max(s_a, s_b)
    am, ash = quantize_multiplier(s_a / twice)
    bm, bsh = quantize_multiplier(s_b / twice)
    om, osh = quantize_multiplier(twice / (2**left_shift * s_out))
    return am, ash, bm, bsh, om, osh


def all_pairs(dt):
    a, b = np.meshgrid(np.arange(QMAX[dt] + 1), np.arange(QMAX[dt] + 1), indexing="ij")
    return a.astype(dt), b.astype(dt)


# --- requantize_tensor ---------------------------------------------------------------------------------
@pytest.mark.parametrize("xdt, odt", [(np.uint8, np.uint8), (np.uint16, np.uint16), (np.uint8, np.uint16)])
def test_requantize_tensor_exhaustive(xdt, odt):
    x = np.arange(QMAX[xdt] + 1).astype(xdt)  # every input value
    for real, x_zp, o_zp in [(0.37, 3, 200), (1.0, QMAX[xdt], 0), (2.5, 0, QMAX[odt] // 2), (1e-3, 17, 1)]:
        m, s = quantize_multiplier(real)
        got = requantize_tensor(x, x_zp, m, s, o_zp, 0, QMAX[odt])
        assert_bit_equal(got, requantize_tensor_ref(x, x_zp, m, s, o_zp, 0, QMAX[odt]))
        # within 1 LSB of round(real * (x - zp)) + zp where not clipped
        want = np.clip(np.floor(real * (x.astype(np.int64) - x_zp) + 0.5) + o_zp, 0, QMAX[odt])
        assert np.abs(got.astype(np.int64) - want).max() <= 1


def test_requantize_tensor_identity_encoding_is_exact():
    x = np.arange(65536).astype(np.uint16)
    assert quantize_multiplier(1.0) == (2**30, 1)
    assert_bit_equal(requantize_tensor(x, 123, 2**30, 1, 123, 0, 65535), x)


# --- add ------------------------------------------------------------------------------------------------
def test_add_exhaustive_uint8_pairs():
    a, b = all_pairs(np.uint8)
    for s_a, s_b, s_o, a_zp, b_zp, o_zp in [(0.02, 0.05, 0.06, 128, 3, 100), (0.1, 0.1, 0.1, 0, 255, 128),
                                            (0.003, 0.04, 0.05, 77, 0, 0)]:
        p = add_params(s_a, s_b, s_o, ADD_LEFT_SHIFT["uint8"])
        got = add(a, a_zp, p[0], p[1], b, b_zp, p[2], p[3], p[4], p[5], o_zp, 0, 255)
        assert_bit_equal(got, add_ref(a, a_zp, p[0], p[1], b, b_zp, p[2], p[3], p[4], p[5], o_zp, 0, 255,
                                      ADD_LEFT_SHIFT["uint8"]))
        # accuracy: within 1 LSB of round((s_a (a - a_zp) + s_b (b - b_zp)) / s_out) + o_zp
        real = (s_a * (a.astype(np.float64) - a_zp) + s_b * (b.astype(np.float64) - b_zp)) / s_o
        want = np.clip(np.floor(real + 0.5) + o_zp, 0, 255)
        assert np.abs(got.astype(np.int64) - want).max() <= 1


def test_add_uint16_random_and_broadcast():
    rng = np.random.default_rng(30)
    a = rng.integers(0, 65536, (2, 5, 4, 3)).astype(np.uint16)
    b = rng.integers(0, 65536, (5, 1, 3)).astype(np.uint16)  # broadcast like a (C, 1, 1) bias-style add
    edge = np.array([0, 65535], np.uint16)
    p = add_params(3e-4, 1e-4, 5e-4, 14)
    for x, y in ((a, b), (edge[:, None], edge[None, :])):
        got = add(x, 30000, p[0], p[1], y, 5, p[2], p[3], p[4], p[5], 32768, 0, 65535)
        assert_bit_equal(got, add_ref(x, 30000, p[0], p[1], y, 5, p[2], p[3], p[4], p[5], 32768, 0, 65535, 14))
        real = (3e-4 * (x.astype(np.float64) - 30000) + 1e-4 * (y.astype(np.float64) - 5)) / 5e-4
        want = np.clip(np.floor(real + 0.5) + 32768, 0, 65535)
        assert np.abs(got.astype(np.int64) - want).max() <= 1


def test_add_bad_input():
    a = np.zeros(4, np.uint8)
    base = (a, 0, 2**30, 0, a, 0, 2**30, 0, 2**30, 0, 0, 0, 255)
    with pytest.raises(ValueError, match="left_shift"):
        add(*base, left_shift=23)
    with pytest.raises(ValueError, match="a_shift"):
        add(a, 0, 2**30, 1, a, 0, 2**30, 0, 2**30, 0, 0, 0, 255)
    with pytest.raises(ValueError, match="b_q"):
        add(a, 0, 2**30, 0, np.zeros(3, np.uint8), 0, 2**30, 0, 2**30, 0, 0, 0, 255)
    with pytest.raises(ValueError, match="b_zp"):
        add(a, 0, 2**30, 0, a, 256, 2**30, 0, 2**30, 0, 0, 0, 255)
    with pytest.raises(ValueError, match="a_q"):
        add(a.astype(np.int32), 0, 2**30, 0, a, 0, 2**30, 0, 2**30, 0, 0, 0, 255)


# --- mul ------------------------------------------------------------------------------------------------
def test_mul_exhaustive_uint8_pairs():
    a, b = all_pairs(np.uint8)
    s_a, s_b, s_o = 0.02, 0.03, 0.01
    m, s = quantize_multiplier(s_a * s_b / s_o)
    got = mul(a, 120, b, 7, m, s, 50, 0, 255)
    assert_bit_equal(got, mul_ref(a, 120, b, 7, m, s, 50, 0, 255))
    real = s_a * s_b * (a.astype(np.float64) - 120) * (b.astype(np.float64) - 7) / s_o
    assert np.abs(got.astype(np.int64) - np.clip(np.floor(real + 0.5) + 50, 0, 255)).max() <= 1


def test_mul_uint16_needs_one_bit_of_acc_shift():
    rng = np.random.default_rng(31)
    a = np.concatenate([rng.integers(0, 65536, 5000), [0, 65535, 0, 65535]]).astype(np.uint16)
    b = np.concatenate([rng.integers(0, 65536, 5000), [0, 65535, 65535, 0]]).astype(np.uint16)
    for a_zp, b_zp in ((0, 65535), (65535, 65535), (30000, 100)):
        m, s = quantize_multiplier(1e-5 * 2.0)  # real multiplier of the product, times 2**acc_shift
        got = mul(a, a_zp, b, b_zp, m, s, 1000, 0, 65535, acc_shift=1)
        assert_bit_equal(got, mul_ref(a, a_zp, b, b_zp, m, s, 1000, 0, 65535, acc_shift=1))
    with pytest.raises(ValueError, match="acc_shift"):
        mul(a, 0, b, 0, m, s, 0, 0, 65535, acc_shift=-1)


# --- concat, upsample, embedding ----------------------------------------------------------------------
def test_concat_matches_reference_and_identity():
    rng = np.random.default_rng(32)
    x1 = rng.integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    x2 = rng.integers(0, 256, (2, 5, 4, 4)).astype(np.uint8)
    m2, s2 = quantize_multiplier(0.043 / 0.05)
    args = ([x1, x2], [40, 200], [2**30, m2], [1, s2], 1, 40, 0, 255)  # x1 already in the output encoding
    got = concat(*args)
    assert_bit_equal(got, concat_ref(*args))
    assert_bit_equal(got[:, :3], x1)
    with pytest.raises(ValueError, match="xs"):
        concat([x1, x2[:, :, :3]], [0, 0], [2**30] * 2, [1, 1], 1, 0, 0, 255)
    with pytest.raises(ValueError, match="shifts"):
        concat([x1, x2], [0, 0], [2**30] * 2, [1], 1, 0, 0, 255)


def test_upsample_and_embedding_match_reference():
    rng = np.random.default_rng(33)
    x = rng.integers(0, 65536, (2, 3, 4, 5)).astype(np.uint16)
    assert_bit_equal(upsample_nearest2x(x), upsample_nearest2x_ref(x))
    table = rng.integers(0, 256, (49, 6)).astype(np.uint8)
    ids = rng.integers(0, 49, (2, 7))
    assert_bit_equal(embedding(ids, table), embedding_ref(ids, table))
    with pytest.raises(ValueError, match="ids"):
        embedding(np.array([49]), table)
    with pytest.raises(ValueError, match="ids"):
        embedding(np.array([0.5]), table)
    with pytest.raises(ValueError, match="x_q"):
        upsample_nearest2x(x[0])
