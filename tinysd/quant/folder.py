"""Quantized model folders: what `tinysd quantize` writes and `Pipeline.from_pretrained` runs.

A folder is self-contained: nothing float is needed to run it, and nothing
outside it is read::

    OUT/
      quantization.json            format, versions, precision, calibration info,
                                   per-file SHA-256 and each array's dtype and shape
      encodings.json               AIMET 1.0.0 encodings of all three networks
                                   (names prefixed `text_encoder.`, `unet.`, `vae.`)
      text_encoder/config.json     the network's config (diffusers/transformers keys)
      text_encoder/quantized.safetensors
                                   its integer run-time arrays (int8 weights, int32
                                   biases, multipliers, shifts, tables...), stored as
                                   the integer interpreter reads them
      unet/config.json, unet/quantized.safetensors
      vae/config.json, vae/quantized.safetensors
      scheduler/scheduler_config.json
      tokenizer/vocab.json, tokenizer/merges.txt  (a copy of the tokenizer used)

`save_quantized` builds the folder under a temporary name beside OUT and
renames it into place, so an interrupted run leaves neither a partial OUT nor
the temporary folder; an existing OUT is replaced only with `overwrite=True`,
and only when it is itself a quantized folder (or an empty folder).

`load_quantized` checks everything before returning: the format and arithmetic
spec versions, the precision (against the one asked for, and against every
activation encoding's bitwidth), that each file is present and parses, that
each safetensors file holds exactly the arrays listed in quantization.json
with their dtypes and shapes, and each file's SHA-256. Every failure is one
TinySDError naming the file (and tensor).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from .. import __version__
from ..checkpoint import COMPONENTS, component_config
from ..config import ModelConfig, SchedulerConfig
from .. import atomic
from ..atomic import atomic_dir
from ..errors import TinySDError
from ..fileio import open_regular, read_text
from ..fixedpoint import ARITHMETIC_SPEC_VERSION
from ..safetensors_io import DTYPES, SafetensorsFile, write_safetensors
from .encodings import (
    QUANT_SCHEME_MINMAX,
    QUANT_SCHEME_PERCENTILE,
    Encoding,
    default_quantizer_args,
    load_encodings,
    save_encodings,
)
from .model import ACTIVATION_BITS, NETWORKS, QuantizedModel, QuantizedNetwork, canonical_precision, network_precisions

log = logging.getLogger(__name__)

FORMAT = "tinysd-quantized-model"
FORMAT_VERSION = 1
MARKER = "quantization.json"
ENCODINGS_FILE = "encodings.json"
ARRAYS_FILE = "quantized.safetensors"
SCHEDULER_FILE = "scheduler/scheduler_config.json"
TOKENIZER_SUBDIR = "tokenizer"
TOKENIZER_REQUIRED = ("vocab.json", "merges.txt")
TOKENIZER_OPTIONAL = ("special_tokens_map.json", "tokenizer_config.json")  # read by CLIPTokenizer.from_dir if present
MAX_LISTED = 5
_HASH_CHUNK = 1 << 22


def is_quantized_folder(path: str | Path) -> bool:
    """True when `path` is a folder `save_quantized` wrote: it holds quantization.json or, damaged,
    a network's quantized.safetensors (so that loading it reports what is missing)."""
    p = Path(path)
    return p.is_dir() and ((p / MARKER).is_file() or any((p / n / ARRAYS_FILE).is_file() for n in NETWORKS))


def _listing(names) -> str:
    names = list(names)
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def check_output_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """TinySDError unless `save_quantized(..., out_dir, overwrite)` may write there.

    Its parent folder must exist and be writable. An existing `out_dir` needs `overwrite`, and
    even then must be a quantized model folder or empty: nothing else is ever replaced
    (`tinysd.atomic.check_output_dir`). Called by the CLI before any work, and again by `save_quantized`.
    """
    return atomic.check_output_dir(out_dir, overwrite, is_quantized_folder, "quantized model folder")


