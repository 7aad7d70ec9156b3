"""Fixed-point primitives: NumPy and Numba forms bit-equal to the Python-int reference (spec §2)."""
import math

import numpy as np
import pytest
from numba import njit

from tinysd.fixedpoint import (
    ARITHMETIC_SPEC_VERSION,
    accumulator_shift,
    narrow_i64,
    narrow_i64_scalar,
    quantize_multiplier,
    requantize,
    requantize_i32,
    rounding_shift_right,
    rounding_shift_right_i32,
    rounding_shift_right_i64,
    saturate_i32,
    srdhm,
    srdhm_i32,
)
from tinysd.fixedpoint.reference import (
    narrow_i64_ref,
    quantize_multiplier_ref,
    requantize_ref,
    rounding_shift_right_ref,
    srdhm_ref,
)

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
EDGE32 = [I32_MIN, I32_MIN + 1, -(2**30) - 1, -(2**30), -(2**30) + 1, -65536, -257, -256, -255, -129, -128,
          -3, -2, -1, 0, 1, 2, 3, 127, 128, 255, 256, 65535, 2**30 - 1, 2**30, 2**30 + 1, I32_MAX - 1, I32_MAX]


@njit(cache=True)
def _srdhm_nb(a, b, out):
    for i in range(a.size):
        out[i] = srdhm_i32(a[i], b[i])


@njit(cache=True)
def _rsr_nb(x, n, out):
    for i in range(x.size):
        out[i] = rounding_shift_right_i32(x[i], n[i])


@njit(cache=True)
def _rsr64_nb(x, n, out):
    for i in range(x.size):
        out[i] = rounding_shift_right_i64(x[i], n[i])


@njit(cache=True)
def _narrow_nb(x, n, out):
    for i in range(x.size):
        out[i] = narrow_i64_scalar(x[i], n[i])


@njit(cache=True)
def _requant_nb(acc, m, s, zp, qmin, qmax, out):
    for i in range(acc.size):
        out[i] = requantize_i32(acc[i], m[i], s[i], zp[i], qmin[i], qmax[i])


def _pairs(values):
    a, b = np.meshgrid(np.array(values, np.int64), np.array(values, np.int64), indexing="ij")
    return a.ravel(), b.ravel()


def test_spec_version_is_a_string():
    assert isinstance(ARITHMETIC_SPEC_VERSION, str) and ARITHMETIC_SPEC_VERSION.count(".") == 1


# --- quantize_multiplier -----------------------------------------------------------------------
def test_quantize_multiplier_matches_reference_and_bound():
    rng = np.random.default_rng(1)
    reals = np.concatenate([
        np.exp(rng.uniform(math.log(2.0**-32), math.log(2.0**30 * 0.999), 3000)),
        [2.0**-32, 0.5, 1.0, 2.0, 0.75, 1e-3, 2.0**30 * (1 - 2**-20)],
        [1 - 2.0**-33, 1 - 2.0**-32, 0.5 * (1 - 2.0**-33)],  # m * 2**31 rounds up to 2**31
    ])
    m, s = quantize_multiplier(reals)
    assert m.dtype == np.int32 and s.dtype == np.int32
    for r, mi, si in zip(reals, m, s):
        assert (int(mi), int(si)) == quantize_multiplier_ref(float(r))
        assert 2**30 <= mi <= I32_MAX and -31 <= si <= 30
        # |multiplier * 2**(shift-31) - real| <= real * 2**-31 (rounding m * 2**31 to an integer, m >= 0.5)
        assert abs(int(mi) * 2.0 ** (int(si) - 31) - r) <= r * 2.0**-31
    assert quantize_multiplier(1 - 2.0**-33) == (2**30, 1)
    assert quantize_multiplier(0.5) == (2**30, 0)
    assert quantize_multiplier(1.0) == (2**30, 1)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), 2.0**30, 2.0**-33])
def test_quantize_multiplier_rejects(bad):
    with pytest.raises(ValueError, match="real"):
        quantize_multiplier(bad)


# --- srdhm ---------------------------------------------------------------------------------------
def test_srdhm_edges_all_forms():
    a, b = _pairs(EDGE32)
    expect = np.array([srdhm_ref(int(x), int(y)) for x, y in zip(a, b)], np.int64)
    got = srdhm(a, b)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expect)
    out = np.empty_like(a)
    _srdhm_nb(a, b, out)
    np.testing.assert_array_equal(out, expect)
    assert srdhm(I32_MIN, I32_MIN) == I32_MAX  # the one saturating case
    assert srdhm(I32_MIN, I32_MAX) == -I32_MAX
    assert srdhm(1, 2**30) == 1 and srdhm(-1, 2**30) == 0  # ties: 0.5 -> 1, -0.5 -> 0 (half up)


