"""GELU of the float engine: x Phi(x) in float64, rounded once to float32, in loops that vectorize.

Phi(x) = erfc(-x / sqrt 2) / 2, so one function serves both signs: with t = |x| / sqrt 2,
Phi = 1 - erfc(t) / 2 for x >= 0 and erfc(t) / 2 for x < 0 (no cancellation on the negative side, where
0.5 (1 + erf(x / sqrt 2)) loses every digit below x = -5). erfc(t) = exp(-t^2) H(y), y = 1 / (1 + t / 2):
H(y) = exp(t^2) erfc(t) is smooth on [0.16, 1] and is one fitted polynomial (`_H_POLY`, from
tools/fit_gelu.py); exp(-t^2) is a Cody-Waite reduction by ln 2, a degree-13 Taylor polynomial and 2**k
from the exponent bits. Relative error of erfc <= 8.2e-15 on [0, 10.5] (exp(-t^2) inherits the rounding of
t^2); beyond 10.5, erfc is taken as 0 (erfc(10.5) = 1.2e-49, below every float32 x Phi(x)). libm's erf does
not vectorize and a table of intervals would need gathers, which the compiler does not emit here; this
runs at 1.5 ns an element on one thread against 16 ns for libm's erf (AVX-512 machine). The result is the correctly rounded float32 GELU except within about 1e-14 (relative) of a
rounding tie: tests/test_float_interp.py finds no difference on 2 x 10**5 points against math.erfc.
"""
from __future__ import annotations

import functools

import numpy as np

# tools/fit_gelu.py --degree 24: erfc relative error <= 8.22e-15 on [0, 10.5]
_P, _T_MAX = 0.5, 10.5
_Y_LO = 0.16  # 1 / (1 + P T_MAX)
_LN2_HI, _LN2_LO = 0.6931471803691238, 1.9082149292705877e-10
_H_POLY = (  # H(y) = exp(t^2) erfc(t) as a polynomial in w, constant term first
    0.3302570590188501, 0.42892066362669895, 0.19746110736713632,
    0.04713741057519608, -0.0010205321863856667, -0.0030472196055932187,
    8.037911984525976e-05, 0.00026421273519088896, -4.008806898697171e-05,
    -2.1663434615173998e-05, 9.251667215653633e-06, 3.550831034065871e-07,
    -1.303665081571681e-06, 3.620992509071431e-07, 6.078642266597551e-08,
    -7.558691638794566e-08, 2.0438438896169082e-08, 3.262919302743846e-09,
    -4.797920850367842e-09, 1.7573617285287572e-09, 7.723750697267764e-11,
    -4.191906082672599e-10, 1.3633766214822624e-10, 3.331206903386745e-11,
    -1.9826920751947043e-11,
)
_EXP_TAYLOR = (  # 1 / n!, n = 0..13
    1.0, 1.0, 0.5, 0.16666666666666666,
    0.041666666666666664, 0.008333333333333333, 0.001388888888888889, 0.0001984126984126984,
    2.48015873015873e-05, 2.7557319223985893e-06, 2.755731922398589e-07, 2.505210838544172e-08,
    2.08767569878681e-09, 1.6059043836821613e-10,
)

_CHUNK = 512  # elements per pass pair (the 2**k of each in a small buffer)


@functools.lru_cache(maxsize=None)
def gelu_kernel():
    """gelu_range(i0, i1, x, out) (numba, nogil): out[i] = float32(x Phi(x)) for i in i0..i1-1 of flat float32
    arrays (see the module docstring); ranges run on threads (`run_ranges`)."""
    import numba

    h = np.array(_H_POLY[::-1])  # highest degree first, for Horner (frozen into the compiled code)
    ex = np.array(_EXP_TAYLOR[::-1])
    nh, nex = h.size, ex.size
    w_scale, w_shift = 2.0 / (1.0 - _Y_LO), -(1.0 + _Y_LO) / (1.0 - _Y_LO)  # w = 2 (y - a) / (b - a) - 1 in [-1, 1]
    inv_sqrt2, log2e = 0.7071067811865476, 1.4426950408889634

    # error_model "numpy": no ZeroDivisionError branch, so 1 / (1 + t / 2) vectorizes; "contract": FMAs in Horner
    @numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
    def gelu_range(i0, i1, x, out):
        kbits = np.empty(_CHUNK, np.int64)  # 2**k of exp(-t^2), as float64 bits
        two_k = kbits.view(np.float64)
        part = np.empty(_CHUNK, np.float64)  # exp(r) H(y): erfc(t) / 2**k
        for c0 in range(i0, i1, _CHUNK):
            xc = x[c0:min(i1, c0 + _CHUNK)]  # sliced: indices from 0 need no wraparound, so the loops vectorize
            oc = out[c0:min(i1, c0 + _CHUNK)]
            for j in range(xc.shape[0]):
                t = min(abs(np.float64(xc[j])) * inv_sqrt2, _T_MAX)
                w = (1.0 / (1.0 + _P * t)) * w_scale + w_shift
                p = h[0]
                for i in range(1, nh):  # a constant count: unrolled, and the loop over j vectorizes
                    p = p * w + h[i]
                z = -(t * t)
                kf = np.floor(z * log2e + 0.5)  # k in [-159, 0]
                r = z - kf * _LN2_HI - kf * _LN2_LO  # |r| <= ln 2 / 2
                q = ex[0]
                for i in range(1, nex):
                    q = q * r + ex[i]
                part[j] = q * p
                kbits[j] = (np.int64(kf) + 1023) << 52
            for j in range(xc.shape[0]):
                xd = np.float64(xc[j])
                erfc = part[j] * two_k[j]
                erfc = 0.0 if abs(xd) * inv_sqrt2 >= _T_MAX else erfc
                phi = 1.0 - 0.5 * erfc if xd >= 0.0 else 0.5 * erfc
                oc[j] = np.float32(xd * phi)

    return gelu_range
