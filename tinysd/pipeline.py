"""Text to image: tokenizer -> text encoder -> sampler loop over the UNet -> VAE decoder.

    pipe = Pipeline.from_pretrained(path)      # diffusers folder or single .safetensors; None = shipped model
    img = pipe("a red circle", steps=20, seed=0)

The sampler loop (as diffusers' StableDiffusionPipeline):

    latents = noise * init_noise_sigma                       noise: NoiseSource(seed, batch), float64
    for i, t in enumerate(timesteps):
        x = scale_model_input(latents, i)                    float64 -> float32 UNet input
        eps_u, eps_c = unet([x, x], t, [ctx_neg, ctx_pos])   one UNet call on 2B samples
        eps = eps_u + guidance_scale * (eps_c - eps_u)       float64
        latents = step(eps, i, latents[, noise]).prev_sample
    image = vae.decode(latents / scaling_factor)             one image at a time

Classifier-free guidance is on when guidance_scale > 1 (diffusers' rule);
otherwise the UNet sees only the prompt. A w-conditioned UNet (config
`time_cond_proj_dim`, LCM-distilled models) is never run with classifier-free
guidance: as in diffusers it sees only the prompt, and `timestep_cond` =
guidance_embedding(guidance_scale - 1) carries the guidance.

Steps, sampler and guidance scale left unset (None) take the model folder's own
defaults (`tinysd.defaults`: e.g. lcm, 4 steps for an LCM-distilled model),
else euler, 20 steps, 7.5. The negative prompt ("" by default)
is the unconditional text.

Precisions: `Pipeline.from_pretrained(path, precision=...)` builds the three
networks with the engine registered for that precision (`register_precision`).
"fp32" is the float32 NumPy engine; the quantized engine registers its own.

Low memory: `Pipeline.from_pretrained(path, low_memory=True)` (what `tinysd generate` uses) reads each
network's weights when it is first needed and drops them after use (`tinysd.offload`): the text encoder
before the sampler loop, the UNet before the VAE decoder, the VAE after decoding; the images are the
same. For fp32 and quantized folders; a float model quantized on the fly is loaded whole.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .config import ModelConfig
from .defaults import GenerationDefaults
from .errors import TinySDError
from .memory import check_generation_memory
from .offload import LazyNetwork, release
from .paths import DEFAULT_MODEL_DIR, TOKENIZER_DIR
from .png import GenerationParams, file_sha256_prefix
from .nn.unet import guidance_embedding
from .runstats import NO_STATS
from .schedulers import SAMPLERS, NoiseSource, make_scheduler

log = logging.getLogger(__name__)

# precision name -> factory(loaded_model, **options) -> (text_encoder, unet, vae)
EngineFactory = Callable[..., tuple]
_ENGINES: dict[str, EngineFactory] = {}


def register_precision(name: str, factory: EngineFactory) -> None:
    """Make `Pipeline.from_pretrained(..., precision=name)` build its networks with `factory`.

    `factory(loaded: tinysd.checkpoint.LoadedModel, **options)` returns
    (text_encoder, unet, vae) objects with the call signatures of
    tinysd.models.TextEncoder / UNet / VAE.
    """
    _ENGINES[name] = factory


def _fp32_engine(loaded, **options):
    """float32 NumPy networks (tinysd.interp.float)."""
    if options:
        raise TinySDError(f"precision fp32 takes no options (got {', '.join(sorted(options))})")
    from .models import VAE, TextEncoder, UNet

    cfg = loaded.config
    return (
        TextEncoder.from_params(cfg.text_encoder, loaded.params["text_encoder"]),
        UNet.from_params(cfg.unet, loaded.params["unet"]),
        VAE.from_params(cfg.vae, loaded.params["vae"]),
    )


register_precision("fp32", _fp32_engine)


def _load_fp32_network(path: Path, config: ModelConfig, network: str):
    """One float32 network of the checkpoint at `path` (low memory: only its weights are read)."""
    from .checkpoint import load_checkpoint
    from .models import VAE, TextEncoder, UNet

    cls = {"text_encoder": TextEncoder, "unet": UNet, "vae": VAE}[network]
    loaded = load_checkpoint(path, config=config, networks=(network,))
    return cls.from_params(getattr(config, network), loaded.params[network])


def _load_integer_network(path: Path, precision: str | None, network: str, cache_weights: bool):
    """One integer network of the quantized folder at `path` (low memory: only its arrays are read)."""
    from .quant.engine import build_integer_network
    from .quant.folder import load_quantized

    from .memory import LOW_MEMORY_ATTENTION_TILE_ELEMENTS

    net = build_integer_network(load_quantized(path, precision=precision, networks=(network,)), network,
                                cache_weights=cache_weights)
    # smaller attention tiles: the same integers (rows are independent), less working memory
    net.interp.attention_tile_elements = min(net.interp.attention_tile_elements, LOW_MEMORY_ATTENTION_TILE_ELEMENTS)
    return net


def _register_builtin() -> None:
    """Import the quantized engine, which registers "w8a8" and "w8a16" (kept lazy: it pulls in the kernels)."""
    from .quant import engine  # noqa: F401


def precisions() -> tuple[str, ...]:
    _register_builtin()
    return tuple(_ENGINES)


def engine_for(precision: str) -> EngineFactory:
    """The engine factory of `precision`: a registered name, or a per-network integer precision
    such as "w8a8,vae=w8a16" (`tinysd.quant.model.network_precisions`); TinySDError otherwise."""
    if precision not in _ENGINES:
        _register_builtin()
    if precision in _ENGINES:
        return _ENGINES[precision]
    if isinstance(precision, str) and "," in precision:
        from .quant.engine import factory_for

        return factory_for(precision)
    raise TinySDError(f"precision {precision!r} is not available (available: {', '.join(_ENGINES)}, "
                      f"or per network, e.g. w8a8,vae=w8a16)")


def default_model_path() -> Path:
    """The shipped model folder; TinySDError saying how to pass a checkpoint if it is not there."""
    if not DEFAULT_MODEL_DIR.is_dir():
        raise TinySDError(
            f"the default model {DEFAULT_MODEL_DIR} is not installed; pass a checkpoint "
            "(a diffusers folder or an SD 1.x .safetensors file) with --model PATH / from_pretrained(path)")
    return DEFAULT_MODEL_DIR


MAX_GUIDANCE = 100.0  # |cfg| beyond this only amplifies the UNet's noise into overflow


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_generation_args(*, prompt="", negative_prompt="", steps=20, guidance_scale=7.5, seed=0, sampler="euler",
                          width=None, height=None, karras=False, clip_skip=None, batch_size=1) -> None:
    """Model-independent checks of generation arguments (TinySDError naming the option).

    The CLI calls this before loading a model so that bad options fail at once.
    """
    if not isinstance(prompt, str):
        raise TinySDError("prompt must be a string")
    if not isinstance(negative_prompt, str):
        raise TinySDError("negative prompt must be a string")
    if not _is_int(steps) or steps < 1:
        raise TinySDError(f"steps must be an integer >= 1 (got {steps!r})")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float, np.floating, np.integer)) \
            or not np.isfinite(guidance_scale) or abs(guidance_scale) > MAX_GUIDANCE:
        raise TinySDError(f"guidance scale (cfg) must be a finite number in [-{MAX_GUIDANCE:g}, {MAX_GUIDANCE:g}] "
                          f"(got {guidance_scale!r})")
    if not _is_int(seed) or seed < 0:
        raise TinySDError(f"seed must be an integer >= 0 (got {seed!r})")
    if sampler not in SAMPLERS:
        raise TinySDError(f"sampler {sampler!r} is unknown (choose from {', '.join(SAMPLERS)})")
    if karras and sampler in ("ddim", "lcm"):
        raise TinySDError(f"sampler {sampler}: Karras sigmas are not available for this sampler")
    for name, v in (("width", width), ("height", height)):
        if v is None:
            continue
        if not _is_int(v) or v < 8 or v % 8:
            raise TinySDError(f"{name} must be a positive multiple of 8 (got {v!r})")
    if clip_skip is not None and (not _is_int(clip_skip) or clip_skip < 0):
        raise TinySDError(f"clip skip must be an integer >= 0 (got {clip_skip!r})")
    if not _is_int(batch_size) or batch_size < 1:
        raise TinySDError(f"batch size must be an integer >= 1 (got {batch_size!r})")


def latents_to_images(decoded: np.ndarray) -> list:
    """VAE output (B, 3, H, W) in [-1, 1] -> PIL RGB images: round(clip(x / 2 + 0.5, 0, 1) * 255)."""
    from PIL import Image

    x = np.clip(decoded.astype(np.float32) / 2 + 0.5, 0.0, 1.0)
    x = np.round(x * 255).astype(np.uint8).transpose(0, 2, 3, 1)  # (B, H, W, 3)
    return [Image.fromarray(a, mode="RGB") for a in x]


def _finite(a: np.ndarray, what: str) -> np.ndarray:
    """`a`, or a TinySDError naming `what` when it holds NaN or an infinity (the network overflowed)."""
    if not np.isfinite(a).all():
        raise TinySDError(f"{what} is not finite (NaN or infinity): the network overflowed (check the model's "
                          f"weights and config)")
    return a


def _float_warnings_off(fn):
    """Run `fn` without NumPy's overflow/invalid warnings: `_finite` reports a non-finite result as one line instead."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)
    return wrapper


