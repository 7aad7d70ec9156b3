"""Whole-model calibration and quantization: float pipeline runs -> ranges -> `QuantizedModel`.

    ranges = calibrate_model(loaded, prompts, steps=20, method="minmax")   # {network: {tensor: (min, max)}}
    qmodel = quantize_model(loaded, "w8a16", ranges)                        # or encodings from an AIMET file
    te, unet, vae = tinysd.quant.engine.build_integer_networks(qmodel)

`calibrate_model` runs the float text-to-image pipeline (`tinysd/pipeline.py`)
once per prompt, its three networks on `CalibratingInterpreter`s: the text
encoder sees the prompt and the empty negative prompt, the UNet every sampler
step with the conditional and unconditional halves of the classifier-free
guidance batch, the VAE decoder the final latents, and the VAE encoder the
decoded image (read back from the 8-bit PNG pixels as `x / 127.5 - 1`), so
that every network, encoder included, gets ranges. Prompt i uses seed
`seed + i`.

Methods (`CALIBRATION_METHODS`): "minmax" (the exact min and max seen),
"percentile" (the 99.99th percentiles) and "mse" (the range whose grid
quantizes the values seen with the least squared error,
`tinysd.quant.mse`). An MSE range depends on the grid, so "mse" needs the
precision; `calibrate_observers` + `ranges_from_observers` calibrate once
and give the ranges of several precisions (the "percentile" and "mse"
methods share the same histograms).

Pass a list as `record` to keep every float network call (inputs and output,
`NetworkCall`); `replay_sqnr` runs the same inputs through other (integer)
networks and reports the SQNR of their outputs against the float ones.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Collection, Mapping, Sequence

import numpy as np

from .. import __version__
from ..errors import TinySDError
from ..runstats import measure
from ..fixedpoint import ARITHMETIC_SPEC_VERSION
from ..interp.calibrate import DEFAULT_PERCENTILE, CalibratingInterpreter
from .encodings import Encoding
from .model import ACTIVATION_BITS, NETWORKS, QuantizedModel, canonical_precision, network_precisions
from .observers import mse_range_of
from .prepare import encodings_from_ranges, quantize_network

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_STEPS = 20
DEFAULT_CALIBRATION_SAMPLER, DEFAULT_CALIBRATION_GUIDANCE = "euler", 7.5
#: Range methods of `calibrate_model`; "mse" ranges depend on the precision.
CALIBRATION_METHODS = ("minmax", "percentile", "mse")
# the observer each method records with: "mse" searches the histograms a PercentileObserver counts
_OBSERVER = {"minmax": "minmax", "percentile": "percentile", "mse": "percentile"}
#: Keys of `replay_sqnr` results: one per network entry point.
CALL_KINDS = ("text_encoder", "unet", "vae.decode", "vae.encode")


# ---------------------------------------------------------------------------------------------
# SQNR
# ---------------------------------------------------------------------------------------------
def sqnr_db(ref, test) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref**2 / sum (ref - test)**2), float64.

    inf when test equals ref exactly; -inf when ref is all zeros and test is not. Shapes must match.
    """
    r = np.asarray(ref, dtype=np.float64)
    t = np.asarray(test, dtype=np.float64)
    if r.shape != t.shape:
        raise ValueError(f"test: shape {t.shape} does not match ref {r.shape}")
    noise = float(np.sum(np.square(r - t)))
    signal = float(np.sum(np.square(r)))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


# ---------------------------------------------------------------------------------------------
# recording network calls
# ---------------------------------------------------------------------------------------------
@dataclass
class NetworkCall:
    """One float network call: kind (one of CALL_KINDS), its arguments, its float32 output."""

    kind: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    output: np.ndarray | None = None


class _Tap:
    """Wraps a runtime network (TextEncoder / UNet / VAE) and appends each call to `record`."""

    def __init__(self, inner, record: list | None):
        self._inner, self._record = inner, record

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _log(self, kind, fn, args, kwargs):
        out = fn(*args, **kwargs)
        if self._record is not None:
            keep = tuple(np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args)
            self._record.append(NetworkCall(kind, keep, dict(kwargs), np.array(out, copy=True)))
        return out

    def __call__(self, *args, **kwargs):
        return self._log(self._inner.network, self._inner, args, kwargs)

    def encode(self, *args, **kwargs):
        return self._log("vae.encode", self._inner.encode, args, kwargs)

    def decode(self, *args, **kwargs):
        return self._log("vae.decode", self._inner.decode, args, kwargs)


def _check_method(method) -> str:
    if method not in CALIBRATION_METHODS:
        raise TinySDError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    return method


