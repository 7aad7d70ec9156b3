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
from .encodings import Encoding

PRECISIONS = ("w8a8", "w8a16")
NETWORKS = ("text_encoder", "unet", "vae")
ACTIVATION_BITS = {"w8a8": 8, "w8a16": 16}


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
    precision: str
    networks: dict[str, QuantizedNetwork]
    info: dict = field(default_factory=dict)  # calibration settings, SQNR, versions: recorded in the folder
