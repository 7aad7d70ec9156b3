"""`tinysd quantize` as a library call: float checkpoint -> quantized model folder.

    out, sqnr = quantize_checkpoint("sd15/", "sd15-w8a16/", "w8a16")          # calibrate, quantize, save
    out, sqnr = quantize_checkpoint("sd15/", "sd15-dev/", "w8a8", encodings_file="device.encodings")
    out, sqnr = quantize_checkpoint("sd15/", "sd15-dev/", "w8a8", encodings=["unet=unet.encodings"],
                                    onnx=["unet=unet.onnx"])          # AIMET's own files, one per network

Steps: check the options and OUT (before any work); read the calibration
prompts; with encodings files, read them (before the checkpoint); load the
checkpoint; with files, rename their encodings to tinysd's names (through each
file's ONNX graph when given, `tinysd.quant.imports`) and take the graphs'
weights; run the float pipeline over the prompts on calibrating interpreters
(recording the parts of ops the files quantize inside), recording every network
call; quantize (from the recorded ranges, or from the files' encodings with the
calibrated ones for what they lack); replay the recorded calls through the integer
networks for the SQNR of each against float; write the folder atomically
(`tinysd.quant.folder.save_quantized`).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from ..errors import TinySDError
from ..runstats import measure
from .model import NETWORKS, canonical_precision, network_precisions

log = logging.getLogger(__name__)

# the float pipeline runs of calibration: image i of the prompt list uses seed CALIBRATION_SEED + i
CALIBRATION_SAMPLER, CALIBRATION_SEED, CALIBRATION_GUIDANCE = "euler", 0, 7.5


def _finite_or_str(v: float):
    return float(v) if math.isfinite(v) else str(v)


def _import_sources(loaded, sources, precision: str, files=None):
    """Read the encodings files of `sources` and put the graphs' weights into `loaded` (in place).

    Returns (imported {network: NetworkImport}, summary lines about the weights)."""
    from .imports import check_bitwidths, read_sources

    imported = read_sources(loaded, sources, files)
    check_bitwidths(imported, precision)
    lines = []
    for net, imp in imported.items():
        if not imp.weights:
            continue
        old = loaded.params[net]
        changed = sum(int(np.count_nonzero(w != np.asarray(old[k], np.float32))) for k, w in imp.weights.items())
        total = sum(w.size for w in imp.weights.values())
        loaded.params[net] = {**old, **imp.weights}
        lines.append(f"{net}: {len(imp.weights)} parameters taken from the graph; {changed} of {total} values "
                     f"({100.0 * changed / max(total, 1):.2f}%) differ from the checkpoint's")
    return imported, lines


def quantize_checkpoint(model, out_dir, precision: str, prompts_file=None, steps: int | None = None,
                        method: str | None = None, encodings_file=None, overwrite: bool = False,
                        sqnr_calls: int | None = None, progress=None, encodings=(), onnx=(),
                        summary: dict | None = None, weights: str = "nearest", adaround=None, stats=None):
    """Quantize the float checkpoint `model` to a folder `out_dir` (the steps of the module docstring).

    precision: "w8a8", "w8a16" or per network ("w8a8,vae=w8a16"). prompts_file: calibration prompts (None: the
    shipped set).
    steps: sampler steps per prompt (None: DEFAULT_CALIBRATION_STEPS, or a w-conditioned model's own
    step count, `calibration_settings`). method: "minmax" (default),
    "percentile" or "mse" (ranges searched for `precision`'s grid). encodings: `--encodings` values,
    `KEY=FILE` per network (KEY: text_encoder, unet, vae, vae.decode, vae.encode) or one bare FILE of
    tinysd names (`encodings_file` is the same as a bare FILE); onnx: `--onnx KEY=MODEL.onnx` values,
    the exported graph of a file's network (`tinysd.quant.imports`). Tensors the files lack are
    calibrated with `method`. sqnr_calls: replay only the first N recorded calls of each
    network for the SQNR (None: all; the integer replay costs as much as the calibration run in
    integer arithmetic). summary: a dict to fill with what came from the files ({"lines": [...],
    "calibrated": {network: [names]}, "warnings": [...]}). Returns (out path, {call kind: SQNR dB});
    the SQNR and the calibration settings are recorded in the folder's quantization.json ("info").
    progress(stage, done, total) is called after every calibration sampler step (stage "calibration")
    and every replayed call ("SQNR").
    weights: "nearest" (round to nearest) or "adaround" (`tinysd.quant.adaround`, with the
    `AdaRoundSettings` `adaround`, None: the defaults; progress stage "AdaRound {network}" per layer);
    not with encodings files (their weights and parameter encodings decide the integers).
    stats: a `tinysd.runstats.NetworkStats` to record per-network time and peak RSS in (the float
    calibration calls, quantization, the integer SQNR replay), or None.
    """
    from ..checkpoint import load_checkpoint
    from ..png import model_hash
    from .calibration import (CALIBRATION_METHODS, calibrate_observers, calibration_settings, quantize_model,
                              ranges_from_observers, replay_sqnr)
    from .encodings import load_encodings
    from .engine import build_integer_networks
    from .folder import check_output_dir, is_quantized_folder, save_quantized
    from .imports import merge, parse_sources, range_warnings
    from .derived import derive_missing
    from .model import ACTIVATION_BITS
    from .prepare import encodings_from_ranges
    from .prompts import read_prompts

    precision = canonical_precision(precision)
    encodings = list(encodings) + ([str(encodings_file)] if encodings_file is not None else [])
    sources = parse_sources(encodings, onnx)
    method_given = method is not None
    method = method or "minmax"
    if method not in CALIBRATION_METHODS:
        raise TinySDError(f"method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise TinySDError(f"calibration steps must be an integer >= 1 (got {steps!r})")
    if sqnr_calls is not None and (isinstance(sqnr_calls, bool) or not isinstance(sqnr_calls, int) or sqnr_calls < 1):
        raise TinySDError(f"SQNR calls must be an integer >= 1 (got {sqnr_calls!r})")
    from .adaround import WEIGHT_METHODS, AdaRoundSettings

    if weights not in WEIGHT_METHODS:
        raise TinySDError(f"weights {weights!r} is not one of {', '.join(WEIGHT_METHODS)}")
    if weights == "adaround" and sources:
        raise TinySDError("--weights adaround does not apply with --encodings files (the files' parameter encodings "
                          "and weights decide the integers); leave one out")
    adaround = (adaround or AdaRoundSettings()).check() if weights == "adaround" else None
    out = check_output_dir(out_dir, overwrite)
    model = Path(model)
    if is_quantized_folder(model):
        raise TinySDError(f"{model}: is already a quantized model; quantize its float checkpoint instead")
    prompts = read_prompts(prompts_file)
    files = {}
    for src in sources:  # a bad file fails before the checkpoint is read
        files[src.path] = load_encodings(src.path)
        if src.onnx is not None:
            from .onnx_map import _onnx

            _onnx()
            if not src.onnx.is_file():
                raise TinySDError(f"{src.onnx}: ONNX file not found")

    loaded = load_checkpoint(model)
    imported, lines = _import_sources(loaded, sources, precision, files) if sources else ({}, [])
    if sources and set(imported) == set(NETWORKS) and method_given:
        raise TinySDError("--method does not apply: every network has an --encodings file (tinysd calibrates only "
                          "what a file lacks, with min-max); leave it out")
    calls: list = []
    # CALIBRATION_SAMPLER / _GUIDANCE, or a w-conditioned (LCM) model's own sampler, steps and guidance
    steps, sampler, guidance = calibration_settings(loaded, steps, None, None)
    observers = calibrate_observers(loaded, prompts, steps, method, sampler=sampler, seed=CALIBRATION_SEED,
                                    guidance_scale=guidance, record=calls,
                                    progress=progress and (lambda done, total: progress("calibration", done, total)),
                                    parts={n: imp.parts for n, imp in imported.items()}, stats=stats)
    ranges = ranges_from_observers(observers, method, precision)
    per_net = network_precisions(precision)
    calibrated = {n: encodings_from_ranges(r, per_net[n]) for n, r in ranges.items()}
    if imported:
        softmax = {n: _softmax_outputs(loaded.config, n) for n in NETWORKS}
        acts, report = merge(imported, calibrated, softmax)
        derive_missing(acts, report, {n: _trace(loaded.config, n) for n in imported},
                       {n: ACTIVATION_BITS[per_net[n]] for n in imported},
                       {n: imp.parts for n, imp in imported.items()})
        fixed = set().union(*softmax.values()) | {n for imp in imported.values() for n in imp.activations
                                                   if n.endswith((".sigmoid.out", ".erf.out"))}
        warnings = range_warnings(imported, {n: {k: o.range() for k, o in obs.items()} for n, obs in observers.items()},
                                  fixed)
        for w in warnings:
            log.warning("%s", w)
        params = {n: {**imported[n].params, **imported[n].norm_params} if n in imported else None for n in NETWORKS}
        qmodel = quantize_model(loaded, precision, acts, params, follow_softmax=set(imported))
        lines += _summary_lines(imported, report)
    else:
        report, warnings = None, []
        qloaded, params = loaded, None
        if adaround is not None:
            qloaded, params, weights_info = _adaround(loaded, calls, adaround, progress)
        with measure(stats, "quantize (all networks)"):
            qmodel = quantize_model(qloaded, precision, calibrated, params)
    for line in lines:
        log.info("%s", line)
    if summary is not None:
        summary.update({"lines": lines, "warnings": warnings,
                        "calibrated": {} if report is None else report.calibrated,
                        "derived": {} if report is None else report.derived})
    if "vae.image" not in qmodel.networks["vae"].activations:  # a decoder-only encodings file
        calls = [c for c in calls if c.kind != "vae.encode"]
    sqnr = replay_sqnr(calls, build_integer_networks(qmodel), max_calls=sqnr_calls,
                       progress=progress and (lambda done, total: progress("SQNR", done, total)), stats=stats)
    qmodel.info.update({
        "source_model": str(model),
        "source_model_name": model.stem if model.is_file() else model.resolve().name,
        "source_model_hash": model_hash(model),
        "method": method,
        "weights": weights_info if adaround is not None else {"method": "nearest"},
        "encodings_files": [f for imp in imported.values() for f in imp.files] or None,
        "encodings_import": None if report is None else {
            n: {"from_file": report.from_file[n], "calibrated": report.calibrated[n],
                "fixed_softmax": report.fixed_softmax[n], "derived": report.derived.get(n, {}),
                "parts": {op: list(p) for op, p in imported[n].parts.items()},
                "weights_from_graph": sorted(imported[n].weights)} for n in imported},
        "calibration": {"prompts_file": None if prompts_file is None else str(prompts_file), "prompts": prompts,
                        "steps": steps, "sampler": sampler, "seed": CALIBRATION_SEED,
                        "guidance_scale": guidance,
                        "network_calls": {n: sum(c.kind.startswith(n) for c in calls) for n in NETWORKS}},
        "sqnr_db": {k: _finite_or_str(v) for k, v in sqnr.items()},
        "sqnr_calls": sqnr_calls,
        # the float folder's generation defaults (model_index.json tinysd_defaults), kept for `tinysd generate`
        "generation_defaults": dataclasses.asdict(loaded.defaults),
    })
    save_quantized(qmodel, out, overwrite=overwrite, tokenizer_dir=loaded.tokenizer_dir)
    return out, sqnr


def _adaround(loaded, calls, settings, progress):
    """AdaRound every linear / conv2d weight of the three networks on the recorded calibration calls.

    Returns (a copy of `loaded` whose AdaRounded weights are q * scale, {network: {weight key: Encoding}},
    the "weights" entry of quantization.json: method, settings, layers, seconds, mean reconstruction gain)."""
    import dataclasses
    import time

    from .adaround import adaround_network, adaround_network_sequential, adarounded_params, sample_layer_inputs

    t0 = time.perf_counter()
    params, encs, layers, gains = {}, {}, 0, []
    for net in NETWORKS:
        stage = f"AdaRound {net}"
        bar = progress and (lambda done, total, s=stage: progress(s, done, total))
        if settings.inputs == "quantized":  # each layer on the AdaRounded-so-far network's inputs (AIMET's way)
            codes, stats = adaround_network_sequential(loaded, calls, net, settings, progress=bar)
        else:
            inputs = sample_layer_inputs(loaded, calls, net, settings)
            codes, stats = adaround_network(loaded.params[net], inputs, net, settings, progress=bar)
            del inputs
        params[net], encs[net] = adarounded_params(loaded.params[net], codes, net)
        layers += len(codes)
        gains += [10 * math.log10(r.error_nearest / r.error_adaround) for r in stats.values()
                  if r.error_adaround > 0 and r.error_nearest > 0]
    seconds = time.perf_counter() - t0
    log.info("AdaRound: %d layers in %.1f s", layers, seconds)
    info = {"method": "adaround", "settings": settings.record(), "layers": layers, "seconds": round(seconds, 1),
            "inputs": ("AdaRounded-so-far network (float activations), calibration calls"
                       if settings.inputs == "quantized" else "float network, calibration calls"),
            "mean_reconstruction_gain_db": round(float(np.mean(gains)), 3) if gains else None}
    return dataclasses.replace(loaded, params=params), encs, info


def _trace(config, network: str):
    from ..interp.trace import trace_network
    from .calibration import model_graphs

    return trace_network(model_graphs(config)[network], network)


def _softmax_outputs(config, network: str) -> set[str]:
    return {op.tensor for op in _trace(config, network).ops if op.kind == "softmax"}


def _summary_lines(imported, report) -> list[str]:
    """One line per network with a file: encodings from the file, calibrated, parts followed."""
    out = []
    for net, imp in imported.items():
        files = ", ".join(Path(f["path"]).name for f in imp.files)
        cal = report.calibrated[net]
        parts = sum(1 for p in imp.parts.values() if set(p) - {"requant", "input"})
        copies = sum(1 for p in imp.parts.values() if "input" in p)
        out.append(f"{net}: {report.from_file[net]} encodings from {files}, {len(report.derived.get(net, {}))} derived "
                   f"from them (graph structure), {len(cal)} calibrated (not in the file), "
                   f"{len(report.fixed_softmax[net])} softmax outputs at the fixed encoding; {parts} ops run as "
                   f"their parts, {copies} read their input's copy, {len(imp.params)} weight encodings used, "
                   f"{len(imp.ignored)} parameter encodings ignored")
        if cal:
            log.info("%s: calibrated (the file has no encoding for them): %s", net, ", ".join(cal))
    return out
