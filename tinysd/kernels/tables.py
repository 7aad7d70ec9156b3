"""Table nonlinearities (SiLU, exact-erf GELU, quick_gelu; sigmoid and erf alone) on uint8 / uint16 activations.

Spec: docs/arithmetic.md, section "Table nonlinearities".

A table maps every input code to an output code, so applying it is a pure lookup
and the device reproduces the host bit for bit as long as both use the same
table bytes. Tables are therefore built once, at quantization time, in float64
(`make_table`) and stored with the model; `apply_table` only indexes.

* 8-bit input: 256 entries (uint8 out: 256 B; uint16 out: 512 B). HVX: `vlut32`
  (8 lookups of 32 byte entries, `vlut32_or` accumulating) for uint8 out,
  `vlut16` for uint16 out.
* 16-bit input: the full 65536-entry table (uint8 out: 64 KiB, uint16 out:
  128 KiB per op instance). This is exact by construction (no interpolation).
  HVX has no 64K-entry `vlut`; the device equivalent is a halfword gather
  (`vgather`, V65+) from the table placed in VTCM.

Table entry for input code q (all arithmetic float64, in this order):

    x    = float(q - in_zp) * in_scale
    y    = f(x)                                  (the `TABLE_FUNCTIONS` formula)
    code = floor(y / out_scale + 0.5) + out_zp   (round half up)
    code = clip(code, 0, 2**out_bits - 1)

`f` uses Python's `math` (libm) scalar functions. A different libm may differ
in the last ulp of `exp`/`erf` and so, at an exact rounding tie, in one code:
that is why the bytes, not the formula, are the contract.
"""
from __future__ import annotations

import logging
import math

import numpy as np
from numba import njit

from tinysd.fixedpoint.checks import check_array

from .threads import run_ranges

log = logging.getLogger(__name__)

__all__ = ["TABLE_FUNCTIONS", "make_table", "apply_table", "apply_table_reference", "table_float"]


def _sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)) in float64 without overflow: exp(x) / (1 + exp(x)) for x < 0."""
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _silu(x: float) -> float:
    """SiLU: x * sigmoid(x)."""
    return x * _sigmoid(x)


_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _gelu(x: float) -> float:
    """Exact GELU (torch's default): 0.5 * x * (1 + erf(x * (1 / sqrt(2))))."""
    return 0.5 * x * (1.0 + math.erf(x * _INV_SQRT2))


def _quick_gelu(x: float) -> float:
    """CLIP's quick_gelu: x * sigmoid(1.702 * x)."""
    return x * _sigmoid(1.702 * x)


#: Table function name -> float64 scalar function (the formula the table samples). "sigmoid" and "erf"
#: are the table parts of a SiLU / quick_gelu / GELU that the device graph quantizes inside
#: (docs/arithmetic.md section 4.11).
TABLE_FUNCTIONS = {"silu": _silu, "gelu": _gelu, "quick_gelu": _quick_gelu, "sigmoid": _sigmoid, "erf": math.erf}


def _check_bits(name, bits):
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) or int(bits) not in (8, 16):
        raise ValueError(f"{name}: must be 8 or 16, got {bits!r}")
    return int(bits)


def _check_scale(name, scale):
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a float, got {type(scale).__name__}") from None
    if not math.isfinite(s) or s <= 0.0:
        raise ValueError(f"{name}: must be finite and > 0, got {scale!r}")
    return s


def _check_zp(name, zp, bits):
    if isinstance(zp, (bool, np.bool_)) or not isinstance(zp, (int, np.integer)):
        raise ValueError(f"{name}: expected an int, got {type(zp).__name__}")
    if not 0 <= int(zp) <= 2**bits - 1:
        raise ValueError(f"{name}: {int(zp)} outside [0, {2**bits - 1}]")
    return int(zp)


