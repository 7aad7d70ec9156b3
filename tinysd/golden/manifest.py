"""The golden manifest (`manifest.json`): schema, safe paths, hashing, loading with validation.

A golden folder holds one `manifest.json` and the files it lists. The manifest
is plain JSON written with sorted keys and 2-space indentation, so the same
content always gives the same bytes::

    {"format": "tinysd-golden", "format_version": 1,
     "tinysd_version": "0.1.0", "arithmetic_spec_version": "1.0",
     "storage": "npy" | "raw" | "c", "layout": "nchw" | "nhwc", "byte_order": "little",
     "model": {...} | null,          # what produced the tensors (name, precision, sha256, hash_method)
     "settings": {...},              # the generation settings (prompt, seed, steps, ...)
     "cases": [CASE, ...],
     "tensors": [TENSOR, ...],
     "files": [{"path": str, "sha256": hex, "size": int}, ...],
     "graphs": {network: GRAPH, ...}}                                  # format_version 2

    GRAPH  = {"call": case id it was recorded from, "params": case id of its parameters | null,
              "ops": [{"op": str, "name": str | null, "inputs": {argument: tensor id},
                       "outputs": [tensor id, ...], "attrs": {...}}, ...],
              "tensors": {tensor id: {"shape": [int, ...], "dtype": str, "zero_point": int | null,
                                      "bits": int | null, "encoding": str | null}}}

    CASE   = {"id": "p000/unet/step000", "kind": "network" | "layer" | "graph", "network": str,
              "op": str | null, "layer": str | null, "step": int | null,
              "attrs": {...}, "note": str | null, "file": str | null}   # file: the C header (storage "c")
    TENSOR = {"case": case id, "name": str, "role": "input" | "output" | "param",
              "dtype": "uint8" | "int8" | "uint16" | "int16" | "int32" | "int64",
              "shape": [int, ...], "layout": "NCHW" | "NHWC" | "OIHW" | "OHWI" | "plain",
              "scale": [float, ...] | null, "offset": [int, ...] | null, "axis": int | null,
              "bitwidth": int | null, "source": str | null,
              "sha256": hex of the tensor's little-endian C-order bytes in its stated layout,
              "file": str, "symbol": str | null}                         # symbol: C array name

Tensor hashes do not depend on the storage format (npy, raw and c folders of the
same run have the same tensor hashes); file hashes check the files themselves.
A tensor is identified by `(case, name)`; `key(t)` is `"{case}:{name}"`.

Validation (`load_manifest`) rejects, with a TinySDError naming the manifest
and the entry: a missing or mistyped key, an unknown dtype/role/layout/storage,
a bad shape, a file path that is absolute, contains `..` or would resolve
(through symlinks) outside the folder, a listed file that is missing, not a
regular file, or whose size or sha256 differs, and a tensor whose file is not
listed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

import numpy as np

from ..errors import TinySDError
from ..fileio import open_regular, read_text

FORMAT = "tinysd-golden"
FORMAT_VERSION = 2  # 2: "graphs" and "graph" cases (version 1 folders, without them, are still read)
READ_VERSIONS = (1, 2)
MANIFEST = "manifest.json"

ROLES = ("input", "output", "param")
DTYPES = ("uint8", "int8", "uint16", "int16", "int32", "int64")
STORAGES = ("npy", "raw", "c")
LAYOUTS = ("nchw", "nhwc")
TENSOR_LAYOUTS = ("NCHW", "NHWC", "OIHW", "OHWI", "plain")
CASE_KINDS = ("network", "layer", "graph")
GRAPH_OPS = ("input", "output", "embedding", "linear", "conv2d", "group_norm", "layer_norm", "silu", "gelu", "quick_gelu",
             "softmax", "matmul", "add", "mul", "scale", "concat", "upsample_nearest2x", "reshape", "transpose", "split",
             "broadcast")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def key(case: str, name: str) -> str:
    """The identifier of a tensor in reports: `"{case}:{name}"`."""
    return f"{case}:{name}"


def le_bytes(a: np.ndarray) -> bytes:
    """The little-endian C-order bytes of an integer array (what `raw` files hold)."""
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes(order="C")


def tensor_sha256(a: np.ndarray) -> str:
    """sha256 (hex) of `le_bytes(a)`: the tensor hash recorded in the manifest."""
    return hashlib.sha256(le_bytes(a)).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dumps(obj: Any) -> str:
    """Deterministic JSON text (sorted keys, indent 2, trailing newline); NaN/inf refused."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


