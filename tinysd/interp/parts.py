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
| conv2d, linear, group_norm, layer_norm | input: the op's input requantized to the encoding of a copy the device graph quantizes for this op alone (its other readers take it unquantized) | the op on that part |

Constant operands (sqrt(2), 1, 0.5, 1.702, the norm's weight and bias, c_a, c_b) may have
encodings of their own, named `{network}.{op}.{part}.const` (`{network}.{op}.const` for the
op's last step); a constant is then used as its quantize-dequantized value.
"""
from __future__ import annotations

import math

import numpy as np

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
#: ops whose input a file may quantize for them alone (a reader copy): they read their `input` part,
#: the input requantized to that part's encoding, before anything else
READER_INPUT_OPS = ("conv2d", "linear", "group_norm", "layer_norm")
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


#: The timestep features (diffusers' `Timesteps`, the UNet's `time_proj` input) as an exported graph computes
#: them: values a file may quantize before that input, `unet.time_proj.{part}.out`, in execution order (the
#: frequencies, the Mul's constant operand, are `unet.time_proj.mul.const`). The features in the model's order
#: ([cos, sin] when flip_sin_to_cos) are the `unet.time_proj` input itself.
TIME_PARTS: dict[str, str] = {
    "timestep": "the timestep (a graph input)",
    "mul": "timestep times the frequencies",
    "sin": "Sin of the product",
    "cos": "Cos of the product",
    "concat": "[sin, cos] before the flip to [cos, sin]",
}
#: the network input whose host computation TIME_PARTS describe
TIME_INPUT = "time_proj"


def device_timestep_features(t, batch: int, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                             encs) -> np.ndarray:
    """The `time_proj` features as the device graph computes them, quantized where its file quantizes (host side).

    t: a scalar or `batch` timesteps. encs: {part of TIME_PARTS: Encoding} of the parts the file
    quantizes (a part without one is not quantized), and "const" for the frequencies (the Mul's constant
    operand) when the file quantizes them. Computed in float64, each quantized value quantize-dequantized
    as a network input is (spec section 5: half up, clipped to the encoding's unsigned grid), written qd;
    f_i = exp(-ln(10000) i / (dim//2 - freq_shift)) in float32 as `timestep_features` computes them:
    tq = qd(t); e = qd(tq * qd(f)); s = qd(sin e); c = qd(cos e); x = qd([s, c]) (concat);
    returns float64 (batch, dim): x, flipped to [c, s] when `flip_sin_to_cos`, zero-padded by one
    column for an odd `dim`. The network's `time_proj` input then quantizes it at its own encoding.
    With no encodings at all: `timestep_features(t, ...)` (float32), what tinysd calibrates for.
    """
    from ..fixedpoint import dequantize, quantize
    from ..nn.unet import timestep_batch, timestep_features, timestep_frequencies

    if not encs:  # nothing quantized before the input: the float32 features
        return timestep_features(t, batch, dim, flip_sin_to_cos, freq_shift)

    def qd(x, part):
        e = encs.get(part)
        if e is None:
            return x
        s, zp = float(e.scale[0]), int(e.zero_point[0])
        return dequantize(quantize(x, s, zp, 0, 2**e.bitwidth - 1), s, zp)

    tq = timestep_batch(t, batch)
    half = dim // 2
    freqs = qd(timestep_frequencies(dim, freq_shift).astype(np.float64), "const")  # (half,)
    emb = qd(qd(tq, "timestep")[:, None] * freqs[None, :], "mul")  # (B, half)
    x = qd(np.concatenate([qd(np.sin(emb), "sin"), qd(np.cos(emb), "cos")], axis=-1), "concat")  # (B, 2 half)
    out = np.concatenate([x[:, half:], x[:, :half]], axis=-1) if flip_sin_to_cos else x
    return np.pad(out, ((0, 0), (0, 1))) if dim % 2 else out
