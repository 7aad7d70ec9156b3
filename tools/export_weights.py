"""Export a quantized model folder's int8 weights as float32 q * scale, for AIMET-style tools.

    python3 tools/export_weights.py QUANTIZED_FOLDER OUT.safetensors

Writes every linear / conv2d weight as `{network}.{layer}.weight` (float32, the weight's per-channel
scale from the folder's encodings.json times its int8 value). With the folder's encodings.json (parameter
encodings, AIMET 1.0.0, tinysd names) this is what AIMET's AdaRound hands on: the rounded weights and the
encodings to freeze them with; quantizing each exported weight with its encoding gives the folder's int8
weights back exactly (tests/test_cli_quantize.py). See docs/quantization.md section 11.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout

from tinysd.quant.adaround import export_weights  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    n = export_weights(args.folder, args.out)
    print(f"wrote {n} weights to {args.out}")


if __name__ == "__main__":
    main()
