"""Kernels compiled in a child process on a first run (tinysd.kernels.precompile): the shipped signature list
covers what a generate and an img2img run, a cold Numba cache is filled by the child so that the run itself
compiles nothing, and a warm one starts no child."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from numba import types

from tinysd.kernels import gemm
from tinysd.kernels.precompile import dispatcher, parse_type, run_key, signatures, type_text, work_items

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "fixtures" / "golden_hashes.json"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{precision: quantized folder} of the tiny model, quantized from the golden fixture's stored ranges."""
    from quantfix import golden_qmodels
    from tinysd.quant.folder import save_quantized

    root = tmp_path_factory.mktemp("precompile")
    return {p: save_quantized(q, root / p) for p, q in golden_qmodels(json.loads(GOLDEN.read_text())).items()}


@pytest.mark.parametrize("t", [types.Array(types.uint8, 2, "C"), types.Array(types.int8, 3, "C", readonly=True),
                               types.Array(types.int32, 1, "A"), types.int64, types.int32, types.float64])
def test_type_text_round_trips(t):
    assert parse_type(type_text(t)) == t


def test_every_listed_kernel_exists_and_every_key_has_a_list():
    for key in (f"{p} {a8}/{a16}" for p in ("w8a8", "w8a16") for a8, a16 in (("u8", "i16"), ("i16", "i16"),
                                                                             ("split", "split"))):
        sigs = signatures(key)
        assert sigs, key
        for name, lst in sigs.items():
            d = dispatcher(name)
            assert lst and all(len(s) == d.py_func.__code__.co_argcount for s in lst), name


@pytest.mark.parametrize("precision", ["w8a8", "w8a16"])
def test_the_list_covers_a_generate_and_an_img2img(folders, precision):
    """The run tools/make_kernel_signatures.py records (a low-memory 1-step generate and a 2-step img2img), with
    this machine's GEMM methods."""
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "make_kernel_signatures.py"), "--child",
                        str(folders[precision]), "0", gemm.A8_METHOD], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    (key, used), = json.loads(p.stdout.splitlines()[-1]).items()
    assert key == run_key(precision)
    listed = signatures(key)
    missing = [(name, sig) for name, sigs in used.items() for sig in sigs if sig not in listed.get(name, [])]
    assert used and not missing


def _generate(folder, out, cache):
    p = subprocess.run([sys.executable, "-m", "tinysd", "-v", "generate", "x", "--model", str(folder), "--steps", "1",
                        "-o", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, PYTHONPATH=str(ROOT), NUMBA_CACHE_DIR=str(cache)))
    assert p.returncode == 0, p.stderr
    return p.stderr


def test_a_cold_cache_is_filled_by_a_child_process(folders, tmp_path):
    cache = tmp_path / "numba-cache"
    first = _generate(folders["w8a8"], tmp_path / "a.png", cache)
    n = len(work_items([run_key("w8a8")]))
    assert re.search(rf"compiled {n} kernel signatures in \d child process(es)? in", first), first
    assert "kernels: 0 signatures compiled in this process" in first
    assert list(cache.rglob("tinysd-compiled-*"))
    again = _generate(folders["w8a8"], tmp_path / "b.png", cache)
    assert "child process" not in again and "kernels: 0 signatures compiled in this process" in again
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()



@pytest.mark.parametrize("executable, why", [("no-python", "[Errno 2] No such file or directory: '{}'"),
                                             ("/bin/false", "exit code 1")])
def test_a_failed_child_is_one_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog, executable, why):
    """A child that cannot start or fails costs one warning: the kernels then compile in the process as they are
    called, and no stamp is written."""
    import tinysd.kernels.precompile as pc

    assert pc._stamp(run_key("w8a8")) is not None  # this machine's Numba cache folder is found
    monkeypatch.setattr(pc, "_stamp", lambda key: tmp_path / "stamp")
    executable = str(tmp_path / executable) if executable == "no-python" else executable
    monkeypatch.setattr(pc.sys, "executable", executable)
    with caplog.at_level("WARNING", logger=pc.__name__):
        pc.ensure_compiled(["w8a8"])
    assert not (tmp_path / "stamp").exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"compiling the kernels in a child process failed ({why.format(executable)}); they compile as they are used"]
