"""Dev tool: whole text-to-image runs of diffusers' StableDiffusionPipeline on the tiny fixture model
-> tests/fixtures/pipeline_runs.npz.

Needs torch + diffusers + transformers (dev extras) and tests/fixtures/tiny-sd/
(from tools/make_fixtures.py). For each sampler (DDIM, Euler, Euler a, DPM++ 2M;
Euler and DPM++ 2M also with Karras sigmas) it runs 4 steps with classifier-free
guidance and a negative prompt, batch 2, and records the final latents
(output_type="latent", i.e. before the VAE) and the decoded images (float, in
[0, 1], output_type="np").

Noise is tinysd's: `NoiseSource(SEED, 2)` gives the initial latents (passed as
`latents=`) and, for Euler a, each step's noise: diffusers' `randn_tensor` in the
Euler ancestral module is replaced by one returning the next `NoiseSource.randn`
draw, exactly the order tinysd's pipeline draws them in. Prompts are tokenized
by transformers' CLIPTokenizer from the shipped vocabulary (weights/tokenizer).
Schedulers are built from the model's scheduler_config.json with from_config,
as diffusers users switch samplers (DDIM: clip_sample=False, as SD 1.x configs say).

img2img (`--what img2img`, -> tests/fixtures/img2img_runs.npz): diffusers'
StableDiffusionImg2ImgPipeline on a synthetic 24x16 init image (stored in the file),
batch 2, for the samplers and strengths of IMG2IMG_RUNS. The init image is passed
once per batch image, so diffusers encodes a batch of 2 and draws, per image, the
latent sample's noise (`DiagonalGaussianDistribution.sample`), then the noise
`add_noise` adds, then (Euler a) each step's noise: all three `randn_tensor`s are
replaced by the next `NoiseSource.randn` draw, the order tinysd draws them in.

Usage: python tools/make_pipeline_fixtures.py [--model tests/fixtures/tiny-sd] [--what all|txt2img|img2img]
       [--out tests/fixtures/pipeline_runs.npz] [--img2img-out tests/fixtures/img2img_runs.npz]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.autoencoders import vae as vae_module  # noqa: E402
from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img_module  # noqa: E402
from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a_module  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

from tinysd.paths import TOKENIZER_DIR  # noqa: E402
from tinysd.schedulers import NoiseSource  # noqa: E402

SEED = 31
BATCH = 2
STEPS = 4
CFG = 7.5
PROMPT = "a red circle on the left"
NEGATIVE = "a blue square"
RUNS = [("ddim", False), ("euler", False), ("euler", True), ("euler_a", False), ("dpmpp_2m", False), ("dpmpp_2m", True)]


# img2img: (sampler, karras, strength); 5 steps, so strength 0.6 runs the last 3 (from step index 2)
IMG2IMG_STEPS = 5
IMG2IMG_RUNS = [("ddim", False, 0.6), ("euler", False, 0.6), ("euler", False, 1.0), ("euler_a", False, 0.6),
                ("dpmpp_2m", False, 0.6), ("dpmpp_2m", True, 0.6)]
IMG2IMG_SIZE = (24, 16)  # width, height of the init image (multiples of the tiny model's size multiple, 8)
# and one run from a 25x17 image: diffusers resizes it (Lanczos) to 24x16, rounding down to a multiple of its
# vae_scale_factor (2 for tiny-sd); tinysd rounds down to its size multiple (8), which is the same size here
RESIZED_RUN = ("euler", False, 0.6)
RESIZED_SIZE = (25, 17)


def img2img_key(name, karras, strength):
    return name + ("_karras" if karras else "") + f"_s{strength:g}"


def init_image(width, height):
    """A deterministic RGB test image (H, W, 3) uint8: a colour gradient with a red rectangle."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.full_like(xx, 128)], axis=-1)
    img[4:10, 5:15] = (220, 30, 30)
    return img.astype(np.uint8)


