"""Integer softmax over the last axis (attention rows), with an optional causal mask.

Spec: docs/arithmetic.md, section "Softmax". Summary, per row of T scores x_q (uint8/uint16):

    m     = max_j x_q[j]                                   (unmasked j only)       HVX vmax
    k_j   = min(m - x_q[j], len(E) - 1)                    (table index, >= 0)     vsub, vmin
    e_j   = E[k_j]                                         (int32, <= 2**30)       vgather (words)
    S     = sum_j e_j                                      (int64, < 2**62)        vadd (word pairs)
    L     = bit_length(S)                                  (>= 31: S >= E[0] = 2**30)  cl0
    s31   = S >> (L - 31)                                  (in [2**30, 2**31))
    R     = floor((2**61 - 1) / s31)                       (in [2**30, 2**31 - 1]) exact division
    n     = L - 1 - out_bits                               (>= 14)
    y_j   = rsr(srdhm(e_j, R), n)   (rsr = rounding_shift_right; 0 when n >= 32)   vmpye/vmpyo, vasr:rnd
    out_j = min(y_j, 2**out_bits - 1)                      (masked j: 0)           vmin

so out_j ~= round(2**out_bits * e_j / S), at the fixed output encoding scale 2**-out_bits,
zero point 0 (1/256 for uint8, 1/65536 for uint16; outputs in [0, 1) as Qualcomm HTP fixes
them). The zero point of the scores cancels in m - x_q, so only their scale matters, through
the exp table E built once at quantization time (`make_exp_table`):

    E[k] = floor(2**30 * exp(-k * in_scale) + 0.5)   (float64, libm exp)

for k = 0, 1, ... up to and including the first k with E[k] = 0 (or 2**in_bits - 1).
"""
from __future__ import annotations

import logging
import math

import numpy as np
from numba import njit

from tinysd.fixedpoint.checks import check_array
from tinysd.fixedpoint.primitives import rounding_shift_right_i32, srdhm_i32
from tinysd.fixedpoint.reference import rounding_shift_right_ref, srdhm_ref

from .gather import exp_lookup
from .threads import run_ranges

log = logging.getLogger(__name__)

__all__ = [
    "EXP_FRAC_BITS", "make_exp_table", "softmax", "softmax_reference", "softmax_output_encoding",
    "reciprocal_q31", "reciprocal_q31_ref", "rsr_any", "rsr_any_ref",
]

#: E[0] = 2**EXP_FRAC_BITS: the exp table's fixed-point one.
EXP_FRAC_BITS = 30


def softmax_output_encoding(out_bits: int) -> tuple[float, int]:
    """(scale, zero_point) of a softmax output: (2**-out_bits, 0)."""
    if out_bits not in (8, 16):
        raise ValueError(f"out_bits: must be 8 or 16, got {out_bits!r}")
    return 2.0**-out_bits, 0