def _check_model(qmodel: QuantizedModel) -> None:
    """ValueError naming what is inconsistent in an in-memory QuantizedModel (a programming error)."""
    try:
        per_net = network_precisions(qmodel.precision)
    except TinySDError as e:
        raise ValueError(f"qmodel.precision: {e}") from None
    if qmodel.precision != canonical_precision(qmodel.precision):
        raise ValueError(f"qmodel.precision: {qmodel.precision!r} is not canonical")
    if set(qmodel.networks) != set(NETWORKS):
        raise ValueError(f"qmodel.networks: expected {NETWORKS}, got {tuple(qmodel.networks)}")
    for key, net in qmodel.networks.items():
        if net.network != key or net.precision != per_net[key]:
            raise ValueError(f"qmodel.networks[{key!r}]: network {net.network!r}, precision {net.precision!r} "
                             f"in a {qmodel.precision} model")
        for role, encs in (("activation", net.activations), ("param", net.params)):
            for name in encs:
                if not name.startswith(f"{key}."):
                    raise ValueError(f"qmodel.networks[{key!r}]: {role} encoding {name!r} lacks the '{key}.' prefix")
        bits = ACTIVATION_BITS[net.precision]
        for name, enc in net.activations.items():
            if enc.bitwidth != bits:
                raise ValueError(f"{name}: {enc.bitwidth}-bit activation encoding in a {net.precision} network")


def _quant_scheme(info: Mapping[str, Any]) -> str:
    return QUANT_SCHEME_PERCENTILE if info.get("method") == "percentile" else QUANT_SCHEME_MINMAX


def _write_json(path: Path, doc) -> None:
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=_jsonable, allow_nan=False) + "\n", encoding="utf-8")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_REQUIRED:
        if not (src / name).is_file():
            raise TinySDError(f"{src / name}: tokenizer file not found")
    dst.mkdir()
    for name in TOKENIZER_REQUIRED + TOKENIZER_OPTIONAL:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def save_quantized(qmodel: QuantizedModel, out_dir: str | Path, overwrite: bool = False,
                   tokenizer_dir: str | Path | None = None) -> Path:
    """Write `qmodel` as a quantized model folder at `out_dir` (layout in the module docstring); returns its path.

    `tokenizer_dir`: the tokenizer folder to copy (None: the shipped one,
    tinysd.paths.TOKENIZER_DIR). Atomic: the folder is built as
    `.tinysd-tmp-{name}.*` beside `out_dir` and renamed into place; on any failure
    the temporary folder is removed and `out_dir` is untouched. TinySDError
    if `out_dir` may not be written (see `check_output_dir`).
    """
    _check_model(qmodel)
    out = check_output_dir(out_dir, overwrite)
    if tokenizer_dir is None:
        from ..paths import TOKENIZER_DIR

        tokenizer_dir = TOKENIZER_DIR
    tokenizer_dir = Path(tokenizer_dir)
    with atomic_dir(out, overwrite=overwrite, what="quantized model folder", is_ours=is_quantized_folder) as tmp:
        networks = {}
        activations: dict[str, Encoding] = {}
        params: dict[str, Encoding] = {}
        for network in NETWORKS:
            net = qmodel.networks[network]
            sub = COMPONENTS[network][0]
            (tmp / sub).mkdir()
            _write_json(tmp / sub / "config.json", component_config(network, getattr(qmodel.config, network)))
            write_safetensors(tmp / sub / ARRAYS_FILE, net.arrays,
                              metadata={"format": FORMAT, "network": network, "precision": net.precision})
            networks[network] = {
                "config": f"{sub}/config.json",
                "arrays": f"{sub}/{ARRAYS_FILE}",
                "sha256": file_sha256(tmp / sub / ARRAYS_FILE),
                "tensors": {k: [str(a.dtype), list(a.shape)] for k, a in sorted(net.arrays.items())},
            }
            activations.update(net.activations)
            params.update(net.params)
        save_encodings(tmp / ENCODINGS_FILE, activations, params, version="1.0.0",
                       quantizer_args=default_quantizer_args(activations, params, _quant_scheme(qmodel.info)))
        (tmp / "scheduler").mkdir()
        _write_json(tmp / SCHEDULER_FILE, qmodel.config.scheduler.to_dict())
        _copy_tokenizer(tokenizer_dir, tmp / TOKENIZER_SUBDIR)
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tinysd_version": __version__,
            "arithmetic_spec_version": ARITHMETIC_SPEC_VERSION,
            "precision": qmodel.precision,
            "activation_bitwidth": {n: ACTIVATION_BITS[qmodel.networks[n].precision] for n in NETWORKS},
            "encodings": {"file": ENCODINGS_FILE, "version": "1.0.0", "sha256": file_sha256(tmp / ENCODINGS_FILE)},
            "networks": networks,
            "info": qmodel.info,
        }
        try:
            _write_json(tmp / MARKER, doc)
        except (TypeError, ValueError) as e:
            raise ValueError(f"qmodel.info: cannot be written as JSON ({e})") from None
    log.info("wrote %s quantized model to %s", qmodel.precision, out)
    return out


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise TinySDError(f"{path}: missing ({what})")
    try:
        return json.loads(read_text(path))
    except OSError as e:
        raise TinySDError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise TinySDError(f"{path}: invalid JSON ({e})") from None


