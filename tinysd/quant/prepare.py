"""Preparation: float weights + encodings -> the integer run-time arrays of one network.

`quantize_network` runs the network graph once more, on `Preparer`, an
interpreter whose tensors carry a shape and the name of their encoding instead
of data. For every op it computes, in float64 and once, the integers the
integer interpreter (`tinysd/interp/integer.py`) reads at run time, and stores
them in `QuantizedNetwork.arrays` as `{op name}.{field}` (op names as in the
graph, without the network prefix). Activation encodings come from
calibration (`encodings_from_ranges`) or from a file; `s_x`, `zp_x` below are
the scale and zero point of tensor x, `B` the activation bits (8 or 16) and
`qmax = 2**B - 1`. All integer arrays are int32 unless said otherwise.

| op | arrays | computed as |
|---|---|---|
| embedding | `table_q` (V, D) uint8/uint16 | weight quantized with the output encoding (host `quantize`, spec §5) |
| linear, conv2d | `weight_q` int8, `bias_q` (OUT,), `multiplier`, `shift`, `acc_shift` (OUT,) | `quantize_weight` (or the given param encoding), `quantize_bias` at `s_in * s_w[o]`; real `s_in s_w[o] 2**acc_shift[o] / s_out` |
| matmul | `multiplier`, `shift`, `acc_shift` (1,); `max_k` (1,) int64 | real `alpha s_a s_b 2**acc_shift / s_out` (alpha folded in); `max_k` below |
| group_norm, layer_norm | `eps_fx` (1,) int64, `gamma_multiplier`, `gamma_shift`, `beta_fx` (C,) | `prepare_group_norm` / `prepare_layer_norm` |
| silu, gelu, quick_gelu | `table` (2**B,) uint8/uint16 | `make_table` |
| softmax | `exp_table` (K,) | `make_exp_table(s_in, B)`; output encoding fixed at scale 2**-B, zp 0 |
| add | `a_multiplier`, `a_shift`, `b_multiplier`, `b_shift`, `multiplier`, `shift`, `left_shift` (1,) | reals `s_a / 2m`, `s_b / 2m`, `2m / (2**left_shift s_out)`, m = max(s_a, s_b), left_shift = ADD_LEFT_SHIFT |
| mul | `multiplier`, `shift`, `acc_shift` (1,) | real `s_a s_b 2**acc_shift / s_out` |
| scale | `multiplier`, `shift` (1,) | real `factor s_in / s_out` (e.g. a resnet's 1/output_scale_factor) |
| concat | `multipliers`, `shifts` (n,) | real `s_i / s_out` per input |
| upsample_nearest2x | `multiplier`, `shift` (1,), only when the output encoding differs from the input's | real `s_in / s_out` |

Multipliers come from `quantize_multiplier(real)`; a real below 2**-32 (less
than half an output LSB for any int32 accumulator) gives multiplier 0, shift 0.
Reals >= 2**30 are an error.

Accumulator shift (`acc_shift`, the `narrow_i64` right shift before
requantization, docs/arithmetic.md §2.4, §3.4): `accumulator_shift(bound)` of a
proven bound on |acc| over every possible input, so narrowing never saturates
(`tinysd.kernels.set_debug(True)` asserts it):
  * linear, conv2d: `weight_bound` (B_x * sum_k |w[o, k]| + |bias[o]|, per channel);
  * mul: B_a * B_b (B = 255 for uint8, 65535 for uint16, the centred dtype bounds);
  * matmul of two activations, with K the reduction length: K * B_a * B_b; for
    `probs @ v`, where `a` is a softmax output (zero point 0), the softmax row-sum
    bound sum_k a[k] <= 2**B + K (see `softmax_row_sum_bound`) gives
    (2**B + K) * B_b instead. K varies with the input size for attention over
    pixels, so the bound is computed for `max_k` (stored): the head dimension for
    scores (fixed by the weights), `MAX_TOKENS` for `probs @ v`; the integer
    interpreter refuses a matmul with K > max_k.

Parameters. Weights are int8 symmetric per output channel (`quantize_weight`),
or quantized with given parameter encodings (an imported AIMET file): 8-bit
symmetric, per channel along axis 0 or per tensor. A norm's weight and bias with
given encodings (AIMET quantizes them on the device) are used as their
quantize-dequantize values when the fixed-point norm parameters are prepared. Biases are always int32 at
`s_in * s_w[o]` (as QNN derives them); a given bias encoding is not used.
`QuantizedNetwork.params` lists the weight and bias encodings used, named
`{network}.{parameter}`. Embedding tables are stored at their output
activation encoding (uint8/uint16, so not a parameter encoding), and norm
gamma/beta become Q31 multipliers / fixed-point offsets (norm params), not
8-bit parameters; neither appears in `params`.

Activation encodings must be per-tensor with the precision's bitwidth; a
symmetric one is used on its unsigned grid (zero point -offset = 2**(B-1)).
Every missing or unusable encoding is collected and reported in one
TinySDError.

Parts (`tinysd.interp.parts`, docs/arithmetic.md section 4.11). When the encodings name
parts of an op (`{network}.{op}.{part}.out`, e.g. the Sigmoid inside a SiLU), the op is
prepared as those parts, each step writing arrays `{op}.{part}.{field}` (the last step
`{op}.{field}`):

| step | arrays | real factor |
|---|---|---|
| table (sigmoid, erf) | `table` | `make_table` of the step's input and output encodings |
| scale by a constant c (x / sqrt 2, 1.702 x, a sqrt(alpha), m * 0.5) | `multiplier`, `shift` | `c s_in / s_out` (a division: `s_in / (c s_out)`) |
| mul, add (two activations, or an activation and a constant) | as `mul` / `add` | as `mul` / `add` |
| constant operand (a norm's weight and bias, GELU's 1) | `const_q` (C,) codes | its encoding: given, or the min-max encoding of its values |
| norm (group / layer norm without its affine) | as the norm with weight 1, bias 0 | `prepare_group_norm` / `prepare_layer_norm` |
| requant (rescale by 1 after an op) | `requant.multiplier`, `requant.shift` | `s_part / s_out` |

A constant c with an encoding is used as its quantize-dequantize value. A softmax whose
output encoding is given and differs from the fixed one (`follow_softmax`) is prepared as a
16-bit softmax (scale 2**-16) requantized to the given encoding (`multiplier`, `shift`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import TinySDError
from ..fixedpoint import accumulator_shift, quantize_multiplier
from ..fixedpoint import quantize as host_quantize
from ..kernels import ADD_LEFT_SHIFT, weight_bound
from ..kernels.conv import conv_output_size, normalize_padding, normalize_stride
from ..kernels.gemm import CENTRED_BOUND
from ..kernels.norm import prepare_group_norm, prepare_layer_norm
from ..kernels.softmax import make_exp_table, softmax_output_encoding
from ..kernels.tables import make_table
from ..interp.names import COMPUTING_OPS, OpNames, positional_name
from ..interp.parts import NOT_COMPUTED, PARTS, READER_INPUT_OPS, SQRT2, TIME_INPUT, TIME_PARTS, const_name, part_tensor
from .encodings import Encoding
from .model import ACTIVATION_BITS, NETWORKS, PRECISIONS, QuantizedNetwork
from .observers import encoding_from_range
from .weights import quantize_bias, quantize_weight

log = logging.getLogger(__name__)

MULTIPLIER_MIN_REAL = 2.0**-32  # below: multiplier 0
MULTIPLIER_MAX_REAL = 2.0**30
#: Longest softmax row (keys) a prepared `probs @ v` matmul accepts: 2**20 tokens (VAE mid-block
#: attention of a 8192 x 8192 image). Its acc_shift: 0 for w8a8, 6 for w8a16.
MAX_TOKENS = 2**20
_MAX_LISTED = 8


# ---------------------------------------------------------------------------------------------
# encodings
# ---------------------------------------------------------------------------------------------
def encodings_from_ranges(ranges: Mapping[str, tuple[float, float]], precision: str) -> dict[str, Encoding]:
    """{tensor name: Encoding}: each (min, max) range as an asymmetric uint8 (w8a8) or uint16 (w8a16)
    per-tensor encoding, by `encoding_from_range` (AIMET's rules)."""
    bits = _bits(precision)
    return {name: encoding_from_range(lo, hi, bits) for name, (lo, hi) in ranges.items()}


def softmax_encoding(bits: int) -> Encoding:
    """The fixed softmax output encoding: scale 2**-bits, zero point 0, asymmetric."""
    scale, zp = softmax_output_encoding(bits)
    return Encoding(bitwidth=bits, scale=[scale], offset=[-zp], is_symmetric=False)


def quantize_activation(enc: Encoding, x, bits: int) -> np.ndarray:
    """Host float -> activation codes on the unsigned grid of a per-tensor encoding (spec §5).

    `tinysd.fixedpoint.quantize`: q = clip(floor(x / scale + 0.5) + zp, 0, 2**bits - 1) in float64,
    zp = -offset; uint8 (bits 8) or uint16 (bits 16). The only float -> int step of an integer
    network (its inputs; at preparation, embedding tables).
    """
    q = host_quantize(x, float(enc.scale[0]), int(enc.zero_point[0]), 0, 2**bits - 1)
    return q.astype(np.uint8 if bits == 8 else np.uint16, copy=False)


def _bits(precision: str) -> int:
    if precision not in PRECISIONS:
        raise TinySDError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return ACTIVATION_BITS[precision]


# ---------------------------------------------------------------------------------------------
# multipliers and accumulator shifts
# ---------------------------------------------------------------------------------------------
def multipliers(real, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, shift) int32 arrays of `quantize_multiplier(real)`, elementwise (float64 reals >= 0).

    Reals below 2**-32 give (0, 0); reals >= 2**30 or not finite raise TinySDError naming `what`.
    """
    r = np.atleast_1d(np.asarray(real, dtype=np.float64))
    if not np.all(np.isfinite(r)) or np.any(r < 0) or np.any(r >= MULTIPLIER_MAX_REAL):
        bad = r[~(np.isfinite(r) & (r >= 0) & (r < MULTIPLIER_MAX_REAL))][0]
        raise TinySDError(f"{what}: rescale factor {bad!r} cannot be a requantization multiplier "
                          f"(must be in [0, 2**30))")
    m = np.zeros(r.shape, np.int32)
    s = np.zeros(r.shape, np.int32)
    ok = r >= MULTIPLIER_MIN_REAL
    if np.any(ok):
        m[ok], s[ok] = quantize_multiplier(r[ok])
    return m, s


def softmax_row_sum_bound(bits: int, t: int, scale: float | None = None) -> int:
    """2**bits + t: an upper bound on the sum of one row of `kernels.softmax` outputs (t entries).

    With `scale` (a softmax output encoding with zero point 0 given by a file: a 16-bit softmax
    requantized to `scale`, docs/arithmetic.md section 4.11) the bound is
    ceil((2**16 + t) / (2**16 scale) (1 + 2**-29)) + t + 1: each requantized code is at most
    y16 2**-16 / scale (1 + 2**-30) + 1 (one rounding, the multiplier's relative error), and
    the 16-bit outputs y16 of a row sum to at most 2**16 + t (below).

    Proof (docs/arithmetic.md §6.2 notation; n = L - 1 - bits >= 14, S >= 2**(L-1)):
    out_j <= y_j = floor((srdhm(e_j, R) + 2**(n-1)) / 2**n) <= e_j R / 2**(31+n) + 2**-(n+1) + 1/2.
    R <= 2**61 / s31 and s31 > S / 2**(L-31) - 1 give S R < 2**(L+30) / (1 - 2**-30), so
    sum_j e_j R / 2**(31+n) = S R / 2**(31+n) < 2**bits / (1 - 2**-30) < 2**bits + 2**-13, and
    sum_j out_j < 2**bits + 2**-13 + t (1/2 + 2**-15) <= 2**bits + t. Masked entries are 0.
    """
    if scale is not None and scale != 2.0**-bits:
        return math.ceil((2**16 + int(t)) / (2**16 * scale) * (1 + 2**-29)) + int(t) + 1
    return 2**bits + int(t)


def requant_arrays(real, bound, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(multiplier, shift, acc_shift) int32 arrays for reals `real` (per channel or (1,)).

    acc_shift = accumulator_shift(bound) for the proven bound on |acc| (int or int64 array);
    multiplier/shift encode real * 2**acc_shift.
    """
    r = np.atleast_1d(np.asarray(real, dtype=np.float64))
    n = np.broadcast_to(np.atleast_1d(np.asarray(accumulator_shift(np.asarray(bound, dtype=np.int64)),
                                                 dtype=np.int64)), r.shape)
    m, s = multipliers(r * np.exp2(n.astype(np.float64)), what)
    return m, s, n.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# the preparation interpreter
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PTensor:
    """A tensor of the preparation pass: its shape and the name of the activation encoding it has."""

    shape: tuple
    enc: str


@dataclass(frozen=True)
class _Act:
    scale: float
    zp: int


def _i32(v) -> np.ndarray:
    return np.atleast_1d(np.asarray(v)).astype(np.int32)


class Preparer:
    """Interpreter of the ops interface that computes the integer run-time arrays (module docstring)."""

    def __init__(self, params: Mapping[str, np.ndarray], network: str, precision: str,
                 act_encodings: Mapping[str, Encoding], param_encodings: Mapping[str, Encoding] | None = None,
                 follow_softmax: bool = False):
        self.params = params
        self.network = network
        self.precision = precision
        self.bits = _bits(precision)
        self.qmax = 2**self.bits - 1
        self.act_dtype = np.dtype("uint8" if self.bits == 8 else "uint16")
        self.given = act_encodings
        self.param_given = param_encodings
        self.arrays: dict[str, np.ndarray] = {}
        self.activations: dict[str, Encoding] = {}
        self.param_encodings_used: dict[str, Encoding] = {}
        self.params_computed: list[str] = []  # weights without a given encoding (encodings from their values)
        self.problems: list[str] = []
        self.softmax_overridden: list[str] = []  # softmax outputs whose given encoding was replaced
        self.softmax_outputs: set[str] = set()
        self.follow_softmax = follow_softmax
        self._names = OpNames(network)

    # --- lookups -------------------------------------------------------------
    @property
    def ok(self) -> bool:
        """False once an encoding is missing: ops then only propagate shapes."""
        return not self.problems

    def _problem(self, msg: str) -> None:
        if msg not in self.problems:  # a tensor read by several ops is one problem
            self.problems.append(msg)

    def _act(self, tensor: str) -> _Act:
        """Scale and zero point of activation `tensor` (recorded in `activations`)."""
        enc = self.activations.get(tensor)
        if enc is None:
            enc = self.given.get(tensor)
            if enc is None:
                self._problem(f"no encoding for activation {tensor}")
                return _Act(1.0, 0)
            if enc.bitwidth != self.bits:
                self._problem(f"activation {tensor} has a {enc.bitwidth}-bit encoding, "
                              f"{self.precision} needs {self.bits}")
                return _Act(1.0, 0)
            if enc.per_channel:
                self._problem(f"activation {tensor} has a per-channel encoding (activations must be per-tensor)")
                return _Act(1.0, 0)
            self.activations[tensor] = enc
        return _Act(float(enc.scale[0]), int(enc.zero_point[0]))

    def param(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self.params[name])
        except KeyError:
            raise TinySDError(f"{self.network}: missing parameter {name}") from None

    def _has(self, name: str) -> bool:
        return name in self.params

    def _put(self, op: str, **fields) -> None:
        for k, v in fields.items():
            self.arrays[f"{op}.{k}"] = v

    # --- parts (module docstring) ------------------------------------------------------
    def _tensor(self, name: str) -> str:
        return f"{self.network}.{name}.out"

    def _parts(self, kind: str, name: str) -> tuple[str, ...]:
        """The parts of op `name` (of `kind`) whose encodings are given, in PARTS order; () = run fused."""
        t = self._tensor(name)
        return tuple(p for p in PARTS.get(kind, ())
                     if (kind, p) not in NOT_COMPUTED and part_tensor(t, p) in self.given)

    def _claim(self, name: str) -> str:
        """Claim op `name`; the tensor it computes into: its output, or its `requant` part when one is given."""
        out = self._names.claim(name)
        req = part_tensor(out, "requant")
        return req if req in self.given else out

    def _requant_step(self, name: str, y: "PTensor") -> "PTensor":
        """After an op that computed into its `requant` part: requantize it to the op's output encoding."""
        out = self._tensor(name)
        if y.enc == out:
            return y
        a_in, a_out = self._act(y.enc), self._act(out)
        if self.ok:
            m, s = multipliers(a_in.scale / a_out.scale, f"{self.network}: {name}.requant")
            self._put(f"{name}.requant", multiplier=m, shift=s)
        return PTensor(y.shape, out)

    def _input_step(self, name: str, x: "PTensor") -> "PTensor":
        """Before an op whose input the file quantizes for this reader only (its `input` part, a reader copy):
        requantize x to that part's encoding (docs/arithmetic.md section 4.11)."""
        t = part_tensor(self._tensor(name), "input")
        if t not in self.given or x.enc == t:
            return x
        a_in, a_part = self._act(x.enc), self._act(t)
        if a_in == a_part:  # the value has the copy's encoding: the step would be an identity
            return x
        if self.ok:
            m, s = multipliers(a_in.scale / a_part.scale, f"{self.network}: {name}.input")
            self._put(f"{name}.input", multiplier=m, shift=s)
        return PTensor(x.shape, t)

    def _step_out(self, name: str, part: str, final: str) -> tuple[str, str]:
        """(array prefix, output tensor) of one step: `{op}.{part}` / its part tensor, or `{op}` / `final`."""
        return (f"{name}.{part}", part_tensor(self._tensor(name), part)) if part else (name, final)

    def _const_value(self, name: str, part: str, c: float) -> float:
        """Scalar constant c of a step, quantize-dequantized with its encoding when one is given."""
        enc = self.given.get(const_name(self._tensor(name), part))
        if enc is None:
            return float(c)
        self.activations[const_name(self._tensor(name), part)] = enc
        return float(enc.dequantize(enc.quantize(np.float64(c))))

    def _step_const(self, name: str, part: str, values: np.ndarray) -> PTensor:
        """A constant operand (C,) as codes on its encoding (given, or the min-max encoding of its values)."""
        cname = const_name(self._tensor(name), part)
        v = np.asarray(values, np.float64).reshape(-1)
        enc = self.given.get(cname) or encoding_from_range(float(v.min()), float(v.max()), self.bits)
        if enc.bitwidth > self.bits or enc.per_channel:
            self._problem(f"constant {cname} has a {enc.bitwidth}-bit{' per-channel' if enc.per_channel else ''} "
                          f"encoding; {self.precision} needs a per-tensor encoding of at most {self.bits} bits")
            return PTensor(v.shape, cname)
        self.activations[cname] = enc
        q = host_quantize(v, float(enc.scale[0]), int(enc.zero_point[0]), 0, 2**enc.bitwidth - 1)
        self._put(f"{name}.{part}" if part else name, const_q=q.astype(self.act_dtype))
        return PTensor(v.shape, cname)

    def _step_table(self, fn: str, x: PTensor, name: str, part: str, final: str) -> PTensor:
        prefix, out = self._step_out(name, part, final)
        a_in, a_out = self._act(x.enc), self._act(out)
        if self.ok:
            self._put(prefix, table=make_table(fn, a_in.scale, a_in.zp, self.bits, a_out.scale, a_out.zp, self.bits))
        return PTensor(x.shape, out)

    def _step_scale(self, x: PTensor, name: str, part: str, final: str, c: float, divide: bool = False) -> PTensor:
        """x times the constant c (or divided by it) as a requantization; c is the part's constant."""
        prefix, out = self._step_out(name, part, final)
        a_in, a_out = self._act(x.enc), self._act(out)
        cq = self._const_value(name, part, c)
        if self.ok:
            real = a_in.scale / (cq * a_out.scale) if divide else cq * a_in.scale / a_out.scale
            m, s = multipliers(real, f"{self.network}: {prefix}")
            self._put(prefix, multiplier=m, shift=s)
        return PTensor(x.shape, out)

    def _step_mul(self, a: PTensor, b: PTensor, name: str, part: str, final: str) -> PTensor:
        prefix, out = self._step_out(name, part, final)
        aa, ab, ao = self._act(a.enc), self._act(b.enc), self._act(out)
        if self.ok:
            bound = CENTRED_BOUND[self.act_dtype.name] ** 2  # |(a - a_zp)(b - b_zp)|
            m, s, n = requant_arrays(aa.scale * ab.scale / ao.scale, bound, f"{self.network}: {prefix}")
            self._put(prefix, multiplier=m, shift=s, acc_shift=n)
        return PTensor(a.shape, out)

    def _step_add(self, a: PTensor, b: PTensor, name: str, part: str, final: str) -> PTensor:
        prefix, out = self._step_out(name, part, final)
        aa, ab, ao = self._act(a.enc), self._act(b.enc), self._act(out)
        if self.ok:
            self._put(prefix, **self._add_arrays(aa, ab, ao, f"{self.network}: {prefix}"))
        return PTensor(a.shape, out)

    def _add_arrays(self, aa: "_Act", ab: "_Act", ao: "_Act", what: str) -> dict:
        ls = ADD_LEFT_SHIFT[self.act_dtype.name]
        big = 2.0 * max(aa.scale, ab.scale)
        am, ash = multipliers(aa.scale / big, what)
        bm, bsh = multipliers(ab.scale / big, what)
        m, s = multipliers(big / (2.0**ls * ao.scale), what)
        return dict(a_multiplier=am, a_shift=ash, b_multiplier=bm, b_shift=bsh, multiplier=m, shift=s,
                    left_shift=_i32(ls))

    # --- weights -------------------------------------------------------------
    def _weight(self, op: str, w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(int8 weight, per-output-channel float64 scale (OUT,)) or None when its encoding is missing."""
        key = f"{self.network}.{op}.weight"
        enc = None if self.param_given is None else self.param_given.get(key)
        if enc is None:  # no given encoding: int8 symmetric per output channel from the values
            if self.param_given is not None:
                self.params_computed.append(key)
            q, enc = quantize_weight(w, axis=0, name=key)
        else:
            st = enc.storage()
            if enc.bitwidth != 8 or st.dtype != np.int8:
                self._problem(f"parameter {key}: weights need an 8-bit symmetric encoding (got {enc.bitwidth}-bit, "
                              f"{'symmetric' if enc.is_symmetric else 'asymmetric'})")
                return None
            if enc.per_channel and (enc.axis != 0 or enc.channels != w.shape[0]):
                self._problem(f"parameter {key}: per-channel encoding with {enc.channels} channels on axis {enc.axis} "
                              f"does not fit weight {tuple(w.shape)} (needs axis 0, {w.shape[0]} channels)")
                return None
            q = enc.quantize(w)
        self.param_encodings_used[key] = enc
        return q, np.broadcast_to(enc.scale, (w.shape[0],)).astype(np.float64)

    def _gemm_like(self, x: PTensor, op: str, out: str, x_dtype) -> None:
        """Arrays of linear / conv2d `op` (weight (OUT, ...)) reading x, writing tensor `out`."""
        a_in, a_out = self._act(x.enc), self._act(out)
        w = self.param(f"{op}.weight")
        wq = self._weight(op, w)
        if not self.ok or wq is None:
            return
        w_q, s_w = wq
        bias_q = None
        if self._has(f"{op}.bias"):
            key = f"{self.network}.{op}.bias"
            bias_q, benc = quantize_bias(self.param(f"{op}.bias"), a_in.scale, s_w, name=key)
            self.param_encodings_used[key] = benc
        real = a_in.scale * s_w / a_out.scale  # (OUT,)
        bound = weight_bound(w_q, bias_q, x_dtype)  # (OUT,) int64: |acc| over every input
        m, s, n = requant_arrays(real, bound, f"{self.network}: {op}")
        self._put(op, weight_q=np.ascontiguousarray(w_q, dtype=np.int8), multiplier=m, shift=s, acc_shift=n)
        if bias_q is not None:
            self._put(op, bias_q=bias_q.astype(np.int32))

    # --- boundary --------------------------------------------------------------
    def input(self, x, name: str) -> PTensor:
        tensor = self._names.claim_input(name)
        self._act(tensor)
        if name == TIME_INPUT:  # the timestep features' quantization points before the input, when given
            for part in TIME_PARTS:
                if part_tensor(tensor, part) in self.given:
                    self._act(part_tensor(tensor, part))
            cname = const_name(tensor, "mul")
            enc = self.given.get(cname)
            if enc is not None:
                if enc.bitwidth != self.bits or enc.per_channel:
                    self._problem(f"constant {cname} must have a per-tensor {self.bits}-bit encoding")
                else:
                    self.activations[cname] = enc
        return PTensor(tuple(np.shape(x)), tensor)

    def output(self, x: PTensor, name: str) -> np.ndarray:
        self._names.end_call()
        return np.zeros(x.shape, np.float32)

    # --- parameterised ops -------------------------------------------------------
    def embedding(self, ids, name: str) -> PTensor:
        out = self._claim(name)
        self._act(out)
        w = self.param(f"{name}.weight")  # (V, D)
        if self.ok:
            self._put(name, table_q=quantize_activation(self.activations[out], w, self.bits))
        return PTensor(tuple(np.shape(ids)) + (w.shape[1],), out)

    def linear(self, x: PTensor, name: str) -> PTensor:
        out = self._claim(name)
        w_shape = np.shape(self.param(f"{name}.weight"))  # (OUT, IN)
        if x.shape[-1] != w_shape[1]:
            raise ValueError(f"{name}: input has {x.shape[-1]} features, weight expects {w_shape[1]}")
        self._gemm_like(x, name, out, self.act_dtype)
        return PTensor(x.shape[:-1] + (w_shape[0],), out)

    def conv2d(self, x: PTensor, name: str, stride: int = 1, padding=0) -> PTensor:
        out = self._claim(name)
        o, c, kh, kw = np.shape(self.param(f"{name}.weight"))
        if x.shape[1] != c:
            raise ValueError(f"{name}: input has {x.shape[1]} channels, weight expects {c}")
        ho, wo = conv_output_size(x.shape[2], x.shape[3], kh, kw, normalize_stride(stride), normalize_padding(padding))
        self._gemm_like(x, name, out, self.act_dtype)
        return PTensor((x.shape[0], o, ho, wo), out)

    def _norm_param(self, name: str, field: str) -> np.ndarray:
        """A norm's weight or bias; quantize-dequantized (float64) with its given parameter encoding, if any."""
        v = self.param(f"{name}.{field}")
        key = f"{self.network}.{name}.{field}"
        enc = None if self.param_given is None else self.param_given.get(key)
        if enc is None:
            return v
        if enc.per_channel and (enc.axis != 0 or enc.channels != v.size):
            self._problem(f"parameter {key}: per-channel encoding with {enc.channels} channels does not fit {v.shape}")
            return v
        self.param_encodings_used[key] = enc
        return enc.dequantize(enc.quantize(np.asarray(v, np.float64)))

    def _norm(self, prepare, x: PTensor, name: str, eps: float, kind: str) -> PTensor:
        out = self._claim(name)
        if self._parts(kind, name):  # normalized value, times weight, plus bias (module docstring)
            gamma, beta = self._norm_param(name, "weight"), self._norm_param(name, "bias")
            n_t = part_tensor(self._tensor(name), "norm")
            a_in, a_n = self._act(x.enc), self._act(n_t)
            if self.ok:
                ones, zeros = np.ones(gamma.shape), np.zeros(beta.shape)
                p = prepare(ones, zeros, eps, a_in.scale, a_in.zp, self.bits, a_n.scale, a_n.zp, self.bits)
                self._put(f"{name}.norm", eps_fx=np.array([p.eps_fx], np.int64), gamma_multiplier=p.gamma_multiplier,
                          gamma_shift=p.gamma_shift, beta_fx=p.beta_fx)
            m = self._step_mul(PTensor(x.shape, n_t), self._step_const(name, "mul", gamma), name, "mul", out)
            return PTensor(x.shape, self._step_add(m, self._step_const(name, "", beta), name, "", out).enc)
        a_in, a_out = self._act(x.enc), self._act(out)
        if self.ok:
            p = prepare(self._norm_param(name, "weight"), self._norm_param(name, "bias"), eps, a_in.scale, a_in.zp,
                        self.bits, a_out.scale, a_out.zp, self.bits)
            self._put(name, eps_fx=np.array([p.eps_fx], np.int64), gamma_multiplier=p.gamma_multiplier,
                      gamma_shift=p.gamma_shift, beta_fx=p.beta_fx)
        return PTensor(x.shape, out)

    def group_norm(self, x: PTensor, name: str, groups: int, eps: float) -> PTensor:
        return self._norm(prepare_group_norm, x, name, eps, "group_norm")

    def layer_norm(self, x: PTensor, name: str, eps: float) -> PTensor:
        return self._norm(prepare_layer_norm, x, name, eps, "layer_norm")

    # --- elementwise / reductions ----------------------------------------------
    def _table(self, fn: str, x: PTensor, name: str) -> PTensor:
        out = self._claim(name)
        a_in, a_out = self._act(x.enc), self._act(out)
        if self.ok:
            self._put(name, table=make_table(fn, a_in.scale, a_in.zp, self.bits, a_out.scale, a_out.zp, self.bits))
        return PTensor(x.shape, out)

    def _sigmoid_gate(self, x: PTensor, name: str, factor: float | None) -> PTensor:
        """x * sigmoid(x) (silu) or x * sigmoid(factor x) (quick_gelu) as parts."""
        out = self._claim(name)
        g = self._step_scale(x, name, "scaled", out, factor) if factor is not None else x
        s = self._step_table("sigmoid", g, name, "sigmoid", out)
        return self._step_mul(x, s, name, "", out)

    def silu(self, x, name):
        if self._parts("silu", name):
            return self._sigmoid_gate(x, name, None)
        return self._table("silu", x, name)

    def gelu(self, x, name):
        if self._parts("gelu", name):  # x / sqrt 2 -> erf -> + 1 -> x * . -> * 0.5
            out = self._claim(name)
            d = self._step_scale(x, name, "div", out, SQRT2, divide=True)
            e = self._step_table("erf", d, name, "erf", out)
            a = self._step_add(e, self._step_const(name, "add", np.array([1.0])), name, "add", out)
            m = self._step_mul(x, a, name, "mul", out)
            return self._step_scale(m, name, "", out, 0.5)
        return self._table("gelu", x, name)

    def quick_gelu(self, x, name):
        if self._parts("quick_gelu", name):
            return self._sigmoid_gate(x, name, 1.702)
        return self._table("quick_gelu", x, name)

    def softmax(self, x: PTensor, name: str, causal: bool = False) -> PTensor:
        out = self._claim(name)
        a_in = self._act(x.enc)
        fixed = softmax_encoding(self.bits)
        given = self.given.get(out)
        follow = self.follow_softmax and given is not None and given != fixed
        if given is not None and given != fixed and not follow:
            self.softmax_overridden.append(out)
        self.softmax_outputs.add(out)
        if not follow:
            self.activations[out] = fixed
            if self.ok:
                self._put(name, exp_table=make_exp_table(a_in.scale, self.bits))
            return PTensor(x.shape, out)
        a_out = self._act(out)  # the given encoding: a 16-bit softmax, requantized to it
        if self.ok:
            m, s = multipliers(softmax_output_encoding(16)[0] / a_out.scale, f"{self.network}: {name}")
            self._put(name, exp_table=make_exp_table(a_in.scale, self.bits), multiplier=m, shift=s)
        return PTensor(x.shape, out)

    def matmul(self, a: PTensor, b: PTensor, name: str, alpha: float = 1.0) -> PTensor:
        out = self._claim(name)
        if not alpha > 0:
            raise ValueError(f"{name}: matmul alpha must be > 0, got {alpha}")
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"{name}: shapes {a.shape} and {b.shape} do not multiply")
        parts = self._parts("matmul", name)
        prefix, into = name, out
        if "a_scaled" in parts:  # operands scaled first: sqrt(alpha) each, or alpha on `a` alone
            c = math.sqrt(alpha) if "b_scaled" in parts else float(alpha)
            a = self._step_scale(a, name, "a_scaled", out, c)
            if "b_scaled" in parts:
                b = self._step_scale(b, name, "b_scaled", out, c)
            alpha = 1.0
        elif "product" in parts:  # the product, then the scale
            prefix, into = self._step_out(name, "product", out)
        aa, ab, ao = self._act(a.enc), self._act(b.enc), self._act(into)
        if self.ok:
            real = (1.0 if "product" in parts else float(alpha)) * aa.scale * ab.scale / ao.scale
            b_bound = CENTRED_BOUND[self.act_dtype.name]
            if a.enc in self.softmax_outputs and aa.zp == 0:  # probs @ v: row sums of `a` are bounded
                max_k = MAX_TOKENS
                bound = softmax_row_sum_bound(self.bits, max_k, aa.scale) * b_bound
            else:  # K fixed by the weights (the head dimension of q @ k^T)
                max_k = a.shape[-1]
                bound = max_k * b_bound * CENTRED_BOUND[self.act_dtype.name]
            m, s, n = requant_arrays(real, bound, f"{self.network}: {prefix}")
            self._put(prefix, multiplier=m, shift=s, acc_shift=n, max_k=np.array([max_k], np.int64))
        shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        if "product" in parts:
            return self._step_scale(PTensor(shape, into), name, "", out, alpha)
        return PTensor(shape, out)

    def add(self, a: PTensor, b: PTensor, name: str) -> PTensor:
        out = self._claim(name)
        aa, ab, ao = self._act(a.enc), self._act(b.enc), self._act(out)
        if self.ok:
            self._put(name, **self._add_arrays(aa, ab, ao, f"{self.network}: {name}"))
        return PTensor(np.broadcast_shapes(a.shape, b.shape), out)

    def mul(self, a: PTensor, b: PTensor, name: str) -> PTensor:
        out = self._claim(name)
        aa, ab, ao = self._act(a.enc), self._act(b.enc), self._act(out)
        if self.ok:
            bound = CENTRED_BOUND[self.act_dtype.name] ** 2  # |(a - a_zp)(b - b_zp)|
            m, s, n = requant_arrays(aa.scale * ab.scale / ao.scale, bound, f"{self.network}: {name}")
            self._put(name, multiplier=m, shift=s, acc_shift=n)
        return PTensor(np.broadcast_shapes(a.shape, b.shape), out)

    def scale(self, x: PTensor, factor: float, name: str) -> PTensor:
        out = self._claim(name)
        a_in, a_out = self._act(x.enc), self._act(out)
        if not factor > 0:
            raise ValueError(f"{name}: scale factor must be > 0, got {factor}")
        if self.ok:
            m, s = multipliers(float(factor) * a_in.scale / a_out.scale, f"{self.network}: {name}")
            self._put(name, multiplier=m, shift=s)
        return PTensor(x.shape, out)

    def concat(self, xs: Sequence[PTensor], axis: int, name: str) -> PTensor:
        out = self._claim(name)
        ins = [self._act(x.enc) for x in xs]
        a_out = self._act(out)
        if self.ok:
            m, s = multipliers(np.array([a.scale / a_out.scale for a in ins]), f"{self.network}: {name}")
            self._put(name, multipliers=m, shifts=s)
        ref = list(xs[0].shape)
        ax = axis % len(ref)
        ref[ax] = sum(x.shape[ax] for x in xs)
        return PTensor(tuple(ref), out)

    def upsample_nearest2x(self, x: PTensor, name: str) -> PTensor:
        out = self._claim(name)
        a_in, a_out = self._act(x.enc), self._act(out)
        if self.ok and (a_in.scale != a_out.scale or a_in.zp != a_out.zp):
            m, s = multipliers(a_in.scale / a_out.scale, f"{self.network}: {name}")
            self._put(name, multiplier=m, shift=s)
        n, c, h, w = x.shape
        return PTensor((n, c, 2 * h, 2 * w), out)

    # --- layout -------------------------------------------------------------------
    def reshape(self, x: PTensor, shape) -> PTensor:
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != math.prod(x.shape):
            raise ValueError(f"reshape: cannot reshape {x.shape} to {shape}")
        return PTensor(shape, x.enc)

    def transpose(self, x: PTensor, axes) -> PTensor:
        return PTensor(tuple(x.shape[a] for a in axes), x.enc)

    def split(self, x: PTensor, sections: int, axis: int) -> list[PTensor]:
        shape = list(x.shape)
        ax = axis % len(shape)
        if shape[ax] % sections:
            raise ValueError(f"split: axis {axis} of {x.shape} does not split into {sections}")
        shape[ax] //= sections
        return [PTensor(tuple(shape), x.enc) for _ in range(sections)]


def _with_requant(op: str):
    base = getattr(Preparer, op)

    def method(self, *args, **kwargs):
        name = kwargs["name"] if "name" in kwargs else positional_name(op, args)
        return self._requant_step(name, base(self, *args, **kwargs))

    method.__name__, method.__doc__ = op, base.__doc__
    return method


for _op in COMPUTING_OPS:
    if _op != "embedding":
        setattr(Preparer, _op, _with_requant(_op))
del _op


def _with_input(op: str):
    base = getattr(Preparer, op)

    def method(self, x, *args, **kwargs):
        name = kwargs["name"] if "name" in kwargs else positional_name(op, (x,) + args)
        return base(self, self._input_step(name, x), *args, **kwargs)

    method.__name__, method.__doc__ = op, base.__doc__
    return method


for _op in READER_INPUT_OPS:
    setattr(Preparer, _op, _with_input(_op))
del _op


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:_MAX_LISTED])
    return shown + (f"; ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def run_graph(model, ops, network: str, include_encoder: bool = True) -> None:
    """Run `model`'s graph once on `ops` with the smallest valid dummy host inputs (zeros).

    text_encoder: ids (1, 1); unet: sample (1, in, f, f), f = 2**(blocks - 1); vae: decode a
    (1, latent, 1, 1) latent and, when `include_encoder`, encode a (1, in, f, f) image.
    """
    cfg = model.cfg
    if network == "text_encoder":
        model(ops, np.zeros((1, 1), np.int64))
    elif network == "unet":
        f = 2 ** (len(cfg.block_out_channels) - 1)
        sample = np.zeros((1, cfg.in_channels, f, f), np.float32)
        feats = np.zeros((1, cfg.block_out_channels[0]), np.float32)
        ctx = np.zeros((1, 1, cfg.cross_attention_dim), np.float32)
        cond = np.zeros((1, cfg.time_cond_proj_dim), np.float32) if cfg.time_cond_proj_dim else None
        model(ops, sample, feats, ctx, cond)
    elif network == "vae":
        model.decode(ops, np.zeros((1, cfg.latent_channels, 1, 1), np.float32))
        if include_encoder:
            f = 2 ** (len(cfg.block_out_channels) - 1)
            model.encode(ops, np.zeros((1, cfg.in_channels, f, f), np.float32))
    else:
        raise ValueError(f"network: unknown network {network!r}")


def quantize_network(model, float_params: Mapping[str, np.ndarray], network: str, precision: str,
                     act_encodings: Mapping[str, Encoding],
                     param_encodings: Mapping[str, Encoding] | None = None,
                     follow_softmax: bool = False) -> QuantizedNetwork:
    """Prepare the integer form of one network (see the module docstring).

    model: the graph (`CLIPTextModel`, `UNet2DConditionModel` or `AutoencoderKL` of tinysd.nn);
    float_params: its float parameters by diffusers name; network: "text_encoder", "unet" or
    "vae"; precision: "w8a8" or "w8a16"; act_encodings: {`{network}.{op}.out` / `{network}.{input}`:
    Encoding}; param_encodings: {`{network}.{parameter}`: Encoding} to quantize weights with
    (None: per-channel weights from the float values). For the VAE, the encoder is prepared
    only when an encoding for its input `vae.image` is given (a decoder-only file is allowed).
    follow_softmax: use given softmax output encodings (an imported file's) instead of the fixed one.
    Encodings of parts (`{network}.{op}.{part}.out`) make the op run as its parts (module docstring).
    Raises TinySDError listing every missing or unusable encoding.
    """
    if network not in NETWORKS:
        raise ValueError(f"network: unknown network {network!r}")
    prep = Preparer(float_params, network, precision, act_encodings, param_encodings, follow_softmax)
    include_encoder = network != "vae" or f"{network}.image" in act_encodings
    if not include_encoder:
        log.info("vae: no encoding for vae.image; preparing the decoder only")
    run_graph(model, prep, network, include_encoder)
    if prep.params_computed:
        log.info("%s: %d weight(s) without a given encoding are quantized per channel from their values: %s",
                 network, len(prep.params_computed), ", ".join(prep.params_computed[:_MAX_LISTED]))
    if prep.softmax_overridden:
        log.info("%s: %d softmax outputs use the fixed encoding (scale 2**-%d, zero point 0) instead of the one "
                 "given (e.g. %s)", network, len(prep.softmax_overridden), prep.bits, prep.softmax_overridden[0])
    if prep.problems:
        raise TinySDError(f"{network} ({precision}): {len(prep.problems)} encoding problem(s): "
                          f"{_listing(prep.problems)}")
    arrays = {k: prep.arrays[k] for k in sorted(prep.arrays)}
    log.info("%s: prepared %d run-time arrays for %d activations (%s)", network, len(arrays), len(prep.activations),
             precision)
    return QuantizedNetwork(network=network, precision=precision, arrays=arrays, activations=dict(prep.activations),
                            params=dict(prep.param_encodings_used))
