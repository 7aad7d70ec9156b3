"""Names from the exported graph: map an ONNX graph's tensors to tinysd's, by structure.

    m = map_onnx("unet.onnx", "unet", graph, params)     # graph: tinysd.nn network, params: checkpoint arrays
    print(m.table())                                        # ONNX name, tinysd name, why
    m.activations["/down_blocks.0/resnets.0/conv1/Conv_output_0"]   # -> "unet.down_blocks.0.resnets.0.conv1.out"

AIMET names every encoding after the ONNX graph it quantized: activations after
ONNX value names (`/down_blocks.0/resnets.0/nonlinearity/Mul_output_0`), weights after
initializers (`unet.conv_in.weight`, or `onnx::MatMul_1532` for a linear layer's
transposed weight). This module finds, for every value of an exported diffusers UNet,
VAE decoder / encoder or transformers CLIP text model, the tinysd tensor it is:

1. tinysd's own graph is traced (`tinysd.interp.trace`): its ops in execution order;
2. the ONNX graph is loaded without its weights (`onnx`, an optional dependency:
   `pip install 'tinysd[onnx]'`), shapes are inferred and everything that does not depend
   on a graph input is folded to constants (shape arithmetic, attention scales, causal
   masks); layout ops (Reshape, Transpose, Unsqueeze, Squeeze, Flatten, Identity, float
   Cast) are looked through, and Slice / Split are halves of a value;
3. tinysd's ops are matched in execution order against the ONNX nodes that consume the
   values already matched (`_Matcher`): a conv / linear / embedding by its weight
   initializer's shape and position, and among several with the same shape by the one whose
   values are closest to the checkpoint's; every other op by the pattern the exporter writes
   for it (SiLU = Sigmoid + Mul, GELU = Div, Erf, Add, Mul, Mul, GroupNorm = Reshape,
   InstanceNormalization, Reshape, Mul, Add, attention scores = two scaled operands and a
   MatMul, ...). A network input is placed where its first consumer is found.

Where the ONNX pattern quantizes inside an op tinysd runs fused, its intermediate values
get part names, `{network}.{op}.{part}.out` (`tinysd.interp.parts`), and their constant
operands `{network}.{op}.{part}.const`; the integer network then computes the op as its
parts. A division or multiplication by exactly 1 after an op (diffusers' rescale factors)
is the part `requant`. Duplicates (the same op on the same value, e.g. a resnet's SiLU of
the time embedding, which tinysd computes once) map to the same tinysd tensor.

Nothing is matched by name: names only appear in the table. Every row says why.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import TinySDError
from ..interp.parts import PARTS, READER_INPUT_OPS, TIME_INPUT, TIME_PARTS, const_name, part_tensor

log = logging.getLogger(__name__)

ONNX_HINT = "reading ONNX graphs needs the optional 'onnx' package: pip install 'tinysd[onnx]' (or: pip install onnx)"
#: ONNX ops that only move data: their output is their (first) input's value.
LAYOUT_OPS = ("Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Cast")
_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
_REL = 1e-5  # tolerance when comparing a graph constant with the value tinysd expects


def _onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401
        import onnx.shape_inference  # noqa: F401
    except ImportError:
        raise TinySDError(ONNX_HINT) from None
    return onnx


# ---------------------------------------------------------------------------------------------
# the ONNX graph: structure, shapes, constants
# ---------------------------------------------------------------------------------------------
def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class OnnxGraph:
    """An ONNX model's nodes, with static shapes and the values of everything that is constant.

    Initializer data is read (from the file or its external-data files) only when a value is
    needed: constant folding of small tensors, and the weights tinysd takes from the graph.
    """

    def __init__(self, path):
        onnx = _onnx()
        self.path = Path(path)
        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except FileNotFoundError:
            raise TinySDError(f"{self.path}: ONNX file not found") from None
        except Exception as e:  # protobuf decode errors have many types
            raise TinySDError(f"{self.path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
        self.model = model
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {t.name: t for t in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.inits]
        self.outputs = [o.name for o in g.output]
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.order = {id(n): k for k, n in enumerate(self.nodes)}  # topological position
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for i, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append((n, i))
        self._values: dict[str, np.ndarray] = {}
        self.shapes: dict[str, tuple] = {t.name: tuple(int(d) for d in t.dims) for t in g.initializer}
        # shapes and constants feed each other (a Pad whose pads are computed hides every shape after it
        # from ONNX's inference): infer, fold, hand the folded values back to the inference, until stable
        for _ in range(6):
            known = len(self.shapes) + len(self._values)
            self._infer_shapes(onnx)
            self.dynamic: set[str] = set(self.inputs)
            self._fold()
            if len(self.shapes) + len(self._values) == known:
                break

    def _infer_shapes(self, onnx) -> None:
        """Static shapes from ONNX shape inference on a copy whose folded values are Constant nodes."""
        from onnx import helper, numpy_helper

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        if self._values:
            del model.graph.node[:]
            for n in self.nodes:
                outs = [o for o in n.output if o]
                if n.op_type != "Constant" and outs and all(o in self._values and np.size(self._values[o]) < 65536
                                                            for o in outs):
                    for o in outs:
                        model.graph.node.append(helper.make_node("Constant", [], [o], value=numpy_helper.from_array(
                            np.asarray(self._values[o]), o)))
                else:
                    model.graph.node.append(n)
        try:
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception as e:
            log.info("%s: shape inference failed (%s); using the shapes stored in the file", self.path, e)
        g = model.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            dims = vi.type.tensor_type.shape.dim
            if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
                self.shapes[vi.name] = tuple(int(d.dim_value) for d in dims)

    # --- values ---------------------------------------------------------------------------
    def init_value(self, name: str) -> np.ndarray:
        """The value of initializer `name` (external data read from the model's folder)."""
        from onnx import numpy_helper

        v = self._values.get(name)
        if v is None:
            try:
                v = numpy_helper.to_array(self.inits[name], base_dir=str(self.path.parent))
            except (OSError, ValueError) as e:
                raise TinySDError(f"{self.path}: cannot read initializer {name!r}: {e}") from None
            self._values[name] = v
        return v

    def value(self, name: str) -> np.ndarray | None:
        """A constant's value (initializer, Constant node or folded), else None."""
        if name in self._values:
            return self._values[name]
        if name in self.inits:
            return self.init_value(name)
        return None

    def is_const(self, name: str) -> bool:
        return name in self._values or name in self.inits

    def scalar(self, name: str) -> float | None:
        """A constant's value if it holds a single number (any shape of size 1)."""
        v = self.value(name) if self.is_const(name) else None
        return float(np.asarray(v).reshape(-1)[0]) if v is not None and np.size(v) == 1 else None

    def _fold(self) -> None:
        """Evaluate every node whose inputs are all constant (numpy, `_EVAL`); mark the rest dynamic.

        A Gather from an initializer (an embedding lookup) is never folded: it is a network op.
        """
        for n in self.nodes:
            ins = [i for i in n.input if i]
            dyn = any(i in self.dynamic for i in ins)
            if n.op_type == "Shape" and n.input[0] in self.shapes:
                dyn = False
            if n.op_type == "Gather" and n.input[0] in self.inits and len(self.shapes.get(n.input[0], ())) == 2:
                dyn = True
            if not dyn and n.op_type in _EVAL:
                try:
                    vals = _EVAL[n.op_type](self, n)
                except Exception as e:  # an op we do not evaluate in this form: treat as dynamic
                    log.debug("%s: not folding %s %s: %s", self.path, n.op_type, n.name, e)
                    vals = None
                if vals is not None:
                    for o, v in zip(n.output, vals):
                        self._values[o] = np.asarray(v)
                    continue
            self.dynamic.update(o for o in n.output if o)

    # --- looking through layout ops -----------------------------------------------------------
    def layout_input(self, node) -> str | None:
        """The one dynamic input of a layout node (None if `node` is not one)."""
        if node.op_type not in LAYOUT_OPS:
            return None
        if node.op_type == "Cast" and _attr(node, "to") not in _FLOAT_TYPES:
            return None
        return node.input[0] if node.input[0] in self.dynamic else None

    def root(self, name: str) -> str:
        """The value `name` is a layout of: follow producers back through layout ops."""
        while name in self.producer:
            src = self.layout_input(self.producer[name])
            if src is None:
                return name
            name = src
        return name

    def aliases(self, root: str) -> list[str]:
        """`root` and every tensor reachable from it through layout ops."""
        out, todo = [], [root]
        while todo:
            t = todo.pop()
            out.append(t)
            for n, _ in self.consumers.get(t, ()):
                if self.layout_input(n) == t:
                    todo.extend(o for o in n.output if o)
        return out

    def users(self, root: str) -> list[tuple]:
        """(node, input index) of every non-layout node that reads `root` or one of its aliases."""
        out = []
        for t in self.aliases(root):
            for n, i in self.consumers.get(t, ()):
                if self.layout_input(n) != t:
                    out.append((n, i))
        return sorted(out, key=lambda ni: self.order[id(ni[0])])

    def part_of(self, node) -> tuple | None:
        """(root, k, n) when `node` is a Slice / Split taking the k-th of n equal chunks of a value."""
        src = node.input[0] if node.input else None
        if src is None or src not in self.dynamic:
            return None
        shape = self.shapes.get(src)
        if node.op_type == "Slice" and shape is not None:
            starts, ends = self.value(node.input[1]), self.value(node.input[2])
            axes = self.value(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            steps = self.value(node.input[4]) if len(node.input) > 4 and node.input[4] else None
            if starts is None or ends is None or np.size(starts) != 1 or (steps is not None and int(steps[0]) != 1):
                return None
            ax = int(axes[0]) % len(shape) if axes is not None else 0
            size = shape[ax]
            s, e = int(starts[0]), min(int(ends[0]), size)
            s, e = (s + size if s < 0 else s), (e + size if e < 0 else e)
            width = e - s
            if width <= 0 or size % width or s % width:
                return None
            return self.root(src), s // width, size // width
        return None


def _np_dtype(onnx_type: int):
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(onnx_type)


def _ints(g, name):
    v = g.value(name)
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _eval_slice(g, n):
    x = g.value(n.input[0])
    starts, ends = _ints(g, n.input[1]), _ints(g, n.input[2])
    axes = _ints(g, n.input[3]) if len(n.input) > 3 and n.input[3] else list(range(len(starts)))
    steps = _ints(g, n.input[4]) if len(n.input) > 4 and n.input[4] else [1] * len(starts)
    idx = [slice(None)] * x.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        idx[a] = slice(s, e, st)
    return [x[tuple(idx)]]


def _eval_unsqueeze(g, n):
    x = g.value(n.input[0])
    axes = _ints(g, n.input[1]) if len(n.input) > 1 else list(_attr(n, "axes"))
    for a in sorted(a % (x.ndim + len(axes)) for a in axes):
        x = np.expand_dims(x, a)
    return [x]


def _eval_squeeze(g, n):
    x = g.value(n.input[0])
    axes = _ints(g, n.input[1]) if len(n.input) > 1 and n.input[1] else _attr(n, "axes")
    return [np.squeeze(x, axis=None if axes is None else tuple(axes))]


def _eval_reshape(g, n):
    x = g.value(n.input[0])
    shape = _ints(g, n.input[1])
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _eval_constant(g, n):
    from onnx import numpy_helper

    for a in n.attribute:
        if a.name == "value":
            return [numpy_helper.to_array(a.t)]
        if a.name in ("value_float", "value_int"):
            return [np.array(a.f if a.name == "value_float" else a.i)]
        if a.name in ("value_floats", "value_ints"):
            return [np.array(list(a.floats if a.name == "value_floats" else a.ints))]
    raise ValueError("unsupported Constant")


def _eval_constant_of_shape(g, n):
    from onnx import numpy_helper

    t = _attr(n, "value")
    fill = numpy_helper.to_array(t).reshape(-1)[0] if t is not None else np.float32(0)
    return [np.full(_ints(g, n.input[0]), fill, dtype=np.asarray(fill).dtype)]


def _binary(fn):
    return lambda g, n: [fn(g.value(n.input[0]), g.value(n.input[1]))]


def _eval_trilu(g, n):
    x = g.value(n.input[0])
    k = _ints(g, n.input[1])[0] if len(n.input) > 1 and n.input[1] else 0
    return [np.triu(x, k) if _attr(n, "upper", 1) else np.tril(x, k)]


_EVAL = {
    "Constant": _eval_constant,
    "Identity": lambda g, n: [g.value(n.input[0])],
    "Cast": lambda g, n: [np.asarray(g.value(n.input[0])).astype(_np_dtype(_attr(n, "to")))],
    "Shape": lambda g, n: [np.array(g.shapes[n.input[0]], np.int64)],
    "Reshape": _eval_reshape,
    "Transpose": lambda g, n: [np.transpose(g.value(n.input[0]), _attr(n, "perm"))],
    "Unsqueeze": _eval_unsqueeze,
    "Squeeze": _eval_squeeze,
    "Concat": lambda g, n: [np.concatenate([np.atleast_1d(g.value(i)) for i in n.input], axis=_attr(n, "axis"))],
    "Gather": lambda g, n: [np.take(g.value(n.input[0]), g.value(n.input[1]), axis=_attr(n, "axis", 0))],
    "Slice": _eval_slice,
    "ConstantOfShape": _eval_constant_of_shape,
    "Expand": lambda g, n: [np.broadcast_to(g.value(n.input[0]), np.broadcast_shapes(
        np.shape(g.value(n.input[0])), tuple(_ints(g, n.input[1])))).copy()],
    "Range": lambda g, n: [np.arange(g.value(n.input[0]), g.value(n.input[1]), g.value(n.input[2]))],
    "Trilu": _eval_trilu,
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply),
    "Div": lambda g, n: [(np.floor_divide if np.asarray(g.value(n.input[0])).dtype.kind in "iu" else np.divide)(
        g.value(n.input[0]), g.value(n.input[1]))],
    "Pow": _binary(np.power), "Equal": _binary(np.equal), "Less": _binary(np.less),
    "Greater": _binary(np.greater), "Min": _binary(np.minimum), "Max": _binary(np.maximum),
    "Sqrt": lambda g, n: [np.sqrt(g.value(n.input[0]))],
    "Neg": lambda g, n: [np.negative(g.value(n.input[0]))],
    "Not": lambda g, n: [np.logical_not(g.value(n.input[0]))],
    "Where": lambda g, n: [np.where(g.value(n.input[0]), g.value(n.input[1]), g.value(n.input[2]))],
}


# ---------------------------------------------------------------------------------------------
# the map
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapRow:
    """One line of the mapping table: an ONNX tensor, the tinysd name it is (or None) and why."""

    onnx: str
    tinysd: str | None
    role: str  # "activation", "part", "input", "constant", "weight", "bias", "param", "alias", "reader copy", "unused"
    why: str


@dataclass
class OnnxMap:
    """The result of `map_onnx`: rows, lookups by ONNX name, the weights in the graph, the parts to follow."""

    path: Path
    network: str
    rows: list[MapRow] = field(default_factory=list)
    #: ONNX tensor -> tinysd activation tensor (op outputs, parts, inputs; aliases and duplicates too)
    activations: dict[str, str] = field(default_factory=dict)
    #: ONNX constant -> tinysd constant operand of a part (`{network}.{op}.{part}.const`)
    constants: dict[str, str] = field(default_factory=dict)
    #: ONNX initializer -> (tinysd parameter `{network}.{param}`, transposed: the graph holds it as (IN, OUT))
    params: dict[str, tuple[str, bool]] = field(default_factory=dict)
    #: tinysd parameter (without the network prefix) -> the graph's value in tinysd's layout
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    #: op name -> the parts the graph computes it as (a subset of PARTS[kind], plus "requant")
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def _add(self, onnx_name: str, tinysd: str | None, role: str, why: str) -> None:
        self.rows.append(MapRow(onnx_name, tinysd, role, why))
        if tinysd is None:
            return
        if role in ("activation", "part", "input", "alias"):
            self.activations.setdefault(onnx_name, tinysd)
        elif role == "constant":
            self.constants.setdefault(onnx_name, tinysd)

    def table(self, names=None) -> str:
        """The mapping table as tab-separated text (header first); only `names` if given."""
        lines = ["onnx_name\ttinysd_name\twhy"]
        for r in self.rows:
            if names is None or r.onnx in names:
                lines.append(f"{r.onnx}\t{r.tinysd or '-'}\t{r.why}")
        return "\n".join(lines) + "\n"

    def find(self, onnx_name: str) -> MapRow | None:
        return next((r for r in self.rows if r.onnx == onnx_name), None)


@dataclass
class _Match:
    nodes: list
    out: str  # ONNX tensor of the op's final output
    parts: dict = field(default_factory=dict)  # part -> ONNX tensor
    consts: dict = field(default_factory=dict)  # part ("" = final) -> ONNX constant name
    weight: tuple | None = None  # (initializer, transposed)
    bias: str | None = None
    inputs: tuple = ()  # ONNX tensors standing for tinysd inputs found here (for unmatched network inputs)
    input_aliases: list = field(default_factory=list)  # ONNX copies of the op's input (a Conv's zero-padded input)
    why: str = ""


def _close(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= _REL * max(abs(b), 1e-30)


class _Matcher:
    """Walks tinysd's traced ops and finds each in the ONNX graph (module docstring, step 3)."""

    def __init__(self, g: OnnxGraph, trace, network: str, params: Mapping[str, np.ndarray] | None):
        self.g, self.trace, self.network, self.params = g, trace, network, params or {}
        self.used: set[int] = set()  # id() of consumed ONNX nodes
        self.node_op: dict[int, object] = {}  # id() of a consumed ONNX node -> the traced op it computes
        self.value_of: dict[int, tuple] = {}  # tinysd tensor id -> (ONNX root, part or None)
        self.tensor_of: dict[int, str] = {}  # tinysd tensor id -> tinysd tensor name (through layout ops)
        self.equiv: dict[str, list[str]] = {}  # ONNX root -> it and its duplicates (same op on the same value)
        self.map = OnnxMap(g.path, network)

    # --- helpers ---------------------------------------------------------------------------
    def _users(self, v: tuple) -> list[tuple]:
        """Unused non-layout users of value v = (root, part) and of its duplicates."""
        root, part = v
        if len(self.equiv.get(root, ())) > 1:
            return [u for r in self.equiv[root] for u in self._users_of((r, part))]
        return self._users_of(v)

    def _users_of(self, v: tuple) -> list[tuple]:
        root, part = v
        if part is None:
            return [(n, i) for n, i in self.g.users(root) if id(n) not in self.used]
        out = []
        for n, _ in self.g.users(root):
            if n.op_type in ("Slice", "Split"):
                p = self.g.part_of(n)
                if p is not None and p[1:] == part:
                    out += [(m, i) for m, i in self.g.users(n.output[0]) if id(m) not in self.used]
        return out

    def _is(self, onnx_name: str, v: tuple) -> bool:
        """Is ONNX tensor `onnx_name` the value `v` (up to layout ops)?"""
        root = self.g.root(onnx_name)
        roots = self.equiv.get(v[0], [v[0]])
        if v[1] is None:
            return root in roots
        p = self.g.producer.get(root)
        part = self.g.part_of(p) if p is not None else None
        return part is not None and part[0] in roots and part[1:] == v[1]

    def _single(self, t: str, op: str, other_const=None):
        """The one unused user of value `t` with op type `op` (and, when given, a constant other operand
        satisfying other_const(value)); returns (node, constant input name or None) or (None, None)."""
        for n, i in self._users((self.g.root(t), None)):
            if n.op_type != op:
                continue
            if other_const is None:
                return n, None
            c = n.input[1 - i] if len(n.input) == 2 else None
            if c is not None and self.g.is_const(c) and other_const(self.g.value(c)):
                return n, c
        return None, None

    def _weight_node(self, kinds, shape: tuple, x: tuple | None, wname: str):
        """The unused node of type in `kinds` whose weight initializer fits tinysd's `shape`, reading `x`
        (or any node when x is None); among several the one whose weight is closest to the checkpoint's."""
        cands = []
        if x is None:
            pool = [(n, 0) for n in self.g.nodes if id(n) not in self.used]
        else:  # a zero Pad before a Conv is part of the convolution
            pool = [(m, j) for n, i in self._users(x)
                    for m, j in ([(n, i)] if n.op_type != "Pad" else self._users((self.g.root(n.output[0]), None)))]
        for n, i in pool:
            if n.op_type not in kinds or i != 0 or len(n.input) < 2:
                continue
            w = n.input[0] if n.op_type == "Gather" else n.input[1]
            if w not in self.g.inits:
                continue
            wshape = self.g.shapes[w]
            transposed = None
            if n.op_type == "Gemm":
                transposed = False if _attr(n, "transB", 0) else True
            elif n.op_type == "MatMul":
                transposed = True
            elif n.op_type == "Gather":
                transposed = False
            else:
                transposed = False
            if (wshape[::-1] if transposed else wshape) != tuple(shape):
                continue
            cands.append((n, w, transposed))
        if not cands:
            return None
        ref = self.params.get(wname)
        if len(cands) > 1 and ref is not None:
            def dist(c):
                v = self.g.init_value(c[1]).astype(np.float64)
                v = v.T if c[2] else v
                return float(np.max(np.abs(v - ref))) if v.shape == ref.shape else math.inf
            return min(cands, key=dist)
        return cands[0]

    def _bias_add(self, t: str, o: int):
        """An Add of a constant (o,) bias to value t: (node, bias initializer) or (None, None)."""
        n, c = self._single(t, "Add", lambda v: np.shape(v) == (o,))
        return (n, c) if n is not None else (None, None)

    def _x(self, op, k=0) -> tuple | None:
        tid = op.inputs[k]
        return self.value_of.get(tid)

    # --- matchers (one per tinysd op kind; each returns a _Match or None) --------------------------
    def m_conv2d(self, op):
        wname = f"{op.name}.weight"
        found = self._weight_node(("Conv",), op.params[wname], self._x(op), wname)
        if found is None:
            return None
        n, w, _ = found
        pads, strides = _attr(n, "pads", [0, 0, 0, 0]), _attr(n, "strides", [1, 1])
        top, left, bottom, right = pads
        nodes, data = [n], n.input[0]
        pad = self.g.producer.get(self.g.root(data))
        if pad is not None and pad.op_type == "Pad":  # (N, C, H, W) pads [begins..., ends...]
            p = [int(v) for v in np.asarray(self.g.value(pad.input[1])).reshape(-1)]
            value = self.g.scalar(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
            if _attr(pad, "mode", b"constant") not in (b"constant", "constant") or value != 0.0 or len(p) != 8:
                return None
            top, left, bottom, right = top + p[2], left + p[3], bottom + p[6], right + p[7]
            nodes, data = [pad, n], pad.input[0]
        if tuple(strides) != tuple(op.attrs["stride"]) or (top, bottom, left, right) != tuple(op.attrs["padding"]):
            return None
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        return _Match(nodes, n.output[0], weight=(w, False), bias=bias, inputs=(data,),
                      input_aliases=[n.input[0]] if len(nodes) == 2 else [], why=f"Conv {n.name}")

    def m_linear(self, op):
        wname = f"{op.name}.weight"
        o = op.params[wname][0]
        found = self._weight_node(("Gemm", "MatMul"), op.params[wname], self._x(op), wname)
        if found is None:
            return None
        n, w, transposed = found
        if n.op_type == "Gemm":
            bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
            return _Match([n], n.output[0], weight=(w, transposed), bias=bias, inputs=(n.input[0],),
                          why=f"Gemm {n.name}")
        add, b = self._bias_add(n.output[0], o) if f"{op.name}.bias" in op.params else (None, None)
        if add is not None:
            return _Match([n, add], add.output[0], weight=(w, True), bias=b, inputs=(n.input[0],),
                          why=f"MatMul {n.name} + Add {add.name}")
        return _Match([n], n.output[0], weight=(w, True), inputs=(n.input[0],), why=f"MatMul {n.name}")

    def m_embedding(self, op):
        wname = f"{op.name}.weight"
        found = self._weight_node(("Gather",), op.params[wname], None, wname)
        if found is None:
            return None
        n, w, _ = found
        return _Match([n], n.output[0], weight=(w, False), why=f"Gather {n.name} from the table")

    def _norm_affine(self, n, op, kind_why):
        """After a normalization node n: [layout] Mul(gamma) [layout] Add(beta) -> parts norm, mul."""
        c = op.params[f"{op.name}.weight"][0]
        is_vec = lambda v: np.size(v) == c and np.shape(v)[0] == c  # noqa: E731
        mul, gamma = self._single(n.output[0], "Mul", is_vec)
        if mul is None:
            return None
        add, beta = self._single(mul.output[0], "Add", is_vec)
        if add is None:
            return None
        return _Match([n, mul, add], add.output[0], parts={"norm": n.output[0], "mul": mul.output[0]},
                      consts={"mul": gamma, "": beta}, why=f"{kind_why} {n.name} + Mul {mul.name} + Add {add.name}")

    def m_group_norm(self, op):
        for n, _ in self._users(self._x(op)):
            if n.op_type == "GroupNormalization":
                return _Match([n], n.output[0], why=f"GroupNormalization {n.name}")
            if n.op_type == "InstanceNormalization" and self.g.shapes.get(n.input[1], (0,))[0] == op.attrs["groups"]:
                m = self._norm_affine(n, op, "InstanceNormalization")
                if m is not None:
                    return m
        return None

    def m_layer_norm(self, op):
        for n, _ in self._users(self._x(op)):
            if n.op_type == "LayerNormalization":
                return _Match([n], n.output[0], why=f"LayerNormalization {n.name}")
        return None

    def _gated(self, x: tuple, gate: str):
        """Mul(x, gate) (either order): the node or None."""
        for n, i in self._users((self.g.root(gate), None)):
            if n.op_type == "Mul" and self._is(n.input[1 - i], x):
                return n
        return None

    def m_silu(self, op):
        x = self._x(op)
        for n, _ in self._users(x):
            if n.op_type == "Sigmoid":
                mul = self._gated(x, n.output[0])
                if mul is not None:
                    return _Match([n, mul], mul.output[0], parts={"sigmoid": n.output[0]},
                                  why=f"Sigmoid {n.name} + Mul {mul.name}")
        return None

    def m_quick_gelu(self, op):
        x = self._x(op)
        for n, i in self._users(x):
            c = n.input[1 - i] if n.op_type == "Mul" else None
            if c is None or not _close(self.g.scalar(c), 1.702):
                continue
            sig, _ = self._single(n.output[0], "Sigmoid")
            mul = self._gated(x, sig.output[0]) if sig is not None else None
            if mul is not None:
                return _Match([n, sig, mul], mul.output[0], parts={"scaled": n.output[0], "sigmoid": sig.output[0]},
                              consts={"scaled": c}, why=f"Mul {n.name} (1.702) + Sigmoid {sig.name} + Mul {mul.name}")
        return None

    def m_gelu(self, op):
        x = self._x(op)
        for n, i in self._users(x):
            if n.op_type == "Gelu":
                return _Match([n], n.output[0], why=f"Gelu {n.name}")
            c = n.input[1 - i] if n.op_type in ("Div", "Mul") and len(n.input) == 2 else None
            v = self.g.scalar(c) if c else None
            if v is None or not (_close(v, math.sqrt(2.0)) if n.op_type == "Div" else _close(v, 1 / math.sqrt(2.0))):
                continue
            erf, _ = self._single(n.output[0], "Erf")
            add, c_add = self._single(erf.output[0], "Add", lambda v: np.size(v) == 1 and _close(float(v), 1.0)) \
                if erf is not None else (None, None)
            mul = self._gated(x, add.output[0]) if add is not None else None
            half, c_half = self._single(mul.output[0], "Mul", lambda v: np.size(v) == 1 and _close(float(v), 0.5)) \
                if mul is not None else (None, None)
            if half is not None:
                return _Match([n, erf, add, mul, half], half.output[0],
                              parts={"div": n.output[0], "erf": erf.output[0], "add": add.output[0],
                                     "mul": mul.output[0]},
                              consts={"div": c, "add": c_add, "": c_half},
                              why=f"{n.op_type} {n.name} + Erf + Add + Mul + Mul {half.name}")
        return None

    def m_softmax(self, op):
        x = self._x(op)
        for n, i in self._users(x):
            if n.op_type == "Softmax":
                return _Match([n], n.output[0], why=f"Softmax {n.name}")
            if n.op_type == "Add" and op.attrs.get("causal") and self.g.is_const(n.input[1 - i]):
                sm, _ = self._single(n.output[0], "Softmax")
                if sm is not None:
                    return _Match([n, sm], sm.output[0], parts={"masked": n.output[0]},
                                  why=f"Add {n.name} (causal mask) + Softmax {sm.name}")
        return None

    def m_matmul(self, op):
        a, b = self._x(op, 0), self._x(op, 1)
        alpha = op.attrs["alpha"]
        for n, i in self._users(a):
            if n.op_type == "MatMul" and i == 0 and self._is(n.input[1], b):
                if alpha == 1.0:
                    return _Match([n], n.output[0], why=f"MatMul {n.name}")
                for s, j in self._users((self.g.root(n.output[0]), None)):
                    c = s.input[1 - j] if s.op_type in ("Mul", "Div") else None
                    v = self.g.scalar(c) if c else None
                    if v is not None and _close(v if s.op_type == "Mul" else 1.0 / v, alpha):
                        return _Match([n, s], s.output[0], parts={"product": n.output[0]}, consts={"": c},
                                      why=f"MatMul {n.name} + {s.op_type} {s.name} (scale)")
            if n.op_type == "Mul" and alpha != 1.0:
                ca = self.g.scalar(n.input[1 - i])
                if ca is None:
                    continue
                for mm, j in self._users((self.g.root(n.output[0]), None)):
                    if mm.op_type != "MatMul" or j != 0:
                        continue
                    bn = self.g.producer.get(self.g.root(mm.input[1]))
                    if bn is not None and bn.op_type == "Mul":
                        k = 0 if self._is(bn.input[0], b) else 1 if self._is(bn.input[1], b) else None
                        cb = self.g.scalar(bn.input[1 - k]) if k is not None else None
                        if cb is not None and _close(ca * cb, alpha):
                            return _Match([n, bn, mm], mm.output[0],
                                          parts={"a_scaled": n.output[0], "b_scaled": bn.output[0]},
                                          consts={"a_scaled": n.input[1 - i], "b_scaled": bn.input[1 - k]},
                                          why=f"Mul {n.name} + Mul {bn.name} (scales) + MatMul {mm.name}")
                    if self._is(mm.input[1], b) and _close(ca, alpha):
                        return _Match([n, mm], mm.output[0], parts={"a_scaled": n.output[0]},
                                      consts={"a_scaled": n.input[1 - i]},
                                      why=f"Mul {n.name} (scale) + MatMul {mm.name}")
        return None

    def _binary(self, op, onnx_op):
        a, b = self._x(op, 0), self._x(op, 1)
        for n, i in self._users(a):
            if n.op_type == onnx_op and len(n.input) == 2 and self._is(n.input[1 - i], b):
                return _Match([n], n.output[0], why=f"{onnx_op} {n.name}")
        return None

    def m_add(self, op):
        return self._binary(op, "Add")

    def m_mul(self, op):
        return self._binary(op, "Mul")

    def m_scale(self, op):
        for n, i in self._users(self._x(op)):
            c = n.input[1 - i] if n.op_type in ("Mul", "Div") and i == 0 else None
            v = self.g.scalar(c) if c else None
            if v is not None and _close(v if n.op_type == "Mul" else 1.0 / v, op.attrs["factor"]):
                return _Match([n], n.output[0], consts={"": c}, why=f"{n.op_type} {n.name} by {v:g}")
        return None

    def m_concat(self, op):
        xs = [self.value_of.get(t) for t in op.inputs]
        for n, _ in self._users(xs[0]):
            if n.op_type == "Concat" and len(n.input) == len(xs) and all(self._is(t, v) for t, v in zip(n.input, xs)):
                return _Match([n], n.output[0], why=f"Concat {n.name}")
        return None

    def m_upsample_nearest2x(self, op):
        for n, _ in self._users(self._x(op)):
            if n.op_type in ("Resize", "Upsample"):
                return _Match([n], n.output[0], why=f"{n.op_type} {n.name}")
        return None

    def _requant(self, out: str):
        """A Div / Mul by exactly 1 that is the only user of `out`: (node, constant) or (None, None)."""
        users = self._users((self.g.root(out), None))
        if len(users) != 1:
            return None, None
        n, i = users[0]
        c = n.input[1 - i] if n.op_type in ("Div", "Mul") and len(n.input) == 2 and i == 0 else None
        return (n, c) if c is not None and self.g.scalar(c) == 1.0 else (None, None)

    # --- the walk -------------------------------------------------------------------------------
    def run(self) -> OnnxMap:
        tinysd_of_input: dict[int, str] = {}
        for op in self.trace.ops:
            if op.kind == "input":
                tinysd_of_input[op.output[0]] = op.tensor
                self.tensor_of[op.output[0]] = op.tensor
                continue
            if op.kind == "output":
                continue
            if op.kind == "layout":
                if op.attrs["layout"] != "split" and op.inputs[0] in self.tensor_of:
                    self.tensor_of[op.output[0]] = self.tensor_of[op.inputs[0]]
                src = self.value_of.get(op.inputs[0])
                if src is not None:
                    if op.attrs["layout"] == "split":
                        k, n, _ = op.attrs["part"]
                        src = (src[0], (k, n)) if src[1] is None else None
                    if src is not None:
                        self.value_of[op.output[0]] = src
                continue
            unplaced = [t for t in op.inputs if t not in self.value_of]
            if unplaced and op.kind not in ("conv2d", "linear"):
                names = ", ".join(tinysd_of_input.get(t, str(t)) for t in unplaced)
                raise TinySDError(f"{self.g.path}: cannot place tinysd tensor(s) {names} (read by {op.tensor}) in "
                                  f"the graph")
            m = getattr(self, f"m_{op.kind}")(op)
            if m is None:
                raise TinySDError(f"{self.g.path}: no ONNX node computes tinysd's {op.tensor} ({op.kind}) where the "
                                  f"graph has it: is this graph a {self.network} of this model?")
            self._record(op, m, tinysd_of_input)
        return self.map

    def _record(self, op, m: _Match, tinysd_of_input) -> None:
        g, mp = self.g, self.map
        for t, onnx_in in zip(op.inputs, m.inputs):
            if t not in self.value_of:  # a network input, placed at its first consumer
                root = g.root(onnx_in)
                self.value_of[t] = (root, None)
                for a in g.aliases(root):
                    where = "a graph input" if a in g.inputs else f"computed by {g.producer[a].op_type}" \
                        if a in g.producer else "a value"
                    mp._add(a, tinysd_of_input[t], "input", f"input of {m.why} ({where}; tinysd computes what "
                            f"comes before it on the host)")
        self.used.update(id(n) for n in m.nodes)
        self.node_op.update((id(n), op) for n in m.nodes)
        for t in m.input_aliases:
            src = self.tensor_of.get(op.inputs[0])
            for a in g.aliases(g.root(t)):
                mp._add(a, src, "alias", f"zero-padded copy of {src} read by {m.why}")
        out = m.out
        part_names = dict(m.parts)
        req, c = self._requant(out)
        if req is not None:
            self.used.add(id(req))
            part_names["requant"] = out
            m.consts["requant"] = c
            out = req.output[0]
        tensor = op.tensor
        for part, t in part_names.items():
            pt = part_tensor(tensor, part)
            for a in g.aliases(g.root(t)):
                mp._add(a, pt, "part", f"{PARTS.get(op.kind, {}).get(part, part)} inside {op.kind} {op.name} ({m.why})"
                        if part != "requant" else f"output of {op.kind} {op.name} before its rescale by 1 ({m.why})")
        for part, cname in m.consts.items():
            if cname is not None:
                mp._add(cname, const_name(tensor, part), "constant",
                        f"constant operand of {part or 'the output'} of {op.kind} {op.name}")
        for a in g.aliases(g.root(out)):
            mp._add(a, tensor, "activation" if a == g.root(out) else "alias",
                    f"output of {op.kind} {op.name}: {m.why}" if a == g.root(out) else
                    f"layout of {op.tensor} ({g.producer[a].op_type} {g.producer[a].name})")
        present = tuple(p for p in list(PARTS.get(op.kind, {})) + ["requant"] if p in part_names)
        if present:
            mp.parts[op.name] = present
        self.value_of[op.output[0]] = (g.root(out), None)
        self.tensor_of[op.output[0]] = tensor
        self._record_params(op, m)
        self._duplicates(op, m, out)

    def _record_params(self, op, m: _Match) -> None:
        g, mp = self.g, self.map
        if m.weight is not None:
            w, transposed = m.weight
            pname = f"{op.name}.weight"
            mp.params[w] = (f"{self.network}.{pname}", transposed)
            value = g.init_value(w)
            mp.weights[pname] = np.ascontiguousarray(value.T if transposed else value)
            mp.rows.append(MapRow(w, f"{self.network}.{pname}", "weight",
                                  f"weight of {m.why}, shape {tuple(value.shape)}"
                                  + (" (IN, OUT): transposed" if transposed else "")))
        if m.bias is not None:
            pname = f"{op.name}.bias"
            mp.params[m.bias] = (f"{self.network}.{pname}", False)
            mp.weights[pname] = np.asarray(g.init_value(m.bias)).reshape(-1)
            mp.rows.append(MapRow(m.bias, f"{self.network}.{pname}", "bias", f"bias of {m.why}"))
        if op.kind in ("group_norm", "layer_norm"):
            node = m.nodes[0]
            srcs = {"weight": m.consts.get("mul"), "bias": m.consts.get("")}
            if node.op_type in ("LayerNormalization", "GroupNormalization"):
                srcs = {"weight": node.input[1], "bias": node.input[2] if len(node.input) > 2 else None}
            for p, src in srcs.items():
                if src is not None and g.is_const(src):
                    pname = f"{op.name}.{p}"
                    mp.weights[pname] = np.asarray(g.value(src), np.float32).reshape(-1)
                    if src in g.inits:
                        mp.params.setdefault(src, (f"{self.network}.{pname}", False))
                        mp.rows.append(MapRow(src, f"{self.network}.{pname}", "param",
                                              f"{p} of {m.why}"))

    def _duplicates(self, op, m: _Match, out: str) -> None:
        """Other ONNX nodes computing the same op on the same inputs (an exporter that does not merge them)."""
        if op.kind in ("conv2d", "linear", "embedding") or not m.nodes:
            return
        while True:
            dup = getattr(self, f"m_{op.kind}")(op)
            if dup is None:
                return
            self.used.update(id(n) for n in dup.nodes)
            self.equiv.setdefault(self.g.root(out), [self.g.root(out)]).append(self.g.root(dup.out))
            for part, t in dup.parts.items():
                self.map._add(t, part_tensor(op.tensor, part), "part",
                              f"duplicate of {op.tensor}'s {part} ({dup.why}): the same op on the same value")
            for a in self.g.aliases(self.g.root(dup.out)):
                self.map._add(a, op.tensor, "alias", f"duplicate of {op.tensor} ({dup.why}): the same op on the same "
                              f"value, which tinysd computes once")


def _time_feature_rows(g: OnnxGraph, mp: OnnxMap) -> None:
    """Rows for the timestep features the graph computes before the UNet's `time_proj` input (TIME_PARTS).

    diffusers' `Timesteps` exports as timestep -> (Expand, layout ops) -> Mul by the frequencies
    (a constant) -> Sin and Cos of the product -> Concat [sin, cos] -> with flip_sin_to_cos, Concat of
    its second and first halves (two Slices) -> `time_proj`. When the graph has exactly this chain, its
    values are the parts `unet.time_proj.{part}.out` and the frequencies `unet.time_proj.mul.const`
    (the integer UNet then computes the features as the graph does: `device_timestep_features`);
    any other shape is left as host-side computation.
    """
    tensor = f"{mp.network}.{TIME_INPUT}"
    src = next((r.onnx for r in mp.rows if r.role == "input" and r.tinysd == tensor), None)
    if src is None:
        return
    found: dict[str, str] = {}

    def node_of(v, op_type):
        n = g.producer.get(g.root(v))
        return n if n is not None and n.op_type == op_type else None

    cat = node_of(src, "Concat")
    if cat is not None and len(cat.input) == 2:
        halves = [g.part_of(g.producer[g.root(i)]) if g.root(i) in g.producer else None for i in cat.input]
        if all(h is not None for h in halves) and halves[0][0] == halves[1][0] and \
                [h[1:] for h in halves] == [(1, 2), (0, 2)]:
            found["concat"] = halves[0][0]
            cat = node_of(halves[0][0], "Concat")
    if cat is None or len(cat.input) != 2:
        return
    sin, cos = node_of(cat.input[0], "Sin"), node_of(cat.input[1], "Cos")
    if sin is None or cos is None or g.root(sin.input[0]) != g.root(cos.input[0]):
        return
    mul = node_of(sin.input[0], "Mul")
    if mul is None or len(mul.input) != 2:
        return
    consts = [i for i in mul.input if g.is_const(i)]
    dyn = [i for i in mul.input if not g.is_const(i)]
    width = g.shapes.get(g.root(src), (0,))[-1]
    if len(consts) != 1 or len(dyn) != 1 or np.size(g.value(consts[0])) != width // 2:  # one frequency per pair
        return
    t = g.root(dyn[0])
    while t in g.producer and g.producer[t].op_type == "Expand":  # the timestep broadcast to the batch
        t = g.root(g.producer[t].input[0])
    if t not in g.inputs:
        return
    found.update(sin=g.root(sin.output[0]), cos=g.root(cos.output[0]), mul=g.root(mul.output[0]), timestep=t)
    for part in TIME_PARTS:
        if part in found:
            for a in g.aliases(found[part]):
                mp._add(a, part_tensor(tensor, part), "part", f"{TIME_PARTS[part]}: part of the timestep features "
                        f"before {tensor} (computed by tinysd on the host as the graph does)")
    mp._add(consts[0], const_name(tensor, "mul"), "constant", f"the frequencies: constant operand of the timestep "
            f"features' Mul {mul.name}")


def _reader_copy_rows(g: OnnxGraph, mp: OnnxMap, node_op: Mapping[int, object]) -> None:
    """Copies of a value made for one of its readers: that reader's `input` part, not the value.

    An Identity node whose input other nodes read too (aimet-torch's `..._dup_0` nodes) copies the
    value for its own reader; an encoding on the copy (or a layout of it) is that reader's input
    quantizer: the value's other readers (a residual add, a skip concat) take it unquantized. When
    the copy's one reader is a tinysd conv, linear or norm, the copy is that op's `input` part
    (`{op}.input.out`: the op's input requantized to the copy's encoding, docs/arithmetic.md section
    4.11); otherwise the row says "reader copy" and the encoding is not used. Either way it is not
    the value's encoding (the value gets its own, from the file or derived).
    """
    copies: dict[str, tuple] = {}
    for n in g.nodes:
        src = n.input[0] if n.op_type == "Identity" and n.input else None
        if src in g.dynamic and len(g.consumers.get(src, ())) > 1:
            readers = g.users(n.output[0])
            ops = {id(node_op[id(u)]): node_op[id(u)] for u, _ in readers if id(u) in node_op}
            op = next(iter(ops.values())) if len(ops) == 1 else None
            if op is not None and (op.kind not in READER_INPUT_OPS or
                                   not any(i == 0 for u, i in readers if node_op.get(id(u)) is op)):
                op = None
            text = ", ".join(f"{u.op_type} {u.name}" for u, _ in readers)
            copies.update({a: (op, text) for a in g.aliases(n.output[0])})
    for i, r in enumerate(mp.rows):
        if r.onnx not in copies or r.tinysd is None or r.role not in ("activation", "alias", "part", "input"):
            continue
        op, text = copies[r.onnx]
        if mp.activations.get(r.onnx) == r.tinysd:
            del mp.activations[r.onnx]
        if op is None:
            mp.rows[i] = MapRow(r.onnx, r.tinysd, "reader copy",
                                f"copy of {r.tinysd} read only by {text} (Identity of a value other nodes read "
                                f"too): its encoding quantizes those readers' input, not {r.tinysd}")
            continue
        pt = part_tensor(op.tensor, "input")
        mp.rows[i] = MapRow(r.onnx, pt, "part", f"input of {op.kind} {op.name} (a copy of {r.tinysd} read only by "
                                                f"{text}; the value's other readers take it unquantized)")
        mp.activations.setdefault(r.onnx, pt)
        mp.parts[op.name] = ("input",) + tuple(p for p in mp.parts.get(op.name, ()) if p != "input")


def _unmatched_rows(g: OnnxGraph, mp: OnnxMap, used: set[int]) -> None:
    """Rows for every other ONNX value: constants, host-side computation before an input, unfollowed nodes."""
    known = {r.onnx for r in mp.rows}
    upstream: set[str] = set()
    inputs = {r.tinysd for r in mp.rows if r.role == "input"}
    todo = [t for t, n in mp.activations.items() if n in inputs]
    while todo:
        t = todo.pop()
        p = g.producer.get(t)
        if p is None or id(p) in used:
            continue
        for i in p.input:
            if i and i not in upstream:
                upstream.add(i)
                todo.append(i)
        upstream.update(p.output)
    for n in g.nodes:
        part = g.part_of(n) if n.op_type in ("Slice", "Split") else None
        if part is not None and part[0] in mp.activations:
            src = mp.activations[part[0]]
            for a in g.aliases(n.output[0]):
                if a not in known:
                    mp._add(a, src, "alias", f"chunk {part[1]} of {part[2]} of {src} ({n.op_type} {n.name}): "
                                             f"a chunk keeps its value's encoding")
                    known.add(a)
            used.add(id(n))
        for o in n.output:
            if not o or o in known:
                continue
            if o not in g.dynamic:
                mp.rows.append(MapRow(o, None, "unused",
                                      f"constant ({n.op_type} {n.name}): folded, not a network tensor"))
            elif o in upstream:
                mp.rows.append(MapRow(o, None, "unused", f"{n.op_type} {n.name}: before a network input, computed by "
                                                         f"tinysd on the host"))
            elif id(n) not in used:
                mp.rows.append(MapRow(o, None, "unused", f"{n.op_type} {n.name}: not an op of tinysd's graph"))
    for name in g.inputs:
        if name not in known:
            mp.rows.append(MapRow(name, None, "unused", "graph input before a network input, computed by tinysd on "
                                                        "the host" if name in upstream else "graph input tinysd does "
                                                                                            "not read"))
    for name in g.inits:
        if name not in known:
            mp.rows.append(MapRow(name, None, "unused", "initializer not read by a tinysd op"))


def map_onnx(path, network: str, graph, params: Mapping[str, np.ndarray] | None = None,
             calls=("all",)) -> OnnxMap:
    """Map the ONNX graph at `path` onto tinysd's `graph` (a tinysd.nn network) of `network`.

    params: the checkpoint's parameters (tinysd names, no network prefix), used to tell apart
    weights of the same shape. calls: for the VAE, which of "decode" / "encode" the ONNX graph
    holds ("all": both). TinySDError (one line, naming the file) when `onnx` is missing, the file
    is unreadable, or a tinysd op has no counterpart in the graph.
    """
    from ..interp.trace import trace_network

    g = OnnxGraph(path)
    trace = trace_network(graph, network, calls)
    matcher = _Matcher(g, trace, network, params)
    mp = matcher.run()
    _time_feature_rows(g, mp)
    _unmatched_rows(g, mp, matcher.used)
    _reader_copy_rows(g, mp, matcher.node_op)
    log.info("%s: %d tinysd tensors, %d parameters and %d constants found; %d ops followed as their parts",
             path, len(set(mp.activations.values())), len(mp.params), len(mp.constants), len(mp.parts))
    return mp
