"""Integer group norm and layer norm on uint8/uint16 asymmetric activations.

Spec: docs/arithmetic.md, section "Group norm and layer norm". Both ops normalise "rows"
of N integer codes (a (n, group) block for group norm, one last-axis vector for layer norm)
and then apply a per-channel affine transform and the output encoding.

Normalisation is invariant to the input's zero point and scale except through eps, so the
kernel works on raw codes q: mean and variance are in input-code units and eps enters as
`eps_fx = eps / in_scale**2` in units of 2**-32 codes**2. Per row (all integer):

    sum1  = sum q                      a = sum1 // N,  b = sum1 - a*N      (int64)
    D2    = sum (q - a)**2             u = D2 // N,    w = D2 - u*N        (int64)
    f     = rdiv(b*2**31, N)           var = max(u*2**32 + rdiv(w*2**32, N) - rsr(f*f, 30), 0)  (2**-32 codes**2)
    mean  = a*2**H + rdiv(b*2**H, N)                   (2**-H codes, H = 31 - in_bits)
    W     = var + eps_fx;  k = (62 - bit_length(W)) >> 1 (floor);  Wn = W*4**k or W >> 2
    S     = isqrt(Wn) in [2**30, 2**31);  R = floor((2**61 - 1) / S) in [2**30, 2**31 - 1]

rdiv(p, N) = floor((2p + N) / (2N)) is p/N rounded half up. Per channel c of the row:

    M_c = srdhm(R, gamma_multiplier[c]);   e_c = k + gamma_shift[c] + Q - H - 14   (Q = 8)

and per element (all int32 with saturation, as HVX does it):

    c   = q*2**H - mean                                   (|c| < 2**31)        vasl, vsub
    x   = sat32(c * 2**max(e_c, 0))                                            vasrinto, vsatdw
    v   = rsr(srdhm(x, M_c), max(-e_c, 0))     (0 when the shift is >= 32)     vmpye/vmpyo, vasr/vand/vadd
    t   = sat32(v + beta_fx[c])                                                vadd:sat
    out = clip(rsr(t, Q), 0, 2**out_bits - 1)                                  vasr/vand/vadd, vmax/vmin

Parameters (`NormParams`, built in float64 once by `prepare_group_norm` / `prepare_layer_norm`):
gamma as a signed per-channel multiplier/shift pair of gamma/out_scale (|multiplier| in
[2**30, 2**31 - 1], or 0 for gamma 0), beta as int32 `(beta/out_scale + out_zp) * 2**Q`
rounded half up, eps as int64 `eps_fx`.
"""
from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np
from numba import njit

from tinysd.fixedpoint.checks import check_array
from tinysd.fixedpoint.primitives import (
    quantize_multiplier,
    rounding_shift_right_i64,
    srdhm_i32,
)
from tinysd.fixedpoint.reference import rounding_shift_right_ref, sat32, srdhm_ref

from .threads import run_ranges
from .softmax import _bit_length, reciprocal_q31, reciprocal_q31_ref, rsr_any_ref

log = logging.getLogger(__name__)

__all__ = [
    "VAR_FRAC_BITS", "BETA_FRAC_BITS", "MAX_ROW", "NormParams", "mean_frac_bits",
    "prepare_norm", "prepare_group_norm", "prepare_layer_norm",
    "group_norm", "group_norm_reference", "layer_norm", "layer_norm_reference",
]

#: Variance (and eps_fx) unit: 2**-32 input codes**2.
VAR_FRAC_BITS = 32
#: beta_fx unit and the extra fraction bits before the final rounding: 2**-8 output codes.
BETA_FRAC_BITS = 8
#: Rows (normalised groups) must hold fewer than 2**30 elements (overflow budget of D2 * 2**33).
MAX_ROW = 2**30 - 1
#: eps_fx upper bound: W = var + eps_fx must stay below 2**63.
EPS_FX_MAX = 2**60


