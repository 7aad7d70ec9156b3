"""Train the default model `weights/tinysd-shapes/` (dev-only: torch, diffusers, transformers).

An SD 1.x model in miniature (KL VAE with 8x downsampling, CLIP text transformer
with the real SD tokenizer, UNet2DConditionModel with cross-attention) trained on
the procedural shapes of `tinysd.eval.shapes`:

1. stage `vae`: AutoencoderKL on freshly drawn 64x64 images (L1 + L2 + small KL;
   optionally object pixels weighted `--vae-fg-weight` more, and random 32x32
   crops (`--vae-crop`) except for the last `--vae-full-steps` steps: the VAE is
   fully convolutional, so crops cost a quarter of the compute).
2. stage `latents`: encode a fixed, seeded set of scenes once (posterior mean and
   std); scaling_factor = 1 / std of the sampled latents, written to the VAE config.
3. stage `diffusion`: text encoder and UNet jointly, epsilon prediction on SD's
   scaled-linear schedule (1000 steps, beta 0.00085..0.012), captions re-drawn
   from each scene's attributes at every step (each optional part kept with
   probability `--caption-keep-p`) and dropped to "" with probability `--uncond-p`
   for classifier-free guidance; min-SNR-5 loss weighting, optionally times
   clamp(1/snr, 1, `--hi-t-weight-max`) to emphasise high noise; EMA of the weights.
   Two knobs aimed at small squares, not in the recipe (both lowered the shape score,
   see the model card): `--small-square-boost` and `--object-loss-weight`.
   `--init-from MODEL` starts it from an exported model's text encoder and UNet
   (a fine-tuning run with its own schedule).
4. stage `decoder` (`--decoder-steps` > 0): the VAE decoder alone fine-tuned on full
   images with the encoder frozen, so the latents and the diffusion model stay valid
   (`--stage decoder` runs only this stage, from the run dir's vae_final.safetensors).
5. stage `export`: fp16 safetensors in diffusers layout (the fine-tuned decoder if
   there is one), SD 1.5-style scheduler config and model_index.json (no tokenizer/
   folder: tinysd uses its shipped tokenizer; pass `tokenizer=` when loading in diffusers).

6. stage `distill` (`--stage distill`, separate run dir): latent consistency distillation (LCM) of an
   exported `--teacher` into a 4-step student with a w-conditioned UNet (`time_cond_proj_dim`), written
   with the teacher's text encoder and VAE, an LCMScheduler config and `tinysd_defaults` (lcm, 4 steps,
   guidance 5) to `--out`. Chosen over progressive distillation because one run gives a student for any
   step count 1..8 and any guidance w in its range (w is an input, not baked in), it needs no chain of
   halvings (each of which would cost a run of its own on this CPU budget), and its sampler is what SD 1.5
   users already run (LCM-LoRA / LCM checkpoints in diffusers). The default model, weights/tinysd-shapes-lcm:

       python3 tools/train.py --stage distill --run-dir tools/runs/lcm --out weights/tinysd-shapes-lcm \
           --distill-steps 1200 --ckpt-every 200 --threads 1       # stopped after its step-200 checkpoint
       python3 tools/train.py --stage distill --run-dir tools/runs/lcm --out weights/tinysd-shapes-lcm \
           --distill-steps 500 --ckpt-every 100 --threads 1        # resumed: steps 200..500, schedule of 500

   (the run was shortened from 1200 to 500 steps at step 200 to fit the session; see its model card).

GroupNorm groups (`--vae-norm-groups` 4, `--unet-norm-groups` 8): at least 4 channels per group,
as in SD. With one channel per group (16 and 32, the previous default model's) the VAE decoder does
not survive 8-bit activations (docs/quantization.md §10) and both networks train more slowly.

Every stage checkpoints to `--run-dir` (safetensors + JSON, never pickle) and a
re-run resumes where it stopped; batches and noise are seeded per step, so a
resumed run draws the same data as an uninterrupted one (noise is drawn on the CPU
whatever `--device`). `--max-minutes` stops a run cleanly (checkpointing) when the
wall-clock budget is spent; wall-clock and process CPU time are accumulated across
resumes in `state.json` and printed.

The defaults are the shipped model's recipe (its model card has the timings): one run, VAE
(4000 steps, 32x32 crops then 600 on full images), latents of 16000 scenes, then text encoder
and UNet for 8000 steps of 128, no decoder fine-tuning:

    python3 tools/train.py --run-dir tools/runs/main --out weights/tinysd-shapes

A finished stage is skipped on re-run; to train the diffusion stage further, delete
`diffusion_final.safetensors` from the run dir and re-run with a larger `--unet-steps`
and `--max-minutes`: it resumes from `diffusion_ckpt.safetensors` (weights, optimizer, EMA).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tinysd.eval import shapes  # noqa: E402

log = logging.getLogger("train")

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 32, 64, 64], layers_per_block=1,
    act_fn="silu", sample_size=64,
)
TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
    layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    projection_dim=64,
)
UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=[32, 64, 64], layers_per_block=1, cross_attention_dim=64,
    attention_head_dim=2, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
)
SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


# ---------------------------------------------------------------------------
# helpers

def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_ckpt(path: Path, models: dict, opt: torch.optim.Optimizer, ema: dict | None, step: int) -> None:
    """Weights, optimizer state and EMA in one safetensors file; param groups in metadata."""
    t = {}
    for name, m in models.items():
        for k, v in m.state_dict().items():
            t[f"model.{name}.{k}"] = v
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for k, v in st.items():
            t[f"optim.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    if ema:
        for k, v in ema.items():
            t[f"ema.{k}"] = v
    meta = {"step": str(step), "param_groups": json.dumps(sd["param_groups"])}
    atomic_save(t, path, meta)


def load_ckpt(path: Path, models: dict, opt: torch.optim.Optimizer, ema: dict | None) -> int:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    for name, m in models.items():
        pre = f"model.{name}."
        m.load_state_dict({k[len(pre):]: v for k, v in t.items() if k.startswith(pre)})
    state: dict = {}
    for k, v in t.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    if ema is not None:
        for k in ema:
            ema[k].copy_(t[f"ema.{k}"])
    return int(meta["step"])


class Budget:
    """Time accounting across resumes, per stage in state.json: wall-clock seconds (`seconds`,
    what `--max-minutes` limits) and this process's CPU seconds summed over its threads
    (`cpu_seconds`; on a shared machine wall time also counts other jobs' load)."""

    def __init__(self, run_dir: Path, max_minutes: float):
        self.path = run_dir / "state.json"
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {"seconds": {}}
        self.state.setdefault("cpu_seconds", {})
        self.start = time.time()
        self.base = sum(self.state["seconds"].values())
        self.limit = max_minutes * 60
        self.stage = None

    def begin(self, stage: str):
        self.stage, self.stage_start, self.stage_cpu_start = stage, time.time(), time.process_time()
        self.stage_base = self.state["seconds"].get(stage, 0.0)
        self.stage_cpu_base = self.state["cpu_seconds"].get(stage, 0.0)

    def commit(self):
        self.state["seconds"][self.stage] = self.stage_base + time.time() - self.stage_start
        self.state["cpu_seconds"][self.stage] = self.stage_cpu_base + time.process_time() - self.stage_cpu_start
        atomic_write_text(self.path, json.dumps(self.state, indent=1))

    def used(self) -> float:
        return self.base + time.time() - self.start

    def exhausted(self) -> bool:
        return self.used() >= self.limit


def checkpoint_or_stop(args, budget: Budget, ck: Path, models: dict, opt, ema: dict | None, step: int) -> bool:
    """Checkpoint every `--ckpt-every` steps and when the budget is spent; False: stop (budget spent)."""
    if step % args.ckpt_every and not budget.exhausted():
        return True
    save_ckpt(ck, models, opt, ema, step)
    budget.commit()
    if budget.exhausted():
        log.info("budget exhausted during %s at step %d; re-run to resume (or --export-now)", budget.stage, step)
        return False
    return True


def draw_batch(seed: int, step: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n freshly drawn scenes for one VAE step: images float32 (n, 3, 64, 64) in [-1, 1]
    and object masks float32 (n, 1, 64, 64) (1 where a pixel differs from the background)."""
    rng = np.random.default_rng([seed, 1, step])
    scenes = [shapes.sample_scene(rng) for _ in range(n)]
    imgs = np.stack([np.asarray(shapes.draw(s)) for s in scenes])  # (n, H, W, 3) uint8
    bg = np.array([shapes.PALETTE[s.background] for s in scenes], dtype=np.uint8)[:, None, None, :]
    mask = (imgs != bg).any(-1)[:, None].astype(np.float32)  # (n, 1, H, W)
    return (imgs.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2), mask


def recon_losses(y, x, m, fg_weight: float):
    """Weighted mean L1 and L2 of reconstruction y against x (B, 3, H, W); object pixels (mask m,
    (B, 1, H, W)) weigh 1 + fg_weight (objects are small; the background dominates a plain mean)."""
    w = 1.0 + fg_weight * m  # (B, 1, H, W)
    return (w * (y - x).abs()).sum() / (3 * w.sum()), (w * (y - x).pow(2)).sum() / (3 * w.sum())


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def make_vae(args, **extra):
    """AutoencoderKL of VAE_CONFIG with `--vae-norm-groups` GroupNorm groups."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG, norm_num_groups=args.vae_norm_groups, **extra)


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def make_unet(args):
    """UNet2DConditionModel of UNET_CONFIG with `--unet-norm-groups` GroupNorm groups."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG, norm_num_groups=args.unet_norm_groups)


def make_tokenizer(tokenizer_dir: Path):
    from transformers import CLIPTokenizer

    for name in ("vocab.json", "merges.txt"):
        if not (tokenizer_dir / name).exists():
            raise SystemExit(f"{tokenizer_dir / name} is missing (the shipped SD tokenizer vocabulary)")
    return CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"))


# ---------------------------------------------------------------------------
# stages

def stage_vae(args, budget: Budget) -> bool:
    run = args.run_dir
    final = run / "vae_final.safetensors"
    if final.exists():
        return True
    torch.manual_seed(args.seed)
    vae = make_vae(args).to(args.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    ck = run / "vae_ckpt.safetensors"
    step = load_ckpt(ck, {"vae": vae}, opt, None) if ck.exists() else 0
    budget.begin("vae")
    vae.train()
    t0, last = time.time(), step
    while step < args.vae_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vae_steps, args.vae_lr, 100)
        xn, mn = draw_batch(args.seed, step, args.vae_batch)
        x, m = torch.from_numpy(xn), torch.from_numpy(mn)
        if args.vae_crop and step < args.vae_steps - args.vae_full_steps:
            # fully convolutional: train on random crops (multiples of 8, aligned to the latent grid)
            crng = np.random.default_rng([args.seed, 4, step])
            c = args.vae_crop
            oy, ox = 8 * crng.integers(0, (64 - c) // 8 + 1, 2)
            x = x[:, :, oy:oy + c, ox:ox + c].contiguous()  # (B, 3, c, c)
            m = m[:, :, oy:oy + c, ox:ox + c].contiguous()
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        x, m = x.to(args.device), m.to(args.device)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(args.device)
        y = vae.decode(z).sample
        l1, l2 = recon_losses(y, x, m, args.vae_fg_weight)
        kl = post.kl().mean() / z[0].numel()
        loss = l1 + l2 + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == args.vae_steps:
            dt = time.time() - t0
            log.info("vae step %d/%d l1 %.4f l2 %.5f kl %.2f lr %.2e | %.2f it/s | budget used %.1f min",
                     step, args.vae_steps, l1.item(), l2.item(), kl.item(), opt.param_groups[0]["lr"],
                     (step - last) / dt, budget.used() / 60)
            t0, last = time.time(), step
            budget.commit()
        if not checkpoint_or_stop(args, budget, ck, {"vae": vae}, opt, None, step):
            return False
    atomic_save(vae.state_dict(), final)
    budget.commit()
    return True


def stage_decoder(args, budget: Budget) -> bool:
    """Fine-tune the VAE decoder alone (`--decoder-steps`, full images, encoder frozen) into
    `vae_decoder_final.safetensors`: latents and the diffusion model stay valid, only the
    decoding of them gets sharper (as SD's fine-tuned "ft-MSE" decoders were made)."""
    run = args.run_dir
    final = run / "vae_decoder_final.safetensors"
    if args.decoder_steps <= 0 or final.exists():
        return True
    torch.manual_seed(args.seed + 2)
    vae = make_vae(args)
    vae.load_state_dict(load_file(str(run / "vae_final.safetensors")))
    vae.to(args.device)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    ck = run / "vae_decoder_ckpt.safetensors"
    step = load_ckpt(ck, {"vae": vae}, opt, None) if ck.exists() else 0
    budget.begin("decoder")
    vae.eval()
    vae.decoder.train()
    t0, last = time.time(), step
    while step < args.decoder_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.decoder_steps, args.decoder_lr, 50)
        xn, mn = draw_batch(args.seed + 5, step, args.vae_batch)
        x, m = torch.from_numpy(xn).to(args.device), torch.from_numpy(mn).to(args.device)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + 11 + step)
        with torch.no_grad():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(args.device)
        y = vae.decode(z).sample
        l1, l2 = recon_losses(y, x, m, args.vae_fg_weight)
        loss = l1 + l2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == args.decoder_steps:
            log.info("decoder step %d/%d l1 %.4f l2 %.5f lr %.2e | %.2f it/s | budget used %.1f min", step,
                     args.decoder_steps, l1.item(), l2.item(), opt.param_groups[0]["lr"],
                     (step - last) / (time.time() - t0), budget.used() / 60)
            t0, last = time.time(), step
            budget.commit()
        if not checkpoint_or_stop(args, budget, ck, {"vae": vae}, opt, None, step):
            return False
    atomic_save(vae.state_dict(), final)
    budget.commit()
    return True


@torch.no_grad()
def stage_latents(args, budget: Budget) -> bool:
    run = args.run_dir
    out = run / "latents.safetensors"
    if out.exists():
        return True
    budget.begin("latents")
    vae = make_vae(args)
    vae.load_state_dict(load_file(str(run / "vae_final.safetensors")))
    vae.to(args.device).eval()
    rng = np.random.default_rng([args.seed, 2])
    scenes = [shapes.sample_scene(rng) for _ in range(args.n_scenes)]
    means, stds = [], []
    recon_ok = {a: 0 for a in shapes.ATTRIBUTES}
    for i in range(0, len(scenes), 256):
        chunk = scenes[i:i + 256]
        x = np.stack([np.asarray(shapes.draw(s)) for s in chunk]).astype(np.float32) / 127.5 - 1.0
        post = vae.encode(torch.from_numpy(x.transpose(0, 3, 1, 2)).to(args.device)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
        if i < 1024:  # detector accuracy on reconstructions: the ceiling of the whole model
            y = vae.decode(post.mean).sample
            imgs = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
            for s, im in zip(chunk, imgs):
                found = shapes.detect(im)
                for a in shapes.ATTRIBUTES:
                    recon_ok[a] += found[a] == getattr(s, a)
    mean, std = torch.cat(means), torch.cat(stds)
    g = torch.Generator().manual_seed(args.seed)
    sample = mean + std * torch.randn(mean.shape, generator=g)
    scaling = float(1.0 / sample.std())
    n_checked = min(1024, len(scenes))
    recon = {a: recon_ok[a] / n_checked for a in shapes.ATTRIBUTES}
    log.info("latents: %d scenes, latent std %.4f -> scaling_factor %.5f; detector on VAE reconstructions: %s",
             len(scenes), 1 / scaling, scaling, {k: round(v, 4) for k, v in recon.items()})
    attrs = {
        "attributes": [s.attributes() for s in scenes],
        "scaling_factor": scaling,
        "recon_detector_accuracy": recon,
    }
    atomic_write_text(run / "latents.json", json.dumps(attrs))
    atomic_save({"mean": mean, "std": std}, out)
    budget.commit()
    return True


class Captions:
    """Caption -> token ids (int64, 77) cache around transformers' CLIPTokenizer."""

    def __init__(self, tok):
        self.tok, self.cache = tok, {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            if t not in self.cache:
                ids = self.tok(t, padding="max_length", max_length=77, truncation=True).input_ids
                self.cache[t] = torch.tensor(ids, dtype=torch.int64)
            rows.append(self.cache[t])
        return torch.stack(rows)  # (B, 77)


def random_caption(rng: np.random.Generator, attrs: dict, uncond_p: float, keep_p: float) -> str:
    if rng.random() < uncond_p:
        return ""
    spec = {"color": attrs["color"], "shape": attrs["shape"]}
    for a in ("size", "position", "background"):
        if rng.random() < keep_p:
            spec[a] = attrs[a]
    return shapes.caption(spec)


def alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def scene_focus(args, attrs: list[dict]) -> tuple[np.ndarray | None, torch.Tensor | None]:
    """Optional emphasis of the diffusion stage: (sampling probabilities of the scenes, with small
    squares `--small-square-boost` times as likely as the others, or None for uniform sampling;
    object masks on the latent grid, float (n, 1, h, w), 1 where a latent pixel's 8x8 patch holds an
    object pixel, or None without `--object-loss-weight`). The scenes are drawn again from the seed
    of stage `latents` (`--scene-seed`), so their geometry is known."""
    if args.small_square_boost == 1.0 and args.object_loss_weight == 0.0:
        return None, None
    seed = args.seed if args.scene_seed is None else args.scene_seed
    rng = np.random.default_rng([seed, 2])
    scenes = [shapes.sample_scene(rng) for _ in range(len(attrs))]
    if [s.attributes() for s in scenes] != attrs:
        raise SystemExit(f"latents.json does not hold the scenes of seed {seed}: pass the --scene-seed they were drawn with")
    pick = obj = None
    if args.small_square_boost != 1.0:
        pick = np.array([args.small_square_boost if s.size == "small" and s.shape == "square" else 1.0 for s in scenes])
        pick /= pick.sum()
    if args.object_loss_weight > 0:
        masks = []
        for s in scenes:
            a = np.asarray(shapes.draw(s))  # (64, 64, 3)
            m = (a != np.array(shapes.PALETTE[s.background], dtype=np.uint8)).any(-1)  # (64, 64)
            masks.append(m.reshape(8, 8, 8, 8).any(axis=(1, 3)))  # (8, 8): any object pixel per 8x8 patch
        obj = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))  # (n, 1, 8, 8)
    return pick, obj


def stage_diffusion(args, budget: Budget) -> bool:
    run = args.run_dir
    final = run / "diffusion_final.safetensors"
    if final.exists():
        return True
    lat = load_file(str(run / "latents.safetensors"))
    meta = json.loads((run / "latents.json").read_text())
    scaling, attrs = meta["scaling_factor"], meta["attributes"]
    captions = Captions(make_tokenizer(args.tokenizer_dir))
    torch.manual_seed(args.seed + 1)
    te, unet = make_text_encoder().to(args.device), make_unet(args).to(args.device)
    models = {"text_encoder": te, "unet": unet}
    params = [p for m in models.values() for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.0)
    ema = {f"{n}.{k}": v.detach().clone().float() for n, m in models.items() for k, v in m.state_dict().items()}
    ck = run / "diffusion_ckpt.safetensors"
    if ck.exists():
        step = load_ckpt(ck, models, opt, ema)
    else:
        step = 0
        if args.init_from:  # fine-tune an exported model: its weights start the run and its EMA
            for name, m in models.items():
                m.load_state_dict({k: v.float() for k, v in load_file(str(next((args.init_from / name).glob("*.safetensors")))).items()})
            ema.update({f"{n}.{k}": v.detach().clone().float() for n, m in models.items() for k, v in m.state_dict().items()})
    # EMA of the float tensors (state_dict views share storage with the live parameters,
    # which the optimizer updates in place; integer buffers never change)
    live = {f"{n}.{k}": v for n, m in models.items() for k, v in m.state_dict().items()}
    ema_f = [ema[k] for k, v in live.items() if v.dtype.is_floating_point]
    live_f = [v for v in live.values() if v.dtype.is_floating_point]
    ac = alphas_cumprod()
    snr = (ac / (1 - ac)).float().to(args.device)
    sqrt_ac, sqrt_1m = ac.sqrt().float().to(args.device), (1 - ac).sqrt().float().to(args.device)
    budget.begin("diffusion")
    te.train()
    unet.train()
    t0, last, run_loss = time.time(), step, 0.0
    n = lat["mean"].shape[0]
    pick, obj_lat = scene_focus(args, attrs)
    while step < args.unet_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.unet_steps, args.unet_lr, 200)
        rng = np.random.default_rng([args.seed, 3, step])
        idx = rng.integers(0, n, args.unet_batch) if pick is None else rng.choice(n, args.unet_batch, p=pick)
        texts = [random_caption(rng, attrs[i], args.uncond_p, args.caption_keep_p) for i in idx]
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + 7 + step)
        ti = torch.from_numpy(idx)
        z0 = (lat["mean"][ti] + lat["std"][ti] * torch.randn(lat["mean"][ti].shape, generator=gen)) * scaling
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (len(idx),), generator=gen)
        z0, noise, t = z0.to(args.device), noise.to(args.device), t.to(args.device)
        zt = sqrt_ac[t].view(-1, 1, 1, 1) * z0 + sqrt_1m[t].view(-1, 1, 1, 1) * noise
        ctx = te(captions(texts).to(args.device)).last_hidden_state  # (B, 77, D)
        eps = unet(zt, t, ctx).sample
        w = torch.clamp(snr[t], max=5.0) / snr[t]  # min-SNR-5 weighting for epsilon prediction
        if args.hi_t_weight_max > 0:
            # at low SNR weigh the epsilon loss by 1/snr (= the x0 error), capped: the global
            # layout and colours are decided there and eps-MSE barely sees them
            w = w * torch.clamp(1.0 / snr[t], min=1.0, max=args.hi_t_weight_max)
        if obj_lat is None:
            err = (eps - noise).pow(2).mean(dim=(1, 2, 3))
        else:  # latent pixels under the object weigh 1 + object_loss_weight; each sample's weights sum to 1
            lw = 1.0 + args.object_loss_weight * obj_lat[ti].to(args.device)  # (B, 1, h, w)
            err = ((eps - noise).pow(2) * lw).sum(dim=(1, 2, 3)) / (lw.sum(dim=(1, 2, 3)) * eps.shape[1])
        loss = (w * err).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_mul_(ema_f, decay)
            torch._foreach_add_(ema_f, live_f, alpha=1 - decay)
        run_loss += loss.item()
        if step % args.log_every == 0 or step == args.unet_steps:
            dt = time.time() - t0
            log.info("diffusion step %d/%d loss %.4f lr %.2e | %.2f it/s | budget used %.1f min",
                     step, args.unet_steps, run_loss / max(1, step - last), opt.param_groups[0]["lr"],
                     (step - last) / dt, budget.used() / 60)
            t0, last, run_loss = time.time(), step, 0.0
            budget.commit()
        if not checkpoint_or_stop(args, budget, ck, models, opt, ema, step):
            return False
    atomic_save(ema, final, {"step": str(step)})
    budget.commit()
    return True


