"""diffusers' `AutoencoderKL` (encoder to the latent mean, decoder), written against `ops`.

No scaling factor is applied here: `encode` returns `latent_dist.mean` and
`decode` takes the unscaled latent, exactly as diffusers' `encode` / `decode`.
Mid-block attention uses diffusers' current names (`to_q`, `to_k`, `to_v`,
`to_out.0`, `group_norm`); the checkpoint loader maps legacy names to these.
"""
from __future__ import annotations

import numpy as np

from ..config import VAEConfig
from ..errors import TinySDError
from .layers import Attention, Conv2d, Downsample2D, GroupNorm, Module, ResnetBlock2D, Upsample2D

EPS = 1e-6  # diffusers hard-codes this eps for every VAE norm


class VAEAttention(Module):
    """Single-head spatial self-attention with a residual: x + to_out(attn(group_norm(x)))."""

    def __init__(self, name: str, ch: int, groups: int):
        super().__init__(name)
        self.group_norm = self.add(GroupNorm(self.sub("group_norm"), groups, ch, EPS))
        self.attn = Attention(name, ch, heads=1, dim_head=ch, qkv_bias=True)
        self.add(self.attn)

    def __call__(self, ops, x):
        B, C, H, W = x.shape
        h = self.group_norm(ops, x)
        h = ops.transpose(ops.reshape(h, (B, C, H * W)), (0, 2, 1))  # (B, HW, C)
        h = self.attn(ops, h)  # (B, HW, C)
        h = ops.reshape(ops.transpose(h, (0, 2, 1)), (B, C, H, W))  # (B, C, H, W)
        return ops.add(h, x, self.sub("add"))


class VAEMidBlock(Module):
    """`UNetMidBlock2D` without time embedding: resnet, [attention], resnet."""

    def __init__(self, name: str, ch: int, groups: int, attention: bool):
        super().__init__(name)
        self.resnet0 = self.add(ResnetBlock2D(self.sub("resnets.0"), ch, ch, None, groups, EPS))
        self.attn = self.add(VAEAttention(self.sub("attentions.0"), ch, groups)) if attention else None
        self.resnet1 = self.add(ResnetBlock2D(self.sub("resnets.1"), ch, ch, None, groups, EPS))

    def __call__(self, ops, x):
        x = self.resnet0(ops, x)
        if self.attn is not None:
            x = self.attn(ops, x)
        return self.resnet1(ops, x)


class Encoder(Module):
    """Image (B, in_channels, H, W) -> moments (B, 2 latent_channels, H/f, W/f)."""

    def __init__(self, name: str, cfg: VAEConfig):
        super().__init__(name)
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = self.add(Conv2d(self.sub("conv_in"), cfg.in_channels, ch[0], 3, padding=1))
        self.stages = []  # (resnets, downsampler or None) per down block
        for i in range(n):
            in_ch = ch[0] if i == 0 else ch[i - 1]
            resnets = [
                self.add(ResnetBlock2D(self.sub(f"down_blocks.{i}.resnets.{j}"), in_ch if j == 0 else ch[i], ch[i], None, g, EPS))
                for j in range(cfg.layers_per_block)
            ]
            down = self.add(Downsample2D(self.sub(f"down_blocks.{i}.downsamplers.0"), ch[i], padding=0)) if i < n - 1 else None
            self.stages.append((resnets, down))
        self.mid_block = self.add(VAEMidBlock(self.sub("mid_block"), ch[-1], g, cfg.mid_block_add_attention))
        self.conv_norm_out = self.add(GroupNorm(self.sub("conv_norm_out"), g, ch[-1], EPS))
        self.conv_out = self.add(Conv2d(self.sub("conv_out"), ch[-1], 2 * cfg.latent_channels, 3, padding=1))

    def __call__(self, ops, x):
        x = self.conv_in(ops, x)
        for resnets, down in self.stages:
            for r in resnets:
                x = r(ops, x)
            if down is not None:
                x = down(ops, x)
        x = self.mid_block(ops, x)
        x = self.conv_norm_out(ops, x)
        x = ops.silu(x, self.sub("conv_act"))
        return self.conv_out(ops, x)