def mean_frac_bits(in_bits: int) -> int:
    """H, the fraction bits of the mean: 31 - in_bits (23 for uint8, 15 for uint16), so |q*2**H - mean| < 2**31."""
    return 31 - in_bits


class NormParams(NamedTuple):
    """Integer parameters of one group norm / layer norm (stored with the model).

    eps_fx: int, eps in 2**-32 input-code**2 units, in [1, 2**60].
    gamma_multiplier: (C,) int32, signed; |m| in [2**30, 2**31 - 1], or 0.
    gamma_shift: (C,) int32 in [-31, 30]; gamma[c]/out_scale ~= m * 2**(shift - 31).
    beta_fx: (C,) int32, (beta[c]/out_scale + out_zp) * 2**8 rounded half up (saturated to int32).
    in_bits, out_bits: 8 or 16 (input dtype uint8/uint16, output dtype uint8/uint16).
    """

    eps_fx: int
    gamma_multiplier: np.ndarray
    gamma_shift: np.ndarray
    beta_fx: np.ndarray
    in_bits: int
    out_bits: int


# ---------------------------------------------------------------------------------------------
# parameter preparation (float64, at quantization time)
# ---------------------------------------------------------------------------------------------
def _float(name, v, positive=False):
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a float, got {type(v).__name__}") from None
    if not math.isfinite(f) or (positive and f <= 0.0):
        raise ValueError(f"{name}: must be finite{' and > 0' if positive else ''}, got {v!r}")
    return f


def _bits(name, v):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or int(v) not in (8, 16):
        raise ValueError(f"{name}: must be 8 or 16, got {v!r}")
    return int(v)


def _zp(name, v, bits):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name}: expected an int, got {type(v).__name__}")
    if not 0 <= int(v) <= 2**bits - 1:
        raise ValueError(f"{name}: {int(v)} outside [0, {2**bits - 1}]")
    return int(v)


def prepare_norm(gamma, beta, eps, in_scale, in_zp, in_bits, out_scale, out_zp, out_bits) -> NormParams:
    """Integer parameters of an affine norm, computed once in float64.

    gamma, beta: (C,) float arrays; eps > 0; input encoding (in_scale, in_zp, in_bits) and
    output encoding (out_scale, out_zp, out_bits), bits in {8, 16}. in_zp is checked but
    unused (it cancels in q - mean). In float64, in this order:

        eps_fx  = max(1, floor(eps / (in_scale * in_scale) * 2**32 + 0.5))      (ValueError if > 2**60)
        g       = gamma[c] / out_scale
        (m, s)  = quantize_multiplier(|g|), m negated if g < 0;  (0, 0) if |g| < 2**-32
                  (ValueError if |g| >= 2**30)
        beta_fx = clip(floor((beta[c] / out_scale + out_zp) * 2**8 + 0.5), -2**31, 2**31 - 1)
    """
    in_bits = _bits("in_bits", in_bits)
    out_bits = _bits("out_bits", out_bits)
    in_scale = _float("in_scale", in_scale, positive=True)
    out_scale = _float("out_scale", out_scale, positive=True)
    _zp("in_zp", in_zp, in_bits)
    out_zp = _zp("out_zp", out_zp, out_bits)
    eps = _float("eps", eps, positive=True)
    g = np.asarray(gamma, dtype=np.float64) if not isinstance(gamma, str) else None
    b = np.asarray(beta, dtype=np.float64) if not isinstance(beta, str) else None
    if g is None or g.ndim != 1 or g.shape[0] == 0:
        raise ValueError(f"gamma: expected a non-empty 1-D float array, got shape {getattr(g, 'shape', None)}")
    if b is None or b.shape != g.shape:
        raise ValueError(f"beta: expected shape {g.shape}, got {getattr(b, 'shape', None)}")
    if not np.all(np.isfinite(g)):
        raise ValueError("gamma: must be finite")
    if not np.all(np.isfinite(b)):
        raise ValueError("beta: must be finite")

    eps_fx = max(1, math.floor(eps / (in_scale * in_scale) * 4294967296.0 + 0.5))
    if eps_fx > EPS_FX_MAX:
        raise ValueError(f"eps: eps / in_scale**2 = {eps / in_scale**2:g} codes**2 exceeds 2**28")

    gr = g / out_scale
    if np.any(np.abs(gr) >= 2.0**30):
        raise ValueError("gamma: |gamma / out_scale| must be < 2**30")
    nonzero = np.abs(gr) >= 2.0**-32
    mult = np.zeros(g.shape, dtype=np.int64)
    shift = np.zeros(g.shape, dtype=np.int64)
    if np.any(nonzero):
        try:
            m, s = quantize_multiplier(np.abs(gr[nonzero]))
        except ValueError as exc:
            raise ValueError(f"gamma: gamma / out_scale not encodable as a multiplier ({exc})") from None
        mult[nonzero] = np.where(gr[nonzero] < 0, -m.astype(np.int64), m.astype(np.int64))
        shift[nonzero] = s
    beta_fx = np.floor((b / out_scale + out_zp) * float(2**BETA_FRAC_BITS) + 0.5)
    beta_fx = np.clip(beta_fx, -(2.0**31), 2.0**31 - 1).astype(np.int32)
    return NormParams(int(eps_fx), mult.astype(np.int32), shift.astype(np.int32), beta_fx, in_bits, out_bits)