def _field(doc: Mapping, key: str, kind, where: Path):
    v = doc.get(key)
    if not isinstance(v, kind) or isinstance(v, bool) and kind is not bool:
        raise TinySDError(f"{where}: field {key!r} is missing or malformed")
    return v


def read_header(path: str | Path) -> dict:
    """quantization.json of a quantized folder, with its format, versions and precision checked."""
    root = Path(path)
    marker = root / MARKER
    doc = _read_json(marker, "the description of a quantized model folder")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TinySDError(f"{marker}: not a tinysd quantized model description (format is not {FORMAT!r})")
    if doc.get("format_version") != FORMAT_VERSION:
        raise TinySDError(f"{marker}: folder format version {doc.get('format_version')!r} is not supported "
                          f"(this tinysd reads version {FORMAT_VERSION})")
    spec = doc.get("arithmetic_spec_version")
    if spec != ARITHMETIC_SPEC_VERSION:
        raise TinySDError(f"{marker}: built for arithmetic spec version {spec!r}, but this engine implements "
                          f"version {ARITHMETIC_SPEC_VERSION!r}; quantize the float model again with this tinysd")
    try:
        canonical = canonical_precision(doc.get("precision"))
    except TinySDError as e:
        raise TinySDError(f"{marker}: {e}") from None
    if doc["precision"] != canonical:
        raise TinySDError(f"{marker}: precision {doc['precision']!r} is not in canonical form ({canonical!r})")
    if doc.get("tinysd_version") != __version__:
        log.info("%s: written by tinysd %s (this is %s)", marker, doc.get("tinysd_version"), __version__)
    return doc


def check_precision(path: str | Path, folder_precision: str, requested: str | None) -> None:
    """TinySDError naming both precisions when `requested` is given and differs from the folder's
    (per-network precisions are compared in canonical form)."""
    try:
        if requested is None or canonical_precision(requested) == folder_precision:
            return
        how = f"quantize the float model again with --precision {requested}"
    except TinySDError:
        how = f"run the float model for {requested}"
    raise TinySDError(f"{path}: this quantized model was built for precision {folder_precision}, not {requested}; "
                      f"run it at {folder_precision}, or {how}")


def _load_arrays(root: Path, network: str, entry: Mapping, read: bool = True) -> dict[str, np.ndarray]:
    """The network's arrays, every check done; read=False: only the checks the header allows (listed tensors,
    dtypes, shapes), no data read and no SHA-256, and {} returned."""
    where = root / MARKER
    rel = _field(entry, "arrays", str, where)
    tensors = _field(entry, "tensors", dict, where)
    digest = _field(entry, "sha256", str, where)
    path = root / rel
    if not path.is_file():
        raise TinySDError(f"{path}: missing ({network} arrays)")
    sf = SafetensorsFile(path)  # header checked: offsets, sizes, dtypes
    missing = [k for k in tensors if k not in sf.infos]
    extra = [k for k in sf.infos if k not in tensors]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensor(s): {_listing(missing)}")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s): {_listing(extra)}")
        raise TinySDError(f"{path}: does not hold the arrays listed in {MARKER}: " + "; ".join(parts))
    for name, spec in tensors.items():
        info = sf.infos[name]
        a_dtype, a_shape = DTYPES[info.dtype][0], info.shape  # those of the array read_raw makes
        try:
            dtype, shape = np.dtype(spec[0]), tuple(int(d) for d in spec[1])
        except (TypeError, ValueError, IndexError):
            raise TinySDError(f"{where}: malformed entry for {network} tensor {name!r}") from None
        if dtype.kind not in "iu":
            raise TinySDError(f"{where}: {network} tensor {name!r} is listed as {dtype}, not an integer type")
        if a_dtype != dtype:
            raise TinySDError(f"{path}: tensor {name!r} is {a_dtype}, expected {dtype}")
        if a_shape != shape:
            raise TinySDError(f"{path}: tensor {name!r} has shape {list(a_shape)}, expected {list(shape)}")
    if not read:
        return {}
    arrays = sf.read_raw(tensors)
    if file_sha256(path) != digest:
        raise TinySDError(f"{path}: corrupt (SHA-256 differs from the one recorded in {MARKER})")
    return {name: arrays[name] for name in tensors}


