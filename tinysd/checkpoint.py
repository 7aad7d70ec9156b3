"""Load SD 1.x checkpoints (diffusers folders, CompVis/A1111 single files) and write them back.

`load_checkpoint(path)` returns a `LoadedModel`: the model config and float32
parameters per network, under diffusers/transformers names (CLIP with its
`text_model.` prefix). Two layouts are read:

(a) a diffusers folder: `model_index.json`, `unet/`, `vae/`, `text_encoder/`
    (each `config.json` + `*.safetensors`), optional `scheduler/` and
    `tokenizer/`. Weight file preference per component: the plain file
    (`diffusion_pytorch_model.safetensors` / `model.safetensors`), then its
    sharded index (`*.safetensors.index.json`), then a variant
    (`*.fp16.safetensors` first, then others alphabetically).
(b) one CompVis/A1111 `.safetensors` (`model.diffusion_model.`,
    `first_stage_model.`, `cond_stage_model.transformer.`), config taken from
    the file's `tinysd_config` metadata if it has one (files written by
    `to_single_file`), else inferred from tensor shapes (`infer_config`).
    Keys outside those three prefixes (`model_ema.`, `alphas_cumprod`, ...) are
    ignored and listed at DEBUG level.

Every tensor the networks expect (`param_shapes()` of tinysd.nn's models) is
checked by name and shape; floating types (F16, BF16, F64) are upcast to
float32. Pickle files (`.ckpt`, `.bin`, `.pt`, `.pth`, `.pkl`) are refused: they
are never unpickled. All failures are one-line `TinySDError`s naming the file
and tensor(s).

Shape inference (single files without metadata) reads from shapes: UNet
in/out channels, block_out_channels, layers_per_block, which blocks have
attention, cross_attention_dim, use_linear_projection (proj_in linear vs
1x1 conv), mid block present or not, time_cond_proj_dim; CLIP vocab, width,
layers, MLP width, positions; VAE channels, layers, latent channels, mid-block
attention. Not in the shapes, so set to SD 1.x values: UNet attention heads 8
per block (`attention_head_dim=8`; gcd(8, widths of the blocks with attention),
with a warning, when 8 does not divide them all), CLIP heads = hidden_size / 64 (12 for
ViT-L; 1, with a warning, when the width is not a multiple of 64), GroupNorm
groups 32 (gcd(32, widths), with a warning, when 32 does not divide every
width), CLIP activation quick_gelu, VAE scaling factor 0.18215, sample sizes
64 / 512, and the default SD 1.x noise schedule. Pass `config=` to override.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from . import keymap
from .config import CLIPTextConfig, ModelConfig, SchedulerConfig, UNetConfig, VAEConfig
from .atomic import atomic_dir
from .defaults import GenerationDefaults
from .errors import TinySDError
from .fileio import read_text
from .safetensors_io import SafetensorsFile, TensorInfo, write_safetensors

log = logging.getLogger(__name__)

NETWORKS = ("text_encoder", "unet", "vae")
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl", ".pickle")
# component folder, weights base name, config class
COMPONENTS = {
    "text_encoder": ("text_encoder", "model", CLIPTextConfig),
    "unet": ("unet", "diffusion_pytorch_model", UNetConfig),
    "vae": ("vae", "diffusion_pytorch_model", VAEConfig),
}
METADATA_CONFIG_KEY = "tinysd_config"
MAX_LISTED = 5  # names listed in one error message before "... and N more"
SAVE_DTYPES = ("F32", "F16", "BF16")
DEFAULT_GROUPS = 32  # SD 1.x GroupNorm groups, when shape inference cannot know
DEFAULT_HEADS = 8  # SD 1.x UNet attention heads, when shape inference cannot know


@dataclass
class LoadedModel:
    """A loaded checkpoint.

    config:        the whole model's configs.
    params:        network ('text_encoder', 'unet', 'vae') -> diffusers name -> float32 array.
    tokenizer_dir: the folder's `tokenizer/` if it has one; None means "use the shipped tokenizer".
    source:        the path given to `load_checkpoint`.
    layout:        "diffusers" or "single_file".
    files:         network -> weight files read.
    stored_dtypes: network -> safetensors dtypes of the tensors as stored (e.g. ("F16",)).
    defaults:      the folder's generation defaults (`tinysd.defaults`, model_index.json `tinysd_defaults`).
    """

    config: ModelConfig
    params: dict[str, dict[str, np.ndarray]]
    tokenizer_dir: Path | None = None
    source: Path | None = None
    layout: str = "diffusers"
    files: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    stored_dtypes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)


# ---------------------------------------------------------------------------------------------
# expected parameters
# ---------------------------------------------------------------------------------------------
def expected_shapes(network: str, cfg) -> dict[str, tuple[int, ...]]:
    """Every parameter name and shape the tinysd network `network` needs for config `cfg`."""
    if network == "unet":
        from .nn.unet import UNet2DConditionModel as M
    elif network == "vae":
        from .nn.vae import AutoencoderKL as M
    elif network == "text_encoder":
        from .nn.clip import CLIPTextModel as M
    else:
        raise ValueError(f"network: unknown network {network!r}")
    return {keymap.canonical_clip_key(k) if network == "text_encoder" else k: tuple(int(d) for d in v)
            for k, v in M(cfg).param_shapes().items()}


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


@dataclass(frozen=True)
class _Entry:
    """Where one canonical tensor comes from, and the shape it has once canonical."""

    file: SafetensorsFile
    key: str  # name in the file
    shape: tuple[int, ...]  # canonical shape (VAE attention 1x1 convs squeezed to 2-D)


def _check(network: str, cfg, plan: Mapping[str, _Entry], where: str, file_key=None) -> None:
    """Raise one TinySDError if `plan` does not hold exactly the expected names and shapes.

    `file_key(canonical)` gives the name a missing tensor would have in the file (single files).
    """
    expected = expected_shapes(network, cfg)
    missing = sorted(set(expected) - set(plan))
    unexpected = sorted(set(plan) - set(expected))
    wrong = sorted(k for k in set(plan) & set(expected) if plan[k].shape != expected[k])
    if not (missing or unexpected or wrong):
        return

    def named(k: str, key: str | None) -> str:
        return k if key is None or key == k else f"{key} (= {k})"

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensor(s): " + _listing([named(k, file_key(k) if file_key else None) for k in missing]))
    if wrong:
        parts.append(f"{len(wrong)} with the wrong shape: " + _listing(
            [f"{named(k, plan[k].key)} is {list(plan[k].shape)}, expected {list(expected[k])}" for k in wrong]))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s): " + _listing([named(k, plan[k].key) for k in unexpected]))
    raise TinySDError(f"{where}: {network} tensors do not match its config: " + "; ".join(parts))


def _canonical_shape(network: str, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    # VAE attention projections: (C, C, 1, 1) 1x1 conv or (C, C, 1) conv1d -> linear (C, C)
    if network == "vae" and keymap.is_vae_attention_projection(name) and len(shape) > 2 and all(d == 1 for d in shape[2:]):
        return shape[:2]
    return shape


def _add(plan: dict[str, _Entry], network: str, canonical: str, sf: SafetensorsFile, key: str) -> None:
    if canonical in plan:
        other = plan[canonical]
        raise TinySDError(f"{sf.path}: tensors {other.key!r} and {key!r} both give {network} parameter {canonical!r}")
    plan[canonical] = _Entry(sf, key, _canonical_shape(network, canonical, sf.infos[key].shape))


def _read(network: str, plan: Mapping[str, _Entry]) -> dict[str, np.ndarray]:
    """Read every planned tensor as float32 in its canonical shape, one pass per file.

    A tensor holding NaN or an infinity is refused (TinySDError naming the file and tensor): its
    float64 sum is finite exactly when every element is (float32 values cannot overflow it).
    """
    by_file: dict[Path, list[tuple[str, _Entry]]] = defaultdict(list)
    for name, e in plan.items():
        by_file[e.file.path].append((name, e))
    out: dict[str, np.ndarray] = {}
    for entries in by_file.values():
        sf = entries[0][1].file
        arrays = sf.read_float32([e.key for _, e in entries])
        for name, e in entries:
            a = arrays[e.key]
            if not np.isfinite(a.sum(dtype=np.float64)):
                bad = int(np.count_nonzero(~np.isfinite(a)))
                raise TinySDError(f"{sf.path}: tensor {e.key!r} holds {bad} NaN or infinite value(s) of {a.size}")
            out[name] = a.reshape(e.shape)
    return {k: out[k] for k in sorted(out)}


def _stored_dtypes(plan: Mapping[str, _Entry]) -> tuple[str, ...]:
    return tuple(sorted({e.file.infos[e.key].dtype for e in plan.values()}))


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def _refuse_pickle(path: Path) -> TinySDError:
    return TinySDError(
        f"{path}: {path.suffix} files are Python pickles, which tinysd never loads (unpickling can run arbitrary code); "
        "convert it to .safetensors first (torch.load(..., weights_only=True) then safetensors.torch.save_file) "
        "and pass the .safetensors file")


def load_checkpoint(path: str | Path, *, config: ModelConfig | None = None,
                    networks: Iterable[str] = NETWORKS) -> LoadedModel:
    """Load a diffusers folder or a CompVis/A1111 single `.safetensors` file.

    `config` replaces the configs read from the folder / file / shape inference
    (every tensor is still checked against it). `networks`: the networks whose weights are read
    (`params` has only those keys; every network's config and tensor names and shapes are still
    checked): `Pipeline(low_memory=True)` reads one network at a time. Raises TinySDError on any
    bad input.
    """
    networks = tuple(networks)
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        raise ValueError(f"unknown networks {unknown} (expected some of {NETWORKS})")
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _refuse_pickle(path)
    if not path.exists():
        raise TinySDError(f"{path}: no such file or folder")
    if path.is_dir():
        return _load_folder(path, config, networks)
    if path.suffix.lower() != ".safetensors":
        raise TinySDError(f"{path}: not a model: expected a diffusers folder or a single .safetensors file")
    return _load_single_file(path, config, networks)


# ---------------------------------------------------------------------------------------------
# (a) diffusers folders
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except OSError as e:
        raise TinySDError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise TinySDError(f"{path}: invalid JSON ({e})") from None


def _weight_files(folder: Path, base: str) -> list[Path]:
    """The safetensors file(s) holding one component's weights, by the preference in the module docstring."""
    plain = folder / f"{base}.safetensors"
    index = folder / f"{base}.safetensors.index.json"
    if plain.is_file():
        return [plain]
    if index.is_file():
        return _shards(index)
    variants = sorted(folder.glob(f"{base}.*.safetensors"), key=lambda p: (p.name != f"{base}.fp16.safetensors", p.name))
    variant_indexes = sorted(folder.glob(f"{base}.*.safetensors.index.json"))
    if variants:
        if len(variants) > 1:
            log.info("%s: several weight variants, using %s", folder, variants[0].name)
        return [variants[0]]
    if variant_indexes:
        return _shards(variant_indexes[0])
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:
        return others
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise _refuse_pickle(pickles[0])
    if others:
        raise TinySDError(f"{folder}: several .safetensors files and none named {base}.safetensors: {_listing([p.name for p in others])}")
    raise TinySDError(f"{folder}: no weights ({base}.safetensors is missing)")


