"""The CompVis (original LDM / A1111 single-file) <-> diffusers key map, as data.

Everything here is a table; the few functions below only expand the tables
for one config. Names are module paths: a parameter key is a module path
plus its leaf (`.weight`, `.bias`), and keys are translated by replacing
their longest mapped module prefix (`translate`).

Single-file layout (one `.safetensors`, keys prefixed per network):

    model.diffusion_model.<unet key>
    first_stage_model.<vae key>
    cond_stage_model.transformer.[text_model.]<clip key>

UNet, CompVis order. With n = len(block_out_channels) and L = layers_per_block,
`input_blocks` holds conv_in at 0, then per down block i the L layers at
n_in = 1 + i*(L+1) + j (`.0` resnet, `.1` attention) and, for every block but
the last, its downsampler at 1 + i*(L+1) + L (`.0.op`). `output_blocks` holds
per up block i the L+1 layers at n_out = i*(L+1) + j (`.0` resnet, `.1`
attention) and, for every block but the last, the upsampler in the last layer
(`.1.conv`, or `.2.conv` when that layer has an attention). `middle_block` is
resnet / attention / resnet. Attention (SpatialTransformer) internals have the
same names in both layouts; resnet internals are renamed by UNET_RESNET.

VAE, CompVis order: encoder `down.{i}` is diffusers' `down_blocks.{i}`, but
decoder `up.{k}` is diffusers' `up_blocks.{n-1-k}` (CompVis counts from the
lowest resolution). Attention projections are 1x1 convs (C, C, 1, 1) in
CompVis and in some old diffusers files, linears (C, C) in current diffusers.

`time_embed.cond_proj` (LCM's `time_cond_proj_dim`) is tinysd's own
convention: no CompVis file format defines it, and diffusers' converter
drops it.
"""
from __future__ import annotations

from typing import Iterable, Mapping

# ---- single-file prefixes -------------------------------------------------------------------
SINGLE_FILE_PREFIX = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "cond_stage_model.transformer.",
}

# Keys of other model families: a single file holding any of these is refused with the reason.
FOREIGN_PREFIXES = (
    ("cond_stage_model.model.", "it has an OpenCLIP text encoder (Stable Diffusion 2.x), not SD 1.x's CLIP"),
    ("conditioner.embedders.", "it is an SDXL checkpoint, not SD 1.x"),
    ("model.diffusion_model.label_emb.", "its UNet has a class/label embedding (SDXL or upscaler), not SD 1.x"),
    ("model.diffusion_model.joint_blocks.", "it is an SD3 checkpoint, not SD 1.x"),
    ("model.diffusion_model.double_blocks.", "it is a Flux checkpoint, not SD 1.x"),
)

# Keys under a network prefix that are not parameters (buffers, training leftovers): dropped silently.
# Matched against the key with the network prefix removed, after CLIP's `text_model.` is stripped.
IGNORED_IN_NETWORK = {
    "text_encoder": ("embeddings.position_ids",),
    "vae": ("loss.",),
    "unet": (),
}

# ---- CLIP -----------------------------------------------------------------------------------
# transformers names CLIPTextModel parameters `text_model.<...>`; transformers >= 5.6 and some
# single files drop that prefix. Canonical here: with it.
CLIP_PREFIX = "text_model."

# ---- UNet -----------------------------------------------------------------------------------
# (CompVis module, diffusers module) outside the blocks.
UNET_FIXED = (
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("time_embed.cond_proj", "time_embedding.cond_proj"),  # tinysd convention, see module docstring
    ("input_blocks.0.0", "conv_in"),
    ("out.0", "conv_norm_out"),
    ("out.2", "conv_out"),
)
# ResBlock internals (CompVis Sequential indices -> diffusers ResnetBlock2D names).
UNET_RESNET = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)
# Per-layer templates. {n}: CompVis block index; {i}: diffusers block; {j}: layer in block.
UNET_DOWN = {
    "resnet": ("input_blocks.{n}.0", "down_blocks.{i}.resnets.{j}"),
    "attention": ("input_blocks.{n}.1", "down_blocks.{i}.attentions.{j}"),
    "downsampler": ("input_blocks.{n}.0.op", "down_blocks.{i}.downsamplers.0.conv"),
}
UNET_UP = {
    "resnet": ("output_blocks.{n}.0", "up_blocks.{i}.resnets.{j}"),
    "attention": ("output_blocks.{n}.1", "up_blocks.{i}.attentions.{j}"),
    # {u}: 2 when the layer has an attention at .1, else 1
    "upsampler": ("output_blocks.{n}.{u}.conv", "up_blocks.{i}.upsamplers.0.conv"),
}
UNET_MID = (
    ("middle_block.0", "mid_block.resnets.0", "resnet"),
    ("middle_block.1", "mid_block.attentions.0", "attention"),
    ("middle_block.2", "mid_block.resnets.1", "resnet"),
)