def export(args, budget: Budget, ema_source: Path) -> None:
    """Write the diffusers folder from the EMA weights in `ema_source` (fp16 safetensors)."""
    from diffusers import AutoencoderKL

    run, out = args.run_dir, args.out
    meta = json.loads((run / "latents.json").read_text())
    from safetensors import safe_open

    with safe_open(str(ema_source), "pt") as f:
        step_meta = f.metadata()
    t = load_file(str(ema_source))
    ema = {k[len("ema."):]: v for k, v in t.items() if k.startswith("ema.")} or t
    te, unet = make_text_encoder(), make_unet(args)
    te.load_state_dict({k[len("text_encoder."):]: v for k, v in ema.items() if k.startswith("text_encoder.")})
    unet.load_state_dict({k[len("unet."):]: v for k, v in ema.items() if k.startswith("unet.")})
    vae = make_vae(args, scaling_factor=meta["scaling_factor"])
    decoder_ft = run / "vae_decoder_final.safetensors"
    vae.load_state_dict(load_file(str(decoder_ft if decoder_ft.exists() else run / "vae_final.safetensors")))
    out.mkdir(parents=True, exist_ok=True)
    for name, m in (("text_encoder", te), ("unet", unet), ("vae", vae)):
        m.to(torch.float16).save_pretrained(str(out / name), safe_serialization=True)
    # Weights are stored in fp16 to fit the size budget; the model computes in float32
    # (transformers would otherwise load the text encoder in the stored dtype).
    cfg_path = out / "text_encoder" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = "float32"
    atomic_write_text(cfg_path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "scheduler").mkdir(exist_ok=True)
    import diffusers

    sched = dict(SCHEDULER_CONFIG, _diffusers_version=diffusers.__version__)
    atomic_write_text(out / "scheduler" / "scheduler_config.json", json.dumps(sched, indent=2) + "\n")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    info = {
        "seed": args.seed,
        "vae_steps": args.vae_steps, "vae_batch": args.vae_batch, "vae_lr": args.vae_lr, "kl_weight": args.kl_weight,
        "unet_steps_planned": args.unet_steps, "unet_steps_done": int(step_meta["step"]),
        "unet_batch": args.unet_batch, "unet_lr": args.unet_lr, "uncond_p": args.uncond_p, "ema_decay": args.ema_decay,
        "n_scenes": args.n_scenes, "scaling_factor": meta["scaling_factor"],
        "caption_keep_p": args.caption_keep_p, "init_from": str(args.init_from) if args.init_from else None,
        "decoder_finetuned": (run / "vae_decoder_final.safetensors").exists(),
        "recon_detector_accuracy": meta["recon_detector_accuracy"],
        "seconds": budget.state["seconds"], "cpu_seconds": budget.state["cpu_seconds"], "folder_bytes": total,
        "params": {n: sum(p.numel() for p in m.parameters()) for n, m in (("text_encoder", te), ("unet", unet), ("vae", vae))},
        "ema_source": ema_source.name,
    }
    atomic_write_text(run / "export.json", json.dumps(info, indent=1))
    log.info("exported %s (%.2f MB): %s", out, total / 1e6, json.dumps(info))