def prepare_group_norm(gamma, beta, eps, in_scale, in_zp, in_bits, out_scale, out_zp, out_bits) -> NormParams:
    """`prepare_norm` for a GroupNorm's weight (C,), bias (C,) and eps."""
    return prepare_norm(gamma, beta, eps, in_scale, in_zp, in_bits, out_scale, out_zp, out_bits)


def prepare_layer_norm(gamma, beta, eps, in_scale, in_zp, in_bits, out_scale, out_zp, out_bits) -> NormParams:
    """`prepare_norm` for a LayerNorm's weight (D,), bias (D,) and eps."""
    return prepare_norm(gamma, beta, eps, in_scale, in_zp, in_bits, out_scale, out_zp, out_bits)


def _check_params(params, n_channels):
    if not isinstance(params, NormParams):
        raise ValueError(f"params: expected NormParams, got {type(params).__name__}")
    _bits("params.in_bits", params.in_bits)
    _bits("params.out_bits", params.out_bits)
    if isinstance(params.eps_fx, bool) or not isinstance(params.eps_fx, (int, np.integer)) \
            or not 1 <= int(params.eps_fx) <= EPS_FX_MAX:
        raise ValueError(f"params.eps_fx: must be an int in [1, 2**60], got {params.eps_fx!r}")
    for name in ("gamma_multiplier", "gamma_shift", "beta_fx"):
        a = getattr(params, name)
        check_array(f"params.{name}", a, ("int32",))
        if a.shape != (n_channels,):
            raise ValueError(f"params.{name}: expected shape ({n_channels},), got {a.shape}")
    m = params.gamma_multiplier.astype(np.int64)
    if np.any((m != 0) & ((np.abs(m) < 2**30) | (np.abs(m) > 2**31 - 1))):
        raise ValueError("params.gamma_multiplier: |m| must be 0 or in [2**30, 2**31 - 1]")
    s = params.gamma_shift
    if s.size and (int(s.min()) < -31 or int(s.max()) > 30):
        raise ValueError("params.gamma_shift: values outside [-31, 30]")


def _check_x(x_q, params):
    if not isinstance(params, NormParams):
        raise ValueError(f"params: expected NormParams, got {type(params).__name__}")
    want = "uint8" if params.in_bits == 8 else "uint16"
    check_array("x_q", x_q, (want,))


# ---------------------------------------------------------------------------------------------
# reference (Python ints): the executable form of the spec
# ---------------------------------------------------------------------------------------------
def _rdiv_ref(p: int, n: int) -> int:
    """p / n rounded half up, for p >= 0, n >= 1."""
    return (2 * p + n) // (2 * n)


