"""One UNet step of an SD 1.5-sized UNet with random weights: fp32, w8a16, w8a8 (and diffusers' fp32 UNet).

    python3 tools/bench_unet.py [--calls 2] [--size 64] [--batch 2] [--only fp32,w8a16,w8a8,...] [--json FILE]

A script, not a test. No download: the UNet has SD 1.5's config (tinysd.config.UNetConfig() defaults:
block_out_channels 320/640/1280/1280, 8 heads, cross-attention 768) and random weights drawn from a fixed
seed (weights ~ N(0, 1/fan_in), biases ~ N(0, 0.02^2), norm scales ~ 1 + N(0, 0.1^2)). Input: a
(batch, 4, size, size) latent sample, t = 500 and a (batch, 77, 768) context, all drawn from the seed.

Every variant runs in its own process, so that each reports its own peak RSS (resource.getrusage
ru_maxrss) and its timings:

* prepare: draws the weights, runs one float step on the calibrating interpreter (ranges from that one
  run), quantizes the UNet to w8a16 and w8a8 and stores each quantized network (int8 weights, int32
  biases, multipliers, shifts, tables, encodings) in a scratch folder;
* fp32: tinysd's float32 NumPy UNet on the same weights;
* w8a16, w8a8: the integer UNet read from the scratch folder (weights int8 in memory, plus the float32
  copies the GEMM kernels cache: `IntegerInterpreter(cache_weights=True)`);
* w8a16-nocache, w8a8-nocache: with `cache_weights=False` (only int8 weights are kept, as a quantized
  folder's pipeline does; each layer's float32 copy is made during its call and dropped);
* diffusers: diffusers' UNet2DConditionModel, fp32, same weights (loaded with load_state_dict), when
  torch and diffusers are installed.

Each variant makes `--calls` UNet calls on the same input and reports each call's time (the first
includes one-time work: float32 weight copies, Numba cache loading); ratios use the fastest call.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))

import numpy as np  # noqa: E402

SEED = 20240601
T = 500
INT_VARIANTS = ("w8a16", "w8a16-nocache", "w8a8", "w8a8-nocache")
ALL = ("fp32",) + INT_VARIANTS + ("diffusers",)


def unet_config():
    from tinysd.config import UNetConfig

    return UNetConfig()  # SD 1.5


def random_params(cfg, seed=SEED) -> dict[str, np.ndarray]:
    """Random float32 weights for every parameter of the tinysd UNet graph of `cfg` (diffusers names)."""
    from tinysd.nn.unet import UNet2DConditionModel

    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in UNet2DConditionModel(cfg).param_shapes().items():  # declaration order: deterministic
        a = rng.standard_normal(shape, dtype=np.float32)
        if len(shape) >= 2:
            a *= np.float32(1.0 / np.sqrt(np.prod(shape[1:])))
        elif name.endswith(".weight"):  # norm scales
            a = np.float32(1.0) + np.float32(0.1) * a
        else:
            a *= np.float32(0.02)
        params[name] = a
    return params


def inputs(cfg, size, batch, seed=SEED):
    rng = np.random.default_rng(seed + 1)
    sample = rng.standard_normal((batch, cfg.in_channels, size, size), dtype=np.float32)
    context = rng.standard_normal((batch, 77, cfg.cross_attention_dim), dtype=np.float32)
    return sample, context


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def timed_calls(fn, calls):
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


# ---------------------------------------------------------------------------------------------
# variants (each in its own process)
# ---------------------------------------------------------------------------------------------
def run_prepare(args) -> dict:
    from tinysd.interp.calibrate import CalibratingInterpreter
    from tinysd.models import UNet
    from tinysd.nn.unet import UNet2DConditionModel
    from tinysd.quant.encodings import save_encodings
    from tinysd.quant.prepare import encodings_from_ranges, quantize_network
    from tinysd.safetensors_io import write_safetensors

    cfg = unet_config()
    t0 = time.perf_counter()
    params = random_params(cfg)
    t_weights = time.perf_counter() - t0
    sample, context = inputs(cfg, args.size, args.batch)
    graph = UNet2DConditionModel(cfg)
    calib = CalibratingInterpreter(params, "unet", "minmax")
    t0 = time.perf_counter()
    UNet(graph, calib)(sample, T, context)
    t_calib = time.perf_counter() - t0
    ranges = calib.ranges()
    out = {"weights_s": t_weights, "calibration_step_s": t_calib, "float_params": len(params),
           "float_weight_bytes": int(sum(a.nbytes for a in params.values()))}
    for precision in ("w8a16", "w8a8"):
        t0 = time.perf_counter()
        qnet = quantize_network(graph, params, "unet", precision, encodings_from_ranges(ranges, precision))
        out[f"quantize_{precision}_s"] = time.perf_counter() - t0
        folder = Path(args.work) / precision
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(folder / "arrays.safetensors", qnet.arrays)
        save_encodings(folder / "encodings.json", qnet.activations, qnet.params)
        out[f"{precision}_array_bytes"] = int(sum(a.nbytes for a in qnet.arrays.values()))
        out[f"{precision}_int8_weight_bytes"] = int(sum(a.nbytes for k, a in qnet.arrays.items() if k.endswith(".weight_q")))
    return out


def load_qnet(work, precision):
    from tinysd.quant.encodings import load_encodings
    from tinysd.quant.model import QuantizedNetwork
    from tinysd.safetensors_io import SafetensorsFile

    folder = Path(work) / precision
    sf = SafetensorsFile(folder / "arrays.safetensors")
    act, par, _ = load_encodings(folder / "encodings.json")
    return QuantizedNetwork("unet", precision, sf.read_raw(sf.keys()), act, par)


def run_variant(args) -> dict:
    from tinysd.models import UNet
    from tinysd.nn.unet import UNet2DConditionModel

    cfg = unet_config()
    sample, context = inputs(cfg, args.size, args.batch)
    graph = UNet2DConditionModel(cfg)
    v = args.variant
    if v == "fp32":
        from tinysd.interp.float import FloatInterpreter

        unet = UNet(graph, FloatInterpreter(random_params(cfg), "unet", conv_winograd=True))  # as generation runs it
        fn = lambda: unet(sample, T, context)  # noqa: E731
    elif v in INT_VARIANTS:
        from tinysd.interp.integer import IntegerInterpreter

        precision = v.split("-")[0]
        qnet = load_qnet(args.work, precision)
        unet = UNet(graph, IntegerInterpreter(qnet, cache_weights=not v.endswith("nocache")))
        fn = lambda: unet(sample, T, context)  # noqa: E731
    elif v == "diffusers":
        import torch
        from diffusers import UNet2DConditionModel as DUNet

        keys = ("sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types",
                "block_out_channels", "layers_per_block", "cross_attention_dim", "attention_head_dim",
                "norm_num_groups", "flip_sin_to_cos", "freq_shift")
        d = cfg.to_dict()
        model = DUNet(**{k: (tuple(d[k]) if isinstance(d[k], list) else d[k]) for k in keys}).eval()
        state = {k: torch.from_numpy(a) for k, a in random_params(cfg).items()}
        model.load_state_dict(state, strict=True)  # every diffusers name and shape, exactly
        del state
        xs, cs, ts = torch.from_numpy(sample), torch.from_numpy(context), torch.tensor(T)

        def fn():
            with torch.inference_mode():
                return model(xs, ts, encoder_hidden_states=cs).sample.numpy()
    else:
        raise SystemExit(f"unknown variant {v}")
    times, out = timed_calls(fn, args.calls)
    np.save(Path(args.work) / f"{v}.npy", np.asarray(out, dtype=np.float32))
    res = {"times_s": times, "peak_rss_mb": peak_rss_mb(), "out_std": float(np.std(out))}
    if v == "diffusers":
        import torch

        res["torch_threads"] = torch.get_num_threads()
    return res


def accuracy(outputs: dict[str, np.ndarray]) -> dict[str, str]:
    """How the variants' UNet outputs compare: fp32 against diffusers (max |diff| / max |ref|), and the SQNR
    of each integer variant against tinysd's fp32 output."""
    from tinysd.quant.calibration import sqnr_db

    res = {}
    ref = outputs.get("fp32")
    if ref is not None and "diffusers" in outputs:
        d = outputs["diffusers"]
        res["fp32 vs diffusers"] = f"max|diff|/max|ref| = {np.max(np.abs(ref - d)) / np.max(np.abs(d)):.2e}"
    for v in INT_VARIANTS:
        if ref is not None and v in outputs:
            res[f"{v} vs fp32"] = f"SQNR {sqnr_db(ref, outputs[v]):.1f} dB"
    return res


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def child(variant, args, work) -> dict | None:
    cmd = [sys.executable, __file__, "--child", variant, "--work", str(work), "--size", str(args.size),
           "--batch", str(args.batch), "--calls", str(args.calls)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"{variant}: failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:] or ''}", flush=True)
        return None
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    print(f"{variant}: {json.dumps(res)}", flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2, help="UNet calls per variant (default 2)")
    ap.add_argument("--size", type=int, default=64, help="latent height = width (default 64: 512x512 images)")
    ap.add_argument("--batch", type=int, default=2, help="batch (default 2: the CFG pair)")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--json", type=Path, default=None, help="also write all results to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.variant = args.child
        res = run_prepare(args) if args.child == "prepare" else run_variant(args)
        res["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(res))
        return
    wanted = [v for v in args.only.split(",") if v]
    for v in wanted:
        if v not in ALL:
            ap.error(f"--only: unknown variant {v!r}")
    if "diffusers" in wanted:
        try:
            import diffusers  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            print("diffusers/torch not installed: skipping the diffusers UNet")
            wanted.remove("diffusers")
    print(f"SD 1.5 UNet, random weights, latent {args.size}x{args.size}, batch {args.batch}, t={T}, "
          f"context {args.batch}x77x768; {os.cpu_count()} CPUs; {args.calls} calls per variant", flush=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tinysd-bench-") as work:
        if any(v in INT_VARIANTS for v in wanted):
            results["prepare"] = child("prepare", args, work)
        for v in wanted:
            results[v] = child(v, args, work)
        outputs = {v: np.load(Path(work) / f"{v}.npy") for v in wanted if (Path(work) / f"{v}.npy").is_file()}
    results["accuracy"] = accuracy(outputs)
    print()
    print(f"{'variant':<14} {'best s':>8} {'all calls (s)':<24} {'peak RSS MB':>12}")
    best = {}
    for v in wanted:
        r = results.get(v)
        if not r:
            print(f"{v:<14} failed")
            continue
        best[v] = min(r["times_s"])
        calls = ", ".join(f"{t:.1f}" for t in r["times_s"])
        print(f"{v:<14} {best[v]:8.2f} {calls:<24} {r['peak_rss_mb']:12.0f}")
    prep = results.get("prepare")
    if prep:
        print(f"\nprepare: weights {prep['weights_s']:.1f} s, float calibration step {prep['calibration_step_s']:.1f} s, "
              f"quantize w8a16 {prep['quantize_w8a16_s']:.1f} s, w8a8 {prep['quantize_w8a8_s']:.1f} s; "
              f"float weights {prep['float_weight_bytes'] / 2**20:.0f} MiB, int8 weights "
              f"{prep['w8a8_int8_weight_bytes'] / 2**20:.0f} MiB, all integer arrays w8a8 "
              f"{prep['w8a8_array_bytes'] / 2**20:.0f} MiB / w8a16 {prep['w8a16_array_bytes'] / 2**20:.0f} MiB")
    print("\noutputs: " + "; ".join(f"{k} {v}" for k, v in results["accuracy"].items()))
    print("\nratios (time / time):")
    for a in [v for v in wanted if v != "fp32"]:
        for b in ("fp32", "diffusers"):
            if a != b and a in best and b in best:
                print(f"  {a} / {b}: {best[a] / best[b]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
