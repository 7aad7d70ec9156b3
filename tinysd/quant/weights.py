"""Weight and bias quantization: int8 symmetric per output channel, int32 bias.

Weights follow AIMET's default symmetric 8-bit encoding (not "strict"): per
output channel c, with min_c/max_c the channel's smallest/largest weight,

    scale_c = max(max(max_c, 0) / 127, -min(min_c, 0) / 128)   (rounded to float32)
    q       = clip(round_half_away_from_zero(w / scale_c), -128, 127)     int8
    w      ~= q * scale_c

i.e. the grid [-128, 127] * scale_c, offset -128 on AIMET's unsigned grid
(libpymo `getComputedEncodings`: numPositiveSteps = floor(255/2) = 127,
numNegativeSteps = 128; AIMET's 1.0.0 test files show exactly
`"is_sym": true, "offset": [-128.0, ...]`). The extra negative step is used only
when the channel's most negative weight needs it, so no weight is ever
clipped: |w - q * scale_c| <= scale_c / 2 for every weight.

Biases are int32 at scale s_in * s_w[c] (the scale of the int32 accumulator
of x_q (s_in) times w_q (s_w[c])), zero point 0, rounded half away from zero
and saturated to [-2**31, 2**31 - 1] with a logged warning. Everything is
computed in float64.
"""
from __future__ import annotations

import logging

import numpy as np

from tinysd.errors import TinySDError
from tinysd.quant.encodings import Encoding, round_half_away_from_zero
from tinysd.quant.observers import encoding_from_range

log = logging.getLogger(__name__)

WEIGHT_BITS = 8
BIAS_BITS = 32
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def quantize_weight(w, axis: int = 0, name: str = "weight") -> tuple[np.ndarray, Encoding]:
    """int8 symmetric per-channel quantization of a float weight tensor.

    w: float array with channels (output channels for conv (OUT, IN, KH, KW)
    and linear (OUT, IN) weights) along `axis`. Returns (q, enc): q int8 of
    w's shape in [-128, 127]; enc an 8-bit symmetric per-channel Encoding
    (offset -128, scale float64 (C,) holding float32 values). Per channel,
    |w - q * scale| <= scale / 2. Non-finite weights raise TinySDError naming `name`.
    """
    w = np.asarray(w)
    if w.dtype.kind != "f":
        raise TinySDError(f"tensor {name!r}: weights must be floating point, got {w.dtype}")
    if w.ndim == 0 or not -w.ndim <= axis < w.ndim:
        raise TinySDError(f"tensor {name!r}: axis {axis} does not exist in a weight of shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise TinySDError(f"tensor {name!r}: non-finite weight values")
    axis = axis % w.ndim
    w64 = np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)  # (C, rest)
    if w64.shape[1] == 0:
        raise TinySDError(f"tensor {name!r}: empty weight of shape {w.shape}")
    enc = encoding_from_range(w64.min(axis=1), w64.max(axis=1), WEIGHT_BITS, symmetric=True, axis=axis)
    q = enc.quantize(w)
    return q, enc


def quantize_bias(b, input_scale: float, weight_scale, name: str = "bias") -> tuple[np.ndarray, Encoding]:
    """int32 quantization of a bias at the accumulator scale s_in * s_w[c].

    b: float (C,); input_scale: the input activation's scale (float);
    weight_scale: the weight encoding's scale, (C,) per-channel or a scalar.
    q[c] = clip(round_half_away_from_zero(b[c] / (s_in * s_w[c])), -2**31, 2**31 - 1),
    all in float64; returns (q int32 (C,), enc) with enc a 32-bit symmetric
    Encoding (offset -2**31, i.e. zero point 0 on the signed grid) of scale
    s_in * s_w, per-channel along axis 0 when weight_scale is per-channel.
    Saturated values are logged as a warning naming `name`.
    """
    b = np.asarray(b)
    if b.dtype.kind != "f" or b.ndim != 1:
        raise TinySDError(f"tensor {name!r}: bias must be a 1-D float array, got {b.dtype} {b.shape}")
    if not np.all(np.isfinite(b)):
        raise TinySDError(f"tensor {name!r}: non-finite bias values")
    s_in = float(input_scale)
    s_w = np.asarray(weight_scale, dtype=np.float64).reshape(-1)
    if not (np.isfinite(s_in) and s_in > 0) or not np.all(np.isfinite(s_w) & (s_w > 0)):
        raise TinySDError(f"tensor {name!r}: input and weight scales must be finite and > 0")
    per_channel = s_w.size > 1
    if per_channel and s_w.size != b.size:
        raise TinySDError(f"tensor {name!r}: {b.size} bias values but {s_w.size} weight scales")
    scale = s_in * s_w  # float64 (C,) or (1,)
    real = b.astype(np.float64) / scale
    q = round_half_away_from_zero(real)
    saturated = (q < INT32_MIN) | (q > INT32_MAX)
    if np.any(saturated):
        c = int(np.argmax(np.abs(real) * saturated))
        log.warning(
            "tensor %r: %d of %d bias values saturated to int32 (worst: channel %d, %.6g LSB)",
            name, int(saturated.sum()), b.size, c, real[c],
        )
    q = np.clip(q, INT32_MIN, INT32_MAX).astype(np.int32)
    enc = Encoding(
        bitwidth=BIAS_BITS,
        scale=np.broadcast_to(scale, b.shape) if per_channel else scale,
        offset=np.full(b.size if per_channel else 1, INT32_MIN, dtype=np.int64),
        is_symmetric=True,
        axis=0 if per_channel else None,
    )
    return q, enc
