"""Device encodings in: AIMET files, one per network, renamed through their exported graphs.

    sources = parse_sources(["unet=unet.encodings", "vae.decode=dec.encodings"], ["unet=unet.onnx"])
    imported = read_sources(loaded, sources)                 # {network: NetworkImport}
    plan = imported["unet"].parts                            # ops the device graph computes as their parts
    encs, report = merge(imported, calibrated, softmax_outputs)  # file encodings, calibrated for the rest

A source is `--encodings KEY=FILE` (KEY: `text_encoder`, `unet`, `vae`, `vae.decode`,
`vae.encode`) with an optional `--onnx KEY=MODEL.onnx`, or a bare `--encodings FILE` holding
tinysd names of every network (docs/quantization.md section 9). With a graph, each name of
the file is looked up in the graph's name map (`tinysd.quant.onnx_map`), whatever section
of the file it is in: activations and parts of ops become activation encodings, constant
operands constant encodings, conv / linear weights parameter encodings (per-channel axes
moved with the weight's layout), and encodings of norm weights and biases make those
quantize-dequantized values; encodings of parameters tinysd prepares its own way (biases,
re-derived at `s_in * s_w` as QNN does; embedding tables) are ignored with one log line;
names the map places nowhere (folded constants, values computed before a network input) are
counted and listed at `-v`. Scales are used as float32 (`device_scales`). Without a graph the
names must be tinysd's.

`merge` gives every network its full set of encodings: the file's, plus the calibrated one
for each tensor the file lacks (each listed once, as "calibrated"). A softmax output the
file lacks keeps tinysd's fixed encoding. `range_warnings` compares each imported
activation encoding with the float range the calibration run saw.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Mapping, Sequence

import numpy as np

from ..errors import TinySDError
from ..interp.parts import NOT_COMPUTED, PARTS, TIME_INPUT, TIME_PARTS, part_tensor
from .encodings import Encoding, load_encodings
from .model import ACTIVATION_BITS, NETWORKS, network_precisions

log = logging.getLogger(__name__)

#: --encodings / --onnx keys: a network, or one call of the VAE (a decoder or encoder export).
SOURCE_KEYS = ("text_encoder", "unet", "vae", "vae.decode", "vae.encode")
MAX_LISTED = 5
#: a float range this many times wider than its encoding's is reported (range_warnings)
RANGE_FACTOR = 4.0


def _listing(names) -> str:
    names = list(names)
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


@dataclass(frozen=True)
class Source:
    """One encodings file: KEY ("" for a bare file of tinysd names), its path, and its ONNX graph (or None)."""

    key: str
    path: Path
    onnx: Path | None = None

    @property
    def network(self) -> str | None:
        return self.key.split(".")[0] if self.key else None

    @property
    def calls(self) -> tuple[str, ...]:
        return (self.key.split(".")[1],) if "." in self.key else ("all",)


def _split(value: str, option: str) -> tuple[str, str]:
    key, sep, rest = value.partition("=")
    if sep and key in SOURCE_KEYS:
        return key, rest
    if sep and "/" not in key and "." not in key.replace("vae.", ""):
        raise TinySDError(f"{option} {value}: {key!r} is not one of {', '.join(SOURCE_KEYS)}")
    return "", value


def parse_sources(encodings: Sequence[str] = (), onnx: Sequence[str] = ()) -> list[Source]:
    """Sources of `--encodings` values (`KEY=FILE` or `FILE`) and `--onnx` values (`KEY=MODEL.onnx`).

    TinySDError for an unknown key, a key given twice, a bare FILE mixed with per-network
    files, `vae` together with `vae.decode` / `vae.encode`, an --onnx without its --encodings
    or without a key.
    """
    files: dict[str, Path] = {}
    for v in encodings:
        key, path = _split(str(v), "--encodings")
        if key in files:
            raise TinySDError(f"--encodings: {'a bare file' if not key else key} is given twice")
        files[key] = Path(path)
    if "" in files and len(files) > 1:
        raise TinySDError("--encodings: a bare FILE (tinysd names of every network) cannot be combined with "
                          "per-network files (KEY=FILE)")
    if "vae" in files and ({"vae.decode", "vae.encode"} & set(files)):
        raise TinySDError("--encodings: give vae=FILE or vae.decode=FILE / vae.encode=FILE, not both")
    graphs: dict[str, Path] = {}
    for v in onnx:
        key, path = _split(str(v), "--onnx")
        if not key:
            raise TinySDError(f"--onnx {v}: say which network the graph is (KEY=MODEL.onnx, KEY one of "
                              f"{', '.join(SOURCE_KEYS)})")
        if key in graphs:
            raise TinySDError(f"--onnx: {key} is given twice")
        if key not in files:
            raise TinySDError(f"--onnx {key}=...: no --encodings {key}=FILE to go with it")
        graphs[key] = Path(path)
    return [Source(k, p, graphs.get(k)) for k, p in files.items()]


@dataclass
class NetworkImport:
    """What the files of one network give: encodings under tinysd names, and what the graph says."""

    network: str
    activations: dict[str, Encoding] = field(default_factory=dict)  # op outputs, inputs, parts, constants
    params: dict[str, Encoding] = field(default_factory=dict)  # conv / linear weights `{network}.{param}`
    norm_params: dict[str, Encoding] = field(default_factory=dict)  # norm weights and biases (quantize-dequantized)
    parts: dict[str, tuple] = field(default_factory=dict)  # op name -> parts the file quantizes
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # tinysd parameter -> the graph's value
    ignored: list[str] = field(default_factory=list)  # parameter encodings tinysd does not use
    unplaced: list[str] = field(default_factory=list)  # names the graph places nowhere ("name: why")
    reader_inputs: list[str] = field(default_factory=list)  # encodings of one reader's input copy ("name: why")
    files: list[dict] = field(default_factory=list)  # {"key", "path", "onnx", "aimet_version"} per source


def device_scales(enc: Encoding) -> Encoding:
    """`enc` with its scales rounded to float32, as QNN (and AIMET's QuantSim) read them.

    AIMET writes scales in float64 (1/255 as 0.00392156862745098); the device computes with the
    float32 value, which decides ties (sigmoid(0) = 0.5 is code 127, not 128, on that grid).
    """
    s32 = np.asarray(enc.scale, np.float32).astype(np.float64)
    if np.array_equal(s32, enc.scale):
        return enc
    return Encoding(enc.bitwidth, s32, enc.offset, enc.is_symmetric, enc.axis)


def _moved_axis(enc: Encoding, transposed: bool, version: str) -> Encoding:
    """A weight encoding for tinysd's (OUT, IN) layout: 2.x files give the axis of the graph's (IN, OUT) tensor."""
    if not enc.per_channel or not (transposed and version.startswith("2.")):
        return enc if not enc.per_channel else Encoding(enc.bitwidth, enc.scale, enc.offset, enc.is_symmetric, 0,
                                                        enc.min, enc.max)
    return Encoding(enc.bitwidth, enc.scale, enc.offset, enc.is_symmetric, 1 - enc.axis, enc.min, enc.max)


def _graph_weights(params: dict, weights: Mapping[str, np.ndarray], network: str, path) -> dict:
    """The graph's weights, checked against the checkpoint's shapes."""
    out = {}
    for name, value in weights.items():
        if name not in params:
            continue
        want = tuple(np.shape(params[name]))
        if value.size != int(np.prod(want)):
            raise TinySDError(f"{path}: {network}.{name} has shape {tuple(value.shape)} in the graph, the checkpoint's "
                              f"is {want}")
        out[name] = np.ascontiguousarray(value.reshape(want), dtype=np.float32)
    return out


def _import_with_graph(imp: NetworkImport, src: Source, act, par, version, loaded, graphs) -> None:
    from .onnx_map import map_onnx

    net = imp.network
    m = map_onnx(src.onnx, net, graphs[net], loaded.params[net], src.calls)
    rows = {}
    for r in m.rows:
        rows.setdefault(r.onnx, r)
    used_parts: dict[str, set] = {}
    off_graph = {}  # parameter encodings under a name the graph does not have
    for name, enc in list(act.items()) + list(par.items()):
        enc = device_scales(enc)
        row = rows.get(name)
        if row is None and name in par:
            off_graph[name] = enc
            continue
        if row is None or row.tinysd is None:
            imp.unplaced.append(f"{name}: {row.why if row else 'not in the graph'}")
            continue
        if row.role in ("weight",):
            imp.params[row.tinysd] = _moved_axis(enc, m.params[name][1], version)
        elif row.role == "param":
            imp.norm_params[row.tinysd] = enc.__class__(enc.bitwidth, enc.scale, enc.offset, enc.is_symmetric,
                                                        0 if enc.per_channel else None)
        elif row.role == "bias":
            imp.ignored.append(row.tinysd)
        elif row.role == "constant":
            imp.activations.setdefault(row.tinysd, enc)
        elif row.role == "reader copy":  # an input quantizer of some readers only: not the tensor's encoding
            imp.reader_inputs.append(f"{name}: {row.why}")
        else:  # activations, inputs, parts, aliases: the first encoding found for a tinysd tensor is used
            prev = imp.activations.get(row.tinysd)
            if prev is not None and prev != enc:
                log.warning("%s: %s and another name of %s have different encodings; the first is used",
                            src.path, name, row.tinysd)
            imp.activations.setdefault(row.tinysd, enc)
            if row.role == "part":
                op = row.tinysd[len(net) + 1:].rsplit(".", 2)[0]
                used_parts.setdefault(op, set()).add(row.tinysd.rsplit(".", 2)[1])
    for op, present in m.parts.items():  # an op the file quantizes inside runs as all the graph's parts
        computed = tuple(p for p in present if not any((k, p) in NOT_COMPUTED for k in PARTS))
        used = used_parts.get(op, set())
        parts = ("input",) if "input" in computed and "input" in used else ()  # a reader copy: on its own
        if (set(computed) - {"input"}) & used:
            parts += tuple(p for p in computed if p != "input")
        if parts:
            imp.parts[op] = parts
    imp.weights.update(_graph_weights(loaded.params[net], m.weights, net, src.onnx))
    if off_graph:
        _place_by_grid(imp, off_graph, m)


#: a weight "lies on" an encoding's grid when every value is this close (in steps) to a grid point
ON_GRID = 1e-3


def _place_by_grid(imp: NetworkImport, encs: Mapping[str, Encoding], m) -> None:
    """Weight encodings the graph has no name for, placed by the graph's weight values.

    AdaRound's file names weights after PyTorch parameters, while the exported graph may hold a
    linear weight as a transposed copy with another name (`...to_q.weight_0`). AdaRound also
    moves the weights onto its grid: a file encoding goes to the one conv / linear weight of the
    graph whose output channels it fits and whose every value lies on its grid (within ON_GRID
    of a step); none or several: it stays unplaced (listed at -v).
    """
    free = {t: (name, m.weights[name]) for t, _ in m.params.values() for name in [t[len(imp.network) + 1:]]
            if t.endswith(".weight") and t not in imp.params and name in m.weights and m.weights[name].ndim in (2, 4)}
    for fname, enc in encs.items():
        fits = []
        for t, (_, w) in free.items():
            if enc.per_channel and enc.channels != w.shape[0]:
                continue
            e0 = Encoding(enc.bitwidth, enc.scale, enc.offset, enc.is_symmetric, 0 if enc.per_channel else None)
            steps = np.asarray(w, np.float64) / e0._broadcast(e0.scale, w.ndim)
            if np.max(np.abs(steps - np.round(steps))) <= ON_GRID:
                fits.append((t, e0))
        if len(fits) == 1:
            t, e0 = fits[0]
            imp.params[t] = e0
            del free[t]
            log.info("%s: %s is the encoding of %s (the graph's weight lies on its grid)", imp.network, fname, t)
        else:
            imp.unplaced.append(f"{fname}: no graph name, and {len(fits)} weights of the graph lie on its grid")


def _names_of(loaded, graphs, network: str) -> tuple[set[str], set[str]]:
    from ..interp.trace import trace_network

    trace = trace_network(graphs[network], network)
    acts = {op.tensor for op in trace.ops if op.tensor}
    if f"{network}.{TIME_INPUT}" in acts:  # the timestep features' parts, computed on the host before the input
        acts |= {part_tensor(f"{network}.{TIME_INPUT}", p) for p in TIME_PARTS}
    return acts, {f"{network}.{k}" for k in graphs[network].param_shapes()}


def trace_network(graph, network):
    from ..interp.trace import trace_network as trace

    return trace(graph, network)


def read_sources(loaded, sources: Sequence[Source], files: Mapping | None = None) -> dict[str, NetworkImport]:
    """{network: NetworkImport} of every network a source covers (module docstring).

    Without a graph, a name must be a tinysd tensor or parameter of its network: the unknown
    ones are one TinySDError (first few and the count). files: {path: load_encodings(path)} of
    files already read.
    """
    from .calibration import model_graphs

    graphs = model_graphs(loaded.config)
    out: dict[str, NetworkImport] = {}
    for src in sources:
        act, par, version = (files or {}).get(src.path) or load_encodings(src.path)
        nets = [src.network] if src.network else sorted({n.split(".", 1)[0] for n in list(act) + list(par)})
        for net in nets:
            if net not in NETWORKS:
                raise TinySDError(f"{src.path}: tensor names must start with a network name "
                                  f"({', '.join(NETWORKS)}); found {net!r}")
            imp = out.setdefault(net, NetworkImport(net))
            imp.files.append({"key": src.key or net, "path": str(src.path),
                              "onnx": None if src.onnx is None else str(src.onnx), "aimet_version": version})
            if src.onnx is not None:
                _import_with_graph(imp, src, act, par, version, loaded, graphs)
                continue
            known_acts, known_params = _names_of(loaded, graphs, net)
            mine = lambda d: {n: device_scales(e) for n, e in d.items()  # noqa: E731
                              if src.network or n.split(".", 1)[0] == net}
            a, p = mine(act), mine(par)
            if version.startswith("2."):  # one list: a known parameter name is a parameter
                p.update({n: a.pop(n) for n in list(a) if n in known_params})
                a.update({n: p.pop(n) for n in list(p) if n not in known_params})
            parts_like = [n for n in a if n not in known_acts and n.endswith(".out")
                          and n.rsplit(".", 2)[0] + ".out" in known_acts]
            unknown = [f"activation {n}" for n in a if n not in known_acts and n not in parts_like
                       and not n.endswith(".const")]
            unknown += [f"parameter {n}" for n in p if n not in known_params]
            if unknown:
                raise TinySDError(f"{src.path}: {len(unknown)} name(s) in the file are not tinysd tensors of {net}: "
                                  f"{_listing(unknown)} (an exported graph's names need --onnx {net}=MODEL.onnx)")
            imp.activations.update(a)
            given: dict[str, set] = {}
            for n in parts_like:
                op, part = n[len(net) + 1:].rsplit(".", 2)[:2]
                given.setdefault(op, set()).add(part)
            kinds = {op.name: op.kind for op in trace_network(graphs[net], net).ops if op.name}
            imp.parts.update({op: _all_parts(kinds[op], present) for op, present in given.items()})
            norms = {op.name for op in trace_network(graphs[net], net).ops if op.kind in ("group_norm", "layer_norm")}
            for n, e in p.items():
                op = n[len(net) + 1:].rsplit(".", 1)[0]
                if op in norms:
                    imp.norm_params[n] = e
                elif n.endswith(".weight") and _is_gemm_weight(graphs[net], n, net):
                    imp.params[n] = e
                else:
                    imp.ignored.append(n)
    for imp in out.values():
        if imp.ignored:
            log.info("%s: %d parameter encoding(s) not used (tinysd re-derives biases at s_in * s_w and stores "
                     "embedding tables at their output encoding): %s", imp.network, len(imp.ignored),
                     _listing(imp.ignored))
        if imp.reader_inputs:
            log.info("%s: %d encoding(s) of the file quantize a copy of a tensor for some of its readers only "
                     "(not used: the tensor's other readers take it unquantized on the device): %s", imp.network,
                     len(imp.reader_inputs), _listing(imp.reader_inputs))
        if imp.unplaced:
            log.info("%s: %d name(s) of the file are no tinysd tensor (constants folded into the graph, values "
                     "computed before a network input): %s", imp.network, len(imp.unplaced), _listing(imp.unplaced))
    return out


def _all_parts(kind: str, present: set) -> tuple:
    """Every part an op of `kind` runs as when a file names `present` of its parts (PARTS order; input first,
    requant last)."""
    if kind == "matmul":
        parts = ["product"] if "product" in present else [p for p in ("a_scaled", "b_scaled") if p in present]
    else:
        inner = set(present) - {"requant", "input"}  # the steps before / after the op are not its inner parts
        parts = [p for p in PARTS.get(kind, ()) if (kind, p) not in NOT_COMPUTED and inner]
    return tuple((["input"] if "input" in present else []) + parts + (["requant"] if "requant" in present else []))


def _is_gemm_weight(graph, full_name: str, network: str) -> bool:
    """Is `{network}.{module}.weight` the weight of a conv or linear layer (an int8 weight)?"""
    shape = graph.param_shapes().get(full_name[len(network) + 1:])
    return shape is not None and len(shape) in (2, 4) and "embedding" not in full_name


def check_bitwidths(imported: Mapping[str, NetworkImport], precision: str) -> None:
    """TinySDError unless every imported activation encoding has its network's activation bitwidth
    (constants: at most that), every weight is 8-bit (first offenders and counts named)."""
    bits = {net: ACTIVATION_BITS[p] for net, p in network_precisions(precision).items()}
    for net, imp in imported.items():
        where = ", ".join(f["path"] for f in imp.files)
        bad = [n for n, e in imp.activations.items()
               if (e.bitwidth > bits[net] if n.endswith(".const") else e.bitwidth != bits[net])]
        if bad:
            found = sorted({imp.activations[n].bitwidth for n in bad})
            raise TinySDError(f"{where}: {len(bad)} activation encoding(s) of {net} are "
                              f"{'/'.join(map(str, found))}-bit, but precision {precision} needs {bits[net]}-bit "
                              f"activations in {net}: {_listing(bad)}")
        bad = [n for n, e in imp.params.items() if e.bitwidth != 8]
        if bad:
            raise TinySDError(f"{where}: {len(bad)} weight encoding(s) of {net} are not 8-bit (tinysd needs int8 "
                              f"weights): {_listing(bad)}")


@dataclass
class MergeReport:
    """Per network: how many encodings came from the files and which tensors were calibrated."""

    from_file: dict[str, int] = field(default_factory=dict)
    calibrated: dict[str, list[str]] = field(default_factory=dict)
    fixed_softmax: dict[str, list[str]] = field(default_factory=dict)
    derived: dict[str, dict[str, str]] = field(default_factory=dict)  # tensor -> why (tinysd.quant.derived)


def merge(imported: Mapping[str, NetworkImport], calibrated: Mapping[str, Mapping[str, Encoding]],
          softmax_outputs: Mapping[str, set]) -> tuple[dict[str, dict[str, Encoding]], MergeReport]:
    """Per network, the file's activation encodings plus calibrated ones for the tensors it lacks.

    calibrated: {network: {tensor: Encoding}} from the calibration run (every op output, input
    and part). softmax_outputs: {network: softmax output tensors}; one the file lacks gets no
    encoding here (the fixed softmax encoding applies). Networks without a file keep their
    calibrated encodings unchanged.
    """
    report = MergeReport()
    out: dict[str, dict[str, Encoding]] = {}
    for net, cal in calibrated.items():
        imp = imported.get(net)
        if imp is None:
            out[net] = dict(cal)
            continue
        encs = dict(imp.activations)
        report.from_file[net] = len([n for n in encs if n in cal or n.endswith(".const")])
        missing = [n for n in cal if n not in encs]
        soft = [n for n in missing if n in softmax_outputs.get(net, ())]
        report.fixed_softmax[net] = soft
        report.calibrated[net] = [n for n in missing if n not in soft]
        encs.update({n: cal[n] for n in report.calibrated[net]})
        out[net] = encs
    return out, report


def range_warnings(imported: Mapping[str, NetworkImport], ranges: Mapping[str, Mapping[str, tuple]],
                   fixed_range: Collection[str] = ()) -> list[str]:
    """One line per imported activation encoding whose float range (from the calibration run) is far from it.

    fixed_range: tensors whose encoding a device config fixes whatever their values (softmax outputs,
    sigmoid parts: AIMET's [0, 1]), which are not checked.

    Far: the float range is more than RANGE_FACTOR times wider than the encoding's, or more than
    half of it lies outside the encoding's range (mostly clipped). (An encoding much wider than
    the values is not reported: the file's calibration data may be wider than tinysd's.)
    """
    lines = []
    for net, imp in imported.items():
        for name, enc in imp.activations.items():
            r = ranges.get(net, {}).get(name)
            if r is None or name.endswith(".const") or name in fixed_range:
                continue
            lo, hi = float(r[0]), float(r[1])
            emin, emax = float(enc.min[0]), float(enc.max[0])
            width, ewidth = hi - lo, emax - emin
            outside = max(0.0, min(hi, emin) - lo) + max(0.0, hi - max(lo, emax))
            why = None
            if width > RANGE_FACTOR * ewidth:
                why = f"its float range is {width / ewidth:.1f}x the encoding's"
            elif width > 0 and outside > 0.5 * width:
                why = f"{100 * outside / width:.0f}% of its float range is clipped"
            if why:
                lines.append(f"{name}: float range [{lo:.4g}, {hi:.4g}] against the encoding's [{emin:.4g}, "
                             f"{emax:.4g}]: {why} (a wrong mapping?)")
    return lines


__all__ = ["Source", "NetworkImport", "parse_sources", "read_sources", "check_bitwidths", "merge",
           "range_warnings", "MergeReport", "device_scales"]
