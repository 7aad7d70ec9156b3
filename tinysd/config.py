"""Network and scheduler configurations as frozen dataclasses.

Field names and defaults are those of diffusers' / transformers' `config.json`
files, so a config reads straight from a diffusers folder (`from_dict`) and
writes back in a form diffusers reads (`to_dict`). Keys we do not use are
ignored; keys whose value would change the architecture into something this
engine does not implement are refused with a `TinySDError`.

Every key a config reads is checked for type and range at load (`_types`:
integers are JSON integers, not booleans or floats; numbers are finite; sizes
lie in [1, MAX_SIZE], counts in [1, MAX_COUNT]), and then for consistency
(`validate`: GroupNorm groups divide every width, attention heads divide every
attention width, ...). A failure is one TinySDError naming the file, the key and
its value, e.g. `unet/config.json: norm_num_groups=0: must be an integer in [1, 1048576]`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TinySDError
from .fileio import read_text

MAX_SIZE = 1 << 20  # widths, channels, vocabulary, positions, sample sizes
MAX_COUNT = 1024  # layers, blocks
MAX_TIMESTEPS = 1_000_000  # training timesteps of a noise schedule
MAX_FACTOR = 1000.0  # scaling factors


def show(value) -> str:
    """A config value as it reads in config.json (null, true, "text", NaN, [8, 16])."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


class _Type:
    """A check of one config value: `rule` says what is allowed; `ok(value)` tests it."""

    def __init__(self, rule: str, ok, optional: bool = False):
        self.rule = rule + (" or null" if optional else "")
        self._ok, self.optional = ok, optional

    def ok(self, v) -> bool:
        return (self.optional and v is None) or self._ok(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _integer(lo: int = 1, hi: int = MAX_SIZE, optional: bool = False) -> _Type:
    return _Type(f"an integer in [{lo}, {hi}]", lambda v: _is_int(v) and lo <= v <= hi, optional)


def _number(lo: float, hi: float, hi_open: bool = False) -> _Type:
    """A finite number in (lo, hi], or (lo, hi) when hi_open."""
    def ok(v):
        if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v):
            return False
        return lo < v and (v < hi if hi_open else v <= hi)
    return _Type(f"a finite number in ({lo:g}, {hi:g}{')' if hi_open else ']'}", ok)


def _boolean() -> _Type:
    return _Type("true or false", lambda v: isinstance(v, bool))


def _string() -> _Type:
    return _Type("a string", lambda v: isinstance(v, str))


def _list(item: _Type, max_len: int = 16) -> _Type:
    return _Type(f"a list of 1 to {max_len} entries, each {item.rule}",
                 lambda v: isinstance(v, (list, tuple)) and 1 <= len(v) <= max_len and all(item.ok(x) for x in v))


def _integer_or_list(lo: int = 1, hi: int = MAX_SIZE, optional: bool = False) -> _Type:
    one, many = _integer(lo, hi), _list(_integer(lo, hi))
    return _Type(f"{one.rule}, or a list of them (one per block)", lambda v: one.ok(v) or many.ok(v), optional)

SD1_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
SD1_UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
SD1_MID_BLOCKS = ("UNetMidBlock2DCrossAttn", None)


