"""`tinysd compare`: a flipped bit is found at the right tensor and index, tolerance semantics, SQNR,
malformed golden and device folders (exit 2, named), the JSON report."""
import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from golden_helpers import write_synthetic

from tinysd import cli as cli_module
from tinysd.golden import GoldenFolder, compare

CASE = "p000/net/step000"
LAYER = "p000/net/step000/layers/conv"


def run(*args):
    return CliRunner().invoke(cli_module.cli, list(map(str, args)))


def device_from(golden, dest, fmt="bin", edit=None, only_outputs=True):
    """Write golden's tensors (engine values, in golden layout) as plain device files; edit(key, array) may change them."""
    g = GoldenFolder(golden)
    dest.mkdir()
    for t in g.tensors:
        if only_outputs and t["role"] != "output":
            continue
        a = g.load(t).copy()
        if edit is not None:
            a = edit(t, a)
        p = dest / t["case"] / f"{t['name']}.{fmt}"
        p.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "npy":
            np.save(p, a)
        else:
            p.write_bytes(a.astype(a.dtype.newbyteorder("<")).tobytes())
    return dest


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("fmt", ["bin", "npy"])
def test_single_flipped_bit_is_found_at_tensor_and_index(tmp_path, layout, fmt):
    golden = write_synthetic(tmp_path / "g", "raw", layout)
    flat_index, bit = 29, 3

    def flip(t, a):
        if t["case"] == LAYER and t["name"] == "unet.conv.out":
            a.reshape(-1)[flat_index] ^= np.uint8(1 << bit)
        return a

    device = device_from(golden, tmp_path / "d", fmt, flip)
    res = run("compare", golden, device, "--json", tmp_path / "r.json")
    assert res.exit_code == 1, res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["status"] == "fail" and rep["exit_code"] == 1
    rows = {r["key"]: r for r in rep["tensors"]}
    bad = rows[f"{LAYER}:unet.conv.out"]
    stored_shape = bad["shape"]
    assert bad["layout"] == layout.upper()
    assert bad["first_mismatch"] == [int(i) for i in np.unravel_index(flat_index, stored_shape)]
    assert bad["mismatches"] == 1 and bad["max_abs_diff_lsb"] == 1 << bit and bad["status"] == "fail"
    assert bad["device_value"] ^ bad["golden_value"] == 1 << bit
    others = [r for k, r in rows.items() if k != bad["key"]]
    assert all(r["status"] in ("exact", "skipped") for r in others)
    assert sum(r["status"] == "exact" for r in others) == 1  # the other output, unet.out
    line = next(ln for ln in res.stdout.splitlines() if ln.endswith(f"{LAYER}:unet.conv.out"))
    assert line.startswith("FAIL") and "[" + ",".join(map(str, bad["first_mismatch"])) + "]" in line


def test_tolerance_semantics(tmp_path):
    golden = write_synthetic(tmp_path / "g", "npy")
    n = 5

    def plus(d):
        def edit(t, a):
            if t["name"] == "unet.out":
                a.reshape(-1)[7] += np.uint16(d)  # golden value is well below 65535 - 6
            return a
        return edit

    g = GoldenFolder(golden)
    assert g.load(g.tensor(CASE, "unet.out")).reshape(-1)[7] < 65535 - n - 1
    exact = device_from(golden, tmp_path / "d0", "bin")
    assert run("compare", golden, exact).exit_code == 0
    at_n = device_from(golden, tmp_path / "dn", "bin", plus(n))
    over = device_from(golden, tmp_path / "dn1", "bin", plus(n + 1))
    assert run("compare", golden, at_n, "--tolerance-lsb", n).exit_code == 0
    assert run("compare", golden, at_n, "--tolerance-lsb", n - 1).exit_code == 1
    assert run("compare", golden, over, "--tolerance-lsb", n).exit_code == 1
    rep = compare(golden, at_n, n)
    row = next(r for r in rep.tensors if r["name"] == "unet.out")
    assert (row["status"], row["exact"], row["max_abs_diff_lsb"], row["mismatches"]) == ("within", False, n, 1)
    assert run("compare", golden, at_n, "--tolerance-lsb", -1).exit_code == 2


def test_sqnr_matches_its_definition(tmp_path):
    golden = write_synthetic(tmp_path / "g", "npy")
    g = GoldenFolder(golden)
    t = g.tensor(CASE, "unet.out")
    q = g.load(t)

    def edit(tt, a):
        if tt["name"] == "unet.out":
            a.reshape(-1)[:4] += np.uint16(3)
        return a

    device = device_from(golden, tmp_path / "d", "npy", edit)
    row = next(r for r in compare(golden, device).tensors if r["name"] == "unet.out")
    real = (q.astype(np.float64) + t["offset"][0]) * t["scale"][0]
    expected = 10 * math.log10(np.sum(real**2) / (4 * (3 * t["scale"][0]) ** 2))
    assert row["sqnr_db"] == pytest.approx(expected, rel=1e-12)
    assert row["mismatches"] == 4 and row["first_mismatch"] == [0, 0, 0, 0]


def test_device_folder_with_manifest_and_other_layout(tmp_path):
    """A device folder may carry its own manifest; its layout may differ from the golden one."""
    golden = write_synthetic(tmp_path / "g", "raw", "nchw")
    same = write_synthetic(tmp_path / "d", "npy", "nhwc")
    rep = compare(golden, same)
    assert rep.exit_code == 0 and all(r["status"] == "exact" for r in rep.tensors)
    other = write_synthetic(tmp_path / "d2", "c", "nhwc", seed=3)
    rep = compare(golden, other)
    assert rep.exit_code == 1
    assert {r["name"] for r in rep.tensors if r["status"] == "fail"} >= {"unet.out", "unet.sample"}


