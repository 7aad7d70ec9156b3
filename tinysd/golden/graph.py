"""Recomputing a whole network call from a golden folder: its recorded graph, parameters and inputs.

    outputs = recompute_call(GoldenFolder("golden"), "unet")        # {"out": uint8 array}

A golden folder written with `--with-params` holds, per dumped network, its graph
(manifest "graphs", recorded from the network's first dumped call: every op in order with
its arguments, the layout ops reshape / transpose / split and explicit broadcasts, and each
tensor's shape, zero point and bits) and a "graph" case `graph/{network}` with every op's
run-time integer parameters `{network}.{op}.{field}`. `run_graph` executes the graph on
integer inputs with nothing but NumPy layout functions and the plain reference twins of
the kernels (`tinysd.kernels.reference`, `*_reference`), through the same per-op recomputation
that checks every layer case (`tinysd.golden.cases`); the result equals the integer engine's
output bit for bit. It is the executable form of docs/golden.md §3 "graphs" for an
implementer who wants to check a whole network rather than one layer.
"""
from __future__ import annotations

import numpy as np

from ..errors import TinySDError
from ..interp.record import OpRecord, TapTensor
from .cases import reference_output
from .reader import GoldenFolder


def _tap(graph: dict, tid: str, data: np.ndarray) -> TapTensor:
    t = graph["tensors"][tid]
    return TapTensor(data, t["zero_point"], t["bits"], t["encoding"])


def run_graph(graph: dict, inputs: dict[str, np.ndarray], params: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Execute a recorded graph. inputs: {input name: array} (`sample`, `{embedding}.ids`, ...);
    params: {op name: {field: array}}. Returns {output name: integer array}."""
    env: dict[str, np.ndarray] = {}
    results: dict[str, np.ndarray] = {}
    for node in graph["ops"]:
        op, name, attrs = node["op"], node["name"], node["attrs"]
        ins = {arg: env[tid] for arg, tid in node["inputs"].items()}
        outs = node["outputs"]
        if op == "input":
            if name not in inputs:
                raise TinySDError(f"graph: input {name!r} not given")
            env[outs[0]] = np.asarray(inputs[name])
        elif op == "output":
            results[name] = ins["x"]
        elif op == "reshape":
            env[outs[0]] = ins["x"].reshape(attrs["shape"])
        elif op == "transpose":
            env[outs[0]] = np.transpose(ins["x"], attrs["axes"])
        elif op == "split":
            for tid, part in zip(outs, np.split(ins["x"], attrs["sections"], axis=attrs["axis"])):
                env[tid] = part
        elif op == "broadcast":
            env[outs[0]] = np.broadcast_to(ins["x"], attrs["shape"])
        else:  # a computing op: its reference recomputation, as for an uncut layer case
            t = graph["tensors"][outs[0]]
            rec = OpRecord(op=op, name=name, tensor=t["encoding"],
                           inputs={arg: _tap(graph, node["inputs"][arg], a) for arg, a in ins.items()},
                           output=_tap(graph, outs[0], np.zeros(t["shape"], t["dtype"])), attrs=attrs,
                           params=params.get(name, {}))
            y = reference_output(rec)
            if list(y.shape) != t["shape"]:
                raise TinySDError(f"graph: {op} {name}: made shape {list(y.shape)}, the graph says {t['shape']}")
            env[outs[0]] = y.astype(t["dtype"], copy=False)
    return results


def recompute_call(folder: GoldenFolder, network: str, case_id: str | None = None) -> dict[str, np.ndarray]:
    """Recompute network call `case_id` (default: the call the graph was recorded from) of `network`
    from the folder alone; returns {output name: integer array} in the engine's layout."""
    graph = folder.manifest.get("graphs", {}).get(network)
    if graph is None:
        raise TinySDError(f"{folder.path}: no graph of {network} (written by tinysd golden before format 2?)")
    if graph["params"] is None:
        raise TinySDError(f"{folder.path}: the graph of {network} has no parameters (dump with --with-params)")
    case_id = case_id or graph["call"]
    prefix = f"{network}."
    inputs = {t["name"][len(prefix):]: folder.load(t, engine_layout=True) for t in folder.tensors
              if t["case"] == case_id and t["role"] == "input"}
    params: dict[str, dict[str, np.ndarray]] = {}
    for t in folder.tensors:
        if t["case"] == graph["params"]:
            op, field = t["name"][len(prefix):].rsplit(".", 1)
            params.setdefault(op, {})[field] = folder.load(t, engine_layout=True)
    return run_graph(graph, inputs, params)
