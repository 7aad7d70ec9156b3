"""The quantized engine: a `QuantizedModel`'s networks bound to IntegerInterpreters.

    te, unet, vae = build_integer_networks(qmodel)        # tinysd.models wrappers, integer inside

Importing this module registers the precisions "w8a8" and "w8a16" with the
pipeline (`tinysd.pipeline.register_precision`); `factory_for` makes the
factory of a per-network precision ("w8a8,vae=w8a16"). A factory takes either a
ready `QuantizedModel` (`qmodel=`, e.g. read from a quantized folder) or
quantizes the float `LoadedModel` on the fly: calibration over `prompts`
(default: the shipped set) for `steps` sampler steps with `method`, then
`quantize_model`.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import TinySDError
from ..interp.integer import IntegerInterpreter
from ..models import VAE, TextEncoder, UNet
from .calibration import DEFAULT_CALIBRATION_STEPS, calibrate_model, model_graphs, quantize_model
from .model import PRECISIONS, QuantizedModel, canonical_precision

log = logging.getLogger(__name__)


class IntegerTextEncoder(TextEncoder):
    """TextEncoder on an IntegerInterpreter; clip_skip is refused (the final layer norm's input
    encoding was prepared for the last layer's output)."""

    def __call__(self, ids, clip_skip: int | None = None) -> np.ndarray:
        if clip_skip:
            raise TinySDError(f"clip skip {clip_skip} is not available with a quantized text encoder "
                              f"(it is quantized for the output of the last layer)")
        return super().__call__(ids)


def build_integer_networks(qmodel: QuantizedModel, cache_weights: bool = False):
    """(text_encoder, unet, vae): tinysd.models wrappers whose interpreters are IntegerInterpreters
    over `qmodel.networks[...]`. cache_weights: keep the exact float32 copies of int8 weights
    that the GEMM kernels use between calls (faster; 4 bytes per weight)."""
    missing = [n for n in ("text_encoder", "unet", "vae") if n not in qmodel.networks]
    if missing:
        raise TinySDError(f"quantized model has no {', '.join(missing)} network")
    return tuple(build_integer_network(qmodel, n, cache_weights) for n in ("text_encoder", "unet", "vae"))


_WRAPPERS = {"text_encoder": IntegerTextEncoder, "unet": UNet, "vae": VAE}


def build_integer_network(qmodel: QuantizedModel, network: str, cache_weights: bool = False):
    """One network of `build_integer_networks` ("text_encoder", "unet" or "vae"); `qmodel` needs only that
    network's arrays (`load_quantized(..., networks=(network,))`)."""
    if network not in qmodel.networks:
        raise TinySDError(f"quantized model has no {network} network")
    graph = model_graphs(qmodel.config)[network]
    return _WRAPPERS[network](graph, IntegerInterpreter(qmodel.networks[network], cache_weights=cache_weights))


def factory_for(precision: str):
    """The engine factory of model precision `precision` (TinySDError if it is not one)."""
    precision = canonical_precision(precision)

    def factory(loaded=None, qmodel: QuantizedModel | None = None, prompts=None,
                steps: int | None = None, method: str = "minmax", cache_weights: bool = False,
                **calibration):
        if qmodel is None:
            if loaded is None:
                raise TinySDError(f"precision {precision}: give a float model or a quantized model")
            from .prompts import read_prompts

            prompts = read_prompts() if prompts is None else prompts
            log.info("quantizing to %s on the fly: %d calibration prompts x %d steps (%s)", precision,
                     len(prompts), steps or DEFAULT_CALIBRATION_STEPS, method)
            ranges = calibrate_model(loaded, prompts, steps, method, precision=precision, **calibration)
            qmodel = quantize_model(loaded, precision, ranges)
        elif qmodel.precision != precision:
            raise TinySDError(f"this quantized model was built for {qmodel.precision}, not {precision}")
        return build_integer_networks(qmodel, cache_weights=cache_weights)

    factory.__doc__ = f"Integer {precision} networks: from `qmodel`, or by calibrating and quantizing `loaded`."
    return factory


def register() -> None:
    """Register "w8a8" and "w8a16" with tinysd.pipeline (idempotent)."""
    from ..pipeline import register_precision

    for p in PRECISIONS:
        register_precision(p, factory_for(p))


register()
