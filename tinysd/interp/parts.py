"""Ops computed as their parts: the quantization points a device graph has inside one tinysd op.

tinysd's graphs call one op for SiLU, GELU, a group norm or an attention product. An
exported device graph may compute such an op as several nodes and quantize between them
(AIMET quantizes a SiLU's Sigmoid output, a GELU's Erf, a GroupNorm's normalized value
before the affine, attention operands scaled by sqrt(alpha)...). When the encodings of a
network name such intermediate values, every interpreter computes the op as these parts
(docs/arithmetic.md section 4.11), in this order, each part's output being a tensor
`{network}.{op}.{part}.out` with its own encoding; the op's output keeps its name. The
graphs (tinysd/nn) are unchanged.

`PARTS[kind]` lists each op kind's parts in execution order with what they compute (`x` is
the op's input, the last line is the op's own output):

| kind | parts | output |
|---|---|---|
| silu | sigmoid = sigmoid(x) | x * sigmoid |
| quick_gelu | scaled = 1.702 x; sigmoid = sigmoid(scaled) | x * sigmoid |
| gelu | div = x / sqrt(2); erf = erf(div); add = erf + 1; mul = x * add | mul * 0.5 |
| group_norm, layer_norm | norm = (x - mean) / sqrt(var + eps); mul = norm * weight | mul + bias |
| matmul (with alpha) | a_scaled = a * c_a; b_scaled = b * c_b (c_a c_b = alpha); or product = a @ b | a_scaled @ b_scaled; or product * alpha |
| softmax (causal) | masked: the scores plus a causal mask (not computed: tinysd masks inside softmax) | softmax |
| any op | requant: the op's output before a rescale by 1 | requantized to the final encoding |

Constant operands (sqrt(2), 1, 0.5, 1.702, the norm's weight and bias, c_a, c_b) may have
encodings of their own, named `{network}.{op}.{part}.const` (`{network}.{op}.const` for the
op's last step); a constant is then used as its quantize-dequantized value.
"""
from __future__ import annotations

import math

SQRT2 = math.sqrt(2.0)

#: op kind -> {part: what it computes}, in execution order (module docstring).
PARTS: dict[str, dict[str, str]] = {
    "silu": {"sigmoid": "Sigmoid"},
    "quick_gelu": {"scaled": "1.702 x", "sigmoid": "Sigmoid"},
    "gelu": {"div": "x / sqrt(2)", "erf": "Erf", "add": "1 + erf", "mul": "x (1 + erf)"},
    "group_norm": {"norm": "normalized value", "mul": "normalized value times weight"},
    "layer_norm": {"norm": "normalized value", "mul": "normalized value times weight"},
    "matmul": {"a_scaled": "first operand times its scale", "b_scaled": "second operand times its scale",
               "product": "product before the scale"},
    "softmax": {"masked": "scores plus the causal mask"},
}
#: parts that exist in an exported graph but are not separate steps in tinysd (their encodings are not used)
NOT_COMPUTED = {("softmax", "masked")}


def part_tensor(op_tensor: str, part: str) -> str:
    """`{network}.{op}.{part}.out` for an op's output tensor `{network}.{op}.out`."""
    base = op_tensor[:-len(".out")] if op_tensor.endswith(".out") else op_tensor
    return f"{base}.{part}.out"


def const_name(op_tensor: str, part: str) -> str:
    """`{network}.{op}.{part}.const` (`{network}.{op}.const` for part "", the op's last step)."""
    base = op_tensor[:-len(".out")] if op_tensor.endswith(".out") else op_tensor
    return f"{base}.{part}.const" if part else f"{base}.const"
