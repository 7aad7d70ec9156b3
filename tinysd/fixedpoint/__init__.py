"""Fixed-point primitives with Hexagon HVX semantics; the spec is docs/arithmetic.md.

Encodings follow QNN/AIMET: `real = (q + offset) * scale`, `offset = -zero_point`.
"""
from .host import dequantize, quantize
from .primitives import (
    INT32_MAX,
    INT32_MIN,
    SHIFT_MAX,
    SHIFT_MIN,
    accumulator_shift,
    narrow_i64,
    narrow_i64_scalar,
    quantize_multiplier,
    requantize,
    requantize_i32,
    rounding_shift_right,
    rounding_shift_right_i32,
    rounding_shift_right_i64,
    saturate_i32,
    saturate_i32_scalar,
    srdhm,
    srdhm_i32,
)

#: Version of docs/arithmetic.md that this code implements; recorded in every file the engine writes.
ARITHMETIC_SPEC_VERSION = "1.1"

__all__ = [
    "ARITHMETIC_SPEC_VERSION",
    "INT32_MAX",
    "INT32_MIN",
    "SHIFT_MAX",
    "SHIFT_MIN",
    "accumulator_shift",
    "dequantize",
    "narrow_i64",
    "narrow_i64_scalar",
    "quantize",
    "quantize_multiplier",
    "requantize",
    "requantize_i32",
    "rounding_shift_right",
    "rounding_shift_right_i32",
    "rounding_shift_right_i64",
    "saturate_i32",
    "saturate_i32_scalar",
    "srdhm",
    "srdhm_i32",
]
