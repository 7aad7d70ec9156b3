"""Dev tool: validate tinysd's CompVis <-> diffusers key map against diffusers' own converter.

Needs torch + diffusers + transformers (dev extras). For each model below it

1. builds the diffusers UNet2DConditionModel / AutoencoderKL and transformers
   CLIPTextModel (small ones with seeded random values in every tensor, so a
   swapped mapping shows as a value mismatch; SD 1.5-sized ones on torch's
   meta device: shapes only, no memory),
2. writes their state dicts in CompVis single-file layout with tinysd's
   inverse map (`tinysd.checkpoint.to_compvis_state_dict`),
3. converts that back with diffusers' `convert_ldm_unet_checkpoint`,
   `convert_ldm_vae_checkpoint` and `convert_ldm_clip_checkpoint`, and
   requires the original diffusers keys and tensors (or shapes, for meta
   models) back exactly,
4. infers the config from the CompVis shapes (`tinysd.checkpoint.infer_config`)
   and compares it with the config the model was built from (fields that
   shapes cannot carry are compared against tinysd's documented defaults), and
   for SD 1.5 with what diffusers' `create_unet_diffusers_config_from_ldm` /
   `create_vae_diffusers_config_from_ldm` derive from the original
   `v1-inference.yaml` parameters,
5. for the small models: writes a single file with `to_single_file`, loads it
   with `load_checkpoint` and checks every tensor; saves a diffusers folder with
   `save_diffusers` and loads it back with diffusers/transformers'
   `from_pretrained`, checking every tensor; and loads diffusers' own
   `save_pretrained` output (fp32 and fp16 variant) with `load_checkpoint`.

With `--write-shapes` it also writes `tests/fixtures/compvis_shapes.json.gz`:
the CompVis key -> shape listing of SD 1.5 and two BK-SDM-like UNets (header
data only, no tensors), with the diffusers configs they were built from, for
the shape-inference tests. Steps 2-3 validate every key in that listing.

With `--write-fixtures` it writes `tests/fixtures/compvis-mini/`: a tiny CompVis
single file and diffusers' own conversion of it (see `write_mini_fixture`), so
the test suite checks tinysd's reading of a single file against diffusers'.

Usage: python tools/check_keymap.py [--write-shapes] [--write-fixtures]
Prints one OK / FAIL line per check; exit status 1 on any failure.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import json
import logging
import math
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import diffusers
import transformers
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig as HFCLIPTextConfig
from transformers import CLIPTextModel as HFCLIPTextModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tinysd import checkpoint as ck  # noqa: E402
from tinysd.config import CLIPTextConfig, ModelConfig, SchedulerConfig, UNetConfig, VAEConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHAPES_FIXTURE = ROOT / "tests" / "fixtures" / "compvis_shapes.json.gz"
FAILED: list[str] = []

# --- models -------------------------------------------------------------------------------------
# SD 1.5's published configs (stable-diffusion-v1-5 unet/vae/text_encoder config.json values).
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
                layers_per_block=2, sample_size=512, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4)
SD15_CLIP = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
# The UNet block of SD 1.x's v1-inference.yaml (CompVis), for diffusers' config derivation.
SD15_LDM_YAML = {"model": {"params": {
    "scale_factor": 0.18215,
    "unet_config": {"params": {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                               "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                               "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1,
                               "context_dim": 768, "use_checkpoint": True, "legacy": False}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
}}}

MODELS = {
    # SD 1.x block layout, small widths
    "small-sd1": dict(
        unet=dict(sample_size=8, block_out_channels=[32, 64, 64, 64], layers_per_block=2, cross_attention_dim=32,
                  attention_head_dim=2, norm_num_groups=8,
                  down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                  up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3),
        vae=dict(block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8, latent_channels=4, sample_size=16,
                 down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2),
        clip=dict(vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999)),
    # BK-SDM style: no mid block, one layer per down block; mixed block types
    "no-mid": dict(
        unet=dict(sample_size=8, block_out_channels=[32, 64], layers_per_block=1, cross_attention_dim=32,
                  attention_head_dim=4, norm_num_groups=8, mid_block_type=None,
                  down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]),
        vae=dict(block_out_channels=[16, 32, 32], layers_per_block=2, norm_num_groups=8, latent_channels=4,
                 sample_size=16, down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3),
        clip=dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1,
                  max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999)),
    # linear projection, per-block head counts, LCM time_cond_proj, VAE without mid attention
    "linear-proj": dict(
        unet=dict(sample_size=8, block_out_channels=[32, 64, 64], layers_per_block=1, cross_attention_dim=48,
                  attention_head_dim=[2, 4, 4], norm_num_groups=8, use_linear_projection=True, time_cond_proj_dim=16,
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
        vae=dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, latent_channels=4,
                 sample_size=16, mid_block_add_attention=False,
                 down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2),
        clip=dict(vocab_size=1000, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
                  max_position_embeddings=77, bos_token_id=998, eos_token_id=999, pad_token_id=999)),
}
# SD 1.5-sized, shapes only (meta device)
META_MODELS = {
    "sd15": dict(unet=SD15_UNET, vae=SD15_VAE, clip=SD15_CLIP),
    # BK-SDM-Small-like: SD 1.5 without the mid block, one resnet(+attention) per down block
    "bk-sdm-small": dict(unet={**SD15_UNET, "layers_per_block": 1, "mid_block_type": None}, vae=SD15_VAE, clip=SD15_CLIP),
    # BK-SDM-Tiny-like: also without the innermost (1280, no attention) stage
    "bk-sdm-tiny": dict(unet={**SD15_UNET, "layers_per_block": 1, "mid_block_type": None,
                              "block_out_channels": [320, 640, 1280],
                              "down_block_types": ["CrossAttnDownBlock2D"] * 3,
                              "up_block_types": ["CrossAttnUpBlock2D"] * 3}, vae=SD15_VAE, clip=SD15_CLIP),
}
# The single-file fixture (tests/fixtures/compvis-mini): as small as an SD 1.x layout gets.
MINI = dict(
    unet=dict(sample_size=8, block_out_channels=[4, 8], layers_per_block=1, cross_attention_dim=4, attention_head_dim=1,
              norm_num_groups=2, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
              up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"]),
    vae=dict(block_out_channels=[4, 4], layers_per_block=1, norm_num_groups=2, latent_channels=4, sample_size=16,
             down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2),
    clip=dict(vocab_size=16, hidden_size=4, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
              max_position_embeddings=77, bos_token_id=14, eos_token_id=15, pad_token_id=15))
MINI_DIR = ROOT / "tests" / "fixtures" / "compvis-mini"

# fields that shapes cannot carry: the inferred config holds tinysd's defaults there
UNET_NOT_INFERRED = ("sample_size", "attention_head_dim", "num_attention_heads", "norm_num_groups", "norm_eps",
                     "flip_sin_to_cos", "freq_shift", "downsample_padding", "mid_block_scale_factor", "act_fn")
VAE_NOT_INFERRED = ("norm_num_groups", "sample_size", "scaling_factor", "act_fn")
CLIP_NOT_INFERRED = ("num_attention_heads", "hidden_act", "layer_norm_eps", "bos_token_id", "eos_token_id", "pad_token_id")


def report(ok: bool, what: str, detail: str = "") -> None:
    print(f"{'OK  ' if ok else 'FAIL'} {what}{(': ' + detail) if detail else ''}", flush=True)
    if not ok:
        FAILED.append(what)


def build(spec: dict, meta: bool, seed: int = 0):
    """(unet, vae, clip) torch modules; small ones get N(0, 1) * 0.1 + tensor-index values everywhere."""
    ctx = torch.device("meta") if meta else torch.device("cpu")
    with ctx:
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
        clip = HFCLIPTextModel(HFCLIPTextConfig(**spec["clip"]))
    if not meta:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in (unet, vae, clip):
                for i, p in enumerate(m.state_dict().values()):
                    if p.is_floating_point():
                        p.copy_(torch.randn(p.shape, generator=g) * 0.1 + i)
    return unet, vae, clip


def tinysd_config(unet, vae, clip) -> ModelConfig:
    return ModelConfig(text_encoder=CLIPTextConfig.from_dict(clip.config.to_dict()),
                       unet=UNetConfig.from_dict(dict(unet.config)), vae=VAEConfig.from_dict(dict(vae.config)),
                       scheduler=SchedulerConfig())


def canonical_clip(sd: dict) -> dict:
    # transformers >= 5.6 drops `text_model.` from CLIPTextModel keys; tinysd's canonical names keep it
    return {k if k.startswith("text_model.") else "text_model." + k: v for k, v in sd.items() if not k.endswith("position_ids")}


def compare(what: str, got: dict, want: dict, meta: bool) -> None:
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = [k for k in set(got) & set(want)
           if tuple(got[k].shape) != tuple(want[k].shape) or (not meta and not torch.equal(got[k], want[k]))]
    ok = not (missing or extra or bad)
    report(ok, what, f"{len(want)} tensors {'(shapes)' if meta else '(bit-exact)'} equal" if ok else
           f"missing {missing[:5]} extra {extra[:5]} differing {sorted(bad)[:5]}")


def check_model(name: str, spec: dict, meta: bool) -> dict:
    unet, vae, clip = build(spec, meta)
    cfg = tinysd_config(unet, vae, clip)
    sd = {"unet": dict(unet.state_dict()), "vae": dict(vae.state_dict()), "text_encoder": canonical_clip(clip.state_dict())}
    compvis = ck.to_compvis_state_dict((cfg, sd))

    # 3. diffusers' ldm -> diffusers conversion must give the original back
    unet_back = sfu.convert_ldm_unet_checkpoint(dict(compvis), dict(unet.config))
    want_unet = dict(sd["unet"])
    if cfg.unet.time_cond_proj_dim is not None:  # diffusers' converter has no key for LCM's cond_proj
        dropped = want_unet.pop("time_embedding.cond_proj.weight")
        report("time_embedding.cond_proj.weight" not in unet_back and dropped is not None,
               f"{name}: unet time_embedding.cond_proj (tinysd key time_embed.cond_proj) is not converted by diffusers, as expected")
    compare(f"{name}: unet  tinysd->CompVis->diffusers(convert_ldm_unet_checkpoint)", unet_back, want_unet, meta)
    vae_back = sfu.convert_ldm_vae_checkpoint(dict(compvis), dict(vae.config))
    compare(f"{name}: vae   tinysd->CompVis->diffusers(convert_ldm_vae_checkpoint)", vae_back, sd["vae"], meta)
    clip_back = sfu.convert_ldm_clip_checkpoint(dict(compvis))
    compare(f"{name}: clip  tinysd->CompVis->diffusers(convert_ldm_clip_checkpoint)", clip_back, sd["text_encoder"], meta)
    report(set(compvis) == {k for k in compvis if k.split(".")[0] in ("model", "first_stage_model", "cond_stage_model")},
           f"{name}: every CompVis key under a single-file network prefix")

    # 4. config inference from the CompVis shapes
    shapes = {k: tuple(v.shape) for k, v in compvis.items()}
    inferred = ck.infer_config(shapes, source=name)
    expect = ModelConfig(
        text_encoder=_with_defaults(cfg.text_encoder, CLIPTextConfig, CLIP_NOT_INFERRED,
                                    num_attention_heads=max(1, cfg.text_encoder.hidden_size // 64)
                                    if cfg.text_encoder.hidden_size % 64 == 0 else 1),
        unet=_with_defaults(cfg.unet, UNetConfig, UNET_NOT_INFERRED,
                            norm_num_groups=math.gcd(32, *cfg.unet.block_out_channels),
                            attention_head_dim=math.gcd(8, *_attention_widths(cfg.unet))),
        vae=_with_defaults(cfg.vae, VAEConfig, VAE_NOT_INFERRED, norm_num_groups=math.gcd(32, *cfg.vae.block_out_channels)),
        scheduler=SchedulerConfig())
    for net in ("text_encoder", "unet", "vae"):
        a, b = getattr(inferred, net).to_dict(), getattr(expect, net).to_dict()
        diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        report(not diff, f"{name}: {net} config inferred from CompVis shapes", "equal to the source config "
               "(non-inferable fields at defaults)" if not diff else f"differs (inferred, expected): {diff}")
    return {"compvis": compvis, "cfg": cfg, "sd": sd, "modules": (unet, vae, clip), "inferred": inferred}


def _attention_widths(u: UNetConfig) -> list[int]:
    c = u.block_out_channels
    return ([c[i] for i, t in enumerate(u.down_block_types) if t.startswith("CrossAttn")]
            + [c[-1 - i] for i, t in enumerate(u.up_block_types) if t.startswith("CrossAttn")]
            + ([c[-1]] if u.mid_block_type else []))


def _with_defaults(c, cls, fields, **extra):
    d = c.to_dict()
    defaults = cls().to_dict()
    for f in fields:
        d[f] = defaults[f]
    d.update(extra)
    return cls.from_dict(d)


def check_sd15_against_diffusers_config(inferred: ModelConfig, compvis: dict) -> None:
    """diffusers' own LDM-yaml -> diffusers config derivation vs tinysd's shape inference, SD 1.5."""
    dcfg = sfu.create_unet_diffusers_config_from_ldm(SD15_LDM_YAML, compvis)
    u = inferred.unet
    ours = {"in_channels": u.in_channels, "out_channels": u.out_channels, "block_out_channels": list(u.block_out_channels),
            "layers_per_block": u.layers_per_block, "down_block_types": list(u.down_block_types),
            "up_block_types": list(u.up_block_types), "cross_attention_dim": u.cross_attention_dim,
            "attention_head_dim": u.attention_head_dim, "use_linear_projection": u.use_linear_projection,
            "transformer_layers_per_block": u.transformer_layers_per_block, "sample_size": u.sample_size}
    diff = {k: (v, dcfg[k]) for k, v in ours.items() if v != dcfg[k]}
    report(not diff, "sd15: unet config inferred from shapes vs diffusers create_unet_diffusers_config_from_ldm(v1-inference.yaml)",
           f"{len(ours)} fields equal" if not diff else f"differs (tinysd, diffusers): {diff}")
    vcfg = sfu.create_vae_diffusers_config_from_ldm(SD15_LDM_YAML, compvis)
    v = inferred.vae
    ours = {"in_channels": v.in_channels, "out_channels": v.out_channels, "latent_channels": v.latent_channels,
            "block_out_channels": list(v.block_out_channels), "layers_per_block": v.layers_per_block,
            "scaling_factor": v.scaling_factor, "sample_size": v.sample_size,
            "down_block_types": list(v.down_block_types), "up_block_types": list(v.up_block_types)}
    diff = {k: (val, vcfg[k]) for k, val in ours.items() if val != vcfg[k]}
    report(not diff, "sd15: vae config inferred from shapes vs diffusers create_vae_diffusers_config_from_ldm(v1-inference.yaml)",
           f"{len(ours)} fields equal" if not diff else f"differs (tinysd, diffusers): {diff}")
    counts = {p: sum(k.startswith(p) for k in compvis) for p in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")}
    report(True, "sd15: CompVis key counts", ", ".join(f"{p} {n}" for p, n in counts.items()))


def check_file_roundtrips(name: str, r: dict, tmp: Path) -> None:
    """Single file and diffusers folder writers/readers against diffusers/transformers' own loaders."""
    cfg, sd = r["cfg"], r["sd"]
    unet, vae, clip = r["modules"]
    np_sd = {n: {k: v.numpy() for k, v in t.items()} for n, t in sd.items()}
    try:
        ck.expected_shapes("unet", cfg.unet), ck.expected_shapes("vae", cfg.vae), ck.expected_shapes("text_encoder", cfg.text_encoder)
    except ImportError as e:
        report(True, f"{name}: file round trips skipped", f"tinysd.nn not complete yet ({e})")
        return
    # single file -> load_checkpoint
    f = ck.to_single_file((cfg, np_sd), tmp / f"{name}.safetensors", embed_config=False)
    loaded = ck.load_checkpoint(f, config=cfg)
    _compare_np(f"{name}: to_single_file -> load_checkpoint", loaded.params, np_sd)
    # diffusers save_pretrained (fp32 + fp16 variant) -> load_checkpoint
    folder = tmp / f"{name}-diffusers"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    clip.save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    loaded = ck.load_checkpoint(folder)
    _compare_np(f"{name}: diffusers save_pretrained folder -> load_checkpoint", loaded.params, np_sd)
    same = loaded.config.unet == cfg.unet and loaded.config.vae == cfg.vae and loaded.config.text_encoder == cfg.text_encoder
    report(same, f"{name}: diffusers folder configs read back equal")
    f16 = tmp / f"{name}-fp16"
    unet.half().save_pretrained(f16 / "unet", variant="fp16")
    vae.half().save_pretrained(f16 / "vae", variant="fp16")
    clip.half().save_pretrained(f16 / "text_encoder", variant="fp16")
    (f16 / "model_index.json").write_text("{}")
    loaded = ck.load_checkpoint(f16)
    half = {n: {k: v.astype(np.float16).astype(np.float32) for k, v in t.items()} for n, t in np_sd.items()}
    _compare_np(f"{name}: diffusers fp16 variant folder -> load_checkpoint", loaded.params, half)
    unet.float(), vae.float(), clip.float()
    # save_diffusers -> diffusers/transformers from_pretrained
    out = ck.save_diffusers((cfg, np_sd), tmp / f"{name}-tinysd", tokenizer_dir=False)
    u2 = UNet2DConditionModel.from_pretrained(out / "unet")
    v2 = AutoencoderKL.from_pretrained(out / "vae")
    c2 = HFCLIPTextModel.from_pretrained(out / "text_encoder")
    back = {"unet": dict(u2.state_dict()), "vae": dict(v2.state_dict()), "text_encoder": canonical_clip(c2.state_dict())}
    for n in ck.NETWORKS:
        compare(f"{name}: save_diffusers -> {type((u2, v2, c2)[('unet', 'vae', 'text_encoder').index(n)]).__name__}.from_pretrained",
                back[n], sd[n], meta=False)


