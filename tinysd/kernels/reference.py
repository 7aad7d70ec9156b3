"""Plain int64 NumPy references of the linear-type and elementwise ops: the executable spec.

Each function follows docs/arithmetic.md §4 literally: exact int64 accumulation by direct
summation (NumPy integer matmul / einsum, no floats), then the primitives `narrow_i64` and
`requantize` of `tinysd.fixedpoint` (themselves tested against Python ints). No argument
checks beyond what the arithmetic needs; the fast kernels are tested bit-equal to these.
"""
from __future__ import annotations

import numpy as np

from ..fixedpoint import INT32_MAX, INT32_MIN, narrow_i64, requantize
from ..fixedpoint.checks import out_dtype


def _i64(x):
    return np.asarray(x).astype(np.int64)


def _finish(acc, acc_shift, multiplier, shift, out_zp, qmin, qmax):
    y = requantize(narrow_i64(acc, acc_shift), multiplier, shift, out_zp, qmin, qmax)
    return np.asarray(y).astype(out_dtype(qmin, qmax))


def linear_ref(x_q, x_zp, w_q, bias_q, multiplier, shift, out_zp, qmin, qmax, acc_shift=0):
    """acc[..., o] = bias[o] + sum_k w[o, k] (x[..., k] - x_zp); requantize(narrow_i64(acc, acc_shift))."""
    acc = (_i64(x_q) - x_zp) @ _i64(w_q).T  # (..., OUT), int64 matmul: exact
    if bias_q is not None:
        acc = acc + _i64(bias_q)
    return _finish(acc, acc_shift, multiplier, shift, out_zp, qmin, qmax)


def conv2d_ref(x_q, x_zp, w_q, bias_q, multiplier, shift, out_zp, qmin, qmax, stride=1, padding=0, acc_shift=0):
    """Direct convolution: acc[n,o,y,x] = bias[o] + sum_{c,i,j} w[o,c,i,j] (xpad[n,c,y*sh+i,x*sw+j] - x_zp)."""
    sh, sw = (stride, stride) if np.ndim(stride) == 0 else stride
    top, bottom, left, right = (padding,) * 4 if np.ndim(padding) == 0 else padding
    xp = np.pad(_i64(x_q) - x_zp, ((0, 0), (0, 0), (top, bottom), (left, right)))  # pad with x_zp - x_zp = 0
    w = _i64(w_q)
    n_out, _, kh, kw = w.shape
    ho = (xp.shape[2] - kh) // sh + 1
    wo = (xp.shape[3] - kw) // sw + 1
    acc = np.zeros((x_q.shape[0], n_out, ho, wo), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw]  # (N, C, Ho, Wo)
            acc += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    if bias_q is not None:
        acc += _i64(bias_q)[None, :, None, None]
    col = (slice(None), None, None)

    def pc(v):  # per-channel parameter broadcast over (N, OUT, Ho, Wo)
        return _i64(v)[col] if np.ndim(v) else v

    return _finish(acc, pc(acc_shift), pc(multiplier), pc(shift), out_zp, qmin, qmax)


def matmul_ref(a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift=0):
    """acc = (a - a_zp) @ (b - b_zp) in int64 (batch dims broadcast); requantize(narrow_i64(acc, acc_shift))."""
    acc = (_i64(a_q) - a_zp) @ (_i64(b_q) - b_zp)  # (..., M, N)
    return _finish(acc, acc_shift, multiplier, shift, out_zp, qmin, qmax)


def requantize_tensor_ref(x_q, x_zp, multiplier, shift, out_zp, qmin, qmax):
    """Re-encode: requantize(x - x_zp, multiplier, shift, out_zp, qmin, qmax)."""
    y = requantize(_i64(x_q) - x_zp, multiplier, shift, out_zp, qmin, qmax)
    return np.asarray(y).astype(out_dtype(qmin, qmax))


def add_ref(a_q, a_zp, a_multiplier, a_shift, b_q, b_zp, b_multiplier, b_shift,
            multiplier, shift, out_zp, qmin, qmax, left_shift):
    """TFLite-style add: scale both inputs to a common 2**-left_shift finer scale, add, requantize."""
    a_s = requantize((_i64(a_q) - a_zp) << left_shift, a_multiplier, a_shift, 0, INT32_MIN, INT32_MAX)
    b_s = requantize((_i64(b_q) - b_zp) << left_shift, b_multiplier, b_shift, 0, INT32_MIN, INT32_MAX)
    total = np.asarray(a_s).astype(np.int64) + np.asarray(b_s).astype(np.int64)  # broadcast
    y = requantize(total, multiplier, shift, out_zp, qmin, qmax)
    return np.asarray(y).astype(out_dtype(qmin, qmax))


def mul_ref(a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift=0):
    """prod = (a - a_zp) (b - b_zp) in int64 (broadcast); requantize(narrow_i64(prod, acc_shift))."""
    prod = (_i64(a_q) - a_zp) * (_i64(b_q) - b_zp)
    return _finish(prod, acc_shift, multiplier, shift, out_zp, qmin, qmax)


def concat_ref(xs, x_zps, multipliers, shifts, axis, out_zp, qmin, qmax):
    """Each input re-encoded to the output encoding (requantize_tensor_ref), then joined on `axis`."""
    parts = [
        requantize_tensor_ref(x, zp, m, s, out_zp, qmin, qmax) for x, zp, m, s in zip(xs, x_zps, multipliers, shifts)
    ]
    return np.concatenate(parts, axis=axis)


def upsample_nearest2x_ref(x_q):
    """out[n, c, y, x] = x_q[n, c, y // 2, x // 2] for y < 2H, x < 2W."""
    n, c, h, w = x_q.shape
    yy = np.arange(2 * h) // 2
    xx = np.arange(2 * w) // 2
    return x_q[:, :, yy[:, None], xx[None, :]]


def embedding_ref(ids, table_q):
    """out[..., :] = table_q[ids[...], :]."""
    out = np.empty(np.shape(ids) + table_q.shape[1:], table_q.dtype)
    for idx in np.ndindex(*np.shape(ids)):
        out[idx] = table_q[int(np.asarray(ids)[idx])]
    return out
