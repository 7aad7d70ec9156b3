"""Score prompt adherence of a shapes model over prompts drawn from the caption grammar.

Prompts come from `tinysd.eval.shapes.sample_prompt` with a fixed seed (each
optional part present with probability 0.5); prompt i is generated with seed
`--seed + i`. Every generated image is read by the deterministic detector and
each attribute the prompt specified is scored right or wrong.

Image generation is one small function per engine (`--engine`), returning
`generate(prompts, seeds) -> list of uint8 (H, W, 3) arrays`: `make_generator`,
diffusers' StableDiffusionPipeline (torch, dev-only, SD tokenizer built from
`weights/tokenizer/`; also the dev check that the folder loads in diffusers), or
`make_tinysd_generator`, tinysd's own pipeline. Seeds give the same prompts to
both engines, but their initial noise differs (torch vs NumPy generators).
`--engine tinysd --precision w8a8|w8a16|w8a8,vae=w8a16` scores tinysd's integer engine (the model
quantized on the fly with the shipped calibration prompts, as `tinysd generate
--precision` does).

    python3 tools/score_adherence.py [--model weights/tinysd-shapes] [-n 200] [--json out.json]

`--json` writes the scores and, per prompt, the attributes asked for and what the detector read
(`records`), for breakdowns such as shape by size.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tinysd.eval import shapes  # noqa: E402

TARGETS = {"color": 0.90, "shape": 0.80, "position": 0.80, "background": 0.90}


def make_generator(model: Path, steps: int, cfg: float, sampler: str, size: int = 64, batch: int = 25, threads: int = 2,
                   device: str = "cpu", **_):
    """generate(prompts, seeds) -> list of uint8 (size, size, 3): diffusers StableDiffusionPipeline."""
    import torch
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                           LCMScheduler, StableDiffusionPipeline)
    from transformers import CLIPTokenizer

    torch.set_num_threads(threads)
    tok_dir = ROOT / "weights" / "tokenizer"
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(model), tokenizer=tok, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, torch_dtype=torch.float32)
    scheds = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "euler_a": EulerAncestralDiscreteScheduler,
              "dpmpp_2m": DPMSolverMultistepScheduler, "lcm": LCMScheduler}
    pipe.scheduler = scheds[sampler].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)

    def generate(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        out = []
        for i in range(0, len(prompts), batch):
            gens = [torch.Generator().manual_seed(s) for s in seeds[i:i + batch]]
            with torch.no_grad():
                ims = pipe(prompts[i:i + batch], height=size, width=size, num_inference_steps=steps,
                           guidance_scale=cfg, generator=gens, output_type="np").images  # (B, H, W, 3) in [0, 1]
            out += [(np.clip(im, 0, 1) * 255).round().astype(np.uint8) for im in ims]
        return out

    return generate


def make_tinysd_generator(model: Path, steps: int, cfg: float, sampler: str, size: int = 64, precision: str | None = None,
                          **_):
    """generate(prompts, seeds) -> list of uint8 (size, size, 3): tinysd's own pipeline (no torch); float, or
    the integer networks of `precision` (w8a8, w8a16, per network w8a8,vae=w8a16: quantized on the fly with the default calibration)."""
    from tinysd import Pipeline

    pipe = Pipeline.from_pretrained(str(model), precision=precision)

    def generate(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        return [np.asarray(pipe(p, steps=steps, guidance_scale=cfg, seed=s, sampler=sampler, width=size, height=size).convert("RGB"))
                for p, s in zip(prompts, seeds)]

    return generate


ENGINES = {"diffusers": make_generator, "tinysd": make_tinysd_generator}


def prompts_for(n: int, seed: int) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(seed)
    return [shapes.sample_prompt(rng, p_optional=0.5) for _ in range(n)]


def score_all(images, specs) -> dict:
    right = {a: 0 for a in shapes.ATTRIBUTES}
    total = {a: 0 for a in shapes.ATTRIBUTES}
    all_ok = 0
    records = []
    for im, spec in zip(images, specs):
        s = shapes.score(im, spec)
        for a, ok in s.items():
            right[a] += ok
            total[a] += 1
        all_ok += all(s.values())
        records.append({"asked": spec, "detected": shapes.detect(im)})
    acc = {a: right[a] / total[a] for a in shapes.ATTRIBUTES if total[a]}
    return {"accuracy": acc, "counts": total, "all_correct": all_ok / len(specs), "n": len(specs),
            "records": records}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "weights" / "tinysd-shapes")
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--skip", type=int, default=0,
                   help="score only prompts skip..n-1 of the n (same prompts and seeds as a full run): split a slow run")
    p.add_argument("--prompt-seed", type=int, default=1234)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="dpmpp_2m", choices=["ddim", "euler", "euler_a", "dpmpp_2m", "lcm"],
                   help="lcm: for an LCM-distilled (w-conditioned) model, e.g. weights/tinysd-shapes-lcm with --steps 4")
    p.add_argument("--engine", default="diffusers", choices=sorted(ENGINES))
    p.add_argument("--json", type=Path)
    p.add_argument("--device", default="cpu", help="torch device for --engine diffusers")
    p.add_argument("--precision", default=None,
                   help="--engine tinysd only: score the integer engine (quantized on the fly)")
    args = p.parse_args(argv)
    items = prompts_for(args.n, args.prompt_seed)[args.skip:]
    prompts, specs = [c for c, _ in items], [s for _, s in items]
    seeds = [args.seed + i for i in range(args.skip, args.n)]
    t0 = time.time()
    if args.precision and args.engine != "tinysd":
        p.error("--precision needs --engine tinysd")
    generate = ENGINES[args.engine](args.model, args.steps, args.cfg, args.sampler, device=args.device,
                                    precision=args.precision)
    images = generate(prompts, seeds)
    res = score_all(images, specs)
    res.update(model=str(args.model), steps=args.steps, cfg=args.cfg, sampler=args.sampler,
               prompt_seed=args.prompt_seed, seed=args.seed, skip=args.skip, seconds=round(time.time() - t0, 1),
               engine={"diffusers": "diffusers StableDiffusionPipeline (float32)",
                       "tinysd": f"tinysd Pipeline ({args.precision or 'float32 NumPy'})"}[args.engine])
    for a, v in res["accuracy"].items():
        tgt = TARGETS.get(a)
        mark = "" if tgt is None else (" (target %.0f%%: %s)" % (100 * tgt, "met" if v >= tgt else "MISSED"))
        print(f"{a:10s} {100 * v:6.1f}%  over {res['counts'][a]} prompts{mark}")
    print(f"all specified attributes right: {100 * res['all_correct']:.1f}% of {res['n']}; {res['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
