"""Integer outputs are identical across runs and across thread counts (NUMBA_NUM_THREADS / OMP_NUM_THREADS 1 vs 2).

Each network of the tiny fixture model, quantized in both precisions, runs on fixed inputs; every op output
(integer codes) is hashed (tests/quantfix.py). The hashes of two in-process runs and of fresh processes with
1 and 2 threads must all be equal. Run as a script (`python test_determinism.py w8a8=FOLDER ...`), this
file prints the hashes of each quantized folder as JSON.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # quantfix, also when run as a script

import pytest  # noqa: E402

from quantfix import KINDS, digests, integer_tensors  # noqa: E402

TINY = ROOT / "tests" / "fixtures" / "tiny-sd"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.calibration import calibrate_model, quantize_model
    from tinysd.quant.folder import save_quantized

    loaded = load_checkpoint(TINY)
    ranges = calibrate_model(loaded, ["a red circle", "a large green triangle on the right"], steps=2)
    root = tmp_path_factory.mktemp("determinism")
    return {p: save_quantized(quantize_model(loaded, p, ranges), root / p) for p in ("w8a8", "w8a16")}


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


def test_integer_outputs_identical_across_runs_and_threads(folders):
    first = {p: _hashes(f) for p, f in folders.items()}
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