def _compare_np(what: str, got: dict, want: dict) -> None:
    bad = []
    for n in want:
        if set(got[n]) != set(want[n]):
            bad.append(f"{n} keys differ: {sorted(set(got[n]) ^ set(want[n]))[:5]}")
            continue
        bad += [f"{n}.{k}" for k in want[n] if got[n][k].shape != want[n][k].shape or not np.array_equal(got[n][k], want[n][k])]
    report(not bad, what, "all tensors bit-exact" if not bad else f"differ: {bad[:5]}")


def write_mini_fixture(versions: dict) -> None:
    """tests/fixtures/compvis-mini: a CompVis single file (F16, as many real ones) and how diffusers reads it.

    model.safetensors: MINI's random model written with tinysd's inverse map, plus what real files carry
    besides (CLIP position_ids, a few model_ema.* copies, alphas_cumprod), no tinysd metadata.
    reference.json: diffusers' convert_ldm_unet/vae/clip_checkpoint applied to that file as loaded by
    safetensors.torch: {network: {diffusers name (CLIP with `text_model.`): [file key, shape]}}, each
    output tensor traced to the file tensor it is (or is a view of) by storage pointer and checked equal.
    """
    import safetensors.torch
    from tinysd.safetensors_io import write_safetensors

    unet, vae, clip = build(MINI, meta=False, seed=1)
    cfg = tinysd_config(unet, vae, clip)
    sd = {"unet": dict(unet.state_dict()), "vae": dict(vae.state_dict()), "text_encoder": canonical_clip(clip.state_dict())}
    np_sd = {n: {k: v.numpy().astype(np.float16) for k, v in t.items()} for n, t in sd.items()}
    compvis = dict(ck.to_compvis_state_dict((cfg, np_sd)))
    compvis["cond_stage_model.transformer.text_model.embeddings.position_ids"] = np.arange(77, dtype=np.int64)[None]
    for k in sorted(compvis)[:4]:
        if k.startswith("model.diffusion_model."):
            compvis["model_ema." + k[len("model."):].replace(".", "")] = compvis[k]
    compvis["model_ema.decay"] = np.array(0.9999, dtype=np.float32)
    compvis["alphas_cumprod"] = np.linspace(0.999, 0.005, 16).astype(np.float32)
    MINI_DIR.mkdir(parents=True, exist_ok=True)
    for old in MINI_DIR.iterdir():
        old.unlink()
    write_safetensors(MINI_DIR / "model.safetensors", compvis, metadata={"format": "pt"})
    theirs = safetensors.torch.load_file(str(MINI_DIR / "model.safetensors"))
    by_ptr = {t.data_ptr(): k for k, t in theirs.items()}
    assert len(by_ptr) == len(theirs)
    ref = {}
    for net, back in (("unet", sfu.convert_ldm_unet_checkpoint(dict(theirs), dict(unet.config))),
                      ("vae", sfu.convert_ldm_vae_checkpoint(dict(theirs), dict(vae.config))),
                      ("text_encoder", canonical_clip(sfu.convert_ldm_clip_checkpoint(dict(theirs))))):
        compare(f"compvis-mini: diffusers reads back the {net}", back, {k: torch.from_numpy(v) for k, v in np_sd[net].items()}, False)
        ref[net] = {}
        for k, t in sorted(back.items()):
            src = by_ptr[t.data_ptr()]
            assert torch.equal(theirs[src].reshape(t.shape), t), k
            ref[net][k] = [src, list(t.shape)]
    (MINI_DIR / "reference.json").write_text(
        "{\n" + ",\n".join(f'"{net}": {{\n' + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in m.items()) + "\n}"
                            for net, m in ref.items()) + "\n}\n")
    (MINI_DIR / "GENERATED.json").write_text(json.dumps({
        "generator": "tools/check_keymap.py --write-fixtures", "versions": versions,
        "what": write_mini_fixture.__doc__.strip(), "config": ck.model_config_to_dict(cfg)}, indent=1) + "\n")
    size = sum(p.stat().st_size for p in MINI_DIR.iterdir())
    print(f"wrote {MINI_DIR} ({size} bytes)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-shapes", action="store_true", help=f"write {SHAPES_FIXTURE.relative_to(ROOT)}")
    ap.add_argument("--write-fixtures", action="store_true", help=f"write {MINI_DIR.relative_to(ROOT)}")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    listing = {}
    with tempfile.TemporaryDirectory() as td:
        for name, spec in MODELS.items():
            r = check_model(name, spec, meta=False)
            check_file_roundtrips(name, r, Path(td))
        tiny = ROOT / "tests" / "fixtures" / "tiny-sd"
        if (tiny / "unet" / "config.json").is_file():
            unet = UNet2DConditionModel.from_pretrained(tiny / "unet")
            vae = AutoencoderKL.from_pretrained(tiny / "vae")
            clip = HFCLIPTextModel.from_pretrained(tiny / "text_encoder")
            spec = {"unet": dict(unet.config), "vae": dict(vae.config), "clip": clip.config.to_dict()}
            check_model("tiny-sd fixture", spec, meta=False)  # structure; values re-randomised by build()
            loaded = ck.load_checkpoint(tiny)
            sd = {"unet": dict(unet.state_dict()), "vae": dict(vae.state_dict()), "text_encoder": canonical_clip(clip.state_dict())}
            _compare_np("tiny-sd fixture: load_checkpoint vs diffusers/transformers from_pretrained", loaded.params,
                        {n: {k: v.numpy() for k, v in t.items()} for n, t in sd.items()})
        for name, spec in META_MODELS.items():
            r = check_model(name, spec, meta=True)
            if name == "sd15":
                check_sd15_against_diffusers_config(r["inferred"], r["compvis"])
            listing[name] = {"config": ck.model_config_to_dict(r["cfg"]),
                             "shapes": {k: list(v.shape) for k, v in sorted(r["compvis"].items())}}
    versions = {"diffusers": diffusers.__version__, "transformers": transformers.__version__,
                "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}
    if args.write_fixtures:
        write_mini_fixture(versions)
    if args.write_shapes:
        doc = {"generated_by": "tools/check_keymap.py --write-shapes",
               "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "versions": versions,
               "note": "CompVis single-file key -> shape listings (no tensors) of diffusers models built on torch's meta "
                       "device from the configs given; every key was checked to convert back to the diffusers model's "
                       "own keys and shapes with diffusers' convert_ldm_*_checkpoint. Configs: SD 1.5's published "
                       "config.json values; bk-sdm-*: BK-SDM-like variants (no mid block, 1 layer per down block; tiny "
                       "also drops the innermost stage).",
               "models": listing}
        raw = json.dumps(doc, sort_keys=True).encode()
        with gzip.GzipFile(SHAPES_FIXTURE, "wb", mtime=0) as f:
            f.write(raw)
        print(f"wrote {SHAPES_FIXTURE} ({SHAPES_FIXTURE.stat().st_size} bytes)")
    print(f"{'FAILED: ' + ', '.join(FAILED) if FAILED else 'all checks passed'}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
