"""In-memory form of a quantized model: what `tinysd quantize` writes and the integer interpreter reads.

A quantized network is fully described by flat integer arrays (int8 weights,
int32 biases, multipliers, shifts, tables, norm parameters: everything the
integer interpreter reads at run time, named after the op they belong to) plus
the encodings of its activations and parameters (AIMET's notion, kept for
export and for dequantizing network outputs). Nothing float is needed to run it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..config import ModelConfig
from ..errors import TinySDError
from .encodings import Encoding

PRECISIONS = ("w8a8", "w8a16")  # of one network
NETWORKS = ("text_encoder", "unet", "vae")
ACTIVATION_BITS = {"w8a8": 8, "w8a16": 16}
#: the form of a model precision, for help texts and errors
PRECISION_SYNTAX = "w8a8, w8a16, or one of them with per-network overrides such as w8a8,vae=w8a16"


def network_precisions(spec: str) -> dict[str, str]:
    """{network: precision} of a model precision `spec` (TinySDError if malformed).

    A model precision is one of PRECISIONS for all three networks ("w8a8"), optionally
    followed by per-network overrides ("w8a8,vae=w8a16": text encoder and UNet w8a8,
    VAE w8a16). Each network is a separate integer graph whose input and output are
    quantized and dequantized at its boundary, so networks may differ in precision.
    """
    parts = spec.split(",") if isinstance(spec, str) else [None]
    base, overrides = parts[0], parts[1:]
    if base not in PRECISIONS:
        raise TinySDError(f"precision {spec!r}: expected {PRECISION_SYNTAX}")
    out = dict.fromkeys(NETWORKS, base)
    seen = set()
    for part in overrides:
        net, _, prec = part.partition("=")
        if net not in NETWORKS or prec not in PRECISIONS or net in seen:
            why = (f"{net!r} is given twice" if net in seen else f"{part!r} is not NETWORK=PRECISION with NETWORK one "
                   f"of {', '.join(NETWORKS)} and PRECISION one of {', '.join(PRECISIONS)}")
            raise TinySDError(f"precision {spec!r}: {why}")
        seen.add(net)
        out[net] = prec
    return out


def precision_name(per_network: dict[str, str]) -> str:
    """The canonical model precision of {network: precision}: the UNet's precision, then the
    networks that differ from it in NETWORKS order ("w8a8,vae=w8a16"; "w8a16" when all agree)."""
    base = per_network["unet"]
    return ",".join([base] + [f"{n}={per_network[n]}" for n in NETWORKS if per_network[n] != base])


def canonical_precision(spec: str) -> str:
    """`spec` in canonical form ("w8a8,vae=w8a16,text_encoder=w8a8" -> "w8a8,vae=w8a16")."""
    return precision_name(network_precisions(spec))


@dataclass
class QuantizedNetwork:
    network: str  # one of NETWORKS; also the prefix of its tensor names
    precision: str  # one of PRECISIONS
    arrays: dict[str, np.ndarray]  # integer run-time parameters by name (no float arrays)
    activations: dict[str, Encoding]  # activation tensor name ("unet.conv_in.out") -> encoding
    params: dict[str, Encoding]  # parameter name ("unet.conv_in.weight") -> encoding

    def __post_init__(self):
        for name, a in self.arrays.items():
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"{self.network}: run-time array {name} is {a.dtype}, not integer")


@dataclass
class QuantizedModel:
    config: ModelConfig
    precision: str  # a canonical model precision (`precision_name`): "w8a8", "w8a16", "w8a8,vae=w8a16"
    networks: dict[str, QuantizedNetwork]
    info: dict = field(default_factory=dict)  # calibration settings, SQNR, versions: recorded in the folder
