"""Golden cases from recorded ops: whole network calls, and small self-contained single-layer cases.

A *network case* holds one network call's integer inputs (the tensors the integer
interpreter made of the host inputs, and the host token/position ids) and its integer
output (before dequantization).

A *layer case* holds one op's integer input(s), its run-time integer parameters (the
QuantizedNetwork arrays `{op name}.{field}`), its attributes (stride, padding, zero
points, qmin/qmax, ...) and its expected integer output. Real layers can be large, so
each case is cut to unit-test size by an exact rule (`CropLimits`; nothing is cut when
a dimension is already within its limit, and `limits=None` keeps the whole op):

| op | cut | check |
|---|---|---|
| conv2d | batch <= 1, the first <= 16 output channels, the top-left <= 8x8 output window; the input is cropped to the rows/columns that window reads and the padding adjusted (top/left kept, bottom/right only as far as the window reaches past the input) | recomputed with `conv2d_ref` |
| linear | batch <= 1, <= 8 rows, the first <= 16 output features | `linear_ref` |
| silu, gelu, quick_gelu, scale, add, mul | the same window of every operand: batch <= 1, 4-D images <= 16 channels x 8x8, other tensors <= 8 rows x 16 columns (broadcast axes kept) | table lookup, `requantize_tensor_ref`, `add_ref`, `mul_ref` |
| upsample_nearest2x | output window <= 16 channels x 8x8 (input window half that) | `upsample_nearest2x_ref` (+ requantize) |
| concat | every axis but the concat axis cut as for add | `concat_ref` |
| matmul | batch <= 1, other batch axes and M <= 8, N <= 16 (K whole) | `matmul_ref` |
| softmax | batch <= 1, other rows <= 8 (causal: batch axes only; rows are whole) | `softmax_reference` |
| layer_norm | batch <= 1, rows <= 8 (the normalised axis whole) | `layer_norm_reference` |
| group_norm | batch <= 1, the first k whole groups (k groups hold <= 16 channels, k >= 1) | `group_norm_reference` |
| embedding | batch <= 1, rows <= 8, first <= 16 columns; the table reduced to the rows used and the ids renumbered | gather |

Every cut case is *recomputed* from its cut inputs with the kernel's plain reference
twin (`tinysd.kernels.reference` and the `*_reference` functions) and must equal the
matching slice of the output the network produced; a difference is a RuntimeError
(the engine and its reference disagree), never a silently wrong file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..interp.parts import PARTS
from ..interp.record import OpRecord, TapTensor
from ..kernels import reference as R
from ..kernels.conv import normalize_padding, normalize_stride
from ..kernels.norm import NormParams, group_norm_reference, layer_norm_reference
from ..kernels.softmax import softmax_reference
from ..kernels.tables import apply_table_reference
from .writer import GoldenCase, GoldenTensor, encoding_fields

IMAGE_OPS = ("conv2d", "group_norm", "upsample_nearest2x")
ELEMENTWISE = ("silu", "gelu", "quick_gelu", "scale", "add", "mul")


@dataclass(frozen=True)
class CropLimits:
    """Upper bounds of a cut layer case (see the module docstring)."""

    batch: int = 1
    channels: int = 16
    spatial: int = 8
    rows: int = 8


# --------------------------------------------------------------------------------------------
# encodings
# --------------------------------------------------------------------------------------------
def _act_fields(qnet, tap: TapTensor) -> dict:
    if qnet is None or tap.enc is None or tap.enc not in qnet.activations:
        return {}
    return encoding_fields(qnet.activations[tap.enc])


def _param_fields(qnet, network: str, op_name: str, field: str, out_tap: TapTensor | None) -> dict:
    if qnet is None:
        return {}
    if field in ("weight_q", "bias_q"):
        enc = qnet.params.get(f"{network}.{op_name}.{field[:-2]}")
        return encoding_fields(enc) if enc is not None else {}
    if field == "table_q" and out_tap is not None:  # embedding table: stored at the output encoding
        return _act_fields(qnet, out_tap)
    return {}


def _kind(op: str, a: np.ndarray) -> str:
    """4-D tensors of image ops and elementwise ops are NCHW images; attention (matmul/softmax) ones are not."""
    return "image" if a.ndim == 4 and op not in ("matmul", "softmax") else "plain"


# --------------------------------------------------------------------------------------------
# network cases
# --------------------------------------------------------------------------------------------
def network_case(records: list[OpRecord], network: str, case_id: str, qnet=None, step: int | None = None,
                 note: str | None = None) -> GoldenCase:
    """One network call: its boundary records (input, output, embedding ids) as a case."""
    tensors = []
    for r in records:
        if r.op == "input":
            tensors.append(GoldenTensor(r.tensor, "input", r.output.data, kind=_kind("input", r.output.data),
                                        short=r.name, source=r.output.enc, **_act_fields(qnet, r.output)))
        elif r.op == "embedding":
            ids = r.inputs["ids"].data
            tensors.append(GoldenTensor(f"{network}.{r.name}.ids", "input", ids.astype(np.int64, copy=False),
                                        short=f"{r.name}.ids"))
        elif r.op == "output":
            x = r.inputs["x"]
            tensors.append(GoldenTensor(r.tensor, "output", x.data, kind=_kind("output", x.data), short=r.name,
                                        source=x.enc, **_act_fields(qnet, x)))
    zps = {t.short: int(-t.offset[0]) for t in tensors if t.offset is not None and len(t.offset) == 1}
    return GoldenCase(id=case_id, kind="network", network=network, tensors=tensors, step=step,
                      attrs={"zero_points": zps}, note=note)


def graph_params_case(graph: dict, network: str, case_id: str, rec, qnet=None) -> GoldenCase:
    """The run-time parameters of every computing op of a recorded graph, `{network}.{op}.{field}`, as one case
    (`rec`: the RecordingInterpreter that recorded the graph, whose `op_params` reads them)."""
    tensors = []
    for node in graph["ops"]:
        if node["name"] is None or node["op"] in ("input", "output"):
            continue
        for f, a in sorted(rec.op_params(node["name"]).items()):
            kind = "weight" if node["op"] == "conv2d" and f == "weight_q" else "plain"
            tensors.append(GoldenTensor(f"{network}.{node['name']}.{f}", "param", np.ascontiguousarray(a), kind=kind,
                                        short=f"{node['name']}.{f}",
                                        **_param_fields(qnet, network, node["name"], f, None)))
    return GoldenCase(id=case_id, kind="graph", network=network, tensors=tensors,
                      note=f"run-time parameters of every op of the {network} graph (manifest 'graphs')")


# --------------------------------------------------------------------------------------------
# layer cases
# --------------------------------------------------------------------------------------------
@dataclass
class _Cut:
    inputs: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    out: np.ndarray
    attrs: dict
    note: str | None
    check: Callable[[], np.ndarray]  # recomputes `out` from the cut inputs with the reference


def _lim(n: int, k: int | None) -> int:
    return n if k is None else min(n, k)


def _window(shape, image: bool, L: CropLimits | None) -> tuple[slice, ...]:
    """Leading window of an output: batch, then channels/spatial (image) or rows/columns."""
    if L is None:
        return tuple(slice(None) for _ in shape)
    n = len(shape)
    if image and n == 4:
        lims = (L.batch, L.channels, L.spatial, L.spatial)  # (N, C, H, W)
    elif n == 1:
        lims = (L.channels,)
    else:
        lims = (L.batch,) + (L.rows,) * (n - 2) + (L.channels,)  # (B, rows..., columns)
    return tuple(slice(0, min(n, k)) for n, k in zip(shape, lims))


def _bcast_slices(in_shape, out_slices) -> tuple[slice, ...]:
    """The window of an input broadcast against the output (aligned from the right; size-1 axes kept)."""
    k = len(out_slices) - len(in_shape)
    return tuple(slice(None) if n == 1 else out_slices[k + i] for i, n in enumerate(in_shape))


def _per_channel(params: dict, n_out: int, oc: int) -> dict:
    """Arrays whose first axis has n_out entries are cut to the first oc; others kept."""
    return {k: (v[:oc] if v.ndim >= 1 and v.shape[0] == n_out and n_out > 1 else v) for k, v in params.items()}


def _s(params, field):
    return int(np.asarray(params[field]).reshape(-1)[0])


def _cut(rec: OpRecord, L: CropLimits | None) -> _Cut:
    op, P = rec.op, dict(rec.params)
    ins = {k: t.data for k, t in rec.inputs.items()}
    zp = {k: t.zero_point for k, t in rec.inputs.items()}
    out_t = rec.output
    out = out_t.data
    qmax = 2**out_t.bits - 1 if out_t.bits else None
    out_zp = out_t.zero_point
    attrs: dict = {}

    if op == "conv2d":
        x = ins["x"]
        sh, sw = normalize_stride(rec.attrs.get("stride", 1))
        top, bottom, left, right = normalize_padding(rec.attrs.get("padding", 0))
        w = P["weight_q"]
        n_out, _, kh, kw = w.shape
        nb, oc = _lim(out.shape[0], L and L.batch), _lim(n_out, L and L.channels)
        oh, ow = _lim(out.shape[2], L and L.spatial), _lim(out.shape[3], L and L.spatial)
        rows_end, cols_end = (oh - 1) * sh + kh - top, (ow - 1) * sw + kw - left  # exclusive, input coordinates
        if rows_end < 1 or cols_end < 1:  # a window entirely in the padding: keep the whole input
            oh, ow, rows_end, cols_end = out.shape[2], out.shape[3], x.shape[2] + bottom, x.shape[3] + right
        h_end, w_end = min(x.shape[2], rows_end), min(x.shape[3], cols_end)
        pad = (top, rows_end - h_end, left, cols_end - w_end)
        xc = x[:nb, :, :h_end, :w_end]
        Pc = _per_channel(P, n_out, oc)
        attrs = {"stride": [sh, sw], "padding": list(pad), "x_zp": zp["x"], "out_zp": out_zp, "qmin": 0, "qmax": qmax}
        note = None
        if (nb, oc, oh, ow) != out.shape[:1] + (n_out,) + out.shape[2:]:
            note = (f"cut from {list(x.shape)} -> {list(out.shape)}: batch {nb}, output channels [0, {oc}), "
                    f"output window [0, {oh}) x [0, {ow}); input rows [0, {h_end}), columns [0, {w_end}); "
                    f"padding (top, bottom, left, right) {list(pad)} (was {[top, bottom, left, right]})")
        return _Cut({"x": xc}, Pc, out[:nb, :oc, :oh, :ow], attrs, note, lambda: R.conv2d_ref(
            xc, zp["x"], Pc["weight_q"], Pc.get("bias_q"), Pc["multiplier"], Pc["shift"], out_zp, 0, qmax,
            stride=(sh, sw), padding=pad, acc_shift=Pc["acc_shift"]))

    if op == "linear":
        x = ins["x"]
        n_out = P["weight_q"].shape[0]
        win = _window(out.shape, False, L)
        oc = win[-1].stop
        xc = x[win[:-1] + (slice(None),)]
        Pc = _per_channel(P, n_out, oc)
        attrs = {"x_zp": zp["x"], "out_zp": out_zp, "qmin": 0, "qmax": qmax}
        return _Cut({"x": xc}, Pc, out[win], attrs, _note(x.shape, out.shape, out[win].shape), lambda: R.linear_ref(
            xc, zp["x"], Pc["weight_q"], Pc.get("bias_q"), Pc["multiplier"], Pc["shift"], out_zp, 0, qmax,
            acc_shift=Pc["acc_shift"]))

    if op in ELEMENTWISE:
        win = _window(out.shape, out.ndim == 4, L)
        cut = {k: v[_bcast_slices(v.shape, win)] for k, v in ins.items()}
        attrs = {f"{k}_zp": zp[k] for k in ins} | {"out_zp": out_zp, "qmin": 0, "qmax": qmax}
        if op == "scale":
            attrs["factor"] = rec.attrs.get("factor")
            check = lambda: R.requantize_tensor_ref(cut["x"], zp["x"], _s(P, "multiplier"), _s(P, "shift"),  # noqa: E731
                                                    out_zp, 0, qmax)
        elif op == "add":
            check = lambda: R.add_ref(cut["a"], zp["a"], _s(P, "a_multiplier"), _s(P, "a_shift"), cut["b"], zp["b"],  # noqa: E731
                                      _s(P, "b_multiplier"), _s(P, "b_shift"), _s(P, "multiplier"), _s(P, "shift"),
                                      out_zp, 0, qmax, _s(P, "left_shift"))
        elif op == "mul":
            check = lambda: R.mul_ref(cut["a"], zp["a"], cut["b"], zp["b"], _s(P, "multiplier"), _s(P, "shift"),  # noqa: E731
                                      out_zp, 0, qmax, _s(P, "acc_shift"))
        else:
            check = lambda: apply_table_reference(cut["x"], P["table"])  # noqa: E731
        return _Cut(cut, P, out[win], attrs, _note(ins[next(iter(ins))].shape, out.shape, out[win].shape), check)

    if op == "upsample_nearest2x":
        x = ins["x"]
        win = _window(out.shape, True, L)
        h, w = (max(1, win[a].indices(out.shape[a])[1] // 2) for a in (2, 3))  # whole layers: stop is None
        xc = x[win[0], win[1], :h, :w]
        attrs = {"x_zp": zp["x"], "out_zp": out_zp, "qmin": 0, "qmax": qmax}

        def check():
            y = R.upsample_nearest2x_ref(xc)
            if "multiplier" in P:
                y = R.requantize_tensor_ref(y, zp["x"], _s(P, "multiplier"), _s(P, "shift"), out_zp, 0, qmax)
            return y

        o = out[win[0], win[1], : 2 * h, : 2 * w]
        return _Cut({"x": xc}, P, o, attrs, _note(x.shape, out.shape, o.shape), check)

    if op == "concat":
        axis = rec.attrs["axis"] % out.ndim
        win = list(_window(out.shape, out.ndim == 4, L))
        win[axis] = slice(None)
        cut = {k: v[tuple(win)] for k, v in ins.items()}
        keys = sorted(cut, key=lambda k: int(k.split(".")[1]))
        attrs = {f"{k}_zp": zp[k] for k in keys} | {"axis": axis, "out_zp": out_zp, "qmin": 0, "qmax": qmax}
        check = lambda: R.concat_ref([cut[k] for k in keys], [zp[k] for k in keys],  # noqa: E731
                                     [int(v) for v in P["multipliers"]], [int(v) for v in P["shifts"]], axis,
                                     out_zp, 0, qmax)
        o = out[tuple(win)]
        return _Cut(cut, P, o, attrs, _note(out.shape, out.shape, o.shape), check)

    if op == "matmul":
        a, b = ins["a"], ins["b"]
        win = _window(out.shape, False, L)  # (batch..., M, N)
        ac = a[_bcast_slices(a.shape[:-2], win[:-2]) + (win[-2], slice(None))]
        bc = b[_bcast_slices(b.shape[:-2], win[:-2]) + (slice(None), win[-1])]
        attrs = {"a_zp": zp["a"], "b_zp": zp["b"], "alpha": rec.attrs.get("alpha", 1.0), "out_zp": out_zp,
                 "qmin": 0, "qmax": qmax}
        return _Cut({"a": ac, "b": bc}, P, out[win], attrs, _note(out.shape, out.shape, out[win].shape),
                    lambda: R.matmul_ref(ac, zp["a"], bc, zp["b"], _s(P, "multiplier"), _s(P, "shift"), out_zp, 0,
                                         qmax, _s(P, "acc_shift")))

    if op in ("softmax", "layer_norm"):
        x = ins["x"]
        causal = bool(rec.attrs.get("causal", False))
        win = list(_window(out.shape, False, L))
        win[-1] = slice(None)
        if causal:
            win[-2] = slice(None)
        win = tuple(win)
        xc = x[win]
        if op == "softmax":
            attrs = {"x_zp": zp["x"], "causal": causal, "out_bits": out_t.bits, "out_zp": out_zp, "qmin": 0,
                     "qmax": qmax}
            check = lambda: softmax_reference(xc, P["exp_table"], out_bits=out_t.bits, causal=causal)  # noqa: E731
        else:
            attrs = {"x_zp": zp["x"], "eps": rec.attrs.get("eps"), "in_bits": rec.inputs["x"].bits,
                     "out_bits": out_t.bits, "out_zp": out_zp, "qmin": 0, "qmax": qmax}
            check = lambda: layer_norm_reference(xc, _norm_params(P, rec.inputs["x"].bits, out_t.bits))  # noqa: E731
        return _Cut({"x": xc}, P, out[win], attrs, _note(x.shape, out.shape, out[win].shape), check)

    if op == "group_norm":
        x = ins["x"]
        groups = int(rec.attrs["groups"])
        c = x.shape[1]
        cg = c // groups
        k = groups if L is None else max(1, min(groups, L.channels // cg))
        nb = _lim(x.shape[0], L and L.batch)
        xc = x[:nb, : k * cg]
        Pc = {f: (v[: k * cg] if f in ("gamma_multiplier", "gamma_shift", "beta_fx") else v) for f, v in P.items()}
        attrs = {"x_zp": zp["x"], "groups": k, "eps": rec.attrs.get("eps"), "in_bits": rec.inputs["x"].bits,
                 "out_bits": out_t.bits, "out_zp": out_zp, "qmin": 0, "qmax": qmax}
        o = out[:nb, : k * cg]
        note = _note(x.shape, out.shape, o.shape)
        if note and k != groups:
            note += f"; the first {k} of {groups} groups"
        return _Cut({"x": xc}, Pc, o, attrs, note,
                    lambda: group_norm_reference(xc, k, _norm_params(Pc, rec.inputs["x"].bits, out_t.bits)))

    if op == "embedding":
        ids = ins["ids"]
        table = P["table_q"]
        win = _window(out.shape, False, L)  # (ids..., D)
        idc = ids[win[:-1]]
        used, inv = np.unique(idc, return_inverse=True)
        new_ids = inv.reshape(idc.shape).astype(np.int64)
        tab = np.ascontiguousarray(table[used][:, win[-1]])
        attrs = {"out_zp": out_zp, "qmin": 0, "qmax": qmax}
        note = (f"cut from ids {list(ids.shape)}, table {list(table.shape)}: ids {list(idc.shape)} renumbered "
                f"0..{len(used) - 1} (the table keeps only the rows used, in id order: original ids "
                f"{[int(u) for u in used[:16]]}{' ...' if len(used) > 16 else ''}), columns [0, {tab.shape[1]})")
        return _Cut({"ids": new_ids}, {"table_q": tab}, out[win], attrs, note, lambda: R.embedding_ref(new_ids, tab))

    raise ValueError(f"op: no golden layer case for op {op!r}")


def reference_output(rec: OpRecord) -> np.ndarray:
    """The whole output of a recorded op recomputed from its inputs, parameters and attributes with the kernel's
    reference twin (what checks an uncut layer case; `rec.output` need only give the output's shape, zero
    point and bits). Used by `tinysd.golden.graph` to run a recorded graph."""
    return np.asarray(_cut(rec, None).check())


def _note(in_shape, out_shape, cut_shape) -> str | None:
    if tuple(cut_shape) == tuple(out_shape):
        return None
    return f"cut from input {list(in_shape)} -> output {list(out_shape)} to output {list(cut_shape)}"


def _norm_params(P: dict, in_bits: int, out_bits: int) -> NormParams:
    return NormParams(int(np.asarray(P["eps_fx"]).reshape(-1)[0]), P["gamma_multiplier"], P["gamma_shift"],
                      P["beta_fx"], in_bits, out_bits)


def ops_with_parts(qnet) -> set[str]:
    """Names of the ops of `qnet` that have arrays `{op}.{part}.{field}` (parts of `tinysd.interp.parts`,
    an `input` or `requant` step included)."""
    parts = {p for kind in PARTS.values() for p in kind} | {"requant", "input"}
    out = set()
    for k in qnet.arrays:
        op, _, rest = k.rpartition(".")[0].rpartition(".")
        if op and rest in parts:
            out.add(op)
    return out


def runs_as_parts(rec: OpRecord, parted: set[str] = frozenset()) -> bool:
    """Does the recorded op run as its parts (an imported device graph's quantization points inside it,
    `tinysd.interp.parts`: `rec.name` in `parted` = `ops_with_parts(qnet)`, or a softmax requantized to a
    given encoding)? Such an op is a sequence of kernels; it has no single-kernel layer case (its network
    case covers it). (A record's own params hold only `{op}.{field}`, not the parts' dotted fields.)"""
    return rec.name in parted or any("." in k for k in rec.params) or (rec.op == "softmax" and
                                                                        "multiplier" in rec.params)


def layer_case(rec: OpRecord, network: str, case_id: str, qnet=None, limits: CropLimits | None = CropLimits(),
               step: int | None = None) -> GoldenCase:
    """A self-contained case of one recorded op, cut by `limits` (None: whole) and checked by recomputation.

    Tensor names: inputs `{network}.{op}.{arg}` (`x`, `a`, `b`, `xs.0`, `ids`), parameters
    `{network}.{op}.{field}` (the QuantizedNetwork field names: `weight_q`, `bias_q`,
    `multiplier`, `shift`, `acc_shift`, `table`, ...), output `{network}.{op}.out`. C symbols
    use the short names (`tsd_x`, `tsd_weight_q`, `tsd_out`). RuntimeError if the reference
    recomputation differs from the network's output.
    """
    if rec.output is None:
        raise ValueError(f"{network}.{rec.name}: the record holds no output (op did not match)")
    c = _cut(rec, limits)
    got = np.asarray(c.check())
    if got.shape != c.out.shape or not np.array_equal(got.astype(np.int64), c.out.astype(np.int64)):
        bad = "shape" if got.shape != c.out.shape else \
            f"{int(np.count_nonzero(got.astype(np.int64) != c.out.astype(np.int64)))} values"
        raise RuntimeError(f"golden: {network}.{rec.name} ({rec.op}): the case recomputed with the kernel reference "
                           f"differs from the network's output ({bad}); the integer engine and its reference disagree")
    prefix = f"{network}.{rec.name}"
    tensors = []
    for arg, a in c.inputs.items():
        tap = rec.inputs[arg]
        fields = {} if arg == "ids" else _act_fields(qnet, tap)
        tensors.append(GoldenTensor(f"{prefix}.{arg}", "input", np.ascontiguousarray(a), kind=_kind(rec.op, a),
                                    short=arg, source=tap.enc, **fields))
    for f in sorted(c.params):
        a = np.ascontiguousarray(c.params[f])
        kind = "weight" if rec.op == "conv2d" and f == "weight_q" else "plain"
        fields = _param_fields(qnet, network, rec.name, f, rec.output)
        if fields.get("axis") is not None and len(fields["scale"]) > 1:  # per-channel: cut like the array
            n = a.shape[fields["axis"]]
            fields["scale"], fields["offset"] = fields["scale"][:n], fields["offset"][:n]
        tensors.append(GoldenTensor(f"{prefix}.{f}", "param", a, kind=kind, short=f, **fields))
    tensors.append(GoldenTensor(f"{prefix}.out", "output", np.ascontiguousarray(c.out), kind=_kind(rec.op, c.out),
                                short="out", source=rec.output.enc, **_act_fields(qnet, rec.output)))
    attrs = {k: v for k, v in c.attrs.items() if v is not None}
    attrs["bits"] = rec.output.bits
    return GoldenCase(id=case_id, kind="layer", network=network, tensors=tensors, op=rec.op, layer=rec.name,
                      step=step, attrs=attrs, note=c.note)