def scheduler(name, karras, config):
    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config, use_karras_sigmas=karras)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=karras)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "tests" / "fixtures" / "tiny-sd"))
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "pipeline_runs.npz"))
    ap.add_argument("--img2img-out", default=str(ROOT / "tests" / "fixtures" / "img2img_runs.npz"))
    ap.add_argument("--what", choices=("all", "txt2img", "img2img"), default="all")
    args = ap.parse_args(argv)
    model = Path(args.model)
    torch.set_num_threads(1)

    tok = CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77)
    te = CLIPTextModel.from_pretrained(model / "text_encoder", torch_dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    vae = AutoencoderKL.from_pretrained(model / "vae")
    base_sched = DDIMScheduler.from_pretrained(model / "scheduler")  # any class: only its config is used
    vae_f = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)

    common = {
        "generator": "tools/make_pipeline_fixtures.py",
        "date": datetime.date.today().isoformat(),
        "model": str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model),
        "diffusers": diffusers.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
    }
    if args.what in ("all", "img2img"):
        write_npz(Path(args.img2img_out), img2img_runs(tok, te, unet, vae, base_sched, common))
    if args.what == "img2img":
        return
    arrays = {}
    original_randn = euler_a_module.randn_tensor
    try:
        for name, karras in RUNS:
            key = name + ("_karras" if karras else "")
            sched = scheduler(name, karras, base_sched.config)
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            outs = {}
            for output_type in ("latent", "np"):
                src = NoiseSource(SEED, BATCH)
                latents = torch.from_numpy(src.randn(shape).astype(np.float32))
                euler_a_module.randn_tensor = lambda shp, *a, _src=src, **k: torch.from_numpy(_src.randn(tuple(shp)[1:]).astype(np.float32))
                with torch.no_grad():
                    res = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                               num_images_per_prompt=BATCH, latents=latents, output_type=output_type,
                               height=shape[1] * vae_f, width=shape[2] * vae_f)
                outs[output_type] = np.asarray(res.images, dtype=np.float32)
            arrays[f"{key}__latents"] = outs["latent"]
            arrays[f"{key}__images"] = outs["np"]
            arrays[f"{key}__timesteps"] = sched.timesteps.numpy().astype(np.float64)
    finally:
        euler_a_module.randn_tensor = original_randn

    meta = {
        **common,
        "seed": SEED, "batch": BATCH, "steps": STEPS, "cfg": CFG, "prompt": PROMPT, "negative_prompt": NEGATIVE,
        "runs": [n + ("_karras" if k else "") for n, k in RUNS],
        "noise": "tinysd.schedulers.NoiseSource(seed, batch): initial latents, then (euler_a) one draw per step, "
                 "fed to diffusers through latents= and a replaced randn_tensor",
        "latents": "StableDiffusionPipeline(output_type='latent').images: final latents, not divided by scaling_factor",
        "images": "output_type='np': float32 (B, H, W, 3) in [0, 1]",
    }
    arrays["meta"] = np.array(json.dumps(meta))
    write_npz(Path(args.out), arrays)


def img2img_runs(tok, te, unet, vae, base_sched, common):
    """{key__latents, key__images, key__timesteps, init_image, meta} of the IMG2IMG_RUNS (module docstring)."""
    width, height = IMG2IMG_SIZE
    pixels = init_image(width, height)
    pil = Image.fromarray(pixels, mode="RGB")
    arrays = {"init_image": pixels, "init_image_25x17": init_image(*RESIZED_SIZE)}
    modules = (vae_module, img2img_module, euler_a_module)
    originals = [m.randn_tensor for m in modules]
    try:
        runs = [(r, img2img_key(*r), pil) for r in IMG2IMG_RUNS]
        runs.append((RESIZED_RUN, img2img_key(*RESIZED_RUN) + "_resized", Image.fromarray(arrays["init_image_25x17"])))
        for (name, karras, strength), key, image in runs:
            sched = scheduler(name, karras, base_sched.config)
            pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                                  safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            outs = {}
            for output_type in ("latent", "np"):
                src = NoiseSource(SEED, BATCH)

                def draw(shp, *a, _src=src, **k):
                    return torch.from_numpy(_src.randn(tuple(shp)[1:]).astype(np.float32))

                for m in modules:
                    m.randn_tensor = draw
                with torch.no_grad():
                    res = pipe(PROMPT, image=[image] * BATCH, strength=strength, negative_prompt=NEGATIVE,
                               num_inference_steps=IMG2IMG_STEPS, guidance_scale=CFG, num_images_per_prompt=BATCH,
                               output_type=output_type)
                outs[output_type] = np.asarray(res.images, dtype=np.float32)
            arrays[f"{key}__latents"] = outs["latent"]
            arrays[f"{key}__images"] = outs["np"]
            start = IMG2IMG_STEPS - min(int(IMG2IMG_STEPS * strength), IMG2IMG_STEPS)
            arrays[f"{key}__timesteps"] = sched.timesteps.numpy().astype(np.float64)[start:]
    finally:
        for m, f in zip(modules, originals):
            m.randn_tensor = f
    meta = {
        **common,
        "seed": SEED, "batch": BATCH, "steps": IMG2IMG_STEPS, "cfg": CFG, "prompt": PROMPT, "negative_prompt": NEGATIVE,
        "runs": [{"key": img2img_key(n, k, s), "sampler": n, "karras": k, "strength": s} for n, k, s in IMG2IMG_RUNS],
        "resized_run": {"key": img2img_key(*RESIZED_RUN) + "_resized", "sampler": RESIZED_RUN[0],
                        "karras": RESIZED_RUN[1], "strength": RESIZED_RUN[2], "init_image": "init_image_25x17"},
        "init_image": f"init_image: uint8 (H, W, 3) = ({IMG2IMG_SIZE[1]}, {IMG2IMG_SIZE[0]}, 3), passed as "
                      f"image=[PIL image] * batch",
        "noise": "tinysd.schedulers.NoiseSource(seed, batch): the VAE latent sample's noise, add_noise's noise, then "
                 "(euler_a) one draw per step run, fed to diffusers through replaced randn_tensor functions",
        "latents": "StableDiffusionImg2ImgPipeline(output_type='latent').images: final latents, not divided by "
                   "scaling_factor",
        "images": "output_type='np': float32 (B, H, W, 3) in [0, 1]",
        "timesteps": "the timesteps run (diffusers' get_timesteps)",
    }
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def write_npz(out: Path, arrays: dict) -> None:
    """np.savez_compressed to `out` atomically (a temporary file in the same folder, then os.replace)."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, **arrays)
    os.chmod(tmp, 0o644)
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
