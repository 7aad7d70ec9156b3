"""The whole text-to-image job at SD 1.5 size: tinysd fp32 / w8a16 / w8a8 against diffusers fp32, one run.

    python3 tools/bench_generate.py [--gen-steps 20] [--size 512] [--only fp32,w8a16,w8a8,diffusers]
                                    [--rounds 1] [--calib-size 256] [--json FILE] [--work DIR]

A script, not a test (dev-only: needs torch, diffusers, transformers). No download: a random-weight model
with SD 1.5's configuration (UNet 859M weights, VAE 84M, CLIP ViT-L/14 text encoder 123M) is built with
diffusers / transformers' own initialisation (fixed seed) and saved as a diffusers folder, which both tinysd
and diffusers load. The integer variants are quantized from it by tinysd (`calibrate_model` with one prompt
and one sampler step at --calib-size pixels, min-max, then `quantize_model` and `save_quantized`: the folder a
user gets from `tinysd quantize`).

Each variant runs in its own process, in the order given (reversed in every other round, --rounds), and
measures, in this order, each with the peak RSS of that phase alone (the kernel's peak is reset before each
phase: tinysd.runstats; so a phase's peak includes every loaded weight):

* load: the pipeline from the folder (`Pipeline.from_pretrained`; diffusers' `StableDiffusionPipeline`);
* text_encoder: one call on the two prompts of a CFG pair (negative, positive);
* unet: one UNet step, batch 2 (the CFG pair) on a 64 x 64 latent, t = 500;
* vae_decode: one 512 x 512 decode (latent 1 x 4 x 64 x 64);
* generate: the full job, `--gen-steps` Euler steps, CFG 7.5, one 512 x 512 image (text encoder, steps x UNet,
  decode); with fewer than 20 steps the 20-step time is extrapolated as
  generate + (20 - steps) x unet and marked so.

Variants `fp32-untiled`, `w8a16-untiled`, `w8a8-untiled` run tinysd with attention query tiles off (the
engine before them), to show what the tiles save.

ONNX Runtime and stable-diffusion.cpp are not run by this script (see docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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
PROMPT = "a photograph of an astronaut riding a horse"
T = 500
TINYSD = ("fp32", "w8a16", "w8a8")
ALL = TINYSD + ("diffusers",) + tuple(f"{v}-untiled" for v in TINYSD)
PHASES = ("load", "text_encoder", "unet", "vae_decode", "generate")


# ---------------------------------------------------------------------------------------------
# prepare: the random SD 1.5 folder and its quantized folders
# ---------------------------------------------------------------------------------------------
def make_model(folder: Path) -> None:
    """A diffusers folder with SD 1.5's configuration and random weights (seeded)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5's defaults
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=512,
                        block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                      num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                                      projection_dim=768))
    tok_dir = ROOT / "weights" / "tokenizer"
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    for f in ("vocab.json", "merges.txt"):  # the files tinysd's tokenizer reads (transformers saved tokenizer.json)
        shutil.copyfile(tok_dir / f, folder / "tokenizer" / f)


def run_prepare(args) -> dict:
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.calibration import calibrate_model, quantize_model
    from tinysd.quant.folder import save_quantized

    work = Path(args.work)
    out = {}
    t0 = time.perf_counter()
    if not (work / "sd15" / "model_index.json").is_file():
        make_model(work / "sd15")
    out["make_model_s"] = time.perf_counter() - t0
    loaded = load_checkpoint(work / "sd15")
    t0 = time.perf_counter()
    ranges = calibrate_model(loaded, [PROMPT], steps=1, size=args.calib_size)
    out["calibrate_s"] = time.perf_counter() - t0
    for p in ("w8a16", "w8a8"):
        t0 = time.perf_counter()
        save_quantized(quantize_model(loaded, p, ranges), work / p)
        out[f"quantize_{p}_s"] = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------------------------
# one variant
# ---------------------------------------------------------------------------------------------
def _inputs(size):
    rng = np.random.default_rng(SEED + 1)
    h = size // 8
    sample = rng.standard_normal((2, 4, h, h), dtype=np.float32)
    latent = rng.standard_normal((1, 4, h, h), dtype=np.float32)
    return sample, latent


