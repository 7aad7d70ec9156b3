"""Exact integer GEMM at BLAS speed, and the linear / activation-matmul ops (spec §3, §4.2-4.3).

The integer result of every product is defined in docs/arithmetic.md as an exact sum
`acc = bias + sum_k (a - a_zp) * (b - b_zp)`, then `narrow_i64(acc, acc_shift)` and
`requantize`. Linear and conv (int8 weights) use by default the "i16" plan: int16 SIMD products
with int32 lanes over K-blocks short enough to be exact, summed in int64 (`gemm_i16`; x86
`vpdpwssd`), with the requantize epilogue fused per tile; so do the activation products (uint8 x
uint8 centred; uint16 x uint16 as a - 32768 against the two byte planes of b - 32768, `_matmul_u16`).
Where the CPU has AVX-512 VNNI or AVX-VNNI, uint8 activations take the "u8" plan instead: the raw uint8 x against
int8 weights (or against b - 128 for an activation product) in byte quads (`vpdpbusd`, HVX `vrmpy`),
zero points restored by exact correction terms.
The float plans compute the same sum
with float BLAS, exact by the lemma of spec §3.3:

    Every integer of magnitude <= 2**24 is a float32 (<= 2**53: float64). If every product
    |p_k| <= P and a K-chunk has length L with L * P <= 2**24, then every partial sum of the
    chunk, in any order and association (with or without FMA), is an integer of magnitude
    <= L * P, hence representable, and IEEE arithmetic returns it exactly. So each chunk's
    float32 dot product equals the exact integer dot product, whatever blocking BLAS uses.

Operand representations in the float GEMM (`GemmPlan.mode`), all exact small integers:
  * "offset8"  uint8 x  -> x - 128 in [-128, 127]; x = x' + 128
  * "split16"  uint16 x -> hi' = (x >> 8) - 128, lo' = (x & 255) - 128, both in [-128, 127],
               stacked as two row blocks; x = 256 hi' + lo' + 32896
  * "centred"  x - zp in [-65535, 65535] (float64 plans only)
  * "offset16" uint16 x -> x - 32768 in [-32768, 32767]; x = x' + 32768 (int16 plans only)
  * "raw8"     uint8 x as it is, in [0, 255] (uint8 plans only, "u8")
int8 weights are used as they are ([-128, 127]). For offset representations the zero point
and the offset are restored by exact integer correction terms, e.g. for linear
`sum_k w (x - zp) = sum_k w x' + (128 - zp) * sum_k w` (the second term is folded into the bias).
Chunk results are summed in int64 in a Numba epilogue that also adds the corrections, narrows
and requantizes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from numba import get_num_threads, njit, prange

from ..fixedpoint.checks import (
    ACTIVATION_DTYPES,
    check_array,
    check_out_range,
    check_zero_point,
    out_dtype,
    per_channel,
    requant_params,
)
from ..fixedpoint.primitives import ACC_SHIFT_MAX, requantize_i32, rounding_shift_right_i64
from . import gemm_i16
from .gemm_i16 import LANES, MR, PANEL, block_product, requant_tile

log = logging.getLogger(__name__)

F32_EXACT = 2**24  # every integer of magnitude <= 2**24 is a float32
F64_EXACT = 2**53
CENTRED_BOUND = {"int8": 128, "uint8": 255, "uint16": 65535}  # max |x - zp| (weights: zp = 0)
ACC_LIMIT = 2**62  # |acc| must stay below this (narrow_i64's input range)
OFFSET8 = 128  # uint8 x = x' + 128
SPLIT16 = 256 * 128 + 128  # uint16 x = 256 hi' + lo' + 32896
OFFSET16 = 32768  # uint16 x = x' + 32768 (int16 plans)
MODE_CODE = {"centred": 0, "offset8": 1, "split16": 2, "offset16": 3, "raw8": 4}
METHODS = ("u8", "i16", "split", "f64")

#: How int8 x uint16 products are computed by default: "i16" (int16 SIMD), "split" (float32, two
#: byte planes) or "f64" (float64). All give the same integers; "i16" where Numba targets an x86
#: CPU with AVX2 or AVX-512 VNNI (measured faster on every SD 1.5 shape), else "split".
A16_METHOD = "i16" if gemm_i16.FAST else "split"
#: How int8 x uint8 products are computed by default: "u8" (byte quads, vpdpbusd) where Numba targets
#: AVX-512 VNNI or AVX-VNNI, else as A16_METHOD ("i16": int16 SIMD; "split" / "f64": float32 offset8 for uint8).
A8_METHOD = "u8" if gemm_i16.QUADS else A16_METHOD

_DEBUG = {"saturation": False}


def set_debug(assert_no_saturation: bool) -> None:
    """When True, kernels raise ValueError if narrow_i64 of any accumulator saturates.

    Saturation is the specified behaviour (spec §2.4), not a wraparound; with acc_shift chosen by
    `accumulator_shift(proven bound)` it cannot happen, and this flag asserts that.
    """
    _DEBUG["saturation"] = bool(assert_no_saturation)


def _report_saturation(nsat: int, what: str) -> None:
    if nsat and _DEBUG["saturation"]:
        raise ValueError(f"acc_shift: {nsat} accumulators of {what} saturated in narrow_i64")


# ----------------------------------------------------------------------------------------------
# plans
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GemmPlan:
    """How an exact product is computed.

    dtype: float32 or float64 (float BLAS), or int16 / uint8 (SIMD words of int16 pairs or byte quads
    with int32 lanes, `gemm_i16`). mode: activation representation ("offset8", "split16", "offset16",
    "centred", "raw8"). a_bound, b_bound: max |operand| in the GEMM. chunk: K-chunk length with
    chunk * a_bound * b_bound <= 2**24 (float32), 2**53 (float64) or 2**31 - 1 (int16, uint8: the int32
    lane of one K-block).
    """

    dtype: type
    mode: str
    a_bound: int
    b_bound: int
    chunk: int

    @property
    def nsplit(self) -> int:
        return 2 if self.mode == "split16" else 1

    @property
    def simd(self) -> bool:
        """True for the int16 / uint8 SIMD plans (`gemm_i16`), False for float BLAS."""
        return self.dtype is np.int16 or self.dtype is np.uint8

    @property
    def per_word(self) -> int:
        """Operand elements per 32-bit SIMD word: 2 (int16 pairs) or 4 (byte quads)."""
        return 4 // np.dtype(self.dtype).itemsize


def _make_plan(dtype, mode, a_bound, b_bound):
    if dtype is np.int16 or dtype is np.uint8:  # chunk: a whole number of SIMD words (2 int16 or 4 bytes)
        per_word = 4 // np.dtype(dtype).itemsize
        return GemmPlan(dtype, mode, a_bound, b_bound, gemm_i16.block_length(a_bound, b_bound, per_word))
    limit = F32_EXACT if dtype is np.float32 else F64_EXACT
    chunk = limit // (a_bound * b_bound)
    chunk = chunk if chunk < 128 else chunk - chunk % 128  # a multiple of 128: BLAS-friendly
    return GemmPlan(dtype, mode, a_bound, b_bound, chunk)


def _check_method(method: str, uint8: bool) -> None:
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if method == "u8" and uint8 and not gemm_i16.QUADS:
        raise ValueError("method: 'u8' (vpdpbusd) needs a CPU with AVX-512 VNNI or AVX-VNNI; use 'i16'")


def plan_linear(x_dtype, method: str | None = None) -> GemmPlan:
    """Plan for int8 weights x activations of `x_dtype`.

    method "u8": byte quads, raw8 (uint8; needs AVX-512 VNNI or AVX-VNNI), else as "i16".
    "i16": int16 SIMD, offset8 (uint8) or offset16 (uint16). "split": float32, offset8
    (uint8) or split16 (uint16). "f64": float32 offset8 (uint8) or float64 centred (uint16).
    None: A8_METHOD / A16_METHOD. All plans give the same integers.
    """
    name = np.dtype(x_dtype).name
    method = method or (A8_METHOD if name == "uint8" else A16_METHOD)
    _check_method(method, name == "uint8")
    if method == "u8" and name == "uint8":
        return _make_plan(np.uint8, "raw8", 255, 128)  # chunk 65792
    if method in ("u8", "i16"):
        if name == "uint8":
            return _make_plan(np.int16, "offset8", OFFSET8, 128)  # chunk 131070
        return _make_plan(np.int16, "offset16", OFFSET16, 128)  # chunk 510
    if name == "uint8":
        return _make_plan(np.float32, "offset8", 128, 128)  # chunk 1024
    if method == "split":
        return _make_plan(np.float32, "split16", 128, 128)  # chunk 1024
    return _make_plan(np.float64, "centred", 128, CENTRED_BOUND[name])


def plan_matmul(a_dtype, b_dtype, method: str | None = None) -> GemmPlan:
    """Plan for two activations: uint8 x uint8 as raw a against b - 128 in byte quads (method "u8", needs
    AVX-512 VNNI or AVX-VNNI: `_matmul_i16` with row corrections; block 65792), centred in int16 SIMD (method "i16";
    |x - zp| <= 255, block 33024) or offset8 in float32 ("split" / "f64"); uint16 x uint16 offset16 in
    int16 SIMD (methods "u8", "i16": a' = a - 32768 against the two byte planes of b - 32768,
    `_matmul_u16`; blocks 510 and 256); anything else with uint16 centred in float64. None: A8_METHOD.
    All plans give the same integers."""
    an, bn = np.dtype(a_dtype).name, np.dtype(b_dtype).name
    method = method or A8_METHOD
    _check_method(method, an == bn == "uint8")
    if an == bn == "uint8" and method == "u8":
        return _make_plan(np.uint8, "raw8", 255, 128)  # a in [0, 255] x (b - 128) in [-128, 127]
    method = "i16" if method == "u8" else method
    if an == bn == "uint8" and method == "i16":
        return _make_plan(np.int16, "centred", 255, 255)  # chunk 33024: one block for every SD shape
    if an == bn == "uint8":
        return _make_plan(np.float32, "offset8", 128, 128)  # chunk 1024
    if an == bn == "uint16" and method == "i16":
        return _make_plan(np.int16, "offset16", OFFSET16, 255)  # chunk 256: the low-byte plane (_matmul_u16)
    return _make_plan(np.float64, "centred", CENTRED_BOUND[an], CENTRED_BOUND[bn])


def _offset(mode, zp):
    """c with x - zp = representation(x) + c: 0 (centred), 128 - zp, 32896 - zp, 32768 - zp, -zp (raw8)."""
    return {"centred": 0, "offset8": OFFSET8 - zp, "split16": SPLIT16 - zp, "offset16": OFFSET16 - zp,
            "raw8": -zp}[mode]


# ----------------------------------------------------------------------------------------------
# operand preparation (Numba, one pass)
# ----------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _represent(raw, zp, mode):
    """(first, second) GEMM values of one raw activation: see the module docstring."""
    if mode == 0:
        return raw - zp, 0
    if mode == 1:
        return raw - 128, 0
    if mode == 3:
        return raw - 32768, 0
    if mode == 4:
        return raw, 0
    return (raw >> 8) - 128, (raw & 255) - 128


@njit(cache=True, parallel=True)
def _operand_kernel(x, zp, mode, out):
    """x (R, K) -> out (nsplit*R, K) float in representation `mode` (split16: hi' rows then lo' rows)."""
    rows, k = x.shape  # out may have more (padding) rows and columns: left as they are
    for r in prange(rows):
        for j in range(k):
            v0, v1 = _represent(np.int64(x[r, j]), zp, mode)
            out[r, j] = v0
            if mode == 2:
                out[rows + r, j] = v1


def _operand_buffer(rows, k, plan):
    """Float plans: empty (nsplit*rows, K). SIMD plans: (Mp, Kp) of gemm_i16.padded_shape, pads zeroed."""
    if not plan.simd:
        return np.empty((plan.nsplit * rows, k), plan.dtype)
    mp, kp = gemm_i16.padded_shape(rows, k, plan.per_word)
    out = np.empty((mp, kp), plan.dtype)
    out[rows:] = 0
    out[:rows, k:] = 0
    return out


def activation_operand(x2d, zp, plan):
    """Operand of activations x2d (R, K) for `plan` (exact small integers): float (nsplit*R, K),
    or int16 / uint8 (Mp, Kp) zero-padded for SIMD plans."""
    out = _operand_buffer(x2d.shape[0], x2d.shape[1], plan)
    _operand_kernel(np.ascontiguousarray(x2d), np.int64(zp), MODE_CODE[plan.mode], out)
    return out


@njit(cache=True, inline="always")
def _output_pixel(r, ho, wo):
    """(n, oy, ox) of im2col row r: rows are the output pixels of (N, Ho, Wo) in row-major order."""
    n = r // (ho * wo)
    p = r - n * ho * wo
    oy = p // wo
    return n, oy, p - oy * wo


@njit(cache=True, parallel=True)
def _im2col_kernel(x, zp, mode, kh, kw, sh, sw, top, left, ho, wo, out):
    """out[(n, y, x), (c, i, j)] = representation of xpad[n, c, y*sh+i, x*sw+j] (xpad: x padded with zp)."""
    nb, c, h, w = x.shape
    rows = nb * ho * wo
    for r in prange(rows):
        n, oy, ox = _output_pixel(r, ho, wo)
        col = 0
        for ci in range(c):
            for i in range(kh):
                y = oy * sh + i - top
                for j in range(kw):
                    xx = ox * sw + j - left
                    raw = np.int64(zp)
                    if y >= 0 and y < h and xx >= 0 and xx < w:
                        raw = np.int64(x[n, ci, y, xx])
                    v0, v1 = _represent(raw, zp, mode)
                    out[r, col] = v0
                    if mode == 2:
                        out[rows + r, col] = v1
                    col += 1


@njit(cache=True, parallel=True)
def _pad_nhwc_kernel(x, zp, mode, top, left, out):
    """out[n, y, x, c] = representation of xpad[n, c, y, x] (x padded with zp), out (N, Hp, Wp, C)."""
    nb, c, h, w = x.shape
    hp, wp = out.shape[1], out.shape[2]
    fill = _represent(np.int64(zp), zp, mode)[0]
    for ny in prange(nb * hp):
        n = ny // hp
        y = ny - n * hp - top
        for xx in range(wp):
            if y < 0 or y >= h or xx < left or xx >= left + w:
                for ci in range(c):
                    out[n, ny - n * hp, xx, ci] = fill
        if y < 0 or y >= h:
            continue
        for ci in range(c):
            for xx in range(w):
                out[n, ny - n * hp, left + xx, ci] = _represent(np.int64(x[n, ci, y, xx]), zp, mode)[0]


@njit(cache=True, parallel=True)
def _im2col_nhwc_kernel(xp, kh, kw, sh, sw, ho, wo, out):
    """out[(n, y, x), (i, j, c)] = xp[n, y*sh + i, x*sw + j, c] for the rows of N*Ho*Wo pixels."""
    c = xp.shape[3]
    for r in prange(xp.shape[0] * ho * wo):
        n, oy, ox = _output_pixel(r, ho, wo)
        col = 0
        for i in range(kh):
            for j in range(kw):
                out[r, col:col + c] = xp[n, oy * sh + i, ox * sw + j, :]
                col += c


def im2col_operand(x_q, zp, kh, kw, stride, padding, ho, wo, plan):
    """Operand of an NCHW input padded with zp, for `plan`: float (nsplit*N*Ho*Wo, C*KH*KW), columns
    ordered (c, i, j); or, for SIMD plans, int16 / uint8 (Mp, Kp) zero-padded (gemm_i16.padded_shape),
    columns ordered (i, j, c) (made from an NHWC copy: each row is KH*KW contiguous copies of C
    values; `PreparedWeight.i16` packs 4-D weights in the same order). A negative `top` starts at
    padded row -top (a band of output rows: conv2d)."""
    nb, c, h, w = x_q.shape
    out = _operand_buffer(nb * ho * wo, c * kh * kw, plan)
    if plan.simd:
        top, bottom, left, right = padding
        hp = (ho - 1) * stride[0] + kh  # the padded rows the output reads (top may be negative: a band)
        xp = np.empty((nb, hp, w + left + right, c), plan.dtype)  # (N, Hp, Wp, C)
        _pad_nhwc_kernel(np.ascontiguousarray(x_q), np.int64(zp), MODE_CODE[plan.mode], top, left, xp)
        _im2col_nhwc_kernel(xp, kh, kw, stride[0], stride[1], ho, wo, out)
        return out
    _im2col_kernel(np.ascontiguousarray(x_q), np.int64(zp), MODE_CODE[plan.mode], kh, kw, stride[0], stride[1],
                   padding[0], padding[2], ho, wo, out)
    return out


def chunked_products(a, b, chunk):
    """Exact float partial products over K-chunks: a (..., R, K) @ b (..., K, N) -> (C, ..., R, N).

    Part c is a[..., k0:k1] @ b[..., k0:k1, :] for k0 = c * chunk; exact by the plan's bound.
    """
    k = a.shape[-1]
    nchunks = max(1, -(-k // chunk))
    shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
    parts = np.empty((nchunks,) + shape, dtype=a.dtype)  # (C, ..., R, N)
    for c in range(nchunks):
        k0, k1 = c * chunk, min(k, (c + 1) * chunk)
        np.matmul(a[..., k0:k1], b[..., k0:k1, :], out=parts[c])
    return parts


# ----------------------------------------------------------------------------------------------
# Numba epilogues: sum parts in int64, add corrections, narrow, requantize
# ----------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _narrow_requant(acc, acc_shift, mult, shift, out_zp, qmin, qmax):
    """(requantize(narrow_i64(acc, acc_shift), ...), 1 if the narrowing saturated else 0)."""
    r = rounding_shift_right_i64(acc, acc_shift)
    sat = 0
    if r > 2147483647:
        r = np.int64(2147483647)
        sat = 1
    elif r < -2147483648:
        r = np.int64(-2147483648)
        sat = 1
    return requantize_i32(r, mult, shift, out_zp, qmin, qmax), sat


@njit(cache=True, inline="always")
def _row_acc(parts, nsplit, m, m_rows, acc):
    """acc[n] += sum_s 256**(nsplit-1-s) * sum_c parts[c, s*m_rows + m, n]   (int64, exact)."""
    for s in range(nsplit):
        if s > 0:
            for n in range(acc.size):
                acc[n] *= 256
        for c in range(parts.shape[0]):
            for n in range(acc.size):
                acc[n] += np.int64(parts[c, s * m_rows + m, n])


@njit(cache=True, parallel=True)
def _epilogue_linear(parts, nsplit, bias, acc_shift, mult, shift, out_zp, qmin, qmax, nchw_pixels, out):
    """parts (C, nsplit*M, N) float -> out; acc[m, n] = bias[n] + combined parts. Channel n.

    out is flat: (M, N) C-order when nchw_pixels == 0, else (B, N, P) C-order with m = b*P + p
    (conv, written as NCHW). Returns the number of saturating narrows.
    """
    m_rows = parts.shape[1] // nsplit
    n_cols = parts.shape[2]
    nsat = 0
    for m in prange(m_rows):
        acc = np.zeros(n_cols, dtype=np.int64)
        _row_acc(parts, nsplit, m, m_rows, acc)
        if nchw_pixels == 0:
            base, step = m * n_cols, 1
        else:
            b = m // nchw_pixels
            base, step = b * n_cols * nchw_pixels + (m - b * nchw_pixels), nchw_pixels
        for n in range(n_cols):
            v, sat = _narrow_requant(acc[n] + bias[n], acc_shift[n], mult[n], shift[n], out_zp, qmin, qmax)
            out[base + n * step] = v
            nsat += sat
    return nsat


@njit(cache=True, parallel=True)
def _epilogue_matmul(parts, m_per_batch, rowc, colc, const, acc_shift, mult, shift, out_zp, qmin, qmax, out):
    """parts (C, Bt*M, N) -> out (Bt*M, N); acc = parts + rowc[r] + colc[r // M, n] + const (per-tensor params)."""
    m_rows, n_cols = out.shape
    nsat = 0
    for m in prange(m_rows):
        acc = np.zeros(n_cols, dtype=np.int64)
        _row_acc(parts, 1, m, m_rows, acc)
        b = m // m_per_batch
        for n in range(n_cols):
            v, sat = _narrow_requant(acc[n] + rowc[m] + colc[b, n] + const, acc_shift, mult, shift, out_zp, qmin, qmax)
            out[m, n] = v
            nsat += sat
    return nsat


@njit(cache=True, inline="always")
def _requant_row(acc, bias_r, acc_shift, left, mult, half, right, out_zp, qmin, qmax, y):
    """y[c] = requantize(narrow_i64(acc[c] + bias[c], acc_shift[c]), mult[c], shift[c], out_zp, qmin, qmax)
    for c < len(y) (all arguments sliced to the row's channels).

    The same integers as _narrow_requant, written branch-free so that LLVM vectorizes it (per-lane
    shifts; the srdhm product of two int32 values, mult passed as int32: vpmuldq on AVX2):
    bias_r = bias + rounding half of acc_shift, left/right = max(+-shift, 0), half = rounding half
    of right (see _i16_requant_params). Returns the number of saturating narrows.
    """
    nsat = 0
    for c in range(y.size):
        r = (acc[c] + bias_r[c]) >> acc_shift[c]  # narrow_i64: rounding shift ...
        rs = min(max(r, -2147483648), 2147483647)  # ... and saturation
        nsat += r != rs
        x = np.int32(min(max(rs << left[c], -2147483648), 2147483647))  # requantize_i32: sat32(acc << shift)
        v = min(max((np.int64(x) * np.int64(mult[c]) + 1073741824) >> 31, -2147483648), 2147483647)  # srdhm
        v = (v + half[c]) >> right[c]  # rounding shift right
        y[c] = min(max(v + out_zp, qmin), qmax)
    return nsat


def int32_exact(plan, k, bias_eff, accs, rowc=None) -> bool:
    """True when the int32 epilogue of a SIMD plan is exact for this call (spec §3.3): every partial
    sum of `bias + rowc + sum_k a_k w_k` fits int32, i.e. k * a_bound * b_bound + max|bias_eff| +
    max|rowc| <= 2**31 - 1 (k: the operand's padded K; its pad columns are 0; rowc: per-row terms of the
    "u8" activation product, or None), and every acc_shift is <= 31."""
    bias_max = int(np.abs(bias_eff).max()) if bias_eff.size else 0
    row_max = int(np.abs(rowc).max()) if rowc is not None and rowc.size else 0
    acc_max = int(accs.max()) if accs.size else 0
    return k * plan.a_bound * plan.b_bound + bias_max + row_max <= gemm_i16.LANE_MAX and acc_max <= 31


def i32_requant_params(bias_eff, accs, mult, sh, out_zp, qmin, qmax, n_pad):
    """(prm, lo, hi) for `gemm_i16.requant_tile`: prm int32 (len(REQUANT_ROWS), n_pad), one column per
    output channel (pad columns: bias 0, shifts 0, mult 0, halves 1: harmless), with
    acc_mask = 2**acc_shift - 1, acc_half = 2**(acc_shift-1) (1 when acc_shift = 0), left / right =
    max(+-shift, 0) and their mask / half alike; lo = max(qmin - out_zp, -2**31), hi = min(qmax - out_zp,
    2**31 - 1); variant = 2 * (any acc_shift > 0) + (any shift > 0) (`gemm_i16.requant_tile`). Needs
    int32_exact (|bias_eff| < 2**31, acc_shift <= 31)."""
    n = bias_eff.size
    right = np.maximum(-sh, 0).astype(np.int64)
    cols = {"bias": bias_eff, "acc_shift": accs, "acc_mask": (np.int64(1) << accs) - 1,
            "acc_half": np.where(accs > 0, np.int64(1) << np.maximum(accs - 1, 0), 1), "left": np.maximum(sh, 0),
            "mult": mult, "right": right, "right_mask": (np.int64(1) << right) - 1,
            "right_half": np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 1)}
    prm = np.zeros((len(gemm_i16.REQUANT_ROWS), n_pad), np.int32)
    prm[gemm_i16.REQUANT_ROWS.index("acc_half")] = 1
    prm[gemm_i16.REQUANT_ROWS.index("right_half")] = 1
    for i, name in enumerate(gemm_i16.REQUANT_ROWS):
        prm[i, :n] = np.asarray(cols[name], np.int64)  # every value checked to fit int32 by the caller
    lo = max(int(qmin) - int(out_zp), -(2**31))
    hi = min(int(qmax) - int(out_zp), 2**31 - 1)
    variant = 2 * int(bool(np.any(accs > 0))) + int(bool(np.any(sh > 0)))
    return prm, lo, hi, variant


