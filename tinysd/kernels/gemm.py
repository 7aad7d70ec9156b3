"""Exact integer GEMM at float-BLAS speed, and the linear / activation-matmul ops (spec §3, §4.2-4.3).

The integer result of every product is defined in docs/arithmetic.md as an exact sum
`acc = bias + sum_k (a - a_zp) * (b - b_zp)`, then `narrow_i64(acc, acc_shift)` and
`requantize`. This module computes that sum with float BLAS, exact by the lemma of spec §3.3:

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
int8 weights are used as they are ([-128, 127]). For offset representations the zero point
and the offset are restored by exact integer correction terms, e.g. for linear
`sum_k w (x - zp) = sum_k w x' + (128 - zp) * sum_k w` (the second term is folded into the bias).
Chunk results are summed in int64 in a Numba epilogue that also adds the corrections, narrows
and requantizes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

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

log = logging.getLogger(__name__)

F32_EXACT = 2**24  # every integer of magnitude <= 2**24 is a float32
F64_EXACT = 2**53
CENTRED_BOUND = {"int8": 128, "uint8": 255, "uint16": 65535}  # max |x - zp| (weights: zp = 0)
ACC_LIMIT = 2**62  # |acc| must stay below this (narrow_i64's input range)
OFFSET8 = 128  # uint8 x = x' + 128
OFFSET16 = 256 * 128 + 128  # uint16 x = 256 hi' + lo' + 32896
MODE_CODE = {"centred": 0, "offset8": 1, "split16": 2}

#: How int8 x uint16 products are computed by default: "split" (float32, two byte planes) or "f64".
A16_METHOD = "split"

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

    dtype: float32 or float64. mode: activation representation ("offset8", "split16",
    "centred"). a_bound, b_bound: max |operand| in the float GEMM. chunk: K-chunk length with
    chunk * a_bound * b_bound <= 2**24 (float32) or 2**53 (float64).
    """

    dtype: type
    mode: str
    a_bound: int
    b_bound: int
    chunk: int

    @property
    def nsplit(self) -> int:
        return 2 if self.mode == "split16" else 1


def _make_plan(dtype, mode, a_bound, b_bound):
    limit = F32_EXACT if dtype is np.float32 else F64_EXACT
    chunk = limit // (a_bound * b_bound)
    chunk = chunk if chunk < 128 else chunk - chunk % 128  # a multiple of 128: BLAS-friendly
    return GemmPlan(dtype, mode, a_bound, b_bound, chunk)


def plan_linear(x_dtype, method: str | None = None) -> GemmPlan:
    """Plan for int8 weights x activations of `x_dtype` (uint8: offset8; uint16: split16 or f64)."""
    name = np.dtype(x_dtype).name
    method = method or A16_METHOD
    if method not in ("split", "f64"):
        raise ValueError(f"method: expected 'split' or 'f64', got {method!r}")
    if name == "uint8":
        return _make_plan(np.float32, "offset8", 128, 128)  # chunk 1024
    if method == "split":
        return _make_plan(np.float32, "split16", 128, 128)  # chunk 1024
    return _make_plan(np.float64, "centred", 128, CENTRED_BOUND[name])


def plan_matmul(a_dtype, b_dtype) -> GemmPlan:
    """Plan for two activations: uint8 x uint8 offset8 in float32, anything with uint16 centred in float64."""
    an, bn = np.dtype(a_dtype).name, np.dtype(b_dtype).name
    if an == bn == "uint8":
        return _make_plan(np.float32, "offset8", 128, 128)  # chunk 1024
    return _make_plan(np.float64, "centred", CENTRED_BOUND[an], CENTRED_BOUND[bn])


def _offset(mode, zp):
    """c with x - zp = representation(x) + c: 0 (centred), 128 - zp, 32896 - zp."""
    return {"centred": 0, "offset8": OFFSET8 - zp, "split16": OFFSET16 - zp}[mode]


# ----------------------------------------------------------------------------------------------
# operand preparation (Numba, one pass)
# ----------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _represent(raw, zp, mode):
    """(first, second) float-GEMM values of one raw activation: see the module docstring."""
    if mode == 0:
        return raw - zp, 0
    if mode == 1:
        return raw - 128, 0
    return (raw >> 8) - 128, (raw & 255) - 128


