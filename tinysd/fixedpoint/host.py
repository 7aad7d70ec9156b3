"""Host-side float <-> integer conversion at the network boundary (spec §5), in IEEE float64.

These run on the host, not the device: a network input (latents, timestep features, ...) is
quantized once and the integer tensor is what the integer network (and a golden file) sees.
"""
from __future__ import annotations

import numpy as np

from .checks import check_int, out_dtype
from .primitives import INT32_MAX, INT32_MIN


def _scale(scale):
    s = float(scale)
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"scale: must be finite and > 0, got {scale!r}")
    return s


def quantize(x, scale, zero_point, qmin, qmax):
    """q = clip(floor(x / scale + 0.5) + zero_point, qmin, qmax), in float64, half up.

    x: float array (converted exactly to float64); `x / scale` and `+ 0.5` are single IEEE
    float64 operations (correctly rounded), then floor. QNN/AIMET encoding: real = (q + offset) * scale
    with offset = -zero_point. Returns the smallest integer dtype holding [qmin, qmax].
    """
    s = _scale(scale)
    qmin = check_int("qmin", qmin, INT32_MIN, INT32_MAX)
    qmax = check_int("qmax", qmax, INT32_MIN, INT32_MAX)
    if qmin > qmax:
        raise ValueError(f"qmin: {qmin} > qmax {qmax}")
    zero_point = check_int("zero_point", zero_point, qmin, qmax)
    xf = np.asarray(x, dtype=np.float64)
    if xf.size and not np.all(np.isfinite(xf)):
        raise ValueError("x: contains NaN or infinity")
    t = np.floor(xf / s + 0.5)
    q = np.clip(t, qmin - zero_point, qmax - zero_point) + zero_point  # clip first: no int overflow
    return q.astype(out_dtype(qmin, qmax))


def dequantize(q, scale, zero_point):
    """real = (q - zero_point) * scale, as float64 ((q - zp) exact in int64, one rounding)."""
    s = _scale(scale)
    qa = np.asarray(q)
    if qa.dtype == np.bool_ or not np.issubdtype(qa.dtype, np.integer):
        raise ValueError(f"q: expected an integer array, got dtype {qa.dtype}")
    return (qa.astype(np.int64) - int(zero_point)).astype(np.float64) * s