#: the int32 epilogue where int32_exact holds (set False to time or test the int64 path alone)
I32_EPILOGUE = {"enabled": True}


def _i16_requant_params(bias_eff, accs, sh):
    """(bias_r, left, half, right) for _requant_row, int64 (OUT,)."""
    bias_r = bias_eff + np.where(accs > 0, np.left_shift(1, np.maximum(accs - 1, 0)), 0)
    right = np.maximum(-sh, 0)
    half = np.where(right > 0, np.left_shift(1, np.maximum(right - 1, 0)), 0)
    return bias_r.astype(np.int64), np.maximum(sh, 0).astype(np.int64), half.astype(np.int64), right.astype(np.int64)


@njit(cache=True, inline="always")
def _store_nchw(tile, m0, m1, n0, n_valid, n_cols, nchw_pixels, out):
    """out (flat NCHW, P = nchw_pixels pixels an image) <- tile[m - m0, c] for rows m in [m0, m1) (row m: image
    m // P, pixel m % P) and channels n0 + c, c < n_valid: one run of pixels per channel, split where an image
    ends."""
    for c in range(n_valid):
        b = m0 // nchw_pixels
        p = m0 - b * nchw_pixels
        for m in range(m0, m1):
            out[(b * n_cols + n0 + c) * nchw_pixels + p] = tile[m - m0, c]
            p += 1
            if p == nchw_pixels:
                p = 0
                b += 1


