"""A whole network call as a chain of HVX kernels: the integer interpreter with every computing op
sent to the HVX program under qemu-hexagon.

    hvx_interp = HvxInterpreter(qnet, proc, inputs={"unet.sample": codes, ...})
    UNet(graph, hvx_interp)(sample, t, context)      # the host arrays only give shapes
    hvx_interp.outputs["unet.out"]                   # integer codes before dequantization

`HvxInterpreter` is `tinysd.interp.integer.IntegerInterpreter` (same parameters, same encodings,
same checks) whose ops compute with `tinysd.hvx.ops` instead of `tinysd.kernels`; each op is one
request, and its output codes feed the next op, so nothing but the network's inputs comes from the
host. `inputs` replaces the quantization of host arrays by recorded integer inputs (a golden network
case), so a call is reproduced from integers alone. Layout ops (reshape, transpose, split) stay
NumPy views, as on a device they are addressing. `on_call(op name, Call)` is called before every
request (for instruction counts, `tinysd.hvx.cost`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import TinySDError
from ..interp.integer import IntegerInterpreter, QTensor
from . import ops
from .runner import HvxProcess


class HvxInterpreter(IntegerInterpreter):
    def __init__(self, qnet, proc: HvxProcess, inputs: dict[str, np.ndarray] | None = None,
                 on_call: Callable[[str, ops.Call], None] | None = None):
        super().__init__(qnet)
        self.proc = proc
        self.inputs = dict(inputs or {})
        self.outputs: dict[str, np.ndarray] = {}
        self.on_call = on_call

    def _run(self, name: str, call: ops.Call) -> np.ndarray:
        if self.on_call is not None:
            self.on_call(name, call)
        [y] = ops.run_calls(self.proc, [call])
        return y

    # --- network boundary ---------------------------------------------------------
    def input(self, x, name: str) -> QTensor:
        tensor = f"{self.network}.{name}"
        if tensor not in self.inputs:
            return super().input(x, name)
        self._names.claim_input(name)
        return self._out(np.ascontiguousarray(self.inputs[tensor]), tensor)

    def output(self, x, name: str) -> np.ndarray:
        x = self._q(x, f"output {name}")
        self.outputs[f"{self.network}.{name}"] = x.data.copy()
        return super().output(x, name)

    # --- ops (each as IntegerInterpreter's, computed by one HVX request) --------------------
    def embedding(self, ids, name: str) -> QTensor:
        tensor = self._names.claim(name)
        ids = np.asarray(ids)
        table = self.array(name, "table_q")
        if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise TinySDError(f"{self.network}: {name}: index out of range 0..{table.shape[0] - 1}")
        return self._out(self._run(name, ops.embedding_call(ids, table)), tensor)

    def linear(self, x, name: str) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        y = self._run(name, ops.linear_call(x.data, x.zp, self.array(name, "weight_q"), self._bias(name),
                                            self.array(name, "multiplier"), self.array(name, "shift"),
                                            self._zp(tensor), 0, self.qmax, acc_shift=self.array(name, "acc_shift")))
        return self._out(y, tensor)

    def conv2d(self, x, name: str, stride: int = 1, padding=0) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        y = self._run(name, ops.conv2d_call(x.data, x.zp, self.array(name, "weight_q"), self._bias(name),
                                            self.array(name, "multiplier"), self.array(name, "shift"),
                                            self._zp(tensor), 0, self.qmax, stride=stride, padding=padding,
                                            acc_shift=self.array(name, "acc_shift")))
        return self._out(y, tensor)

    def group_norm(self, x, name: str, groups: int, eps: float) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        return self._out(self._run(name, ops.group_norm_call(x.data, groups, self._norm_params(name))), tensor)

    def layer_norm(self, x, name: str, eps: float) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        return self._out(self._run(name, ops.layer_norm_call(x.data, self._norm_params(name))), tensor)

    def _table(self, x, name: str) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        return self._out(self._run(name, ops.table_call(x.data, self.array(name, "table"))), tensor)

    def softmax(self, x, name: str, causal: bool = False) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        y = self._run(name, ops.softmax_call(x.data, self.array(name, "exp_table"), self.bits, causal))
        return self._out(y, tensor)

    def matmul(self, a, b, name: str, alpha: float = 1.0) -> QTensor:
        a, b = self._q(a, name), self._q(b, name)
        tensor = self._names.claim(name)
        max_k = int(self.array(name, "max_k")[0])
        if a.shape[-1] > max_k:
            raise TinySDError(f"{self.network}: {name}: reduction length {a.shape[-1]} exceeds the {max_k} its "
                              f"accumulator shift was proven for (input too large for this quantized model)")
        s = lambda f: self._scalar(name, f)  # noqa: E731
        y = self._run(name, ops.matmul_call(a.data, a.zp, b.data, b.zp, s("multiplier"), s("shift"), self._zp(tensor),
                                            0, self.qmax, acc_shift=s("acc_shift")))
        return self._out(y, tensor)

    def add(self, a, b, name: str) -> QTensor:
        a, b = self._q(a, name), self._q(b, name)
        tensor = self._names.claim(name)
        s = lambda f: self._scalar(name, f)  # noqa: E731
        y = self._run(name, ops.add_call(a.data, a.zp, s("a_multiplier"), s("a_shift"), b.data, b.zp,
                                         s("b_multiplier"), s("b_shift"), s("multiplier"), s("shift"),
                                         self._zp(tensor), 0, self.qmax, s("left_shift")))
        return self._out(y, tensor)

    def mul(self, a, b, name: str) -> QTensor:
        a, b = self._q(a, name), self._q(b, name)
        tensor = self._names.claim(name)
        s = lambda f: self._scalar(name, f)  # noqa: E731
        y = self._run(name, ops.mul_call(a.data, a.zp, b.data, b.zp, s("multiplier"), s("shift"), self._zp(tensor),
                                         0, self.qmax, acc_shift=s("acc_shift")))
        return self._out(y, tensor)

    def scale(self, x, factor: float, name: str) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        y = self._run(name, ops.requantize_tensor_call(x.data, x.zp, self._scalar(name, "multiplier"),
                                                       self._scalar(name, "shift"), self._zp(tensor), 0, self.qmax))
        return self._out(y, tensor)

    def concat(self, xs: Sequence, axis: int, name: str) -> QTensor:
        xs = [self._q(x, name) for x in xs]
        tensor = self._names.claim(name)
        mults = [int(v) for v in self.array(name, "multipliers")]
        shifts = [int(v) for v in self.array(name, "shifts")]
        if len(mults) != len(xs):
            raise TinySDError(f"{self.network}: {name}: {len(xs)} inputs but {len(mults)} multipliers")
        y = self._run(name, ops.concat_call([x.data for x in xs], [x.zp for x in xs], mults, shifts, axis,
                                            self._zp(tensor), 0, self.qmax))
        return self._out(y, tensor)

    def upsample_nearest2x(self, x, name: str) -> QTensor:
        x = self._q(x, name)
        tensor = self._names.claim(name)
        requant = None
        if f"{name}.multiplier" in self.qnet.arrays:  # the output encoding differs from the input's
            requant = (x.zp, self._scalar(name, "multiplier"), self._scalar(name, "shift"), self._zp(tensor), 0,
                       self.qmax)
        elif self._zp(tensor) != x.zp:
            raise TinySDError(f"{self.network}: {name}: output encoding differs from the input's but no rescale "
                              f"was prepared")
        return self._out(self._run(name, ops.upsample_nearest2x_call(x.data, requant)), tensor)
