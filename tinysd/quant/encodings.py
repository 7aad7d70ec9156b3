"""Quantization encodings (QNN/AIMET convention) and AIMET encodings files.

An encoding maps integers to reals::

    real = (q + offset) * scale          offset = -zero_point

with `q` on the *unsigned grid* `[0, num_steps]`, `num_steps = 2**bitwidth - 1`
(one less for AIMET's "strict symmetric" encodings, see `Encoding.num_steps`).
This is how AIMET writes offsets (always <= 0) and how Qualcomm's QNN reads them.

Symmetric encodings (`is_symmetric`, offset `-2**(bitwidth-1)`) are *stored*
signed: `q_s = q + offset` in `[-2**(bitwidth-1), 2**(bitwidth-1) - 1]` and
`real = q_s * scale` (zero point 0). `Encoding.storage()` gives the integer
type, range and zero point actually used to store a tensor.

Files. `load_encodings` reads and `save_encodings` writes AIMET's JSON encodings
file in the two layouts of AIMET's "Encoding Format Specification"
(quic/aimet `Docs/quantsim/encoding_spec.rst`, sections "Version 0.6.1" and
"Version 1.0.0"; also published at
https://quic.github.io/aimet-pages/AimetDocs/quantsim/encoding_spec.html):

0.6.1::

    {"version": "0.6.1",
     "activation_encodings": {NAME: [ENC, ...]},    # one ENC per channel
     "param_encodings":      {NAME: [ENC, ...]},
     "quantizer_args": {"activation_bitwidth": int, "dtype": "int",
                        "is_symmetric": "True"|"False", "param_bitwidth": int,
                        "per_channel_quantization": "True"|"False",
                        "quant_scheme": str}}
    ENC = {"bitwidth": int, "dtype": "int", "is_symmetric": "True"|"False",
           "max": float, "min": float, "offset": int, "scale": float}

1.0.0::

    {"version": "1.0.0",
     "activation_encodings": [ENC, ...], "param_encodings": [ENC, ...],
     "excluded_layers": [], "quantizer_args": {... booleans as JSON bools}}
    ENC = {"name": str, "dtype": "INT", "enc_type": "PER_TENSOR"|"PER_CHANNEL",
           "bw": int, "is_sym": bool, "scale": [float, ...], "offset": [int, ...]}

2.0.0 and 2.1.0 (read only; ONNX QuantizeLinear's fields)::

    {"version": "2.0.0", "encodings": [ENC, ...], "producer": {...}}
    ENC = {"name": str, "output_dtype": "uint8"|"int8"|"uint16"|"int16"|"int32"|...,
           "y_scale": float | [float, ...], "y_zero_point": int | [int, ...] (optional, 0),
           "axis": int (per-channel only), "block_size": int (per-block only)}

    q = saturate(round(x / y_scale) + y_zero_point) in output_dtype's range, so an unsigned
    `uintB` entry is offset = -y_zero_point and a signed `intB` entry is offset =
    -(y_zero_point + 2**(B-1)) on the unsigned grid (symmetric when y_zero_point is 0). 2.1.0
    only adds a "meta" (double-quantized) form of y_scale, which tinysd refuses. The list mixes
    activations and parameters: signed entries are read as parameters, unsigned ones as
    activations (AIMET writes activations unsigned by default, `force_activation_as="unsigned"`);
    a caller that knows the graph decides for itself (`EncodingsFile.all`).

The parameter file of AIMET's AdaRound has no `version`: `{"param_encodings": {NAME: [ENC,
...]}}` with 0.6.1 entries (aimet-torch), or a bare 0.6.1 dict / 1.0.0 list of parameter
encodings (what aimet-onnx's `set_and_freeze_param_encodings` accepts). It is read as version
"adaround" with no activation encodings.

In 1.0.0 a per-channel encoding is one entry with `scale`/`offset` lists of
length C, and the channel axis is, by the spec, the output-channel axis (0);
min/max are not stored and are re-derived here as `offset * scale` and
`(offset + num_steps) * scale`. The key sets written match the exporter in
aimet_torch (`_export_to_1_0_0`, `json.dump(..., sort_keys=True, indent=4)`).

tinysd tensor names (docs/quantization.md): activations
`{network}.{op name}.out` (e.g. `unet.down_blocks.0.resnets.1.conv1.out`),
parameters `{network}.{diffusers parameter name}` (e.g.
`unet.down_blocks.0.resnets.1.conv1.weight`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from tinysd.atomic import write_text
from tinysd.fileio import read_text
from tinysd.errors import TinySDError

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("0.6.1", "1.0.0", "2.0.0", "2.1.0")  # read; 0.6.1 and 1.0.0 are also written
WRITTEN_VERSIONS = ("0.6.1", "1.0.0")
ADAROUND = "adaround"  # the `version` load_encodings reports for AdaRound's version-less parameter file
ACTIVATION_BITWIDTHS = (8, 16)  # w8a8: uint8 activations, w8a16: uint16 activations
PARAM_BITWIDTHS = (8, 32)  # int8 weights, int32 biases
MIN_BITWIDTH, MAX_BITWIDTH = 2, 32  # AIMET 1.0.0 spec: "bw >= 2 and <= 32"

_ENC_TYPES_SUPPORTED = ("PER_TENSOR", "PER_CHANNEL")
_ENC_TYPES_KNOWN = _ENC_TYPES_SUPPORTED + ("PER_BLOCK", "LPBQ", "VECTOR")

# AIMET's quant_scheme names (quantizer_args): min-max is "post_training_tf".
QUANT_SCHEME_MINMAX = "post_training_tf"
QUANT_SCHEME_PERCENTILE = "post_training_percentile"


def round_half_away_from_zero(x) -> np.ndarray:
    """Round float64 values to the nearest integer, ties away from zero (C's `round`).

    Returns float64 integral values. Exact for every finite float64: the
    fractional part `x - trunc(x)` is computed without rounding error.
    """
    x = np.asarray(x, dtype=np.float64)
    whole = np.trunc(x)
    frac = x - whole  # exact
    return whole + np.where(np.abs(frac) >= 0.5, np.sign(x), 0.0)


class Storage(NamedTuple):
    """How a quantized tensor is held in memory: `real = (q - zero_point) * scale`.

    `zero_point` is an int64 array with one value per channel (length 1 for a
    per-tensor encoding); q lies in [qmin, qmax] (per channel for qmax/qmin arrays).
    """

    dtype: np.dtype
    qmin: np.ndarray
    qmax: np.ndarray
    zero_point: np.ndarray


def _num_array(values, what: str, integral: bool) -> np.ndarray:
    try:
        arr = np.array(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TinySDError(f"{what} must be numbers, got {values!r}") from None
    if arr.size == 0:
        raise TinySDError(f"{what} is empty")
    if not np.all(np.isfinite(arr)):
        raise TinySDError(f"{what} has a non-finite value: {arr[~np.isfinite(arr)][0]}")
    if integral and np.any(arr != np.trunc(arr)):
        raise TinySDError(f"{what} must be integers, got {arr[arr != np.trunc(arr)][0]}")
    return arr


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a)  # own copy
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Encoding:
    """One tensor's quantization: `real = (q + offset) * scale`, q in [0, num_steps].

    Fields:
      bitwidth: 2..32 (tinysd uses 8/16 for activations, 8 for weights, 32 for biases).
      scale: float64 (C,), every value finite and > 0.
      offset: int64 (C,), every value in [-(2**bitwidth - 1), 0] (so the zero
        point -offset is representable on the unsigned grid).
      is_symmetric: AIMET's flag (weights: symmetric, offset -2**(bitwidth-1)).
      axis: None for a per-tensor encoding (C must be 1); for a per-channel
        encoding the tensor axis the channels run along (0 = output channels,
        the only axis AIMET's file format can express).
      min, max: float64 (C,), as AIMET stores them; derived when not given as
        `offset * scale` and `(offset + num_steps) * scale`.
      dtype: "int" (float encodings are not supported).

    Invalid values raise TinySDError with a message naming the field.
    """

    bitwidth: int
    scale: np.ndarray
    offset: np.ndarray
    is_symmetric: bool
    axis: int | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    dtype: str = "int"

    def __post_init__(self):
        if self.dtype != "int":
            raise TinySDError(f"dtype {self.dtype!r} is not supported (tinysd needs integer encodings)")
        bw = self.bitwidth
        if isinstance(bw, (bool, np.bool_)) or not isinstance(bw, (int, np.integer)):
            raise TinySDError(f"bitwidth must be an integer, got {bw!r}")
        if not MIN_BITWIDTH <= bw <= MAX_BITWIDTH:
            raise TinySDError(f"bitwidth {bw} outside [{MIN_BITWIDTH}, {MAX_BITWIDTH}]")
        object.__setattr__(self, "bitwidth", int(bw))
        if not isinstance(self.is_symmetric, (bool, np.bool_)):
            raise TinySDError(f"is_symmetric must be a bool, got {self.is_symmetric!r}")
        object.__setattr__(self, "is_symmetric", bool(self.is_symmetric))

        scale = _num_array(self.scale, "scale", integral=False)
        if np.any(scale <= 0):
            raise TinySDError(f"scale must be > 0, got {scale[scale <= 0][0]}")
        offset = _num_array(self.offset, "offset", integral=True)
        if scale.size != offset.size:
            raise TinySDError(f"per-channel lists differ in length: {scale.size} scales, {offset.size} offsets")
        lo = -(2**bw - 1)
        bad = (offset < lo) | (offset > 0)
        if np.any(bad):
            c = int(np.argmax(bad))
            raise TinySDError(
                f"offset {int(offset[c])} (channel {c}) outside [{lo}, 0] for bitwidth {bw}"
            )
        if self.axis is None:
            if scale.size != 1:
                raise TinySDError(f"per-tensor encoding has {scale.size} scales (give an axis for per-channel)")
        elif isinstance(self.axis, (bool, np.bool_)) or not isinstance(self.axis, (int, np.integer)) or self.axis < 0:
            raise TinySDError(f"axis must be None or an integer >= 0, got {self.axis!r}")
        else:
            object.__setattr__(self, "axis", int(self.axis))
        object.__setattr__(self, "scale", _readonly(scale))
        object.__setattr__(self, "offset", _readonly(offset.astype(np.int64)))

        steps = self.num_steps.astype(np.float64)
        for field, derived in (("min", offset * scale), ("max", (offset + steps) * scale)):
            given = getattr(self, field)
            if given is None:
                value = derived
            else:
                value = _num_array(given, field, integral=False)
                if value.size != scale.size:
                    raise TinySDError(
                        f"per-channel lists differ in length: {scale.size} scales, {value.size} {field} values"
                    )
            object.__setattr__(self, field, _readonly(value))

    # --- derived quantities ---------------------------------------------------
    @property
    def channels(self) -> int:
        """Number of (scale, offset) pairs: 1 per-tensor, C per-channel."""
        return int(self.scale.size)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def strict_symmetric(self) -> np.ndarray:
        """bool (C,): AIMET strict-symmetric channels (symmetric, offset -(2**(bw-1) - 1))."""
        return np.full(self.channels, self.is_symmetric) & (self.offset == -(2 ** (self.bitwidth - 1) - 1))

    @property
    def num_steps(self) -> np.ndarray:
        """int64 (C,): 2**bitwidth - 1, or 2**bitwidth - 2 on strict-symmetric channels (AIMET)."""
        return np.int64(2**self.bitwidth - 1) - self.strict_symmetric.astype(np.int64)

    @property
    def zero_point(self) -> np.ndarray:
        """int64 (C,): -offset, the integer on the unsigned grid that represents real 0."""
        return -self.offset

    def storage(self) -> Storage:
        """The integer type, range and zero point a tensor with this encoding is stored in.

        Signed when the encoding is symmetric and every offset is -2**(bw-1)
        (AIMET's default symmetric grid, q_s in [-2**(bw-1), 2**(bw-1) - 1]) or
        -(2**(bw-1) - 1) (strict symmetric, q_s in [-(2**(bw-1) - 1), 2**(bw-1) - 1]);
        then q_s = q + offset and zero_point = 0. Otherwise unsigned: q in
        [0, num_steps], zero_point = -offset. The container is the smallest of
        8/16/32 bits holding `bitwidth` bits.
        """
        bw = self.bitwidth
        bits = 8 if bw <= 8 else 16 if bw <= 16 else 32
        half = 2 ** (bw - 1)
        signed = self.is_symmetric and bool(np.all((self.offset == -half) | (self.offset == -(half - 1))))
        if signed:
            qmin = self.offset.copy()
            qmax = self.offset + self.num_steps
            zp = np.zeros(self.channels, dtype=np.int64)
            return Storage(np.dtype(f"int{bits}"), qmin, qmax, zp)
        qmin = np.zeros(self.channels, dtype=np.int64)
        return Storage(np.dtype(f"uint{bits}"), qmin, self.num_steps.copy(), self.zero_point.copy())

    def _broadcast(self, a: np.ndarray, ndim: int) -> np.ndarray:
        """Per-channel values shaped to broadcast against an ndim-D tensor along `axis`."""
        if self.axis is None:
            return a.reshape(())
        if self.axis >= ndim:
            raise TinySDError(f"per-channel axis {self.axis} does not exist in a {ndim}-D tensor")
        shape = [1] * ndim
        shape[self.axis] = self.channels
        return a.reshape(shape)

    def check_shape(self, shape) -> None:
        """TinySDError unless a tensor of `shape` has `channels` entries along `axis`."""
        shape = tuple(shape)
        if self.axis is None:
            return
        if self.axis >= len(shape) or shape[self.axis] != self.channels:
            raise TinySDError(
                f"per-channel encoding with {self.channels} channels on axis {self.axis} "
                f"does not fit a tensor of shape {shape}"
            )

    def quantize(self, x) -> np.ndarray:
        """Host-side float -> integer quantization in the storage domain (see `storage`).

        q = clip(round_half_away_from_zero(x / scale) + zero_point, qmin, qmax),
        computed in float64, returned in `storage().dtype`. Used for weights,
        biases and network inputs; never inside an integer network.
        """
        x = np.asarray(x, dtype=np.float64)
        self.check_shape(x.shape)
        st = self.storage()
        b = lambda a: self._broadcast(np.asarray(a), x.ndim)  # noqa: E731
        q = round_half_away_from_zero(x / b(self.scale)) + b(st.zero_point)
        q = np.clip(q, b(st.qmin), b(st.qmax))
        return q.astype(st.dtype)

    def dequantize(self, q) -> np.ndarray:
        """float64 (q - zero_point) * scale for q in the storage domain."""
        q = np.asarray(q)
        self.check_shape(q.shape)
        st = self.storage()
        return (q.astype(np.float64) - self._broadcast(st.zero_point, q.ndim)) * self._broadcast(self.scale, q.ndim)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Encoding):
            return NotImplemented
        return (
            self.bitwidth == other.bitwidth
            and self.is_symmetric == other.is_symmetric
            and self.axis == other.axis
            and self.dtype == other.dtype
            and all(np.array_equal(getattr(self, f), getattr(other, f)) for f in ("scale", "offset", "min", "max"))
        )

    __hash__ = None  # mutable-looking arrays: not hashable


# --- file validation helpers ------------------------------------------------------


def _where(path, role: str, name: str) -> str:
    return f"{path}: {role} tensor {name!r}"


def _check_role_bitwidth(path, role: str, name: str, enc: Encoding) -> None:
    allowed = ACTIVATION_BITWIDTHS if role == "activation" else PARAM_BITWIDTHS
    if enc.bitwidth not in allowed:
        what = "8/16-bit activations" if role == "activation" else "8-bit weights and 32-bit biases"
        raise TinySDError(
            f"{_where(path, role, name)}: bitwidth {enc.bitwidth} not supported (tinysd supports {what})"
        )
    if role == "activation" and enc.per_channel:
        raise TinySDError(
            f"{_where(path, role, name)}: per-channel activation encodings are not supported ({enc.channels} channels)"
        )


def _int_field(d: Mapping, key: str, where: str) -> int:
    if key not in d:
        raise TinySDError(f"{where}: missing field {key!r}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise TinySDError(f"{where}: field {key!r} must be an integer, got {v!r}")
    return int(v)


def _bool_field(d: Mapping, key: str, where: str, legacy: bool) -> bool:
    if key not in d:
        raise TinySDError(f"{where}: missing field {key!r}")
    v = d[key]
    if isinstance(v, bool):
        return v
    if legacy and v in ("True", "False"):  # 0.6.1 writes booleans as the strings "True"/"False"
        return v == "True"
    expected = '"True" or "False"' if legacy else "true or false"
    raise TinySDError(f"{where}: field {key!r} must be {expected}, got {v!r}")


def _number(v, key: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TinySDError(f"{where}: field {key!r} must be a number, got {v!r}")
    return float(v)


def _numbers(d: Mapping, key: str, where: str) -> list[float]:
    if key not in d:
        raise TinySDError(f"{where}: missing field {key!r}")
    v = d[key]
    if not isinstance(v, list) or not v:
        raise TinySDError(f"{where}: field {key!r} must be a non-empty list of numbers, got {v!r}")
    return [_number(x, key, where) for x in v]


def _make(where: str, **kwargs) -> Encoding:
    try:
        return Encoding(**kwargs)
    except TinySDError as e:
        raise TinySDError(f"{where}: {e}") from None


def _check_dtype(d: Mapping, where: str, legacy: bool) -> None:
    dtype = d.get("dtype", "int" if legacy else None)
    if dtype is None:
        raise TinySDError(f"{where}: missing field 'dtype'")
    if not isinstance(dtype, str) or dtype.lower() != "int":
        raise TinySDError(f"{where}: dtype {dtype!r} not supported (tinysd needs integer encodings)")


# --- 0.6.1 ------------------------------------------------------------------------


def _parse_legacy_entry(path, role: str, name: str, channels) -> Encoding:
    where = _where(path, role, name)
    if not isinstance(channels, list) or not channels:
        raise TinySDError(f"{where}: expected a non-empty list of per-channel encodings, got {channels!r}")
    bws, syms, scales, offsets, mins, maxs = [], [], [], [], [], []
    for c, d in enumerate(channels):
        w = f"{where} (channel {c})" if len(channels) > 1 else where
        if not isinstance(d, dict):
            raise TinySDError(f"{w}: expected an object, got {d!r}")
        _check_dtype(d, w, legacy=True)
        bws.append(_int_field(d, "bitwidth", w))
        syms.append(_bool_field(d, "is_symmetric", w, legacy=True))
        if "scale" not in d or "offset" not in d:
            raise TinySDError(f"{w}: missing field {'scale' if 'scale' not in d else 'offset'!r}")
        scales.append(_number(d["scale"], "scale", w))
        offsets.append(_number(d["offset"], "offset", w))
        mins.append(_number(d["min"], "min", w) if "min" in d else None)
        maxs.append(_number(d["max"], "max", w) if "max" in d else None)
    if len(set(bws)) != 1 or len(set(syms)) != 1:
        raise TinySDError(f"{where}: channels disagree on bitwidth or is_symmetric")
    has_minmax = all(m is not None for m in mins + maxs)
    enc = _make(
        where,
        bitwidth=bws[0],
        scale=scales,
        offset=offsets,
        is_symmetric=syms[0],
        axis=0 if len(channels) > 1 else None,
        min=mins if has_minmax else None,
        max=maxs if has_minmax else None,
    )
    if has_minmax:
        derived_min = enc.offset * enc.scale
        derived_max = (enc.offset + enc.num_steps) * enc.scale
        off = np.maximum(np.abs(enc.min - derived_min), np.abs(enc.max - derived_max)) > enc.scale / 2
        if np.any(off):
            log.warning("%s: min/max disagree with scale/offset; scale/offset are used", where)
    return enc


def _legacy_entry(enc: Encoding) -> list[dict[str, Any]]:
    sym = "True" if enc.is_symmetric else "False"
    return [
        {
            "bitwidth": enc.bitwidth,
            "dtype": "int",
            "is_symmetric": sym,
            "max": float(enc.max[c]),
            "min": float(enc.min[c]),
            "offset": int(enc.offset[c]),
            "scale": float(enc.scale[c]),
        }
        for c in range(enc.channels)
    ]


# --- 1.0.0 ------------------------------------------------------------------------


def _parse_v1_entry(path, role: str, index: int, d) -> tuple[str, Encoding]:
    if not isinstance(d, dict):
        raise TinySDError(f"{path}: {role}_encodings[{index}] must be an object, got {d!r}")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise TinySDError(f"{path}: {role}_encodings[{index}] has no valid 'name'")
    where = _where(path, role, name)
    _check_dtype(d, where, legacy=False)
    enc_type = d.get("enc_type")
    if enc_type not in _ENC_TYPES_SUPPORTED:
        known = "known but not supported" if enc_type in _ENC_TYPES_KNOWN else "unknown"
        raise TinySDError(
            f"{where}: enc_type {enc_type!r} {known} (tinysd supports {', '.join(_ENC_TYPES_SUPPORTED)})"
        )
    scale = _numbers(d, "scale", where)
    offset = _numbers(d, "offset", where)
    if len(scale) != len(offset):
        raise TinySDError(f"{where}: per-channel lists differ in length: {len(scale)} scales, {len(offset)} offsets")
    if enc_type == "PER_TENSOR" and len(scale) != 1:
        raise TinySDError(f"{where}: PER_TENSOR encoding has {len(scale)} scales")
    enc = _make(
        where,
        bitwidth=_int_field(d, "bw", where),
        scale=scale,
        offset=offset,
        is_symmetric=_bool_field(d, "is_sym", where, legacy=False),
        axis=0 if enc_type == "PER_CHANNEL" else None,  # spec: channel axis = output channels
    )
    return name, enc


def _v1_entry(name: str, enc: Encoding) -> dict[str, Any]:
    return {
        "name": name,
        "dtype": "INT",
        "enc_type": "PER_CHANNEL" if enc.per_channel else "PER_TENSOR",
        "is_sym": enc.is_symmetric,
        "bw": enc.bitwidth,
        "scale": [float(s) for s in enc.scale],
        "offset": [int(o) for o in enc.offset],
    }


# --- public API -------------------------------------------------------------------


# --- 2.0.0 / 2.1.0 ----------------------------------------------------------------


def _v2_dtype(where: str, d: Mapping) -> tuple[int, bool]:
    """(bitwidth, signed) of an entry's `output_dtype` ("uint8", "int16", ...); TinySDError for float types."""
    dt = d.get("output_dtype")
    if not isinstance(dt, str):
        raise TinySDError(f"{where}: missing field 'output_dtype'")
    signed = dt.startswith("int")
    digits = dt[3:] if signed else dt[4:] if dt.startswith("uint") else ""
    if not digits.isdigit():
        raise TinySDError(f"{where}: output_dtype {dt!r} not supported (tinysd needs integer encodings)")
    return int(digits), signed


def _v2_list(where: str, d: Mapping, key: str, default=None) -> list[float]:
    v = d.get(key, default)
    if v is None:
        raise TinySDError(f"{where}: missing field {key!r}")
    if isinstance(v, dict):
        raise TinySDError(f"{where}: {key} as a meta (double-quantized) encoding is not supported")
    values = v if isinstance(v, list) else [v]
    if not values or any(isinstance(x, list) for x in values):
        raise TinySDError(f"{where}: field {key!r} must be a number or a flat non-empty list (per-block "
                          f"encodings are not supported), got {v!r}")
    return [_number(x, key, where) for x in values]


def _parse_v2_entry(path, index: int, d) -> tuple[str, Encoding, str]:
    """(name, Encoding on the unsigned grid, role) of one 2.x entry; role "param" for signed or per-channel."""
    if not isinstance(d, dict):
        raise TinySDError(f"{path}: encodings[{index}] must be an object, got {d!r}")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise TinySDError(f"{path}: encodings[{index}] has no valid 'name'")
    where = f"{path}: tensor {name!r}"
    bw, signed = _v2_dtype(where, d)
    if "block_size" in d:
        raise TinySDError(f"{where}: per-block encodings are not supported")
    scale = _v2_list(where, d, "y_scale")
    zp = _v2_list(where, d, "y_zero_point", default=0)
    axis = d.get("axis")
    if axis is None and len(scale) != 1:
        raise TinySDError(f"{where}: {len(scale)} scales but no 'axis'")
    if len(zp) == 1 and len(scale) > 1:
        zp = zp * len(scale)
    if len(zp) != len(scale):
        raise TinySDError(f"{where}: per-channel lists differ in length: {len(scale)} scales, {len(zp)} zero points")
    if any(z != int(z) for z in zp):
        raise TinySDError(f"{where}: fractional zero points are not supported")
    zp_arr = np.array(zp, dtype=np.float64)
    offset = -(zp_arr + 2 ** (bw - 1)) if signed else -zp_arr
    enc = _make(where, bitwidth=bw, scale=scale, offset=offset, is_symmetric=bool(signed and not np.any(zp_arr)),
                axis=None if axis is None else axis)
    return name, enc, "param" if signed or axis is not None else "activation"


# --- AdaRound's parameter file (no version) ------------------------------------------------


def _is_adaround(doc) -> bool:
    """A version-less parameter-encodings file: {"param_encodings": ...}, a bare 0.6.1 dict or a 1.0.0 list."""
    if isinstance(doc, list):
        return bool(doc) and all(isinstance(d, dict) for d in doc)
    if not isinstance(doc, dict) or "version" in doc or not doc:
        return False
    if set(doc) == {"param_encodings"}:
        return True
    return "activation_encodings" not in doc and all(isinstance(v, list) for v in doc.values())


def _parse_params_only(path, doc) -> dict[str, Encoding]:
    section = doc["param_encodings"] if isinstance(doc, dict) and set(doc) == {"param_encodings"} else doc
    out: dict[str, Encoding] = {}
    if isinstance(section, dict):
        for name, channels in section.items():
            out[name] = _parse_legacy_entry(path, "param", name, channels)
    elif isinstance(section, list):
        for i, d in enumerate(section):
            name, enc = _parse_v1_entry(path, "param", i, d)
            if name in out:
                raise TinySDError(f"{_where(path, 'param', name)}: listed twice")
            out[name] = enc
    else:
        raise TinySDError(f"{path}: 'param_encodings' must be an object or a list")
    return out


# --- public API -------------------------------------------------------------------


def _read_json(path: Path):
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise TinySDError(f"{path}: encodings file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TinySDError(f"{path}: cannot read encodings file: {e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TinySDError(f"{path}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def load_encodings(path) -> tuple[dict[str, Encoding], dict[str, Encoding], str]:
    """Read an AIMET encodings file (version 0.6.1, 1.0.0, 2.0.0 or 2.1.0, or AdaRound's parameter file).

    Returns (activation encodings, parameter encodings, version), each dict
    keyed by tensor name in file order; version is the file's, or ADAROUND for
    AdaRound's version-less parameter file (no activations). 2.x files have one
    list: signed and per-channel entries are returned as parameters, the others as
    activations (module docstring). Every problem raises one TinySDError naming the file and,
    where there is one, the tensor: unreadable file, malformed JSON, unknown version, float or
    per-block encodings, bitwidths outside [2, 32], non-positive or non-finite scales, offsets
    outside [-(2**bw - 1), 0], per-channel lists of different lengths, duplicate names.
    Whether a bitwidth suits a tensor is checked where the tensor is used (AIMET files hold
    encodings tinysd ignores, such as 16-bit norm scales, `tinysd.quant.workflow`).
    """
    path = Path(path)
    doc = _read_json(path)
    if _is_adaround(doc):
        return {}, _parse_params_only(path, doc), ADAROUND
    if not isinstance(doc, dict):
        raise TinySDError(f"{path}: not an AIMET encodings file (top level is not an object)")
    if "version" not in doc:
        raise TinySDError(
            f"{path}: no 'version' field (supported AIMET encodings versions: {', '.join(SUPPORTED_VERSIONS)})"
        )
    version = doc["version"]
    if version not in SUPPORTED_VERSIONS:
        raise TinySDError(
            f"{path}: unknown encodings version {version!r} (supported: {', '.join(SUPPORTED_VERSIONS)})"
        )
    if version.startswith("2."):
        section = doc.get("encodings")
        if not isinstance(section, list):
            raise TinySDError(f"{path}: 'encodings' must be a list of encodings (version {version})")
        roles: dict[str, dict[str, Encoding]] = {"activation": {}, "param": {}}
        for i, d in enumerate(section):
            name, enc, role = _parse_v2_entry(path, i, d)
            if name in roles["activation"] or name in roles["param"]:
                raise TinySDError(f"{path}: tensor {name!r}: listed twice")
            roles[role][name] = enc
        return roles["activation"], roles["param"], version
    legacy = version == "0.6.1"
    result = []
    for role in ("activation", "param"):
        key = f"{role}_encodings"
        if key not in doc:
            raise TinySDError(f"{path}: missing {key!r}")
        section = doc[key]
        out: dict[str, Encoding] = {}
        if legacy:
            if not isinstance(section, dict):
                raise TinySDError(f"{path}: {key!r} must be an object mapping tensor names to lists (version 0.6.1)")
            for name, channels in section.items():
                out[name] = _parse_legacy_entry(path, role, name, channels)
        else:
            if not isinstance(section, list):
                raise TinySDError(f"{path}: {key!r} must be a list of encodings (version 1.0.0)")
            for i, d in enumerate(section):
                name, enc = _parse_v1_entry(path, role, i, d)
                if name in out:
                    raise TinySDError(f"{_where(path, role, name)}: listed twice")
                out[name] = enc
        result.append(out)
    return result[0], result[1], version


def default_quantizer_args(activation: Mapping[str, Encoding], params: Mapping[str, Encoding],
                           quant_scheme: str = QUANT_SCHEME_MINMAX) -> dict[str, Any]:
    """AIMET's `quantizer_args` block describing how `activation`/`params` were made.

    activation_bitwidth: the largest activation bitwidth; param_bitwidth: the
    largest bitwidth among parameters other than 32-bit biases (8 when none);
    is_symmetric: every such parameter encoding is symmetric;
    per_channel_quantization: any parameter encoding is per-channel.
    """
    act_bws = [e.bitwidth for e in activation.values()]
    weights = [e for e in params.values() if e.bitwidth != 32]
    return {
        "activation_bitwidth": max(act_bws) if act_bws else 8,
        "dtype": "int",
        "is_symmetric": all(e.is_symmetric for e in weights),
        "param_bitwidth": max((e.bitwidth for e in weights), default=8),
        "per_channel_quantization": any(e.per_channel for e in params.values()),
        "quant_scheme": quant_scheme,
    }


def save_encodings(path, activation: Mapping[str, Encoding], params: Mapping[str, Encoding],
                   version: str = "1.0.0", quantizer_args: Mapping[str, Any] | None = None,
                   excluded_layers=()) -> None:
    """Write an AIMET encodings file (1.0.0 by default, or 0.6.1), atomically.

    Checks each encoding's bitwidth for its role (activations 8/16 per-tensor,
    parameters 8/32) and that per-channel encodings run along axis 0 (the only
    axis the format expresses); raises TinySDError naming the tensor. Keys are
    sorted and indented by 4 as AIMET writes them. `quantizer_args` defaults
    to `default_quantizer_args(activation, params)`; in 0.6.1 its booleans are
    written as the strings "True"/"False" (spec), in 1.0.0 as JSON booleans.
    Floats are written with Python's shortest round-trip repr, so
    `load_encodings` gives back bit-identical float64 scales.
    """
    path = Path(path)
    if version not in WRITTEN_VERSIONS:
        raise TinySDError(f"{path}: tinysd writes encodings versions {', '.join(WRITTEN_VERSIONS)}, not {version!r}")
    for role, encs in (("activation", activation), ("param", params)):
        for name, enc in encs.items():
            if not isinstance(name, str) or not name:
                raise TinySDError(f"{path}: {role} tensor name must be a non-empty string, got {name!r}")
            if not isinstance(enc, Encoding):
                raise TinySDError(f"{_where(path, role, name)}: expected an Encoding, got {type(enc).__name__}")
            _check_role_bitwidth(path, role, name, enc)
            if enc.per_channel and enc.axis != 0:
                raise TinySDError(
                    f"{_where(path, role, name)}: per-channel axis {enc.axis} cannot be written "
                    "(AIMET files put channels on axis 0)"
                )
    args = dict(quantizer_args) if quantizer_args is not None else default_quantizer_args(activation, params)
    if version == "0.6.1":
        args = {k: (("True" if v else "False") if isinstance(v, bool) else v) for k, v in args.items()}
        doc = {
            "version": "0.6.1",
            "activation_encodings": {n: _legacy_entry(e) for n, e in activation.items()},
            "param_encodings": {n: _legacy_entry(e) for n, e in params.items()},
            "quantizer_args": args,
        }
    else:
        doc = {
            "version": "1.0.0",
            "activation_encodings": [_v1_entry(n, e) for n, e in activation.items()],
            "param_encodings": [_v1_entry(n, e) for n, e in params.items()],
            "excluded_layers": list(excluded_layers),
            "quantizer_args": args,
        }
    try:
        text = json.dumps(doc, sort_keys=True, indent=4, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TinySDError(f"{path}: cannot serialise encodings: {e}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text + "\n")
    log.info("wrote %d activation and %d parameter encodings to %s (AIMET %s)",
             len(activation), len(params), path, version)
