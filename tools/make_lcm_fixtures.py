"""Dev tool: a w-conditioned (LCM-style) variant of the tiny fixture model and diffusers' runs of it
-> tests/fixtures/tiny-sd-lcm/ and tests/fixtures/lcm_runs.npz.

Needs torch + diffusers + transformers (dev extras) and tests/fixtures/tiny-sd/ (tools/make_fixtures.py).

tests/fixtures/tiny-sd-lcm/ holds only what differs from tiny-sd (tests assemble the whole folder):
  unet/             tiny-sd's UNet with time_cond_proj_dim = COND_DIM; all tiny-sd weights, plus
                    time_embedding.cond_proj.weight drawn from N(0, COND_STD^2) (torch.Generator seed SEED)
  scheduler/        diffusers' LCMScheduler config (original_inference_steps 50, timestep_scaling 10)
  model_index.json  with `tinysd_defaults` {sampler lcm, steps STEPS, guidance_scale CFG}

lcm_runs.npz: diffusers' StableDiffusionPipeline with that UNet, tiny-sd's text encoder and VAE and the
LCMScheduler, STEPS steps, guidance_scale CFG (so timestep_cond = get_guidance_scale_embedding(CFG - 1)
and no classifier-free guidance, diffusers' rule for w-conditioned UNets), batch BATCH, seed SEED: the
final latents (output_type="latent") and images (output_type="np"). Noise is tinysd's
`NoiseSource(SEED, BATCH)`: the initial latents (passed as `latents=`), then one draw per step that
diffusers' LCM step takes through a replaced `randn_tensor` (none is used on the last step).

Usage: python tools/make_lcm_fixtures.py
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402
from diffusers.schedulers import scheduling_lcm as lcm_module  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

from tinysd.paths import TOKENIZER_DIR  # noqa: E402
from tinysd.schedulers import NoiseSource  # noqa: E402

SEED = 17
BATCH = 2
STEPS = 4
CFG = 5.0
COND_DIM = 16
COND_STD = 0.5
PROMPT = "a red circle on the left"
LCM_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon", clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                     original_inference_steps=50, timestep_scaling=10.0, timestep_spacing="leading")


def main() -> int:
    fix = ROOT / "tests" / "fixtures"
    src, out = fix / "tiny-sd", fix / "tiny-sd-lcm"
    torch.set_num_threads(1)
    base = UNet2DConditionModel.from_pretrained(src / "unet")
    cfg = {k: v for k, v in base.config.items() if not k.startswith("_")}
    cfg["time_cond_proj_dim"] = COND_DIM
    unet = UNet2DConditionModel.from_config(cfg)
    missing, unexpected = unet.load_state_dict(base.state_dict(), strict=False)
    assert missing == ["time_embedding.cond_proj.weight"] and not unexpected
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        unet.time_embedding.cond_proj.weight.copy_(torch.randn(unet.time_embedding.cond_proj.weight.shape, generator=g) * COND_STD)
    unet.eval()

    tmp = Path(tempfile.mkdtemp(dir=fix))
    try:
        unet.save_pretrained(str(tmp / "unet"), safe_serialization=True)
        (tmp / "scheduler").mkdir()
        sched_cfg = dict(LCM_SCHEDULER, _class_name="LCMScheduler", _diffusers_version=diffusers.__version__)
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched_cfg, indent=2) + "\n")
        index = json.loads((src / "model_index.json").read_text())
        index["scheduler"] = ["diffusers", "LCMScheduler"]
        index["tinysd_defaults"] = {"sampler": "lcm", "steps": STEPS, "guidance_scale": CFG}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        for p in [out, *out.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    tok = CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"), model_max_length=77)
    te = CLIPTextModel.from_pretrained(src / "text_encoder", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(src / "vae")
    sched = LCMScheduler(**LCM_SCHEDULER)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    vae_f = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    arrays = {}
    original = lcm_module.randn_tensor
    try:
        for output_type in ("latent", "np"):
            noise = NoiseSource(SEED, BATCH)
            latents = torch.from_numpy(noise.randn(shape).astype(np.float32))
            lcm_module.randn_tensor = lambda shp, *a, _n=noise, **k: torch.from_numpy(_n.randn(tuple(shp)[1:]).astype(np.float32))
            with torch.no_grad():
                res = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=CFG, num_images_per_prompt=BATCH,
                           latents=latents, output_type=output_type, height=shape[1] * vae_f, width=shape[2] * vae_f)
            arrays["latents" if output_type == "latent" else "images"] = np.asarray(res.images, dtype=np.float32)
    finally:
        lcm_module.randn_tensor = original
    arrays["timesteps"] = sched.timesteps.numpy().astype(np.float64)
    meta = {
        "generator": "tools/make_lcm_fixtures.py", "date": datetime.date.today().isoformat(),
        "model": "tests/fixtures/tiny-sd + tests/fixtures/tiny-sd-lcm (unet, scheduler, model_index.json)",
        "diffusers": diffusers.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
        "numpy": np.__version__, "python": platform.python_version(),
        "seed": SEED, "batch": BATCH, "steps": STEPS, "cfg": CFG, "prompt": PROMPT, "cond_dim": COND_DIM,
        "cond_proj": f"tiny-sd UNet + time_embedding.cond_proj.weight ~ N(0, {COND_STD}^2), torch seed {SEED}",
        "noise": "tinysd NoiseSource(seed, batch): initial latents, then one draw per step (LCM's injected noise)",
        "latents": "output_type='latent': final latents, not divided by scaling_factor",
        "images": "output_type='np': float32 (B, H, W, 3) in [0, 1]",
    }
    arrays["meta"] = np.array(json.dumps(meta))
    target = fix / "lcm_runs.npz"
    fd, tmpf = tempfile.mkstemp(dir=fix, suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmpf, **arrays)
    os.chmod(tmpf, 0o644)
    os.replace(tmpf, target)
    print(f"wrote {out} and {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
