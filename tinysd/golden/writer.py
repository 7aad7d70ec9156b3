"""Writing a golden folder atomically: cases of integer tensors -> files + manifest.json.

    with GoldenWriter(out_dir, storage="npy", layout="nchw", model=..., settings=...) as w:
        w.write_case(GoldenCase(id="p000/unet/step000", kind="network", network="unet", tensors=[...]))
    # on leaving the block without an exception, out_dir appears complete, in one rename

Atomicity (`tinysd.atomic`). Everything is written into a fresh temporary folder beside
the target (`.tinysd-tmp-{name}.{pid}.XXXX` in the same parent), the manifest last.
`commit()` then renames it to the target. An existing target is refused unless
`overwrite=True`, and even then unless it is a golden folder (its manifest.json has the
golden format) or empty; it is renamed aside (`.tinysd-old-{name}.{pid}.XXXX`), the new
folder renamed in, and the old one deleted. On any exception (KeyboardInterrupt and the
CLI's SIGTERM included) the temporary folder is deleted and the target is untouched. A
process killed outright (SIGKILL) can leave a `.tinysd-tmp-*` folder behind, never a
partial target.

File names. Case `C` stores tensor `T` in `C/T.npy` (npy) or `C/T.bin` (raw); storage
"c" writes one header `C.h` per case holding all its tensors.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..atomic import check_output_dir, make_temp_dir, replace_dir
from ..errors import TinySDError
from ..fileio import read_text
from ..fixedpoint import ARITHMETIC_SPEC_VERSION
from . import formats
from .manifest import (
    CASE_KINDS,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    LAYOUTS,
    MANIFEST,
    ROLES,
    STORAGES,
    check_relpath,
    dumps,
    file_sha256,
    key,
    tensor_sha256,
    validate,
)

log = logging.getLogger(__name__)


@dataclass
class GoldenTensor:
    """One integer tensor of a case, in the engine's layout.

    kind: "image" (a 4-D NCHW activation), "weight" (a 4-D OIHW conv weight) or "plain";
    it decides how `layout="nhwc"` stores it. scale/offset/axis/bitwidth: its encoding as
    `real = (q + offset) * scale` for the *stored* integers q (offset = -zero point: AIMET's
    offset for unsigned activations, 0 for signed symmetric weights and biases; see
    `encoding_fields`), or None for plain integers (multipliers, shifts, token ids). short: the name used for C symbols
    (`tsd_{short}`); default: the full name. source: the engine tensor it was cut from.
    """

    name: str
    role: str
    data: np.ndarray
    kind: str = "plain"
    scale: Sequence[float] | None = None
    offset: Sequence[int] | None = None
    axis: int | None = None
    bitwidth: int | None = None
    short: str | None = None
    source: str | None = None


@dataclass
class GoldenCase:
    """A self-contained unit: one network call or one layer, with its tensors and attributes."""

    id: str
    kind: str  # "network" | "layer"
    network: str
    tensors: list[GoldenTensor]
    op: str | None = None
    layer: str | None = None
    step: int | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


def encoding_fields(enc) -> dict:
    """GoldenTensor keyword arguments (scale, offset, axis, bitwidth) for a `tinysd.quant.encodings.Encoding`.

    offset is -zero_point of the encoding's storage (`Encoding.storage()`), so that
    `real = (q + offset) * scale` holds for the stored integers q.
    """
    st = enc.storage()
    return {"scale": [float(s) for s in enc.scale], "offset": [int(-z) for z in st.zero_point],
            "axis": enc.axis, "bitwidth": int(enc.bitwidth)}


def _json_scalars(v):
    """numpy scalars/arrays in attrs -> plain JSON types."""
    if isinstance(v, dict):
        return {str(k): _json_scalars(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_scalars(x) for x in v]
    if isinstance(v, np.ndarray):
        return _json_scalars(v.tolist())
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


class GoldenWriter:
    """Builds a golden folder in a temporary directory and renames it into place on `commit()`."""

    def __init__(self, out_dir, storage: str = "npy", layout: str = "nchw", *, overwrite: bool = False,
                 model: dict | None = None, settings: dict | None = None):
        if storage not in STORAGES:
            raise TinySDError(f"--format: {storage!r} not in {STORAGES}")
        if layout not in LAYOUTS:
            raise TinySDError(f"--layout: {layout!r} not in {LAYOUTS}")
        self.out = Path(out_dir)
        self.storage, self.layout, self.overwrite = storage, layout, overwrite
        check_target(self.out, overwrite)
        self.tmp = make_temp_dir(self.out)
        self.manifest: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "tinysd_version": __version__,
            "arithmetic_spec_version": ARITHMETIC_SPEC_VERSION, "storage": storage, "layout": layout,
            "byte_order": "little", "model": _json_scalars(model), "settings": _json_scalars(settings or {}),
            "cases": [], "tensors": [], "files": [], "graphs": {},
        }
        self._keys: set[str] = set()
        self._done = False

    # --- context manager ----------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False

    def abort(self) -> None:
        """Delete the temporary folder; the target is left as it was."""
        if not self._done:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._done = True

    # --- writing ----------------------------------------------------------------------
    def _add_file(self, rel: str, data: bytes) -> None:
        path = self.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.manifest["files"].append({"path": rel, "sha256": file_sha256(path), "size": len(data)})

    def write_case(self, case: GoldenCase) -> None:
        """Store every tensor of `case` and add the case and its tensors to the manifest."""
        if self._done:
            raise RuntimeError("GoldenWriter: already committed or aborted")
        cid = check_relpath(case.id, f"case {case.id!r}")
        if any(c["id"] == cid for c in self.manifest["cases"]):
            raise ValueError(f"case: duplicate id {cid!r}")
        if case.kind not in CASE_KINDS:
            raise ValueError(f"case {cid}: kind {case.kind!r}")
        header = f"{cid}.h" if self.storage == "c" else None
        entry = {"id": cid, "kind": case.kind, "network": case.network, "op": case.op, "layer": case.layer,
                 "step": case.step, "attrs": _json_scalars(case.attrs), "note": case.note, "file": header}
        symbols: set[str] = set()
        stored: list[tuple[dict, np.ndarray]] = []
        keys = set(self._keys)
        for t in case.tensors:  # check every tensor before writing any file
            stored.append(self._tensor_entry(cid, t, symbols, keys))
        for t_entry, a in stored:
            if header is None:
                rel = f"{cid}/{t_entry['name']}{formats.EXT[self.storage]}"
                check_relpath(rel, f"tensor {key(cid, t_entry['name'])}")
                t_entry["file"] = rel
            else:
                t_entry["file"] = header
        for t_entry, a in stored:
            if header is None:
                self._add_file(t_entry["file"], formats.npy_bytes(a) if self.storage == "npy" else a.tobytes(order="C"))
        if header is not None:
            preamble = [f"tinysd {__version__} golden case (format {FORMAT_VERSION}, arithmetic spec "
                        f"{ARITHMETIC_SPEC_VERSION}); generated, do not edit. Values are C integer literals (no byte "
                        f"order), C order in the layout stated for each tensor."]
            self._add_file(header, formats.c_header(entry, stored, preamble, self.layout).encode("utf-8"))
        self.manifest["cases"].append(entry)
        self.manifest["tensors"] += [t for t, _ in stored]
        self._keys = keys
        log.debug("golden case %s: %d tensors", cid, len(stored))

    def add_graph(self, network: str, graph: dict, call: str, params: str | None = None) -> None:
        """Record `network`'s graph (`tinysd.interp.record.GraphRecord.to_json()`), recorded from case `call`;
        `params`: the case holding its ops' run-time parameters (None: not stored)."""
        if network in self.manifest["graphs"]:
            raise ValueError(f"graph of {network}: already recorded")
        self.manifest["graphs"][network] = _json_scalars({"call": call, "params": params, **graph})

    def _tensor_entry(self, cid: str, t: GoldenTensor, symbols: set[str], keys: set[str]) -> tuple[dict, np.ndarray]:
        k = key(cid, t.name)
        if k in keys:
            raise ValueError(f"tensor {k}: duplicate name in its case")
        keys.add(k)
        if not t.name or "/" in t.name or "\\" in t.name or t.name in (".", ".."):
            raise ValueError(f"tensor {k}: a tensor name may not be empty or contain '/'")
        if t.role not in ROLES:
            raise ValueError(f"tensor {k}: role {t.role!r} not in {ROLES}")
        a = np.asarray(t.data)
        if a.dtype.name not in DTYPES:
            raise ValueError(f"tensor {k}: dtype {a.dtype.name} not in {DTYPES} (golden tensors are integer)")
        label, perm = formats.tensor_layout(t.kind, a.ndim, self.layout)
        a = formats.to_stored(a, perm)
        axis = t.axis
        if axis is not None and perm is not None:
            axis = perm.index(axis)
        scale = None if t.scale is None else [float(s) for s in np.atleast_1d(np.asarray(t.scale, np.float64))]
        offset = None if t.offset is None else [int(o) for o in np.atleast_1d(np.asarray(t.offset))]
        if scale is not None and (offset is None or len(offset) != len(scale)):
            raise ValueError(f"tensor {k}: {len(scale)} scales but {None if offset is None else len(offset)} offsets")
        if scale is not None and len(scale) > 1 and (axis is None or a.shape[axis] != len(scale)):
            raise ValueError(f"tensor {k}: {len(scale)} scales do not fit shape {a.shape} on axis {axis}")
        sym = None
        if self.storage == "c":
            base = "tsd_" + formats.c_identifier(t.short or t.name).lower()
            sym, i = base, 2
            while sym in symbols:
                sym, i = f"{base}_{i}", i + 1
            symbols.add(sym)
        entry = {"case": cid, "name": t.name, "role": t.role, "dtype": a.dtype.name, "shape": list(a.shape),
                 "layout": label, "scale": scale, "offset": offset, "axis": axis,
                 "bitwidth": None if t.bitwidth is None else int(t.bitwidth), "source": t.source,
                 "sha256": tensor_sha256(a), "file": None, "symbol": sym}
        return entry, a

    def commit(self) -> Path:
        """Write manifest.json, validate it, and rename the folder into place. Returns the target path."""
        if self._done:
            raise RuntimeError("GoldenWriter: already committed or aborted")
        try:
            validate(self.manifest, f"{self.out}/{MANIFEST}")
            with open(self.tmp / MANIFEST, "w", encoding="utf-8") as f:
                f.write(dumps(self.manifest))
            _fsync_tree(self.tmp)
            replace_dir(self.tmp, self.out, self.overwrite)
        except BaseException:
            self.abort()
            raise
        self._done = True
        log.info("wrote %s: %d cases, %d tensors", self.out, len(self.manifest["cases"]), len(self.manifest["tensors"]))
        return self.out


def is_golden_folder(path: Path) -> bool:
    """True when `path` holds a manifest.json whose format is tinysd's golden format (what --overwrite may replace)."""
    try:
        doc = json.loads(read_text(Path(path) / MANIFEST))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def check_target(out: Path, overwrite: bool) -> None:
    """TinySDError unless a golden folder may be written at `out` (`tinysd.atomic.check_output_dir`: an existing
    `out` is replaced only with `overwrite` and only when it is a golden folder or empty; never `.`)."""
    check_output_dir(out, overwrite, is_golden_folder, "golden folder")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


