"""Argument checks shared by the integer kernels: each raises ValueError naming the argument."""
from __future__ import annotations

import numpy as np

from .primitives import INT32_MAX, INT32_MIN, SHIFT_MAX, SHIFT_MIN

#: dtype name -> (min, max) of the integer types a quantized tensor may have.
DTYPE_RANGES = {
    "uint8": (0, 255),
    "int8": (-128, 127),
    "uint16": (0, 65535),
    "int16": (-32768, 32767),
    "int32": (INT32_MIN, INT32_MAX),
}

# Activations (QNN/AIMET asymmetric) are uint8 (W8A8) or uint16 (W8A16).
ACTIVATION_DTYPES = ("uint8", "uint16")


def check_array(name, x, dtypes, ndim_min=0):
    """x must be an np.ndarray whose dtype name is in `dtypes` and with ndim >= ndim_min."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array, got {type(x).__name__}")
    if x.dtype.name not in dtypes:
        raise ValueError(f"{name}: dtype {x.dtype.name} not in {tuple(dtypes)}")
    if x.ndim < ndim_min:
        raise ValueError(f"{name}: expected at least {ndim_min} dims, got shape {x.shape}")
    return x


def check_int(name, v, lo, hi):
    """v must be a Python/NumPy integer (not bool) in [lo, hi]; returns it as int."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name}: expected an int, got {type(v).__name__}")
    if not lo <= int(v) <= hi:
        raise ValueError(f"{name}: {int(v)} outside [{lo}, {hi}]")
    return int(v)


def check_zero_point(name, zp, dtype):
    """An activation zero point must be representable in its tensor's dtype."""
    lo, hi = DTYPE_RANGES[np.dtype(dtype).name]
    return check_int(name, zp, lo, hi)


def check_out_range(out_zp, qmin, qmax):
    """qmin <= out_zp <= qmax, all within int32; returns the three as ints."""
    qmin = check_int("qmin", qmin, INT32_MIN, INT32_MAX)
    qmax = check_int("qmax", qmax, INT32_MIN, INT32_MAX)
    if qmin > qmax:
        raise ValueError(f"qmin: {qmin} > qmax {qmax}")
    out_zp = check_int("out_zp", out_zp, qmin, qmax)
    return out_zp, qmin, qmax


def out_dtype(qmin, qmax):
    """Smallest of uint8, int8, uint16, int16, int32 that holds [qmin, qmax]."""
    for name, (lo, hi) in DTYPE_RANGES.items():
        if lo <= qmin and qmax <= hi:
            return np.dtype(name)
    raise ValueError(f"qmin/qmax: [{qmin}, {qmax}] does not fit int32")


def per_channel(name, v, n, lo, hi):
    """An int or 1-D integer array of length n with values in [lo, hi], as a contiguous int64 (n,) array."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        check_int(name, v, lo, hi)
        return np.full(n, int(v), dtype=np.int64)
    if not isinstance(v, np.ndarray) or v.dtype == np.bool_ or not np.issubdtype(v.dtype, np.integer):
        raise ValueError(f"{name}: expected an int or an integer array")
    if v.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {v.shape}")
    a = v.astype(np.int64)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise ValueError(f"{name}: values outside [{lo}, {hi}]")
    return np.ascontiguousarray(a)


def requant_params(multiplier, shift, n):
    """Per-channel (multiplier, shift) as int64 (n,) arrays, checked against the requantize ranges."""
    m = per_channel("multiplier", multiplier, n, 0, INT32_MAX)
    s = per_channel("shift", shift, n, SHIFT_MIN, SHIFT_MAX)
    return m, s