def _ready(net, name: str, stats) -> None:
    """Read a low-memory pipeline's network now (timed as "load {name}"), so that its calls' time and peak
    memory are the calls' own."""
    if isinstance(net, LazyNetwork) and not net.loaded:
        with stats.measure(f"load {name}"):
            net.network()


@dataclass
class GenerationResult:
    """images: PIL images; params: what made each (its seed is seed + i); latents: final float64 latents (B, C, h, w), unscaled."""

    images: list
    params: list[GenerationParams]
    latents: np.ndarray


class Pipeline:
    """An SD 1.x text-to-image pipeline; `tokenizer`, `text_encoder`, `unet`, `vae` are usable on their own."""

    def __init__(self, tokenizer, text_encoder, unet, vae, config: ModelConfig, *, model_name: str = "model",
                 source: Path | None = None, layout: str | None = None, precision: str = "fp32",
                 defaults: GenerationDefaults | None = None):
        # a network may be a tinysd.offload.LazyNetwork (low_memory): read when first used, dropped after use
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae = vae
        self.config = config
        self.model_name = model_name
        self.source = source
        self.layout = layout
        self.precision = precision
        self.defaults = defaults or GenerationDefaults()  # sampler, steps, guidance scale when the caller gives none
        self._model_hash: str | None = None
        self.quantized_from: dict = {}  # a quantized folder's source checkpoint: {"name": ..., "hash": ...}
        self.stats = None  # a tinysd.runstats.NetworkStats: per-network time and peak RSS of generate's calls

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, precision: str | None = None,
                        low_memory: bool = False, **engine_options) -> "Pipeline":
        """Load a diffusers folder, a single SD 1.x .safetensors file or a quantized model folder
        (None: the shipped default model).

        precision: the engine building the networks (`precisions()`). None means "fp32" for a float
        checkpoint (which "w8a8"/"w8a16" quantize on the fly) and the folder's own precision for a
        quantized folder written by `tinysd quantize`, which runs only at that precision.
        low_memory: every file is checked now, but each network's weights are read only when it is first
        used, and `generate` drops each network after its last use (module docstring); fp32 and
        quantized folders only (ignored, with a log line, when quantizing on the fly).
        """
        from .checkpoint import load_checkpoint
        from .quant.folder import is_quantized_folder
        from .tokenizer import CLIPTokenizer

        if precision is not None:
            engine_for(precision)  # an unknown precision fails before any file is read
        path = default_model_path() if path is None else Path(path)
        if is_quantized_folder(path):
            return cls._from_quantized(path, precision, low_memory=low_memory, **engine_options)
        precision = precision or "fp32"
        factory = engine_for(precision)
        if "," in precision:
            from .quant.model import canonical_precision

            precision = canonical_precision(precision)
        if low_memory and precision != "fp32":
            log.info("low memory: not available when quantizing a float model on the fly; loading it whole")
            low_memory = False
        t0 = time.perf_counter()
        loaded = load_checkpoint(path, networks=() if low_memory else ("text_encoder", "unet", "vae"))
        tokenizer = CLIPTokenizer.from_dir(loaded.tokenizer_dir or TOKENIZER_DIR)
        if low_memory:
            if engine_options:
                _fp32_engine(loaded, **engine_options)  # refuses them, naming them
            text_encoder, unet, vae = (LazyNetwork(n, functools.partial(_load_fp32_network, path, loaded.config, n))
                                       for n in ("text_encoder", "unet", "vae"))
        else:
            text_encoder, unet, vae = factory(loaded, **engine_options)
        log.info("loaded %s (%s, %s) in %.1f s", path, loaded.layout, precision, time.perf_counter() - t0)
        name = path.stem if path.is_file() else path.resolve().name
        return cls(tokenizer, text_encoder, unet, vae, loaded.config, model_name=name, source=path,
                   layout=loaded.layout, precision=precision, defaults=loaded.defaults)

    @classmethod
    def _from_quantized(cls, path: Path, precision: str | None, cache_weights: bool = False, low_memory: bool = False,
                        **engine_options) -> "Pipeline":
        """A pipeline running the integer networks of a quantized folder (tinysd.quant.folder).

        Weights stay int8 in memory; cache_weights=True also keeps the copies the GEMM kernels
        use (2 bytes per weight for the default int16 method; see docs/performance.md).
        """
        from .kernels.precompile import ensure_compiled
        from .quant.engine import build_integer_networks
        from .quant.folder import TOKENIZER_SUBDIR, load_quantized
        from .quant.model import network_precisions
        from .tokenizer import CLIPTokenizer

        if engine_options:
            raise TinySDError(f"{path}: a quantized model takes only the engine option cache_weights "
                              f"(got {', '.join(sorted(engine_options))})")
        t0 = time.perf_counter()
        qmodel = load_quantized(path, precision=precision, networks=() if low_memory else ("text_encoder", "unet", "vae"))
        ensure_compiled(network_precisions(qmodel.precision).values())  # low memory: before any weights are read
        tokenizer = CLIPTokenizer.from_dir(path / TOKENIZER_SUBDIR)
        if low_memory:
            text_encoder, unet, vae = (
                LazyNetwork(n, functools.partial(_load_integer_network, path, precision, n, bool(cache_weights)))
                for n in ("text_encoder", "unet", "vae"))
        else:
            text_encoder, unet, vae = build_integer_networks(qmodel, cache_weights=bool(cache_weights))
        log.info("loaded %s (quantized, %s) in %.1f s", path, qmodel.precision, time.perf_counter() - t0)
        defaults = GenerationDefaults.from_index({"tinysd_defaults": qmodel.info.get("generation_defaults")},
                                                 f"{path}/quantization.json info")
        pipe = cls(tokenizer, text_encoder, unet, vae, qmodel.config, model_name=path.resolve().name, source=path,
                   layout="quantized", precision=qmodel.precision, defaults=defaults)
        pipe.quantized_from = {"name": qmodel.info.get("source_model_name"), "hash": qmodel.info.get("source_model_hash")}
        return pipe

    # ------------------------------------------------------------------ properties
    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel: 2 ** (VAE blocks - 1) (8 for SD)."""
        return 2 ** (len(self.config.vae.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """The size the UNet was trained at, in image pixels: sample_size * vae_scale_factor."""
        return self.config.unet.sample_size * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this: lcm(8, vae_scale_factor * 2 ** UNet downsamplers) (64 for SD)."""
        return math.lcm(8, self.vae_scale_factor * 2 ** (len(self.config.unet.block_out_channels) - 1))

    @property
    def model_hash(self) -> str | None:
        """A1111's model hash (SHA-256, 10 hex digits) of a single-file checkpoint; None for folders."""
        if self._model_hash is None and self.source is not None and Path(self.source).is_file():
            self._model_hash = file_sha256_prefix(self.source)
        return self._model_hash

    # ------------------------------------------------------------------ text
    def encode_prompt(self, prompts: list[str], clip_skip: int | None = None) -> np.ndarray:
        """float32 (len(prompts), 77, D) text features."""
        ids = self.tokenizer(prompts)  # (N, 77) int64
        return np.asarray(self.text_encoder(ids, clip_skip=clip_skip or None), dtype=np.float32)

    # ------------------------------------------------------------------ generation
    def check_args(self, *, width=None, height=None, clip_skip=None, **kwargs) -> tuple[int, int]:
        """All checks of `generate`'s arguments, before any work; returns the image (width, height).

        TinySDError naming the option: see `check_generation_args`, plus sizes that are not
        multiples of `size_multiple` and clip_skip >= the text encoder's layer count. With
        init_image (a PIL image) / strength: img2img's checks, and the size defaults to the
        image's (`tinysd.img2img.check_img2img_args`).
        """
        init_image, strength = kwargs.pop("init_image", None), kwargs.pop("strength", None)
        check_generation_args(width=width, height=height, clip_skip=clip_skip, **kwargs)
        if init_image is not None or strength is not None:  # img2img: the size defaults to the init image's
            from .img2img import check_img2img_args

            width, height = check_img2img_args(init_image, strength, kwargs.get("steps", 20), self.size_multiple,
                                               width, height)
        width = self.native_size if width is None else int(width)
        height = self.native_size if height is None else int(height)
        m = self.size_multiple
        for name, v in (("width", width), ("height", height)):
            if v % m:
                raise TinySDError(f"{name} {v} is not a multiple of {m}, which this model needs (VAE x{self.vae_scale_factor}, "
                                  f"UNet x{2 ** (len(self.config.unet.block_out_channels) - 1)} downsampling)")
        n_train = self.config.scheduler.num_train_timesteps
        if kwargs.get("steps", 0) > n_train:
            raise TinySDError(f"steps must be at most the model's {n_train} training timesteps (got {kwargs['steps']})")
        n_layers = self.config.text_encoder.num_hidden_layers
        if clip_skip and clip_skip >= n_layers:
            raise TinySDError(f"clip skip {clip_skip} must be less than the text encoder's {n_layers} layers")
        check_generation_memory(self.config, width, height, int(kwargs.get("batch_size", 1)),
                                itemsize=4 if self.precision == "fp32" else 8)
        return width, height

    def __call__(self, prompt: str, negative_prompt: str = "", steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, sampler: str | None = None, width: int | None = None, height: int | None = None, karras: bool = False,
                 clip_skip: int | None = None, batch_size: int = 1, callback: Callable[[int, int], None] | None = None,
                 init_image=None, strength: float | None = None):
        """A PIL image (a list of batch_size images when batch_size > 1). See `generate`."""
        res = self.generate(prompt, negative_prompt=negative_prompt, steps=steps, guidance_scale=guidance_scale, seed=seed,
                            sampler=sampler, width=width, height=height, karras=karras, clip_skip=clip_skip,
                            batch_size=batch_size, callback=callback, init_image=init_image, strength=strength)
        return res.images[0] if batch_size == 1 else res.images

    @_float_warnings_off
    def generate(self, prompt: str, negative_prompt: str = "", steps: int | None = None, guidance_scale: float | None = None,
                 seed: int = 0, sampler: str | None = None, width: int | None = None, height: int | None = None, karras: bool = False,
                 clip_skip: int | None = None, batch_size: int = 1, callback: Callable[[int, int], None] | None = None,
                 init_image=None, strength: float | None = None) -> GenerationResult:
        """Generate `batch_size` images of one prompt; image i uses seed + i.

        steps, guidance_scale, sampler: None takes the model's default (`self.defaults`).
        sampler: one of SAMPLERS ("ddim", "euler", "euler_a", "dpmpp_2m", "lcm"); karras: Karras sigmas
        (not for ddim). width/height: image size, default the native size; multiples of 8 and of
        `size_multiple`. clip_skip: CLIP layers to skip (diffusers' clip_skip; A1111's "Clip skip"
        is clip_skip + 1). callback(done_steps, total_steps) is called after every step run.

        img2img (`tinysd.img2img`, diffusers' StableDiffusionImg2ImgPipeline): init_image, a PIL
        image or an image file, is encoded, noised to the step where `strength` (in (0, 1], default
        0.8) starts, and only the int(steps * strength) last steps are run; the size defaults to
        the init image's, rounded down to `size_multiple`.
        """
        sampler, steps, guidance_scale = self.defaults.resolve(sampler, steps, guidance_scale)
        if init_image is not None:
            from . import img2img

            init_image = img2img.as_init_image(init_image)
            strength = img2img.DEFAULT_STRENGTH if strength is None else strength
        width, height = self.check_args(prompt=prompt, negative_prompt=negative_prompt, steps=steps,
                                        guidance_scale=guidance_scale, seed=seed, sampler=sampler, width=width,
                                        height=height, karras=karras, clip_skip=clip_skip, batch_size=batch_size,
                                        init_image=init_image, strength=strength)
        sched = make_scheduler(sampler, self.config.scheduler, karras=karras)
        sched.set_timesteps(int(steps))
        B = int(batch_size)
        g = float(guidance_scale)
        w_dim = self.config.unet.time_cond_proj_dim
        do_cfg = g > 1.0 and not w_dim  # a w-conditioned UNet is guided through timestep_cond instead
        # (B, w_dim) guidance embedding of w = g - 1, as diffusers' pipelines pass it; None for other UNets
        w_cond = guidance_embedding(np.full(B, g - 1.0), w_dim) if w_dim else None
        cond = {} if w_cond is None else {"timestep_cond": w_cond}  # the UNet's extra input, if any
        f = self.vae_scale_factor
        shape = (self.config.unet.in_channels, height // f, width // f)

        # 1. text features: negative and positive prompt in one text encoder call
        stats = NO_STATS if self.stats is None else self.stats
        t0 = time.perf_counter()
        _ready(self.text_encoder, "text_encoder", stats)
        with stats.measure("text_encoder"):
            ctx = self.encode_prompt([negative_prompt, prompt], clip_skip)  # (2, 77, D)
        release(self.text_encoder)  # low memory: not needed again
        ctx = _finite(ctx, "the text encoder output")
        ctx_neg, ctx_pos = ctx[:1], ctx[1:]
        if do_cfg:
            context = np.concatenate([np.repeat(ctx_neg, B, axis=0), np.repeat(ctx_pos, B, axis=0)])  # (2B, 77, D)
        else:
            context = np.repeat(ctx_pos, B, axis=0)  # (B, 77, D)
        log.info("text encoder: %.2f s", time.perf_counter() - t0)

        # 2. initial latents
        noise = NoiseSource(int(seed), B)
        i0 = 0
        if init_image is None:
            latents = noise.randn(shape) * sched.init_noise_sigma  # (B, C, h, w) float64
        else:
            i0 = img2img.start_index(int(steps), float(strength))
            latents = self._img2img_latents(init_image, width, height, noise, shape, sched, i0)
            release(self.vae)  # low memory: read again for decoding, after the UNet is dropped

        # 3. sampler loop (img2img: from step i0)
        t0 = time.perf_counter()
        _ready(self.unet, "unet", stats)
        for i in range(i0, len(sched.timesteps)):
            t = sched.timesteps[i]
            x = sched.scale_model_input(latents, i).astype(np.float32)  # (B, C, h, w)
            at = f"step {i + 1}/{steps}: "
            with stats.measure("unet"):
                out = self.unet(np.concatenate([x, x]) if do_cfg else x, t, context, **cond)  # (2B or B, C, h, w)
            if do_cfg:
                eps_neg, eps_pos = np.split(_finite(np.asarray(out, dtype=np.float64), at + "the UNet output"), 2)
                eps = eps_neg + g * (eps_pos - eps_neg)
            else:
                eps = _finite(np.asarray(out, dtype=np.float64), at + "the UNet output")
            step_noise = noise.randn(shape) if sched.needs_noise else None
            latents = _finite(sched.step(eps, i, latents, noise=step_noise).prev_sample,
                              at + f"the latents after the {sampler} step")
            log.debug("step %d/%d t=%g", i + 1, steps, t)
            if callback is not None:
                callback(i + 1 - i0, int(steps) - i0)
        log.info("sampling: %d steps in %.2f s", int(steps) - i0, time.perf_counter() - t0)
        release(self.unet)  # low memory: before the VAE is read

        # 4. decode, one image at a time
        _ready(self.vae, "vae", stats)
        t0 = time.perf_counter()
        z = (latents / self.vae.scaling_factor).astype(np.float32)
        images = []
        for b in range(B):
            with stats.measure("vae.decode"):
                dec = self.vae.decode(z[b : b + 1])  # (1, 3, H, W)
            images += latents_to_images(_finite(np.asarray(dec), "the VAE decoder output"))
        log.info("vae decoder: %.2f s", time.perf_counter() - t0)
        release(self.vae)

        base = dict(prompt=prompt, negative_prompt=negative_prompt, steps=int(steps), sampler=sampler, karras=bool(karras),
                    cfg_scale=g, width=width, height=height, model_name=self.model_name, model_hash=self.model_hash,
                    clip_skip=int(clip_skip or 0), version=f"tinysd {__version__}")
        base.update(precision=self.precision, source_model=self.quantized_from.get("name"),
                    source_model_hash=self.quantized_from.get("hash"))
        if init_image is not None:
            base.update(denoising_strength=float(strength))
        params = [GenerationParams(seed=s, **base) for s in noise.seeds]
        return GenerationResult(images=images, params=params, latents=latents)

    def _img2img_latents(self, image, width: int, height: int, noise: NoiseSource, shape: tuple, sched, i0: int):
        """The start latents of img2img (B, C, h, w) float64: `image` encoded once, its latent sample per
        image (noise's first draw), noised to step i0 (noise's second draw); see tinysd.img2img."""
        from .img2img import image_to_array, latent_sample

        t0 = time.perf_counter()
        x = image_to_array(image, width, height)  # (1, 3, H, W) in [-1, 1]
        try:
            moments = np.asarray(self.vae.encode_moments(x), dtype=np.float32)  # (1, 2C, h, w)
        except TinySDError as e:  # e.g. a quantized model imported without its encoder
            raise TinySDError(f"init image: the VAE encoder cannot run: {e}") from None
        moments = _finite(moments, "the VAE encoder output")
        z0 = latent_sample(moments, noise.randn(shape), self.vae.scaling_factor)  # (B, C, h, w)
        log.info("vae encoder: %.2f s", time.perf_counter() - t0)
        return sched.add_noise(z0, noise.randn(shape), i0)
