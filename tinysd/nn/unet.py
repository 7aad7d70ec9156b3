"""diffusers' `UNet2DConditionModel` (the SD 1.x subset), written against `ops`.

Everything is derived from `UNetConfig`: block types, widths, layers per
block, head counts (`cfg.heads(i)`; up block i uses the heads of down block
n-1-i, as diffusers reverses the list), linear or 1x1-conv projections in the
transformers, an optional mid block, an optional `time_cond_proj_dim`.

The sinusoidal timestep features are computed on the host in float32
(`timestep_features`) and enter the graph as an input, so that an integer
interpreter quantizes them like any other input.
"""
from __future__ import annotations

import math

import numpy as np

from ..config import UNetConfig
from ..errors import TinySDError
from .layers import (
    Attention,
    Conv2d,
    Downsample2D,
    GroupNorm,
    LayerNorm,
    Linear,
    Module,
    ResnetBlock2D,
    Upsample2D,
)


def timestep_batch(timesteps, batch: int) -> np.ndarray:
    """(batch,) float64 timesteps from a scalar or `batch` values; any other shape is a one-line error."""
    t = np.asarray(timesteps, dtype=np.float64)
    if t.ndim == 0:
        t = np.full((batch,), t)
    if t.shape != (batch,):
        raise TinySDError(f"timestep: expected a scalar or {batch} values, got shape {t.shape}")
    return t


def timestep_frequencies(dim: int, freq_shift: float) -> np.ndarray:
    """(dim//2,) float32 f_i = exp(-ln(10000) * i / (dim//2 - freq_shift)), computed in float32 as diffusers does."""
    half = dim // 2
    exponent = np.arange(half, dtype=np.float32) * np.float32(-math.log(10000.0))  # (half,)
    return np.exp(exponent / np.float32(half - freq_shift))


def timestep_features(timesteps, batch: int, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0) -> np.ndarray:
    """diffusers' `Timesteps(dim, flip_sin_to_cos, freq_shift)` in float32.

    timesteps: a scalar or an array of `batch` values (fractional allowed).
    Computes, in float32 as diffusers does, f_i = exp(-ln(10000) * i / (dim//2 - freq_shift))
    for i < dim//2 and e = t * f; returns (batch, dim) float32 [sin e, cos e]
    ([cos e, sin e] when `flip_sin_to_cos`), zero-padded by one column when dim is odd.
    """
    t = timestep_batch(timesteps, batch)
    freqs = timestep_frequencies(dim, freq_shift)  # (half,) float32
    emb = t.astype(np.float32)[:, None] * freqs[None, :]  # (B, half)
    sin, cos = np.sin(emb), np.cos(emb)
    out = np.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)  # (B, 2*half)
    if dim % 2:
        out = np.pad(out, ((0, 0), (0, 1)))
    return out.astype(np.float32)


def guidance_embedding(w, dim: int) -> np.ndarray:
    """diffusers' `get_guidance_scale_embedding(w, dim)` in float32: the `timestep_cond` input of a
    w-conditioned (LCM-distilled) UNet, whose `time_embedding.cond_proj` adds it to the timestep features.

    w: an array of B guidance weights (LCM pipelines pass guidance_scale - 1). Computes, in float32 as
    diffusers does, f_i = exp(-i * ln(10000) / (dim//2 - 1)) for i < dim//2 and e = (1000 w) * f;
    returns (B, dim) float32 [sin e, cos e], zero-padded by one column when dim is odd.
    """
    w = np.asarray(w, dtype=np.float32).reshape(-1) * np.float32(1000.0)  # (B,)
    half = dim // 2
    if half < 2:
        raise TinySDError(f"unet: time_cond_proj_dim={dim} is too small for a guidance embedding (at least 4)")
    step = np.float32(math.log(10000.0)) / np.float32(half - 1)
    freqs = np.exp(np.arange(half, dtype=np.float32) * -step)  # (half,) float32
    e = w[:, None] * freqs[None, :]  # (B, half)
    out = np.concatenate([np.sin(e), np.cos(e)], axis=-1)  # (B, 2*half)
    if dim % 2:
        out = np.pad(out, ((0, 0), (0, 1)))
    return out.astype(np.float32)