def _shards(index: Path) -> list[Path]:
    d = _read_json(index)
    wm = d.get("weight_map") if isinstance(d, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise TinySDError(f"{index}: not a safetensors index (no weight_map)")
    files = []
    for name in dict.fromkeys(wm.values()):
        p = index.parent / str(name)
        if not p.is_file():
            raise TinySDError(f"{index}: shard {name} is missing")
        files.append(p)
    return files


def _load_folder(root: Path, override: ModelConfig | None, networks: tuple[str, ...] = NETWORKS) -> LoadedModel:
    index = root / "model_index.json"
    defaults = GenerationDefaults()
    if index.is_file():
        index_dict = _read_json(index)
        if not isinstance(index_dict, dict):
            raise TinySDError(f"{index}: not a JSON object")
        defaults = GenerationDefaults.from_index(index_dict, str(index))
    elif not (root / "unet").is_dir():
        singles = sorted(root.glob("*.safetensors"))
        hint = f"; to load a single-file checkpoint pass the file, e.g. {singles[0]}" if singles else ""
        raise TinySDError(f"{root}: not a diffusers model folder (no model_index.json){hint}")
    configs: dict[str, Any] = {}
    params: dict[str, dict[str, np.ndarray]] = {}
    files: dict[str, tuple[Path, ...]] = {}
    dtypes: dict[str, tuple[str, ...]] = {}
    for network, (sub, base, cls) in COMPONENTS.items():
        folder = root / sub
        if not folder.is_dir():
            raise TinySDError(f"{root}: no {sub}/ folder")
        if override is not None:
            cfg = getattr(override, network)
        else:
            cfg_path = folder / "config.json"
            if not cfg_path.is_file():
                raise TinySDError(f"{cfg_path}: missing")
            cfg = cls.from_json(cfg_path)
        weights = _weight_files(folder, base)
        plan: dict[str, _Entry] = {}
        dropped = []
        for p in weights:
            sf = SafetensorsFile(p)
            for key in sf.keys():
                if keymap.ignored(network, key):
                    dropped.append(key)
                    continue
                canonical = (keymap.canonical_clip_key(key) if network == "text_encoder"
                             else keymap.canonical_vae_key(key) if network == "vae" else key)
                _add(plan, network, canonical, sf, key)
        if dropped:
            log.debug("%s: ignoring non-parameter tensors %s", folder, ", ".join(dropped))
        where = str(weights[0]) if len(weights) == 1 else f"{folder} ({len(weights)} shards)"
        _check(network, cfg, plan, where)
        configs[network] = cfg
        files[network] = tuple(weights)
        dtypes[network] = _stored_dtypes(plan)
        if network in networks:
            params[network] = _read(network, plan)
            log.info("loaded %s: %d tensors from %s", network, len(plan), where)
    if override is not None:
        sched = override.scheduler
    else:
        sched_path = root / "scheduler" / "scheduler_config.json"
        sched = SchedulerConfig.from_json(sched_path) if sched_path.is_file() else SchedulerConfig()
    tok = root / "tokenizer"
    return LoadedModel(
        config=ModelConfig(text_encoder=configs["text_encoder"], unet=configs["unet"], vae=configs["vae"], scheduler=sched),
        params=params, tokenizer_dir=tok if tok.is_dir() else None, source=root, layout="diffusers",
        files=files, stored_dtypes=dtypes, defaults=defaults)


# ---------------------------------------------------------------------------------------------
# (b) single files
# ---------------------------------------------------------------------------------------------
def _network_of(key: str) -> str | None:
    for network, prefix in keymap.SINGLE_FILE_PREFIX.items():
        if key.startswith(prefix):
            return network
    return None


def split_single_file(keys) -> tuple[dict[str, list[str]], list[str]]:
    """Group single-file keys by network (prefix removed); also return the keys of no network."""
    groups: dict[str, list[str]] = {n: [] for n in NETWORKS}
    other = []
    for k in keys:
        n = _network_of(k)
        if n is None:
            other.append(k)
        else:
            groups[n].append(k[len(keymap.SINGLE_FILE_PREFIX[n]):])
    return groups, other


def _foreign(keys, where: str) -> None:
    for prefix, why in keymap.FOREIGN_PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            raise TinySDError(f"{where}: not a Stable Diffusion 1.x checkpoint: {why}")


def model_config_from_dict(d: Mapping[str, Any], source: str) -> ModelConfig:
    """A ModelConfig from {'text_encoder': {...}, 'unet': {...}, 'vae': {...}, 'scheduler': {...}}."""
    if not isinstance(d, Mapping):
        raise TinySDError(f"{source}: model config is not a JSON object")
    kw = {}
    for name, cls in (("text_encoder", CLIPTextConfig), ("unet", UNetConfig), ("vae", VAEConfig), ("scheduler", SchedulerConfig)):
        sub = d.get(name, {})
        if not isinstance(sub, Mapping):
            raise TinySDError(f"{source}: {name} config is not a JSON object")
        kw[name] = cls.from_dict(dict(sub), source=f"{source} [{name}]")
    return ModelConfig(**kw)


def model_config_to_dict(cfg: ModelConfig) -> dict[str, Any]:
    return {n: getattr(cfg, n).to_dict() for n in ("text_encoder", "unet", "vae", "scheduler")}


def _load_single_file(path: Path, override: ModelConfig | None, networks: tuple[str, ...] = NETWORKS) -> LoadedModel:
    sf = SafetensorsFile(path)
    keys = sf.keys()
    _foreign(keys, str(path))
    groups, other = split_single_file(keys)
    for network in NETWORKS:
        if not groups[network]:
            raise TinySDError(f"{path}: no {network} tensors (no keys under {keymap.SINGLE_FILE_PREFIX[network]!r}); "
                              "not a full SD 1.x single-file checkpoint")
    if other:
        by_prefix: dict[str, int] = defaultdict(int)
        for k in other:
            by_prefix[k.split(".")[0]] += 1
        log.debug("%s: ignoring %d tensors outside the SD networks (%s): %s", path, len(other),
                  ", ".join(f"{p}: {n}" for p, n in sorted(by_prefix.items())), ", ".join(other))
    if override is not None:
        cfg = override
    elif METADATA_CONFIG_KEY in sf.metadata:
        try:
            d = json.loads(sf.metadata[METADATA_CONFIG_KEY])
        except ValueError as e:
            raise TinySDError(f"{path}: metadata {METADATA_CONFIG_KEY!r} is not JSON ({e})") from None
        cfg = model_config_from_dict(d, f"{path} metadata")
    else:
        cfg = infer_config(sf.shapes(), source=str(path))
    params, dtypes = {}, {}
    for network in NETWORKS:
        plan = _single_file_plan(network, getattr(cfg, network), sf)
        _check_single(network, getattr(cfg, network), plan, str(path))
        dtypes[network] = _stored_dtypes(plan)
        if network in networks:
            params[network] = _read(network, plan)
            log.info("loaded %s: %d tensors from %s", network, len(plan), path)
    return LoadedModel(config=cfg, params=params, tokenizer_dir=None, source=path, layout="single_file",
                       files={n: (path,) for n in NETWORKS}, stored_dtypes=dtypes)


class _ShapesOnly:
    """A SafetensorsFile stand-in holding shapes and no data (checks on key -> shape listings)."""

    def __init__(self, shapes: Mapping[str, tuple], source: str):
        self.path = Path(source)
        self.infos = {k: TensorInfo("F32", tuple(int(d) for d in v), 0, 0) for k, v in shapes.items()}
        self.metadata: dict[str, str] = {}

    def keys(self) -> list[str]:
        return list(self.infos)


def map_single_file(shapes: Mapping[str, tuple], *, config: ModelConfig | None = None,
                    source: str = "checkpoint") -> tuple[ModelConfig, dict[str, dict[str, str]]]:
    """Map a single file's key -> shape listing (its header) without reading any data.

    Returns the config (`config`, else inferred) and, per network, diffusers
    name -> single-file key. Every key and shape is checked exactly as
    `load_checkpoint` does; failures are TinySDErrors naming `source`.
    """
    _foreign(shapes, source)
    cfg = config if config is not None else infer_config(shapes, source=source)
    sf = _ShapesOnly(shapes, source)
    out = {}
    for network in NETWORKS:
        plan = _single_file_plan(network, getattr(cfg, network), sf)
        _check_single(network, getattr(cfg, network), plan, source)
        out[network] = {k: e.key for k, e in plan.items()}
    return cfg, out


def _check_single(network: str, cfg, plan: Mapping[str, _Entry], where: str) -> None:
    prefix = keymap.SINGLE_FILE_PREFIX[network]
    inverse = _inverse_map(network, cfg)
    _check(network, cfg, plan, where, file_key=lambda k: prefix + _to_compvis_key(k, inverse))


def _module_map(network: str, cfg) -> dict[str, str]:
    if network == "unet":
        return dict(keymap.unet_module_map(cfg))
    if network == "vae":
        return dict(keymap.vae_module_map(cfg))
    return {}


def _inverse_map(network: str, cfg) -> dict[str, str]:
    if network == "text_encoder":
        return {}
    return keymap.invert(_module_map(network, cfg).items())


def _single_file_plan(network: str, cfg, sf) -> dict[str, _Entry]:
    """Canonical name -> file entry for one network of a single file; unmapped keys are errors."""
    prefix = keymap.SINGLE_FILE_PREFIX[network]
    mmap = _module_map(network, cfg)
    plan: dict[str, _Entry] = {}
    unmapped, dropped = [], []
    for key in sf.keys():
        if not key.startswith(prefix):
            continue
        rel = key[len(prefix):]
        if keymap.ignored(network, rel):
            dropped.append(key)
            continue
        if network == "text_encoder":
            canonical = keymap.canonical_clip_key(rel)
        else:
            canonical = keymap.translate(rel, mmap)
            if canonical is None:
                unmapped.append(key)
                continue
            if network == "vae":
                canonical = keymap.canonical_vae_key(canonical)
        _add(plan, network, canonical, sf, key)
    if dropped:
        log.debug("%s: ignoring non-parameter tensors %s", sf.path, ", ".join(dropped))
    if unmapped:
        raise TinySDError(f"{sf.path}: {len(unmapped)} {network} tensor(s) that an SD 1.x {network} with the "
                          f"inferred config does not have: {_listing(sorted(unmapped))}")
    return plan


# ---------------------------------------------------------------------------------------------
# config inference from CompVis shapes
# ---------------------------------------------------------------------------------------------
class _Shapes:
    """Shapes of one network's keys (prefix removed), with errors naming the file and full key."""

    def __init__(self, shapes: Mapping[str, tuple], prefix: str, source: str, network: str):
        self.s = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
        self.prefix, self.source, self.network = prefix, source, network

    def __contains__(self, k: str) -> bool:
        return k in self.s

    def __call__(self, k: str) -> tuple:
        if k not in self.s:
            raise TinySDError(f"{self.source}: cannot infer the {self.network} config: tensor {self.prefix}{k} is missing")
        return self.s[k]

    def fail(self, why: str) -> TinySDError:
        return TinySDError(f"{self.source}: cannot infer the {self.network} config: {why}")

    def indices(self, head: str) -> list[int]:
        """Sorted distinct integers n of keys `head.{n}.` (head ends without a dot)."""
        out = set()
        for k in self.s:
            if k.startswith(head + "."):
                first = k[len(head) + 1:].split(".", 1)[0]
                if first.isdigit():
                    out.add(int(first))
        return sorted(out)


def _groups(channels, source: str, network: str) -> int:
    """GroupNorm groups: SD 1.x's 32, or gcd(32, channels...) when 32 does not divide every width (with a warning)."""
    g = math.gcd(DEFAULT_GROUPS, *channels)
    if g != DEFAULT_GROUPS:
        log.warning("%s: %s widths %s are not multiples of %d; assuming %d GroupNorm groups (pass config= to override)",
                    source, network, list(channels), DEFAULT_GROUPS, g)
    return g


def _heads(channels, down, up, mid_attention: bool, source: str) -> int:
    """UNet attention heads (not in the shapes): SD 1.x's 8, or gcd(8, attention widths) if 8 does not divide them all."""
    n = len(channels)
    widths = [channels[i] for i, t in enumerate(down) if t.startswith("CrossAttn")]
    widths += [channels[n - 1 - i] for i, t in enumerate(up) if t.startswith("CrossAttn")]
    widths += [channels[-1]] if mid_attention else []
    h = math.gcd(DEFAULT_HEADS, *widths)
    if h != DEFAULT_HEADS:
        log.warning("%s: unet attention widths %s are not multiples of %d; assuming %d heads (pass config= to override)",
                    source, widths, DEFAULT_HEADS, h)
    return h


def infer_unet_config(shapes: Mapping[str, tuple], source: str = "checkpoint",
                      prefix: str = keymap.SINGLE_FILE_PREFIX["unet"]) -> UNetConfig:
    """A UNetConfig from CompVis UNet key shapes (see the module docstring for what is inferred)."""
    s = _Shapes(shapes, prefix, source, "unet")
    c0, in_ch = s("input_blocks.0.0.weight")[:2]
    out_ch = s("out.2.weight")[0]
    n_in = len(s.indices("input_blocks"))
    if s.indices("input_blocks") != list(range(n_in)):
        raise s.fail(f"input_blocks indices {s.indices('input_blocks')} are not 0..{n_in - 1}")
    ops = [n for n in range(n_in) if f"input_blocks.{n}.0.op.weight" in s]
    n_blocks = len(ops) + 1
    L = n_in // n_blocks - 1
    if L < 1 or n_in != n_blocks * (L + 1) or ops != [1 + i * (L + 1) + L for i in range(n_blocks - 1)]:
        raise s.fail(f"{n_in} input_blocks with downsamplers at {ops} is not an SD 1.x layout")
    n_out = len(s.indices("output_blocks"))
    if n_out != n_blocks * (L + 1):
        raise s.fail(f"{n_out} output_blocks, expected {n_blocks * (L + 1)} for {n_blocks} blocks of {L} layers")
    channels, down, up = [], [], []
    for i in range(n_blocks):
        n = 1 + i * (L + 1)
        channels.append(s(f"input_blocks.{n}.0.out_layers.3.weight")[0])
        down.append("CrossAttnDownBlock2D" if f"input_blocks.{n}.1.proj_in.weight" in s else "DownBlock2D")
        up.append("CrossAttnUpBlock2D" if f"output_blocks.{i * (L + 1)}.1.proj_in.weight" in s else "UpBlock2D")
    if channels[0] != c0:
        raise s.fail(f"conv_in has {c0} channels but the first block has {channels[0]}")
    proj_in = sorted(k for k in s.s if k.endswith(".proj_in.weight"))
    to_k = sorted(k for k in s.s if k.endswith(".attn2.to_k.weight"))
    d: dict[str, Any] = {
        "in_channels": in_ch,
        "out_channels": out_ch,
        "block_out_channels": channels,
        "layers_per_block": L,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DCrossAttn" if "middle_block.0.in_layers.0.weight" in s else None,
        "attention_head_dim": _heads(channels, down, up, "middle_block.1.proj_in.weight" in s, source),
        "norm_num_groups": _groups(channels, source, "unet"),
    }
    if to_k:
        d["cross_attention_dim"] = s(to_k[0])[1]
    if proj_in:
        d["use_linear_projection"] = len(s(proj_in[0])) == 2
        head = proj_in[0][: -len("proj_in.weight")]
        d["transformer_layers_per_block"] = len(_Shapes(s.s, head, source, "unet").indices("transformer_blocks")) or 1
    if "time_embed.cond_proj.weight" in s:
        d["time_cond_proj_dim"] = s("time_embed.cond_proj.weight")[1]
    return UNetConfig.from_dict(d, source=f"{source} (inferred unet config)")


def infer_vae_config(shapes: Mapping[str, tuple], source: str = "checkpoint",
                     prefix: str = keymap.SINGLE_FILE_PREFIX["vae"]) -> VAEConfig:
    """A VAEConfig from CompVis VAE key shapes."""
    s = _Shapes(shapes, prefix, source, "vae")
    levels = s.indices("encoder.down")
    if not levels or levels != list(range(len(levels))):
        raise s.fail(f"encoder.down indices {levels} are not 0..n-1")
    L = len(s.indices("encoder.down.0.block"))
    if L < 1:
        raise s.fail("encoder.down.0 has no resnet blocks")
    channels = [s(f"encoder.down.{i}.block.0.conv1.weight")[0] for i in range(len(levels))]
    n = len(channels)
    d = {
        "in_channels": s("encoder.conv_in.weight")[1],
        "out_channels": s("decoder.conv_out.weight")[0],
        "latent_channels": s("post_quant_conv.weight")[0],
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "layers_per_block": L,
        "mid_block_add_attention": any(k.startswith("encoder.mid.attn_1.") for k in s.s),
        "norm_num_groups": _groups(channels, source, "vae"),
    }
    return VAEConfig.from_dict(d, source=f"{source} (inferred vae config)")


def infer_clip_config(shapes: Mapping[str, tuple], source: str = "checkpoint",
                      prefix: str = keymap.SINGLE_FILE_PREFIX["text_encoder"]) -> CLIPTextConfig:
    """A CLIPTextConfig from CLIP text-model key shapes (keys with or without `text_model.`)."""
    raw = _Shapes(shapes, prefix, source, "text_encoder")
    s = _Shapes({keymap.canonical_clip_key(k): v for k, v in raw.s.items()}, "", source, "text_encoder")
    s.prefix = prefix
    vocab, hidden = s("text_model.embeddings.token_embedding.weight")
    positions = s("text_model.embeddings.position_embedding.weight")[0]
    layers = s.indices("text_model.encoder.layers")
    if not layers or layers != list(range(len(layers))):
        raise s.fail(f"encoder layer indices {layers} are not 0..n-1")
    if hidden % 64 == 0:
        heads = hidden // 64
    else:
        heads = 1
        log.warning("%s: CLIP width %d is not a multiple of 64; assuming 1 attention head (pass config= to override)",
                    source, hidden)
    d = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": s("text_model.encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": len(layers),
        "num_attention_heads": heads,
        "max_position_embeddings": positions,
    }
    return CLIPTextConfig.from_dict(d, source=f"{source} (inferred text_encoder config)")