def make_exp_table(in_scale, in_bits) -> np.ndarray:
    """exp table for softmax scores of scale `in_scale` and `in_bits` in {8, 16} (float64, once).

    E[k] = floor(2**30 * math.exp(-k * in_scale) + 0.5) as int32, for k = 0 .. K-1 where K-1 is
    the first k with E[k] = 0, or 2**in_bits - 1 if none is 0 before that. E[0] = 2**30, E is
    non-increasing, and the softmax kernel reads E[min(k, K-1)]: indices past the end read the
    last entry (0 when the table was cut). Memory: at most 4 * 2**in_bits bytes.
    """
    if isinstance(in_bits, (bool, np.bool_)) or in_bits not in (8, 16):
        raise ValueError(f"in_bits: must be 8 or 16, got {in_bits!r}")
    try:
        s = float(in_scale)
    except (TypeError, ValueError):
        raise ValueError(f"in_scale: expected a float, got {type(in_scale).__name__}") from None
    if not math.isfinite(s) or s <= 0.0:
        raise ValueError(f"in_scale: must be finite and > 0, got {in_scale!r}")
    one = float(2**EXP_FRAC_BITS)
    vals = []
    for k in range(2**in_bits):
        e = math.floor(one * math.exp(-k * s) + 0.5)
        vals.append(e)
        if e == 0:
            break
    return np.array(vals, dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# shared integer helpers (also used by tinysd.kernels.norm)
# ---------------------------------------------------------------------------------------------
def reciprocal_q31_ref(x: int) -> int:
    """floor((2**61 - 1) / x) for x in [2**30, 2**31): a Q31-normalised reciprocal in [2**30, 2**31 - 1]."""
    assert 2**30 <= x < 2**31
    return (2**61 - 1) // x


def rsr_any_ref(x: int, n: int) -> int:
    """rounding_shift_right for an int32 x and any n >= 0: (x + 2**(n-1)) >> n, which is 0 for n >= 32."""
    if n >= 32:
        return 0
    return rounding_shift_right_ref(x, n)


@njit(cache=True, inline="always")
def reciprocal_q31(x):
    """Numba form of `reciprocal_q31_ref` (int64 in, int64 out; x in [2**30, 2**31))."""
    return np.int64(2305843009213693951) // np.int64(x)


@njit(cache=True, inline="always")
def rsr_any(x, n):
    """Numba form of `rsr_any_ref`: rounding shift right of an int32-range x by n >= 0 (0 if n >= 32)."""
    if n >= 32:
        return np.int64(0)
    return rounding_shift_right_i32(x, n)


@njit(cache=True, inline="always")
def _bit_length(v):
    """Number of bits of a non-negative int64 (0 for 0); HVX/scalar: 64 - cl0."""
    n = 0
    while v > 0:
        v >>= 1
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------
def _check(x_q, exp_table, out_bits, causal):
    check_array("x_q", x_q, ("uint8", "uint16"), ndim_min=1)
    if x_q.shape[-1] == 0:
        raise ValueError(f"x_q: last axis must be non-empty, got shape {x_q.shape}")
    in_bits = 8 if x_q.dtype == np.uint8 else 16
    check_array("exp_table", exp_table, ("int32",))
    if exp_table.ndim != 1 or not 1 <= exp_table.shape[0] <= 2**in_bits:
        raise ValueError(f"exp_table: expected shape (K,) with 1 <= K <= {2**in_bits}, got {exp_table.shape}")
    if int(exp_table[0]) != 2**EXP_FRAC_BITS or int(exp_table.min()) < 0:
        raise ValueError("exp_table: E[0] must be 2**30 and all entries >= 0 (use make_exp_table)")
    if out_bits is None:
        out_bits = in_bits
    if isinstance(out_bits, (bool, np.bool_)) or out_bits not in (8, 16):
        raise ValueError(f"out_bits: must be 8 or 16, got {out_bits!r}")
    if causal:
        if x_q.ndim < 2 or x_q.shape[-1] != x_q.shape[-2]:
            raise ValueError(f"x_q: causal softmax needs (..., T, T) scores, got shape {x_q.shape}")
    if x_q.shape[-1] > 2**31:
        raise ValueError(f"x_q: rows longer than 2**31 overflow the int64 sum, got {x_q.shape[-1]}")
    return int(out_bits)


# ---------------------------------------------------------------------------------------------
# reference (Python ints): the executable form of the spec
# ---------------------------------------------------------------------------------------------
def softmax_reference(x_q, exp_table, out_bits=None, causal=False) -> np.ndarray:
    """Reference integer softmax (Python ints per row); same contract as `softmax`."""
    out_bits = _check(x_q, exp_table, out_bits, causal)
    E = [int(v) for v in exp_table]
    last = len(E) - 1
    qmax = 2**out_bits - 1
    T = x_q.shape[-1]
    rows = x_q.reshape(-1, T)
    out = np.zeros(rows.shape, dtype=np.uint8 if out_bits == 8 else np.uint16)
    for r in range(rows.shape[0]):
        row = [int(v) for v in rows[r]]
        width = (r % x_q.shape[-2]) + 1 if causal else T  # causal: only j <= i
        m = max(row[:width])
        e = [E[min(m - row[j], last)] for j in range(width)]
        S = sum(e)
        L = S.bit_length()
        R = reciprocal_q31_ref(S >> (L - 31))
        n = L - 1 - out_bits
        for j in range(width):
            y = rsr_any_ref(srdhm_ref(e[j], R), n)
            out[r, j] = min(y, qmax)
    return out.reshape(x_q.shape)


# ---------------------------------------------------------------------------------------------
# Numba kernel
# ---------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _softmax_kernel(r0, r1, rows, E, out_bits, causal_t, out):
    """Rows r0..r1-1 of rows (R, T) uint8/uint16 into out (R, T); causal_t = T of the (T, T) mask or 0.

    Each loop runs over a row slice (indices from 0: no wraparound checks), so LLVM vectorizes the max and
    the output pass; the table reads are `exp_lookup` (vpgatherdd with AVX-512). The output pass is
    rsr_any(srdhm_i32(e_j, R), n) written for its operands: e_j in [0, 2**30] and R in [2**30, 2**31)
    make e_j * R >= 0 and < 2**61, so srdhm cannot saturate; n >= 14 (L >= 31), and n >= 32 gives 0.
    """
    T = rows.shape[1]
    last = np.int64(E.shape[0] - 1)
    qmax = (np.int64(1) << out_bits) - 1
    e = np.empty(T, dtype=np.int32)  # E entries are <= 2**30
    for r in range(r0, r1):
        width = (r % causal_t) + 1 if causal_t > 0 else T
        xr, orow = rows[r, :width], out[r, :width]
        out[r, width:] = 0  # causal: masked
        m = np.int64(xr[0])
        for j in range(width):  # vmax
            m = max(m, np.int64(xr[j]))
        S = exp_lookup(E, xr, m, last, e)  # <= T * 2**30 < 2**62 for T <= 2**31
        L = _bit_length(S)
        R = reciprocal_q31(S >> (L - 31))
        n = L - 1 - out_bits
        if n >= 32:  # rsr_any: every output is 0
            orow[:] = 0
            continue
        half = (np.int64(1) << n) >> 1
        for j in range(width):
            y = (((np.int64(e[j]) * R + np.int64(1073741824)) >> 31) + half) >> n  # rsr(srdhm(e_j, R), n)
            orow[j] = min(y, qmax)


@njit(cache=True, nogil=True)
def _softmax_rows_uint8(r0, r1, rows, E, out_bits, out):
    """The integers of `_softmax_kernel` (non-causal) for rows r0..r1-1 of uint8 scores, one output per code.

    Every e_j, and so every y_j, is a function of d_j = m - x_q[j] in [0, 255] alone (k_j = min(d_j, last)).
    So per row: count[d] = #{j : d_j = d}, S = sum_d count[d] * E[min(d, last)] (the spec's sum, reordered:
    each term and S stay < T * 2**30 < 2**62), Y[d] = min(rsr(srdhm(E[min(d, last)], R), n), qmax) for the 256
    values of d, and out_j = Y[d_j]. The per-element work is a histogram update and a table read (HVX: vlut)
    instead of a gather, a multiply, shifts and a compare.
    """
    T = rows.shape[1]
    last = E.shape[0] - 1
    qmax = (np.int64(1) << out_bits) - 1
    count = np.empty(4 * 256, dtype=np.int32)  # four histograms of d (each count <= T / 4 + 1 < 2**31)
    Y = np.empty(256, dtype=out.dtype)
    T4 = T - T % 4
    for r in range(r0, r1):
        xr, orow = rows[r], out[r]
        m = xr[0]
        for j in range(1, T):  # vmax
            m = max(m, xr[j])
        count[:] = 0
        for j in range(0, T4, 4):  # four histograms: consecutive updates rarely wait on the same counter
            count[np.uint64(m - xr[j])] += 1  # d_j in [0, 255]: an unsigned index, no wraparound check
            count[np.uint64(256 + (m - xr[j + 1]))] += 1
            count[np.uint64(512 + (m - xr[j + 2]))] += 1
            count[np.uint64(768 + (m - xr[j + 3]))] += 1
        for j in range(T4, T):
            count[np.uint64(m - xr[j])] += 1
        S = np.int64(0)
        for d in range(256):
            c = np.int64(count[d]) + count[256 + d] + count[512 + d] + count[768 + d]
            S += c * np.int64(E[min(d, last)])
        L = _bit_length(S)
        R = reciprocal_q31(S >> (L - 31))
        n = L - 1 - out_bits
        for d in range(256):
            y = rsr_any(srdhm_i32(np.int64(E[min(d, last)]), R), n)
            Y[d] = y if y < qmax else qmax
        for j in range(T):
            orow[j] = Y[np.uint64(m - xr[j])]


#: uint8 rows at least this long take `_softmax_rows_uint8` (its per-row work is 256 table entries)
UINT8_TABLE_MIN_T = 1024


def softmax(x_q, exp_table, out_bits=None, causal=False) -> np.ndarray:
    """Integer softmax along the last axis of uint8/uint16 scores (see the module docstring).

    x_q: (..., T) uint8 or uint16 scores; their zero point cancels, their scale is baked into
    `exp_table` (int32, from `make_exp_table(in_scale, in_bits)`). out_bits: 8 or 16 (default:
    the input's); the output has scale 2**-out_bits and zero point 0, dtype uint8/uint16.
    causal: x_q is (..., T, T); in row i the positions j > i are excluded from max and sum and
    output 0. Bit-equal to `softmax_reference`.
    """
    out_bits = _check(x_q, exp_table, out_bits, causal)
    T = x_q.shape[-1]
    rows = np.ascontiguousarray(x_q).reshape(-1, T)  # (R, T)
    out = np.empty(rows.shape, dtype=np.uint8 if out_bits == 8 else np.uint16)  # every element is written
    E = np.ascontiguousarray(exp_table)
    if not causal and rows.dtype == np.uint8 and T >= UINT8_TABLE_MIN_T:
        run_ranges(_softmax_rows_uint8, rows.shape[0], T, rows, E, out_bits, out)  # rows in parallel
    else:
        run_ranges(_softmax_kernel, rows.shape[0], T, rows, E, out_bits, T if causal else 0, out)
    return out.reshape(x_q.shape)
