"""PNG output with AUTOMATIC1111's `parameters` text chunk, written atomically.

The text follows A1111's `create_infotext` (modules/processing.py) exactly:

    a prompt
    Negative prompt: a negative prompt
    Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 0, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Version: tinysd 0.1.0

- the prompt line(s); then `Negative prompt: ...` only when the negative prompt
  is not empty; then one line of `key: value` pairs joined by ", ";
- fields in A1111's order: Steps, Sampler, CFG scale, Seed, Size (WxH), Model
  hash, Model, Denoising strength (img2img only), Clip skip, Version; fields without a value are left out
  (A1111 writes `Clip skip` only when it is > 1, counting 1 as "last layer");
- a value containing "," is written in double quotes with `\\` and `"`
  backslash-escaped (A1111's `quote`);
- sampler names are A1111's: "DDIM", "Euler", "Euler a", "DPM++ 2M", with
  " Karras" appended for Karras sigmas (A1111's names before its separate
  "Schedule type" field, e.g. "DPM++ 2M Karras");
- `Model hash` is A1111's "AutoV2" hash: the first 10 hex digits of the SHA-256
  of the checkpoint file (single-file checkpoints only; a diffusers folder has
  no A1111 hash and the field is left out);
- tinysd adds `Precision` (fp32, w8a8, w8a16 or per network, so that images of
  the same seed from float and integer networks are told apart) and, for a
  quantized model folder, `Source model` and `Source model hash`: the float
  checkpoint it was quantized from and its `model_hash` (the AutoV2 hash of a
  single file; for a diffusers folder the first 10 hex digits of
  `folder_sha256`), as recorded by `tinysd quantize`.

PIL stores the text as a tEXt chunk, or as iTXt when it is not Latin-1, as
A1111 does (both use `PngInfo.add_text`). `read_parameters` parses the text
back the way A1111's `parse_generation_parameters` does.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .atomic import check_writable_folder, output_file, write_file
from .errors import TinySDError
from .fileio import open_regular
from .schedulers import A1111_NAMES

log = logging.getLogger(__name__)

PARAMETERS_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"
# one `key: value` pair; a value is a quoted string with \\ and \" escapes, or runs to the next comma
# (the pattern of A1111's modules/infotext_utils.py)
_PARAM = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
_RE_PARAM = re.compile(_PARAM)
_RE_PARAMS_LINE = re.compile(r"^(?:" + _PARAM + r"){3,}$")
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def a1111_sampler_name(sampler: str, karras: bool) -> str:
    """A1111's display name of one of our samplers, e.g. ("dpmpp_2m", True) -> "DPM++ 2M Karras"."""
    try:
        name = A1111_NAMES[sampler]
    except KeyError:
        raise TinySDError(f"sampler {sampler!r} is unknown (choose from {', '.join(A1111_NAMES)})") from None
    return name + " Karras" if karras else name


def sampler_from_a1111(name: str) -> tuple[str, bool]:
    """Inverse of `a1111_sampler_name`: "Euler a" -> ("euler_a", False)."""
    karras = name.endswith(" Karras")
    base = name[: -len(" Karras")] if karras else name
    for ours, theirs in A1111_NAMES.items():
        if theirs == base:
            return ours, karras
    raise TinySDError(f"sampler {name!r} is not one tinysd implements ({', '.join(A1111_NAMES.values())})")


def file_sha256_prefix(path: str | Path, digits: int = 10) -> str:
    """First `digits` hex digits of the SHA-256 of a file (A1111's "AutoV2" model hash for 10)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:digits]


MODEL_HASH_METHOD = ("sha256 of the lines '<sha256 of file>  <path relative to the folder>\\n' of every regular "
                     "file of the model folder, sorted by path (what `find . -type f | sort | xargs sha256sum` lists)")


def folder_sha256(root: str | Path) -> str:
    """The hash of a model folder (MODEL_HASH_METHOD; symbolic links and other non-regular files are skipped)."""
    root = Path(root)
    lines = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                lines.append((f"./{p.relative_to(root).as_posix()}", file_sha256_prefix(p, 64)))
    lines.sort()
    return hashlib.sha256("".join(f"{d}  {r}\n" for r, d in lines).encode()).hexdigest()


def model_hash(path: str | Path) -> str:
    """10 hex digits naming a checkpoint: A1111's AutoV2 hash of a single file, or of `folder_sha256` for a folder."""
    path = Path(path)
    return folder_sha256(path)[:10] if path.is_dir() else file_sha256_prefix(path)