def test_srdhm_random_and_exhaustive_8bit():
    rng = np.random.default_rng(2)
    a = rng.integers(I32_MIN, I32_MAX, 20000, endpoint=True)
    b = rng.integers(I32_MIN, I32_MAX, 20000, endpoint=True)
    # all 8-bit a against a spread of multipliers
    a8, b8 = np.meshgrid(np.arange(-128, 256), np.array([2**30, I32_MAX, 1, 3 * 2**29]), indexing="ij")
    a = np.concatenate([a, a8.ravel()])
    b = np.concatenate([b, b8.ravel()])
    expect = np.array([srdhm_ref(int(x), int(y)) for x, y in zip(a, b)], np.int64)
    np.testing.assert_array_equal(srdhm(a, b), expect)
    out = np.empty_like(a)
    _srdhm_nb(a, b, out)
    np.testing.assert_array_equal(out, expect)


# --- rounding_shift_right -------------------------------------------------------------------------
def test_rounding_shift_right_exhaustive_small_and_edges():
    x = np.concatenate([np.arange(-4096, 4097), EDGE32]).astype(np.int64)
    xs, ns = np.meshgrid(x, np.arange(32), indexing="ij")
    xs, ns = xs.ravel(), ns.ravel()
    expect = np.array([rounding_shift_right_ref(int(v), int(n)) for v, n in zip(xs, ns)], np.int64)
    got = rounding_shift_right(xs.astype(np.int32), ns)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expect)
    out = np.empty_like(xs)
    _rsr_nb(xs, ns, out)
    np.testing.assert_array_equal(out, expect)
    # exact ties round toward +inf
    assert rounding_shift_right(np.int32(5), 1) == 3 and rounding_shift_right(np.int32(-5), 1) == -2
    assert rounding_shift_right(np.int32(I32_MAX), 31) == 1 and rounding_shift_right(np.int32(I32_MIN), 31) == -1


def test_rounding_shift_right_64_and_narrow():
    rng = np.random.default_rng(3)
    lim = 2**62 - 1
    x = np.concatenate([rng.integers(-lim, lim, 5000, endpoint=True), [-lim, lim, 0, 1, -1, 2**31, -(2**31) - 1]])
    n = rng.integers(0, 63, x.size)
    n[-7:] = [62, 62, 0, 1, 1, 1, 1]
    expect = np.array([rounding_shift_right_ref(int(v), int(k)) for v, k in zip(x, n)], np.int64)
    np.testing.assert_array_equal(rounding_shift_right(x, n), expect)
    out = np.empty_like(x)
    _rsr64_nb(x, n, out)
    np.testing.assert_array_equal(out, expect)
    expect_n = np.array([narrow_i64_ref(int(v), int(k)) for v, k in zip(x, n)], np.int64)
    got = narrow_i64(x, n)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expect_n)
    _narrow_nb(x, n, out)
    np.testing.assert_array_equal(out, expect_n)


def test_accumulator_shift_is_minimal_and_sufficient():
    for bound in [0, 1, I32_MAX, I32_MAX + 1, 2**32 - 1, 65535**2, 23040 * 128 * 65535 + 2**31, 2**62 - 1]:
        n = accumulator_shift(bound)
        for v in (bound, -bound):
            assert -(2**31) <= rounding_shift_right_ref(v, n) <= I32_MAX
        if n > 0:
            assert rounding_shift_right_ref(bound, n - 1) > I32_MAX
    assert accumulator_shift(65535**2) == 1
    np.testing.assert_array_equal(accumulator_shift(np.array([5, 2**31])), [0, 1])


# --- requantize -------------------------------------------------------------------------------
def _requant_cases(rng, n):
    acc = rng.integers(I32_MIN, I32_MAX, n, endpoint=True)
    acc[: n // 2] //= 2 ** rng.integers(0, 31, n // 2)  # many small accumulators too
    m = rng.integers(0, I32_MAX, n, endpoint=True)
    s = rng.integers(-31, 31, n)
    qmin = rng.integers(-70000, 1, n)
    qmax = qmin + rng.integers(0, 140000, n)
    zp = rng.integers(qmin, qmax, endpoint=True)
    return acc, m, s, zp, qmin, qmax


def test_requantize_random_and_edges_all_forms():
    rng = np.random.default_rng(4)
    acc, m, s, zp, qmin, qmax = _requant_cases(rng, 20000)
    # edges: int32 extremes with the largest left shift (saturation), largest right shift, ties
    e_acc, e_m = _pairs([I32_MIN, -1, 0, 1, I32_MAX, 3, -3])
    for shift in (-31, -1, 0, 1, 30):
        acc = np.concatenate([acc, e_acc])
        m = np.concatenate([m, np.abs(e_m) % 2**31])
        s = np.concatenate([s, np.full(e_acc.size, shift)])
        zp = np.concatenate([zp, np.zeros(e_acc.size, np.int64)])
        qmin = np.concatenate([qmin, np.full(e_acc.size, I32_MIN)])
        qmax = np.concatenate([qmax, np.full(e_acc.size, I32_MAX)])
    expect = np.array([requantize_ref(*map(int, t)) for t in zip(acc, m, s, zp, qmin, qmax)], np.int64)
    got = requantize(acc, m, s, zp, qmin, qmax)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expect)
    out = np.empty_like(acc)
    _requant_nb(acc, m, s, zp, qmin, qmax, out)
    np.testing.assert_array_equal(out, expect)


