"""Quality of the integer engine against float: per-network SQNR and final-image PSNR, same seeds.

    python3 tools/quality.py [MODEL] [--precisions w8a8,w8a16] [--method minmax] [--calibration-steps 20]
                             [--prompts 8] [--steps 20] [--seed 1000] [--markdown]

MODEL: a float checkpoint (default: the shipped model, weights/tinysd-shapes, when it exists).
The model is calibrated once, as `tinysd quantize` does it (the shipped calibration prompts, or
--calibration-prompts, for --calibration-steps sampler steps; euler, cfg 7.5), and quantized to each
precision; then, per precision:

* evaluation prompts: --prompts prompts drawn from the shapes grammar (tinysd.eval.shapes.sample_prompt,
  rng seed --seed), so they are not the calibration prompts; prompt i uses seed --seed + i;
* float run: the float pipeline generates each image, recording every network call (inputs, outputs);
* SQNR per network: each recorded call replayed through the integer network on the same inputs,
  10 log10(sum ref^2 / sum (ref - int)^2) over all calls of that network (text_encoder, unet,
  vae.decode; vae.encode on the decoded float images);
* image PSNR: the integer pipeline generates the same prompts with the same seeds end to end (its own
  text features and latents: errors compound over the sampler steps); PSNR of the 8-bit image against
  the float image, 10 log10(255^2 / MSE), mean and minimum over the prompts.

Prints a table (Markdown with --markdown) for docs/quantization.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))

import numpy as np  # noqa: E402

from tinysd.checkpoint import load_checkpoint  # noqa: E402
from tinysd.eval import shapes  # noqa: E402
from tinysd.paths import DEFAULT_MODEL_DIR, TOKENIZER_DIR  # noqa: E402
from tinysd.pipeline import Pipeline  # noqa: E402
from tinysd.quant.calibration import CALL_KINDS, calibrate_model, quantize_model, replay_sqnr  # noqa: E402
from tinysd.quant.engine import build_integer_networks  # noqa: E402
from tinysd.quant.prompts import read_prompts  # noqa: E402
from tinysd.tokenizer import CLIPTokenizer  # noqa: E402

GUIDANCE = 7.5
SAMPLER = "euler"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """10 log10(255^2 / mean((a - b)^2)) of two uint8 images; inf when equal."""
    mse = float(np.mean(np.square(a.astype(np.float64) - b.astype(np.float64))))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def eval_prompts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [shapes.sample_prompt(rng)[0] for _ in range(n)]


def float_images(loaded, prompts, steps, seed, calls):
    """Generate each prompt in float (calibrating interpreters: float arithmetic unchanged), recording calls;
    returns the uint8 images rebuilt from the recorded vae.decode outputs."""
    from tinysd.pipeline import latents_to_images

    calibrate_model(loaded, prompts, steps, "minmax", sampler=SAMPLER, seed=seed, guidance_scale=GUIDANCE, record=calls)
    decoded = [c.output for c in calls if c.kind == "vae.decode"]
    assert len(decoded) == len(prompts)
    return [np.asarray(latents_to_images(d)[0]) for d in decoded]


def integer_images(loaded, qmodel, prompts, steps, seed):
    te, unet, vae = build_integer_networks(qmodel)
    tok = CLIPTokenizer.from_dir(loaded.tokenizer_dir or TOKENIZER_DIR)
    pipe = Pipeline(tok, te, unet, vae, loaded.config, precision=qmodel.precision)
    return [np.asarray(pipe.generate(p, steps=steps, guidance_scale=GUIDANCE, seed=seed + i, sampler=SAMPLER).images[0])
            for i, p in enumerate(prompts)], (te, unet, vae)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", type=Path, default=None,
                    help=f"float checkpoint (default: {DEFAULT_MODEL_DIR} when it exists)")
    ap.add_argument("--precisions", default="w8a8,w8a16")
    ap.add_argument("--method", default="minmax", choices=("minmax", "percentile"))
    ap.add_argument("--calibration-prompts", type=Path, default=None, help="default: the shipped set")
    ap.add_argument("--calibration-steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=8, help="number of evaluation prompts")
    ap.add_argument("--steps", type=int, default=20, help="sampler steps of the evaluation images")
    ap.add_argument("--seed", type=int, default=1000, help="evaluation prompts and image seeds")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = ap.parse_args(argv)
    model = args.model
    if model is None:
        if not DEFAULT_MODEL_DIR.is_dir():
            ap.error(f"the shipped model {DEFAULT_MODEL_DIR} does not exist; pass a MODEL path")
        model = DEFAULT_MODEL_DIR
    loaded = load_checkpoint(model)
    cal_prompts = read_prompts(args.calibration_prompts)
    prompts = eval_prompts(args.prompts, args.seed)
    print(f"model {model}; calibration: {len(cal_prompts)} prompts x {args.calibration_steps} steps ({args.method}); "
          f"evaluation: {len(prompts)} shapes prompts x {args.steps} steps, {SAMPLER}, cfg {GUIDANCE}, "
          f"seeds {args.seed}..{args.seed + len(prompts) - 1}", flush=True)

    t0 = time.perf_counter()
    calls: list = []
    ref_images = float_images(loaded, prompts, args.steps, args.seed, calls)
    print(f"float reference: {time.perf_counter() - t0:.1f} s", flush=True)

    t0 = time.perf_counter()
    ranges = calibrate_model(loaded, cal_prompts, args.calibration_steps, args.method)
    print(f"calibration: {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for precision in [p for p in args.precisions.split(",") if p]:
        t0 = time.perf_counter()
        qmodel = quantize_model(loaded, precision, ranges)
        t_q = time.perf_counter() - t0
        t0 = time.perf_counter()
        images, nets = integer_images(loaded, qmodel, prompts, args.steps, args.seed)
        sqnr = replay_sqnr(calls, nets)
        p = [psnr(a, b) for a, b in zip(images, ref_images)]
        rows.append((precision, sqnr, float(np.mean(p)), float(np.min(p))))
        print(f"{precision}: quantized in {t_q:.1f} s, evaluated in {time.perf_counter() - t0:.1f} s; "
              f"PSNR per image {', '.join(f'{v:.1f}' for v in p)}", flush=True)

    head = ["precision"] + [f"{k} SQNR dB" for k in CALL_KINDS] + ["image PSNR dB mean", "min"]
    body = [[r[0]] + [f"{r[1].get(k, float('nan')):.1f}" for k in CALL_KINDS] + [f"{r[2]:.1f}", f"{r[3]:.1f}"]
            for r in rows]
    print()
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for b in body:
            print("| " + " | ".join(b) + " |")
    else:
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
        for b in body:
            print("  ".join(v.rjust(w) for v, w in zip(b, widths)))


if __name__ == "__main__":
    main()