class BasicTransformerBlock(Module):
    """Self-attention, cross-attention, GEGLU feed-forward, each pre-LayerNorm with a residual."""

    def __init__(self, name: str, dim: int, heads: int, dim_head: int, context_dim: int, eps: float = 1e-5):
        super().__init__(name)
        self.norm1 = self.add(LayerNorm(self.sub("norm1"), dim, eps))
        self.attn1 = self.add(Attention(self.sub("attn1"), dim, heads, dim_head))
        self.norm2 = self.add(LayerNorm(self.sub("norm2"), dim, eps))
        self.attn2 = self.add(Attention(self.sub("attn2"), dim, heads, dim_head, context_dim=context_dim))
        self.norm3 = self.add(LayerNorm(self.sub("norm3"), dim, eps))
        self.ff_proj = self.add(Linear(self.sub("ff.net.0.proj"), dim, dim * 8))  # GEGLU: value and gate
        self.ff_out = self.add(Linear(self.sub("ff.net.2"), dim * 4, dim))

    def __call__(self, ops, x, context):
        h = self.attn1(ops, self.norm1(ops, x))  # (B, HW, dim)
        x = ops.add(x, h, self.sub("add1"))
        h = self.attn2(ops, self.norm2(ops, x), context)
        x = ops.add(x, h, self.sub("add2"))
        h = self.ff_proj(ops, self.norm3(ops, x))  # (B, HW, 8 dim)
        val, gate = ops.split(h, 2, axis=-1)  # 2 x (B, HW, 4 dim)
        gate = ops.gelu(gate, self.sub("ff.net.0.gelu"))
        h = ops.mul(val, gate, self.sub("ff.net.0.mul"))
        h = self.ff_out(ops, h)  # (B, HW, dim)
        return ops.add(x, h, self.sub("add3"))


class Transformer2DModel(Module):
    """GroupNorm, proj_in, transformer blocks over the H*W positions, proj_out, residual.

    `linear_proj`: proj_in/proj_out are Linear layers applied after flattening
    (use_linear_projection=True) instead of 1x1 convolutions before it.
    """

    def __init__(self, name: str, channels: int, heads: int, context_dim: int, groups: int, linear_proj: bool, layers: int = 1):
        super().__init__(name)
        dim_head = channels // heads
        inner = heads * dim_head
        self.linear_proj = linear_proj
        self.norm = self.add(GroupNorm(self.sub("norm"), groups, channels, 1e-6))
        if linear_proj:
            self.proj_in = self.add(Linear(self.sub("proj_in"), channels, inner))
        else:
            self.proj_in = self.add(Conv2d(self.sub("proj_in"), channels, inner, 1))
        self.blocks = [
            self.add(BasicTransformerBlock(self.sub(f"transformer_blocks.{i}"), inner, heads, dim_head, context_dim))
            for i in range(layers)
        ]
        if linear_proj:
            self.proj_out = self.add(Linear(self.sub("proj_out"), inner, channels))
        else:
            self.proj_out = self.add(Conv2d(self.sub("proj_out"), inner, channels, 1))

    def __call__(self, ops, x, context):
        B, C, H, W = x.shape
        h = self.norm(ops, x)
        if not self.linear_proj:
            h = self.proj_in(ops, h)  # (B, inner, H, W)
        inner = h.shape[1]
        h = ops.reshape(ops.transpose(h, (0, 2, 3, 1)), (B, H * W, inner))  # (B, HW, C)
        if self.linear_proj:
            h = self.proj_in(ops, h)  # (B, HW, inner)
            inner = h.shape[2]
        for blk in self.blocks:
            h = blk(ops, h, context)
        if self.linear_proj:
            h = self.proj_out(ops, h)  # (B, HW, C)
            h = ops.transpose(ops.reshape(h, (B, H, W, C)), (0, 3, 1, 2))  # (B, C, H, W)
        else:
            h = ops.transpose(ops.reshape(h, (B, H, W, inner)), (0, 3, 1, 2))  # (B, inner, H, W)
            h = self.proj_out(ops, h)  # (B, C, H, W)
        return ops.add(h, x, self.sub("add"))


def _transformer(name: str, ch: int, heads: int, cfg: UNetConfig) -> Transformer2DModel:
    return Transformer2DModel(name, ch, heads, cfg.cross_attention_dim, cfg.norm_num_groups, cfg.use_linear_projection, cfg.transformer_layers_per_block)


class DownBlock(Module):
    """`CrossAttnDownBlock2D` (heads given) or `DownBlock2D` (heads None).

    Returns the block output and the skip tensors it adds for the up path
    (one per resnet, plus the downsampler's output).
    """

    def __init__(self, name: str, in_ch: int, out_ch: int, temb: int, layers: int, heads: int | None, add_downsample: bool, cfg: UNetConfig):
        super().__init__(name)
        self.resnets, self.attentions = [], []
        for j in range(layers):
            r_in = in_ch if j == 0 else out_ch
            self.resnets.append(self.add(ResnetBlock2D(self.sub(f"resnets.{j}"), r_in, out_ch, temb, cfg.norm_num_groups, cfg.norm_eps)))
            if heads is not None:
                self.attentions.append(self.add(_transformer(self.sub(f"attentions.{j}"), out_ch, heads, cfg)))
        self.downsampler = self.add(Downsample2D(self.sub("downsamplers.0"), out_ch, cfg.downsample_padding)) if add_downsample else None

    def __call__(self, ops, x, temb_act, context):
        skips = []
        for j, resnet in enumerate(self.resnets):
            x = resnet(ops, x, temb_act)
            if self.attentions:
                x = self.attentions[j](ops, x, context)
            skips.append(x)
        if self.downsampler is not None:
            x = self.downsampler(ops, x)
            skips.append(x)
        return x, skips