# ---- VAE ------------------------------------------------------------------------------------
VAE_FIXED = (
    ("encoder.conv_in", "encoder.conv_in"),
    ("encoder.norm_out", "encoder.conv_norm_out"),
    ("encoder.conv_out", "encoder.conv_out"),
    ("decoder.conv_in", "decoder.conv_in"),
    ("decoder.norm_out", "decoder.conv_norm_out"),
    ("decoder.conv_out", "decoder.conv_out"),
    ("quant_conv", "quant_conv"),
    ("post_quant_conv", "post_quant_conv"),
)
VAE_RESNET = (
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("nin_shortcut", "conv_shortcut"),
)
# {i}: diffusers block; {k}: CompVis decoder level = n-1-i; {j}: layer.
VAE_DOWN = {
    "resnet": ("encoder.down.{i}.block.{j}", "encoder.down_blocks.{i}.resnets.{j}"),
    "downsampler": ("encoder.down.{i}.downsample.conv", "encoder.down_blocks.{i}.downsamplers.0.conv"),
}
VAE_UP = {
    "resnet": ("decoder.up.{k}.block.{j}", "decoder.up_blocks.{i}.resnets.{j}"),
    "upsampler": ("decoder.up.{k}.upsample.conv", "decoder.up_blocks.{i}.upsamplers.0.conv"),
}
VAE_MID = (
    ("{part}.mid.block_1", "{part}.mid_block.resnets.0", "resnet"),
    ("{part}.mid.attn_1", "{part}.mid_block.attentions.0", "attention"),
    ("{part}.mid.block_2", "{part}.mid_block.resnets.1", "resnet"),
)
# VAE attention leaf modules: every name seen in the wild -> the current diffusers name.
VAE_ATTENTION_LEAF = {
    # CompVis AttnBlock
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "proj_out": "to_out.0",
    # diffusers < 0.14 (AttentionBlock)
    "query": "to_q",
    "key": "to_k",
    "value": "to_v",
    "proj_attn": "to_out.0",
    # current diffusers
    "group_norm": "group_norm",
    "to_q": "to_q",
    "to_k": "to_k",
    "to_v": "to_v",
    "to_out.0": "to_out.0",
}
# Written back out in CompVis layout: diffusers name -> (CompVis name, stored as 1x1 conv).
VAE_ATTENTION_TO_COMPVIS = {
    "group_norm": ("norm", False),
    "to_q": ("q", True),
    "to_k": ("k", True),
    "to_v": ("v", True),
    "to_out.0": ("proj_out", True),
}
VAE_ATTENTION_PREFIX = ("encoder.mid_block.attentions.", "decoder.mid_block.attentions.")


# ---- expansion for one config -----------------------------------------------------------------
def _has_attention(block_type: str) -> bool:
    return block_type.startswith("CrossAttn")


