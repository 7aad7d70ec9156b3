"""The integer interpreter: runs a network graph with only the integer ops of docs/arithmetic.md.

Every tensor inside the network is a `QTensor`: integer codes (uint8 for w8a8,
uint16 for w8a16), their zero point, and the name of the activation tensor
whose encoding they carry. Every op takes its integer parameters from the
`QuantizedNetwork`'s arrays (`{op name}.{field}`, see `tinysd/quant/prepare.py`)
and computes with one kernel of `tinysd.kernels`:

| op | kernel |
|---|---|
| embedding | `kernels.embedding` (gather of `table_q`) |
| linear, conv2d | `kernels.linear`, `kernels.conv2d` (exact int64 accumulation, narrow, requantize) |
| matmul | `kernels.matmul` |
| group_norm, layer_norm | `kernels.norm.group_norm`, `layer_norm` |
| silu, gelu, quick_gelu | `kernels.tables.apply_table` |
| softmax | `kernels.softmax.softmax` (output scale 2**-bits, zero point 0) |
| add, mul | `kernels.add`, `kernels.mul` |
| scale | `kernels.requantize_tensor` |
| concat | `kernels.concat` |
| upsample_nearest2x | `kernels.upsample_nearest2x` (+ `requantize_tensor` when the encoding changes) |
| reshape, transpose, split | NumPy views; the encoding is kept |

The kernels are a backend object (`kernels=`, default `CPU_KERNELS`: the functions named above);
another backend with the same functions runs the same ops elsewhere (`tinysd.hvx.interp.HvxKernels`:
the HVX kernels under qemu-hexagon).

When the network was prepared with parts (`tinysd.interp.parts`: the quantization points a
device graph has inside an op, e.g. the Sigmoid of a SiLU), the op runs as its parts, one
kernel each (docs/arithmetic.md section 4.11): `_sigmoid_gate`, `_gelu_parts`,
`_norm_parts`, the scaled operands of `matmul`, the 16-bit softmax requantized to a given
output encoding, and the `requant` step after any op (`_claim` / `_out`).

There is no float arithmetic between `input` and `output`: `input` quantizes a
host float array with the input's encoding (the only float -> int step) and
`output` dequantizes (the only int -> float step). Every op refuses anything
that is not a `QTensor` of the network's activation dtype (`TypeError`), so a
float tensor cannot slip into the integer path. Token ids enter `embedding`
directly as host integers.

The copies the GEMM kernels make of int8 weights (`prepare_weight`: int8 quad-packed for the "u8"
method, int16 pair-packed for "i16", float32 for the BLAS methods of docs/arithmetic.md §3.3) are
made per call and dropped, so weights stay int8 in memory; `cache_weights=True` keeps them per op
(1x, 2x or 4x the weight memory).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from .. import kernels as K
from ..errors import TinySDError
from ..memory import ATTENTION_TILE_ELEMENTS  # scores above this many elements: `attention` tiles the queries
from ..fixedpoint import dequantize as host_dequantize
from ..kernels.norm import NormParams, group_norm, layer_norm
from ..kernels.softmax import softmax as _softmax
from ..kernels.tables import apply_table
from ..quant.model import ACTIVATION_BITS, QuantizedNetwork
from ..quant.prepare import quantize_activation
from ..interp.parts import TIME_INPUT, TIME_PARTS, const_name, device_timestep_features, part_tensor
from .names import OpNames

log = logging.getLogger(__name__)

#: The default kernel backend: tinysd.kernels on the CPU (each function bit-equal to its reference).
CPU_KERNELS = SimpleNamespace(embedding=K.embedding, linear=K.linear, conv2d=K.conv2d, group_norm=group_norm,
                              layer_norm=layer_norm, apply_table=apply_table, softmax=_softmax, matmul=K.matmul,
                              pack_matmul_right=K.pack_matmul_right,
                              add=K.add, mul=K.mul, requantize_tensor=K.requantize_tensor, concat=K.concat,
                              upsample_nearest2x=K.upsample_nearest2x)

_DTYPES = {8: np.dtype("uint8"), 16: np.dtype("uint16")}


@dataclass(frozen=True)
class QTensor:
    """Quantized activation: `real = (data - zp) * scale(enc)`.

    data: uint8 (bits 8) or uint16 (bits 16) array; zp: int zero point in [0, 2**bits - 1];
    bits: 8 or 16; enc: the activation tensor name whose encoding applies
    (`unet.conv_in.out`). Construction refuses any other data (TypeError).
    """

    data: np.ndarray
    zp: int
    bits: int
    enc: str

    def __post_init__(self):
        if self.bits not in _DTYPES:
            raise TypeError(f"QTensor {self.enc}: bits must be 8 or 16, got {self.bits!r}")
        if not isinstance(self.data, np.ndarray) or self.data.dtype != _DTYPES[self.bits]:
            got = self.data.dtype if isinstance(self.data, np.ndarray) else type(self.data).__name__
            raise TypeError(f"QTensor {self.enc}: data must be a {_DTYPES[self.bits]} array, got {got}")
        if isinstance(self.zp, bool) or not isinstance(self.zp, (int, np.integer)) or not 0 <= self.zp < 2**self.bits:
            raise TypeError(f"QTensor {self.enc}: zero point {self.zp!r} is not an integer in [0, {2**self.bits - 1}]")

    @property
    def shape(self) -> tuple:
        return self.data.shape


class IntegerInterpreter:
    """Runs a graph on integer data with the arrays of one `QuantizedNetwork`."""

    def __init__(self, qnet: QuantizedNetwork, cache_weights: bool = False, kernels=None):
        self.qnet = qnet
        self.kernels = CPU_KERNELS if kernels is None else kernels
        self.network = qnet.network
        self.bits = ACTIVATION_BITS[qnet.precision]
        self.qmax = 2**self.bits - 1
        self.cache_weights = cache_weights
        self._wsums: dict[str, np.ndarray] = {}  # op -> its weight's row sums (OUT,) int64
        self._weights: dict[str, K.PreparedWeight] = {}
        self._names = OpNames(qnet.network)
        self.attention_tile_elements = ATTENTION_TILE_ELEMENTS

    # --- lookups ----------------------------------------------------------------
    def array(self, op: str, field: str) -> np.ndarray:
        """Run-time array `{op}.{field}`; TinySDError naming it when the network lacks it."""
        try:
            return self.qnet.arrays[f"{op}.{field}"]
        except KeyError:
            raise TinySDError(f"{self.network} ({self.qnet.precision}): missing run-time array {op}.{field} "
                              f"(this part of the network was not quantized)") from None

    def _scalar(self, op: str, field: str) -> int:
        return int(self.array(op, field)[0])

    def _zp(self, tensor: str) -> int:
        try:
            enc = self.qnet.activations[tensor]
        except KeyError:
            raise TinySDError(f"{self.network} ({self.qnet.precision}): no encoding for activation {tensor} "
                              f"(this part of the network was not quantized)") from None
        return int(enc.zero_point[0])

    def _q(self, x, op: str) -> QTensor:
        """x must be a QTensor of this network's bits (TypeError otherwise: no float tensors)."""
        if not isinstance(x, QTensor):
            what = f"{x.dtype} array" if isinstance(x, np.ndarray) else type(x).__name__
            raise TypeError(f"{self.network}: {op}: the integer interpreter refuses a {what}; "
                            f"only QTensor ({_DTYPES[self.bits]}) data may enter an integer op")
        if x.bits != self.bits:
            raise TypeError(f"{self.network}: {op}: {x.bits}-bit tensor {x.enc} in a {self.qnet.precision} network")
        return x

    def _out(self, data: np.ndarray, tensor: str) -> QTensor:
        """QTensor of an op's output; an op that computed into its `requant` part is requantized to its output."""
        if tensor.endswith(".requant.out"):
            name = tensor[len(self.network) + 1:-len(".requant.out")]
            final = f"{self.network}.{name}.out"
            data = self.kernels.requantize_tensor(data, self._zp(tensor), self._scalar(f"{name}.requant", "multiplier"),
                                                  self._scalar(f"{name}.requant", "shift"), self._zp(final), 0,
                                                  self.qmax)
            tensor = final
        return QTensor(data, self._zp(tensor), self.bits, tensor)

    def _claim(self, name: str) -> str:
        """Claim op `name`; the tensor it computes into: its output, or its `requant` part when prepared so."""
        tensor = self._names.claim(name)
        return part_tensor(tensor, "requant") if f"{name}.requant.multiplier" in self.qnet.arrays else tensor

    def _reader_input(self, x: QTensor, name: str) -> QTensor:
        """The op's `input` part when prepared so: x requantized to it (requantize_tensor, spec 4.4 and 4.11)."""
        if not self._has(name, "input.multiplier"):
            return x
        t = part_tensor(f"{self.network}.{name}.out", "input")
        y = self.kernels.requantize_tensor(x.data, x.zp, self._scalar(f"{name}.input", "multiplier"),
                                           self._scalar(f"{name}.input", "shift"), self._zp(t), 0, self.qmax)
        return self._part(y, t)

    def _has(self, name: str, field: str) -> bool:
        return f"{name}.{field}" in self.qnet.arrays

    # --- parts (docs/arithmetic.md section 4.11) ------------------------------------------
    def _step_out(self, name: str, part: str, final: str) -> tuple[str, str]:
        return (f"{name}.{part}", part_tensor(f"{self.network}.{name}.out", part)) if part else (name, final)

    def _part(self, data: np.ndarray, tensor: str) -> QTensor:
        return QTensor(data, self._zp(tensor), self.bits, tensor)

    def _step_scale(self, x: QTensor, name: str, part: str, final: str) -> QTensor:
        """x times a constant: requantize_tensor with the step's multiplier (spec 4.4)."""
        prefix, out = self._step_out(name, part, final)
        y = self.kernels.requantize_tensor(x.data, x.zp, self._scalar(prefix, "multiplier"),
                                           self._scalar(prefix, "shift"), self._zp(out), 0, self.qmax)
        return self._part(y, out)

    def _step_table(self, x: QTensor, name: str, part: str, final: str) -> QTensor:
        prefix, out = self._step_out(name, part, final)
        return self._part(self.kernels.apply_table(x.data, self.array(prefix, "table")), out)

    def _step_mul(self, a: QTensor, b: QTensor, name: str, part: str, final: str) -> QTensor:
        prefix, out = self._step_out(name, part, final)
        y = self.kernels.mul(a.data, a.zp, b.data, b.zp, self._scalar(prefix, "multiplier"),
                             self._scalar(prefix, "shift"), self._zp(out), 0, self.qmax,
                             acc_shift=self._scalar(prefix, "acc_shift"))
        return self._part(y, out)

    def _step_add(self, a: QTensor, b: QTensor, name: str, part: str, final: str) -> QTensor:
        prefix, out = self._step_out(name, part, final)
        s = lambda f: self._scalar(prefix, f)  # noqa: E731
        y = self.kernels.add(a.data, a.zp, s("a_multiplier"), s("a_shift"), b.data, b.zp, s("b_multiplier"),
                             s("b_shift"), s("multiplier"), s("shift"), self._zp(out), 0, self.qmax,
                             left_shift=s("left_shift"))
        return self._part(y, out)

    def _step_const(self, name: str, part: str, shape: tuple) -> QTensor:
        """A constant operand's stored codes `{op}[.{part}].const_q`, shaped to broadcast as `shape`."""
        cname = const_name(f"{self.network}.{name}.out", part)
        q = self.array(f"{name}.{part}" if part else name, "const_q")
        return QTensor(q.reshape(shape), self._zp(cname), self.bits, cname)

    def _sigmoid_gate(self, x: QTensor, name: str, tensor: str, scaled: bool) -> QTensor:
        """SiLU / quick_gelu as parts: [scaled = 1.702 x], sigmoid table, x * sigmoid (mul)."""
        g = self._step_scale(x, name, "scaled", tensor) if scaled else x
        return self._step_mul(x, self._step_table(g, name, "sigmoid", tensor), name, "", tensor)

    def _gelu_parts(self, x: QTensor, name: str, tensor: str) -> QTensor:
        """GELU as parts: x / sqrt 2, erf table, + 1 (add with the constant), x * (1 + erf), * 0.5."""
        d = self._step_scale(x, name, "div", tensor)
        e = self._step_table(d, name, "erf", tensor)
        a = self._step_add(e, self._step_const(name, "add", (1,) * e.data.ndim), name, "add", tensor)
        m = self._step_mul(x, a, name, "mul", tensor)
        return self._step_scale(m, name, "", tensor)

    def _norm_parts(self, x: QTensor, name: str, tensor: str, norm, per_channel_shape: tuple) -> QTensor:
        """Group / layer norm as parts: the norm with weight 1 and bias 0, times the weight, plus the bias."""
        n_t = part_tensor(tensor, "norm")
        n = self._part(norm(x.data, self._norm_params(f"{name}.norm")), n_t)
        m = self._step_mul(n, self._step_const(name, "mul", per_channel_shape), name, "mul", tensor)
        return self._step_add(m, self._step_const(name, "", per_channel_shape), name, "", tensor)

    def _weight(self, op: str):
        """The op's prepared weight: kept whole with cache_weights, else made per call around the row sums kept
        per op (OUT int64; recomputing them is a pass over the int8 weight, 0.3 s of an SD 1.5 UNet step)."""
        w = self._weights.get(op)
        if w is None:
            q, wsum = self.array(op, "weight_q"), self._wsums.get(op)
            w = K.prepare_weight(q) if wsum is None else K.PreparedWeight(q, wsum)
            if self.cache_weights:
                self._weights[op] = w
            else:
                self._wsums[op] = w.wsum
        return w

    def _bias(self, op: str):
        return self.qnet.arrays.get(f"{op}.bias_q")

    # --- network boundary ---------------------------------------------------------
    def input(self, x, name: str) -> QTensor:
        """Quantize host float array x with the encoding of `{network}.{name}` (spec §5: half up, clip)."""
        tensor = self._names.claim_input(name)
        self._zp(tensor)
        q = quantize_activation(self.qnet.activations[tensor], x, self.bits)
        return self._out(q, tensor)

    def timestep_features(self, t, batch: int, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> np.ndarray:
        """The host features of the `time_proj` input: `device_timestep_features` with the encodings of
        the timestep features' parts this network has (from a device graph's file), else the float ones."""
        tensor = f"{self.network}.{TIME_INPUT}"
        encs = {p: self.qnet.activations[part_tensor(tensor, p)] for p in TIME_PARTS
                if part_tensor(tensor, p) in self.qnet.activations}
        if const_name(tensor, "mul") in self.qnet.activations:
            encs["const"] = self.qnet.activations[const_name(tensor, "mul")]
        return device_timestep_features(t, batch, dim, flip_sin_to_cos, freq_shift, encs)

    def output(self, x, name: str) -> np.ndarray:
        """Dequantize (spec §5): float32((data - zp) * scale) with the tensor's encoding, in float64 first."""
        x = self._q(x, f"output {name}")
        self._names.end_call()
        enc = self.qnet.activations[x.enc]
        return host_dequantize(x.data, float(enc.scale[0]), x.zp).astype(np.float32)

    # --- parameterised ops -----------------------------------------------------------
    def embedding(self, ids, name: str) -> QTensor:
        tensor = self._names.claim(name)
        ids = np.asarray(ids)
        table = self.array(name, "table_q")
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise TinySDError(f"{self.network}: {name}: index out of range 0..{table.shape[0] - 1}")
        return self._out(self.kernels.embedding(ids, table), tensor)

    def linear(self, x, name: str) -> QTensor:
        x = self._reader_input(self._q(x, name), name)
        tensor = self._claim(name)
        y = self.kernels.linear(x.data, x.zp, self._weight(name), self._bias(name), self.array(name, "multiplier"),
                     self.array(name, "shift"), self._zp(tensor), 0, self.qmax, acc_shift=self.array(name, "acc_shift"))
        return self._out(y, tensor)

    def conv2d(self, x, name: str, stride: int = 1, padding=0) -> QTensor:
        x = self._reader_input(self._q(x, name), name)
        tensor = self._claim(name)
        y = self.kernels.conv2d(x.data, x.zp, self._weight(name), self._bias(name), self.array(name, "multiplier"),
                     self.array(name, "shift"), self._zp(tensor), 0, self.qmax, stride=stride, padding=padding,
                     acc_shift=self.array(name, "acc_shift"))
        return self._out(y, tensor)

    def _norm_params(self, name: str) -> NormParams:
        return NormParams(int(self.array(name, "eps_fx")[0]), self.array(name, "gamma_multiplier"),
                          self.array(name, "gamma_shift"), self.array(name, "beta_fx"), self.bits, self.bits)

    def group_norm(self, x, name: str, groups: int, eps: float) -> QTensor:
        x = self._reader_input(self._q(x, name), name)
        tensor = self._claim(name)
        if self._has(name, "norm.eps_fx"):
            shape = (x.shape[1],) + (1,) * (x.data.ndim - 2)  # (C, 1, 1): broadcast over (B, C, H, W)
            y = self._norm_parts(x, name, tensor, lambda q, p: self.kernels.group_norm(q, groups, p), shape)
            return self._out(y.data, tensor)
        return self._out(self.kernels.group_norm(x.data, groups, self._norm_params(name)), tensor)

    def layer_norm(self, x, name: str, eps: float) -> QTensor:
        x = self._reader_input(self._q(x, name), name)
        tensor = self._claim(name)
        if self._has(name, "norm.eps_fx"):
            return self._out(self._norm_parts(x, name, tensor, self.kernels.layer_norm, (x.shape[-1],)).data, tensor)
        return self._out(self.kernels.layer_norm(x.data, self._norm_params(name)), tensor)

    # --- elementwise / reductions ---------------------------------------------------
    def _table(self, x, name: str, parts=None) -> QTensor:
        """The op's table, or (parts = (first part, its array field), when prepared so) its parts."""
        x = self._q(x, name)
        tensor = self._claim(name)
        if parts is not None and self._has(name, parts[1]):
            if parts[0] == "div":
                return self._out(self._gelu_parts(x, name, tensor).data, tensor)
            return self._out(self._sigmoid_gate(x, name, tensor, scaled=parts[0] == "scaled").data, tensor)
        return self._out(self.kernels.apply_table(x.data, self.array(name, "table")), tensor)

    def silu(self, x, name: str) -> QTensor:
        return self._table(x, name, ("sigmoid", "sigmoid.table"))

    def gelu(self, x, name: str) -> QTensor:
        return self._table(x, name, ("div", "div.multiplier"))

    def quick_gelu(self, x, name: str) -> QTensor:
        return self._table(x, name, ("scaled", "scaled.multiplier"))

    def softmax(self, x, name: str, causal: bool = False) -> QTensor:
        """Softmax (spec 6.2) at the fixed output encoding, or, when the network follows a given output
        encoding, a 16-bit softmax requantized to it (spec 4.11)."""
        x = self._q(x, name)
        return self._softmax_into(x, name, self._claim(name), causal)

    def _softmax_into(self, x: QTensor, name: str, tensor: str, causal: bool) -> QTensor:
        """The computation of `softmax` once op `name` has claimed `tensor`."""
        if self._has(name, "multiplier"):
            y = self.kernels.softmax(x.data, self.array(name, "exp_table"), out_bits=16, causal=causal)
            y = self.kernels.requantize_tensor(y, 0, self._scalar(name, "multiplier"), self._scalar(name, "shift"),
                                               self._zp(tensor), 0, self.qmax)
            return self._out(y, tensor)
        y = self.kernels.softmax(x.data, self.array(name, "exp_table"), out_bits=self.bits, causal=causal)
        return self._out(y, tensor)

    def matmul(self, a, b, name: str, alpha: float = 1.0) -> QTensor:
        a, b = self._q(a, name), self._q(b, name)
        tensor = self._claim(name)
        return self._matmul_into(a, self._scaled_b(b, name, tensor), name, tensor)

    def _scaled_b(self, b: QTensor, name: str, tensor: str) -> QTensor:
        """matmul's right operand, scaled first when prepared so (spec 4.11: only with a scaled left operand)."""
        if self._has(name, "a_scaled.multiplier") and self._has(name, "b_scaled.multiplier"):
            return self._step_scale(b, name, "b_scaled", tensor)
        return b

    def _matmul_into(self, a: QTensor, b: QTensor, name: str, tensor: str, b_packed=None) -> QTensor:
        """The computation of `matmul` once op `name` has claimed `tensor` and b is `_scaled_b` (b_packed: b's
        data packed by the backend's `pack_matmul_right`, or None)."""
        if self._has(name, "a_scaled.multiplier"):  # operands scaled first (spec 4.11)
            a = self._step_scale(a, name, "a_scaled", tensor)
        product = self._has(name, "product.multiplier")
        prefix, into = self._step_out(name, "product", tensor) if product else (name, tensor)
        max_k = int(self.array(prefix, "max_k")[0])
        if a.shape[-1] > max_k:
            raise TinySDError(f"{self.network}: {name}: reduction length {a.shape[-1]} exceeds the {max_k} its "
                              f"accumulator shift was proven for (input too large for this quantized model)")
        packed = {} if b_packed is None else {"b_packed": b_packed}
        y = self.kernels.matmul(a.data, a.zp, b.data, b.zp, self._scalar(prefix, "multiplier"),
                                self._scalar(prefix, "shift"), self._zp(into), 0, self.qmax,
                                acc_shift=self._scalar(prefix, "acc_shift"), **packed)
        if product:
            y = self._step_scale(self._part(y, into), name, "", tensor).data
        return self._out(y, tensor)

    def attention(self, q, k, v, name: str, alpha: float = 1.0, causal: bool = False) -> QTensor:
        """Ops `{name}.scores` = matmul(q, k, alpha), `{name}.probs` = softmax, `{name}.context` = matmul(probs, v),
        computed in tiles of query rows when the scores have more than `attention_tile_elements` elements.

        q (B, H, T, d), k (B, H, d, S), v (B, H, S, d) -> (B, H, T, d). Every row of the scores, of the
        probabilities and of the context depends only on the same query row (the matmul requantization is
        elementwise, softmax is row-wise), so the integers are those of the untiled ops; only one tile of
        scores and probabilities (and its int64 / float work buffers) is alive at a time. Untiled when causal
        (the mask is indexed by the row) or when a subclass overrides `matmul` / `softmax`.
        """
        B, H, T, _ = q.shape
        S = k.shape[-1]
        rows = max(1, self.attention_tile_elements // max(1, B * H * S))
        own = type(self).matmul is IntegerInterpreter.matmul and type(self).softmax is IntegerInterpreter.softmax
        if causal or rows >= T or not own:
            scores = self.matmul(q, k, f"{name}.scores", alpha=alpha)
            return self.matmul(self.softmax(scores, f"{name}.probs", causal=causal), v, f"{name}.context")
        q, k, v = (self._q(x, name) for x in (q, k, v))
        names = (f"{name}.scores", f"{name}.probs", f"{name}.context")
        t_scores, t_probs, t_ctx = (self._claim(n) for n in names)
        k, v = self._scaled_b(k, names[0], t_scores), self._scaled_b(v, names[2], t_ctx)
        pack = getattr(self.kernels, "pack_matmul_right", None)  # k and v packed once for all tiles
        kp, vp = (pack(x.data, x.zp) for x in (k, v)) if pack else (None, None)
        out = None
        for r0 in range(0, T, rows):
            qt = QTensor(q.data[:, :, r0:r0 + rows], q.zp, q.bits, q.enc)  # (B, H, rows, d)
            p = self._softmax_into(self._matmul_into(qt, k, names[0], t_scores, kp), names[1], t_probs, False)
            c = self._matmul_into(p, v, names[2], t_ctx, vp)  # (B, H, rows, d)
            if out is None:
                out = np.empty(c.shape[:2] + (T,) + c.shape[3:], dtype=c.data.dtype)  # (B, H, T, d)
            out[:, :, r0:r0 + rows] = c.data
        return QTensor(out, c.zp, c.bits, c.enc)

    def add(self, a, b, name: str) -> QTensor:
        a, b = self._q(a, name), self._q(b, name)
        tensor = self._claim(name)
        s = lambda f: self._scalar(name, f)  # noqa: E731
        y = self.kernels.add(a.data, a.zp, s("a_multiplier"), s("a_shift"), b.data, b.zp, s("b_multiplier"),
                             s("b_shift"), s("multiplier"), s("shift"), self._zp(tensor), 0, self.qmax,
                             left_shift=s("left_shift"))
        return self._out(y, tensor)

    def mul(self, a, b, name: str) -> QTensor:
        a, b = self._q(a, name), self._q(b, name)
        tensor = self._claim(name)
        y = self.kernels.mul(a.data, a.zp, b.data, b.zp, self._scalar(name, "multiplier"), self._scalar(name, "shift"),
                  self._zp(tensor), 0, self.qmax, acc_shift=self._scalar(name, "acc_shift"))
        return self._out(y, tensor)

    def scale(self, x, factor: float, name: str) -> QTensor:
        x = self._q(x, name)
        tensor = self._claim(name)
        y = self.kernels.requantize_tensor(x.data, x.zp, self._scalar(name, "multiplier"), self._scalar(name, "shift"),
                                self._zp(tensor), 0, self.qmax)
        return self._out(y, tensor)

    def concat(self, xs: Sequence, axis: int, name: str) -> QTensor:
        xs = [self._q(x, name) for x in xs]
        tensor = self._claim(name)
        mults = [int(v) for v in self.array(name, "multipliers")]
        shifts = [int(v) for v in self.array(name, "shifts")]
        if len(mults) != len(xs):
            raise TinySDError(f"{self.network}: {name}: {len(xs)} inputs but {len(mults)} multipliers")
        y = self.kernels.concat([x.data for x in xs], [x.zp for x in xs], mults, shifts, axis, self._zp(tensor), 0,
                                self.qmax)
        return self._out(y, tensor)

    def upsample_nearest2x(self, x, name: str) -> QTensor:
        x = self._q(x, name)
        tensor = self._claim(name)
        y = self.kernels.upsample_nearest2x(x.data)
        if f"{name}.multiplier" in self.qnet.arrays:  # the output encoding differs from the input's
            y = self.kernels.requantize_tensor(y, x.zp, self._scalar(name, "multiplier"),
                                               self._scalar(name, "shift"), self._zp(tensor), 0, self.qmax)
        elif self._zp(tensor) != x.zp:
            raise TinySDError(f"{self.network}: {name}: output encoding differs from the input's but no rescale "
                              f"was prepared")
        return self._out(y, tensor)

    # --- layout ----------------------------------------------------------------------
    def reshape(self, x, shape) -> QTensor:
        x = self._q(x, "reshape")
        return QTensor(x.data.reshape(tuple(shape)), x.zp, x.bits, x.enc)

    def transpose(self, x, axes) -> QTensor:
        x = self._q(x, "transpose")
        return QTensor(np.transpose(x.data, tuple(axes)), x.zp, x.bits, x.enc)

    def split(self, x, sections: int, axis: int) -> list[QTensor]:
        x = self._q(x, "split")
        return [QTensor(p, x.zp, x.bits, x.enc) for p in np.split(x.data, sections, axis=axis)]
