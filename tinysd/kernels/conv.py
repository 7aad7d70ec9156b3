"""Quantized NCHW conv2d as im2col + the exact GEMM of `gemm.py` (spec §4.1).

The im2col Numba kernels read the raw input, pad with x_zp and write the plan's representation
(float, columns (c, i, j); or, for the default int16 plan, an NHWC copy then contiguous rows with
columns (i, j, c)); the epilogue writes the output directly in NCHW.

Work buffers are bounded: the im2col operand, the padded NHWC copy and the float plans' chunk
products are made for a band of output pixels at a time (whole images, or bands of output rows of
one image) holding at most `tinysd.memory.CONV_WORK_BYTES` (or one output row, if that is more).
Every output pixel's sum is independent of the others, so the integers do not depend on the bands.
"""
from __future__ import annotations

import numpy as np

from ..fixedpoint.checks import (
    ACTIVATION_DTYPES,
    check_array,
    check_int,
    check_out_range,
    check_zero_point,
    out_dtype,
    per_channel,
    requant_params,
)
from ..fixedpoint.primitives import ACC_SHIFT_MAX
from ..memory import CONV_WORK_BYTES
from .gemm import (
    CENTRED_BOUND,
    _bias_arg,
    _offset,
    _report_saturation,
    _weight_arg,
    _weight_operand,
    check_reduction,
    im2col_operand,
    plan_linear,
    weight_product,
)