def make_table(fn_name, in_scale, in_zp, in_bits, out_scale, out_zp, out_bits) -> np.ndarray:
    """Build the lookup table of `fn_name` for one input and one output encoding (float64, once).

    fn_name: "silu", "gelu" (erf), "quick_gelu", "sigmoid" or "erf". Encodings are asymmetric
    (`real = (q - zp) * scale`) with in_bits / out_bits in {8, 16} and zero points in
    [0, 2**bits - 1]. Returns a contiguous array of length 2**in_bits and dtype uint8
    (out_bits 8) or uint16 (out_bits 16) whose entry q is

        clip(floor(f((q - in_zp) * in_scale) / out_scale + 0.5) + out_zp, 0, 2**out_bits - 1)

    computed in float64 exactly in the order given in the module docstring.
    """
    if fn_name not in TABLE_FUNCTIONS:
        raise ValueError(f"fn_name: {fn_name!r} not in {tuple(TABLE_FUNCTIONS)}")
    in_bits = _check_bits("in_bits", in_bits)
    out_bits = _check_bits("out_bits", out_bits)
    in_scale = _check_scale("in_scale", in_scale)
    out_scale = _check_scale("out_scale", out_scale)
    in_zp = _check_zp("in_zp", in_zp, in_bits)
    out_zp = _check_zp("out_zp", out_zp, out_bits)
    f = TABLE_FUNCTIONS[fn_name]
    qmax = 2**out_bits - 1
    n = 2**in_bits
    out = np.empty(n, dtype=np.uint8 if out_bits == 8 else np.uint16)
    for q in range(n):
        y = f(float(q - in_zp) * in_scale)
        code = math.floor(y / out_scale + 0.5) + out_zp
        out[q] = min(max(code, 0), qmax)
    log.debug("table %s: in (%g, %d, %d bits) -> out (%g, %d, %d bits)",
              fn_name, in_scale, in_zp, in_bits, out_scale, out_zp, out_bits)
    return out


def table_float(fn_name, x) -> np.ndarray:
    """The float64 function a table samples, applied elementwise to float64 `x` (for accuracy checks)."""
    if fn_name not in TABLE_FUNCTIONS:
        raise ValueError(f"fn_name: {fn_name!r} not in {tuple(TABLE_FUNCTIONS)}")
    f = TABLE_FUNCTIONS[fn_name]
    xa = np.asarray(x, dtype=np.float64)
    return np.array([f(float(v)) for v in xa.reshape(-1)], dtype=np.float64).reshape(xa.shape)


def _check_apply(x_q, table):
    check_array("table", table, ("uint8", "uint16"))
    if table.ndim != 1 or table.shape[0] not in (256, 65536):
        raise ValueError(f"table: expected shape (256,) or (65536,), got {table.shape}")
    want = "uint8" if table.shape[0] == 256 else "uint16"
    check_array("x_q", x_q, (want,))


def apply_table_reference(x_q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Reference: out[i] = table[x_q[i]] (int64 NumPy indexing). Same shape as x_q, table's dtype."""
    _check_apply(x_q, table)
    return table[x_q.astype(np.int64)]


@njit(cache=True, nogil=True)
def _apply_table_kernel(i0, i1, x_flat, table, out_flat):
    # elements i0..i1-1, one lookup each: HVX vlut32/vlut16 (8-bit in) or vgather (16-bit in)
    for i in range(i0, i1):
        out_flat[i] = table[x_flat[i]]


def apply_table(x_q: np.ndarray, table: np.ndarray) -> np.ndarray:
    """out[i] = table[x_q[i]] for uint8 x_q with a 256-entry table or uint16 x_q with a 65536-entry table.

    Returns an array of x_q's shape and the table's dtype (uint8 / uint16). Mirrors HVX
    `vlut32` (uint8 table), `vlut16` (uint16 table) for 8-bit input, a VTCM `vgather` for 16-bit.
    """
    _check_apply(x_q, table)
    x_flat = np.ascontiguousarray(x_q).reshape(-1)
    out = np.empty(x_flat.shape[0], dtype=table.dtype)
    run_ranges(_apply_table_kernel, x_flat.shape[0], 1, x_flat, np.ascontiguousarray(table), out)  # in parallel
    return out.reshape(x_q.shape)