# --------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------
def check_relpath(rel: Any, where: str) -> str:
    """A manifest path must be a non-empty relative POSIX path without `.`/`..` parts or backslashes."""
    if not isinstance(rel, str) or not rel:
        raise TinySDError(f"{where}: path must be a non-empty string, got {rel!r}")
    if "\x00" in rel or "\\" in rel:
        raise TinySDError(f"{where}: path {rel!r} contains a backslash or NUL")
    p = PurePosixPath(rel)
    if p.is_absolute() or re.match(r"^[A-Za-z]:", rel):
        raise TinySDError(f"{where}: path {rel!r} is absolute")
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise TinySDError(f"{where}: path {rel!r} escapes its folder or is not normalised ('..', '.', '//')")
    return rel


def resolve_inside(root: Path, rel: str, where: str) -> Path:
    """root / rel after `check_relpath`, refusing any path that resolves (symlinks followed) outside root."""
    check_relpath(rel, where)
    root_real = Path(os.path.realpath(root))
    target = Path(os.path.realpath(root / rel))
    if target != root_real and root_real not in target.parents:
        raise TinySDError(f"{where}: path {rel!r} resolves outside {root} (symlink?)")
    return root / rel


# --------------------------------------------------------------------------------------------
# schema checks
# --------------------------------------------------------------------------------------------
def _need(d: Mapping, k: str, types, where: str, nullable: bool = False):
    if k not in d:
        raise TinySDError(f"{where}: missing key {k!r}")
    v = d[k]
    if v is None and nullable:
        return None
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise TinySDError(f"{where}: key {k!r} has the wrong type (bool)")
    if not isinstance(v, types):
        names = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise TinySDError(f"{where}: key {k!r} must be {names}{' or null' if nullable else ''}, got {v!r}"[:300])
    return v


def _int_list(v, what: str, where: str, lo: int | None = None) -> list[int]:
    if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
        raise TinySDError(f"{where}: {what} must be a list of integers, got {v!r}"[:300])
    if lo is not None and any(x < lo for x in v):
        raise TinySDError(f"{where}: {what} has a value < {lo}: {v!r}")
    return v


def _check_tensor(t: Any, i: int, cases: set[str], files: set[str]) -> None:
    where = f"tensors[{i}]"
    if not isinstance(t, dict):
        raise TinySDError(f"{where}: expected an object")
    name = _need(t, "name", str, where)
    case = _need(t, "case", str, where)
    where = f"tensor {key(case, name)}"
    if not name:
        raise TinySDError(f"{where}: empty name")
    if case not in cases:
        raise TinySDError(f"{where}: unknown case {case!r}")
    if _need(t, "role", str, where) not in ROLES:
        raise TinySDError(f"{where}: role {t['role']!r} not in {ROLES}")
    if _need(t, "dtype", str, where) not in DTYPES:
        raise TinySDError(f"{where}: dtype {t['dtype']!r} not in {DTYPES}")
    shape = _int_list(_need(t, "shape", list, where), "shape", where, lo=0)
    layout = _need(t, "layout", str, where)
    if layout not in TENSOR_LAYOUTS:
        raise TinySDError(f"{where}: layout {layout!r} not in {TENSOR_LAYOUTS}")
    if layout != "plain" and len(shape) != 4:
        raise TinySDError(f"{where}: layout {layout} needs 4 dims, shape is {shape}")
    scale = _need(t, "scale", list, where, nullable=True)
    offset = _need(t, "offset", list, where, nullable=True)
    if (scale is None) != (offset is None):
        raise TinySDError(f"{where}: scale and offset must both be given or both be null")
    if scale is not None:
        if not scale or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in scale):
            raise TinySDError(f"{where}: scale must be a non-empty list of numbers > 0")
        _int_list(offset, "offset", where)
        if len(offset) != len(scale):
            raise TinySDError(f"{where}: {len(scale)} scales but {len(offset)} offsets")
    axis = _need(t, "axis", int, where, nullable=True)
    if axis is not None:
        if not 0 <= axis < len(shape):
            raise TinySDError(f"{where}: axis {axis} outside the tensor's {len(shape)} dims")
        if scale is not None and len(scale) not in (1, shape[axis]):
            raise TinySDError(f"{where}: {len(scale)} scales for {shape[axis]} channels on axis {axis}")
    elif scale is not None and len(scale) != 1:
        raise TinySDError(f"{where}: per-tensor encoding with {len(scale)} scales")
    _need(t, "bitwidth", int, where, nullable=True)
    _need(t, "source", str, where, nullable=True)
    if not _HEX64.match(_need(t, "sha256", str, where)):
        raise TinySDError(f"{where}: sha256 must be 64 lowercase hex digits")
    f = check_relpath(_need(t, "file", str, where), where)
    if f not in files:
        raise TinySDError(f"{where}: file {f!r} is not listed in 'files'")
    sym = _need(t, "symbol", str, where, nullable=True)
    if sym is not None and not _SYMBOL.match(sym):
        raise TinySDError(f"{where}: symbol {sym!r} is not a C identifier")


