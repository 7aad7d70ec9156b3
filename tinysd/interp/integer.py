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

There is no float arithmetic between `input` and `output`: `input` quantizes a
host float array with the input's encoding (the only float -> int step) and
`output` dequantizes (the only int -> float step). Every op refuses anything
that is not a `QTensor` of the network's activation dtype (`TypeError`), so a
float tensor cannot slip into the integer path. Token ids enter `embedding`
directly as host integers.

The copies the GEMM kernels make of int8 weights (`prepare_weight`: int16 pair-packed for the
default "i16" method, float32 for the BLAS methods of docs/arithmetic.md §3.3) are made per call
and dropped, so weights stay int8 in memory; `cache_weights=True` keeps them per op (2x or 4x
the weight memory).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from .. import kernels as K
from ..errors import TinySDError
from ..fixedpoint import dequantize as host_dequantize
from ..kernels.norm import NormParams, group_norm, layer_norm
from ..kernels.softmax import softmax as _softmax
from ..kernels.tables import apply_table
from ..quant.model import ACTIVATION_BITS, QuantizedNetwork
from ..quant.prepare import quantize_activation
from .names import OpNames

log = logging.getLogger(__name__)

#: The default kernel backend: tinysd.kernels on the CPU (each function bit-equal to its reference).
CPU_KERNELS = SimpleNamespace(embedding=K.embedding, linear=K.linear, conv2d=K.conv2d, group_norm=group_norm,
                              layer_norm=layer_norm, apply_table=apply_table, softmax=_softmax, matmul=K.matmul,
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
        self._weights: dict[str, K.PreparedWeight] = {}
        self._names = OpNames(qnet.network)

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
        return QTensor(data, self._zp(tensor), self.bits, tensor)

    def _weight(self, op: str):
        w = self._weights.get(op)
        if w is None:
            w = K.prepare_weight(self.array(op, "weight_q"))
            if self.cache_weights:
                self._weights[op] = w
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
        x = self._q(x, name)
        tensor = self._names.claim(name)
        y = self.kernels.linear(x.data, x.zp, self._weight(name), self._bias(name), self.array(name, "multiplier"),
                                self.array(name, "shift"), self._zp(tensor), 0, self.qmax,
                                acc_shift=self.array(name, "acc_shift"))
        return self._out(y, tensor)

    def conv2d(self, x, name: str, stride: int = 1, padding=0) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        y = self.kernels.conv2d(x.data, x.zp, self._weight(name), self._bias(name), self.array(name, "multiplier"),
                                self.array(name, "shift"), self._zp(tensor), 0, self.qmax, stride=stride,
                                padding=padding, acc_shift=self.array(name, "acc_shift"))
        return self._out(y, tensor)

    def _norm_params(self, name: str) -> NormParams:
        return NormParams(int(self.array(name, "eps_fx")[0]), self.array(name, "gamma_multiplier"),
                          self.array(name, "gamma_shift"), self.array(name, "beta_fx"), self.bits, self.bits)

    def group_norm(self, x, name: str, groups: int, eps: float) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        return self._out(self.kernels.group_norm(x.data, groups, self._norm_params(name)), tensor)

    def layer_norm(self, x, name: str, eps: float) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        return self._out(self.kernels.layer_norm(x.data, self._norm_params(name)), tensor)

    # --- elementwise / reductions ---------------------------------------------------
    def _table(self, x, name: str) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        return self._out(self.kernels.apply_table(x.data, self.array(name, "table")), tensor)

    def silu(self, x, name: str) -> QTensor:
        return self._table(x, name)

    def gelu(self, x, name: str) -> QTensor:
        return self._table(x, name)

    def quick_gelu(self, x, name: str) -> QTensor:
        return self._table(x, name)

    def softmax(self, x, name: str, causal: bool = False) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        y = self.kernels.softmax(x.data, self.array(name, "exp_table"), out_bits=self.bits, causal=causal)
        return self._out(y, tensor)

    def matmul(self, a, b, name: str, alpha: float = 1.0) -> QTensor:
        a, b = self._q(a, name), self._q(b, name)
        tensor = self._names.claim(name)
        max_k = int(self.array(name, "max_k")[0])
        if a.shape[-1] > max_k:
            raise TinySDError(f"{self.network}: {name}: reduction length {a.shape[-1]} exceeds the {max_k} its "
                              f"accumulator shift was proven for (input too large for this quantized model)")
        y = self.kernels.matmul(a.data, a.zp, b.data, b.zp, self._scalar(name, "multiplier"),
                                self._scalar(name, "shift"), self._zp(tensor), 0, self.qmax,
                                acc_shift=self._scalar(name, "acc_shift"))
        return self._out(y, tensor)

    def add(self, a, b, name: str) -> QTensor:
        a, b = self._q(a, name), self._q(b, name)
        tensor = self._names.claim(name)
        s = lambda f: self._scalar(name, f)  # noqa: E731
        y = self.kernels.add(a.data, a.zp, s("a_multiplier"), s("a_shift"), b.data, b.zp, s("b_multiplier"),
                             s("b_shift"), s("multiplier"), s("shift"), self._zp(tensor), 0, self.qmax,
                             left_shift=s("left_shift"))
        return self._out(y, tensor)

    def mul(self, a, b, name: str) -> QTensor:
        a, b = self._q(a, name), self._q(b, name)
        tensor = self._names.claim(name)
        y = self.kernels.mul(a.data, a.zp, b.data, b.zp, self._scalar(name, "multiplier"),
                             self._scalar(name, "shift"), self._zp(tensor), 0, self.qmax,
                             acc_shift=self._scalar(name, "acc_shift"))
        return self._out(y, tensor)

    def scale(self, x, factor: float, name: str) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        y = self.kernels.requantize_tensor(x.data, x.zp, self._scalar(name, "multiplier"),
                                           self._scalar(name, "shift"), self._zp(tensor), 0, self.qmax)
        return self._out(y, tensor)

    def concat(self, xs: Sequence, axis: int, name: str) -> QTensor:
        xs = [self._q(x, name) for x in xs]
        tensor = self._names.claim(name)
        mults = [int(v) for v in self.array(name, "multipliers")]
        shifts = [int(v) for v in self.array(name, "shifts")]
        if len(mults) != len(xs):
            raise TinySDError(f"{self.network}: {name}: {len(xs)} inputs but {len(mults)} multipliers")
        y = self.kernels.concat([x.data for x in xs], [x.zp for x in xs], mults, shifts, axis, self._zp(tensor), 0,
                                self.qmax)
        return self._out(y, tensor)

    def upsample_nearest2x(self, x, name: str) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
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