def _row_stats_ref(row: list[int], in_bits: int, eps_fx: int) -> tuple[int, int, int]:
    """(mean in 2**-H codes, R, k) of one row of codes, per the spec."""
    N = len(row)
    H = mean_frac_bits(in_bits)
    sum1 = sum(row)
    a, b = divmod(sum1, N)
    D2 = sum((q - a) ** 2 for q in row)
    u, w = divmod(D2, N)
    e2 = (u << VAR_FRAC_BITS) + _rdiv_ref(w << VAR_FRAC_BITS, N)
    f = _rdiv_ref(b << 31, N)  # mean - a in 2**-31 codes, <= 2**31
    var = max(e2 - rounding_shift_right_ref(f * f, 30), 0)
    mean = (a << H) + _rdiv_ref(b << H, N)
    W = var + eps_fx
    k = (62 - W.bit_length()) >> 1
    Wn = W << (2 * k) if k >= 0 else W >> (-2 * k)
    S = math.isqrt(Wn)
    return mean, reciprocal_q31_ref(S), k


def _affine_ref(q: int, mean: int, R: int, k: int, gm: int, gs: int, beta_fx: int,
                in_bits: int, out_bits: int) -> int:
    H = mean_frac_bits(in_bits)
    M = srdhm_ref(R, gm)
    e = k + gs + BETA_FRAC_BITS - H - 14
    c = (q << H) - mean
    x = sat32(c * 2 ** max(e, 0))
    v = rsr_any_ref(srdhm_ref(x, M), max(-e, 0))
    t = sat32(v + beta_fx)
    y = rounding_shift_right_ref(t, BETA_FRAC_BITS)
    return min(max(y, 0), 2**out_bits - 1)


def _norm_reference(rows, G, Cg, P, params):
    """rows (n_rows, Cg*P): element (c_local, p) of row r belongs to channel (r % G)*Cg + c_local."""
    out = np.empty(rows.shape, dtype=np.uint8 if params.out_bits == 8 else np.uint16)
    gm = [int(v) for v in params.gamma_multiplier]
    gs = [int(v) for v in params.gamma_shift]
    bf = [int(v) for v in params.beta_fx]
    for r in range(rows.shape[0]):
        row = [int(v) for v in rows[r]]
        mean, R, k = _row_stats_ref(row, params.in_bits, int(params.eps_fx))
        for i, q in enumerate(row):
            ch = (r % G) * Cg + i // P
            out[r, i] = _affine_ref(q, mean, R, k, gm[ch], gs[ch], bf[ch], params.in_bits, params.out_bits)
    return out


# ---------------------------------------------------------------------------------------------
# Numba kernel
# ---------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _rdiv(p, n):
    """p / n rounded half up for 0 <= p, 2p + n < 2**63."""
    return (2 * p + n) // (2 * n)


@njit(cache=True, inline="always")
def _isqrt(x):
    """floor(sqrt(x)) exactly, for 0 <= x < 2**62 (float estimate, then integer correction)."""
    s = np.int64(math.sqrt(np.float64(x)))
    while s * s > x:
        s -= 1
    while (s + 1) * (s + 1) <= x:
        s += 1
    return s


@njit(cache=True, inline="always")
def _affine(q, H, mean, left, M, half, right, bc, qmax):
    """One element of the affine step (module docstring, "per element"): code q -> output code.

    Branch-free, so the loops over a row vectorize: left in [0, 31]; right in [0, 62] with half = 2**right >> 1
    (`rsr_any`: for right >= 32 the sum lies in (0, 2**right), so the shift gives its 0); the saturations are
    min / max.
    """
    c = (np.int64(q) << H) - mean  # |c| < 2**31
    x = min(max(c << left, -2147483648), 2147483647)  # sat32; c << 31 < 2**62
    p = min(max((x * M + 1073741824) >> 31, -2147483648), 2147483647)  # srdhm_i32(x, M)
    v = (p + half) >> right  # rsr_any(p, right)
    t = min(max(v + bc, -2147483648), 2147483647)  # sat32
    y = (t + 128) >> 8  # rounding_shift_right(t, BETA_FRAC_BITS = 8)
    return min(max(y, 0), qmax)


