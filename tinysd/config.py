"""Network and scheduler configurations as frozen dataclasses.

Field names and defaults are those of diffusers' / transformers' `config.json`
files, so a config reads straight from a diffusers folder (`from_dict`) and
writes back in a form diffusers reads (`to_dict`). Keys we do not use are
ignored; keys whose value would change the architecture into something this
engine does not implement are refused with a `TinySDError`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TinySDError
from .fileio import read_text

SD1_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
SD1_UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
SD1_MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)


def _tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


class _Config:
    """Shared dict/JSON conversion; subclasses list their `_refuse` rules."""

    # key -> allowed values; any other value in a config.json is refused
    _refuse: dict[str, tuple] = {}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config"):
        for key, allowed in cls._refuse.items():
            if key in d and d[key] not in allowed:
                raise TinySDError(f"{source}: {key}={d[key]!r} is not supported (supported: {list(allowed)})")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: _tuple(v) for k, v in d.items() if k in names}
        try:
            cfg = cls(**kwargs)
        except TypeError as e:
            raise TinySDError(f"{source}: {e}") from None
        cfg.validate(source)
        return cfg

    @classmethod
    def from_json(cls, path: str | Path):
        path = Path(path)
        try:
            d = json.loads(read_text(path))
        except (OSError, ValueError) as e:
            raise TinySDError(f"{path}: cannot read config ({e})") from None
        if not isinstance(d, dict):
            raise TinySDError(f"{path}: config is not a JSON object")
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def validate(self, source: str) -> None:  # overridden where needed
        pass


@dataclass(frozen=True)
class CLIPTextConfig(_Config):
    """transformers' CLIPTextConfig, the fields the text encoder uses."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407

    _refuse = {"hidden_act": ("quick_gelu", "gelu")}

    def validate(self, source):
        if self.hidden_size % self.num_attention_heads:
            raise TinySDError(f"{source}: hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")


@dataclass(frozen=True)
class UNetConfig(_Config):
    """diffusers' UNet2DConditionModel config, the SD 1.x subset.

    Note diffusers' naming quirk, kept for compatibility: in SD 1.x configs
    `attention_head_dim` holds the number of heads (8 for SD 1.5), unless
    `num_attention_heads` is given. Use `heads(i)` rather than either field.
    """

    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    block_out_channels: tuple = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 768
    attention_head_dim: Any = 8  # int or tuple, one per block
    num_attention_heads: Any = None  # int or tuple; overrides attention_head_dim
    use_linear_projection: bool = False
    time_cond_proj_dim: int | None = None
    transformer_layers_per_block: int = 1

    _refuse = {
        "act_fn": ("silu",),
        "center_input_sample": (False,),
        "only_cross_attention": (False,),
        "dual_cross_attention": (False,),
        "upcast_attention": (False, None),
        "resnet_time_scale_shift": ("default",),
        "class_embed_type": (None,),
        "addition_embed_type": (None,),
        "encoder_hid_dim": (None,),
        "time_embedding_type": ("positional",),
        "conv_in_kernel": (3,),
        "conv_out_kernel": (3,),
        "transformer_layers_per_block": (1,),
        "mid_block_type": SD1_MID_BLOCKS,
        # further diffusers options that change the graph; only their SD 1.x values are implemented
        "time_embedding_act_fn": (None,),
        "timestep_post_act": (None,),
        "time_embedding_dim": (None,),
        "resnet_out_scale_factor": (1.0,),
        "resnet_skip_time_act": (False,),
        "cross_attention_norm": (None,),
        "attention_type": ("default",),
        "encoder_hid_dim_type": (None,),
        "num_class_embeds": (None,),
        "class_embeddings_concat": (False,),
        "mid_block_only_cross_attention": (None, False),
        "reverse_transformer_layers_per_block": (None,),
    }

    def heads(self, block: int) -> int:
        """Number of attention heads in down block `block` (mid block: last)."""
        v = self.num_attention_heads if self.num_attention_heads is not None else self.attention_head_dim
        return v[block] if isinstance(v, tuple) else v

    def validate(self, source):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise TinySDError(f"{source}: down_block_types, up_block_types and block_out_channels must have the same length")
        for t in self.down_block_types:
            if t not in SD1_DOWN_BLOCKS:
                raise TinySDError(f"{source}: down block type {t!r} is not supported (supported: {list(SD1_DOWN_BLOCKS)})")
        for t in self.up_block_types:
            if t not in SD1_UP_BLOCKS:
                raise TinySDError(f"{source}: up block type {t!r} is not supported (supported: {list(SD1_UP_BLOCKS)})")
        for v in (self.attention_head_dim, self.num_attention_heads):
            if isinstance(v, tuple) and len(v) != n:
                raise TinySDError(f"{source}: attention head list {list(v)} must have one entry per block ({n})")


@dataclass(frozen=True)
class VAEConfig(_Config):
    """diffusers' AutoencoderKL config."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    down_block_types: tuple = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215
    mid_block_add_attention: bool = True

    _refuse = {
        "act_fn": ("silu",),
        "shift_factor": (None, 0, 0.0),
        "use_quant_conv": (True,),
        "use_post_quant_conv": (True,),
        "force_upcast": (True, False),
    }

    def validate(self, source):
        if any(t != "DownEncoderBlock2D" for t in self.down_block_types) or any(t != "UpDecoderBlock2D" for t in self.up_block_types):
            raise TinySDError(f"{source}: only DownEncoderBlock2D / UpDecoderBlock2D VAE blocks are supported")
        if len(self.down_block_types) != len(self.block_out_channels):
            raise TinySDError(f"{source}: down_block_types and block_out_channels must have the same length")


@dataclass(frozen=True)
class SchedulerConfig(_Config):
    """The noise schedule of diffusers' scheduler_config.json (SD 1.x values)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    steps_offset: int = 1
    timestep_spacing: str = "leading"
    set_alpha_to_one: bool = False  # DDIM: abar before the first training step is 1.0 (True) or abar[0] (SD 1.x: False)

    _refuse = {
        "beta_schedule": ("scaled_linear", "linear"),
        "prediction_type": ("epsilon", "v_prediction"),
        "timestep_spacing": ("leading", "trailing", "linspace"),
    }


@dataclass(frozen=True)
class ModelConfig:
    """The configs of a whole SD 1.x model (one per network plus the schedule)."""

    text_encoder: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