# ---------------------------------------------------------------------------
# stage distill: latent consistency distillation (LCM) of an exported teacher

LCM_SCHEDULER_CONFIG = {
    "_class_name": "LCMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995,
    "num_train_timesteps": 1000,
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
    "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "thresholding": False,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
    "trained_betas": None,
}


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """diffusers' get_guidance_scale_embedding: w (B,) -> (B, dim) = [sin(1000 w f), cos(1000 w f)],
    f_i = exp(-i log(10000) / (dim/2 - 1)), i < dim/2."""
    half = dim // 2
    f = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    e = (w.float() * 1000.0)[:, None] * f[None, :]
    return torch.cat([torch.sin(e), torch.cos(e)], dim=1)


def lcm_boundary(t: torch.Tensor, sigma_data: float = 0.5, scaling: float = 10.0):
    """Consistency-model boundary scalings of LCMScheduler (c_skip, c_out) at integer timesteps t (B,)."""
    s = t.double() * scaling
    c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
    c_out = s / (s ** 2 + sigma_data ** 2) ** 0.5
    return c_skip.float().view(-1, 1, 1, 1), c_out.float().view(-1, 1, 1, 1)


@torch.no_grad()
def teacher_latents(args, vae_dir: Path, n: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Posterior mean and std (n, 4, 8, 8) of n scenes (seed [--seed, 2], as stage `latents`) through the
    teacher's VAE, and the scenes' attributes."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(vae_dir), torch_dtype=torch.float32).eval()
    rng = np.random.default_rng([args.seed, 2])
    scenes = [shapes.sample_scene(rng) for _ in range(n)]
    means, stds = [], []
    for i in range(0, n, 256):
        x = np.stack([np.asarray(shapes.draw(s)) for s in scenes[i:i + 256]]).astype(np.float32) / 127.5 - 1.0
        post = vae.encode(torch.from_numpy(x.transpose(0, 3, 1, 2))).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds), [s.attributes() for s in scenes]