def infer_config(shapes: Mapping[str, tuple], source: str = "checkpoint") -> ModelConfig:
    """The ModelConfig of a CompVis single file from its key -> shape listing (header only).

    Inferred and defaulted fields: see the module docstring.
    """
    return ModelConfig(text_encoder=infer_clip_config(shapes, source), unet=infer_unet_config(shapes, source),
                       vae=infer_vae_config(shapes, source), scheduler=SchedulerConfig())


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def _parts(model) -> tuple[ModelConfig, Mapping[str, Mapping[str, np.ndarray]]]:
    if isinstance(model, tuple) and len(model) == 2:
        return model
    return model.config, model.params


def _to_compvis_key(canonical: str, inverse: Mapping[str, str]) -> str:
    """Diffusers name -> CompVis name (no network prefix); VAE attention leaves renamed to q/k/v/proj_out/norm."""
    if not inverse:  # text encoder
        return canonical
    for p in keymap.VAE_ATTENTION_PREFIX:
        if canonical.startswith(p):
            idx, _, tail = canonical[len(p):].partition(".")
            module, _, leaf = tail.rpartition(".")
            if module in keymap.VAE_ATTENTION_TO_COMPVIS:
                canonical = f"{p}{idx}.{keymap.VAE_ATTENTION_TO_COMPVIS[module][0]}.{leaf}"
    out = keymap.translate(canonical, inverse)
    if out is None:
        raise TinySDError(f"{canonical}: no CompVis name for this parameter")
    return out