@njit(cache=True, parallel=True)
def _operand_kernel(x, zp, mode, out):
    """x (R, K) -> out (nsplit*R, K) float in representation `mode` (split16: hi' rows then lo' rows)."""
    rows, k = x.shape
    for r in prange(rows):
        for j in range(k):
            v0, v1 = _represent(np.int64(x[r, j]), zp, mode)
            out[r, j] = v0
            if mode == 2:
                out[rows + r, j] = v1


def activation_operand(x2d, zp, plan):
    """Float operand (nsplit*R, K) of activations x2d (R, K) for `plan` (exact small integers)."""
    out = np.empty((plan.nsplit * x2d.shape[0], x2d.shape[1]), plan.dtype)
    _operand_kernel(np.ascontiguousarray(x2d), np.int64(zp), MODE_CODE[plan.mode], out)
    return out


@njit(cache=True, parallel=True)
def _im2col_kernel(x, zp, mode, kh, kw, sh, sw, top, left, ho, wo, out):
    """out[(n, y, x), (c, i, j)] = representation of xpad[n, c, y*sh+i, x*sw+j] (xpad: x padded with zp)."""
    nb, c, h, w = x.shape
    rows = nb * ho * wo
    for r in prange(rows):
        n = r // (ho * wo)
        p = r - n * ho * wo
        oy = p // wo
        ox = p - oy * wo
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


def im2col_operand(x_q, zp, kh, kw, stride, padding, ho, wo, plan):
    """Float operand (nsplit*N*Ho*Wo, C*KH*KW) of an NCHW input padded with zp, for `plan`."""
    nb, c = x_q.shape[:2]
    out = np.empty((plan.nsplit * nb * ho * wo, c * kh * kw), plan.dtype)
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
@dataclass(frozen=True)
class PreparedWeight:
    """An int8 weight (OUT, ...) with its float32 transposed copy (K, OUT) and row sums.

    The float32 copy holds the same integers exactly (|w| <= 128); `wsum[o] = sum_k w[o, k]`
    (int64) feeds the zero-point correction. Make it once with `prepare_weight` and pass it
    wherever a kernel takes `w_q`.
    """

    q: np.ndarray  # int8 (OUT, ...), as given
    t32: np.ndarray  # float32 (K, OUT), K = prod(q.shape[1:])
    wsum: np.ndarray  # int64 (OUT,)


def prepare_weight(w_q) -> PreparedWeight:
    """Float32 transposed copy and row sums of an int8 weight (OUT, ...) for repeated use."""
    if isinstance(w_q, PreparedWeight):
        return w_q
    check_array("w_q", w_q, ("int8",), ndim_min=2)
    w2 = w_q.reshape(w_q.shape[0], -1)  # (OUT, K)
    t32 = np.ascontiguousarray(w2.T, dtype=np.float32)  # (K, OUT)
    return PreparedWeight(w_q, t32, w2.sum(axis=1, dtype=np.int64))


def _weight_arg(w_q, ndim):
    wq = w_q.q if isinstance(w_q, PreparedWeight) else w_q
    check_array("w_q", wq, ("int8",))
    if wq.ndim != ndim:
        raise ValueError(f"w_q: expected {ndim} dims, got shape {wq.shape}")
    return wq, w_q


def _weight_operand(w_q, plan):
    """((K, OUT) float operand in the plan's dtype, wsum (OUT,) int64)."""
    pw = prepare_weight(w_q)
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
    parts = chunked_products(activation_operand(x2d, x_zp, plan), wt, plan.chunk)  # (C, nsplit*M, OUT)
    return plan, parts, bias_eff, x2d.shape[0], n_out