def calibrating_networks(loaded, method: str = "minmax", percentile: float = DEFAULT_PERCENTILE,
                         parts: Mapping[str, Mapping] | None = None):
    """(text_encoder, unet, vae) runtime wrappers of `loaded` on CalibratingInterpreters
    (method "mse" records with percentile observers, whose histograms it searches). parts:
    {network: {op: parts}} of ops whose parts are recorded too (`CalibratingInterpreter`)."""
    from ..models import VAE, TextEncoder, UNet, check_params
    from ..nn.clip import CLIPTextModel
    from ..nn.unet import UNet2DConditionModel
    from ..nn.vae import AutoencoderKL

    method = _OBSERVER[_check_method(method)]

    cfg = loaded.config
    nets = []
    for wrapper, graph, network, c in ((TextEncoder, CLIPTextModel, "text_encoder", cfg.text_encoder),
                                       (UNet, UNet2DConditionModel, "unet", cfg.unet),
                                       (VAE, AutoencoderKL, "vae", cfg.vae)):
        model = graph(c)
        check_params(model, loaded.params[network], network)
        nets.append(wrapper(model, CalibratingInterpreter(loaded.params[network], network, method, percentile,
                                                          (parts or {}).get(network))))
    return tuple(nets)


def _check_calibration_args(prompts, steps) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or not prompts:
        raise TinySDError("calibration prompts must be a non-empty list of strings")
    if not all(isinstance(p, str) for p in prompts):
        raise TinySDError("calibration prompts must be strings")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise TinySDError(f"calibration steps must be an integer >= 1 (got {steps!r})")
    return list(prompts)


def calibration_settings(loaded, steps: int | None = None, sampler: str | None = None,
                         guidance_scale: float | None = None) -> tuple:
    """(steps, sampler, guidance_scale) of the calibration runs: each given value, else for a
    w-conditioned (LCM-distilled, `time_cond_proj_dim`) UNet the model folder's generation defaults
    (`loaded.defaults`: such a UNet is distilled for its own sampler, step count and w, and other
    trajectories would range other activations), else DEFAULT_CALIBRATION_STEPS, euler, 7.5."""
    if loaded.config.unet.time_cond_proj_dim:
        d = loaded.defaults
        base = (d.steps, d.sampler, d.guidance_scale)
    else:
        base = (DEFAULT_CALIBRATION_STEPS, DEFAULT_CALIBRATION_SAMPLER, DEFAULT_CALIBRATION_GUIDANCE)
    return tuple(b if v is None else v for v, b in zip((steps, sampler, guidance_scale), base))


def calibrate_observers(loaded, prompts: Sequence[str], steps: int | None = None,
                        method: str = "minmax", sampler: str | None = None, seed: int = 0,
                        guidance_scale: float | None = None,
                        size: int | None = None, percentile: float = DEFAULT_PERCENTILE, record: list | None = None,
                        progress=None, parts: Mapping[str, Mapping] | None = None, stats=None,
                        ) -> dict[str, dict[str, object]]:
    """The observers of every tensor after float pipeline runs over `prompts` (module docstring).

    Arguments as `calibrate_model` (steps, sampler, guidance_scale None: `calibration_settings`);
    progress(done, total) is called after every sampler step
    (total = prompts x steps); parts: {network: {op: parts}} whose parts are observed too
    (`tinysd.interp.parts`); stats: a `tinysd.runstats.NetworkStats` the float calls are recorded in
    ("unet (float calibration)", ...), or None. Returns {network: {tensor name: observer}}: MinMaxObservers
    for "minmax", PercentileObservers for "percentile" and "mse"; `ranges_from_observers` turns
    them into ranges.
    """
    from ..paths import TOKENIZER_DIR
    from ..pipeline import Pipeline
    from ..tokenizer import CLIPTokenizer

    steps, sampler, guidance_scale = calibration_settings(loaded, steps, sampler, guidance_scale)
    prompts = _check_calibration_args(prompts, steps)
    te, unet, vae = calibrating_networks(loaded, method, percentile, parts)
    tokenizer = CLIPTokenizer.from_dir(loaded.tokenizer_dir or TOKENIZER_DIR)
    vae_tap = _Tap(vae, record)
    pipe = Pipeline(tokenizer, _Tap(te, record), _Tap(unet, record), vae_tap, loaded.config, model_name="calibration")
    pipe.stats = None if stats is None else _Suffixed(stats, " (float calibration)")
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        def step_done(done, total, i=i):
            if progress is not None:
                progress(i * total + done, len(prompts) * total)

        res = pipe.generate(prompt, steps=int(steps), guidance_scale=guidance_scale, seed=int(seed) + i,
                            sampler=sampler, width=size, height=size, callback=step_done)
        pixels = np.asarray(res.images[0], dtype=np.float32)  # (H, W, 3) in [0, 255]
        image = pixels.transpose(2, 0, 1)[None] / np.float32(127.5) - np.float32(1.0)  # (1, 3, H, W) in [-1, 1]
        with measure(stats, "vae.encode (float calibration)"):
            vae_tap.encode(image)
        log.info("calibration prompt %d/%d done (%.1f s)", i + 1, len(prompts), time.perf_counter() - t0)
    return {net.interp.network: dict(net.interp.observers) for net in (te, unet, vae)}


