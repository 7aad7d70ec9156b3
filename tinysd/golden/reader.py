"""Reading a golden folder: a validated manifest and its tensors, each checked against its sha256."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TinySDError
from ..fileio import read_text
from . import formats
from .manifest import key, load_manifest, resolve_inside, tensor_sha256


class GoldenFolder:
    """A golden (or device) folder with a manifest.

    `GoldenFolder(path)` validates the manifest and, with verify_files, every listed
    file's size and sha256 (TinySDError naming the entry otherwise). `load(t)` returns
    tensor entry `t`'s data as stored (its stated layout), checked against its dtype,
    shape and tensor sha256; `load(t, engine_layout=True)` turns NHWC/OHWI back to NCHW/OIHW.
    """

    def __init__(self, path, verify_files: bool = True):
        self.path = Path(path)
        self.manifest = load_manifest(self.path, verify_files=verify_files)
        self._headers: dict[str, str] = {}

    @property
    def tensors(self) -> list[dict]:
        return self.manifest["tensors"]

    @property
    def cases(self) -> list[dict]:
        return self.manifest["cases"]

    def case(self, case_id: str) -> dict:
        for c in self.cases:
            if c["id"] == case_id:
                return c
        raise KeyError(case_id)

    def tensor(self, case_id: str, name: str) -> dict:
        for t in self.tensors:
            if t["case"] == case_id and t["name"] == name:
                return t
        raise KeyError(key(case_id, name))

    def load(self, t: dict, check_hash: bool = True, engine_layout: bool = False) -> np.ndarray:
        what = f"{self.path}: tensor {key(t['case'], t['name'])}"
        p = resolve_inside(self.path, t["file"], what)
        storage = self.manifest["storage"]
        if storage == "npy":
            a = formats.read_npy(p, what)
        elif storage == "raw":
            a = formats.read_raw(p, t["dtype"], t["shape"], what)
        else:
            text = self._headers.get(t["file"])
            if text is None:
                try:
                    text = read_text(p)
                except (OSError, UnicodeDecodeError) as e:
                    raise TinySDError(f"{what}: unreadable C header {p} ({e})") from None
                self._headers[t["file"]] = text
            a = formats.read_c_array(text, t["symbol"], t["dtype"], t["shape"], what)
        if a.dtype.name != t["dtype"]:
            raise TinySDError(f"{what}: file holds {a.dtype.name}, manifest says {t['dtype']}")
        if list(a.shape) != list(t["shape"]):
            raise TinySDError(f"{what}: file holds shape {list(a.shape)}, manifest says {t['shape']}")
        if check_hash and tensor_sha256(a) != t["sha256"]:
            raise TinySDError(f"{what}: data does not match its sha256 in the manifest")
        return formats.from_stored(a, t["layout"]) if engine_layout else a