def linear_accumulator(x_q, x_zp, w_q, bias_q=None, method=None):
    """Exact int64 accumulator of `linear`: acc[..., o] = bias[o] + sum_k w[o, k] * (x[..., k] - x_zp).

    x_q uint8/uint16 (..., K); w_q int8 (OUT, K) or PreparedWeight; bias_q int32 (OUT,) or None.
    Returns int64 (..., OUT).
    """
    plan, parts, bias_eff, m, n_out = _linear_common(x_q, x_zp, w_q, bias_q, method)
    out = np.empty((m, n_out), np.int64)  # (M, OUT)
    _sum_parts(parts, plan.nsplit, bias_eff, out)
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
    int16/int32 holding [qmin, qmax]; shape (..., OUT). method: "split" / "f64" for uint16
    inputs (same bits; speed only).
    """
    wq, _ = _weight_arg(w_q, 2)
    n_out = wq.shape[0]
    mult, sh = requant_params(multiplier, shift, n_out)
    accs = per_channel("acc_shift", acc_shift, n_out, 0, ACC_SHIFT_MAX)
    out_zp, qmin, qmax = check_out_range(out_zp, qmin, qmax)
    plan, parts, bias_eff, m, n_out = _linear_common(x_q, x_zp, w_q, bias_q, method)
    out = np.empty((m, n_out), out_dtype(qmin, qmax))  # (M, OUT)
    nsat = _epilogue_linear(parts, plan.nsplit, bias_eff, accs, mult, sh, out_zp, qmin, qmax, 0, out.reshape(-1))
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


def _matmul_common(a_q, a_zp, b_q, b_zp):
    """parts (C, Bt*M, N), per-row and per-column corrections, constant, batch shape."""
    batch = np.broadcast_shapes(a_q.shape[:-2], b_q.shape[:-2])
    m, k = a_q.shape[-2:]
    n = b_q.shape[-1]
    a3 = np.broadcast_to(a_q, batch + (m, k)).reshape(-1, m, k)  # (Bt, M, K)
    b3 = np.broadcast_to(b_q, batch + (k, n)).reshape(-1, k, n)  # (Bt, K, N)
    nb = a3.shape[0]
    plan = plan_matmul(a_q.dtype, b_q.dtype)
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


def matmul_accumulator(a_q, a_zp, b_q, b_zp):
    """Exact int64 (..., M, N) = sum_k (a[..., m, k] - a_zp) * (b[..., k, n] - b_zp), batch dims broadcast."""
    a_zp, b_zp = _check_matmul_args(a_q, a_zp, b_q, b_zp)
    parts, rowc, colc, const, batch, m, n = _matmul_common(a_q, a_zp, b_q, b_zp)
    acc = parts.astype(np.int64).sum(axis=0).reshape(-1, m, n)  # (Bt, M, N)
    acc += rowc.reshape(-1, m, 1) + colc[:, None, :] + const
    return acc.reshape(batch + (m, n))


def matmul(a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift=0):
    """Batched product of two activations (spec §4.3): attention scores and probs @ V.

        acc[..., m, n] = sum_k (a_q[..., m, k] - a_zp) * (b_q[..., k, n] - b_zp)   (exact)
        out = requantize(narrow_i64(acc, acc_shift), multiplier, shift, out_zp, qmin, qmax)

    a_q (..., M, K), b_q (..., K, N): uint8/uint16, leading dims broadcast. multiplier, shift,
    acc_shift are per-tensor ints. Output (..., M, N), dtype from [qmin, qmax].
    """
    a_zp, b_zp = _check_matmul_args(a_q, a_zp, b_q, b_zp)
    mult, sh = (int(v[0]) for v in requant_params(multiplier, shift, 1))
    accs = int(per_channel("acc_shift", acc_shift, 1, 0, ACC_SHIFT_MAX)[0])
    out_zp, qmin, qmax = check_out_range(out_zp, qmin, qmax)
    parts, rowc, colc, const, batch, m, n = _matmul_common(a_q, a_zp, b_q, b_zp)
    out = np.empty((parts.shape[1], n), out_dtype(qmin, qmax))  # (Bt*M, N)
    nsat = _epilogue_matmul(parts, m, rowc, colc, const, accs, mult, sh, out_zp, qmin, qmax, out)
    _report_saturation(nsat, "matmul")
    return out.reshape(batch + (m, n))