class Decoder(Module):
    """Latent (B, latent_channels, h, w) -> image (B, out_channels, h*f, w*f)."""

    def __init__(self, name: str, cfg: VAEConfig):
        super().__init__(name)
        ch, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        rch = list(reversed(ch))
        self.conv_in = self.add(Conv2d(self.sub("conv_in"), cfg.latent_channels, ch[-1], 3, padding=1))
        self.mid_block = self.add(VAEMidBlock(self.sub("mid_block"), ch[-1], g, cfg.mid_block_add_attention))
        self.stages = []  # (resnets, upsampler or None) per up block
        prev = rch[0]
        for i in range(n):
            out_ch = rch[i]
            resnets = [
                self.add(ResnetBlock2D(self.sub(f"up_blocks.{i}.resnets.{j}"), prev if j == 0 else out_ch, out_ch, None, g, EPS))
                for j in range(cfg.layers_per_block + 1)
            ]
            up = self.add(Upsample2D(self.sub(f"up_blocks.{i}.upsamplers.0"), out_ch)) if i < n - 1 else None
            self.stages.append((resnets, up))
            prev = out_ch
        self.conv_norm_out = self.add(GroupNorm(self.sub("conv_norm_out"), g, ch[0], EPS))
        self.conv_out = self.add(Conv2d(self.sub("conv_out"), ch[0], cfg.out_channels, 3, padding=1))

    def __call__(self, ops, z):
        x = self.conv_in(ops, z)
        x = self.mid_block(ops, x)
        for resnets, up in self.stages:
            for r in resnets:
                x = r(ops, x)
            if up is not None:
                x = up(ops, x)
        x = self.conv_norm_out(ops, x)
        x = ops.silu(x, self.sub("conv_act"))
        return self.conv_out(ops, x)


class AutoencoderKL(Module):
    """diffusers' `AutoencoderKL`: `encode` -> latent_dist.mean, `decode` -> image (no scaling inside)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__("")
        self.cfg = cfg
        L = cfg.latent_channels
        self.encoder = self.add(Encoder("encoder", cfg))
        self.quant_conv = self.add(Conv2d("quant_conv", 2 * L, 2 * L, 1))
        self.post_quant_conv = self.add(Conv2d("post_quant_conv", L, L, 1))
        self.decoder = self.add(Decoder("decoder", cfg))

    def encode(self, ops, x) -> np.ndarray:
        """Image x (B, in_channels, H, W) float32 (SD: values in [-1, 1]) -> latent mean
        (B, latent_channels, H // f, W // f) float32, f = 2**(blocks-1)."""
        shape = np.shape(x)
        if len(shape) != 4 or shape[1] != self.cfg.in_channels:
            raise TinySDError(f"vae.encode: image must be (batch, {self.cfg.in_channels}, height, width), got {tuple(shape)}")
        h = self.encoder(ops, ops.input(x, "image"))
        moments = self.quant_conv(ops, h)  # (B, 2L, h, w)
        mean, _logvar = ops.split(moments, 2, axis=1)  # 2 x (B, L, h, w)
        return ops.output(mean, "latent_mean")

    def encode_moments(self, ops, x) -> np.ndarray:
        """Image x as in `encode` -> moments (B, 2 latent_channels, H // f, W // f) float32: the latent
        distribution's mean (first half of axis 1) and log variance (second half), unclamped."""
        shape, c = np.shape(x), self.cfg.in_channels
        if len(shape) != 4 or shape[1] != c:
            raise TinySDError(f"vae.encode: image must be (batch, {c}, height, width), got {tuple(shape)}")
        h = self.encoder(ops, ops.input(x, "image"))
        return ops.output(self.quant_conv(ops, h), "latent_moments")  # (B, 2L, h, w)

    def decode(self, ops, z) -> np.ndarray:
        """Latent z (B, latent_channels, h, w) float32, unscaled -> image (B, out_channels, h*f, w*f) float32."""
        shape = np.shape(z)
        if len(shape) != 4 or shape[1] != self.cfg.latent_channels:
            raise TinySDError(f"vae.decode: latent must be (batch, {self.cfg.latent_channels}, height, width), got {tuple(shape)}")
        z = self.post_quant_conv(ops, ops.input(z, "latent"))
        return ops.output(self.decoder(ops, z), "image")