def validate(m: Any, where: str = MANIFEST) -> dict:
    """Check the structure of a parsed manifest (no file access); returns it. TinySDError naming the entry."""
    if not isinstance(m, dict):
        raise TinySDError(f"{where}: expected a JSON object")
    if m.get("format") != FORMAT:
        raise TinySDError(f"{where}: not a tinysd golden manifest (format {m.get('format')!r}, expected {FORMAT!r})")
    v = _need(m, "format_version", int, where)
    if v not in READ_VERSIONS:
        raise TinySDError(f"{where}: format_version {v} is not supported (this tinysd reads "
                          f"{', '.join(map(str, READ_VERSIONS))})")
    for k in ("tinysd_version", "arithmetic_spec_version"):
        _need(m, k, str, where)
    if _need(m, "storage", str, where) not in STORAGES:
        raise TinySDError(f"{where}: storage {m['storage']!r} not in {STORAGES}")
    if _need(m, "layout", str, where) not in LAYOUTS:
        raise TinySDError(f"{where}: layout {m['layout']!r} not in {LAYOUTS}")
    if _need(m, "byte_order", str, where) != "little":
        raise TinySDError(f"{where}: byte_order must be 'little'")
    _need(m, "model", dict, where, nullable=True)
    _need(m, "settings", dict, where)
    files: set[str] = set()
    for i, f in enumerate(_need(m, "files", list, where)):
        w = f"{where}: files[{i}]"
        if not isinstance(f, dict):
            raise TinySDError(f"{w}: expected an object")
        p = check_relpath(_need(f, "path", str, w), w)
        if p == MANIFEST:
            raise TinySDError(f"{w}: the manifest cannot list itself")
        if p in files:
            raise TinySDError(f"{w}: duplicate path {p!r}")
        if not _HEX64.match(_need(f, "sha256", str, w)):
            raise TinySDError(f"{w}: sha256 must be 64 lowercase hex digits")
        if _need(f, "size", int, w) < 0:
            raise TinySDError(f"{w}: negative size")
        files.add(p)
    cases: set[str] = set()
    for i, c in enumerate(_need(m, "cases", list, where)):
        w = f"{where}: cases[{i}]"
        if not isinstance(c, dict):
            raise TinySDError(f"{w}: expected an object")
        cid = check_relpath(_need(c, "id", str, w), w)
        w = f"{where}: case {cid}"
        if cid in cases:
            raise TinySDError(f"{w}: duplicate case id")
        if _need(c, "kind", str, w) not in CASE_KINDS:
            raise TinySDError(f"{w}: kind {c['kind']!r} not in {CASE_KINDS}")
        _need(c, "network", str, w)
        _need(c, "op", str, w, nullable=True)
        _need(c, "layer", str, w, nullable=True)
        _need(c, "step", int, w, nullable=True)
        _need(c, "attrs", dict, w)
        _need(c, "note", str, w, nullable=True)
        cf = _need(c, "file", str, w, nullable=True)
        if cf is not None and check_relpath(cf, w) not in files:
            raise TinySDError(f"{w}: file {cf!r} is not listed in 'files'")
        cases.add(cid)
    seen: set[str] = set()
    for i, t in enumerate(_need(m, "tensors", list, where)):
        try:
            _check_tensor(t, i, cases, files)
        except TinySDError as e:
            raise TinySDError(f"{where}: {e}") from None
        k = key(t["case"], t["name"])
        if k in seen:
            raise TinySDError(f"{where}: tensor {k}: duplicate")
        seen.add(k)
        if m["storage"] == "c" and t["symbol"] is None:
            raise TinySDError(f"{where}: tensor {k}: storage 'c' needs a symbol")
    graphs = _need(m, "graphs", dict, where) if v >= 2 else {}
    for network, g in graphs.items():
        _check_graph(g, cases, f"{where}: graphs[{network!r}]")
    return m


