"""Python-int reference of the fixed-point primitives: the executable form of docs/arithmetic.md §2.

Every function takes and returns Python ints (arbitrary precision), so no intermediate can
wrap. The NumPy and Numba forms in `primitives.py` are tested bit-equal to these.
"""
from __future__ import annotations

import math
from fractions import Fraction

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def sat32(x: int) -> int:
    """clip(x, -2**31, 2**31 - 1)."""
    return max(INT32_MIN, min(INT32_MAX, x))


def quantize_multiplier_ref(real: float) -> tuple[int, int]:
    """(multiplier, shift) with real ~= multiplier * 2**(shift - 31); see primitives.quantize_multiplier."""
    if not math.isfinite(real) or real <= 0:
        raise ValueError("real: must be finite and > 0")
    m, e = math.frexp(real)  # real = m * 2**e, m in [0.5, 1)
    scaled = Fraction(m) * 2**31
    q = math.floor(scaled + Fraction(1, 2))  # half away from zero (m > 0)
    if q == 2**31:
        q //= 2
        e += 1
    if not -31 <= e <= 30:
        raise ValueError("real: shift outside [-31, 30]")
    return q, e


def srdhm_ref(a: int, b: int) -> int:
    """sat32((a*b + 2**30) >> 31): HVX vmpye/vmpyo :<<1:rnd:sat."""
    return sat32((a * b + 2**30) >> 31)


def rounding_shift_right_ref(x: int, n: int) -> int:
    """(x + 2**(n-1)) >> n for n >= 1 (half up), x for n = 0 (HVX: vasr(x, n) + (vasr(x, n-1) & 1))."""
    if n == 0:
        return x
    return (x + (1 << (n - 1))) >> n


def narrow_i64_ref(acc: int, n: int) -> int:
    """sat32(rounding_shift_right(acc, n)) for a 64-bit accumulator."""
    return sat32(rounding_shift_right_ref(acc, n))


def requantize_ref(acc: int, multiplier: int, shift: int, zero_point: int, qmin: int, qmax: int) -> int:
    """clip(rsr(srdhm(sat32(acc * 2**max(shift,0)), multiplier), max(-shift,0)) + zero_point, qmin, qmax)."""
    x = sat32(acc * 2 ** max(shift, 0))
    y = srdhm_ref(x, multiplier)
    y = rounding_shift_right_ref(y, max(-shift, 0))
    return max(qmin, min(qmax, y + zero_point))
