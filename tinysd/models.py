"""Runtime wrappers: a network definition bound to an interpreter, with the public call signatures.

    h = TextEncoder(model, interp)(ids)              # float32 (B, T, D)
    eps = UNet(model, interp)(sample, t, h)          # float32, like sample
    m = VAE(model, interp).encode(x); x = VAE(...).decode(z)

The interpreter is passed in, so the float one (`tinysd.interp.float`) and an
integer one run the same definitions. `from_params` builds the float version
from a config and a parameter dict.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import TinySDError
from .nn.clip import CLIPTextModel
from .nn.unet import UNet2DConditionModel, timestep_features
from .nn.vae import AutoencoderKL


def check_params(model, params: Mapping[str, np.ndarray], network: str) -> None:
    """TinySDError unless `params` has every parameter `model` declares, with its shape."""
    for name, shape in model.param_shapes().items():
        if name not in params:
            raise TinySDError(f"{network}: missing parameter {name}")
        got = tuple(np.shape(params[name]))
        if got != shape:
            raise TinySDError(f"{network}: parameter {name} has shape {got}, expected {shape}")


class _Network:
    """A network definition (`model_class(cfg)`) bound to an interpreter."""

    network: str
    model_class: type

    def __init__(self, model, interp):
        self.model, self.interp = model, interp

    @classmethod
    def from_params(cls, cfg, params: Mapping[str, np.ndarray]):
        """The float32 network of config `cfg` over `params` (names and shapes checked)."""
        from .interp.float import FloatInterpreter

        model = cls.model_class(cfg)
        check_params(model, params, cls.network)
        return cls(model, FloatInterpreter(params, cls.network, conv_winograd=True))

    @property
    def config(self):
        return self.model.cfg


class TextEncoder(_Network):
    """CLIP text encoder: token ids (B, T) -> float32 (B, T, hidden_size)."""

    network = "text_encoder"
    model_class = CLIPTextModel

    def __call__(self, ids, clip_skip: int | None = None) -> np.ndarray:
        """transformers' `last_hidden_state`; `clip_skip` as in `CLIPTextModel.__call__`."""
        return self.model(self.interp, ids, clip_skip=clip_skip)


class UNet(_Network):
    """Conditional UNet: (sample, t, context[, timestep_cond]) -> float32 model output like `sample`."""

    network = "unet"
    model_class = UNet2DConditionModel

    def __call__(self, sample, t, context, timestep_cond=None) -> np.ndarray:
        """diffusers' `UNet2DConditionModel(sample, t, encoder_hidden_states=context,
        timestep_cond=timestep_cond).sample`; t is a scalar or one value per batch item."""
        sample = np.asarray(sample, dtype=np.float32)
        if sample.ndim != 4:
            raise TinySDError(f"unet: sample must be (batch, channels, height, width), got shape {sample.shape}")
        cfg = self.model.cfg
        # an integer interpreter computes them as its device graph does (tinysd.interp.parts.TIME_PARTS)
        features = getattr(self.interp, "timestep_features", timestep_features)
        feats = features(t, sample.shape[0], cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        return self.model(self.interp, sample, feats, context, timestep_cond)


class VAE(_Network):
    """AutoencoderKL: `encode(x)` -> latent mean, `decode(z)` -> image; no scaling inside."""

    network = "vae"
    model_class = AutoencoderKL

    @property
    def scaling_factor(self) -> float:
        return self.model.cfg.scaling_factor

    def encode(self, x) -> np.ndarray:
        """`AutoencoderKL.encode(x).latent_dist.mean`, float32."""
        return self.model.encode(self.interp, x)

    def encode_moments(self, x) -> np.ndarray:
        """`AutoencoderKL.encode(x).latent_dist.parameters` (mean, logvar), float32 (B, 2 latent_channels, h, w)."""
        return self.model.encode_moments(self.interp, x)

    def decode(self, z) -> np.ndarray:
        """`AutoencoderKL.decode(z).sample`, float32."""
        return self.model.decode(self.interp, z)