def _check_graph(g: Any, cases: set[str], where: str) -> None:
    """A recorded graph: known ops, every tensor id defined (by an earlier op's outputs) before it is read."""
    if not isinstance(g, dict):
        raise TinySDError(f"{where}: expected an object")
    call = _need(g, "call", str, where)
    params = _need(g, "params", str, where, nullable=True)
    for c in (call,) + ((params,) if params is not None else ()):
        if c not in cases:
            raise TinySDError(f"{where}: unknown case {c!r}")
    tensors = _need(g, "tensors", dict, where)
    for tid, t in tensors.items():
        w = f"{where}: tensor {tid}"
        if not isinstance(t, dict):
            raise TinySDError(f"{w}: expected an object")
        _int_list(_need(t, "shape", list, w), "shape", w, lo=0)
        _need(t, "dtype", str, w)
        _need(t, "zero_point", int, w, nullable=True)
        _need(t, "bits", int, w, nullable=True)
        _need(t, "encoding", str, w, nullable=True)
    defined: set[str] = set()
    for i, node in enumerate(_need(g, "ops", list, where)):
        w = f"{where}: ops[{i}]"
        if not isinstance(node, dict):
            raise TinySDError(f"{w}: expected an object")
        if _need(node, "op", str, w) not in GRAPH_OPS:
            raise TinySDError(f"{w}: op {node['op']!r} not in {GRAPH_OPS}")
        _need(node, "name", str, w, nullable=True)
        _need(node, "attrs", dict, w)
        for arg, tid in _need(node, "inputs", dict, w).items():
            if tid not in defined:
                raise TinySDError(f"{w}: input {arg} reads tensor {tid!r} before any op makes it")
        for tid in _need(node, "outputs", list, w):
            if tid not in tensors or tid in defined:
                raise TinySDError(f"{w}: output {tid!r} is not in 'tensors' or is made twice")
            defined.add(tid)


def load_manifest(folder, verify_files: bool = True) -> dict:
    """Read and validate `folder/manifest.json`; with verify_files, check every listed file's size and sha256.

    Returns the manifest dict. TinySDError naming the folder and the entry at fault.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise TinySDError(f"{folder}: not a folder")
    if path.is_symlink() or not path.is_file():
        raise TinySDError(f"{path}: missing (or not a regular file)")
    try:
        m = json.loads(read_text(path), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TinySDError(f"{path}: unreadable JSON ({e})") from None
    validate(m, str(path))
    if verify_files:
        for f in m["files"]:
            w = f"{path}: file {f['path']}"
            p = resolve_inside(folder, f["path"], w)
            if not p.is_file():
                raise TinySDError(f"{w}: missing (or not a regular file)")
            size = p.stat().st_size
            if size != f["size"]:
                raise TinySDError(f"{w}: size {size} != {f['size']} in the manifest")
            if file_sha256(p) != f["sha256"]:
                raise TinySDError(f"{w}: sha256 differs from the manifest (file changed or corrupt)")
    return m


def _no_constant(name):
    raise ValueError(f"{name} is not valid JSON")
