"""Write tinysd/kernels/signatures.json: the Numba kernel signatures a run of each precision and GEMM method uses.

    python3 tools/make_kernel_signatures.py --model /path/sd15-w8a8:512 --model /path/sd15-w8a16:512 \\
        --model /path/tiny-w8a8 --model /path/tiny-w8a16 [--methods u8,i16,split]

Each `--model` is a quantized folder of one precision (`tinysd quantize`), optionally with an image size. For
every folder and every GEMM method this CPU can run, a fresh process reads the folder as `tinysd generate` does
(low memory), makes a 1-step generate and a 1-step img2img at that size, and reports the signatures of every
tinysd kernel it compiled or loaded (`tinysd.kernels.precompile.used_signatures`). Signatures are argument
types only (dtype, dimensions, layout, read-only), but which kernels run depends on shapes (attention tiles,
the int16 or int32 epilogue), so give SD 1.5-size folders as well as small ones. The file is the union per
key "<precision> <uint8 method>/<uint16 method>"; `tinysd.kernels.precompile` compiles it in child processes on a first run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent
sys.path.insert(0, str(ROOT))


def _child(folder: str, size: int | None, method: str) -> None:
    import tinysd  # noqa: F401  (before NumPy's BLAS starts: tinysd/__init__.py)
    import numpy as np
    from tinysd.kernels import gemm
    from tinysd.kernels.precompile import run_key, used_signatures
    from tinysd.pipeline import Pipeline

    if method == "u8":
        gemm.A8_METHOD = "u8"
    else:
        gemm.A8_METHOD = gemm.A16_METHOD = method
    pipe = Pipeline.from_pretrained(Path(folder), low_memory=True)
    if "," in pipe.precision:
        raise SystemExit(f"{folder}: give folders of one precision (this one is {pipe.precision})")
    pipe.generate("a red circle", steps=1, seed=0, width=size, height=size)
    side = size or pipe.native_size
    image = (np.random.default_rng(0).random((side, side, 3)) * 255).astype(np.uint8)
    from PIL import Image

    pipe.generate("a red circle", steps=2, seed=0, init_image=Image.fromarray(image), strength=0.5)
    print(json.dumps({run_key(pipe.precision): used_signatures()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], help="FOLDER[:SIZE], repeatable")
    ap.add_argument("--methods", default="u8,i16,split", help="GEMM methods to run (u8 needs AVX-512 VNNI or AVX-VNNI)")
    ap.add_argument("--out", default=str(ROOT / "tinysd" / "kernels" / "signatures.json"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        folder, size, method = args.child
        _child(folder, int(size) or None, method)
        return
    if not args.model:
        ap.error("give at least one --model")
    table: dict[str, dict[str, list]] = {}
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))
    for spec in args.model:
        folder, _, size = spec.partition(":")
        for method in args.methods.split(","):
            r = subprocess.run([sys.executable, __file__, "--child", folder, size or "0", method],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise SystemExit(f"{folder} ({method}): {r.stderr.strip().splitlines()[-1:]}")
            for key, sigs in json.loads(r.stdout.strip().splitlines()[-1]).items():
                merged = table.setdefault(key, {})
                for name, lst in sigs.items():
                    merged[name] = sorted({tuple(s) for s in merged.get(name, [])} | {tuple(s) for s in lst})
                print(f"{folder} {method}: {key}: {sum(map(len, sigs.values()))} signatures", flush=True)
    Path(args.out).write_text(_format(table))
    print(f"wrote {args.out}: " + ", ".join(f"{k} {sum(map(len, v.values()))}" for k, v in sorted(table.items())))


def _format(table: dict[str, dict[str, list]]) -> str:
    """JSON with one signature per line."""
    keys = []
    for key in sorted(table):
        kernels = [f'  {json.dumps(name)}: [\n' + ",\n".join(f"   {json.dumps(list(sig))}" for sig in sigs) + "\n  ]"
                   for name, sigs in sorted(table[key].items())]
        keys.append(f" {json.dumps(key)}: {{\n" + ",\n".join(kernels) + "\n }")
    return "{\n" + ",\n".join(keys) + "\n}\n"


if __name__ == "__main__":
    main()