# ---------------------------------------------------------------------------------------------
# malformed input: exit 2, each problem named
# ---------------------------------------------------------------------------------------------
def _errors(res):
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert lines and all(ln.startswith("tinysd: error: ") for ln in lines)
    assert "Traceback" not in res.output
    return lines


def test_missing_device_tensor(tmp_path):
    golden = write_synthetic(tmp_path / "g", "raw")
    device = device_from(golden, tmp_path / "d")
    (device / LAYER / "unet.conv.out.bin").unlink()
    lines = _errors(run("compare", golden, device, "--json", tmp_path / "r.json"))
    assert len(lines) == 1 and f"{LAYER}:unet.conv.out: missing" in lines[0]
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["status"] == "malformed" and rep["summary"]["error"] == 1
    assert next(r for r in rep["tensors"] if r["name"] == "unet.out")["status"] == "exact"  # the rest is compared


def test_wrong_shape_dtype_size_unreadable(tmp_path):
    golden = write_synthetic(tmp_path / "g", "raw")
    device = device_from(golden, tmp_path / "d", "npy")
    g = GoldenFolder(golden)
    out = g.load(g.tensor(CASE, "unet.out"))
    np.save(device / CASE / "unet.out.npy", out.reshape(1, 2, 9))  # wrong shape
    lines = _errors(run("compare", golden, device))
    assert "unet.out: shape [1, 2, 9], golden is [1, 2, 3, 3]" in lines[0]
    np.save(device / CASE / "unet.out.npy", out.astype(np.int32))  # wrong dtype
    assert "unet.out: dtype int32, golden is uint16" in _errors(run("compare", golden, device))[0]
    (device / CASE / "unet.out.npy").write_bytes(b"\x93NUMPY garbage")  # unreadable
    assert "unet.out: unreadable .npy file" in _errors(run("compare", golden, device))[0]
    (device / CASE / "unet.out.npy").unlink()
    (device / CASE / "unet.out.bin").write_bytes(out.tobytes()[:-1])  # raw of the wrong size
    assert "has 35 bytes, expected 36 (uint16 x [1, 2, 3, 3])" in _errors(run("compare", golden, device))[0]
    (device / CASE / "unet.out.bin").unlink()
    (device / CASE / "unet.out.bin").mkdir()  # not a file
    assert "is not a regular file" in _errors(run("compare", golden, device))[0]
    shutil.rmtree(device / CASE / "unet.out.bin")
    np.save(device / CASE / "unet.out.npy", out)
    (device / CASE / "unet.out.bin").write_bytes(out.tobytes())  # two candidates
    assert "ambiguous" in _errors(run("compare", golden, device))[0]


def test_two_problems_are_both_reported(tmp_path):
    golden = write_synthetic(tmp_path / "g", "raw")
    device = device_from(golden, tmp_path / "d")
    (device / LAYER / "unet.conv.out.bin").unlink()
    (device / CASE / "unet.out.bin").write_bytes(b"12")
    lines = _errors(run("compare", golden, device))
    assert len(lines) == 2
    assert any("unet.conv.out: missing" in ln for ln in lines) and any("unet.out:" in ln for ln in lines)


def test_flat_device_files_for_unique_names(tmp_path):
    golden = write_synthetic(tmp_path / "g", "raw")
    g = GoldenFolder(golden)
    device = tmp_path / "d"
    device.mkdir()
    for name, case in (("unet.out", CASE), ("unet.conv.out", LAYER)):
        (device / f"{name}.bin").write_bytes(g.load(g.tensor(case, name)).tobytes())
    assert run("compare", golden, device).exit_code == 0


def test_malformed_golden_or_device_manifest_is_one_line(tmp_path):
    golden = write_synthetic(tmp_path / "g", "raw")
    device = write_synthetic(tmp_path / "d", "npy")
    m = json.loads((device / "manifest.json").read_text())
    m["files"][0]["path"] = "../escape.npy"
    (device / "manifest.json").write_text(json.dumps(m))
    lines = _errors(run("compare", golden, device))
    assert len(lines) == 1 and "d/manifest.json" in lines[0] and "escapes its folder" in lines[0]
    (golden / "manifest.json").write_text("[]")
    lines = _errors(run("compare", golden, tmp_path / "g"))
    assert len(lines) == 1 and "g/manifest.json: expected a JSON object" in lines[0]
    assert "does not exist" in _errors(run("compare", write_synthetic(tmp_path / "g2"), tmp_path / "nope"))[0]


def test_unknown_device_tensor_in_device_manifest(tmp_path):
    golden = write_synthetic(tmp_path / "g", "npy")
    device = write_synthetic(tmp_path / "d", "npy")
    m = json.loads((device / "manifest.json").read_text())
    t = next(t for t in m["tensors"] if t["name"] == "unet.out")
    m["tensors"].append(dict(t, name="unet.extra"))
    (device / "manifest.json").write_text(json.dumps(m))
    lines = _errors(run("compare", golden, device))
    assert lines == [f"tinysd: error: device tensor {CASE}:unet.extra: not in the golden manifest"]


def test_report_json_is_written_atomically_and_complete(tmp_path):
    golden = write_synthetic(tmp_path / "g", "npy")
    res = run("compare", golden, golden, "--json", tmp_path / "report.json")
    assert res.exit_code == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["summary"] == {"tensors": 8, "exact": 8, "within": 0, "fail": 0, "error": 0, "skipped": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "report.json"]
    assert res.stdout.splitlines()[-1] == "8 tensors: 8 exact, 0 within 0 LSB, 0 failed, 0 malformed"
    assert "does not exist" in _errors(run("compare", golden, golden, "--json", tmp_path / "no" / "r.json"))[0]
