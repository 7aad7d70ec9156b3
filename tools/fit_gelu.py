"""Fit the constants of the float engine's GELU (tinysd/interp/gelu.py) and print them as Python source.

    python3 tools/fit_gelu.py [--degree 24]

Dev-only (mpmath, which sympy brings with torch). GELU(x) = x Phi(x) and Phi(x) = erfc(-x / sqrt 2) / 2,
so one function serves both signs: erfc(t) for t = |x| / sqrt 2 in [0, T_MAX]. It is computed as
exp(-t^2) H(y), y = 1 / (1 + P t), where H(y) = exp(t^2) erfc(t) is smooth on y in [1 / (1 + P T_MAX), 1]:
H is interpolated at Chebyshev nodes in 40-digit arithmetic and written as a polynomial in
w = (2 y - a - b) / (b - a) (monomial coefficients, for Horner). Also the Cody-Waite split of ln 2 and the
Taylor coefficients 1 / n! of exp on |r| <= ln 2 / 2. Prints the largest relative error of erfc measured
against mpmath on 20001 points (float64 evaluation as the kernel does it).
"""
from __future__ import annotations

import argparse

import mpmath
import numpy as np

P = 0.5  # y = 1 / (1 + P t)
T_MAX = 10.5  # erfc(10.5) = 1.2e-49: any x Phi(x) beyond is 0 or x in float32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--degree", type=int, default=24)
    args = ap.parse_args()
    mpmath.mp.dps = 40
    a, b = 1 / (1 + mpmath.mpf(P) * T_MAX), mpmath.mpf(1)

    def h(y):
        t = (1 / y - 1) / P
        return mpmath.exp(t * t) * mpmath.erfc(t)

    n = args.degree + 1
    nodes = [mpmath.cos(mpmath.pi * (k + mpmath.mpf(0.5)) / n) for k in range(n)]
    vals = [h((a + b) / 2 + (b - a) / 2 * w) for w in nodes]
    cheb = [2 / mpmath.mpf(n) * sum(vals[k] * mpmath.cos(mpmath.pi * j * (k + mpmath.mpf(0.5)) / n) for k in range(n))
            for j in range(n)]
    cheb[0] /= 2
    # Chebyshev -> monomial in mp precision (T_0 = 1, T_1 = w, T_j+1 = 2 w T_j - T_j-1), then rounded once
    zero = mpmath.mpf(0)
    basis = [[mpmath.mpf(1)] + [zero] * (n - 1), [zero, mpmath.mpf(1)] + [zero] * (n - 2)]
    while len(basis) < n:
        prev, cur = basis[-2], basis[-1]
        basis.append([2 * (cur[i - 1] if i else zero) - prev[i] for i in range(n)])
    mono = [sum(cheb[j] * basis[j][i] for j in range(n)) for i in range(n)]
    coef = [float(c) for c in mono]

    ln2 = mpmath.log(2)
    ln2_hi = float(mpmath.floor(ln2 * 2**32) / 2**32)  # 32 significant bits: k * ln2_hi is exact for |k| < 2**21
    ln2_lo = float(ln2 - ln2_hi)
    exp_taylor = [float(1 / mpmath.factorial(k)) for k in range(14)]  # |r| <= 0.347: 0.347**14 / 14! < 5e-18

    # check: erfc in float64 as the kernel evaluates it (Horner, the same exp), against mpmath
    ts = np.linspace(0, T_MAX, 20001)
    worst = 0.0
    for t in ts:
        y = 1.0 / (1.0 + P * t)
        w = (2 * y - float(a) - float(b)) / (float(b) - float(a))
        p = 0.0
        for c in reversed(coef):
            p = p * w + c
        z = -t * t
        k = np.floor(z * 1.4426950408889634 + 0.5)
        r = z - k * ln2_hi - k * ln2_lo
        e = 0.0
        for c in reversed(exp_taylor):
            e = e * r + c
        got = e * 2.0**k * p
        worst = max(worst, abs(got / float(mpmath.erfc(t)) - 1))
    print(f"# tools/fit_gelu.py --degree {args.degree}: erfc relative error <= {worst:.2e} on [0, {T_MAX}]")
    print(f"_P, _T_MAX = {P!r}, {T_MAX!r}")
    print(f"_Y_LO = {float(a)!r}  # 1 / (1 + P T_MAX)")
    print(f"_LN2_HI, _LN2_LO = {ln2_hi!r}, {ln2_lo!r}")
    print("_H_POLY = (  # H(y) = exp(t^2) erfc(t) as a polynomial in w, constant term first")
    for i in range(0, n, 3):
        print("    " + " ".join(f"{c!r}," for c in coef[i:i + 3]))
    print(")")
    print("_EXP_TAYLOR = (" + " ".join(f"{c!r}," for c in exp_taylor) + ")")


if __name__ == "__main__":
    main()