class UpBlock(Module):
    """`CrossAttnUpBlock2D` (heads given) or `UpBlock2D` (heads None).

    Each resnet j takes concat([x, skip]) on channels, skips taken from the end
    of the stack; `skip_channels[j]` lists their widths.
    """

    def __init__(self, name: str, prev_ch: int, out_ch: int, skip_channels: list[int], temb: int, heads: int | None, add_upsample: bool, cfg: UNetConfig):
        super().__init__(name)
        self.resnets, self.attentions = [], []
        for j, skip_ch in enumerate(skip_channels):
            r_in = (prev_ch if j == 0 else out_ch) + skip_ch
            self.resnets.append(self.add(ResnetBlock2D(self.sub(f"resnets.{j}"), r_in, out_ch, temb, cfg.norm_num_groups, cfg.norm_eps)))
            if heads is not None:
                self.attentions.append(self.add(_transformer(self.sub(f"attentions.{j}"), out_ch, heads, cfg)))
        self.upsampler = self.add(Upsample2D(self.sub("upsamplers.0"), out_ch)) if add_upsample else None

    def __call__(self, ops, x, skips, temb_act, context):
        for j, resnet in enumerate(self.resnets):
            x = ops.concat([x, skips.pop()], axis=1, name=self.sub(f"resnets.{j}.concat"))  # (B, C + Cskip, H, W)
            x = resnet(ops, x, temb_act)
            if self.attentions:
                x = self.attentions[j](ops, x, context)
        if self.upsampler is not None:
            x = self.upsampler(ops, x)
        return x


class MidBlock(Module):
    """`UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet)."""

    def __init__(self, name: str, ch: int, temb: int, heads: int, cfg: UNetConfig):
        super().__init__(name)
        f = cfg.mid_block_scale_factor
        self.resnets = [self.add(ResnetBlock2D(self.sub("resnets.0"), ch, ch, temb, cfg.norm_num_groups, cfg.norm_eps, f))]
        self.attentions = [self.add(_transformer(self.sub("attentions.0"), ch, heads, cfg))]
        self.resnets.append(self.add(ResnetBlock2D(self.sub("resnets.1"), ch, ch, temb, cfg.norm_num_groups, cfg.norm_eps, f)))

    def __call__(self, ops, x, temb_act, context):
        x = self.resnets[0](ops, x, temb_act)
        x = self.attentions[0](ops, x, context)
        return self.resnets[1](ops, x, temb_act)


def _per_block(v, n: int, what: str) -> tuple:
    t = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(t) != n:
        raise TinySDError(f"unet config: {what} {list(t)} must have one entry per block ({n})")
    return t


