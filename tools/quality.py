"""Quality of the integer engine against float: per-network SQNR and final-image PSNR, same seeds.

    python3 tools/quality.py [MODEL] [--precisions w8a8 w8a16 w8a8,vae=w8a16] [--method minmax] [--calibration-steps 20]
                             [--prompts 8] [--steps 20] [--seed 1000] [--markdown]

MODEL: a float checkpoint (default: the shipped model, weights/tinysd-shapes, when it exists).
The model is calibrated once, as `tinysd quantize` does it (the shipped calibration prompts, or
--calibration-prompts, for --calibration-steps sampler steps; euler, cfg 7.5; --method minmax, percentile
or mse, the last searched for each precision's grid), and quantized to each precision; then, per precision:

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

--weights nearest adaround compares the weight roundings (each row then names its rounding): AdaRound
(tinysd.quant.adaround, --adaround-iterations, --adaround-samples) runs once on the calibration calls
(weights only, so the same integers serve every precision) and its time is printed.

--precisions takes model precisions, per-network ones too ("w8a8,vae=w8a16": the w8a8 text encoder
and UNet with a w8a16 VAE).

--layers KIND (text_encoder, unet, vae.decode or vae.encode) also prints, per precision, the SQNR of
every tensor of that network on its first --layer-calls recorded calls (same inputs for float and
integer), in execution order: "local" quantizes the float tensor alone with its encoding (what the
range costs that tensor), "propagated" dequantizes the integer network's own tensor (everything
before it quantized too), and the range of the encoding against the float min / max seen.
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
from tinysd.quant.calibration import (  # noqa: E402
    CALIBRATION_METHODS, CALL_KINDS, calibrate_model, calibrate_observers, quantize_model, ranges_from_observers,
    replay_sqnr)
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
    """Integer pipeline images of `prompts` (seed + i), and the networks of `qmodel` that made them."""
    te, unet, vae = build_integer_networks(qmodel)
    tok = CLIPTokenizer.from_dir(loaded.tokenizer_dir or TOKENIZER_DIR)
    pipe = Pipeline(tok, te, unet, vae, loaded.config, precision=qmodel.precision)
    return [np.asarray(pipe.generate(p, steps=steps, guidance_scale=GUIDANCE, seed=seed + i, sampler=SAMPLER).images[0])
            for i, p in enumerate(prompts)], (te, unet, vae)


def _wrappers(loaded, interps):
    """tinysd.models wrappers (text_encoder, unet, vae) of `loaded`'s graphs over `interps` {network: interp}."""
    from tinysd.models import VAE, TextEncoder, UNet
    from tinysd.quant.calibration import model_graphs

    g = model_graphs(loaded.config)
    return (TextEncoder(g["text_encoder"], interps["text_encoder"]), UNet(g["unet"], interps["unet"]),
            VAE(g["vae"], interps["vae"]))


def layer_sqnr(loaded, qmodel, calls, kind: str, max_calls: int):
    """[(tensor, op, (enc min, enc max), (float min, float max), local dB, propagated dB)] of network `kind`
    over its first `max_calls` recorded calls, in execution order (see the module docstring)."""
    from tinysd.fixedpoint import dequantize, quantize
    from tinysd.interp.float import FloatInterpreter
    from tinysd.interp.integer import IntegerInterpreter
    from tinysd.interp.record import RecordingInterpreter
    from tinysd.quant.calibration import sqnr_db

    net = "vae" if kind.startswith("vae") else kind
    qnet = qmodel.networks[net]
    frec = RecordingInterpreter(FloatInterpreter(loaded.params[net], net))
    irec = RecordingInterpreter(IntegerInterpreter(qnet))
    fnets = _wrappers(loaded, {n: frec if n == net else None for n in ("text_encoder", "unet", "vae")})
    inets = _wrappers(loaded, {n: irec if n == net else None for n in ("text_encoder", "unet", "vae")})
    pick = {"text_encoder": 0, "unet": 1, "vae.decode": 2, "vae.encode": 2}[kind]
    acc: dict[str, list] = {}
    for call in [c for c in calls if c.kind == kind][:max_calls]:
        frec.clear()
        irec.clear()
        for nets, rec in ((fnets, frec), (inets, irec)):
            w = nets[pick]
            fn = w.decode if kind == "vae.decode" else w.encode if kind == "vae.encode" else w
            fn(*call.args, **call.kwargs)
        for a, b in zip([r for r in frec.records if r.matched], [r for r in irec.records if r.matched]):
            assert a.tensor == b.tensor, (a.tensor, b.tensor)
            enc = qnet.activations[b.output.enc]
            scale, zp, qmax = float(enc.scale[0]), int(enc.zero_point[0]), 2**int(enc.bitwidth) - 1
            x = a.output.data.astype(np.float64)
            local = dequantize(quantize(x, scale, zp, 0, qmax), scale, zp)
            prop = dequantize(b.output.data, scale, b.output.zero_point)
            d = acc.setdefault(a.tensor, [a.op, (float(enc.min[0]), float(enc.max[0])), [], [], []])
            d[2].append(x.ravel())
            d[3].append(local.ravel())
            d[4].append(prop.ravel())
    rows = []
    for tensor, (op, rng, xs, ls, ps) in acc.items():
        x = np.concatenate(xs)
        rows.append((tensor, op, rng, (float(x.min()), float(x.max())), sqnr_db(x, np.concatenate(ls)),
                     sqnr_db(x, np.concatenate(ps))))
    return rows