@njit(cache=True, parallel=True)
def _gemm_i16(a, m_rows, wpk, n_cols, block_pairs, tiles_per_block, n_chunks, bias, rowc, acc_shift, left, mult,
              half, right, out_zp, qmin, qmax, nchw_pixels, raw, out, out_raw):
    """SIMD plans: acc[m, n] = bias[n] + rowc[m] + sum_k a[m, k] w[n, k] (exact), from tiles of `gemm_i16`
    (rowc: empty for none).

    a: (Mp, Kp) int16 or uint8 operand; wpk: packed weight. raw: out_raw (M, N) int64 = acc; else out
    (flat, layout as _epilogue_linear) = requantize(narrow_i64(acc, acc_shift[n]), ...), with bias
    and the requantize parameters as prepared by _i16_requant_params. Work items: blocks of
    `tiles_per_block` row tiles x `n_chunks` ranges of weight panels; in an item each K-block of a
    weight panel is reused over the block's row tiles (`gemm_i16.block_product`). (M, N) rows are
    requantized in place; NCHW outputs into a block buffer, then stored as runs of pixels per channel
    (one scattered store per output measured 30 % of a uint16 3x3 conv's product). Returns the
    saturation count.
    """
    npairs = a.shape[1] * a.itemsize // 4  # K in SIMD words
    n_tiles = a.shape[0] // MR
    n_pad = (n_cols + LANES - 1) // LANES * LANES
    n_panels = (n_pad + PANEL - 1) // PANEL
    n_blocks = (n_tiles + tiles_per_block - 1) // tiles_per_block
    nsat = 0
    for item in prange(n_blocks * n_chunks):
        blk = item // n_chunks
        chunk = item - blk * n_chunks
        t0 = blk * tiles_per_block
        t1 = min(n_tiles, t0 + tiles_per_block)
        m0, m1 = t0 * MR, min(t1 * MR, m_rows)
        cblock = np.empty((tiles_per_block * MR, PANEL), np.int64)
        yb = np.empty((tiles_per_block * MR, PANEL), out.dtype)  # NCHW: the block's outputs, stored per channel
        for j in range(chunk * n_panels // n_chunks, (chunk + 1) * n_panels // n_chunks):
            width = min(PANEL, n_pad - PANEL * j)
            n0 = PANEL * j
            n_valid = min(width, n_cols - n0)
            n1 = n0 + n_valid
            block_product(a, t0, t1, wpk, j, width, npairs, block_pairs, cblock)
            for m in range(m0, m1):
                crow = cblock[m - m0, :n_valid]
                if rowc.size:
                    crow += rowc[m]
                if raw:
                    out_raw[m, n0:n1] = crow + bias[n0:n1]
                    continue
                # (M, N) rows: in place; NCHW: into the block buffer
                y = out[m * n_cols + n0:m * n_cols + n1] if nchw_pixels == 0 else yb[m - m0, :n_valid]
                nsat += _requant_row(crow, bias[n0:n1], acc_shift[n0:n1], left[n0:n1], mult[n0:n1], half[n0:n1],
                                     right[n0:n1], out_zp, qmin, qmax, y)
            if raw or nchw_pixels == 0:
                continue
            _store_nchw(yb, m0, m1, n0, n_valid, n_cols, nchw_pixels, out)
    return nsat


#: weight panels requantized and stored together by _gemm_i32: 64 output channels per row (a cache
#: line of uint8 outputs; panel by panel, a row block writes 16 bytes into each of its rows' lines,
#: which alias in the caches when N is a multiple of 4096: measured 1.4 ns per output on the scores)
I32_GROUP = max(1, 64 // PANEL)


@njit(cache=True, parallel=True)
def _gemm_i32(a, m_rows, wpk, n_cols, block_pairs, tiles_per_block, n_chunks, prm, rowc, lo, hi, out_zp, variant,
              nchw_pixels, out):
    """SIMD plans where `int32_exact` holds (spec §3.3): out (flat, layout as _epilogue_linear) =
    requantize(narrow_i64(acc, acc_shift[n]), ...) of acc[m, n] = bias[n] + rowc[m] + sum_k a[m, k] w[n, k]
    (rowc int32, empty for none), the
    same integers as _gemm_i16 (work items alike), with the K-blocks summed in an int32 tile
    (`gemm_i16.block_product` into int32) and requantized in int32 lanes over each row block x
    I32_GROUP panels (`gemm_i16.requant_tile` with prm, lo, hi, variant of `i32_requant_params`),
    then stored: (M, N) rows as runs of I32_GROUP * PANEL channels, NCHW as runs of pixels per
    channel. Narrowing cannot saturate here, so there is no count to return."""
    npairs = a.shape[1] * a.itemsize // 4  # K in SIMD words
    n_tiles = a.shape[0] // MR
    n_pad = (n_cols + LANES - 1) // LANES * LANES
    n_panels = (n_pad + PANEL - 1) // PANEL
    n_blocks = (n_tiles + tiles_per_block - 1) // tiles_per_block
    for item in prange(n_blocks * n_chunks):
        blk = item // n_chunks
        chunk = item - blk * n_chunks
        t0 = blk * tiles_per_block
        t1 = min(n_tiles, t0 + tiles_per_block)
        c32 = np.empty((tiles_per_block * MR, I32_GROUP * PANEL), np.int32)
        j1 = (chunk + 1) * n_panels // n_chunks
        m0, m1 = t0 * MR, min(t1 * MR, m_rows)
        for g in range(chunk * n_panels // n_chunks, j1, I32_GROUP):
            n0 = PANEL * g
            for j in range(g, min(j1, g + I32_GROUP)):
                block_product(a, t0, t1, wpk, j, min(PANEL, n_pad - PANEL * j), npairs, block_pairs,
                              c32[:, PANEL * (j - g):])
            width = min(PANEL * (j1 - g), PANEL * I32_GROUP, n_pad - n0)  # a multiple of LANES
            n_valid = min(width, n_cols - n0)
            if rowc.size:
                for m in range(m0, m1):
                    c32[m - m0, :width] += rowc[m]
            if nchw_pixels == 0:  # rows m0..m1-1 of out (M, N), channels n0..n0+n_valid-1
                requant_tile(c32, np.int64(m1 - m0), np.int64(width), np.int64(I32_GROUP * PANEL), prm, np.int64(n0),
                             lo, hi, out_zp, variant, out, np.int64(m0 * n_cols + n0), np.int64(n_cols),
                             np.int64(n_valid))
                continue
            requant_tile(c32, np.int64(m1 - m0), np.int64(width), np.int64(I32_GROUP * PANEL), prm, np.int64(n0),
                         lo, hi, out_zp, variant, c32, np.int64(0), np.int64(I32_GROUP * PANEL),
                         np.int64(width))  # in place
            _store_nchw(c32, m0, m1, n0, n_valid, n_cols, nchw_pixels, out)


#: at most this many bytes of int16 activations per work item of _gemm_i16 (kept in L2 while a
#: weight panel is reused over them), and at least this many work items per thread where the
#: shape allows (weight panels are split between items when there are few row blocks)
I16_ROW_BLOCK_BYTES = 128 * 1024
I16_ITEMS_PER_THREAD = 4
#: packed weights above this size are taken as not staying in the last-level cache between row blocks, so row
#: blocks are sized by one K-block of activations instead of the whole K (measured, uint16 3x3 convs at SD 1.5
#: shapes on the 2-core AVX-512 machine: 1280 -> 1280 channels at 16 x 16, 29.5 MB packed, 187 -> 309 GMAC/s;
#: 2560 -> 1280, 59 MB, 145 -> 278; 1280 -> 640 at 32 x 32, 14.7 MB, 310 with whole-K rows, 275 without)
I16_CACHED_WEIGHT_BYTES = 16 << 20


def _i16_product(op, m_rows, wpk, n_cols, plan, bias_eff, accs, mult, sh, out_zp, qmin, qmax, nchw_pixels, out,
                 out_raw=None, rowc=None):
    """Run _gemm_i16 (or _gemm_i32) on operand op (Mp, Kp) of a SIMD plan; requantized into out (flat), or raw
    into out_raw (M, N) int64. rowc: int64 (M,) terms added to each row's sums ("u8" activation products)."""
    n_tiles = op.shape[0] // MR
    block_pairs = min(plan.chunk // plan.per_word, gemm_i16.L1_PAIRS)  # exact (<= the plan's block), L1-sized
    # rows per item: their whole K of activations in I16_ROW_BLOCK_BYTES, or, for a weight too large to stay in
    # the last-level cache (streamed again for every row block), one K-block of them (the L1 block where the
    # tile has one: with the plan's block, 131070 for uint8 on int16, a row block was one tile, and a uint8 3x3
    # conv of 1280 channels at 16 x 16 ran at 87 GMAC/s with AVX2 code, 144-149 with the L1 block)
    big = wpk.nbytes > I16_CACHED_WEIGHT_BYTES
    kb = min(op.shape[1], block_pairs * plan.per_word) if big else op.shape[1]
    tiles_per_block = max(1, min(n_tiles, I16_ROW_BLOCK_BYTES // (op.itemsize * kb * MR)))
    n_blocks = -(-n_tiles // tiles_per_block)
    n_panels = -(-n_cols // PANEL)
    n_chunks = min(n_panels, max(1, -(-I16_ITEMS_PER_THREAD * get_num_threads() // n_blocks)))
    raw = out_raw is not None
    if not raw and I32_EPILOGUE["enabled"] and int32_exact(plan, op.shape[1], bias_eff, accs, rowc):
        prm, lo, hi, variant = i32_requant_params(bias_eff, accs, mult, sh, out_zp, qmin, qmax, n_panels * PANEL)
        rows32 = np.zeros(0, np.int32) if rowc is None else rowc.astype(np.int32)  # |rowc| < 2**31: int32_exact
        _gemm_i32(op, m_rows, wpk, n_cols, block_pairs, tiles_per_block, n_chunks, prm, rows32, np.int64(lo),
                  np.int64(hi), np.int64(out_zp), variant, nchw_pixels, out)
        return 0
    rowc = np.zeros(0, np.int64) if rowc is None else rowc
    if raw:  # unused requantize arguments, typed as in the requantizing call
        bias_r, accs, left, half, right = bias_eff, *(np.zeros(1, np.int64),) * 4
        mult = np.zeros(1, np.int32)
        out = np.empty(0, np.uint8)
    else:
        bias_r, left, half, right = _i16_requant_params(bias_eff, accs, sh)
        mult = mult.astype(np.int32)  # in [0, 2**31 - 1]: int32 x int32 products (vpmuldq on AVX2)
        out_raw = np.empty((0, 0), np.int64)
    return _gemm_i16(op, m_rows, wpk, n_cols, block_pairs, tiles_per_block, n_chunks, bias_r, rowc, accs, left,
                     mult, half, right, out_zp, qmin, qmax, nchw_pixels, raw, out, out_raw)


@njit(cache=True, parallel=True)
def _sum_parts(parts, nsplit, bias, out):
    """Raw exact accumulator: out (M, N) int64 = bias[n] + combined parts (see _epilogue_linear)."""
    m_rows, n_cols = out.shape
    for m in prange(m_rows):
        acc = np.zeros(n_cols, dtype=np.int64)
        _row_acc(parts, nsplit, m, m_rows, acc)
        for n in range(n_cols):
            out[m, n] = acc[n] + bias[n]


@njit(cache=True, parallel=True)
def _offset_sums(x, axis_k, out):
    """Sums over K of (x - 128): x (Bt, M, K) with axis_k = 2 -> out (Bt, M); x (Bt, K, N), axis_k = 1 -> (Bt, N)."""
    nb = x.shape[0]
    for b in prange(nb):
        if axis_k == 2:
            for m in range(x.shape[1]):
                s = np.int64(0)
                for k in range(x.shape[2]):
                    s += np.int64(x[b, m, k]) - 128
                out[b, m] = s
        else:
            for n in range(x.shape[2]):
                out[b, n] = 0
            for k in range(x.shape[1]):
                for n in range(x.shape[2]):
                    out[b, n] += np.int64(x[b, k, n]) - 128


# ----------------------------------------------------------------------------------------------
# prepared weights (float copies made once, at load time)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PreparedWeight:
    """An int8 weight (OUT, ...) with its row sums and, made on first use and kept, the GEMM
    operands of the plans it has served.

    `wsum[o] = sum_k w[o, k]` (int64) feeds the zero-point correction. `t32`: float32
    transposed copy (K, OUT) for the float plans (the same integers exactly, |w| <= 128; 4 bytes
    per weight). `i16`: int16 pair-packed panels for the "i16" plan (`gemm_i16.pack_weight`; 2
    bytes per weight, N rounded up to 16 and K to even; for 4-D conv weights K is ordered
    (kh, kw, c_in), as the SIMD im2col operand). `u8`: the same as int8 quads for the "u8" plan
    (1 byte per weight, K rounded up to a multiple of 4). Make it once with `prepare_weight` and pass it
    wherever a kernel takes `w_q`.
    """

    q: np.ndarray  # int8 (OUT, ...), as given
    wsum: np.ndarray  # int64 (OUT,)
    _operands: dict = field(default_factory=dict, repr=False)

    @property
    def t32(self) -> np.ndarray:
        """float32 (K, OUT), K = prod(q.shape[1:])."""
        if "t32" not in self._operands:
            w2 = self.q.reshape(self.q.shape[0], -1)  # (OUT, K)
            self._operands["t32"] = np.ascontiguousarray(w2.T, dtype=np.float32)  # (K, OUT)
        return self._operands["t32"]

    @property
    def i16(self) -> np.ndarray:
        """int16 packed pairs (1-D), see `gemm_i16`."""
        return self._packed("i16", np.int16)

    @property
    def u8(self) -> np.ndarray:
        """int8 packed quads (1-D) for the "u8" plan, see `gemm_i16`."""
        return self._packed("u8", np.int8)

    def _packed(self, key, dtype):
        if key not in self._operands:
            self._operands[key] = gemm_i16.pack_weight(self.q, dtype)  # conv: K ordered (kh, kw, c_in)
        return self._operands[key]


def prepare_weight(w_q) -> PreparedWeight:
    """Row sums of an int8 weight (OUT, ...) for repeated use; GEMM operands are added on first use."""
    if isinstance(w_q, PreparedWeight):
        return w_q
    check_array("w_q", w_q, ("int8",), ndim_min=2)
    w2 = w_q.reshape(w_q.shape[0], -1)  # (OUT, K)
    return PreparedWeight(w_q, w2.sum(axis=1, dtype=np.int64))


def _weight_arg(w_q, ndim):
    wq = w_q.q if isinstance(w_q, PreparedWeight) else w_q
    check_array("w_q", wq, ("int8",))
    if wq.ndim != ndim:
        raise ValueError(f"w_q: expected {ndim} dims, got shape {wq.shape}")
    return wq, w_q


def _weight_operand(w_q, plan):
    """(operand, wsum (OUT,) int64): (K, OUT) float in the plan's dtype, or packed int16 pairs / int8 quads."""
    pw = prepare_weight(w_q)
    if plan.simd:
        return (pw.i16 if plan.dtype is np.int16 else pw.u8), pw.wsum
    t = pw.t32 if plan.dtype is np.float32 else pw.t32.astype(np.float64)
    return t, pw.wsum


def _bias_arg(bias_q, n_out):
    if bias_q is None:
        return np.zeros(n_out, dtype=np.int64)
    check_array("bias_q", bias_q, ("int32",))
    if bias_q.shape != (n_out,):
        raise ValueError(f"bias_q: expected shape ({n_out},), got {bias_q.shape}")
    return bias_q.astype(np.int64)


def weight_bound(w_q, bias_q, x_dtype):
    """Per-output-channel worst |acc| over all inputs: B_x * sum_k |w[o, k]| + |bias[o]| (int64 (OUT,)).

    B_x is the centred activation bound (255 for uint8, 65535 for uint16). Pass it to
    `tinysd.fixedpoint.accumulator_shift` to get the acc_shift that makes narrowing exact.
    """
    wq = w_q.q if isinstance(w_q, PreparedWeight) else w_q
    check_array("w_q", wq, ("int8",), ndim_min=2)
    bx = CENTRED_BOUND[np.dtype(x_dtype).name]
    s = np.abs(wq.reshape(wq.shape[0], -1).astype(np.int64)).sum(axis=1)
    b = np.zeros(wq.shape[0], np.int64) if bias_q is None else np.abs(bias_q.astype(np.int64))
    return bx * s + b


def check_reduction(name, k, bound_a, bound_b, bias_max=2**31):
    """ValueError unless k * bound_a * bound_b + bias_max < 2**62 (the int64 accumulator budget)."""
    if k * bound_a * bound_b + bias_max >= ACC_LIMIT:
        raise ValueError(f"{name}: reduction length {k} too long for a 64-bit accumulator")


# ----------------------------------------------------------------------------------------------
# linear
# ----------------------------------------------------------------------------------------------
def _linear_common(x_q, x_zp, w_q, bias_q, method):
    wq, w_arg = _weight_arg(w_q, 2)
    check_array("x_q", x_q, ACTIVATION_DTYPES, ndim_min=1)
    n_out, k = wq.shape
    if x_q.shape[-1] != k:
        raise ValueError(f"x_q: last dim {x_q.shape[-1]} != w_q in-features {k}")
    x_zp = check_zero_point("x_zp", x_zp, x_q.dtype)
    bias = _bias_arg(bias_q, n_out)
    check_reduction("x_q", k, 128, CENTRED_BOUND[x_q.dtype.name])
    plan = plan_linear(x_q.dtype, method)
    wt, wsum = _weight_operand(w_arg, plan)
    bias_eff = bias + _offset(plan.mode, x_zp) * wsum  # exact zero-point / offset correction
    x2d = x_q.reshape(-1, k)  # (M, K)
    return plan, activation_operand(x2d, x_zp, plan), wt, bias_eff, x2d.shape[0], n_out


def weight_product(plan, op, m_rows, wt, n_out, bias_eff, accs, mult, sh, out_zp, qmin, qmax, nchw_pixels, out):
    """Exact product of an operand (activation_operand / im2col_operand, M rows) with a weight operand
    (_weight_operand) for `plan`, then the requantize epilogue into `out` (flat, layout as
    _epilogue_linear). Returns the number of saturating narrows."""
    if plan.simd:
        return _i16_product(op, m_rows, wt, n_out, plan, bias_eff, accs, mult, sh, out_zp, qmin, qmax, nchw_pixels,
                            out)
    parts = chunked_products(op, wt, plan.chunk)  # (C, nsplit*M, OUT)
    return _epilogue_linear(parts, plan.nsplit, bias_eff, accs, mult, sh, out_zp, qmin, qmax, nchw_pixels, out)


def linear_accumulator(x_q, x_zp, w_q, bias_q=None, method=None):
    """Exact int64 accumulator of `linear`: acc[..., o] = bias[o] + sum_k w[o, k] * (x[..., k] - x_zp).

    x_q uint8/uint16 (..., K); w_q int8 (OUT, K) or PreparedWeight; bias_q int32 (OUT,) or None.
    Returns int64 (..., OUT).
    """
    plan, op, wt, bias_eff, m, n_out = _linear_common(x_q, x_zp, w_q, bias_q, method)
    out = np.empty((m, n_out), np.int64)  # (M, OUT)
    if plan.simd:
        _i16_product(op, m, wt, n_out, plan, bias_eff, None, None, None, 0, 0, 0, 0, None, out_raw=out)
    else:
        _sum_parts(chunked_products(op, wt, plan.chunk), plan.nsplit, bias_eff, out)  # parts (C, nsplit*M, OUT)
    return out.reshape(x_q.shape[:-1] + (n_out,))


def linear(x_q, x_zp, w_q, bias_q, multiplier, shift, out_zp, qmin, qmax, acc_shift=0, method=None):
    """Quantized linear over the last axis (spec §4.2).

        acc[..., o] = bias_q[o] + sum_k w_q[o, k] * (x_q[..., k] - x_zp)          (exact)
        out[..., o] = requantize(narrow_i64(acc, acc_shift[o]), multiplier[o], shift[o],
                                 out_zp, qmin, qmax)

    x_q: uint8 or uint16 (..., K). w_q: int8 (OUT, K) (symmetric, zero point 0) or a
    PreparedWeight. bias_q: int32 (OUT,) at scale s_x * s_w[o], or None. multiplier, shift,
    acc_shift: ints or (OUT,) integer arrays (per output channel); multiplier in [0, 2**31-1],
    shift in [-31, 30], acc_shift in [0, 62]. Output dtype: the smallest of uint8/int8/uint16/
    int16/int32 holding [qmin, qmax]; shape (..., OUT). method: "i16", "split" or "f64"
    (`plan_linear`; same bits, speed only; None: A8_METHOD / A16_METHOD).
    """
    wq, _ = _weight_arg(w_q, 2)
    n_out = wq.shape[0]
    mult, sh = requant_params(multiplier, shift, n_out)
    accs = per_channel("acc_shift", acc_shift, n_out, 0, ACC_SHIFT_MAX)
    out_zp, qmin, qmax = check_out_range(out_zp, qmin, qmax)
    plan, op, wt, bias_eff, m, n_out = _linear_common(x_q, x_zp, w_q, bias_q, method)
    out = np.empty((m, n_out), out_dtype(qmin, qmax))  # (M, OUT)
    nsat = weight_product(plan, op, m, wt, n_out, bias_eff, accs, mult, sh, out_zp, qmin, qmax, 0, out.reshape(-1))
    _report_saturation(nsat, "linear")
    return out.reshape(x_q.shape[:-1] + (n_out,))


# ----------------------------------------------------------------------------------------------
# matmul of two activations
# ----------------------------------------------------------------------------------------------
def _check_matmul_args(a_q, a_zp, b_q, b_zp):
    check_array("a_q", a_q, ACTIVATION_DTYPES, ndim_min=2)
    check_array("b_q", b_q, ACTIVATION_DTYPES, ndim_min=2)
    if a_q.shape[-1] != b_q.shape[-2]:
        raise ValueError(f"b_q: shape {b_q.shape} does not match a_q {a_q.shape} (K)")
    try:
        np.broadcast_shapes(a_q.shape[:-2], b_q.shape[:-2])
    except ValueError:
        raise ValueError(f"b_q: batch dims {b_q.shape[:-2]} do not broadcast with a_q {a_q.shape[:-2]}") from None
    check_reduction("a_q", a_q.shape[-1], CENTRED_BOUND[a_q.dtype.name], CENTRED_BOUND[b_q.dtype.name], 0)
    return check_zero_point("a_zp", a_zp, a_q.dtype), check_zero_point("b_zp", b_zp, b_q.dtype)


def _batched(a_q, b_q):
    """a3 (Bt, M, K), b3 (Bt, K, N) with the batch dims broadcast, and the batch shape."""
    batch = np.broadcast_shapes(a_q.shape[:-2], b_q.shape[:-2])
    m, k = a_q.shape[-2:]
    n = b_q.shape[-1]
    a3 = np.broadcast_to(a_q, batch + (m, k)).reshape(-1, m, k)  # (Bt, M, K)
    b3 = np.broadcast_to(b_q, batch + (k, n)).reshape(-1, k, n)  # (Bt, K, N)
    return a3, b3, batch


@dataclass(frozen=True)
class PackedRight:
    """The right operand of `matmul` packed once for a SIMD plan, for several calls with the same b (the
    query tiles of one attention): `pack_matmul_right(b_q, b_zp)`. Holds `_pack_right` per batch element
    (uint8 b), or, for uint16 b (a uint16 x uint16 product), `_u16_pack_right`'s (byte planes, column sums)."""

    shape: tuple
    zp: int
    panels: list


def pack_matmul_right(b_q, b_zp, method=None):
    """PackedRight of b_q (..., K, N) for `matmul(a_q, a_zp, b_q, b_zp, ..., b_packed=)`, or None where the
    plan of uint8 x b_q is not a SIMD one (the packed form would not be used); uint16 b_q: for the
    uint16 x uint16 int16 plan (a uint8 a_q ignores it)."""
    b_zp = check_zero_point("b_zp", b_zp, b_q.dtype)
    if b_q.dtype == np.uint16 and plan_matmul(np.uint16, np.uint16, method).mode == "offset16":
        return PackedRight(tuple(b_q.shape), b_zp, _u16_pack_right(b_q.reshape((-1,) + b_q.shape[-2:])))
    plan = plan_matmul(np.uint8, b_q.dtype, method)
    if b_q.dtype != np.uint8 or not plan.simd:
        return None
    b3 = b_q.reshape((-1,) + b_q.shape[-2:])  # (Bt, K, N)
    return PackedRight(tuple(b_q.shape), b_zp, [_pack_right(b3[i], b_zp, plan) for i in range(b3.shape[0])])


def _packed_panels(b_packed, b_q, b_zp, batch):
    """b_packed's per-batch panels for this call, or None (none given, or b broadcast over a's batch dims:
    packed per call then). A packing made for another b or zero point is a ValueError."""
    if b_packed is None:
        return None
    if b_packed.shape != b_q.shape or b_packed.zp != b_zp:
        raise ValueError(f"b_packed: packed for b_q {b_packed.shape} zp {b_packed.zp}, used with {b_q.shape} zp {b_zp}")
    return b_packed.panels if batch == b_q.shape[:-2] else None


def _pack_right(b2, b_zp, plan):
    """(packed words, column sums) of the right operand b2 (K, N) uint8 of a SIMD plan, as a weight (N, K):
    "i16": b - b_zp as int16 pairs (|.| <= 255), sums None; "u8": b' = b - 128 as int8 quads and
    colsum[n] = sum_k b'[k, n] (int64, for the correction terms of `_matmul_i16`)."""
    if plan.dtype is np.int16:
        return gemm_i16.pack_centred(b2, b_zp), None
    return gemm_i16.pack_centred(b2, OFFSET8, np.int8), b2.sum(axis=0, dtype=np.int64) - OFFSET8 * b2.shape[0]


@njit(cache=True, parallel=True)
def _u8_left_operand(x, out, rowsum):
    """out[r, :K] = x[r] (uint8; out's padding kept) and rowsum[r] = sum_k x[r, k] (int64), x (R, K)."""
    rows, k = x.shape
    for r in prange(rows):
        xr, orow = x[r], out[r, :k]
        s = np.int64(0)
        for j in range(k):
            orow[j] = xr[j]
            s += xr[j]
        rowsum[r] = s


def _matmul_i16(a3, a_zp, b3, b_zp, plan, requant, out, packed=None):
    """SIMD plans of matmul, per batch element i through _i16_product:

      "i16": the centred operands a - a_zp (Mp, Kp) and b - b_zp packed as a weight (N, K)
             (`gemm_i16.pack_centred`; both int16, |.| <= 255); no correction terms.
      "u8":  a as it is (uint8) against b' = b - 128 as an int8 weight (N, K), and with cb = 128 - b_zp
             sum_k (a - a_zp)(b - b_zp) = sum_k a b' + cb sum_k a - a_zp sum_k b' - K a_zp cb
             (per-row term cb sum_k a, per-column bias -a_zp sum_k b' - K a_zp cb; |each| <= K 255 128).

    requant: None (out (Bt, M, N) int64 = the exact sum) or (acc_shift, mult, shift, out_zp, qmin, qmax) per
    tensor (out (Bt, M, N) requantized). packed: the Bt packed right operands (`PackedRight.panels`) or None.
    Returns the saturation count."""
    nb, m, k = a3.shape
    n = b3.shape[2]
    bias, rowc = np.zeros(n, np.int64), None  # "i16": the centred product needs no correction terms
    nsat = 0
    for i in range(nb):
        wpk, colsum = _pack_right(b3[i], b_zp, plan) if packed is None else packed[i]  # as a weight (N, K)
        if plan.dtype is np.uint8:
            a_op = _operand_buffer(m, k, plan)  # (Mp, Kp) uint8
            rowc = np.empty(m, np.int64)
            _u8_left_operand(np.ascontiguousarray(a3[i]), a_op, rowc)
            rowc *= OFFSET8 - b_zp
            bias = -a_zp * colsum - k * a_zp * (OFFSET8 - b_zp)
        else:
            a_op = activation_operand(a3[i], a_zp, plan)  # (Mp, Kp) int16
        if requant is None:
            _i16_product(a_op, m, wpk, n, plan, bias, None, None, None, 0, 0, 0, 0, None, out_raw=out[i], rowc=rowc)
            continue
        accs, mult, sh, out_zp, qmin, qmax = requant
        nsat += _i16_product(a_op, m, wpk, n, plan, bias, np.full(n, accs, np.int64), np.full(n, mult, np.int64),
                             np.full(n, sh, np.int64), out_zp, qmin, qmax, 0, out[i].reshape(-1), rowc=rowc)
    return nsat


def _matmul_common(a_q, a_zp, b_q, b_zp, plan):
    """parts (C, Bt*M, N), per-row and per-column corrections, constant, batch shape (float plans)."""
    a3, b3, batch = _batched(a_q, b_q)
    nb, m, k = a3.shape
    n = b3.shape[2]
    a_op = activation_operand(a3.reshape(-1, k), a_zp, plan).reshape(nb, m, k)
    b_op = activation_operand(b3.reshape(-1, n), b_zp, plan).reshape(nb, k, n)
    parts = chunked_products(a_op, b_op, plan.chunk).reshape(-1, nb * m, n)  # (C, Bt*M, N)
    rowc = np.zeros((nb, m), np.int64)
    colc = np.zeros((nb, n), np.int64)
    const = 0
    if plan.mode == "offset8":
        # sum_k (a-za)(b-zb) = sum a'b' + cb sum_k a' + ca sum_k b' + K ca cb, a' = a-128, ca = 128-za
        ca, cb = OFFSET8 - a_zp, OFFSET8 - b_zp
        _offset_sums(np.ascontiguousarray(a3), 2, rowc)
        _offset_sums(np.ascontiguousarray(b3), 1, colc)
        rowc *= cb
        colc *= ca
        const = k * ca * cb
    return parts, rowc.reshape(-1), colc, const, batch, m, n


def matmul_accumulator(a_q, a_zp, b_q, b_zp, method=None):
    """Exact int64 (..., M, N) = sum_k (a[..., m, k] - a_zp) * (b[..., k, n] - b_zp), batch dims broadcast.
    method: as plan_matmul (same integers)."""
    a_zp, b_zp = _check_matmul_args(a_q, a_zp, b_q, b_zp)
    plan = plan_matmul(a_q.dtype, b_q.dtype, method)
    if plan.mode == "offset16":  # uint16 x uint16, int16 SIMD
        return _matmul_u16(a_q, a_zp, b_q, b_zp, None, None)
    if plan.simd:
        a3, b3, batch = _batched(a_q, b_q)
        acc = np.empty((a3.shape[0], a3.shape[1], b3.shape[2]), np.int64)  # (Bt, M, N)
        _matmul_i16(a3, a_zp, b3, b_zp, plan, None, acc)
        return acc.reshape(batch + acc.shape[1:])
    parts, rowc, colc, const, batch, m, n = _matmul_common(a_q, a_zp, b_q, b_zp, plan)
    acc = parts.astype(np.int64).sum(axis=0).reshape(-1, m, n)  # (Bt, M, N)
    acc += rowc.reshape(-1, m, 1) + colc[:, None, :] + const
    return acc.reshape(batch + (m, n))


def matmul(a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift=0, method=None, b_packed=None):
    """Batched product of two activations (spec §4.3): attention scores and probs @ V.

        acc[..., m, n] = sum_k (a_q[..., m, k] - a_zp) * (b_q[..., k, n] - b_zp)   (exact)
        out = requantize(narrow_i64(acc, acc_shift), multiplier, shift, out_zp, qmin, qmax)

    a_q (..., M, K), b_q (..., K, N): uint8/uint16, leading dims broadcast. multiplier, shift,
    acc_shift are per-tensor ints. Output (..., M, N), dtype from [qmin, qmax]. method: as
    plan_matmul (same bits, speed only). b_packed: `pack_matmul_right(b_q, b_zp)` made earlier (same b_q and
    b_zp, same batch dims as a_q), so that calls sharing b pack it once (speed only).
    """
    a_zp, b_zp = _check_matmul_args(a_q, a_zp, b_q, b_zp)
    mult, sh = (int(v[0]) for v in requant_params(multiplier, shift, 1))
    accs = int(per_channel("acc_shift", acc_shift, 1, 0, ACC_SHIFT_MAX)[0])
    out_zp, qmin, qmax = check_out_range(out_zp, qmin, qmax)
    plan = plan_matmul(a_q.dtype, b_q.dtype, method)
    if plan.mode == "offset16":  # uint16 x uint16, int16 SIMD
        packed = _packed_panels(b_packed, b_q, b_zp, np.broadcast_shapes(a_q.shape[:-2], b_q.shape[:-2]))
        out = _matmul_u16(a_q, a_zp, b_q, b_zp, (accs, mult, sh, out_zp, qmin, qmax), out_dtype(qmin, qmax), packed)
        _report_saturation(int(out[1]), "matmul")
        return out[0]
    if plan.simd:
        a3, b3, batch = _batched(a_q, b_q)
        out = np.empty((a3.shape[0], a3.shape[1], b3.shape[2]), out_dtype(qmin, qmax))  # (Bt, M, N)
        packed = _packed_panels(b_packed, b_q, b_zp, batch)
        nsat = _matmul_i16(a3, a_zp, b3, b_zp, plan, (accs, mult, sh, out_zp, qmin, qmax), out, packed)
        _report_saturation(nsat, "matmul")
        return out.reshape(batch + out.shape[1:])
    parts, rowc, colc, const, batch, m, n = _matmul_common(a_q, a_zp, b_q, b_zp, plan)
    out = np.empty((parts.shape[1], n), out_dtype(qmin, qmax))  # (Bt*M, N)
    nsat = _epilogue_matmul(parts, m, rowc, colc, const, accs, mult, sh, out_zp, qmin, qmax, out)
    _report_saturation(nsat, "matmul")
    return out.reshape(batch + (m, n))


# ----------------------------------------------------------------------------------------------
# uint16 x uint16 matmul on the int16 SIMD kernel (spec §3.3)
# ----------------------------------------------------------------------------------------------
#: K-blocks (in pairs) of the two products of _gemm_u16: |a'| <= 32768 against |hi| <= 128 and 0 <= lo <= 255
U16_HI_PAIRS = gemm_i16.block_length(OFFSET16, 128) // 2  # 255 pairs: 510 * 32768 * 128 < 2**31
U16_LO_PAIRS = gemm_i16.block_length(OFFSET16, 255) // 2  # 128 pairs: 256 * 32768 * 255 < 2**31
#: weight panels combined and requantized together by _gemm_u16: 64 output channels per row (stored
#: panel by panel, the 16-channel runs of rows 8 KB apart alias in the caches on the scores, N = 4096)
U16_GROUP = max(1, 64 // PANEL)


@njit(cache=True, parallel=True)
def _u16_left_operand(a3, out, rowsum):
    """out[b, m, k] = a3[b, m, k] - 32768 (int16) and rowsum[b, m] = sum_k out[b, m, k] (int64), for
    a3 (Bt, M, K) uint16; out (Bt, Mp, Kp) keeps its padding (rows >= M, columns >= K) as it is."""
    nb, m_rows, k = a3.shape
    for bm in prange(nb * m_rows):
        b = bm // m_rows
        m = bm - b * m_rows
        s = np.int64(0)
        for j in range(k):
            v = np.int64(a3[b, m, j]) - OFFSET16
            out[b, m, j] = v
            s += v
        rowsum[b, m] = s


@njit(cache=True, parallel=True)
def _u16_right_packed(b3, npairs, n_pad, pk, colsum):
    """The byte planes of b' = b - 32768 = 256 hi + lo, hi = (b >> 8) - 128 in [-128, 127] and
    lo = b & 255 in [0, 255], of b3 (Bt, K, N) uint16, written as weights (N, K) packed by
    `gemm_i16.pack_weight` into pk[:, 0] (hi) and pk[:, 1] (lo), pk (Bt, 2, words) (zeroed by the
    caller: the padding), and colsum[b, n] = sum_k b'[b, k, n] (int64). Word pair p of channel c of panel j is at
    2 * (PANEL * j * npairs + p * width + c) (gemm_i16 module docstring)."""
    nb, k, n_cols = b3.shape
    for b in prange(nb):
        for n in range(n_cols):
            colsum[b, n] = 0
        for j in range(k):
            p = j >> 1
            for n in range(n_cols):
                panel = n // PANEL
                width = min(PANEL, n_pad - PANEL * panel)
                idx = 2 * (PANEL * panel * npairs + p * width + n - PANEL * panel) + (j & 1)
                x = np.int64(b3[b, j, n])
                pk[b, 0, idx] = (x >> 8) - 128
                pk[b, 1, idx] = x & 255
                colsum[b, n] += x - OFFSET16


@njit(cache=True, parallel=True)
def _gemm_u16(a, m_rows, pk, n_cols, tiles_per_block, n_chunks, rowc, colc, const, acc_shift, half_acc, left, mult,
              half, right, out_zp, qmin, qmax, raw, out, out_raw):
    """acc[b, m, n] = 256 * sum_k a[b, m, k] hi[b, n, k] + sum_k a[b, m, k] lo[b, n, k] + rowc[b, m]
    + colc[b, n] + const (exact int64), from tiles of `gemm_i16` with K-blocks of U16_HI_PAIRS and
    U16_LO_PAIRS pairs; raw: out_raw (Bt, M, N) int64 = acc, else out (Bt, M, N) =
    requantize(narrow_i64(acc, acc_shift), mult, shift, out_zp, qmin, qmax) (per tensor; half_acc,
    left, half, right as `_u16_requant_row` takes them).

    a: (Bt, Mp, Kp) int16; pk: (Bt, 2, words) hi and lo packed by `gemm_i16.pack_weight`. Work items:
    (batch element, block of `tiles_per_block` row tiles, range of weight panels); the epilogue runs
    over U16_GROUP panels at a time. Returns the saturation count.
    """
    nb = a.shape[0]
    npairs = a.shape[2] // 2
    n_tiles = a.shape[1] // MR
    n_pad = (n_cols + LANES - 1) // LANES * LANES
    n_panels = (n_pad + PANEL - 1) // PANEL
    n_blocks = (n_tiles + tiles_per_block - 1) // tiles_per_block
    per_b = n_blocks * n_chunks
    nsat = 0
    for item in prange(nb * per_b):
        b = item // per_b
        blk = (item - b * per_b) // n_chunks
        chunk = item - b * per_b - blk * n_chunks
        t0 = blk * tiles_per_block
        t1 = min(n_tiles, t0 + tiles_per_block)
        rows = min(m_rows, t1 * MR) - t0 * MR
        cb = np.empty((2, tiles_per_block * MR, U16_GROUP * PANEL), np.int64)  # (plane, rows, channels)
        ab = a[b]
        j1 = (chunk + 1) * n_panels // n_chunks
        for g in range(chunk * n_panels // n_chunks, j1, U16_GROUP):
            for j in range(g, min(j1, g + U16_GROUP)):
                for plane in range(2):  # one inlined block_product: half the compile time of two
                    block_product(ab, t0, t1, pk[b, plane], j, min(PANEL, n_pad - PANEL * j), npairs,
                                  U16_HI_PAIRS if plane == 0 else U16_LO_PAIRS, cb[plane, :, PANEL * (j - g):])
            n0 = PANEL * g
            n_valid = min(PANEL * (j1 - g), PANEL * U16_GROUP, n_cols - n0)
            for r in range(rows):
                m = t0 * MR + r
                rc = rowc[b, m] + const
                if raw:
                    for c in range(n_valid):
                        out_raw[b, m, n0 + c] = 256 * cb[0, r, c] + cb[1, r, c] + rc + colc[b, n0 + c]
                    continue
                nsat += _u16_requant_row(cb[0, r, :n_valid], cb[1, r, :n_valid], rc + half_acc,
                                         colc[b, n0:n0 + n_valid], acc_shift, left, mult, half, right, out_zp,
                                         qmin, qmax, out[b, m, n0:n0 + n_valid])
    return nsat


@njit(cache=True, inline="always")
def _u16_requant_row(hi, lo, rc, colc, acc_shift, left, mult, half, right, out_zp, qmin, qmax, y):
    """y[c] = requantize(narrow_i64(acc, acc_shift), mult, shift, out_zp, qmin, qmax), per tensor, of
    acc = 256 hi[c] + lo[c] + colc[c] + rc - h, where rc already includes the rounding half h of
    narrow_i64 (2**(acc_shift-1), or 0 when acc_shift = 0).

    The integers of _narrow_requant written branch-free so that LLVM can vectorize the row (mult passed
    as int32, x held in int32: the srdhm product is vpmuldq on AVX2): narrow_i64
    as (acc + half) >> acc_shift and a clamp, requantize as sat32(x << left), srdhm, (v + half) >> right
    (left / right = max(+-shift, 0), half = 2**(right-1) or 0), + out_zp and the clamp to [qmin, qmax].
    Returns the number of saturating narrows."""
    nsat = 0
    for c in range(y.size):
        r = (256 * hi[c] + lo[c] + rc + colc[c]) >> acc_shift  # narrow_i64: rounding shift ...
        rs = min(max(r, -2147483648), 2147483647)  # ... and saturation
        nsat += r != rs
        x = np.int32(min(max(rs << left, -2147483648), 2147483647))  # requantize: sat32(acc << shift)
        v = min(max((np.int64(x) * np.int64(mult) + 1073741824) >> 31, -2147483648), 2147483647)  # srdhm
        v = (v + half) >> right  # rounding shift right
        y[c] = min(max(v + out_zp, qmin), qmax)
    return nsat


def _u16_pack_right(b3):
    """(pk, colsum) of b3 (Bt, K, N) uint16 for _gemm_u16: pk (Bt, 2, words) int16, the byte planes of
    b - 32768 packed as weights (N, K); colsum (Bt, N) int64 = sum_k (b - 32768)."""
    nb, k, n = b3.shape
    kp = k + k % 2
    n_pad = -(-n // LANES) * LANES
    pk = np.zeros((nb, 2, n_pad * kp), np.int16)  # (Bt, plane, words); zeros: the padding
    colsum = np.empty((nb, n), np.int64)
    _u16_right_packed(np.ascontiguousarray(b3), kp // 2, n_pad, pk, colsum)
    return pk, colsum


def _matmul_u16(a_q, a_zp, b_q, b_zp, requant, dtype, packed=None):
    """uint16 x uint16 matmul on the int16 SIMD kernel (plan "i16", spec §3.3): with a' = a - 32768,
    b' = b - 32768 = 256 hi + lo, ca = 32768 - a_zp, cb = 32768 - b_zp,

        sum_k (a - a_zp)(b - b_zp) = 256 sum_k a' hi + sum_k a' lo + cb sum_k a' + ca sum_k b' + K ca cb

    requant: None -> the exact int64 (..., M, N); else (acc_shift, mult, shift, out_zp, qmin, qmax)
    -> (out (..., M, N) of `dtype`, saturation count). Batch dims broadcast. packed: `_u16_pack_right`
    of the broadcast b (made once for several calls), or None.
    """
    a3, b3, batch = _batched(a_q, b_q)
    nb, m, k = a3.shape
    n = b3.shape[2]
    # every term above is <= K * 2**30 in magnitude, so every partial sum of the int64 combination
    # (and the result) is <= 4 K 2**30 = K * 2**32 < 2**62
    check_reduction("a_q", k, 2**16, 2**16, 0)
    ca, cb = OFFSET16 - a_zp, OFFSET16 - b_zp
    mp, kp = gemm_i16.padded_shape(m, k)
    a_op = np.empty((nb, mp, kp), np.int16)  # (Bt, Mp, Kp) a'
    a_op[:, m:] = 0
    a_op[:, :m, k:] = 0
    rowc = np.empty((nb, m), np.int64)
    _u16_left_operand(a3, a_op, rowc)
    pk, colsum = _u16_pack_right(b3) if packed is None else packed
    rowc *= cb
    colc = colsum * ca  # (Bt, N)
    const = k * ca * cb
    n_tiles = mp // MR
    tiles_per_block = max(1, min(n_tiles, I16_ROW_BLOCK_BYTES // (2 * kp * MR)))
    n_blocks = -(-n_tiles // tiles_per_block)
    n_chunks = min(-(-n // PANEL), max(1, -(-I16_ITEMS_PER_THREAD * get_num_threads() // (nb * n_blocks))))
    if requant is None:
        acc = np.empty((nb, m, n), np.int64)  # (Bt, M, N)
        _gemm_u16(a_op, m, pk, n, tiles_per_block, n_chunks, rowc, colc, const, 0, 0, 0, np.int32(0), 0, 0, 0, 0,
                  0, True, np.empty((0, 0, 0), np.uint16), acc)
        return acc.reshape(batch + (m, n))
    accs, mult, sh, out_zp, qmin, qmax = requant
    # compiled for two output types only (uint16, int32: Numba compile time), narrower ones copied
    buf_dtype = np.dtype(np.uint16) if 0 <= qmin and qmax <= 65535 else np.dtype(np.int32)
    out = np.empty((nb, m, n), buf_dtype)  # (Bt, M, N)
    half_acc = 1 << (accs - 1) if accs > 0 else 0  # rounding halves of narrow_i64 and of requantize
    left, right = max(sh, 0), max(-sh, 0)
    half = 1 << (right - 1) if right > 0 else 0
    nsat = _gemm_u16(a_op, m, pk, n, tiles_per_block, n_chunks, rowc, colc, const, accs, half_acc, left,
                     np.int32(mult), half, right, out_zp, qmin, qmax, False, out, np.empty((0, 0, 0), np.int64))
    out = out if out.dtype == dtype else out.astype(dtype)  # values in [qmin, qmax]: exact
    return out.reshape(batch + (m, n)), nsat
