"""AdaRound on the SD 1.5-size UNet with random weights (tools/bench_unet.py's): time, UNet SQNR, nearest vs AdaRound.

    python3 tools/adaround_sd15.py [--size 16] [--batch 2] [--calls 2] [--iterations 100] [--samples 256]
                                   [--every 1] [--precisions w8a8 w8a16]

A script, not a test. The UNet has SD 1.5's config and bench_unet's seeded random weights. Data: --calls
float UNet calls (random latents and contexts from seeds, t spread over 100..900, batch --batch, latent
--size) on the calibrating interpreter give the activation ranges (min-max) and the AdaRound inputs
(`ColumnSampler`, --samples columns per layer); one more call, from another seed, is the evaluation
call: the integer UNet's output against the float output on it (SQNR, dB). AdaRound runs on every
--every-th linear / conv2d layer in name order (the others keep nearest rounding), with --iterations
Adam steps; the time per layer and the mean reconstruction gain are printed, with the time the whole
UNet would take at this budget (sum over layers of the measured time per layer-iteration scaled by
the layers' OUT * K * min(K, N)).
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
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))

import numpy as np  # noqa: E402

from bench_unet import SEED, random_params, unet_config  # noqa: E402
from tinysd.interp.calibrate import CalibratingInterpreter  # noqa: E402
from tinysd.interp.integer import IntegerInterpreter  # noqa: E402
from tinysd.models import UNet  # noqa: E402
from tinysd.nn.unet import UNet2DConditionModel  # noqa: E402
from tinysd.quant.adaround import AdaRoundSettings, ColumnSampler, adaround_network, adarounded_params  # noqa: E402
from tinysd.quant.calibration import sqnr_db  # noqa: E402
from tinysd.quant.prepare import encodings_from_ranges, quantize_network  # noqa: E402


def call_inputs(cfg, size, batch, i):
    rng = np.random.default_rng([SEED, 77, i])
    sample = rng.standard_normal((batch, cfg.in_channels, size, size), dtype=np.float32)
    context = rng.standard_normal((batch, 77, cfg.cross_attention_dim), dtype=np.float32)
    return sample, int(rng.integers(100, 900)), context


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--precisions", nargs="+", default=["w8a8", "w8a16"])
    args = ap.parse_args(argv)
    settings = AdaRoundSettings(iterations=args.iterations, samples=args.samples).check()
    cfg = unet_config()
    params = random_params(cfg)
    graph = UNet2DConditionModel(cfg)
    print(f"SD 1.5-size UNet, random weights; {args.calls} calibration calls of batch {args.batch}, latent "
          f"{args.size}x{args.size}; AdaRound {settings.record()} on every {args.every}th layer", flush=True)

    t0 = time.perf_counter()
    calib = CalibratingInterpreter(params, "unet", "minmax")
    sampler = ColumnSampler(params, "unet", -(-args.samples // args.calls), settings.seed,
                            gram_max_k=2 * args.samples)
    for i in range(args.calls):
        x = call_inputs(cfg, args.size, args.batch, i)
        UNet(graph, calib)(*x)
        UNet(graph, sampler)(*x)
    ranges = calib.ranges()
    inputs = sampler.inputs()
    del sampler
    print(f"calibration + input sampling: {time.perf_counter() - t0:.1f} s; {len(inputs)} layers", flush=True)
    chosen = sorted(inputs)[::args.every]
    t0 = time.perf_counter()
    per_layer = {}

    def progress(done, total):
        per_layer[chosen[done - 1]] = time.perf_counter() - progress.t
        progress.t = time.perf_counter()
        if done % 10 == 0 or done == total:
            print(f"  AdaRound {done}/{total} layers, {time.perf_counter() - t0:.0f} s", flush=True)

    progress.t = time.perf_counter()
    codes, stats = adaround_network(params, {k: inputs[k] for k in chosen}, "unet", settings, progress)
    t_ada = time.perf_counter() - t0

    def cost(name):
        d = inputs[name]
        k, n = d["gram"].shape if "gram" in d else d["x"].shape
        return params[f"{name}.weight"].shape[0] * k * min(k, n)

    rate = t_ada / sum(cost(n) for n in chosen)  # seconds per unit of OUT * K * min(K, N)
    whole = rate * sum(cost(n) for n in inputs)
    gains = [10 * math.log10(s.error_nearest / s.error_adaround) for s in stats.values() if s.error_adaround > 0]
    print(f"AdaRound: {len(chosen)} of {len(inputs)} layers in {t_ada:.1f} s; reconstruction gain per layer "
          f"mean {np.mean(gains):.2f} dB (min {np.min(gains):.2f}, max {np.max(gains):.2f}); flipped "
          f"{100 * np.mean([s.flipped for s in stats.values()]):.1f}% of the weights; all {len(inputs)} layers at "
          f"this budget: about {whole:.0f} s", flush=True)
    ada_params, encs = adarounded_params(params, codes, "unet")
    x = call_inputs(cfg, args.size, args.batch, 10**6)
    ref = UNet(graph, CalibratingInterpreter(params, "unet", "minmax"))(*x)
    for precision in args.precisions:
        encodings = encodings_from_ranges(ranges, precision)
        row = []
        for label, p, pe in (("nearest", params, None), ("adaround", ada_params, encs)):
            t0 = time.perf_counter()
            qnet = quantize_network(graph, p, "unet", precision, encodings, pe)
            out = UNet(graph, IntegerInterpreter(qnet))(*x)
            row.append(f"{label} {sqnr_db(ref, out):.2f} dB ({time.perf_counter() - t0:.0f} s)")
        print(f"{precision}: UNet SQNR on the evaluation call: " + ", ".join(row), flush=True)


if __name__ == "__main__":
    main()
