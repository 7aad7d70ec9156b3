"""The tracing interpreter: runs a graph on shapes only and records its ops as a dataflow graph.

`TracingInterpreter` implements the ops interface (`tinysd/nn/ops.py`) with
tensors that are only a shape and an id (`TTensor`). Every call appends one
`TracedOp` to `ops`, in execution order:

* computing ops: kind (the ops-interface method), op name, input tensor ids,
  output id, the tinysd tensor name of the output (`{network}.{name}.out`), the
  parameter shapes it reads and its constant arguments (alpha, factor, groups,
  causal, axis, stride, padding);
* network inputs: kind "input", tensor name `{network}.{name}`;
* layout ops (reshape, transpose, split): kind "layout" with `attrs["layout"]`
  and, for split, `attrs["part"] = (k, sections, axis)`; they keep the input's
  values, so tinysd gives them no name.

The ONNX name map (`tinysd.quant.onnx_map`) matches this graph against an
exported ONNX graph. Nothing is computed: any config runs in microseconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..kernels.conv import conv_output_size, normalize_padding, normalize_stride
from .names import OpNames


@dataclass(frozen=True)
class TTensor:
    """A traced tensor: its id in `TracingInterpreter.ops` order and its shape."""

    id: int
    shape: tuple


@dataclass
class TracedOp:
    kind: str  # ops-interface method, "input" or "layout"
    name: str | None  # op name (None for layout ops)
    inputs: tuple[int, ...]
    output: tuple[int, ...]  # one id (split: one per part)
    tensor: str | None  # tinysd tensor name of the output
    params: dict[str, tuple] = field(default_factory=dict)  # parameter name -> shape
    attrs: dict = field(default_factory=dict)


class TracingInterpreter:
    """Records the ops of one or more network calls (see the module docstring)."""

    def __init__(self, param_shapes: Mapping[str, tuple], network: str):
        self.param_shapes = dict(param_shapes)
        self.network = network
        self.ops: list[TracedOp] = []
        self.shapes: list[tuple] = []
        self._names = OpNames(network)

    # --- bookkeeping --------------------------------------------------------------
    def _new(self, shape) -> TTensor:
        self.shapes.append(tuple(int(s) for s in shape))
        return TTensor(len(self.shapes) - 1, self.shapes[-1])

    def _op(self, kind: str, name: str, inputs: Sequence[TTensor], shape, params=(), **attrs) -> TTensor:
        tensor = self._names.claim(name)
        out = self._new(shape)
        self.ops.append(TracedOp(kind, name, tuple(t.id for t in inputs), (out.id,), tensor,
                                 {p: self.param_shapes[p] for p in params if p in self.param_shapes}, attrs))
        return out

    def _param(self, name: str) -> tuple:
        return self.param_shapes[name]

    # --- boundary -------------------------------------------------------------------
    def input(self, x, name: str) -> TTensor:
        tensor = self._names.claim_input(name)
        out = self._new(np.shape(x))
        self.ops.append(TracedOp("input", name, (), (out.id,), tensor))
        return out

    def output(self, x: TTensor, name: str) -> np.ndarray:
        self._names.end_call()
        self.ops.append(TracedOp("output", name, (x.id,), (), None))
        return np.zeros(x.shape, np.float32)

    # --- parameterised ops -------------------------------------------------------------
    def embedding(self, ids, name: str) -> TTensor:
        shape = tuple(np.shape(ids)) + (self._param(f"{name}.weight")[1],)
        return self._op("embedding", name, (), shape, params=[f"{name}.weight"])

    def linear(self, x: TTensor, name: str) -> TTensor:
        o = self._param(f"{name}.weight")[0]
        return self._op("linear", name, (x,), x.shape[:-1] + (o,), params=[f"{name}.weight", f"{name}.bias"])

    def conv2d(self, x: TTensor, name: str, stride: int = 1, padding=0) -> TTensor:
        o, _, kh, kw = self._param(f"{name}.weight")
        st, pad = normalize_stride(stride), normalize_padding(padding)
        ho, wo = conv_output_size(x.shape[2], x.shape[3], kh, kw, st, pad)
        return self._op("conv2d", name, (x,), (x.shape[0], o, ho, wo), params=[f"{name}.weight", f"{name}.bias"],
                        stride=st, padding=pad)

    def group_norm(self, x: TTensor, name: str, groups: int, eps: float) -> TTensor:
        return self._op("group_norm", name, (x,), x.shape, params=[f"{name}.weight", f"{name}.bias"],
                        groups=groups, eps=eps)

    def layer_norm(self, x: TTensor, name: str, eps: float) -> TTensor:
        return self._op("layer_norm", name, (x,), x.shape, params=[f"{name}.weight", f"{name}.bias"], eps=eps)

    # --- elementwise / reductions -----------------------------------------------------------
    def silu(self, x, name):
        return self._op("silu", name, (x,), x.shape)

    def gelu(self, x, name):
        return self._op("gelu", name, (x,), x.shape)

    def quick_gelu(self, x, name):
        return self._op("quick_gelu", name, (x,), x.shape)

    def softmax(self, x, name, causal: bool = False):
        return self._op("softmax", name, (x,), x.shape, causal=causal)

    def matmul(self, a, b, name, alpha: float = 1.0):
        shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        return self._op("matmul", name, (a, b), shape, alpha=float(alpha))

    def add(self, a, b, name):
        return self._op("add", name, (a, b), np.broadcast_shapes(a.shape, b.shape))

    def mul(self, a, b, name):
        return self._op("mul", name, (a, b), np.broadcast_shapes(a.shape, b.shape))

    def scale(self, x, factor: float, name):
        return self._op("scale", name, (x,), x.shape, factor=float(factor))

    def concat(self, xs, axis: int, name):
        shape = list(xs[0].shape)
        ax = axis % len(shape)
        shape[ax] = sum(x.shape[ax] for x in xs)
        return self._op("concat", name, tuple(xs), shape, axis=ax)

    def upsample_nearest2x(self, x, name):
        n, c, h, w = x.shape
        return self._op("upsample_nearest2x", name, (x,), (n, c, 2 * h, 2 * w))

    # --- layout ------------------------------------------------------------------------
    def _layout(self, x: TTensor, shape, **attrs) -> TTensor:
        out = self._new(shape)
        self.ops.append(TracedOp("layout", None, (x.id,), (out.id,), None, attrs=attrs))
        return out

    def reshape(self, x, shape):
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != math.prod(x.shape):
            raise ValueError(f"reshape: cannot reshape {x.shape} to {shape}")
        return self._layout(x, shape, layout="reshape")

    def transpose(self, x, axes):
        return self._layout(x, tuple(x.shape[a] for a in axes), layout="transpose", axes=tuple(axes))

    def split(self, x, sections: int, axis: int):
        shape = list(x.shape)
        ax = axis % len(shape)
        shape[ax] //= sections
        return [self._layout(x, shape, layout="split", part=(k, sections, ax)) for k in range(sections)]


def trace_network(graph, network: str, calls: Sequence[str] = ("all",)) -> TracingInterpreter:
    """Trace `graph` (a tinysd.nn network) with small dummy inputs.

    calls: for the VAE, "decode", "encode" or both ("all"); other networks run their one call.
    """
    from ..quant.prepare import run_graph

    interp = TracingInterpreter(graph.param_shapes(), network)
    if network == "vae" and "all" not in calls:
        cfg = graph.cfg
        if "decode" in calls:
            graph.decode(interp, np.zeros((1, cfg.latent_channels, 1, 1), np.float32))
        if "encode" in calls:
            f = 2 ** (len(cfg.block_out_channels) - 1)
            graph.encode(interp, np.zeros((1, cfg.in_channels, f, f), np.float32))
    else:
        run_graph(graph, interp, network, include_encoder=True)
    return interp