def to_compvis_state_dict(model) -> dict[str, np.ndarray]:
    """The CompVis/A1111 single-file state dict of a LoadedModel (or (config, params)).

    CLIP keys are written as `cond_stage_model.transformer.text_model.<...>`;
    VAE attention q/k/v/proj_out weights as 1x1 convs (C, C, 1, 1). Arrays are
    shared with the input where no reshape is needed.
    """
    cfg, params = _parts(model)
    out: dict[str, np.ndarray] = {}
    for network in NETWORKS:
        prefix = keymap.SINGLE_FILE_PREFIX[network]
        inverse = _inverse_map(network, getattr(cfg, network))
        for name, a in params[network].items():
            key = prefix + _to_compvis_key(name, inverse)
            if network == "vae" and keymap.is_vae_attention_projection(name) and a.ndim == 2:
                a = a.reshape(a.shape + (1, 1))  # (C, C) -> (C, C, 1, 1)
            if key in out:
                raise TinySDError(f"{name}: CompVis name {key} is produced twice")
            out[key] = a
    return out


def to_single_file(model, path: str | Path, *, dtype: str = "F32", embed_config: bool = True) -> Path:
    """Write a CompVis/A1111 single `.safetensors` file (atomically); returns its path.

    `dtype`: "F32", "F16" or "BF16" for the floating tensors. `embed_config`
    stores the ModelConfig as JSON in the header metadata (`tinysd_config`), so
    that loading it back needs no shape inference; real-world files have none.
    """
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {SAVE_DTYPES}")
    cfg, _ = _parts(model)
    meta = {"format": "pt"}
    if embed_config:
        meta[METADATA_CONFIG_KEY] = json.dumps(model_config_to_dict(cfg), sort_keys=True)
    path = Path(path)
    try:
        write_safetensors(path, to_compvis_state_dict(model), metadata=meta, dtype=dtype)
    except OSError as e:
        raise TinySDError(f"{path}: cannot write ({e.strerror or e})") from None
    return path


