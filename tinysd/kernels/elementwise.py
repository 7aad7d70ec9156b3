"""Elementwise and data-movement integer ops (spec §4.4-§4.9).

requantize_tensor (re-encode), add (TFLite style, inputs at different scales), mul, concat
(each input re-encoded to the output encoding), upsample_nearest2x and embedding (gather; no
arithmetic). The arithmetic kernels are Numba loops over flattened, broadcast operands; their
references are in `reference.py`.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..fixedpoint.checks import (
    ACTIVATION_DTYPES,
    DTYPE_RANGES,
    check_array,
    check_int,
    check_out_range,
    check_zero_point,
    out_dtype,
)
from ..fixedpoint.primitives import (
    ACC_SHIFT_MAX,
    INT32_MAX,
    INT32_MIN,
    SHIFT_MAX,
    SHIFT_MIN,
    narrow_i64_scalar,
    requantize_i32,
)
from .gemm import _report_saturation

#: Recommended `left_shift` of `add` per input dtype (largest with B * 2**left_shift < 2**30,
#: B = 255 or 65535, except uint8 which keeps TFLite's 20).
ADD_LEFT_SHIFT = {"uint8": 20, "uint16": 14}
_CENTRED = {"uint8": 255, "int8": 255, "uint16": 65535, "int16": 65535}
REQUANT_IN_DTYPES = ("uint8", "int8", "uint16", "int16")


def _mult(name, v):
    return check_int(name, v, 0, INT32_MAX)


def _shift(name, v, hi=SHIFT_MAX):
    return check_int(name, v, SHIFT_MIN, hi)


# ----------------------------------------------------------------------------------------------
# Numba kernels (flat, contiguous operands)
# ----------------------------------------------------------------------------------------------
@njit(cache=True, parallel=True)
def _requantize_flat(x, x_zp, multiplier, shift, out_zp, qmin, qmax, out):
    for i in prange(x.size):
        out[i] = requantize_i32(np.int64(x[i]) - x_zp, multiplier, shift, out_zp, qmin, qmax)


@njit(cache=True, parallel=True)
def _add_flat(a, a_zp, a_mult, a_shift, b, b_zp, b_mult, b_shift, mult, shift, out_zp, qmin, qmax, left_shift, out):
    for i in prange(out.size):
        a_s = requantize_i32((np.int64(a[i]) - a_zp) << left_shift, a_mult, a_shift, 0, INT32_MIN, INT32_MAX)
        b_s = requantize_i32((np.int64(b[i]) - b_zp) << left_shift, b_mult, b_shift, 0, INT32_MIN, INT32_MAX)
        out[i] = requantize_i32(a_s + b_s, mult, shift, out_zp, qmin, qmax)  # |a_s + b_s| < 2**31


@njit(cache=True, parallel=True)
def _mul_flat(a, a_zp, b, b_zp, mult, shift, out_zp, qmin, qmax, acc_shift, out):
    nsat = 0
    for i in prange(out.size):
        prod = (np.int64(a[i]) - a_zp) * (np.int64(b[i]) - b_zp)  # |prod| <= 65535**2 < 2**32
        r = narrow_i64_scalar(prod, acc_shift)
        if r == 2147483647 or r == -2147483648:
            nsat += 1
        out[i] = requantize_i32(r, mult, shift, out_zp, qmin, qmax)
    return nsat


def _broadcast_flat(a, b):
    shape = np.broadcast_shapes(a.shape, b.shape)
    a_f = np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1)
    b_f = np.ascontiguousarray(np.broadcast_to(b, shape)).reshape(-1)
    return shape, a_f, b_f


def _check_broadcast(a, b):
    try:
        return np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"b_q: shape {b.shape} does not broadcast with a_q {a.shape}") from None


# ----------------------------------------------------------------------------------------------
# ops
# ----------------------------------------------------------------------------------------------
def requantize_tensor(x_q, x_zp, multiplier, shift, out_zp, qmin, qmax):
    """Re-encode a tensor (spec §4.4): out = requantize(x_q - x_zp, multiplier, shift, out_zp, qmin, qmax).

    x_q: uint8/int8/uint16/int16 of any shape; per-tensor multiplier/shift for s_x / s_out.
    Also the `scale` op (multiplier for factor * s_x / s_out, factor > 0). Output dtype from
    [qmin, qmax].
    """
    check_array("x_q", x_q, REQUANT_IN_DTYPES)
    x_zp = check_zero_point("x_zp", x_zp, x_q.dtype)
    multiplier = _mult("multiplier", multiplier)
    shift = _shift("shift", shift)
    out_zp, qmin, qmax = check_out_range(out_zp, qmin, qmax)
    out = np.empty(x_q.shape, out_dtype(qmin, qmax))
    _requantize_flat(np.ascontiguousarray(x_q).reshape(-1), x_zp, multiplier, shift, out_zp, qmin, qmax,
                     out.reshape(-1))
    return out


def add(a_q, a_zp, a_multiplier, a_shift, b_q, b_zp, b_multiplier, b_shift,
        multiplier, shift, out_zp, qmin, qmax, left_shift=None):
    """a + b of differently scaled inputs, TFLite style (spec §4.5), with NumPy broadcasting.

        a_s = requantize((a_q - a_zp) << left_shift, a_multiplier, a_shift, 0, INT32_MIN, INT32_MAX)
        b_s = requantize((b_q - b_zp) << left_shift, b_multiplier, b_shift, 0, INT32_MIN, INT32_MAX)
        out = requantize(a_s + b_s, multiplier, shift, out_zp, qmin, qmax)

    with real multipliers s_a / (2 max(s_a, s_b)), s_b / (2 max(s_a, s_b)) (so a_shift, b_shift <= 0)
    and 2 max(s_a, s_b) / (2**left_shift * s_out). a_q, b_q: uint8/uint16. left_shift defaults
    to ADD_LEFT_SHIFT[dtype] (20 for uint8, 14 for uint16); it must satisfy
    B * 2**left_shift < 2**30 for both inputs (B = 255 or 65535), so |a_s + b_s| < 2**31.
    """
    check_array("a_q", a_q, ACTIVATION_DTYPES)
    check_array("b_q", b_q, ACTIVATION_DTYPES)
    _check_broadcast(a_q, b_q)
    a_zp = check_zero_point("a_zp", a_zp, a_q.dtype)
    b_zp = check_zero_point("b_zp", b_zp, b_q.dtype)
    a_multiplier = _mult("a_multiplier", a_multiplier)
    b_multiplier = _mult("b_multiplier", b_multiplier)
    a_shift = _shift("a_shift", a_shift, 0)
    b_shift = _shift("b_shift", b_shift, 0)
    multiplier = _mult("multiplier", multiplier)
    shift = _shift("shift", shift)
    out_zp, qmin, qmax = check_out_range(out_zp, qmin, qmax)
    bmax = max(_CENTRED[a_q.dtype.name], _CENTRED[b_q.dtype.name])
    if left_shift is None:
        left_shift = min(ADD_LEFT_SHIFT[a_q.dtype.name], ADD_LEFT_SHIFT[b_q.dtype.name])
    left_shift = check_int("left_shift", left_shift, 0, 30)
    if bmax << left_shift >= 2**30:
        raise ValueError(f"left_shift: {left_shift} too large for {bmax} (need B * 2**left_shift < 2**30)")
    shape, a_f, b_f = _broadcast_flat(a_q, b_q)
    out = np.empty(shape, out_dtype(qmin, qmax))
    _add_flat(a_f, a_zp, a_multiplier, a_shift, b_f, b_zp, b_multiplier, b_shift,
              multiplier, shift, out_zp, qmin, qmax, left_shift, out.reshape(-1))
    return out


def mul(a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift=0):
    """Elementwise product (spec §4.6), with NumPy broadcasting.

        prod = (a_q - a_zp) * (b_q - b_zp)                       (int64; |prod| <= 65535**2 < 2**32)
        out = requantize(narrow_i64(prod, acc_shift), multiplier, shift, out_zp, qmin, qmax)

    Real multiplier s_a s_b 2**acc_shift / s_out. acc_shift 0 suffices for uint8 x uint8
    (|prod| <= 65025), 1 for any pair involving uint16 (65535**2 / 2 < 2**31 - 1).
    """
    check_array("a_q", a_q, ACTIVATION_DTYPES)
    check_array("b_q", b_q, ACTIVATION_DTYPES)
    _check_broadcast(a_q, b_q)
    a_zp = check_zero_point("a_zp", a_zp, a_q.dtype)
    b_zp = check_zero_point("b_zp", b_zp, b_q.dtype)
    multiplier = _mult("multiplier", multiplier)
    shift = _shift("shift", shift)
    acc_shift = check_int("acc_shift", acc_shift, 0, ACC_SHIFT_MAX)
    out_zp, qmin, qmax = check_out_range(out_zp, qmin, qmax)
    shape, a_f, b_f = _broadcast_flat(a_q, b_q)
    out = np.empty(shape, out_dtype(qmin, qmax))
    nsat = _mul_flat(a_f, a_zp, b_f, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift, out.reshape(-1))
    _report_saturation(nsat, "mul")
    return out


def concat(xs, x_zps, multipliers, shifts, axis, out_zp, qmin, qmax):
    """Join tensors on `axis` after re-encoding each to the output encoding (spec §4.7).

    Input i: requantize_tensor(xs[i], x_zps[i], multipliers[i], shifts[i], out_zp, qmin, qmax),
    real multiplier s_i / s_out. An input already in the output encoding uses
    (multiplier, shift) = (2**30, 1), which requantize maps exactly to the identity.
    """
    if not isinstance(xs, (list, tuple)) or not xs:
        raise ValueError("xs: expected a non-empty list of arrays")
    n = len(xs)
    for name, v in (("x_zps", x_zps), ("multipliers", multipliers), ("shifts", shifts)):
        if len(v) != n:
            raise ValueError(f"{name}: expected {n} entries, got {len(v)}")
    ref = xs[0]
    check_array("xs[0]", ref, ACTIVATION_DTYPES)
    axis = check_int("axis", axis, -ref.ndim, ref.ndim - 1) % ref.ndim
    for i, x in enumerate(xs):
        check_array(f"xs[{i}]", x, ACTIVATION_DTYPES)
        if x.ndim != ref.ndim or x.shape[:axis] + x.shape[axis + 1:] != ref.shape[:axis] + ref.shape[axis + 1:]:
            raise ValueError(f"xs[{i}]: shape {x.shape} does not match xs[0] {ref.shape} off axis {axis}")
    parts = [requantize_tensor(x, zp, m, s, out_zp, qmin, qmax) for x, zp, m, s in zip(xs, x_zps, multipliers, shifts)]
    return np.concatenate(parts, axis=axis)


def upsample_nearest2x(x_q):
    """(N, C, H, W) -> (N, C, 2H, 2W), out[n, c, y, x] = x_q[n, c, y // 2, x // 2]; encoding unchanged."""
    check_array("x_q", x_q, tuple(DTYPE_RANGES))
    if x_q.ndim != 4:
        raise ValueError(f"x_q: expected NCHW (4 dims), got shape {x_q.shape}")
    n, c, h, w = x_q.shape
    rep = np.broadcast_to(x_q[:, :, :, None, :, None], (n, c, h, 2, w, 2))  # (N, C, H, 2, W, 2)
    return rep.reshape(n, c, 2 * h, 2 * w)  # copies


def embedding(ids, table_q):
    """Gather rows: out[..., :] = table_q[ids[...], :] (spec §4.9); encoding of the table.

    ids: integer array with values in [0, V); table_q: (V, D) uint8/uint16 (or any int dtype).
    """
    if not isinstance(ids, np.ndarray) or ids.dtype == np.bool_ or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError("ids: expected an integer array")
    check_array("table_q", table_q, tuple(DTYPE_RANGES))
    if table_q.ndim != 2:
        raise ValueError(f"table_q: expected (V, D), got shape {table_q.shape}")
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= table_q.shape[0]):
        raise ValueError(f"ids: values outside [0, {table_q.shape[0]})")
    return np.take(table_q, ids, axis=0)  # (..., D)