def quote(value) -> str:
    """A1111's `quote`: values with a comma go in double quotes, with \\ and " escaped."""
    text = str(value)
    if "," not in text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote(text: str) -> str:
    """Inverse of `quote`."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _number(x: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5" (shortest round-tripping form)."""
    return repr(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class GenerationParams:
    """What made one image; `clip_skip` counts layers skipped (diffusers' clip_skip, 0 = none)."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    sampler: str = "euler"
    karras: bool = False
    cfg_scale: float = 7.5
    seed: int = 0
    width: int = 512
    height: int = 512
    model_name: str | None = None
    model_hash: str | None = None
    clip_skip: int = 0
    version: str | None = None
    precision: str | None = None  # tinysd's network precision: fp32, w8a8, w8a16, w8a8,vae=w8a16
    source_model: str | None = None  # a quantized folder's float checkpoint (name) ...
    source_model_hash: str | None = None  # ... and its `model_hash`
    denoising_strength: float | None = None  # img2img's strength (A1111's "Denoising strength")

    def fields(self) -> dict[str, str]:
        """The `key: value` fields of A1111's last line, in its order, unquoted."""
        f = {
            "Steps": str(self.steps),
            "Sampler": a1111_sampler_name(self.sampler, self.karras),
            "CFG scale": _number(self.cfg_scale),
            "Seed": str(self.seed),
            "Size": f"{self.width}x{self.height}",
            "Model hash": self.model_hash,
            "Model": self.model_name,
            "Denoising strength": None if self.denoising_strength is None else _number(self.denoising_strength),
            # A1111 counts the layer it stops at: 1 = last layer (not written), 2 = penultimate
            "Clip skip": str(self.clip_skip + 1) if self.clip_skip else None,
            # tinysd's own fields (A1111 keeps fields it does not know): what ran, and a quantized model's source
            "Precision": self.precision,
            "Source model": self.source_model,
            "Source model hash": self.source_model_hash,
            "Version": self.version,
        }
        return {k: v for k, v in f.items() if v is not None}

    def to_a1111(self) -> str:
        """The `parameters` text, exactly as A1111's create_infotext lays it out."""
        line = ", ".join(f"{k}: {quote(v)}" for k, v in self.fields().items())
        negative = f"\n{NEGATIVE_PREFIX} {self.negative_prompt}" if self.negative_prompt else ""
        return f"{self.prompt}{negative}\n{line}".strip()


def parse_parameters(text: str) -> dict[str, str]:
    """A1111's `parse_generation_parameters`: {"Prompt", "Negative prompt", field: value, "Size-1", "Size-2"}."""
    *lines, last = text.strip().split("\n")
    if not _RE_PARAMS_LINE.match(last):
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):].strip()
        (negative if in_negative else prompt).append(line)
    out = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _RE_PARAM.findall(last):
        value = unquote(value.strip())
        m = _RE_SIZE.match(value)
        if m:
            out[f"{key}-1"], out[f"{key}-2"] = m.group(1), m.group(2)
        out[key] = value
    return out


def params_from_text(text: str) -> GenerationParams:
    """GenerationParams from a `parameters` text (fields tinysd does not use are ignored)."""
    d = parse_parameters(text)
    try:
        sampler, karras = sampler_from_a1111(d.get("Sampler", "Euler"))
        return GenerationParams(
            prompt=d["Prompt"],
            negative_prompt=d["Negative prompt"],
            steps=int(d.get("Steps", 20)),
            sampler=sampler,
            karras=karras,
            cfg_scale=float(d.get("CFG scale", 7.5)),
            seed=int(d.get("Seed", 0)),
            width=int(d.get("Size-1", 512)),
            height=int(d.get("Size-2", 512)),
            model_name=d.get("Model"),
            model_hash=d.get("Model hash"),
            clip_skip=int(d["Clip skip"]) - 1 if "Clip skip" in d else 0,
            version=d.get("Version"),
            precision=d.get("Precision"),
            source_model=d.get("Source model"),
            source_model_hash=d.get("Source model hash"),
            denoising_strength=float(d["Denoising strength"]) if "Denoising strength" in d else None,
        )
    except ValueError as e:
        raise TinySDError(f"parameters text: cannot parse ({e})") from None


def check_output_path(path: str | Path, probe: bool = True) -> Path:
    """Raise TinySDError unless a PNG can be written at `path` (checked before any long work).

    The name must end in `.png` (tinysd writes PNG only; a folder name such as `out/` is refused
    too). What exists there must be a regular file, or a symbolic link to one, which is written
    through (`tinysd.atomic.output_file`); its folder must exist and be writable (`probe`: tried by
    creating a file; off for the further files of a batch, which share the folder).
    """
    path = Path(path)
    target = output_file(path)
    if path.suffix.lower() != ".png":
        what = "a folder name" if not path.suffix else f"a {path.suffix} name"
        raise TinySDError(f"{path}: tinysd writes PNG images only; give a file name ending in .png (not {what})")
    if probe:
        check_writable_folder(target.parent, str(path))
    return path


def write_png(image, path: str | Path, params: GenerationParams | str | None = None) -> Path:
    """Save a PIL image as PNG at `path` with the `parameters` text, atomically.

    The PNG is written to a temporary file in the same folder and moved over
    `path` with os.replace, so `path` is either untouched or complete.
    """
    from PIL.PngImagePlugin import PngInfo

    path = check_output_path(path)
    info = PngInfo()
    if params is not None:
        info.add_text(PARAMETERS_KEY, params if isinstance(params, str) else params.to_a1111())
    try:
        write_file(path, lambda f: image.save(f, format="PNG", pnginfo=info))
    except OSError as e:
        raise TinySDError(f"{path}: cannot write PNG ({e.strerror or e})") from None
    log.info("wrote %s", path)
    return path


def read_parameters(path: str | Path) -> str | None:
    """The `parameters` text of a PNG (tEXt, zTXt or iTXt), or None if it has none."""
    from PIL import Image

    try:
        with open_regular(path) as f, Image.open(f) as im:
            im.load()
            return getattr(im, "text", {}).get(PARAMETERS_KEY)
    except OSError as e:
        raise TinySDError(f"{path}: cannot read PNG ({e})") from None
