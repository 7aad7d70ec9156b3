"""The recording interpreter: wraps any interpreter and taps the tensors of its ops by name.

    rec = RecordingInterpreter(IntegerInterpreter(qnet), match="down_blocks.0.*")
    UNet(model, rec)(sample, t, context)        # runs exactly as the inner interpreter would
    for r in rec.records: r.op, r.name, r.inputs["x"].data, r.output.data, r.params["multiplier"]

Every op is forwarded unchanged to the inner interpreter, whose result is returned
as is: recording never changes what a network computes. What is kept:

* network boundary, always (unless `boundary=False`): each `input` (the tensor the
  inner interpreter made of the host array: for the integer interpreter its integer
  codes and zero point), each `output` (the tensor handed to `output`, before it is
  dequantized) and the host ids of each `embedding`;
* every computing op whose name matches `match` (a glob, `fnmatch` rules, tried on the
  op name `down_blocks.0.resnets.0.conv1` and on the full name
  `unet.down_blocks.0.resnets.0.conv1`; None matches every op): its input tensors by
  argument name (`x`; `a`, `b`; `xs.0`, `xs.1`, ...; `ids`), its output tensor, its
  non-tensor arguments (`attrs`: stride, padding, groups, eps, causal, alpha, axis,
  factor) and its parameters (`params`: for the integer interpreter the run-time
  integer arrays of the QuantizedNetwork named `{op name}.{field}`, keyed by field;
  for the float interpreter the float parameters `{op name}.*`).

Tensors are copied when recorded (`TapTensor`), so later in-place work of the inner
interpreter cannot change a record. Layout ops (reshape, transpose, split) are
forwarded and not recorded as records. Records accumulate across calls until `clear()`; each
record carries the index of the network call it belongs to (`call`, counted by
`output`). `ops=False` records the network boundary only.

With `graph=True` the first network call is also recorded as a graph (`graph`, a
`GraphRecord`): every op in order, layout ops included, wired by tensor ids, with each
tensor's shape, dtype, zero point, bits and encoding; an operand that `add` or `mul`
broadcasts gets an explicit `broadcast` node. Together with the run-time parameters of
its ops and the call's inputs, the graph recomputes the call (`tinysd.golden.graph`).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass
class TapTensor:
    """A recorded tensor: a private copy of its data, plus its quantization when the interpreter has one.

    data: the tensor's array (integer codes for the integer interpreter, float32 for the float one).
    zero_point, bits: the integer tensor's zero point and activation bits (None for plain arrays).
    enc: the name of the activation tensor whose encoding applies (`unet.conv_in.out`), or None.
    """

    data: np.ndarray
    zero_point: int | None = None
    bits: int | None = None
    enc: str | None = None

    @classmethod
    def of(cls, t: Any) -> "TapTensor":
        """Snapshot an interpreter tensor: an ndarray, or an object with `.data` (and `.zp`, `.bits`, `.enc`)."""
        if isinstance(t, np.ndarray) or np.isscalar(t):
            return cls(np.array(t))
        data = getattr(t, "data", None)
        if not isinstance(data, np.ndarray):
            return cls(np.array(t))
        zp = getattr(t, "zp", None)
        bits = getattr(t, "bits", None)
        return cls(np.array(data), None if zp is None else int(zp), None if bits is None else int(bits),
                   getattr(t, "enc", None))


@dataclass
class OpRecord:
    """One recorded op.

    op: the ops-interface method ("conv2d", "linear", ..., or "input" / "output" at the boundary).
    name: the op name (`down_blocks.0.resnets.0.conv1`) or the input/output name (`sample`).
    tensor: the name of the tensor it makes: `{network}.{name}.out` for ops, `{network}.{name}`
      for inputs and outputs.
    inputs: argument name -> TapTensor. output: TapTensor (None when not kept).
    attrs: non-tensor arguments. params: field -> array (see the module docstring).
    matched: True when the op matched `match` (False: kept only as network boundary).
    call: index of the network call (0, 1, ...).
    """

    op: str
    name: str
    tensor: str
    inputs: dict[str, TapTensor]
    output: TapTensor | None
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    matched: bool = True
    call: int = 0


LAYOUT_OPS = ("reshape", "transpose", "split", "broadcast")


class GraphRecord:
    """One network call as a graph (see the module docstring and docs/golden.md §3).

    ops: [{"op", "name", "inputs": {argument: tensor id}, "outputs": [tensor id], "attrs": {...}}] in the
    order they ran; "input" nodes have no inputs and are named after the network input (`sample`;
    the host ids of embedding E are the input `E.ids`), "output" nodes have no outputs.
    tensors: {tensor id: {"shape", "dtype", "zero_point", "bits", "encoding"}} (zero point and bits
    null for host arrays). Tensor objects are held until `close()` so that their ids stay unique.
    """

    def __init__(self):
        self.ops: list[dict] = []
        self.tensors: dict[str, dict] = {}
        self._ids: dict[int, str] = {}
        self._alive: list = []
        self.closed = False

    def _new(self, t) -> str:
        tid = f"t{len(self.tensors)}"
        data = getattr(t, "data", t)
        zp, bits = getattr(t, "zp", None), getattr(t, "bits", None)
        self.tensors[tid] = {"shape": [int(d) for d in np.shape(data)], "dtype": np.asarray(data).dtype.name,
                             "zero_point": None if zp is None else int(zp), "bits": None if bits is None else int(bits),
                             "encoding": getattr(t, "enc", None)}
        self._ids[id(t)] = tid
        self._alive.append(t)
        return tid

    def tid(self, t) -> str:
        """The id of a tensor already in the graph (KeyError for one the graph never produced)."""
        return self._ids[id(t)]

    def node(self, op: str, name: str | None, inputs: dict, outputs: list, attrs: dict | None = None) -> None:
        """Append an op: `inputs` maps argument names to tensors already in the graph; `outputs` are new tensors."""
        if self.closed:
            return
        ins = {}
        for arg, t in inputs.items():
            if op in ("add", "mul") and hasattr(t, "shape") and outputs and tuple(t.shape) != tuple(outputs[0].shape):
                shape = [int(d) for d in outputs[0].shape]
                tid = f"t{len(self.tensors)}"
                self.tensors[tid] = dict(self.tensors[self.tid(t)], shape=shape)
                self.ops.append({"op": "broadcast", "name": None, "inputs": {"x": self.tid(t)}, "outputs": [tid],
                                 "attrs": {"shape": shape}})
                ins[arg] = tid
            else:
                ins[arg] = self.tid(t)
        outs = [self._new(t) for t in outputs]
        self.ops.append({"op": op, "name": name, "inputs": ins, "outputs": outs, "attrs": dict(attrs or {})})

    def close(self) -> None:
        """Stop recording and drop the references to the tensors."""
        self.closed = True
        self._ids, self._alive = {}, []

    def to_json(self) -> dict:
        return {"ops": self.ops, "tensors": self.tensors}


class RecordingInterpreter:
    """Forwards every op to `inner` and records boundary tensors and ops matching `match` (module docstring)."""

    def __init__(self, inner, match: str | None = None, boundary: bool = True, ops: bool = True, graph: bool = False):
        self.inner = inner
        self.match = match
        self.ops = ops
        self.boundary = boundary
        self.network = getattr(inner, "network", "")
        self.records: list[OpRecord] = []
        self.calls = 0
        self.graph = GraphRecord() if graph else None

    def __getattr__(self, name):  # anything else (qnet, params, array, ...) is the inner interpreter's
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def clear(self) -> None:
        """Forget all records (the call counter keeps counting)."""
        self.records = []

    # --- helpers ------------------------------------------------------------------------
    def matches(self, name: str) -> bool:
        """Whether op `name` is recorded: `ops` is on and `match` is None or matches `name` or `{network}.{name}`."""
        if not self.ops:
            return False
        if self.match is None:
            return True
        return fnmatch.fnmatchcase(name, self.match) or fnmatch.fnmatchcase(f"{self.network}.{name}", self.match)

    def op_params(self, name: str) -> dict[str, np.ndarray]:
        """The parameters of op `name` as field -> array: QuantizedNetwork arrays `{name}.*` or float params."""
        qnet = getattr(self.inner, "qnet", None)
        source = qnet.arrays if qnet is not None else getattr(self.inner, "params", None) or {}
        prefix = f"{name}."
        # a field has no further dot: `{name}.sub.weight` belongs to a child module, not to op `name`
        return {k[len(prefix):]: np.asarray(v) for k, v in source.items()
                if k.startswith(prefix) and "." not in k[len(prefix):]}

    def _node(self, op, name, inputs, outputs, attrs=None):
        if self.graph is not None:
            self.graph.node(op, name, inputs, outputs, attrs)

    def _op(self, op: str, name: str, inputs: dict[str, Any], attrs: dict[str, Any], run, boundary=False):
        matched = self.matches(name)
        keep = matched or (boundary and self.boundary)
        if not keep:
            y = run()
            self._node(op, name, inputs, [y], attrs)
            return y
        taps = {k: TapTensor.of(v) for k, v in inputs.items()}
        y = run()
        self._node(op, name, inputs, [y], attrs)
        self.records.append(OpRecord(op=op, name=name, tensor=f"{self.network}.{name}.out", inputs=taps,
                                     output=TapTensor.of(y) if matched else None, attrs=dict(attrs),
                                     params=self.op_params(name) if matched else {}, matched=matched,
                                     call=self.calls))
        return y

    # --- network boundary -----------------------------------------------------------------
    def input(self, x, name: str):
        y = self.inner.input(x, name)
        self._node("input", name, {}, [y])
        if self.boundary:
            self.records.append(OpRecord(op="input", name=name, tensor=f"{self.network}.{name}", inputs={},
                                         output=TapTensor.of(y), matched=False, call=self.calls))
        return y

    def output(self, x, name: str):
        if self.boundary:
            self.records.append(OpRecord(op="output", name=name, tensor=f"{self.network}.{name}",
                                         inputs={"x": TapTensor.of(x)}, output=None, matched=False, call=self.calls))
        self._node("output", name, {"x": x}, [])
        if self.graph is not None:
            self.graph.close()  # the graph is the first call's
        y = self.inner.output(x, name)
        self.calls += 1
        return y

    # --- parameterised ops -----------------------------------------------------------------
    def embedding(self, ids, name: str):
        ids = np.asarray(ids)
        self._node("input", f"{name}.ids", {}, [ids])  # host ids enter the graph as an input
        return self._op("embedding", name, {"ids": ids}, {}, lambda: self.inner.embedding(ids, name), boundary=True)

    def linear(self, x, name: str):
        return self._op("linear", name, {"x": x}, {}, lambda: self.inner.linear(x, name))

    def conv2d(self, x, name: str, stride: int = 1, padding=0):
        return self._op("conv2d", name, {"x": x}, {"stride": stride, "padding": padding},
                        lambda: self.inner.conv2d(x, name, stride=stride, padding=padding))

    def group_norm(self, x, name: str, groups: int, eps: float):
        return self._op("group_norm", name, {"x": x}, {"groups": groups, "eps": eps},
                        lambda: self.inner.group_norm(x, name, groups, eps))

    def layer_norm(self, x, name: str, eps: float):
        return self._op("layer_norm", name, {"x": x}, {"eps": eps}, lambda: self.inner.layer_norm(x, name, eps))

    # --- elementwise / reductions -------------------------------------------------------------
    def silu(self, x, name: str):
        return self._op("silu", name, {"x": x}, {}, lambda: self.inner.silu(x, name))

    def gelu(self, x, name: str):
        return self._op("gelu", name, {"x": x}, {}, lambda: self.inner.gelu(x, name))

    def quick_gelu(self, x, name: str):
        return self._op("quick_gelu", name, {"x": x}, {}, lambda: self.inner.quick_gelu(x, name))

    def softmax(self, x, name: str, causal: bool = False):
        return self._op("softmax", name, {"x": x}, {"causal": causal},
                        lambda: self.inner.softmax(x, name, causal=causal))

    def matmul(self, a, b, name: str, alpha: float = 1.0):
        return self._op("matmul", name, {"a": a, "b": b}, {"alpha": alpha},
                        lambda: self.inner.matmul(a, b, name, alpha=alpha))

    def add(self, a, b, name: str):
        return self._op("add", name, {"a": a, "b": b}, {}, lambda: self.inner.add(a, b, name))

    def mul(self, a, b, name: str):
        return self._op("mul", name, {"a": a, "b": b}, {}, lambda: self.inner.mul(a, b, name))

    def scale(self, x, factor: float, name: str):
        return self._op("scale", name, {"x": x}, {"factor": factor}, lambda: self.inner.scale(x, factor, name))

    def concat(self, xs: Sequence, axis: int, name: str):
        xs = list(xs)
        return self._op("concat", name, {f"xs.{i}": x for i, x in enumerate(xs)}, {"axis": axis},
                        lambda: self.inner.concat(xs, axis, name))

    def upsample_nearest2x(self, x, name: str):
        return self._op("upsample_nearest2x", name, {"x": x}, {}, lambda: self.inner.upsample_nearest2x(x, name))

    # --- layout (forwarded; only the graph records them) --------------------------------------------
    def reshape(self, x, shape):
        y = self.inner.reshape(x, shape)
        self._node("reshape", None, {"x": x}, [y], {"shape": [int(d) for d in shape]})
        return y

    def transpose(self, x, axes):
        y = self.inner.transpose(x, axes)
        self._node("transpose", None, {"x": x}, [y], {"axes": [int(a) for a in axes]})
        return y

    def split(self, x, sections: int, axis: int):
        ys = self.inner.split(x, sections, axis)
        self._node("split", None, {"x": x}, list(ys), {"sections": int(sections), "axis": int(axis)})
        return ys