class UNet2DConditionModel(Module):
    """The conditional UNet: eps (or v) prediction from a noisy latent, a timestep and text context."""

    def __init__(self, cfg: UNetConfig):
        super().__init__("")
        self.cfg = cfg
        ch = tuple(cfg.block_out_channels)
        n = len(ch)
        if not isinstance(cfg.cross_attention_dim, int):
            raise TinySDError(f"unet config: cross_attention_dim must be one integer, got {cfg.cross_attention_dim!r}")
        layers = _per_block(cfg.layers_per_block, n, "layers_per_block")
        heads = [cfg.heads(i) for i in range(n)]
        temb = ch[0] * 4

        self.conv_in = self.add(Conv2d("conv_in", cfg.in_channels, ch[0], 3, padding=1))
        self.cond_proj = self.add(Linear("time_embedding.cond_proj", cfg.time_cond_proj_dim, ch[0], bias=False)) if cfg.time_cond_proj_dim else None
        self.time_linear_1 = self.add(Linear("time_embedding.linear_1", ch[0], temb))
        self.time_linear_2 = self.add(Linear("time_embedding.linear_2", temb, temb))

        self.down_blocks = []
        skip_channels = [ch[0]]  # widths of the skip stack, conv_in first
        for i, btype in enumerate(cfg.down_block_types):
            in_ch = ch[0] if i == 0 else ch[i - 1]
            final = i == n - 1
            blk = DownBlock(f"down_blocks.{i}", in_ch, ch[i], temb, layers[i], heads[i] if btype == "CrossAttnDownBlock2D" else None, not final, cfg)
            self.down_blocks.append(self.add(blk))
            skip_channels += [ch[i]] * (layers[i] + (0 if final else 1))

        self.mid_block = self.add(MidBlock("mid_block", ch[-1], temb, heads[-1], cfg)) if cfg.mid_block_type else None

        self.up_blocks = []
        prev = ch[-1]
        for i, btype in enumerate(cfg.up_block_types):
            out_ch = ch[n - 1 - i]
            k = layers[n - 1 - i] + 1
            skips = [skip_channels.pop() for _ in range(k)]
            h = heads[n - 1 - i] if btype == "CrossAttnUpBlock2D" else None
            blk = UpBlock(f"up_blocks.{i}", prev, out_ch, skips, temb, h, i < n - 1, cfg)
            self.up_blocks.append(self.add(blk))
            prev = out_ch
        self.num_upsamplers = n - 1

        self.conv_norm_out = self.add(GroupNorm("conv_norm_out", cfg.norm_num_groups, ch[0], cfg.norm_eps))
        self.conv_out = self.add(Conv2d("conv_out", ch[0], cfg.out_channels, 3, padding=1))

    def check_inputs(self, sample_shape, temb_shape, context_shape, cond_shape=None) -> None:
        """Raise TinySDError unless the input shapes fit this UNet."""
        cfg = self.cfg
        if len(sample_shape) != 4 or sample_shape[1] != cfg.in_channels:
            raise TinySDError(f"unet: sample must be (batch, {cfg.in_channels}, height, width), got {tuple(sample_shape)}")
        B, _, H, W = sample_shape
        f = 2**self.num_upsamplers
        if H % f or W % f:
            raise TinySDError(f"unet: latent size {H}x{W} must be a multiple of {f} (image size a multiple of {8 * f} for SD)")
        if tuple(temb_shape) != (B, cfg.block_out_channels[0]):
            raise TinySDError(f"unet: timestep features must be ({B}, {cfg.block_out_channels[0]}), got {tuple(temb_shape)}")
        if len(context_shape) != 3 or context_shape[0] != B or context_shape[2] != cfg.cross_attention_dim:
            raise TinySDError(f"unet: context must be ({B}, tokens, {cfg.cross_attention_dim}), got {tuple(context_shape)}")
        if (cond_shape is None) != (self.cond_proj is None):
            want = "requires" if self.cond_proj is not None else "has no time_cond_proj_dim and takes no"
            raise TinySDError(f"unet: this model {want} timestep_cond")
        if cond_shape is not None and tuple(cond_shape) != (B, cfg.time_cond_proj_dim):
            raise TinySDError(f"unet: timestep_cond must be ({B}, {cfg.time_cond_proj_dim}), got {tuple(cond_shape)}")

    def __call__(self, ops, sample, temb_features, context, timestep_cond=None) -> np.ndarray:
        """UNet2DConditionModel(sample, t, context, timestep_cond).sample.

        sample (B, in_channels, H, W) float32, H and W multiples of 2**(blocks-1);
        temb_features (B, block_out_channels[0]) from `timestep_features`;
        context (B, T, cross_attention_dim); timestep_cond (B, time_cond_proj_dim)
        exactly when the config has time_cond_proj_dim.
        Returns float32 (B, out_channels, H, W).
        """
        self.check_inputs(np.shape(sample), np.shape(temb_features), np.shape(context), None if timestep_cond is None else np.shape(timestep_cond))
        x = ops.input(sample, "sample")
        tf = ops.input(temb_features, "time_proj")  # (B, C0)
        ctx = ops.input(context, "encoder_hidden_states")  # (B, T, Dc)

        if self.cond_proj is not None:
            cond = ops.input(timestep_cond, "timestep_cond")
            tf = ops.add(tf, self.cond_proj(ops, cond), "time_embedding.add_cond")
        emb = self.time_linear_1(ops, tf)  # (B, 4 C0)
        emb = ops.silu(emb, "time_embedding.act")
        emb = self.time_linear_2(ops, emb)  # (B, 4 C0)
        temb_act = ops.silu(emb, "time_embedding.resnet_act")  # the SiLU every resnet applies to temb

        x = self.conv_in(ops, x)
        skips = [x]
        for blk in self.down_blocks:
            x, s = blk(ops, x, temb_act, ctx)
            skips += s
        if self.mid_block is not None:
            x = self.mid_block(ops, x, temb_act, ctx)
        for blk in self.up_blocks:
            x = blk(ops, x, skips, temb_act, ctx)

        x = self.conv_norm_out(ops, x)
        x = ops.silu(x, "conv_act")
        x = self.conv_out(ops, x)
        return ops.output(x, "out")