def stage_distill(args, budget: Budget) -> bool:
    """Latent consistency distillation (Luo et al. 2023, diffusers' train_lcm_distill_sd recipe) of the
    teacher `--teacher` into a w-conditioned student UNet (`time_cond_proj_dim` = `--w-embed-dim`,
    cond_proj zero-initialised so the student starts as the teacher); text encoder and VAE are the
    teacher's, frozen. Per step: x0 from the teacher's latents, t_n from the 50-step DDIM grid
    (19, 39, .., 999), x_{t_n} = q(x0, t_n); the teacher's guided x0 at scale w+1 (w uniform in
    [--w-min, --w-max]) gives x_{t_n - 20} by one DDIM step; loss = Huber(c=0.001) between the student's
    consistency output f(x_{t_n}, t_n, w) = c_skip x + c_out x0_pred and the EMA target's
    f(x_{t_n - 20}, t_n - 20, w) (EMA decay `--target-ema`)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    run = args.run_dir
    final = run / "distill_final.safetensors"
    if final.exists():
        return True
    teacher_dir = args.teacher
    lat_path = run / "distill_latents.safetensors"
    if not lat_path.exists():
        budget.begin("distill_latents")
        mean, std, attrs = teacher_latents(args, teacher_dir / "vae", args.distill_scenes)
        atomic_write_text(run / "distill_latents.json", json.dumps({"attributes": attrs}))
        atomic_save({"mean": mean, "std": std}, lat_path)
        budget.commit()
    lat = load_file(str(lat_path))
    attrs = json.loads((run / "distill_latents.json").read_text())["attributes"]
    scaling = json.loads((teacher_dir / "vae" / "config.json").read_text())["scaling_factor"]
    captions = Captions(make_tokenizer(args.tokenizer_dir))
    te = CLIPTextModel.from_pretrained(str(teacher_dir / "text_encoder"), torch_dtype=torch.float32).eval()
    teacher = UNet2DConditionModel.from_pretrained(str(teacher_dir / "unet"), torch_dtype=torch.float32).eval()
    for m in (te, teacher):
        m.requires_grad_(False)
    torch.manual_seed(args.seed + 3)
    cfg = dict(teacher.config)
    cfg["time_cond_proj_dim"] = args.w_embed_dim
    student = UNet2DConditionModel.from_config(cfg)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert missing == ["time_embedding.cond_proj.weight"] and not unexpected, (missing, unexpected)
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    opt = torch.optim.AdamW(student.parameters(), lr=args.distill_lr, weight_decay=0.0)
    ema = {f"unet.{k}": v.detach().clone().float() for k, v in student.state_dict().items()}
    ck = run / "distill_ckpt.safetensors"
    step = load_ckpt(ck, {"unet": student}, opt, ema) if ck.exists() else 0
    target = UNet2DConditionModel.from_config(cfg).eval()
    target.requires_grad_(False)
    target.load_state_dict({k[len("unet."):]: v for k, v in ema.items()})
    live = {f"unet.{k}": v for k, v in student.state_dict().items()}
    tgt_live = {f"unet.{k}": v for k, v in target.state_dict().items()}
    keys = [k for k, v in live.items() if v.dtype.is_floating_point]
    ema_f, live_f, tgt_f = [ema[k] for k in keys], [live[k] for k in keys], [tgt_live[k] for k in keys]
    ac = alphas_cumprod()
    sqrt_ac, sqrt_1m = ac.sqrt().float(), (1 - ac).sqrt().float()
    k_skip = 1000 // args.ddim_steps
    grid = torch.arange(1, args.ddim_steps + 1) * k_skip - 1  # 19, 39, ..., 999
    uncond = te(captions([""])).last_hidden_state  # (1, 77, D)
    budget.begin("distill")
    student.train()
    n = lat["mean"].shape[0]
    t0, last, run_loss = time.time(), step, 0.0
    while step < args.distill_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.distill_steps, args.distill_lr, 50)
        rng = np.random.default_rng([args.seed, 13, step])
        idx = rng.integers(0, n, args.distill_batch)
        texts = [random_caption(rng, attrs[i], 0.0, args.distill_keep_p) for i in idx]
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + 17 + step)
        ti = torch.from_numpy(idx)
        b = len(idx)
        x0 = (lat["mean"][ti] + lat["std"][ti] * torch.randn(lat["mean"][ti].shape, generator=gen)) * scaling
        noise = torch.randn(x0.shape, generator=gen)
        j = torch.randint(0, args.ddim_steps, (b,), generator=gen)
        t = grid[j]  # (B,)
        t_prev = (t - k_skip).clamp(min=0)
        w = args.w_min + (args.w_max - args.w_min) * torch.rand((b,), generator=gen)
        w_emb = guidance_embedding(w, args.w_embed_dim)  # (B, dim)
        def at(v, tt):
            return v[tt].view(-1, 1, 1, 1)
        xt = at(sqrt_ac, t) * x0 + at(sqrt_1m, t) * noise
        with torch.no_grad():
            ctx = te(captions(texts)).last_hidden_state  # (B, 77, D)
            eps_c, eps_u = teacher(torch.cat([xt, xt]), torch.cat([t, t]),
                                   torch.cat([ctx, uncond.expand(b, -1, -1)])).sample.chunk(2)
            x0_c = (xt - at(sqrt_1m, t) * eps_c) / at(sqrt_ac, t)
            x0_u = (xt - at(sqrt_1m, t) * eps_u) / at(sqrt_ac, t)
            wv = w.view(-1, 1, 1, 1)
            x0_g = x0_c + wv * (x0_c - x0_u)
            eps_g = eps_c + wv * (eps_c - eps_u)
            x_prev = at(sqrt_ac, t_prev) * x0_g + at(sqrt_1m, t_prev) * eps_g  # DDIM step t -> t - k
            e_tgt = target(x_prev, t_prev, ctx, timestep_cond=w_emb).sample
            cs, co = lcm_boundary(t_prev)
            y_tgt = cs * x_prev + co * (x_prev - at(sqrt_1m, t_prev) * e_tgt) / at(sqrt_ac, t_prev)
        e_s = student(xt, t, ctx, timestep_cond=w_emb).sample
        cs, co = lcm_boundary(t)
        y_s = cs * xt + co * (xt - at(sqrt_1m, t) * e_s) / at(sqrt_ac, t)
        c = args.huber_c
        loss = (torch.sqrt((y_s - y_tgt).pow(2) + c * c) - c).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            torch._foreach_mul_(ema_f, args.target_ema)
            torch._foreach_add_(ema_f, live_f, alpha=1 - args.target_ema)
            torch._foreach_copy_(tgt_f, ema_f)
        run_loss += loss.item()
        if step % args.log_every == 0 or step == args.distill_steps:
            dt = time.time() - t0
            log.info("distill step %d/%d loss %.5f lr %.2e | %.2f it/s | budget used %.1f min",
                     step, args.distill_steps, run_loss / max(1, step - last), opt.param_groups[0]["lr"],
                     (step - last) / dt, budget.used() / 60)
            t0, last, run_loss = time.time(), step, 0.0
            budget.commit()
        if not checkpoint_or_stop(args, budget, ck, {"unet": student}, opt, ema, step):
            return False
    atomic_save(ema, final, {"step": str(step)})
    budget.commit()
    return True


def export_distilled(args, budget: Budget, source: Path) -> None:
    """Write the student's diffusers folder: the teacher's text encoder and VAE (copied), the
    student UNet (EMA weights of `source`, fp16) with time_cond_proj_dim, LCMScheduler config and
    tinysd's generation defaults (`tinysd_defaults` in model_index.json: sampler lcm, 4 steps)."""
    import shutil

    import diffusers
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    out, teacher_dir = args.out, args.teacher
    with safe_open(str(source), "pt") as f:
        step_meta = f.metadata()
    t = load_file(str(source))
    ema = {k[len("ema."):]: v for k, v in t.items() if k.startswith("ema.")} or t
    cfg = json.loads((teacher_dir / "unet" / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["time_cond_proj_dim"] = args.w_embed_dim
    unet = UNet2DConditionModel.from_config(cfg)
    unet.load_state_dict({k[len("unet."):]: v for k, v in ema.items() if k.startswith("unet.")})
    out.mkdir(parents=True, exist_ok=True)
    for name in ("text_encoder", "vae"):
        (out / name).mkdir(exist_ok=True)
        for f in (teacher_dir / name).iterdir():
            shutil.copyfile(f, out / name / f.name)
    unet.to(torch.float16).save_pretrained(str(out / "unet"), safe_serialization=True)
    (out / "scheduler").mkdir(exist_ok=True)
    sched = dict(LCM_SCHEDULER_CONFIG, _diffusers_version=diffusers.__version__)
    atomic_write_text(out / "scheduler" / "scheduler_config.json", json.dumps(sched, indent=2) + "\n")
    index = json.loads((teacher_dir / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "LCMScheduler"]
    index["_diffusers_version"] = diffusers.__version__
    index["tinysd_defaults"] = {"sampler": "lcm", "steps": args.default_steps, "guidance_scale": args.default_cfg}
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2) + "\n")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    info = {
        "teacher": str(teacher_dir), "seed": args.seed, "distill_steps_planned": args.distill_steps,
        "distill_steps_done": int(step_meta["step"]), "distill_batch": args.distill_batch,
        "distill_lr": args.distill_lr, "w_range": [args.w_min, args.w_max], "w_embed_dim": args.w_embed_dim,
        "ddim_steps": args.ddim_steps, "target_ema": args.target_ema, "huber_c": args.huber_c,
        "distill_scenes": args.distill_scenes, "distill_keep_p": args.distill_keep_p,
        "seconds": budget.state["seconds"], "cpu_seconds": budget.state["cpu_seconds"], "folder_bytes": total,
    }
    atomic_write_text(args.run_dir / "export.json", json.dumps(info, indent=1))
    log.info("exported %s (%.2f MB): %s", out, total / 1e6, json.dumps(info))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=ROOT / "tools" / "runs" / "main")
    p.add_argument("--out", type=Path, default=ROOT / "weights" / "tinysd-shapes")
    p.add_argument("--tokenizer-dir", type=Path, default=ROOT / "weights" / "tokenizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=4000)
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--vae-fg-weight", type=float, default=9.0, help="extra loss weight of object pixels")
    p.add_argument("--vae-crop", type=int, default=32, help="train the VAE on random CxC crops (0: full images)")
    p.add_argument("--vae-full-steps", type=int, default=600, help="last steps on full images when cropping")
    p.add_argument("--kl-weight", type=float, default=1e-4)
    p.add_argument("--decoder-steps", type=int, default=0, help="decoder-only fine-tuning steps after diffusion")
    p.add_argument("--decoder-lr", type=float, default=3e-4)
    p.add_argument("--vae-norm-groups", type=int, default=4,
                   help="GroupNorm groups of the VAE (4: 4 channels per group at full resolution, as in SD)")
    p.add_argument("--unet-norm-groups", type=int, default=8, help="GroupNorm groups of the UNet")
    p.add_argument("--stage", choices=["all", "vae", "decoder", "distill"], default="all",
                   help="'vae': run only the VAE stage; 'decoder': only the decoder fine-tuning (needs vae_final.safetensors);"
                   " 'distill': latent consistency distillation of --teacher into a 4-step student (--out)")
    p.add_argument("--teacher", type=Path, default=ROOT / "weights" / "tinysd-shapes", help="--stage distill: the teacher model")
    p.add_argument("--distill-steps", type=int, default=1000)
    p.add_argument("--distill-batch", type=int, default=64)
    p.add_argument("--distill-lr", type=float, default=2e-4)
    p.add_argument("--distill-scenes", type=int, default=8000, help="scenes encoded by the teacher's VAE for distillation")
    p.add_argument("--distill-keep-p", type=float, default=0.5, help="caption keep probability during distillation")
    p.add_argument("--w-min", type=float, default=2.0, help="guidance w (= CFG scale - 1) range sampled in distillation")
    p.add_argument("--w-max", type=float, default=6.0)
    p.add_argument("--w-embed-dim", type=int, default=256, help="time_cond_proj_dim of the student")
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM grid of the teacher solver (LCM's original_inference_steps)")
    p.add_argument("--target-ema", type=float, default=0.95)
    p.add_argument("--huber-c", type=float, default=0.001)
    p.add_argument("--default-steps", type=int, default=4, help="steps recorded as the student's tinysd default")
    p.add_argument("--default-cfg", type=float, default=5.0, help="guidance scale recorded as the student's default (w = this - 1)")
    p.add_argument("--n-scenes", type=int, default=16000)
    p.add_argument("--unet-steps", type=int, default=8000)
    p.add_argument("--unet-batch", type=int, default=128)
    p.add_argument("--unet-lr", type=float, default=1e-3)
    p.add_argument("--uncond-p", type=float, default=0.1)
    p.add_argument("--caption-keep-p", type=float, default=0.8,
                   help="probability that each optional caption part (size, position, background) is kept")
    p.add_argument("--hi-t-weight-max", type=float, default=20.0,
                   help="if > 0, multiply the loss weight by clamp(1/snr, 1, this) (emphasise high noise)")
    p.add_argument("--small-square-boost", type=float, default=1.0,
                   help="diffusion batches draw small-square scenes this many times as often as the others")
    p.add_argument("--scene-seed", type=int,
                   help="the --seed of the run whose stage latents drew the scenes (default: --seed)")
    p.add_argument("--object-loss-weight", type=float, default=0.0,
                   help="extra diffusion-loss weight of the latent pixels under the object")
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--init-from", type=Path, help="exported model folder whose text encoder and UNet start the diffusion stage")
    p.add_argument("--max-minutes", type=float, default=120.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device (the shipped model is trained on cpu)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--export-now", action="store_true", help="export from the latest diffusion checkpoint's EMA")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.run_dir / "args.json", json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    budget = Budget(args.run_dir, args.max_minutes)
    log.info("budget: %.1f of %.1f min already used", budget.base / 60, args.max_minutes)
    if args.stage == "vae":
        return 0 if stage_vae(args, budget) else 3
    if args.stage == "decoder":
        return 0 if stage_decoder(args, budget) else 3
    if args.stage == "distill":
        if args.export_now:
            export_distilled(args, budget, args.run_dir / "distill_ckpt.safetensors")
            return 0
        if not stage_distill(args, budget):
            return 3
        export_distilled(args, budget, args.run_dir / "distill_final.safetensors")
        return 0
    if args.export_now:
        export(args, budget, args.run_dir / "diffusion_ckpt.safetensors")
        return 0
    done = (stage_vae(args, budget) and stage_latents(args, budget) and stage_diffusion(args, budget)
            and stage_decoder(args, budget))
    for key, what in (("seconds", "wall-clock"), ("cpu_seconds", "CPU (all threads)")):
        log.info("training budget used, %s: %.1f min (%s)", what, sum(budget.state[key].values()) / 60,
                 {k: round(v / 60, 1) for k, v in budget.state[key].items()})
    if not done:
        return 3
    export(args, budget, args.run_dir / "diffusion_final.safetensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