def unet_module_map(cfg) -> list[tuple[str, str]]:
    """(CompVis module, diffusers module) pairs for a UNetConfig.

    Resnets are expanded to their leaf modules (UNET_RESNET); attentions map
    as a whole (same internal names in both layouts).
    """
    pairs: list[tuple[str, str]] = list(UNET_FIXED)

    def resnet(c: str, d: str) -> None:
        pairs.extend((f"{c}.{cs}", f"{d}.{ds}") for cs, ds in UNET_RESNET)

    n_blocks, L = len(cfg.block_out_channels), cfg.layers_per_block
    for i, btype in enumerate(cfg.down_block_types):
        for j in range(L):
            n = 1 + i * (L + 1) + j
            resnet(UNET_DOWN["resnet"][0].format(n=n), UNET_DOWN["resnet"][1].format(i=i, j=j))
            if _has_attention(btype):
                c, d = UNET_DOWN["attention"]
                pairs.append((c.format(n=n), d.format(i=i, j=j)))
        if i < n_blocks - 1:
            c, d = UNET_DOWN["downsampler"]
            pairs.append((c.format(n=1 + i * (L + 1) + L), d.format(i=i)))
    if cfg.mid_block_type is not None:
        for c, d, kind in UNET_MID:
            if kind == "resnet":
                resnet(c, d)
            else:
                pairs.append((c, d))
    for i, btype in enumerate(cfg.up_block_types):
        attn = _has_attention(btype)
        for j in range(L + 1):
            n = i * (L + 1) + j
            resnet(UNET_UP["resnet"][0].format(n=n), UNET_UP["resnet"][1].format(i=i, j=j))
            if attn:
                c, d = UNET_UP["attention"]
                pairs.append((c.format(n=n), d.format(i=i, j=j)))
        if i < n_blocks - 1:
            c, d = UNET_UP["upsampler"]
            pairs.append((c.format(n=i * (L + 1) + L, u=2 if attn else 1), d.format(i=i)))
    return pairs


def vae_module_map(cfg) -> list[tuple[str, str]]:
    """(CompVis module, diffusers module) pairs for a VAEConfig; attentions map as a whole."""
    pairs: list[tuple[str, str]] = list(VAE_FIXED)

    def resnet(c: str, d: str) -> None:
        pairs.extend((f"{c}.{cs}", f"{d}.{ds}") for cs, ds in VAE_RESNET)

    n, L = len(cfg.block_out_channels), cfg.layers_per_block
    for i in range(n):
        for j in range(L):
            resnet(VAE_DOWN["resnet"][0].format(i=i, j=j), VAE_DOWN["resnet"][1].format(i=i, j=j))
        if i < n - 1:
            pairs.append((VAE_DOWN["downsampler"][0].format(i=i), VAE_DOWN["downsampler"][1].format(i=i)))
    for i in range(n):
        k = n - 1 - i
        for j in range(L + 1):
            resnet(VAE_UP["resnet"][0].format(k=k, j=j), VAE_UP["resnet"][1].format(i=i, j=j))
        if i < n - 1:
            pairs.append((VAE_UP["upsampler"][0].format(k=k), VAE_UP["upsampler"][1].format(i=i)))
    for part in ("encoder", "decoder"):
        for c, d, kind in VAE_MID:
            if kind == "attention" and not cfg.mid_block_add_attention:
                continue
            c, d = c.format(part=part), d.format(part=part)
            if kind == "resnet":
                resnet(c, d)
            else:
                pairs.append((c, d))
    return pairs


def translate(key: str, module_map: Mapping[str, str]) -> str | None:
    """`key` with its longest prefix (whole dotted components) found in `module_map` replaced; None if none is."""
    parts = key.split(".")
    for k in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in module_map:
            return module_map[prefix] + "." + ".".join(parts[k:])
    return None


def canonical_clip_key(key: str) -> str:
    """A CLIP text-model key with or without `text_model.` -> with it (transformers' canonical name)."""
    return key if key.startswith(CLIP_PREFIX) else CLIP_PREFIX + key


def canonical_vae_key(key: str) -> str:
    """A diffusers-layout VAE key with any known attention leaf name (VAE_ATTENTION_LEAF) -> current diffusers name."""
    for p in VAE_ATTENTION_PREFIX:
        if key.startswith(p):
            rest = key[len(p):]  # "0.query.weight"
            idx, _, tail = rest.partition(".")
            module, _, leaf = tail.rpartition(".")
            if module in VAE_ATTENTION_LEAF:
                return f"{p}{idx}.{VAE_ATTENTION_LEAF[module]}.{leaf}"
    return key


def is_vae_attention_projection(key: str) -> bool:
    """True for the weight of a VAE attention q/k/v/out projection in canonical naming."""
    return key.startswith(VAE_ATTENTION_PREFIX) and key.endswith(
        (".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"))


def ignored(network: str, key: str) -> bool:
    """True if `key` (network prefix removed) is a known non-parameter entry (IGNORED_IN_NETWORK)."""
    if network == "text_encoder" and key.startswith(CLIP_PREFIX):
        key = key[len(CLIP_PREFIX):]
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in IGNORED_IN_NETWORK[network])


def invert(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """diffusers module -> CompVis module."""
    return {d: c for c, d in pairs}