def ranges_from_observers(observers: Mapping[str, Mapping[str, object]], method: str, precision: str | None = None,
                          ) -> dict[str, dict[str, tuple[float, float]]]:
    """{network: {tensor: (min, max)}} (float64) from `calibrate_observers`' result.

    "minmax" / "percentile": each observer's `range()` (precision not needed). "mse": the
    MSE-optimal range for the activation bits of each network's precision in `precision` (8 for
    w8a8, 16 for w8a16) of each tensor's histogram (`tinysd.quant.observers.mse_range_of`).
    """
    method = _check_method(method)
    bits = _mse_bits(precision) if method == "mse" else {}
    out: dict[str, dict[str, tuple[float, float]]] = {}
    t0 = time.perf_counter()
    for net, obs in observers.items():
        ranges = {}
        for name, o in obs.items():
            lo, hi = mse_range_of(o, bits[net]) if method == "mse" else o.range()
            ranges[name] = (float(lo), float(hi))
        out[net] = ranges
    if method == "mse":
        log.info("mse ranges (%s) of %d tensors: %.1f s", precision, sum(map(len, out.values())),
                 time.perf_counter() - t0)
    return out


def _mse_bits(precision) -> dict[str, int]:
    """{network: activation bits} of `precision`, which the "mse" method needs."""
    if precision is None:
        raise TinySDError("calibration method mse needs a precision (its ranges depend on the grid)")
    return {net: ACTIVATION_BITS[p] for net, p in network_precisions(precision).items()}


def calibrate_model(loaded, prompts: Sequence[str], steps: int | None = None, method: str = "minmax",
                    sampler: str | None = None, seed: int = 0, guidance_scale: float | None = None, size: int | None = None,
                    percentile: float = DEFAULT_PERCENTILE, record: list | None = None, precision: str | None = None,
                    progress=None) -> dict[str, dict[str, tuple[float, float]]]:
    """Activation ranges of every network from float pipeline runs over `prompts` (module docstring).

    loaded: a `tinysd.checkpoint.LoadedModel`. steps, sampler, seed, guidance_scale, size (image
    width = height in pixels; None: the model's native size): as `Pipeline.generate` (steps, sampler,
    guidance_scale None: `calibration_settings`). method:
    "minmax", "percentile" (`percentile`) or "mse" (needs `precision`, "w8a8", "w8a16" or per
    network, "w8a8,vae=w8a16": the ranges are for each network's activation bits). record: a
    list to append every float network call to (`NetworkCall`), or None. progress(done, total):
    called after every sampler step. Returns {network: {tensor name: (min, max)}}.
    """
    _check_method(method)
    if method == "mse":
        _mse_bits(precision)  # fail before the float runs
    observers = calibrate_observers(loaded, prompts, steps, method, sampler=sampler, seed=seed,
                                    guidance_scale=guidance_scale, size=size, percentile=percentile, record=record,
                                    progress=progress)
    return ranges_from_observers(observers, method, precision)


class _Suffixed:
    """A NetworkStats whose names get a suffix ("unet" -> "unet (float calibration)")."""

    def __init__(self, stats, suffix: str):
        self.stats, self.suffix = stats, suffix

    def measure(self, name: str):
        return self.stats.measure(name + self.suffix)