@njit(cache=True, nogil=True)
def _affine_row(x, mean, H, left, M, half, right, bc, qmax, out):
    """LayerNorm's affine step over one row: out[i] = _affine(x[i], ...) with channel i's parameters."""
    for i in range(x.shape[0]):
        out[i] = _affine(x[i], H, mean, left[i], M[i], half[i], right[i], bc[i], qmax)


#: With 8-bit input, a (row, channel) run of more than this many elements is mapped through a 256-entry
#: table of `_affine` (the output depends only on the code within the run): the same integers, fewer operations.
_TABLE_MIN_RUN = 256


@njit(cache=True, nogil=True)
def _norm_kernel(r0, r1, rows, G, Cg, P, eps_fx, gm, gs, beta_fx, in_bits, out_bits, out):
    """Rows r0..r1-1 of `rows` (n_rows, N) into the same rows of `out` (module docstring)."""
    N = rows.shape[1]
    H = 31 - in_bits
    qmax = (np.int64(1) << out_bits) - 1
    use_table = in_bits == 8 and P > _TABLE_MIN_RUN
    table = np.empty(256 if use_table else 0, dtype=out.dtype)
    left = np.empty(Cg, dtype=np.int64)  # the affine step's parameters per channel of the group
    M = np.empty(Cg, dtype=np.int64)
    half = np.empty(Cg, dtype=np.int64)
    right = np.empty(Cg, dtype=np.int64)
    bc = np.empty(Cg, dtype=np.int64)
    for r in range(r0, r1):
        # --- statistics: int64 sums; |q - a| < 2**16 so D2 < N * 2**32 < 2**62
        sum1 = np.int64(0)
        for i in range(N):
            sum1 += np.int64(rows[r, i])
        a = sum1 // N
        b = sum1 - a * N
        D2 = np.int64(0)
        for i in range(N):
            d = np.int64(rows[r, i]) - a
            D2 += d * d
        u = D2 // N
        w = D2 - u * N
        e2 = (u << 32) + _rdiv(w << 32, N)  # u < 2**30 + 1, w < N < 2**30
        f = _rdiv(b << 31, N)  # b < 2**30: 2 * b * 2**31 + N < 2**63
        var = e2 - rounding_shift_right_i64(f * f, 30)  # f * f <= 2**62
        if var < 0:
            var = 0
        mean = (a << H) + _rdiv(b << H, N)
        # --- 1/sqrt(var + eps): normalise W to [2**60, 2**62), exact isqrt, exact reciprocal
        W = var + eps_fx
        k = (62 - _bit_length(W)) >> 1
        if k >= 0:
            Wn = W << (2 * k)
        else:
            Wn = W >> (-2 * k)
        R = reciprocal_q31(_isqrt(Wn))
        g = r % G
        for cl in range(Cg):
            ch = g * Cg + cl
            M[cl] = srdhm_i32(R, gm[ch])
            e = k + np.int64(gs[ch]) + 8 - H - 14
            left[cl] = min(max(e, 0), 31)  # any nonzero c saturates at 31 already
            right[cl] = min(max(-e, 0), 62)  # rsr_any gives 0 from 32 on, and so does (p + half) >> 62
            half[cl] = (np.int64(1) << right[cl]) >> 1
            bc[cl] = beta_fx[ch]
        if P == 1:  # LayerNorm: one element per channel
            _affine_row(rows[r], mean, H, left, M, half, right, bc, qmax, out[r])
            continue
        for cl in range(Cg):
            if use_table:
                for q in range(256):
                    table[q] = _affine(q, H, mean, left[cl], M[cl], half[cl], right[cl], bc[cl], qmax)
                for p in range(P):
                    out[r, cl * P + p] = table[rows[r, cl * P + p]]
            else:
                for p in range(P):
                    i = cl * P + p
                    out[r, i] = _affine(rows[r, i], H, mean, left[cl], M[cl], half[cl], right[cl], bc[cl], qmax)