def print_layers(rows, title: str) -> None:
    print(f"\n{title}")
    print(f"{'tensor':64s} {'op':18s} {'encoding range':>21s} {'float range':>21s} {'local':>6s} {'propag.':>7s}")
    for tensor, op, (lo, hi), (fmin, fmax), loc, prop in rows:
        print(f"{tensor:64s} {op:18s} [{lo:9.3f},{hi:9.3f}] [{fmin:9.3f},{fmax:9.3f}] {loc:6.1f} {prop:7.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", type=Path, default=None,
                    help=f"float checkpoint (default: {DEFAULT_MODEL_DIR} when it exists)")
    ap.add_argument("--precisions", nargs="+", default=["w8a8", "w8a16"])
    ap.add_argument("--method", default="minmax", choices=CALIBRATION_METHODS)
    ap.add_argument("--calibration-prompts", type=Path, default=None, help="default: the shipped set")
    ap.add_argument("--calibration-steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=8, help="number of evaluation prompts")
    ap.add_argument("--steps", type=int, default=20, help="sampler steps of the evaluation images")
    ap.add_argument("--seed", type=int, default=1000, help="evaluation prompts and image seeds")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--weights", nargs="+", default=["nearest"], choices=["nearest", "adaround"])
    ap.add_argument("--adaround-iterations", type=int, default=None)
    ap.add_argument("--adaround-samples", type=int, default=None)
    ap.add_argument("--adaround-inputs", choices=["float", "quantized"], default=None)
    ap.add_argument("--adaround-calls", type=int, default=None)
    ap.add_argument("--layers", choices=CALL_KINDS, default=None,
                    help="also print the SQNR of every tensor of this network (module docstring)")
    ap.add_argument("--layer-calls", type=int, default=4, help="recorded calls the --layers table uses")
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
    cal_calls: list = []
    observers = calibrate_observers(loaded, cal_prompts, args.calibration_steps, args.method,
                                    record=cal_calls if "adaround" in args.weights else None)
    print(f"calibration: {time.perf_counter() - t0:.1f} s", flush=True)
    variants = [(w, p) for w in args.weights for p in args.precisions]
    rounded = {"nearest": (loaded, None)}
    if "adaround" in args.weights:
        from tinysd.quant.adaround import AdaRoundSettings
        from tinysd.quant.workflow import _adaround

        knobs = {k: v for k, v in (("iterations", args.adaround_iterations), ("samples", args.adaround_samples),
                                   ("inputs", args.adaround_inputs), ("calls", args.adaround_calls))
                 if v is not None}
        qloaded, params, info = _adaround(loaded, cal_calls, AdaRoundSettings(**knobs).check(), None)
        rounded["adaround"] = (qloaded, params)
        print(f"AdaRound: {info}", flush=True)
        del cal_calls
    rows = []
    for weights, precision in variants:
        t0 = time.perf_counter()
        ranges = ranges_from_observers(observers, args.method, precision)
        wl, wp = rounded[weights]
        qmodel = quantize_model(wl, precision, ranges, wp)
        precision = precision if len(args.weights) == 1 else f"{precision} {weights}"
        t_q = time.perf_counter() - t0
        t0 = time.perf_counter()
        images, nets = integer_images(loaded, qmodel, prompts, args.steps, args.seed)
        sqnr = replay_sqnr(calls, nets)
        p = [psnr(a, b) for a, b in zip(images, ref_images)]
        rows.append((precision, sqnr, float(np.mean(p)), float(np.min(p))))
        print(f"{precision}: quantized in {t_q:.1f} s, evaluated in {time.perf_counter() - t0:.1f} s; "
              f"PSNR per image {', '.join(f'{v:.1f}' for v in p)}", flush=True)
        if args.layers:
            print_layers(layer_sqnr(loaded, qmodel, calls, args.layers, args.layer_calls),
                         f"{args.layers} {precision} ({args.method}): SQNR dB per tensor, first {args.layer_calls} "
                         f"evaluation calls")

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
