"""Write tests/fixtures/golden_hashes.json: the determinism hashes of the integer networks' golden outputs.

    PYTHONPATH=. python3 tools/make_golden_hashes.py [--out tests/fixtures/golden_hashes.json]

The guard that an optimisation leaves every integer byte unchanged (tests/quant/test_golden_hashes.py).
The tiny fixture model (tests/fixtures/tiny-sd) is calibrated once here with float runs (min-max over two
prompts, 2 steps) and the activation ranges are stored in the fixture as float64 numbers, so the test
does not depend on float BLAS summation order: it quantizes from the stored ranges (float64 parameter
preparation, the same on every machine) to w8a8 and w8a16, runs one call of every entry point (text
encoder, UNet, VAE decode, VAE encode; tests/quantfix.integer_tensors) and compares the SHA-256 of every
op's integer output (tests/quantfix.digests) with the stored hashes. A digest of the run-time arrays is
stored too, so a mismatch says whether the quantized parameters or the kernels changed.

Regenerate only when a spec change (docs/arithmetic.md, with its version bump) changes integers on purpose.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

TINY = ROOT / "tests" / "fixtures" / "tiny-sd"
PROMPTS = ["a red circle", "a large green triangle on the right"]
STEPS = 2
PRECISIONS = ("w8a8", "w8a16")


def arrays_digest(qmodel) -> str:
    """SHA-256 over every run-time array of every network (name, dtype, shape, bytes; sorted by name)."""
    h = hashlib.sha256()
    for net in ("text_encoder", "unet", "vae"):
        arrays = qmodel.networks[net].arrays
        for k in sorted(arrays):
            a = np.asarray(arrays[k])
            h.update(f"{net}.{k}|{a.dtype.str}|{a.shape}|".encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def golden(ranges) -> dict:
    """{precision: {"arrays": digest, "outputs": {call kind: digest}}} of the tiny model quantized from `ranges`."""
    from quantfix import digests, integer_tensors
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.calibration import quantize_model

    loaded = load_checkpoint(TINY)
    out = {}
    for p in PRECISIONS:
        q = quantize_model(loaded, p, ranges)
        out[p] = {"arrays": arrays_digest(q), "outputs": digests(integer_tensors(q))}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "golden_hashes.json")
    args = ap.parse_args(argv)
    import subprocess

    from tinysd.checkpoint import load_checkpoint
    from tinysd.fixedpoint import ARITHMETIC_SPEC_VERSION
    from tinysd.quant.calibration import calibrate_model

    ranges = calibrate_model(load_checkpoint(TINY), PROMPTS, steps=STEPS)
    ranges = {net: {t: [float(lo), float(hi)] for t, (lo, hi) in sorted(r.items())}
              for net, r in sorted(ranges.items())}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    doc = {"generator": "tools/make_golden_hashes.py", "commit": commit, "numpy": np.__version__,
           "arithmetic_spec": ARITHMETIC_SPEC_VERSION, "model": "tests/fixtures/tiny-sd",
           "calibration": {"prompts": PROMPTS, "steps": STEPS, "method": "minmax"},
           "hashes": golden({n: {t: tuple(v) for t, v in r.items()} for n, r in ranges.items()}),
           "ranges": ranges}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}: " + json.dumps(doc["hashes"], indent=1))


if __name__ == "__main__":
    main()