def _run(rows, G, Cg, P, params):
    out = np.empty(rows.shape, dtype=np.uint8 if params.out_bits == 8 else np.uint16)
    run_ranges(_norm_kernel, rows.shape[0], rows.shape[1], rows, G, Cg, P, np.int64(params.eps_fx),
               np.ascontiguousarray(params.gamma_multiplier), np.ascontiguousarray(params.gamma_shift),
               np.ascontiguousarray(params.beta_fx), params.in_bits, params.out_bits, out)  # rows in parallel
    return out


# ---------------------------------------------------------------------------------------------
# public ops
# ---------------------------------------------------------------------------------------------
def _group_rows(x_q, groups, params):
    _check_x(x_q, params)
    if x_q.ndim < 2:
        raise ValueError(f"x_q: expected (N, C, ...) input, got shape {x_q.shape}")
    C = x_q.shape[1]
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups: expected a positive int, got {groups!r}")
    if C % groups:
        raise ValueError(f"groups: {groups} does not divide the {C} channels of x_q")
    G = int(groups)
    Cg = C // G
    P = int(np.prod(x_q.shape[2:], dtype=np.int64))
    if not 1 <= Cg * P <= MAX_ROW:
        raise ValueError(f"x_q: a group holds {Cg * P} elements, must be in [1, 2**30)")
    _check_params(params, C)
    rows = np.ascontiguousarray(x_q).reshape(x_q.shape[0] * G, Cg * P)  # (N*G, Cg*H*W)
    return rows, G, Cg, P


def group_norm_reference(x_q, groups, params) -> np.ndarray:
    """Reference (Python ints) of `group_norm`."""
    rows, G, Cg, P = _group_rows(x_q, groups, params)
    return _norm_reference(rows, G, Cg, P, params).reshape(x_q.shape)


def group_norm(x_q, groups, params) -> np.ndarray:
    """Integer GroupNorm of x_q (N, C, ...) uint8/uint16 over `groups` groups of C/groups channels.

    params: `NormParams` with C channels (from `prepare_group_norm`). Returns x_q's shape in
    uint8/uint16 (params.out_bits), in the output encoding the params were prepared for.
    Bit-equal to `group_norm_reference`; the formulas are in the module docstring.
    """
    rows, G, Cg, P = _group_rows(x_q, groups, params)
    return _run(rows, G, Cg, P, params).reshape(x_q.shape)


def _layer_rows(x_q, params):
    _check_x(x_q, params)
    if x_q.ndim < 1:
        raise ValueError(f"x_q: expected (..., D) input, got shape {x_q.shape}")
    D = x_q.shape[-1]
    if not 1 <= D <= MAX_ROW:
        raise ValueError(f"x_q: last axis {D} must be in [1, 2**30)")
    _check_params(params, D)
    rows = np.ascontiguousarray(x_q).reshape(-1, D)  # (R, D)
    return rows, 1, D, 1


def layer_norm_reference(x_q, params) -> np.ndarray:
    """Reference (Python ints) of `layer_norm`."""
    rows, G, Cg, P = _layer_rows(x_q, params)
    return _norm_reference(rows, G, Cg, P, params).reshape(x_q.shape)


def layer_norm(x_q, params) -> np.ndarray:
    """Integer LayerNorm of x_q (..., D) uint8/uint16 over the last axis (D channels of gamma/beta).

    params: `NormParams` with D channels (from `prepare_layer_norm`). Returns x_q's shape in
    uint8/uint16 (params.out_bits). Bit-equal to `layer_norm_reference`.
    """
    rows, G, Cg, P = _layer_rows(x_q, params)
    return _run(rows, G, Cg, P, params).reshape(x_q.shape)