def test_requantize_exhaustive_uint8_accumulators():
    acc = np.arange(-65536, 65536)
    for real in (1 / 3, 0.5, 1.0, 1e-3, 1.9):
        mult, shift = quantize_multiplier(real)
        expect = np.array([requantize_ref(int(a), mult, shift, 128, 0, 255) for a in acc])
        np.testing.assert_array_equal(requantize(acc, mult, shift, 128, 0, 255), expect)


def test_requantize_exact_ties_round_half_up():
    # real = 0.5: acc * 0.5 is an exact tie for odd acc; half up gives (acc + 1) >> 1
    acc = np.arange(-9, 10)
    np.testing.assert_array_equal(requantize(acc, 2**30, 0, 0, -100, 100), (acc + 1) >> 1)
    # real = 0.25 = 0.5 * 2**-1: srdhm rounds acc/2 half up, then the right shift rounds again
    # (the documented double rounding of the HVX sequence): ((acc + 1) >> 1 + 1) >> 1
    np.testing.assert_array_equal(requantize(acc, 2**30, -1, 0, -100, 100), (((acc + 1) >> 1) + 1) >> 1)
    assert requantize(-7, 2**30, -1, 0, -100, 100) == -1  # exact -1.75; the double rounding gives -1
    # saturating left shift: sat32(I32_MAX * 2**30) = I32_MAX, then srdhm by 2**30 (x 0.5) gives 2**30
    assert requantize(np.int32(I32_MAX), 2**30, 30, 0, I32_MIN, I32_MAX) == 2**30


def test_requantize_within_one_lsb_of_real_product():
    """|requantize(acc) - zp - round(real * acc)| <= 1 LSB for unclipped outputs (multiplier error <= 2**-31)."""
    rng = np.random.default_rng(5)
    real = np.exp(rng.uniform(math.log(1e-6), math.log(4.0), 4000))
    mult, shift = quantize_multiplier(real)
    acc = np.round(rng.uniform(-1, 1, real.size) * np.minimum(2**31 - 1, 30000 / real)).astype(np.int64)
    got = requantize(acc, mult, shift, 7, I32_MIN, I32_MAX).astype(np.int64) - 7
    assert np.max(np.abs(got - np.floor(real * acc + 0.5))) <= 1


def test_requantize_broadcasts_per_channel():
    rng = np.random.default_rng(6)
    acc = rng.integers(-(2**20), 2**20, (5, 4))
    mult, shift = quantize_multiplier(np.array([1e-3, 2e-4, 0.3, 1.5]))
    got = requantize(acc, mult, shift, 3, 0, 255)
    for j in range(4):
        np.testing.assert_array_equal(got[:, j], requantize(acc[:, j], int(mult[j]), int(shift[j]), 3, 0, 255))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(acc=np.array([1.5])), "acc"),
        (dict(acc=np.array([2**31])), "acc"),
        (dict(multiplier=-1), "multiplier"),
        (dict(multiplier=2**31), "multiplier"),
        (dict(shift=31), "shift"),
        (dict(shift=-32), "shift"),
        (dict(zero_point=256), "zero_point"),
        (dict(qmin=10, qmax=5, zero_point=7), "qmin"),
    ],
)
def test_requantize_bad_input_names_argument(kwargs, name):
    args = dict(acc=np.array([5], np.int32), multiplier=2**30, shift=0, zero_point=0, qmin=0, qmax=255)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        requantize(**args)


def test_primitives_bad_input():
    with pytest.raises(ValueError, match="a"):
        srdhm(2**31, 1)
    with pytest.raises(ValueError, match="n"):
        rounding_shift_right(np.int32(3), 32)
    with pytest.raises(ValueError, match="n"):
        narrow_i64(np.int64(3), 63)
    with pytest.raises(ValueError, match="acc"):
        narrow_i64(np.array([2**62]), 1)
    with pytest.raises(ValueError, match="bound"):
        accumulator_shift(-1)
    assert saturate_i32(np.array([2**40, -(2**40), 5])).tolist() == [I32_MAX, I32_MIN, 5]
