"""Fixed-point primitives with Hexagon HVX semantics (spec: docs/arithmetic.md, section 2).

Three forms of every primitive, bit-identical by test:

* NumPy, elementwise with broadcasting (`srdhm`, `rounding_shift_right`,
  `requantize`, ...): checked arguments, int64 arithmetic, results as int32/int64.
* Numba scalars (`srdhm_i32`, `rounding_shift_right_i32`, `requantize_i32`, ...):
  unchecked, for use inside other `@njit` kernels.
* Python-int references in `tinysd.fixedpoint.reference`: the executable spec.

All rounding is half up (toward +inf), as HVX `:rnd` does: a rounding right shift
by n adds 2**(n-1) and then shifts arithmetically (floor). This differs from
gemmlowp/TFLite, which round half away from zero.
"""
from __future__ import annotations

import numpy as np
from numba import njit

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
SHIFT_MIN = -31  # quantize_multiplier / requantize shift range
SHIFT_MAX = 30
ACC_SHIFT_MAX = 62  # narrow_i64 shift range is [0, 62]
ACC64_LIMIT = 2**62  # 64-bit accumulators must satisfy |acc| < 2**62

__all__ = [
    "INT32_MIN", "INT32_MAX", "SHIFT_MIN", "SHIFT_MAX",
    "quantize_multiplier", "srdhm", "rounding_shift_right", "saturate_i32",
    "narrow_i64", "requantize", "accumulator_shift",
    "srdhm_i32", "rounding_shift_right_i32", "rounding_shift_right_i64",
    "saturate_i32_scalar", "narrow_i64_scalar", "requantize_i32",
]


# --------------------------------------------------------------------------------------------
# argument checks (ValueError naming the argument)
# --------------------------------------------------------------------------------------------
def _as_int_array(name, x, lo, hi):
    """x as an int64 array; ValueError naming `name` if not integer or outside [lo, hi]."""
    a = np.asarray(x)
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.size and int(a.max()) > 2**63 - 1:
        raise ValueError(f"{name}: values outside [{lo}, {hi}]")
    a = a.astype(np.int64, copy=False)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise ValueError(f"{name}: values outside [{lo}, {hi}] (min {int(a.min())}, max {int(a.max())})")
    return a


def _result(a):
    """0-d arrays come back as Python ints; others as arrays."""
    return int(a) if np.ndim(a) == 0 else a


