"""`tinysd compare`: check device outputs against a golden folder, tensor by tensor.

The device folder holds the device's tensors under the golden names, either

* with its own `manifest.json` (same schema as a golden folder; validated the same
  way, tensors matched by `(case, name)`; layouts may differ, values are compared
  after converting to the golden tensor's layout), or
* as plain files: tensor `T` of case `C` is `C/T.npy`, `C/T.bin` or `C/T.raw` (raw:
  little-endian, C order in the golden tensor's stated layout), or `T.npy`/`.bin`/
  `.raw` at the top when `T` names only one golden tensor.

Every golden tensor with role "output" must be present; inputs and params are
compared when present. For each tensor the report gives: exact or not, the number
of mismatching elements, the largest |device - golden| in LSBs (integer steps), the
first mismatching index as coordinates in the golden layout (C order), and the SQNR
in dB, `10 log10(sum(g^2) / sum((d - g)^2))` with `g` the golden values dequantized
(`(q + offset) * scale`; the integers themselves when the tensor has no encoding)
and `d` the device values the same way; null when no element differs (infinite) or
the signal is all zero.

Status: a tensor is "exact", "within" (0 < max |diff| <= tolerance), "fail" (max
|diff| > tolerance) or "error" (missing, unreadable, wrong dtype or shape). The
exit code is 0 when every tensor is exact or within tolerance, 1 when some fail,
and 2 when any is in error (or the golden folder itself is malformed).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import check_writable_folder, output_file, write_text
from ..errors import TinySDError
from . import formats
from .manifest import MANIFEST, key, resolve_inside
from .reader import GoldenFolder

DEVICE_EXTS = (".npy", ".bin", ".raw")


@dataclass
class Report:
    golden: str
    device: str
    tolerance_lsb: int
    tensors: list[dict] = field(default_factory=list)

    @property
    def errors(self) -> list[dict]:
        return [t for t in self.tensors if t["status"] == "error"]

    @property
    def exit_code(self) -> int:
        if self.errors:
            return 2
        return 1 if any(t["status"] == "fail" for t in self.tensors) else 0

    def summary(self) -> dict:
        counts = {s: sum(t["status"] == s for t in self.tensors) for s in ("exact", "within", "fail", "error", "skipped")}
        return {"tensors": len(self.tensors), **counts}

    def to_json(self) -> dict:
        return {"golden": self.golden, "device": self.device, "tolerance_lsb": self.tolerance_lsb,
                "status": {0: "ok", 1: "fail", 2: "malformed"}[self.exit_code], "exit_code": self.exit_code,
                "summary": self.summary(), "tensors": self.tensors}

    def table(self) -> str:
        """The summary table: one row per tensor, then a totals line."""
        rows = [("STATUS", "MISMATCH", "MAX|D|", "SQNR_DB", "FIRST", "TENSOR")]
        for t in self.tensors:
            if t["status"] in ("error", "skipped"):
                rows.append((t["status"].upper(), "-", "-", "-", "-", f"{t['key']}  ({t['error'] or 'not on device'})"))
                continue
            sq = "inf" if t["sqnr_db"] is None and t["exact"] else "-" if t["sqnr_db"] is None else f"{t['sqnr_db']:.2f}"
            first = "-" if t["first_mismatch"] is None else "[" + ",".join(map(str, t["first_mismatch"])) + "]"
            rows.append((t["status"].upper(), f"{t['mismatches']}/{t['size']}", str(t["max_abs_diff_lsb"]), sq, first,
                         t["key"]))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
        s = self.summary()
        lines.append(f"{s['tensors']} tensors: {s['exact']} exact, {s['within']} within {self.tolerance_lsb} LSB, "
                     f"{s['fail']} failed, {s['error']} malformed"
                     + (f", {s['skipped']} not on device" if s["skipped"] else ""))
        return "\n".join(lines)


def _real(q: np.ndarray, t: dict) -> np.ndarray:
    """float64 (q + offset) * scale with per-channel broadcasting; q itself when t has no encoding."""
    x = q.astype(np.float64)
    if t["scale"] is None:
        return x
    scale = np.asarray(t["scale"], np.float64)
    offset = np.asarray(t["offset"], np.float64)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[t["axis"]] = scale.size
        scale, offset = scale.reshape(shape), offset.reshape(shape)
    elif q.ndim:
        scale, offset = scale.reshape(()), offset.reshape(())
    return (x + offset) * scale


def compare_arrays(g: np.ndarray, d: np.ndarray, t: dict, tolerance: int) -> dict:
    """Metrics of device `d` against golden `g` (same dtype and shape, golden layout)."""
    diff = d.astype(np.int64) - g.astype(np.int64)
    nz = np.flatnonzero(diff)
    absd = np.abs(diff)
    maxd = int(absd.max()) if diff.size else 0
    over = np.flatnonzero(absd > tolerance)
    coords = lambda i: [int(c) for c in np.unravel_index(int(i), g.shape)]  # noqa: E731
    sqnr = None
    if nz.size:
        sig, dev = _real(g, t), _real(d, t)
        p_sig = float(np.sum(sig * sig))
        p_noise = float(np.sum((dev - sig) ** 2))
        if p_sig > 0 and p_noise > 0:
            sqnr = 10.0 * math.log10(p_sig / p_noise)
    status = "exact" if not nz.size else "within" if maxd <= tolerance else "fail"
    first = coords(nz[0]) if nz.size else None
    return {"status": status, "exact": not nz.size, "mismatches": int(nz.size), "size": int(g.size),
            "max_abs_diff_lsb": maxd, "first_mismatch": first,
            "golden_value": int(g.reshape(-1)[nz[0]]) if nz.size else None,
            "device_value": int(d.reshape(-1)[nz[0]]) if nz.size else None,
            "over_tolerance": int(over.size), "first_over_tolerance": coords(over[0]) if over.size else None,
            "sqnr_db": sqnr}


class _PlainDevice:
    """A device folder without a manifest: files named after the tensors."""

    def __init__(self, path: Path, golden: GoldenFolder):
        self.path = path
        names: dict[str, int] = {}
        for t in golden.tensors:
            names[t["name"]] = names.get(t["name"], 0) + 1
        self.unique = {n for n, c in names.items() if c == 1}

    def find(self, t: dict) -> Path | None:
        """The device file of golden tensor t, None when absent; TinySDError when ambiguous or escaping."""
        what = f"device tensor {key(t['case'], t['name'])}"
        stems = [f"{t['case']}/{t['name']}"] + ([t["name"]] if t["name"] in self.unique else [])
        for stem in stems:
            hits = []
            for ext in DEVICE_EXTS:
                rel = stem + ext
                p = self.path / rel
                if p.exists() or p.is_symlink():
                    resolve_inside(self.path, rel, what)
                    hits.append(p)
            if len(hits) > 1:
                raise TinySDError(f"{what}: ambiguous, several files: {', '.join(h.name for h in hits)}")
            if hits:
                return hits[0]
        return None

    def load(self, t: dict, p: Path) -> np.ndarray:
        what = f"device tensor {key(t['case'], t['name'])}"
        if not p.is_file():
            raise TinySDError(f"{what}: {p} is not a regular file")
        if p.suffix == ".npy":
            return formats.read_npy(p, what)
        return formats.read_raw(p, t["dtype"], t["shape"], what)


def _to_golden_layout(a: np.ndarray, src_label: str, dst_label: str) -> np.ndarray:
    a = formats.from_stored(a, src_label)  # engine layout
    if dst_label in ("NHWC", "OHWI"):
        a = np.ascontiguousarray(a.transpose(0, 2, 3, 1))
    return a


def compare(golden_dir, device_dir, tolerance_lsb: int = 0) -> Report:
    """Compare every golden tensor with its device counterpart (see the module docstring)."""
    if isinstance(tolerance_lsb, bool) or not isinstance(tolerance_lsb, int) or tolerance_lsb < 0:
        raise TinySDError(f"--tolerance-lsb must be an integer >= 0, got {tolerance_lsb!r}")
    golden = GoldenFolder(golden_dir)
    device_dir = Path(device_dir)
    if not device_dir.is_dir():
        raise TinySDError(f"{device_dir}: device folder does not exist or is not a folder")
    report = Report(str(golden_dir), str(device_dir), tolerance_lsb)
    dev_folder = GoldenFolder(device_dir) if (device_dir / MANIFEST).exists() or (device_dir / MANIFEST).is_symlink() else None
    plain = None if dev_folder is not None else _PlainDevice(device_dir, golden)
    dev_index = {key(t["case"], t["name"]): t for t in dev_folder.tensors} if dev_folder else {}
    golden_keys = set()
    for t in golden.tensors:
        k = key(t["case"], t["name"])
        golden_keys.add(k)
        row = {"key": k, "case": t["case"], "name": t["name"], "role": t["role"], "dtype": t["dtype"],
               "shape": t["shape"], "layout": t["layout"], "device_file": None, "error": None}
        g = golden.load(t)
        try:
            if dev_folder is not None:
                dt = dev_index.get(k)
                if dt is None:
                    raise LookupError
                row["device_file"] = dt["file"]
                if dt["dtype"] != t["dtype"]:
                    raise TinySDError(f"device tensor {k}: dtype {dt['dtype']}, golden is {t['dtype']}")
                d = _to_golden_layout(dev_folder.load(dt), dt["layout"], t["layout"])
            else:
                p = plain.find(t)
                if p is None:
                    raise LookupError
                row["device_file"] = str(p.relative_to(device_dir))
                d = plain.load(t, p)
            if d.dtype.name != t["dtype"]:
                raise TinySDError(f"device tensor {k}: dtype {d.dtype.name}, golden is {t['dtype']}")
            if list(d.shape) != list(t["shape"]):
                raise TinySDError(f"device tensor {k}: shape {list(d.shape)}, golden is {t['shape']}")
            row.update(compare_arrays(g, d, t, tolerance_lsb))
        except LookupError:
            if t["role"] == "output":
                row.update(status="error", error=f"device tensor {k}: missing (no file for this golden output)")
            else:
                row.update(status="skipped")
        except TinySDError as e:
            row.update(status="error", error=str(e))
        report.tensors.append(row)
    for k in sorted(set(dev_index) - golden_keys):
        report.tensors.append({"key": k, "case": dev_index[k]["case"], "name": dev_index[k]["name"], "status": "error",
                               "error": f"device tensor {k}: not in the golden manifest"})
    return report


def check_report_path(path) -> Path:
    """TinySDError unless the JSON report can be written at `path` (a new or regular file in a writable folder)."""
    path = Path(path)
    try:
        target = output_file(path)
    except TinySDError as e:
        raise TinySDError(f"--json {e}") from None
    check_writable_folder(target.parent, f"--json {path}")
    return path


def write_report(report: Report, path) -> None:
    """The JSON report, written atomically (temp file in the same folder, then os.replace)."""
    path = check_report_path(path)
    text = json.dumps(report.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    try:
        write_text(path, text)
    except OSError as e:
        raise TinySDError(f"--json {path}: cannot write the report ({e.strerror or e})") from None
