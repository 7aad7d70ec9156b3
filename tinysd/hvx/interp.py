"""A whole network call as a chain of HVX kernels: the integer interpreter with the HVX kernels as
its backend.

    interp = HvxInterpreter(qnet, proc, inputs={"unet.sample": codes, ...})
    UNet(graph, interp)(sample, t, context)      # the host arrays only give shapes
    interp.outputs["unet.out"]                   # integer codes before dequantization

`HvxKernels` has the functions of `tinysd.interp.integer.CPU_KERNELS` with the same arguments,
each computed by one request to the HVX program under qemu-hexagon (`tinysd.hvx.ops`).
`HvxInterpreter` is `IntegerInterpreter` (same parameters, encodings and checks) on that backend,
so every computing op runs on HVX and its output codes feed the next op; layout ops (reshape,
transpose, split) stay NumPy views, as on a device they are addressing. `inputs` replaces the
quantization of host arrays by recorded integer inputs (a golden network case), so a call is
reproduced from integers alone. `on_call(Call)` is called before every request (for instruction
counts, `tinysd.hvx.cost`).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..interp.integer import IntegerInterpreter, QTensor
from ..kernels import PreparedWeight
from . import ops
from .runner import HvxProcess


def _weight(w):
    return w.q if isinstance(w, PreparedWeight) else w


class HvxKernels:
    """The kernel backend of IntegerInterpreter on the HVX program: one request per call."""

    def __init__(self, proc: HvxProcess, on_call: Callable[[ops.Call], None] | None = None):
        self.proc = proc
        self.on_call = on_call

    def _run(self, call: ops.Call) -> np.ndarray:
        if self.on_call is not None:
            self.on_call(call)
        [y] = ops.run_calls(self.proc, [call])
        return y

    def embedding(self, ids, table_q):
        return self._run(ops.embedding_call(ids, table_q))

    def linear(self, x_q, x_zp, w_q, bias_q, multiplier, shift, out_zp, qmin, qmax, acc_shift=0):
        return self._run(ops.linear_call(x_q, x_zp, _weight(w_q), bias_q, multiplier, shift, out_zp, qmin, qmax,
                                         acc_shift=acc_shift))

    def conv2d(self, x_q, x_zp, w_q, bias_q, multiplier, shift, out_zp, qmin, qmax, stride=1, padding=0,
               acc_shift=0):
        return self._run(ops.conv2d_call(x_q, x_zp, _weight(w_q), bias_q, multiplier, shift, out_zp, qmin, qmax,
                                         stride=stride, padding=padding, acc_shift=acc_shift))

    def group_norm(self, x_q, groups, params):
        return self._run(ops.group_norm_call(x_q, groups, params))

    def layer_norm(self, x_q, params):
        return self._run(ops.layer_norm_call(x_q, params))

    def apply_table(self, x_q, table):
        return self._run(ops.table_call(x_q, table))

    def softmax(self, x_q, exp_table, out_bits=None, causal=False):
        return self._run(ops.softmax_call(x_q, exp_table, out_bits, causal))

    def matmul(self, a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift=0):
        return self._run(ops.matmul_call(a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift))

    def add(self, a_q, a_zp, a_multiplier, a_shift, b_q, b_zp, b_multiplier, b_shift, multiplier, shift, out_zp, qmin,
            qmax, left_shift):
        return self._run(ops.add_call(a_q, a_zp, a_multiplier, a_shift, b_q, b_zp, b_multiplier, b_shift, multiplier,
                                      shift, out_zp, qmin, qmax, left_shift))

    def mul(self, a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift=0):
        return self._run(ops.mul_call(a_q, a_zp, b_q, b_zp, multiplier, shift, out_zp, qmin, qmax, acc_shift))

    def requantize_tensor(self, x_q, x_zp, multiplier, shift, out_zp, qmin, qmax):
        return self._run(ops.requantize_tensor_call(x_q, x_zp, multiplier, shift, out_zp, qmin, qmax))

    def concat(self, xs, x_zps, multipliers, shifts, axis, out_zp, qmin, qmax):
        return self._run(ops.concat_call(xs, x_zps, multipliers, shifts, axis, out_zp, qmin, qmax))

    def upsample_nearest2x(self, x_q):
        return self._run(ops.upsample_nearest2x_call(x_q))


class HvxInterpreter(IntegerInterpreter):
    """IntegerInterpreter on HvxKernels; `inputs` {tensor name: codes} replace the quantized host inputs,
    and `outputs` collects each network output's codes before dequantization."""

    def __init__(self, qnet, proc: HvxProcess, inputs: dict[str, np.ndarray] | None = None,
                 on_call: Callable[[ops.Call], None] | None = None):
        super().__init__(qnet, kernels=HvxKernels(proc, on_call))
        self.inputs = dict(inputs or {})
        self.outputs: dict[str, np.ndarray] = {}

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