# --------------------------------------------------------------------------------------------
# quantize_multiplier: float64 work done once, at quantization time
# --------------------------------------------------------------------------------------------
def quantize_multiplier(real):
    """Encode positive reals as `multiplier * 2**(shift - 31)`.

    `real = m * 2**e` with `m` in [0.5, 1) (frexp, exact in float64);
    `multiplier = round_half_away_from_zero(m * 2**31)` (m * 2**31 is exact; the +0.5 is exact
    because m * 2**31 < 2**31 has ulp <= 2**-22); if that equals 2**31 it is halved and e
    incremented; `shift = e`. So multiplier is in [2**30, 2**31 - 1] and
    `real ~= multiplier * 2**(shift - 31)` with relative error <= 2**-31.

    Accepts a float or a float array (elementwise). Returns `(multiplier, shift)`: Python ints
    for a scalar, int32 arrays otherwise. ValueError for real <= 0, non-finite real, or a
    shift outside [-31, 30].
    """
    r = np.asarray(real, dtype=np.float64)
    if r.size and not np.all(np.isfinite(r)):
        raise ValueError("real: must be finite")
    if r.size and not np.all(r > 0):
        raise ValueError("real: must be > 0")
    m, e = np.frexp(r)
    q = np.floor(m * 2.0**31 + 0.5).astype(np.int64)  # m > 0: half away from zero == half up
    e = e.astype(np.int64)
    over = q == 2**31
    q = np.where(over, q // 2, q)
    e = np.where(over, e + 1, e)
    if r.size and (int(e.min()) < SHIFT_MIN or int(e.max()) > SHIFT_MAX):
        raise ValueError(
            f"real: shift outside [{SHIFT_MIN}, {SHIFT_MAX}] (real must lie in [2**-32, 2**30))"
        )
    if r.ndim == 0:
        return int(q), int(e)
    return q.astype(np.int32), e.astype(np.int32)


def accumulator_shift(bound):
    """Smallest n in [0, 62] such that narrow_i64 of any |acc| <= bound cannot saturate.

    That is, the smallest n with `(bound + 2**(n-1)) >> n <= 2**31 - 1` (n = 0: bound <= 2**31 - 1;
    the negative side `-bound` never needs more). `bound` is a Python int or an integer
    array of worst-case |acc| (elementwise); returns int or int32 array.
    """
    b = np.asarray(bound)
    flat = [int(v) for v in b.reshape(-1)]
    out = []
    for v in flat:
        if v < 0 or v >= ACC64_LIMIT:
            raise ValueError(f"bound: must be in [0, 2**62), got {v}")
        n = 0
        while ((v + (1 << (n - 1))) >> n if n else v) > INT32_MAX:
            n += 1
        out.append(n)
    if b.ndim == 0:
        return out[0]
    return np.array(out, dtype=np.int32).reshape(b.shape)


# --------------------------------------------------------------------------------------------
# NumPy elementwise forms
# --------------------------------------------------------------------------------------------
def _sat32(x):
    return np.clip(x, INT32_MIN, INT32_MAX)


def saturate_i32(x):
    """clip(x, -2**31, 2**31 - 1) of an integer array, as int32 (HVX vsat / :sat)."""
    a = _as_int_array("x", x, -(2**63), 2**63 - 1)
    return _result(_sat32(a).astype(np.int32))


def srdhm(a, b):
    """Saturating rounding doubling high multiply of int32 values (elementwise, broadcasting).

    `sat32((a * b + 2**30) >> 31)`, with `>>` an arithmetic (floor) shift of the exact 64-bit
    product: the high word of 2*a*b rounded half up. The only saturating case is
    a = b = -2**31 (result 2**31 - 1). Mirrors HVX `Vd.w = vmpye(Vu.w, Vv.uh)` followed by
    `Vd.w += vmpyo(Vu.w, Vv.h):<<1:rnd:sat` (the 32x32 fractional multiply).
    Returns int32.
    """
    a64 = _as_int_array("a", a, INT32_MIN, INT32_MAX)
    b64 = _as_int_array("b", b, INT32_MIN, INT32_MAX)
    p = a64 * b64  # |p| <= 2**62: exact in int64
    return _result(_sat32((p + 2**30) >> 31).astype(np.int32))


def rounding_shift_right(x, n):
    """Rounding arithmetic shift right: `(x + 2**(n-1)) >> n` for n >= 1, x for n = 0.

    Rounds half up (toward +inf), computed without overflow. On HVX (tinysd/hvx/prims.h):
    `vasr(x, n) + (vasr(x, n - 1) & 1)` for words, `vaddcarry` + `vlsr`/`vasrinto` for word pairs.
    x: int32 values with n in [0, 31] (result int32), or, for int64 input arrays, any
    |x| < 2**62 with n in [0, 62] (result int64). Elementwise with broadcasting.
    """
    xa = np.asarray(x)
    wide = xa.dtype == np.int64 or xa.dtype == np.uint64 or xa.dtype == np.uint32
    if wide:
        x64 = _as_int_array("x", xa, -(ACC64_LIMIT - 1), ACC64_LIMIT - 1)
        n64 = _as_int_array("n", n, 0, ACC_SHIFT_MAX)
    else:
        x64 = _as_int_array("x", xa, INT32_MIN, INT32_MAX)
        n64 = _as_int_array("n", n, 0, 31)
    half = np.where(n64 > 0, np.left_shift(np.int64(1), np.maximum(n64 - 1, 0)), 0)
    y = (x64 + half) >> n64  # |x| + 2**61 < 2**63: no overflow
    if wide:
        return _result(y)
    return _result(y.astype(np.int32))


def narrow_i64(acc, n):
    """Narrow a 64-bit accumulator to int32: `sat32(rounding_shift_right(acc, n))`.

    acc: integer array with |acc| < 2**62; n in [0, 62]. Returns int32. Mirrors, on HVX,
    a word-pair rounding shift (vaddcarry for the rounding constant, vlsr + vasrinto for the
    shift) followed by vsatdw to one word. With n = accumulator_shift(bound) and |acc| <= bound the
    saturation provably never triggers.
    """
    a = _as_int_array("acc", acc, -(ACC64_LIMIT - 1), ACC64_LIMIT - 1)
    n64 = _as_int_array("n", n, 0, ACC_SHIFT_MAX)
    half = np.where(n64 > 0, np.left_shift(np.int64(1), np.maximum(n64 - 1, 0)), 0)
    return _result(_sat32((a + half) >> n64).astype(np.int32))


def requantize(acc, multiplier, shift, zero_point, qmin, qmax):
    """Rescale an int32 accumulator to an output encoding (elementwise, broadcasting).

        x = sat32(acc * 2**max(shift, 0))          # HVX vasrinto + vsatdw (a saturating left shift)
        y = srdhm(x, multiplier)                   # HVX vmpye/vmpyo :<<1:rnd:sat:shift
        y = rounding_shift_right(y, max(-shift, 0))  # HVX vasr, vasr, vand, vadd
        return clip(y + zero_point, qmin, qmax)     # HVX vadd:sat, vmax/vmin

    acc: int32 values; multiplier in [0, 2**31 - 1]; shift in [-31, 30];
    qmin <= zero_point <= qmax, all in int32. Returns int32 (values in [qmin, qmax]).
    Approximates round(acc * multiplier * 2**(shift - 31)) + zero_point, clipped.
    """
    a = _as_int_array("acc", acc, INT32_MIN, INT32_MAX)
    m = _as_int_array("multiplier", multiplier, 0, INT32_MAX)
    s = _as_int_array("shift", shift, SHIFT_MIN, SHIFT_MAX)
    lo = _as_int_array("qmin", qmin, INT32_MIN, INT32_MAX)
    hi = _as_int_array("qmax", qmax, INT32_MIN, INT32_MAX)
    if lo.size and hi.size and np.any(lo > hi):
        raise ValueError("qmin: must be <= qmax")
    zp = _as_int_array("zero_point", zero_point, INT32_MIN, INT32_MAX)
    if zp.size and (np.any(zp < lo) or np.any(zp > hi)):
        raise ValueError("zero_point: must lie in [qmin, qmax]")
    left = np.maximum(s, 0)
    right = np.maximum(-s, 0)
    x = _sat32(a << left)  # |a| * 2**30 < 2**61: exact before saturation
    y = _sat32((x * m + 2**30) >> 31)  # srdhm; m >= 0 so |x*m| < 2**62
    half = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    y = (y + half) >> right
    return _result(np.clip(y + zp, lo, hi).astype(np.int32))


# --------------------------------------------------------------------------------------------
# Numba scalar forms (unchecked; arguments must satisfy the ranges documented above)
# --------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def saturate_i32_scalar(x):
    """clip(x, -2**31, 2**31 - 1) of an int64 scalar, returned as int64."""
    if x > 2147483647:
        return np.int64(2147483647)
    if x < -2147483648:
        return np.int64(-2147483648)
    return np.int64(x)


@njit(cache=True, inline="always")
def srdhm_i32(a, b):
    """Scalar srdhm: sat32((a*b + 2**30) >> 31) for int32-range a, b; returns int64."""
    p = np.int64(a) * np.int64(b)  # |p| <= 2**62
    return saturate_i32_scalar((p + np.int64(1073741824)) >> np.int64(31))


@njit(cache=True, inline="always")
def rounding_shift_right_i32(x, n):
    """Scalar rounding shift right, half up, for int32-range x, n in [0, 31]; returns int64."""
    if n <= 0:
        return np.int64(x)
    return (np.int64(x) + (np.int64(1) << np.int64(n - 1))) >> np.int64(n)


@njit(cache=True, inline="always")
def rounding_shift_right_i64(x, n):
    """Scalar rounding shift right, half up, for |x| < 2**62, n in [0, 62]; returns int64."""
    if n <= 0:
        return np.int64(x)
    return (np.int64(x) + (np.int64(1) << np.int64(n - 1))) >> np.int64(n)


@njit(cache=True, inline="always")
def narrow_i64_scalar(acc, n):
    """Scalar narrow_i64: sat32(rounding_shift_right(acc, n)), |acc| < 2**62; returns int64."""
    return saturate_i32_scalar(rounding_shift_right_i64(acc, n))


@njit(cache=True, inline="always")
def requantize_i32(acc, multiplier, shift, zero_point, qmin, qmax):
    """Scalar requantize (see `requantize`); acc int32-range, shift in [-31, 30]; returns int64."""
    if shift > 0:
        x = saturate_i32_scalar(np.int64(acc) << np.int64(shift))
        right = 0
    else:
        x = np.int64(acc)
        right = -shift
    y = srdhm_i32(x, multiplier)
    y = rounding_shift_right_i32(y, right)
    y = y + np.int64(zero_point)
    if y < qmin:
        return np.int64(qmin)
    if y > qmax:
        return np.int64(qmax)
    return y
