"""Integer outputs are identical across runs and across thread counts (NUMBA_NUM_THREADS / OMP_NUM_THREADS 1 vs 2).

Each network of the tiny fixture model, quantized in both precisions, runs on fixed inputs; every op output
(integer codes) is hashed (tests/quantfix.py). The hashes of two in-process runs and of fresh processes with
1 and 2 threads must all be equal, and equal to the stored golden hashes (tests/fixtures/golden_hashes.json, made
by tools/make_golden_hashes.py): the model is quantized from the fixture's stored float64 activation ranges (no
float run, so no BLAS-order dependence), and any change to a kernel, fast path or interpreter that moves one
integer of a golden output fails `test_golden_outputs_match_stored_hashes`. Run as a script
(`python test_determinism.py w8a8=FOLDER ...`), this
file prints the hashes of each quantized folder as JSON.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # quantfix, also when run as a script
sys.path.insert(0, str(ROOT / "tools"))  # make_golden_hashes

import pytest  # noqa: E402

from quantfix import KINDS, digests, golden_qmodels, integer_tensors  # noqa: E402

GOLDEN = ROOT / "tests" / "fixtures" / "golden_hashes.json"


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def models(golden):
    """{precision: QuantizedModel} of the tiny model quantized from the golden fixture's stored ranges."""
    return golden_qmodels(golden)


@pytest.fixture(scope="module")
def folders(models, tmp_path_factory):
    from tinysd.quant.folder import save_quantized

    root = tmp_path_factory.mktemp("determinism")
    return {p: save_quantized(q, root / p) for p, q in models.items()}


@pytest.fixture(scope="module")
def first(folders):
    """{precision: {call kind: digest}} of one run through each saved folder."""
    return {p: _hashes(f) for p, f in folders.items()}


def test_golden_outputs_match_stored_hashes(models, first, golden):
    """Parameters and every op's integer output (all entry points, w8a8 and w8a16) match the stored hashes."""
    from make_golden_hashes import arrays_digest

    for p, q in models.items():
        want = golden["hashes"][p]
        assert arrays_digest(q) == want["arrays"], f"{p}: quantized parameters changed (quantize_model, not kernels)"
        got = first[p]  # through the folder, as a user runs it
        assert set(got) == set(KINDS)
        changed = [k for k in KINDS if got[k] != want["outputs"][k]]
        assert not changed, f"{p}: integer outputs changed in {', '.join(changed)}"


def _hashes(folder) -> dict[str, str]:
    from tinysd.quant.folder import load_quantized

    return digests(integer_tensors(load_quantized(folder)))


def _in_subprocess(folders: dict, threads: int) -> dict[str, dict[str, str]]:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    args = [f"{p}={f}" for p, f in folders.items()]
    p = subprocess.run([sys.executable, __file__, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_integer_outputs_identical_across_runs_and_threads(folders, first):
    for p in folders:
        assert set(first[p]) == set(KINDS)
    assert first["w8a8"] != first["w8a16"]
    assert {p: _hashes(f) for p, f in folders.items()} == first
    assert _in_subprocess(folders, 1) == first
    assert _in_subprocess(folders, 2) == first


def test_hashes_see_the_data(folders):
    """Other inputs give other hashes (the hashed tensors are the computed data)."""
    from tinysd.quant.folder import load_quantized

    q = load_quantized(folders["w8a8"])
    a, b = digests(integer_tensors(q)), digests(integer_tensors(q, seed=1))
    assert a["unet"] != b["unet"] and a["vae.decode"] != b["vae.decode"] and a["vae.encode"] != b["vae.encode"]


if __name__ == "__main__":
    print(json.dumps({p: _hashes(f) for p, f in (a.split("=", 1) for a in sys.argv[1:])}))
