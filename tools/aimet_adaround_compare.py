"""Dev-only: tinysd's AdaRound against AIMET's own (aimet-torch) on the shipped model's UNet.

    python3 tools/aimet_adaround_compare.py [--model weights/tinysd-shapes] [--work /tmp/aimet-adaround] \
        [--every 4] [--iterations 1000] [--samples 2048] [--aimet-python /work/venvs/aimet-torch/bin/python]

A script, not a test (it needs torch, diffusers and aimet-torch 2.42.0 in a separate venv). What it does:

1. With tinysd (this interpreter): calibrates the float model exactly as `tinysd quantize` does (the 26
   shipped prompts x 20 euler steps, seed 0, cfg 7.5, min-max) and records every network call. The UNet
   calls are split: every --every-th (from the first) is the AdaRound calibration data of BOTH tools
   (`calls.npz`: sample, timestep, encoder_hidden_states per call); every 8th from the 3rd is held out
   for the SQNR (never a fitting call when --every is a multiple of 4; checked).
2. In the aimet-torch venv (stage `aimet`, started in the background): the diffusers UNet of the same
   checkpoint, `Adaround.apply_adaround` with `AdaroundParameters(data_loader=the fitting calls,
   num_batches=all of them, default_num_iterations=--iterations)`, 8-bit parameters, min-max
   (`QuantScheme.post_training_tf`), AIMET's HTP v75 config (per-channel symmetric weights, as tinysd's).
   Writes AIMET's parameter-encodings file and the AdaRounded weights (safetensors, not pickle) and the
   time AdaRound took.
3. Meanwhile, tinysd's AdaRound (`tinysd.quant.adaround`, --iterations steps, --samples columns per
   layer) on the same fitting calls.
4. AIMET's result is imported as `tinysd quantize --encodings unet=FILE --onnx unet=MODEL.onnx` reads it
   (section 9 of docs/quantization.md): its parameter encodings frozen, its changed weights the layers'
   weights. Then the UNet SQNR against float on the held-out calls, at w8a16 (isolates the weights)
   and w8a8, for: nearest (tinysd's scales), tinysd AdaRound, AIMET AdaRound, and nearest on AIMET's
   encodings (control: AIMET's scales without AdaRound). Results are printed and written to
   `aimet-it{N}-lr{LR}-results.json` in --work.

Steps whose output is already in --work (calls.npz, tinysd_q-it*-s*.npz, aimet-it*-lr*/DONE) are not redone;
--aimet-iterations / --aimet-lr (default: --iterations, AIMET's own lr 1e-3) choose the AIMET run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "weights" / "tinysd-shapes"
HTP_CONFIG = "htp_quantsim_config_v75.json"
CALL_ARGS = ("sample", "timestep", "encoder_hidden_states")

try:  # module-level class (aimet-torch may pickle / deepcopy the model); torch only in the aimet stage
    import torch as _torch
except ImportError:
    _torch = None

if _torch is not None:
    class UNetWrapper(_torch.nn.Module):
        """sample, timestep (B,), encoder_hidden_states -> the UNet's output sample."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