def component_config(network: str, cfg) -> dict[str, Any]:
    d = cfg.to_dict()
    if network == "text_encoder":
        return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", **d}
    return {"_class_name": "UNet2DConditionModel" if network == "unet" else "AutoencoderKL", **d}


def save_diffusers(model, out_dir: str | Path, *, dtype: str = "F32", variant: str | None = None,
                   overwrite: bool = False, tokenizer_dir: str | Path | None | bool = True, check: bool = True) -> Path:
    """Write a diffusers-layout folder from a LoadedModel or (ModelConfig, params), atomically.

    The folder is built under a temporary name beside `out_dir` and renamed
    into place; an existing `out_dir` is replaced only with `overwrite=True`.
    `dtype` ("F32", "F16", "BF16") converts floating tensors; `variant` names
    the weight files `*.{variant}.safetensors` (diffusers' fp16 variants).
    `tokenizer_dir`: True copies the model's own tokenizer folder, or the
    shipped one (tinysd.paths.TOKENIZER_DIR) if it has none; a path copies that
    folder; False/None writes no tokenizer. `check` verifies every network's
    tensors against its config first.
    """
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {SAVE_DTYPES}")
    cfg, params = _parts(model)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise TinySDError(f"{out}: already exists (pass overwrite=True to replace it)")
    if check:
        for network in NETWORKS:
            plan = {k: _Entry(None, k, tuple(a.shape)) for k, a in params[network].items()}  # type: ignore[arg-type]
            _check(network, getattr(cfg, network), plan, f"save_diffusers({out})")
    if tokenizer_dir is True:
        tokenizer_dir = getattr(model, "tokenizer_dir", None)
        if tokenizer_dir is None:
            from .paths import TOKENIZER_DIR
            tokenizer_dir = TOKENIZER_DIR if TOKENIZER_DIR.is_dir() else None
    with atomic_dir(out, overwrite=overwrite, what="diffusers model folder",
                    is_ours=lambda p: (p / "model_index.json").is_file()) as tmp:
        suffix = f".{variant}.safetensors" if variant else ".safetensors"
        for network, (sub, base, _) in COMPONENTS.items():
            (tmp / sub).mkdir()
            (tmp / sub / "config.json").write_text(json.dumps(component_config(network, getattr(cfg, network)), indent=2) + "\n")
            write_safetensors(tmp / sub / f"{base}{suffix}", params[network], metadata={"format": "pt"}, dtype=dtype)
        (tmp / "scheduler").mkdir()
        sched = {"_class_name": "PNDMScheduler", **cfg.scheduler.to_dict(),
                 "skip_prk_steps": True, "set_alpha_to_one": False, "clip_sample": False}
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2) + "\n")
        index = {
            "_class_name": "StableDiffusionPipeline",
            "text_encoder": ["transformers", "CLIPTextModel"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        if tokenizer_dir:
            shutil.copytree(tokenizer_dir, tmp / "tokenizer")
            index["tokenizer"] = ["transformers", "CLIPTokenizer"]
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out