def _split_encodings(path: Path, role: str, encs: Mapping[str, Encoding]) -> dict[str, dict[str, Encoding]]:
    out: dict[str, dict[str, Encoding]] = {n: {} for n in NETWORKS}
    stray = []
    for name, enc in encs.items():
        network = name.split(".", 1)[0]
        if network in out and "." in name:
            out[network][name] = enc
        else:
            stray.append(name)
    if stray:
        raise TinySDError(f"{path}: {len(stray)} {role} encoding name(s) without a network prefix "
                          f"({', '.join(n + '.' for n in NETWORKS)}): {_listing(stray)}")
    return out


def load_quantized(path: str | Path, precision: str | None = None,
                   networks: Iterable[str] = NETWORKS) -> QuantizedModel:
    """Read a folder written by `save_quantized`; every array is returned read-only, as stored.

    `precision`: when given, the folder must have been built for it (else a
    TinySDError naming both). `networks`: the networks whose arrays are read
    (the model's `networks` has only those; `Pipeline(low_memory=True)` reads one
    at a time); the headers, configs and encodings are checked in every case.
    All validation failures are one TinySDError naming the file (and tensor);
    see the module docstring.
    """
    networks_wanted = tuple(networks)
    unknown = [n for n in networks_wanted if n not in NETWORKS]
    if unknown:
        raise ValueError(f"unknown networks {unknown} (expected some of {NETWORKS})")
    root = Path(path)
    if not root.is_dir():
        raise TinySDError(f"{root}: no such folder")
    doc = read_header(root)
    marker = root / MARKER
    folder_precision = doc["precision"]
    check_precision(root, folder_precision, precision)
    networks = _field(doc, "networks", dict, marker)
    if set(networks) != set(NETWORKS):
        raise TinySDError(f"{marker}: lists networks {sorted(networks)}, expected {list(NETWORKS)}")
    info = doc.get("info", {})
    if not isinstance(info, dict):
        raise TinySDError(f"{marker}: field 'info' is not an object")

    # configs
    configs = {}
    for network in NETWORKS:
        entry = _field(networks, network, dict, marker)
        cfg_path = root / _field(entry, "config", str, marker)
        if not cfg_path.is_file():
            raise TinySDError(f"{cfg_path}: missing ({network} config)")
        configs[network] = COMPONENTS[network][2].from_json(cfg_path)
    sched_path = root / SCHEDULER_FILE
    if not sched_path.is_file():
        raise TinySDError(f"{sched_path}: missing (scheduler config)")
    config = ModelConfig(scheduler=SchedulerConfig.from_json(sched_path), **configs)
    for name in TOKENIZER_REQUIRED:
        p = root / TOKENIZER_SUBDIR / name
        if not p.is_file():
            raise TinySDError(f"{p}: missing (tokenizer file)")

    # encodings
    enc_entry = _field(doc, "encodings", dict, marker)
    enc_path = root / _field(enc_entry, "file", str, marker)
    if not enc_path.is_file():
        raise TinySDError(f"{enc_path}: missing (encodings)")
    act, par, _ = load_encodings(enc_path)
    per_net = network_precisions(folder_precision)
    for name, enc in act.items():
        net_precision = per_net.get(name.split(".", 1)[0])
        if net_precision is not None and enc.bitwidth != ACTIVATION_BITS[net_precision]:
            raise TinySDError(f"{enc_path}: activation tensor {name!r} has a {enc.bitwidth}-bit encoding, "
                              f"but the folder is {folder_precision} ({ACTIVATION_BITS[net_precision]}-bit "
                              f"activations there)")
    if file_sha256(enc_path) != _field(enc_entry, "sha256", str, marker):
        raise TinySDError(f"{enc_path}: corrupt (SHA-256 differs from the one recorded in {MARKER})")
    act_by, par_by = _split_encodings(enc_path, "activation", act), _split_encodings(enc_path, "param", par)

    nets = {}
    for network in NETWORKS:
        arrays = _load_arrays(root, network, networks[network], read=network in networks_wanted)
        if network not in networks_wanted:
            continue
        nets[network] = QuantizedNetwork(network=network, precision=per_net[network], arrays=arrays,
                                         activations=act_by[network], params=par_by[network])
    log.info("loaded %s quantized model from %s", folder_precision, root)
    return QuantizedModel(config=config, precision=folder_precision, networks=nets, info=info)