def run_variant(args) -> dict:
    from tinysd.runstats import NetworkStats

    v, work = args.child, Path(args.work)
    sample, latent = _inputs(args.size)
    stats = NetworkStats()
    if v == "diffusers":
        import torch
        from diffusers import StableDiffusionPipeline

        with stats.measure("load"):
            pipe = StableDiffusionPipeline.from_pretrained(work / "sd15", safety_checker=None,
                                                           requires_safety_checker=False)
        pipe.tokenizer.model_max_length = 77  # folders saved before the tokenizer was given its length
        ids = pipe.tokenizer(["", PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.inference_mode():
            with stats.measure("text_encoder"):
                ctx = pipe.text_encoder(ids)[0]
            with stats.measure("unet"):
                pipe.unet(torch.from_numpy(sample), torch.tensor(T), encoder_hidden_states=ctx)
            with stats.measure("vae_decode"):
                pipe.vae.decode(torch.from_numpy(latent))
            with stats.measure("generate"):
                pipe(PROMPT, num_inference_steps=args.gen_steps, guidance_scale=7.5, height=args.size,
                     width=args.size, generator=torch.Generator().manual_seed(0), output_type="np")
        extra = {"torch_threads": torch.get_num_threads()}
    else:
        from tinysd.pipeline import Pipeline

        if v.endswith("-untiled"):  # attention without query tiles (the engine before tiling), for comparison
            import tinysd.interp.float
            import tinysd.interp.integer

            tinysd.interp.float.ATTENTION_TILE_ELEMENTS = tinysd.interp.integer.ATTENTION_TILE_ELEMENTS = 1 << 62
            v = v[: -len("-untiled")]
        with stats.measure("load"):
            pipe = Pipeline.from_pretrained(work / ("sd15" if v == "fp32" else v))
        ids = pipe.tokenizer(["", PROMPT])
        with stats.measure("text_encoder"):
            ctx = pipe.text_encoder(ids)
        with stats.measure("unet"):
            pipe.unet(sample, T, ctx)
        with stats.measure("vae_decode"):
            pipe.vae.decode(latent)
        with stats.measure("generate"):
            pipe.generate(PROMPT, steps=args.gen_steps, guidance_scale=7.5, width=args.size, height=args.size,
                          seed=0)
        extra = {}
    res = {k: {"s": e.seconds, "peak_mb": e.peak / 2**20, "exact_peak": e.exact} for k, e in stats.entries.items()}
    return {"phases": res, **extra}


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def child(variant, args, work) -> dict | None:
    cmd = [sys.executable, __file__, "--child", variant, "--work", str(work), "--size", str(args.size),
           "--gen-steps", str(args.gen_steps), "--calib-size", str(args.calib_size)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"{variant}: failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-3:]}", flush=True)
        return None
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    res["uptime"] = os.getloadavg()
    print(f"{variant}: {json.dumps(res)}", flush=True)
    return res


def table(runs: dict[str, list[dict]], gen_steps: int) -> list[str]:
    """Best time per phase over rounds, ratio to diffusers, peak RSS (max over rounds)."""
    best = {v: {ph: min(r["phases"][ph]["s"] for r in rs) for ph in PHASES} for v, rs in runs.items() if rs}
    peak = {v: {ph: max(r["phases"][ph]["peak_mb"] for r in rs) for ph in PHASES} for v, rs in runs.items() if rs}
    for v, b in best.items():  # 20-step estimate
        b["generate20"] = b["generate"] + max(0, 20 - gen_steps) * b["unet"]
    ref = best.get("diffusers")
    cols = ("text_encoder", "unet", "vae_decode", "generate20")
    head = ["variant"] + [f"{c} s (x diffusers)" for c in cols] + ["peak RSS MiB: te / unet / vae / generate"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for v, b in best.items():
        cells = [v]
        for c in cols:
            r = f" ({b[c] / ref[c]:.2f}x)" if ref else ""
            cells.append(f"{b[c]:.2f}{r}")
        p = peak[v]
        cells.append(f"{p['text_encoder']:.0f} / {p['unet']:.0f} / {p['vae_decode']:.0f} / {p['generate']:.0f}")
        out.append("| " + " | ".join(cells) + " |")
    if gen_steps < 20:
        out.append(f"(generate20 = measured {gen_steps}-step generate + {20 - gen_steps} x the one-step UNet time)")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gen-steps", type=int, default=20, help="sampler steps of the timed generate (default 20)")
    ap.add_argument("--size", type=int, default=512, help="image height = width (default 512)")
    ap.add_argument("--calib-size", type=int, default=256, help="image size of the one calibration run (default 256)")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--rounds", type=int, default=1, help="repeat all variants, order reversed every other round")
    ap.add_argument("--work", type=Path, default=None, help="keep the models in this folder (reused when present)")
    ap.add_argument("--json", type=Path, default=None, help="also write all results to this JSON file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = run_prepare(args) if args.child == "prepare" else run_variant(args)
        print(json.dumps(res))
        return
    wanted = [v for v in args.only.split(",") if v]
    for v in wanted:
        if v not in ALL:
            ap.error(f"--only: unknown variant {v!r}")
    print(f"SD 1.5 (random weights), {args.size}x{args.size}, generate {args.gen_steps} steps; {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()}", flush=True)
    tmp = None
    if args.work is None:
        tmp = tempfile.mkdtemp(prefix="tinysd-bench-gen-")
        args.work = Path(tmp)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": {v: [] for v in wanted}}
    try:
        if not (args.work / "w8a8").is_dir():
            results["prepare"] = child("prepare", args, args.work)
            if results["prepare"] is None:
                raise SystemExit("prepare failed")
        for r in range(args.rounds):
            for v in (wanted if r % 2 == 0 else wanted[::-1]):
                res = child(v, args, args.work)
                if res:
                    results["runs"][v].append(res)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    lines = table(results["runs"], args.gen_steps)
    print("\n" + "\n".join(lines))
    print(f"\nload after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