# ---------------------------------------------------------------------------------------------
# stage aimet (aimet-torch venv)
# ---------------------------------------------------------------------------------------------
def stage_aimet(model: Path, work: Path, out: Path, iterations: int, lr: float | None) -> None:
    import copy
    import functools

    import numpy as np
    import torch
    import aimet_torch.common.quantsim_config as qc
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.nn import QuantizationMixin
    from diffusers import UNet2DConditionModel
    from diffusers.models.embeddings import Timesteps
    from safetensors.torch import save_file

    torch.set_num_threads(int(os.environ.get("AIMET_THREADS", "1")))
    if lr is not None:  # AIMET's AdaroundOptimizer builds torch.optim.Adam([alpha]) with Adam's default lr 1e-3
        torch.optim.Adam = functools.partial(torch.optim.Adam, lr=lr)
    QuantizationMixin.ignore(Timesteps)  # no quantized definition in aimet-torch (make_aimet_fixtures.py)
    cfg = str(Path(qc.__file__).parent / HTP_CONFIG)
    npz = np.load(work / "calls.npz")
    n = len({k.split("/")[0] for k in npz.files})
    batches = [tuple(torch.from_numpy(npz[f"{i}/{a}"]) for a in CALL_ARGS) for i in range(n)]
    module = UNetWrapper(UNet2DConditionModel.from_pretrained(model / "unet").float().eval()).eval()
    d = out
    d.mkdir(parents=True, exist_ok=True)
    params = AdaroundParameters(data_loader=batches, num_batches=len(batches), default_num_iterations=iterations,
                                forward_fn=lambda m, inputs: m(*inputs))
    torch.manual_seed(0)
    print(f"aimet: AdaRound of the UNet on {len(batches)} calls, {iterations} iterations per layer", flush=True)
    t0 = time.time()
    ada = Adaround.apply_adaround(copy.deepcopy(module), batches[0], params, path=str(d), filename_prefix="unet_adaround",
                                  default_param_bw=8, default_quant_scheme=QuantScheme.post_training_tf,
                                  default_config_file=cfg)
    seconds = time.time() - t0
    weights = {k: v.detach().contiguous().float() for k, v in ada.state_dict().items() if k.endswith(".weight")}
    save_file(weights, str(d / "unet_adaround_weights.safetensors"))
    from importlib.metadata import version
    info = {"seconds": seconds, "calls": len(batches), "iterations": iterations, "lr": lr or 1e-3,
            "config": HTP_CONFIG,
            "threads": torch.get_num_threads(),
            "versions": {p: version(p) for p in ("aimet-torch", "torch", "diffusers")}}
    (d / "DONE").write_text(json.dumps(info, indent=1) + "\n")
    print(f"aimet: AdaRound {seconds:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------------
# tinysd side
# ---------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "aimet-adaround")
    ap.add_argument("--every", type=int, default=4, help="every N-th calibration UNet call is AdaRound's data")
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--inputs", choices=("float", "quantized"), default="float",
                    help="tinysd AdaRound's layer inputs (AdaRoundSettings.inputs)")
    ap.add_argument("--aimet-iterations", type=int, default=None, help="default: --iterations")
    ap.add_argument("--aimet-lr", type=float, default=None, help="Adam lr of AIMET's AdaRound (default: its own, 1e-3)")
    ap.add_argument("--aimet-python", default="/work/venvs/aimet-torch/bin/python")
    ap.add_argument("--stage", choices=("aimet",), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--aimet-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--aimet-wait", action="store_true", help="do not start the aimet stage; wait for its DONE file")
    args = ap.parse_args(argv)
    args.aimet_iterations = args.aimet_iterations or args.iterations
    args.work.mkdir(parents=True, exist_ok=True)
    if args.stage == "aimet":
        return stage_aimet(args.model, args.work, Path(args.aimet_out), args.aimet_iterations, args.aimet_lr)

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))
    import numpy as np

    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant import adaround as ar
    from tinysd.interp.integer import IntegerInterpreter
    from tinysd.models import UNet
    from tinysd.quant.calibration import (_per_network, calibrate_observers, model_graphs, quantize_model,
                                          ranges_from_observers, replay_sqnr, sqnr_db)
    from tinysd.quant.prepare import encodings_from_ranges, quantize_network
    from tinysd.quant.encodings import load_encodings
    from tinysd.quant.engine import build_integer_networks
    from tinysd.quant.imports import _moved_axis, device_scales
    from tinysd.quant.prompts import read_prompts
    from tinysd.quant.weights import quantize_weight
    from tinysd.quant.workflow import CALIBRATION_GUIDANCE, CALIBRATION_SAMPLER, CALIBRATION_SEED
    from tinysd.safetensors_io import SafetensorsFile

    work = args.work
    st = ar.AdaRoundSettings(iterations=args.iterations, samples=args.samples, inputs=args.inputs).check()
    loaded = load_checkpoint(args.model)
    t0 = time.perf_counter()
    calls: list = []
    obs = calibrate_observers(loaded, read_prompts(None), 20, "minmax", sampler=CALIBRATION_SAMPLER,
                              seed=CALIBRATION_SEED, guidance_scale=CALIBRATION_GUIDANCE, record=calls)
    ranges = {p: ranges_from_observers(obs, "minmax", p) for p in ("w8a16", "w8a8")}
    unet_calls = [c for c in calls if c.kind == "unet"]
    fit, held = unet_calls[::args.every], unet_calls[2::8]
    assert not {id(c) for c in fit} & {id(c) for c in held}, "choose --every so fitting and held-out calls differ"
    print(f"calibration {time.perf_counter() - t0:.0f} s: {len(unet_calls)} UNet calls; {len(fit)} fitting "
          f"(every {args.every}th), {len(held)} held out (every 8th from the 3rd)", flush=True)

    if not (work / "calls.npz").exists():
        arrays = {}
        for i, c in enumerate(fit):
            sample, t, ctx = c.args[:3]
            arrays.update({f"{i}/sample": np.asarray(sample, np.float32),
                           f"{i}/timestep": np.full((sample.shape[0],), float(t), np.float32),
                           f"{i}/encoder_hidden_states": np.asarray(ctx, np.float32)})
        np.savez(work / "calls.npz", **arrays)
    adir = work / f"aimet-it{args.aimet_iterations}-lr{args.aimet_lr or 'default'}"
    aimet = None
    if args.aimet_wait:  # the aimet stage was started by hand (same --work, --aimet-iterations, --aimet-lr)
        pass
    elif not (adir / "DONE").exists():
        log = open(adir.parent / (adir.name + ".log"), "w")
        aimet = subprocess.Popen([args.aimet_python, str(Path(__file__).resolve()), "--stage", "aimet", "--model",
                                  str(args.model), "--work", str(work), "--aimet-out", str(adir),
                                  "--aimet-iterations", str(args.aimet_iterations)]
                                 + (["--aimet-lr", str(args.aimet_lr)] if args.aimet_lr else []),
                                 stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0"))
        print(f"aimet stage started (pid {aimet.pid}, log {adir.parent / (adir.name + '.log')})", flush=True)

    params = loaded.params["unet"]
    variant = f"-it{args.iterations}-s{args.samples}" + ("" if args.inputs == "float" else f"-{args.inputs}")
    qfile = work / f"tinysd_q{variant}.npz"
    if qfile.exists():
        z = np.load(qfile)
        tinysd_seconds = float(z["__seconds__"])
        codes_t = {k: (z[k], quantize_weight(params[k[len("unet."):]], axis=0, name=k)[1])
                   for k in z.files if k != "__seconds__"}
    else:
        t0 = time.perf_counter()
        if args.inputs == "quantized":
            codes_t, stats = ar.adaround_network_sequential(loaded, fit, "unet", st)
        else:
            inputs = ar.sample_layer_inputs(loaded, fit, "unet", st)
            codes_t, stats = ar.adaround_network(params, inputs, "unet", st)
        tinysd_seconds = time.perf_counter() - t0
        np.savez(qfile, __seconds__=np.float64(tinysd_seconds), **{k: q for k, (q, _) in codes_t.items()})
    print(f"tinysd AdaRound: {len(codes_t)} layers, {tinysd_seconds:.0f} s (incl. the float replay)", flush=True)

    while args.aimet_wait and not (adir / "DONE").exists():
        time.sleep(10)
    if aimet is not None:
        rc = aimet.wait()
        if rc:
            sys.exit(f"aimet stage failed (exit {rc}); see {adir.parent / (adir.name + '.log')}")
    ainfo = json.loads((adir / "DONE").read_text())
    _, aenc, version = load_encodings(adir / "unet_adaround.encodings")
    sf = SafetensorsFile(adir / "unet_adaround_weights.safetensors")
    aw = sf.read_float32(sf.keys())
    # AIMET folds its *soft* rounding into the weight, (floor(w/s) + h(alpha)) * s; QuantSim (and this import)
    # quantizes it with the frozen encoding, round to nearest: floor + [h >= 0.5] = floor + [alpha >= 0], AIMET's
    # hard rounding. `soft`: weights whose h(alpha) was not yet exactly 0 or 1.
    codes_a, codes_an, soft, total, missing = {}, {}, 0, 0, []
    for key in codes_t:
        enc = aenc.get(key)
        if enc is None:
            missing.append(key)
            continue
        enc = device_scales(_moved_axis(enc, False, version))  # as the --encodings import reads a weight's encoding
        w = np.asarray(aw[key], np.float32)
        shape = (-1,) + (1,) * (w.ndim - 1)
        ratio = w.astype(np.float64) / np.asarray(enc.scale, np.float64).reshape(shape)
        soft += int((np.abs(ratio - np.round(ratio)) > 1e-3).sum())
        total += w.size
        codes_a[key] = (enc.quantize(w), enc)
        codes_an[key] = (enc.quantize(params[key[len("unet."):]]), enc)
    print(f"AIMET file (version {version!r}): {len(codes_a)} of {len(codes_t)} layers; {100 * soft / total:.3f} % of "
          f"its weights not on the grid (soft h); missing {missing}", flush=True)

    def agree(codes):  # fraction of weights equal to tinysd's nearest q, and to AIMET's
        n = same_near = same_aimet = 0
        for key, (q, _) in codes.items():
            qn = quantize_weight(params[key[len("unet."):]], axis=0, name=key)[0]
            n += q.size
            same_near += int((q == qn).sum())
            if key in codes_a:
                same_aimet += int((q == codes_a[key][0]).sum())
        return same_near / n, same_aimet / n

    scale_diff = max(float(np.max(np.abs(np.asarray(codes_t[k][1].scale) / np.asarray(e.scale) - 1)))
                     for k, (_, e) in codes_a.items())
    variants = {"nearest": None, "tinysd AdaRound": codes_t, "AIMET AdaRound": codes_a,
                "nearest on AIMET's encodings": codes_an}
    results = {"settings": {"model": str(args.model), "fitting_calls": len(fit), "held_out_calls": len(held),
                            "every": args.every, "iterations": args.iterations, "tinysd_samples": args.samples,
                            "tinysd_inputs": args.inputs,
                            "aimet_iterations": args.aimet_iterations, "aimet_lr": args.aimet_lr or 1e-3},
               "seconds": {"tinysd": tinysd_seconds, "aimet": ainfo["seconds"]}, "aimet": ainfo,
               "max_relative_scale_difference": scale_diff, "aimet_soft_fraction": soft / total,
               "sqnr_db": {}, "agreement": {}}
    for label, codes in variants.items():
        if codes is not None:
            results["agreement"][label] = dict(zip(("with_nearest", "with_aimet"), agree(codes)))
    graph = model_graphs(loaded.config)["unet"]
    refs = np.concatenate([np.asarray(c.output, np.float64).reshape(-1) for c in held])

    def unet_sqnr(prec, codes):
        """The integer UNet alone, as `quantize_model` builds it (same ranges, same path for the weights), on `held`."""
        acts = encodings_from_ranges(_per_network(ranges[prec], "ranges")["unet"], prec)
        p, e = (params, None) if codes is None else ar.adarounded_params(params, codes, "unet")
        unet = UNet(graph, IntegerInterpreter(quantize_network(graph, p, "unet", prec, acts, e), cache_weights=True))
        outs = np.concatenate([np.asarray(unet(*c.args, **c.kwargs), np.float64).reshape(-1) for c in held])
        return sqnr_db(refs, outs)

    t0 = time.perf_counter()
    check = replay_sqnr(held, build_integer_networks(quantize_model(loaded, "w8a16", ranges["w8a16"])))["unet"]
    assert abs(check - unet_sqnr("w8a16", None)) < 1e-9, "UNet-only evaluation differs from quantize_model's"
    print(f"UNet-only evaluation checked against quantize_model + replay_sqnr ({check:.2f} dB), "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    for prec in ("w8a16", "w8a8"):
        for label, codes in variants.items():
            sq = unet_sqnr(prec, codes)
            results["sqnr_db"][f"{prec} {label}"] = sq
            print(f"{prec} {label}: UNet SQNR {sq:.2f} dB", flush=True)
    print(json.dumps(results, indent=1), flush=True)
    adir.with_name(adir.name + f"-tinysd{variant}-results.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
