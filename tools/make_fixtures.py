"""Dev-only: build tiny random-weight SD 1.x networks with diffusers / transformers and
write them, plus reference inputs and outputs, under tests/fixtures/.

    python3 tools/make_fixtures.py [--out tests/fixtures]

Writes (all regenerated from the seed; never edit by hand):
  tiny-sd/                    diffusers folder layout (model_index.json, text_encoder/,
                              unet/, vae/, scheduler/) written with save_pretrained; the
                              text encoder is stored in float16 with the `text_model.`
                              key prefix, as SD 1.x folders carry it.
  nets/<variant>/             one network each: config.json + safetensors
                              (clip-gelu is saved by transformers 5, without the prefix)
  net_refs/<name>.npz         inputs and reference outputs, float32 (int64 ids), and a
                              `meta` JSON string naming the generator, versions and seed
Every parameter is perturbed with Gaussian noise after the library's own
initialisation so no path is trivially zero or identity. Each folder also
gets GENERATED.json.

Needs torch 2.13.0 (CPU), diffusers 0.42.1, transformers 5.23.0.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import diffusers
import transformers
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

SEED = 20240601
TOOL = "tools/make_fixtures.py"

# --- the models -----------------------------------------------------------------

# tiny-sd: the main fixture. The text encoder keeps CLIP's full 49408-token
# vocabulary so the shipped tokenizer's ids work end to end (stored float16 to
# keep it small); UNet: SD 1.x block types, mid block, 2 layers per block.
TINY_CLIP = dict(vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77, hidden_act="quick_gelu")
TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=2,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                 mid_block_type="UNetMidBlock2DCrossAttn", attention_head_dim=2, norm_num_groups=4, cross_attention_dim=8)
TINY_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                norm_num_groups=4, sample_size=16)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")

VARIANTS = {
    # gelu activation, other eps, 3 layers; saved without the text_model. prefix
    "clip-gelu": ("clip", dict(vocab_size=320, hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                               max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-6)),
    # 3 blocks with DownBlock2D last, per-block head counts, linear projections, mid-block rescale
    "unet-linear-heads": ("unet", dict(sample_size=8, block_out_channels=(8, 16, 16), layers_per_block=1,
                                       down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                                       attention_head_dim=(2, 4, 8), use_linear_projection=True, norm_num_groups=4,
                                       norm_eps=1e-6, cross_attention_dim=12, mid_block_scale_factor=1.5)),
    # BK-SDM style: no mid block; LCM style time_cond_proj_dim; DownBlock2D first; sin/cos order and
    # frequency shift flipped; asymmetric downsample padding
    "unet-nomid-cond": ("unet", dict(sample_size=8, block_out_channels=(8, 12), layers_per_block=1,
                                     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), mid_block_type=None,
                                     attention_head_dim=(4, 3), norm_num_groups=4, cross_attention_dim=8,
                                     time_cond_proj_dim=8, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0)),
    # 3 blocks, 2 layers, no mid-block attention, 3 latent channels
    "vae-3block": ("vae", dict(in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8, 16, 16), layers_per_block=2,
                               down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                               norm_num_groups=4, sample_size=16, mid_block_add_attention=False, scaling_factor=0.13025)),
}


def meta(name: str) -> dict:
    return {"generator": TOOL, "fixture": name, "seed": SEED, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__}


def perturb(model: torch.nn.Module, seed: int) -> None:
    """p += 0.2 std(p) N(0,1), or 0.1 N(0,1) for constant tensors (norm weights/biases, zero biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            s = float(p.std()) if p.numel() > 1 else 0.0
            p.add_(noise * (0.2 * s if s > 1e-8 else 0.1))


def build(kind: str, cfg: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "clip":
        m = CLIPTextModel(CLIPTextConfig(**cfg))
    elif kind == "unet":
        m = UNet2DConditionModel(**cfg)
    else:
        m = AutoencoderKL(**cfg)
    m.eval()
    perturb(m, seed + 1)
    return m


# --- references -------------------------------------------------------------------


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def clip_refs(m: CLIPTextModel, rng: np.random.Generator) -> dict:
    V = m.config.vocab_size
    ids = rng.integers(0, V, size=(2, 77), dtype=np.int64)
    ids[:, 0] = min(49406, V - 1)
    ids[0, 12:] = min(49407, V - 1)  # an EOS-padded prompt
    short = rng.integers(0, V, size=(1, 7), dtype=np.int64)
    with torch.no_grad():
        out = m(input_ids=t(ids), output_hidden_states=True)
        # diffusers' clip_skip=1: hidden_states[-(1 + 1)], then the final layer norm
        skip1 = m.final_layer_norm(out.hidden_states[-2])
        out_short = m(input_ids=t(short)).last_hidden_state
    return {"ids": ids, "last_hidden_state": out.last_hidden_state.numpy(), "clip_skip1": skip1.numpy(),
            "ids_short": short, "last_hidden_state_short": out_short.numpy()}


def unet_refs(m: UNet2DConditionModel, rng: np.random.Generator) -> dict:
    cfg = m.config
    f = 2 ** (len(cfg.block_out_channels) - 1)
    sample = rng.standard_normal((2, cfg.in_channels, 4 * f, 6 * f)).astype(np.float32)  # non-square
    context = rng.standard_normal((2, 77, cfg.cross_attention_dim)).astype(np.float32)
    timesteps = np.array([981.0, 1.0], dtype=np.float32)
    d = {"sample": sample, "context": context, "timesteps": timesteps}
    kw = {}
    if cfg.time_cond_proj_dim:
        d["timestep_cond"] = rng.standard_normal((2, cfg.time_cond_proj_dim)).astype(np.float32)
        kw["timestep_cond"] = t(d["timestep_cond"])
    with torch.no_grad():
        d["time_proj"] = m.time_proj(t(timesteps)).numpy()
        d["out"] = m(t(sample), t(timesteps), encoder_hidden_states=t(context), **kw).sample.numpy()
        # a python int timestep, broadcast over the batch
        d["t_scalar"] = np.array(500, dtype=np.int64)
        d["out_t_scalar"] = m(t(sample), 500, encoder_hidden_states=t(context), **kw).sample.numpy()
    return d


def vae_refs(m: AutoencoderKL, rng: np.random.Generator) -> dict:
    cfg = m.config
    f = 2 ** (len(cfg.block_out_channels) - 1)
    x = rng.uniform(-1, 1, (2, cfg.in_channels, 4 * f, 6 * f)).astype(np.float32)
    x_odd = rng.uniform(-1, 1, (1, cfg.in_channels, 4 * f + 3, 4 * f - 1)).astype(np.float32)  # asymmetric padding
    z = rng.standard_normal((2, cfg.latent_channels, 4, 6)).astype(np.float32)
    with torch.no_grad():
        mean = m.encode(t(x)).latent_dist.mean.numpy()
        mean_odd = m.encode(t(x_odd)).latent_dist.mean.numpy()
        image = m.decode(t(z)).sample.numpy()
    return {"x": x, "mean": mean, "x_odd": x_odd, "mean_odd": mean_odd, "z": z, "image": image}


REFS = {"clip": clip_refs, "unet": unet_refs, "vae": vae_refs}


def save_npz(path: Path, arrays: dict, name: str) -> None:
    arrays = dict(arrays, meta=np.array(json.dumps(meta(name))))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def write_generated(folder: Path, name: str, cfg) -> None:
    (folder / "GENERATED.json").write_text(json.dumps(dict(meta(name), config=cfg), indent=1, default=list) + "\n")


# --- writing ------------------------------------------------------------------------


def save_clip_with_prefix(m: CLIPTextModel, folder: Path, dtype: torch.dtype) -> None:
    """save_pretrained (config.json), then model.safetensors rewritten with the `text_model.` prefix."""
    m.to(dtype).save_pretrained(folder)
    m.float()
    for f in folder.glob("*.safetensors"):
        f.unlink()
    sd = {f"text_model.{k}": v.to(dtype).contiguous() for k, v in m.state_dict().items()}
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


def check_reload(kind: str, folder: Path, m: torch.nn.Module) -> None:
    """The saved folder must load back into the library and give identical weights."""
    cls = {"clip": CLIPTextModel, "unet": UNet2DConditionModel, "vae": AutoencoderKL}[kind]
    m2 = cls.from_pretrained(folder).float()
    a, b = m.state_dict(), m2.state_dict()
    assert set(a) == set(b), f"{folder}: keys changed on reload"
    for k in a:
        assert torch.equal(a[k].float(), b[k].float()), f"{folder}: {k} changed on reload"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out
    refs_dir = out / "net_refs"
    refs_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)

    # tiny-sd --------------------------------------------------------------------
    sd_dir = out / "tiny-sd"
    if sd_dir.exists():
        shutil.rmtree(sd_dir)
    sd_dir.mkdir(parents=True)
    clip = build("clip", TINY_CLIP, SEED + 10)
    with torch.no_grad():  # stored float16: round now so the reference sees the stored weights
        for p in clip.parameters():
            p.copy_(p.half().float())
    unet = build("unet", TINY_UNET, SEED + 20)
    vae = build("vae", TINY_VAE, SEED + 30)
    save_clip_with_prefix(clip, sd_dir / "text_encoder", torch.float16)
    unet.save_pretrained(sd_dir / "unet")
    vae.save_pretrained(sd_dir / "vae")
    PNDMScheduler(**SD15_SCHEDULER).save_pretrained(sd_dir / "scheduler")
    model_index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": [None, None], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (sd_dir / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    write_generated(sd_dir, "tiny-sd", {"text_encoder": TINY_CLIP, "unet": TINY_UNET, "vae": TINY_VAE, "scheduler": SD15_SCHEDULER})
    check_reload("clip", sd_dir / "text_encoder", clip)
    check_reload("unet", sd_dir / "unet", unet)
    check_reload("vae", sd_dir / "vae", vae)
    save_npz(refs_dir / "tiny-sd-text_encoder.npz", clip_refs(clip, rng), "tiny-sd/text_encoder")
    save_npz(refs_dir / "tiny-sd-unet.npz", unet_refs(unet, rng), "tiny-sd/unet")
    save_npz(refs_dir / "tiny-sd-vae.npz", vae_refs(vae, rng), "tiny-sd/vae")

    # variants ------------------------------------------------------------------------
    for i, (name, (kind, cfg)) in enumerate(VARIANTS.items()):
        folder = out / "nets" / name
        if folder.exists():
            shutil.rmtree(folder)
        m = build(kind, cfg, SEED + 100 * (i + 1))
        m.save_pretrained(folder)
        write_generated(folder, name, cfg)
        check_reload(kind, folder, m)
        save_npz(refs_dir / f"{name}.npz", REFS[kind](m, rng), f"nets/{name}")

    total = 0
    for p in sorted(list(sd_dir.rglob("*")) + list((out / "nets").rglob("*")) + list(refs_dir.rglob("*"))):
        if p.is_file():
            total += p.stat().st_size
            print(f"{p.stat().st_size:>9}  {p.relative_to(out)}")
    print(f"{total:>9}  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