def _tuple(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _same(v, allowed) -> bool:
    """v equals an allowed value of the same kind (0 is not false, 1.0 is 1)."""
    if isinstance(allowed, bool) or allowed is None or isinstance(v, bool) or v is None:
        return v is allowed
    if isinstance(v, (int, float)) and isinstance(allowed, (int, float)):
        return v == allowed
    return isinstance(v, str) and v == allowed


class _Config:
    """Shared dict/JSON conversion; subclasses list their `_refuse` rules and `_types` checks."""

    # key -> allowed values; any other value in a config.json is refused
    _refuse: dict[str, tuple] = {}
    # key -> type and range of its value (every field the engine reads)
    _types: dict[str, _Type] = {}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config"):
        for key, allowed in cls._refuse.items():
            if key in d and not any(_same(d[key], a) for a in allowed):
                raise TinySDError(f"{source}: {key}={show(d[key])} is not supported (supported: "
                                  f"{', '.join(show(a) for a in allowed)})")
        for key, t in cls._types.items():
            if key in d and not t.ok(d[key]):
                raise TinySDError(f"{source}: {key}={show(d[key])}: must be {t.rule}")
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
    _types = {
        "vocab_size": _integer(), "hidden_size": _integer(), "intermediate_size": _integer(),
        "num_hidden_layers": _integer(1, MAX_COUNT), "num_attention_heads": _integer(),
        "max_position_embeddings": _integer(), "layer_norm_eps": _number(0, 1, hi_open=True),
        # not used by tinysd (its tokenizer has its own), but checked like every other key
        "bos_token_id": _integer(0, MAX_SIZE, optional=True), "eos_token_id": _integer(0, MAX_SIZE, optional=True),
        "pad_token_id": _integer(0, MAX_SIZE, optional=True),
    }

    def validate(self, source):
        if self.hidden_size % self.num_attention_heads:
            raise TinySDError(f"{source}: num_attention_heads={self.num_attention_heads}: does not divide "
                              f"hidden_size {self.hidden_size}")


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
    _types = {
        "sample_size": _integer(), "in_channels": _integer(), "out_channels": _integer(),
        "flip_sin_to_cos": _boolean(), "freq_shift": _integer(0, MAX_SIZE),
        "down_block_types": _list(_string()), "up_block_types": _list(_string()),
        "block_out_channels": _list(_integer()), "layers_per_block": _integer_or_list(1, MAX_COUNT),
        "downsample_padding": _integer(0, 1), "mid_block_scale_factor": _number(0, MAX_FACTOR),
        "norm_num_groups": _integer(), "norm_eps": _number(0, 1, hi_open=True), "cross_attention_dim": _integer(),
        "attention_head_dim": _integer_or_list(optional=True), "num_attention_heads": _integer_or_list(optional=True),
        "use_linear_projection": _boolean(), "time_cond_proj_dim": _integer(optional=True),
    }  # act_fn, mid_block_type, transformer_layers_per_block: `_refuse` allows their SD 1.x values only

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
        for key in ("attention_head_dim", "num_attention_heads", "layers_per_block"):
            v = getattr(self, key)
            if isinstance(v, tuple) and len(v) != n:
                raise TinySDError(f"{source}: {key}={show(list(v))}: must have one entry per block ({n})")
        if self.num_attention_heads is None and self.attention_head_dim is None:
            raise TinySDError(f"{source}: attention_head_dim=null: the number of heads must be given "
                              f"(attention_head_dim or num_attention_heads)")
        _check_groups(source, "norm_num_groups", self.norm_num_groups, self.block_out_channels)
        key = "num_attention_heads" if self.num_attention_heads is not None else "attention_head_dim"
        for i, width in self.attention_widths():
            if width % self.heads(i):
                raise TinySDError(f"{source}: {key}={show(_list_or(getattr(self, key)))}: {self.heads(i)} heads do "
                                  f"not divide the attention width {width} of block {i}")
        half = self.block_out_channels[0] // 2
        if self.freq_shift >= half:
            raise TinySDError(f"{source}: freq_shift={self.freq_shift}: must be less than half the first block "
                              f"width ({half}); the timestep frequencies divide by their difference")

    def attention_widths(self) -> list[tuple[int, int]]:
        """(block index whose heads apply, width) of every block with attention (down, up and mid)."""
        n = len(self.block_out_channels)
        out = [(i, self.block_out_channels[i]) for i, t in enumerate(self.down_block_types) if t.startswith("CrossAttn")]
        out += [(n - 1 - i, self.block_out_channels[n - 1 - i]) for i, t in enumerate(self.up_block_types)
                if t.startswith("CrossAttn")]
        if self.mid_block_type:
            out.append((n - 1, self.block_out_channels[-1]))
        return out


def _list_or(v):
    return list(v) if isinstance(v, tuple) else v


def _check_groups(source: str, key: str, groups: int, widths) -> None:
    bad = [w for w in widths if w % groups]
    if bad:
        raise TinySDError(f"{source}: {key}={groups}: does not divide the block width(s) {bad} "
                          f"(GroupNorm needs whole groups)")


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
    _types = {
        "in_channels": _integer(), "out_channels": _integer(), "latent_channels": _integer(),
        "down_block_types": _list(_string()), "up_block_types": _list(_string()),
        "block_out_channels": _list(_integer()), "layers_per_block": _integer(1, MAX_COUNT),
        "norm_num_groups": _integer(), "sample_size": _integer(), "scaling_factor": _number(0, MAX_FACTOR),
        "mid_block_add_attention": _boolean(),
    }

    def validate(self, source):
        if any(t != "DownEncoderBlock2D" for t in self.down_block_types) or any(t != "UpDecoderBlock2D" for t in self.up_block_types):
            raise TinySDError(f"{source}: only DownEncoderBlock2D / UpDecoderBlock2D VAE blocks are supported")
        if len(self.down_block_types) != len(self.block_out_channels) or len(self.up_block_types) != len(self.block_out_channels):
            raise TinySDError(f"{source}: down_block_types, up_block_types and block_out_channels must have the same length")
        _check_groups(source, "norm_num_groups", self.norm_num_groups, self.block_out_channels)


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
    original_inference_steps: int = 50  # LCM: size of the distillation timestep grid
    timestep_scaling: float = 10.0  # LCM: timestep scale of the consistency boundary condition

    _refuse = {
        "beta_schedule": ("scaled_linear", "linear"),
        "prediction_type": ("epsilon", "v_prediction"),
        "timestep_spacing": ("leading", "trailing", "linspace"),
        # diffusers options that change the schedule or the step; tinysd implements their SD 1.x values only
        "trained_betas": (None,),
        "clip_sample": (False,),
        "thresholding": (False,),
        "rescale_betas_zero_snr": (False,),
    }
    _types = {
        "num_train_timesteps": _integer(2, MAX_TIMESTEPS), "beta_start": _number(0, 1, hi_open=True),
        "beta_end": _number(0, 1, hi_open=True),
        "steps_offset": _integer(0, MAX_TIMESTEPS), "set_alpha_to_one": _boolean(),
        "original_inference_steps": _integer(1, MAX_TIMESTEPS), "timestep_scaling": _number(0, MAX_FACTOR),
    }

    def validate(self, source):
        if self.steps_offset >= self.num_train_timesteps:
            raise TinySDError(f"{source}: steps_offset={self.steps_offset}: must be less than num_train_timesteps "
                              f"({self.num_train_timesteps})")


@dataclass(frozen=True)
class ModelConfig:
    """The configs of a whole SD 1.x model (one per network plus the schedule)."""

    text_encoder: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
