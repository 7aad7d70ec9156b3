"""Golden folders: manifest round trip, determinism, validation of malformed manifests, atomic writes."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from golden_helpers import synthetic_cases, write_synthetic

from tinysd.errors import TinySDError
from tinysd.golden import GoldenCase, GoldenFolder, GoldenTensor, GoldenWriter, load_manifest, tensor_sha256
from tinysd.golden.manifest import dumps

ROOT = Path(__file__).resolve().parents[2]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("storage", ["npy", "raw", "c"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_round_trip(tmp_path, storage, layout):
    out = write_synthetic(tmp_path / "g", storage, layout)
    assert sorted(os.listdir(tmp_path)) == ["g"]  # no temporary folder left
    g = GoldenFolder(out)
    m = g.manifest
    assert (m["format"], m["format_version"], m["storage"], m["layout"]) == ("tinysd-golden", 2, storage, layout)
    assert m["arithmetic_spec_version"] and m["tinysd_version"]
    originals = {(c.id, t.name): (c, t) for c in synthetic_cases() for t in c.tensors}
    assert len(g.tensors) == len(originals)
    for t in g.tensors:
        case, src = originals[(t["case"], t["name"])]
        back = g.load(t, engine_layout=True)
        assert back.dtype == src.data.dtype
        np.testing.assert_array_equal(back, src.data)
        stored = g.load(t)
        assert t["sha256"] == tensor_sha256(stored)
        assert t["role"] == src.role and t["dtype"] == src.data.dtype.name
        if src.kind == "image":
            assert t["layout"] == layout.upper()
            if layout == "nhwc":
                np.testing.assert_array_equal(stored, src.data.transpose(0, 2, 3, 1))
        elif src.kind == "weight":
            assert t["layout"] == ("OIHW" if layout == "nchw" else "OHWI")
            assert t["axis"] == 0  # the output-channel axis stays first
        else:
            assert t["layout"] == "plain"
        if src.scale is not None:
            assert t["scale"] == [float(s) for s in src.scale] and t["offset"] == [int(o) for o in src.offset]
    conv = g.case("p000/net/step000/layers/conv")
    assert conv["attrs"]["padding"] == [0, 0, 0, 0] and conv["op"] == "conv2d"
    if storage == "c":
        assert conv["file"] == "p000/net/step000/layers/conv.h"
        assert {t["symbol"] for t in g.tensors if t["case"] == conv["id"]} == \
            {"tsd_x", "tsd_weight_q", "tsd_bias_q", "tsd_table", "tsd_out"}


def test_tensor_hashes_do_not_depend_on_the_storage(tmp_path):
    hashes = {}
    for storage in ("npy", "raw", "c"):
        g = GoldenFolder(write_synthetic(tmp_path / storage, storage))
        hashes[storage] = {(t["case"], t["name"]): t["sha256"] for t in g.tensors}
    assert hashes["npy"] == hashes["raw"] == hashes["c"]


@pytest.mark.parametrize("storage", ["npy", "raw", "c"])
def test_two_runs_are_byte_identical(tmp_path, storage):
    a = _files(write_synthetic(tmp_path / "a", storage, "nhwc"))
    b = _files(write_synthetic(tmp_path / "b", storage, "nhwc"))
    assert a == b
    c = _files(write_synthetic(tmp_path / "c", storage, "nhwc", seed=1))
    assert c != a  # the comparison can fail


# ---------------------------------------------------------------------------------------------
# malformed manifests
# ---------------------------------------------------------------------------------------------
def _edit(folder: Path, fn):
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(dumps(m))


def _first(m, name):
    return next(t for t in m["tensors"] if t["name"] == name)


CASES = [
    ("absolute path", lambda m: _first(m, "unet.out").update(file="/etc/passwd"), "is absolute"),
    ("dotdot", lambda m: m["files"][0].update(path="../" + m["files"][0]["path"]), "escapes its folder"),
    ("dotdot inside", lambda m: m["files"][0].update(path="p000/../../x.npy"), "escapes its folder"),
    ("missing key", lambda m: _first(m, "unet.out").pop("sha256"), "missing key 'sha256'"),
    ("missing top key", lambda m: m.pop("tensors"), "missing key 'tensors'"),
    ("bad dtype", lambda m: _first(m, "unet.out").update(dtype="float32"), "dtype 'float32'"),
    ("bad role", lambda m: _first(m, "unet.out").update(role="weights"), "role 'weights'"),
    ("bad shape", lambda m: _first(m, "unet.out").update(shape=[1, -2, 3, 3]), "shape has a value < 0"),
    ("bad hash text", lambda m: _first(m, "unet.out").update(sha256="abc"), "sha256 must be 64"),
    ("unlisted file", lambda m: _first(m, "unet.out").update(file="p000/other.npy"), "not listed"),
    ("unknown case", lambda m: _first(m, "unet.out").update(case="nope"), "unknown case"),
    ("wrong version", lambda m: m.update(format_version=99), "format_version 99"),
    ("not golden", lambda m: m.update(format="something"), "not a tinysd golden manifest"),
    ("scale count", lambda m: _first(m, "unet.conv.weight_q").update(scale=[1.0, 2.0]), "2 scales but 4 offsets"),
    ("channel count", lambda m: _first(m, "unet.conv.weight_q").update(scale=[1.0] * 2, offset=[0] * 2),
     "2 scales for 4 channels"),
    ("negative scale", lambda m: _first(m, "unet.sample").update(scale=[-1.0]), "scale must be"),
    ("bool size", lambda m: m["files"][0].update(size=True), "wrong type"),
]


@pytest.mark.parametrize("what,edit,needle", CASES, ids=[c[0] for c in CASES])
def test_malformed_manifest_is_refused_naming_the_entry(tmp_path, what, edit, needle):
    out = write_synthetic(tmp_path / "g")
    _edit(out, edit)
    with pytest.raises(TinySDError, match="manifest.json") as e:
        load_manifest(out)
    assert needle in str(e.value)


def test_file_hash_and_size_mismatch(tmp_path):
    out = write_synthetic(tmp_path / "g", "raw")
    m = load_manifest(out)
    f = next(x for x in m["files"] if x["path"].endswith("unet.out.bin"))
    p = out / f["path"]
    data = bytearray(p.read_bytes())
    data[3] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(TinySDError, match=r"unet\.out\.bin: sha256 differs"):
        load_manifest(out)
    p.write_bytes(bytes(data) + b"\0")
    with pytest.raises(TinySDError, match=r"unet\.out\.bin: size"):
        load_manifest(out)
    p.unlink()
    with pytest.raises(TinySDError, match=r"unet\.out\.bin: missing"):
        load_manifest(out)


def test_tensor_hash_mismatch_is_found_on_load(tmp_path):
    """A manifest whose file list was re-hashed but whose tensor hash is stale: load() refuses the data."""
    out = write_synthetic(tmp_path / "g")
    _edit(out, lambda m: _first(m, "unet.out").update(sha256="0" * 64))
    g = GoldenFolder(out)
    with pytest.raises(TinySDError, match="unet.out: data does not match its sha256"):
        g.load(g.tensor("p000/net/step000", "unet.out"))


def test_symlink_outside_the_folder_is_refused(tmp_path):
    out = write_synthetic(tmp_path / "g", "raw")
    m = load_manifest(out)
    rel = next(x["path"] for x in m["files"] if x["path"].endswith("unet.out.bin"))
    target = tmp_path / "outside.bin"
    target.write_bytes((out / rel).read_bytes())
    (out / rel).unlink()
    (out / rel).symlink_to(target)
    with pytest.raises(TinySDError, match="resolves outside"):
        load_manifest(out)
    # a symlink that stays inside the folder is fine
    inside = out / "p000" / "copy.bin"
    inside.write_bytes(target.read_bytes())
    (out / rel).unlink()
    (out / rel).symlink_to(inside)
    load_manifest(out)


def test_manifest_not_json_or_missing(tmp_path):
    out = write_synthetic(tmp_path / "g")
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(TinySDError, match="unreadable JSON"):
        load_manifest(out)
    (out / "manifest.json").write_text('{"format": "tinysd-golden", "format_version": 1, "x": NaN}')
    with pytest.raises(TinySDError, match="unreadable JSON"):
        load_manifest(out)
    (out / "manifest.json").unlink()
    with pytest.raises(TinySDError, match="manifest.json: missing"):
        load_manifest(out)


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------
def test_exception_while_writing_leaves_nothing(tmp_path):
    cases = synthetic_cases()
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with GoldenWriter(tmp_path / "g", "npy") as w:
                w.write_case(cases[0])
                raise exc
        assert os.listdir(tmp_path) == []


def test_existing_folder_is_not_clobbered(tmp_path):
    out = tmp_path / "g"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(TinySDError, match="already exists"):
        GoldenWriter(out, "npy")
    # --overwrite replaces only a golden folder: a user's folder is refused before anything is written
    with pytest.raises(TinySDError, match="not a tinysd golden folder"):
        GoldenWriter(out, "npy", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["g"] and os.listdir(out) == ["keep.txt"]
    out = tmp_path / "golden"
    write_synthetic(out)
    (out / "stale.txt").write_text("old")
    # with overwrite, a failed write still leaves the old folder as it was
    with pytest.raises(RuntimeError):
        with GoldenWriter(out, "npy", overwrite=True) as w:
            w.write_case(synthetic_cases()[0])
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["g", "golden"] and (out / "stale.txt").read_text() == "old"
    write_synthetic(out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "manifest.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["g", "golden"]
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(TinySDError, match="not a folder"):
        GoldenWriter(f, "npy", overwrite=True)


def test_killed_process_leaves_no_partial_folder(tmp_path):
    """SIGKILL in the middle of writing: the target never exists (a `.tinysd-tmp-g.{pid}.*` folder may remain)."""
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
        from golden_helpers import synthetic_cases
        from tinysd.golden import GoldenWriter
        w = GoldenWriter({str(tmp_path / "g")!r}, "npy")
        w.write_case(synthetic_cases()[0])
        print("written", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "written"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert not (tmp_path / "g").exists()
    assert all(n.startswith(f".tinysd-tmp-g.{p.pid}.") for n in os.listdir(tmp_path))


def test_writer_refuses_bad_tensors(tmp_path):
    with GoldenWriter(tmp_path / "g", "npy") as w:
        with pytest.raises(ValueError, match="dtype float32"):
            w.write_case(GoldenCase("a", "network", "unet", [GoldenTensor("t", "output", np.zeros(3, np.float32))]))
        with pytest.raises(ValueError, match="role"):
            w.write_case(GoldenCase("b", "network", "unet", [GoldenTensor("t", "out", np.zeros(3, np.uint8))]))
        with pytest.raises(TinySDError, match="escapes"):
            w.write_case(GoldenCase("../c", "network", "unet", [GoldenTensor("t", "output", np.zeros(3, np.uint8))]))
        w.write_case(GoldenCase("d", "network", "unet", [GoldenTensor("t", "output", np.zeros(3, np.uint8))]))
    assert [t["name"] for t in load_manifest(tmp_path / "g")["tensors"]] == ["t"]