def normalize_padding(padding):
    """int p -> (p, p, p, p); a 4-tuple (top, bottom, left, right) of ints >= 0 is kept."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        p = check_int("padding", padding, 0, 2**16)
        return (p, p, p, p)
    if not isinstance(padding, (tuple, list)) or len(padding) != 4:
        raise ValueError(f"padding: expected an int or (top, bottom, left, right), got {padding!r}")
    return tuple(check_int("padding", p, 0, 2**16) for p in padding)


def normalize_stride(stride):
    """int s -> (s, s); a 2-tuple (sh, sw) of ints >= 1 is kept."""
    if isinstance(stride, (int, np.integer)) and not isinstance(stride, bool):
        s = check_int("stride", stride, 1, 2**16)
        return (s, s)
    if not isinstance(stride, (tuple, list)) or len(stride) != 2:
        raise ValueError(f"stride: expected an int or (sh, sw), got {stride!r}")
    return tuple(check_int("stride", s, 1, 2**16) for s in stride)


def conv_output_size(h, w, kh, kw, stride, padding):
    """(Ho, Wo) = (floor((H + top + bottom - KH) / sh) + 1, floor((W + left + right - KW) / sw) + 1)."""
    top, bottom, left, right = padding
    sh, sw = stride
    return (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1


def conv_work_bytes(plan, n_out, c, kh, kw, stride, padded_width, wo) -> int:
    """Upper bound of the work-buffer bytes of conv2d per output row of one image, for `plan`:
    SIMD plans: the im2col rows (Wo x Kp, int16 or uint8) and sh + KH rows of the padded NHWC copy
    (a band of r rows reads (r - 1) * sh + KH <= r * (sh + KH) padded rows); float plans: the
    im2col rows (nsplit x Wo x K) and the chunk products (chunks x nsplit x Wo x OUT)."""
    k = c * kh * kw
    itemsize = np.dtype(plan.dtype).itemsize
    if plan.simd:
        return itemsize * (wo * (k + 3) + (stride[0] + kh) * padded_width * c)
    nchunks = max(1, -(-k // plan.chunk))
    return itemsize * plan.nsplit * wo * (k + nchunks * n_out)


def conv_bands(nb, ho, row_bytes, budget=None):
    """Bands (n0, n1, y0, y1) of output pixels covering images [0, nb) x rows [0, Ho), each holding
    at most max(budget, row_bytes) bytes of work buffers (`row_bytes` per output row of one
    image; budget default CONV_WORK_BYTES): all at once if they fit, else groups of whole images,
    else bands of output rows of one image."""
    budget = CONV_WORK_BYTES if budget is None else budget
    rows = max(1, budget // max(1, row_bytes))  # output rows (of one image) per band
    if nb * ho <= rows:
        return [(0, nb, 0, ho)]
    if ho <= rows:
        step = rows // ho
        return [(n0, min(nb, n0 + step), 0, ho) for n0 in range(0, nb, step)]
    return [(n, n + 1, y0, min(ho, y0 + rows)) for n in range(nb) for y0 in range(0, ho, rows)]


def _check_conv_args(x_q, x_zp, w_q, stride, padding):
    wq, w_arg = _weight_arg(w_q, 4)
    check_array("x_q", x_q, ACTIVATION_DTYPES)
    if x_q.ndim != 4:
        raise ValueError(f"x_q: expected NCHW (4 dims), got shape {x_q.shape}")
    if x_q.shape[1] != wq.shape[1]:
        raise ValueError(f"x_q: {x_q.shape[1]} channels != w_q in-channels {wq.shape[1]}")
    x_zp = check_zero_point("x_zp", x_zp, x_q.dtype)
    stride = normalize_stride(stride)
    padding = normalize_padding(padding)
    ho, wo = conv_output_size(x_q.shape[2], x_q.shape[3], wq.shape[2], wq.shape[3], stride, padding)
    if ho < 1 or wo < 1:
        raise ValueError(f"x_q: spatial size {x_q.shape[2:]} too small for kernel {wq.shape[2:]} with padding {padding}")
    return wq, w_arg, x_zp, stride, padding, ho, wo


def conv2d(
    x_q, x_zp, w_q, bias_q, multiplier, shift, out_zp, qmin, qmax, stride=1, padding=0, acc_shift=0, method=None,
    work_bytes=None,
):
    """Quantized NCHW convolution (spec §4.1).

        xpad = x_q padded with x_zp (so padded positions contribute exactly 0)
        acc[n, o, y, x] = bias_q[o] + sum_{c, i, j} w_q[o, c, i, j] * (xpad[n, c, y*sh + i, x*sw + j] - x_zp)
        out = requantize(narrow_i64(acc, acc_shift[o]), multiplier[o], shift[o], out_zp, qmin, qmax)

    x_q: uint8/uint16 (N, C, H, W). w_q: int8 (OUT, C, KH, KW) or PreparedWeight. bias_q: int32
    (OUT,) or None. stride: int or (sh, sw). padding: int or (top, bottom, left, right).
    multiplier/shift/acc_shift: ints or (OUT,) arrays. Returns (N, OUT, Ho, Wo), dtype from
    [qmin, qmax]. work_bytes: bound of the work buffers (default CONV_WORK_BYTES; see the module
    docstring); the integers do not depend on it.
    """
    wq, w_arg, x_zp, stride, padding, ho, wo = _check_conv_args(x_q, x_zp, w_q, stride, padding)
    n_out, c, kh, kw = wq.shape
    bias = _bias_arg(bias_q, n_out)
    mult, sh = requant_params(multiplier, shift, n_out)
    accs = per_channel("acc_shift", acc_shift, n_out, 0, ACC_SHIFT_MAX)
    out_zp, qmin, qmax = check_out_range(out_zp, qmin, qmax)
    k = c * kh * kw
    check_reduction("x_q", k, 128, CENTRED_BOUND[x_q.dtype.name])
    plan = plan_linear(x_q.dtype, method)
    wt, wsum = _weight_operand(w_arg, plan)
    bias_eff = bias + _offset(plan.mode, x_zp) * wsum  # exact zero-point / offset correction
    nb = x_q.shape[0]
    x_q = np.ascontiguousarray(x_q)
    out = np.empty((nb, n_out, ho * wo), out_dtype(qmin, qmax))  # NCHW, pixels flattened
    flat = out.reshape(-1)
    top, bottom, left, right = padding
    row_bytes = conv_work_bytes(plan, n_out, c, kh, kw, stride, x_q.shape[3] + left + right, wo)
    nsat = 0
    for n0, n1, y0, y1 in conv_bands(nb, ho, row_bytes, work_bytes):
        # a band: images [n0, n1), output rows [y0, y1) (all of them unless n1 == n0 + 1); its im2col rows
        # are (n, y, x) of the band, and out[n, o, y*Wo + x] is flat[start + m + o*Ho*Wo] for band row m
        band_pad = (top - y0 * stride[0], bottom, left, right)  # the band's first padded row is y0 * sh
        cols = im2col_operand(x_q[n0:n1], x_zp, kh, kw, stride, band_pad, y1 - y0, wo, plan)
        start = n0 * n_out * ho * wo + y0 * wo
        nsat += weight_product(plan, cols, (n1 - n0) * (y1 - y0) * wo, wt, n_out, bias_eff, accs, mult, sh, out_zp,
                               qmin, qmax, ho * wo, flat[start:])
        del cols  # before the next band's is made
    _report_saturation(nsat, "conv2d")
    return out.reshape(nb, n_out, ho, wo)
