"""Quantized NCHW conv2d as im2col + the exact GEMM of `gemm.py` (spec §4.1).

The im2col Numba kernels read the raw input, pad with x_zp and write the plan's representation
(float, columns (c, i, j); or, for the default int16 plan, an NHWC copy then contiguous rows with
columns (i, j, c)); the epilogue writes the output directly in NCHW.
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
    x_q, x_zp, w_q, bias_q, multiplier, shift, out_zp, qmin, qmax, stride=1, padding=0, acc_shift=0, method=None
):
    """Quantized NCHW convolution (spec §4.1).

        xpad = x_q padded with x_zp (so padded positions contribute exactly 0)
        acc[n, o, y, x] = bias_q[o] + sum_{c, i, j} w_q[o, c, i, j] * (xpad[n, c, y*sh + i, x*sw + j] - x_zp)
        out = requantize(narrow_i64(acc, acc_shift[o]), multiplier[o], shift[o], out_zp, qmin, qmax)

    x_q: uint8/uint16 (N, C, H, W). w_q: int8 (OUT, C, KH, KW) or PreparedWeight. bias_q: int32
    (OUT,) or None. stride: int or (sh, sw). padding: int or (top, bottom, left, right).
    multiplier/shift/acc_shift: ints or (OUT,) arrays. Returns (N, OUT, Ho, Wo), dtype from
    [qmin, qmax].
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
    cols = im2col_operand(x_q, x_zp, kh, kw, stride, padding, ho, wo, plan)  # rows (n, y, x); K: see im2col_operand
    out = np.empty((nb, n_out, ho * wo), out_dtype(qmin, qmax))  # NCHW, pixels flattened
    nsat = weight_product(plan, cols, nb * ho * wo, wt, n_out, bias_eff, accs, mult, sh, out_zp, qmin, qmax, ho * wo,
                          out.reshape(-1))
    _report_saturation(nsat, "conv2d")
    return out.reshape(nb, n_out, ho, wo)