def replay_sqnr(calls: Sequence[NetworkCall], networks, max_calls: int | None = None, progress=None,
                stats=None) -> dict[str, float]:
    """SQNR (dB) of `networks` = (text_encoder, unet, vae) against recorded float calls.

    Each recorded call of a kind in CALL_KINDS (at most `max_calls` per kind, the first ones) is
    run again with the same arguments; the outputs of one kind are compared as one signal
    (`sqnr_db` over all of them). progress(done, total) is called after every replayed call; stats: a
    `tinysd.runstats.NetworkStats` each replayed call is recorded in ("unet (integer SQNR)", ...), or None.
    Returns {kind: dB} for the kinds recorded.
    """
    te, unet, vae = networks
    fns = {"text_encoder": te, "unet": unet, "vae.decode": vae.decode, "vae.encode": vae.encode}
    chosen, per_kind = [], {}
    for call in calls:
        if call.kind in fns and (max_calls is None or per_kind.get(call.kind, 0) < max_calls):
            per_kind[call.kind] = per_kind.get(call.kind, 0) + 1
            chosen.append(call)
    refs: dict[str, list] = {}
    outs: dict[str, list] = {}
    for done, call in enumerate(chosen, 1):
        refs.setdefault(call.kind, []).append(np.asarray(call.output, np.float64).reshape(-1))
        with measure(stats, f"{call.kind} (integer SQNR)"):
            out = fns[call.kind](*call.args, **call.kwargs)
        outs.setdefault(call.kind, []).append(np.asarray(out, np.float64).reshape(-1))
        if progress is not None:
            progress(done, len(chosen))
    return {k: sqnr_db(np.concatenate(refs[k]), np.concatenate(outs[k])) for k in CALL_KINDS if k in refs}


# ---------------------------------------------------------------------------------------------
# quantizing a whole model
# ---------------------------------------------------------------------------------------------
def _per_network(d: Mapping | None, what: str) -> dict[str, dict]:
    """{network: {name: v}} from a nested dict or a flat one keyed `{network}.{...}`."""
    if d is None:
        return {}
    if set(d) <= set(NETWORKS) and all(isinstance(v, Mapping) for v in d.values()):
        return {k: dict(v) for k, v in d.items()}
    out: dict[str, dict] = {n: {} for n in NETWORKS}
    for name, v in d.items():
        net = name.split(".", 1)[0]
        if net not in out:
            raise TinySDError(f"{what}: tensor {name!r} does not start with a network name ({', '.join(NETWORKS)})")
        out[net][name] = v
    return out


def model_graphs(config) -> dict[str, object]:
    """{network: graph module} for a ModelConfig."""
    from ..nn.clip import CLIPTextModel
    from ..nn.unet import UNet2DConditionModel
    from ..nn.vae import AutoencoderKL

    return {"text_encoder": CLIPTextModel(config.text_encoder), "unet": UNet2DConditionModel(config.unet),
            "vae": AutoencoderKL(config.vae)}


def quantize_model(loaded, precision: str, ranges_or_encodings: Mapping, param_encodings: Mapping | None = None,
                   follow_softmax: Collection[str] = ()) -> QuantizedModel:
    """A `QuantizedModel` of all three networks, each at its precision in `precision` (a model
    precision: "w8a8", "w8a16" or per network, "w8a8,vae=w8a16").

    ranges_or_encodings: activation ranges {tensor: (min, max)} (from `calibrate_model`) or
    encodings {tensor: Encoding} (e.g. `load_encodings(file)[0]`), nested by network or flat
    with `{network}.` prefixed names. param_encodings: optional {`{network}.{param}`: Encoding}
    (flat or nested) to quantize weights with (a weight without one, or a network mapped to None,
    gets per-channel encodings from its values). follow_softmax: networks whose given softmax
    output encodings are used (an imported file's) instead of the fixed one. TinySDError naming
    what is missing.
    """
    acts = _per_network(ranges_or_encodings, "activation encodings")
    params = None
    if param_encodings is not None:
        nested = set(param_encodings) <= set(NETWORKS)
        params = dict(param_encodings) if nested else _per_network(param_encodings, "parameter encodings")
    per_net = network_precisions(precision)
    precision = canonical_precision(precision)
    graphs = model_graphs(loaded.config)
    networks = {}
    for net in NETWORKS:
        given = acts.get(net, {})
        if not given:
            raise TinySDError(f"{net}: no activation ranges or encodings given")
        if all(isinstance(v, Encoding) for v in given.values()):
            encs = given
        elif any(isinstance(v, Encoding) for v in given.values()):
            raise TinySDError(f"{net}: activation encodings mix ranges and Encoding objects")
        else:
            encs = encodings_from_ranges(given, per_net[net])
        net_params = None if params is None else params.get(net)
        networks[net] = quantize_network(graphs[net], loaded.params[net], net, per_net[net], encs, net_params,
                                         follow_softmax=net in follow_softmax)
    info = {"precision": precision, "arithmetic_spec_version": ARITHMETIC_SPEC_VERSION, "tinysd_version": __version__,
            "param_encodings": "given" if params is not None else "per-channel from weights"}
    return QuantizedModel(config=loaded.config, precision=precision, networks=networks, info=info)
