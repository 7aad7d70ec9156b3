"""The whole text-to-image job at SD 1.5 size: tinysd fp32 / w8a16 / w8a8 against diffusers fp32 and ONNX Runtime.

    python3 tools/bench_generate.py [--gen-steps 20] [--size 512] [--only fp32,w8a16,w8a8,diffusers,ort-fp32,ort-int8]
                                    [--rounds 1] [--calib-size 256] [--threads 2] [--json FILE] [--work DIR]
                                    [--generate-only] [--tiny]
    python3 tools/bench_generate.py --gen-steps 1 --combine A.json B.json   # one table of runs made apart

A script, not a test (dev-only: needs torch, diffusers, transformers; onnx and onnxruntime for the ort-*
variants). No download: a random-weight model
with SD 1.5's configuration (UNet 859M weights, VAE 84M, CLIP ViT-L/14 text encoder 123M) is built with
diffusers / transformers' own initialisation (fixed seed) and saved as a diffusers folder, which both tinysd
and diffusers load. The integer variants are quantized from it by tinysd (`calibrate_model` with one prompt
and one sampler step at --calib-size pixels, min-max, then `quantize_model` and `save_quantized`: the folder a
user gets from `tinysd quantize`).

tinysd's variants first call `tinysd.offload.reuse_freed_blocks()`, as the `tinysd` command does, and every
process imports tinysd before NumPy, as the command does (OpenBLAS's thread timeout, tinysd/__init__.py). Each variant
runs in its own process, in the order given (reversed in every other round, --rounds), and
measures, in this order, each with the peak RSS of that phase alone (the kernel's peak is reset before each
phase: tinysd.runstats; so a phase's peak includes every loaded weight):

* load: the pipeline from the folder (`Pipeline.from_pretrained`; diffusers' `StableDiffusionPipeline`);
* text_encoder: one call on the two prompts of a CFG pair (negative, positive);
* unet: one UNet step, batch 2 (the CFG pair) on a 64 x 64 latent, t = 500;
* vae_decode: one 512 x 512 decode (latent 1 x 4 x 64 x 64);
  each of these three runs --calls times: the first call (cold: torch's and oneDNN's first-call work, Numba's
  cache load, lazy float copies) is reported apart, the table has the mean of the others (warm, as the 19
  later steps of a generate are);
* generate: the full job, `--gen-steps` Euler steps, CFG 7.5, one 512 x 512 image (text encoder, steps x UNet,
  decode); with fewer than 20 steps the 20-step time is extrapolated as
  generate + (20 - steps) x unet and marked so. tinysd runs it as `tinysd generate` does, on a fresh
  `Pipeline.from_pretrained(path, low_memory=True)` (each network read when first needed, dropped after its
  last use), after the eager pipeline of the other phases is dropped; its per-network peaks (and the reads,
  "load NET") are reported under `generate_networks`, and the process's RSS when it starts under
  `generate_rss_before_mb`.

--generate-only skips the text encoder, UNet and VAE phases (and tinysd's eager load).

Variants `fp32-untiled`, `w8a16-untiled`, `w8a8-untiled` run tinysd with attention query tiles off (the
engine before them), to show what the tiles save.

ONNX Runtime (`ort-fp32`, `ort-int8`): the same diffusers networks exported once with `torch.onnx.export`
(TorchScript exporter, opset 17, static shapes: text encoder (2, 77) ids, UNet batch 2 at the latent size,
VAE decoder (1, 4, h, w); external data for the UNet's 3.4 GB) into WORK/onnx-fp32, and
`onnxruntime.quantization.quantize_dynamic` of each (int8 weights, QInt8, the tool's default op types) into
WORK/onnx-int8. Sessions use intra_op_num_threads = --threads, one inter-op thread, all graph optimisations.
The ORT generate is the same job driven from NumPy: tinysd's tokenizer and Euler scheduler (diffusers'
EulerDiscreteScheduler, same config), CFG 7.5, the three sessions.

stable-diffusion.cpp (`sdcpp-q8_0`): stable-diffusion-cpp-python, which PyPI has as source only
(`CMAKE_ARGS="-DGGML_NATIVE=ON" pip install stable-diffusion-cpp-python`: a CMake build of ggml and
stable-diffusion.cpp, several minutes). It reads the same model as a CompVis single file (WORK/sd15.safetensors,
F16, written once by tinysd's `to_single_file`) and converts the weights to q8_0 when it loads. Its Python
API runs whole generates only, so: `unet` is one warm sampling step of a 2-step generate (the progress
callback's step time: the conditional and unconditional passes, as a batch-2 UNet call), `text_encoder` and
`vae_decode` are the times stable-diffusion.cpp logs for that generate (its log callback), and `generate` is the
`--gen-steps` generate. n_threads = --threads; `flash_attn` off (its CPU default).

Torch (diffusers) runs with --threads threads (torch.set_num_threads); tinysd's NumPy / numba engine with
NUMBA_NUM_THREADS / OMP_NUM_THREADS / OPENBLAS_NUM_THREADS = --threads, set in each child's environment.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))

import tinysd  # noqa: E402,F401  (before NumPy, as in the tinysd command: its OpenBLAS setting)
import numpy as np  # noqa: E402

SEED = 20240601
PROMPT = "a photograph of an astronaut riding a horse"
T = 500
TINYSD = ("fp32", "w8a16", "w8a8")
ORT = ("ort-fp32", "ort-int8")
SDCPP = {"sdcpp-q8_0": "q8_0"}  # variant -> stable-diffusion.cpp weight type
ALL = TINYSD + ("diffusers",) + ORT + tuple(SDCPP) + tuple(f"{v}-untiled" for v in TINYSD)
OPSET = 17
# ONNX networks: input names, output names
ONNX_IO = {
    "text_encoder": (["input_ids"], ["last_hidden_state"]),
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    "vae_decoder": (["latent"], ["image"]),
}
PHASES = ("load", "text_encoder", "unet", "vae_decode", "generate")


# ---------------------------------------------------------------------------------------------
# prepare: the random SD 1.5 folder and its quantized folders
# ---------------------------------------------------------------------------------------------
def make_model(folder: Path, tiny: bool = False) -> None:
    """A diffusers folder with SD 1.5's configuration and random weights (seeded); tiny: a small model of the
    same structure (two UNet levels, 32-channel VAE, 2-layer text encoder), for a quick trial of the script."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(SEED)
    d = 64 if tiny else 768  # text width = UNet cross-attention width
    if tiny:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=d,
                                    attention_head_dim=8)
    else:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=d, attention_head_dim=8)  # SD 1.5's defaults
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=64 if tiny else 512,
                        block_out_channels=(32,) * 4 if tiny else (128, 256, 512, 512), layers_per_block=1 if tiny else 2,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=d, intermediate_size=4 * d,
                                      num_hidden_layers=2 if tiny else 12, num_attention_heads=2 if tiny else 12,
                                      max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=d))
    tok_dir = ROOT / "weights" / "tokenizer"
    tok = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=77)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    for f in ("vocab.json", "merges.txt"):  # the files tinysd's tokenizer reads (transformers saved tokenizer.json)
        shutil.copyfile(tok_dir / f, folder / "tokenizer" / f)


def run_prepare(args) -> dict:
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.calibration import calibrate_model, quantize_model
    from tinysd.quant.folder import save_quantized

    work = Path(args.work)
    out = {}
    t0 = time.perf_counter()
    if not (work / "sd15" / "model_index.json").is_file():
        make_model(work / "sd15", tiny=args.tiny)
    out["make_model_s"] = time.perf_counter() - t0
    loaded = load_checkpoint(work / "sd15")
    t0 = time.perf_counter()
    ranges = calibrate_model(loaded, [PROMPT], steps=1, size=args.calib_size)
    out["calibrate_s"] = time.perf_counter() - t0
    for p in ("w8a16", "w8a8"):
        t0 = time.perf_counter()
        save_quantized(quantize_model(loaded, p, ranges), work / p)
        out[f"quantize_{p}_s"] = time.perf_counter() - t0
    return out


def single_file(work: Path) -> Path:
    """The model as a CompVis single file (F16), for stable-diffusion.cpp; written once."""
    from tinysd.checkpoint import load_checkpoint, to_single_file

    path = work / "sd15.safetensors"
    if not path.is_file():
        to_single_file(load_checkpoint(work / "sd15"), path, dtype="F16", embed_config=False)
    return path


def _sdcpp_run(args, stats, inner) -> dict:
    """stable-diffusion.cpp's variant (see the module docstring)."""
    import re

    import stable_diffusion_cpp as sdcpp
    from stable_diffusion_cpp import StableDiffusion

    from tinysd.runstats import Entry, NetworkStats

    logged: list[str] = []  # its own log lines: "... completed, taking 1.23s"

    @sdcpp.sd_log_callback
    def on_log(level, text, data):
        logged.append(text.decode(errors="replace") if isinstance(text, bytes) else str(text))

    sdcpp.sd_set_log_callback(on_log, None)
    model = single_file(Path(args.work))  # written by the first run, before anything is timed
    with stats.measure("load"):
        sd = StableDiffusion(model_path=str(model), wtype=SDCPP[args.child], n_threads=args.threads, verbose=True)
    step_s: list[float] = []

    def progress(step, steps, seconds):  # called with step 0 before the first step, then (i, steps, s of step i)
        if step > 0:
            step_s.append(float(seconds))

    def generate(steps):
        return sd.generate_image(PROMPT, negative_prompt="", width=args.size, height=args.size, cfg_scale=7.5,
                                 sample_method="euler", sample_steps=steps, seed=0, progress_callback=progress)

    def taken(what):  # seconds stable-diffusion.cpp logged for `what` in the last generate
        for line in reversed(logged):
            m = re.search(rf"{what}.*?taking ([0-9.]+) ?(ms|s)", line)
            if m:
                return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
        return None

    def record(into, name, seconds, peak):  # a time stable-diffusion.cpp reported, with its generate's peak RSS
        if seconds is not None:
            e = into.entries.setdefault(name, Entry())
            e.calls, e.seconds, e.peak = e.calls + 1, e.seconds + seconds, max(e.peak, peak)

    if not args.generate_only:
        for i in range(args.calls):
            logged.clear()
            step_s.clear()
            part = NetworkStats()
            with part.measure("generate2"):
                generate(2)
            peak, key = part.entries["generate2"].peak, "" if i or args.calls == 1 else "_first"
            record(stats, "unet" + key, step_s[-1] if step_s else None, peak)
            record(stats, "text_encoder" + key, taken("get_learned_condition"), peak)
            record(stats, "vae_decode" + key, taken("decode_first_stage"), peak)
    logged.clear()
    step_s.clear()
    with stats.measure("generate"):
        generate(args.gen_steps)
    peak = stats.entries["generate"].peak
    for name, value in (("unet", sum(step_s) / len(step_s) if step_s else None),
                        ("text_encoder", taken("get_learned_condition")), ("vae.decode", taken("decode_first_stage"))):
        record(inner, name, value, peak)
    return {"stable_diffusion_cpp": getattr(sdcpp, "__version__", "?"), "log_lines": logged[-8:]}


def _torch_modules(folder: Path):
    """{network: torch module, eval, float32} of the diffusers folder, with the ONNX_IO calling conventions."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    class UNetCall(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class Decoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, latent):
            return self.m.decode(latent, return_dict=False)[0]

    class TextEncoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids):
            return self.m(input_ids, return_dict=False)[0]

    return {
        "text_encoder": lambda: TextEncoder(CLIPTextModel.from_pretrained(folder / "text_encoder")).eval(),
        "unet": lambda: UNetCall(UNet2DConditionModel.from_pretrained(folder / "unet")).eval(),
        "vae_decoder": lambda: Decoder(AutoencoderKL.from_pretrained(folder / "vae")).eval(),
    }


def _onnx_inputs(net: str, size: int, width: int = 768):
    """Example inputs (NumPy) of one exported network, at the benchmark's shapes (width: the text features')."""
    h = size // 8
    rng = np.random.default_rng(SEED + 2)
    if net == "text_encoder":
        return (np.zeros((2, 77), np.int64),)
    if net == "unet":
        return (rng.standard_normal((2, 4, h, h), dtype=np.float32), np.array([T], np.float32),
                rng.standard_normal((2, 77, width), dtype=np.float32))
    return (rng.standard_normal((1, 4, h, h), dtype=np.float32),)


def run_prepare_onnx(args) -> dict:
    """WORK/onnx-fp32/{net}/model.onnx (one external-data file each) and WORK/onnx-int8 (quantize_dynamic)."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    work = Path(args.work)
    width = json.loads((work / "sd15" / "unet" / "config.json").read_text())["cross_attention_dim"]
    out = {}
    for net, make in _torch_modules(work / "sd15").items():
        dst = work / "onnx-fp32" / net / "model.onnx"
        if not dst.is_file():
            t0 = time.perf_counter()
            tmp = work / "onnx-export-tmp" / net
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            module = make()
            ins, outs = ONNX_IO[net]
            with torch.no_grad():
                torch.onnx.export(module, tuple(torch.from_numpy(a) for a in _onnx_inputs(net, args.size, width)),
                                  str(tmp / "model.onnx"), dynamo=False, opset_version=OPSET, input_names=ins,
                                  output_names=outs, do_constant_folding=True)
            del module
            model = onnx.load(str(tmp / "model.onnx"))  # external tensors (one file each for > 2 GB) loaded
            dst.parent.mkdir(parents=True, exist_ok=True)
            onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                            location="model.onnx.data", size_threshold=1024)
            del model
            shutil.rmtree(tmp)
            out[f"export_{net}_s"] = time.perf_counter() - t0
        qdst = work / "onnx-int8" / net / "model.onnx"
        if not qdst.is_file():
            t0 = time.perf_counter()
            qdst.parent.mkdir(parents=True, exist_ok=True)
            quantize_dynamic(str(dst), str(qdst), weight_type=QuantType.QInt8, use_external_data_format=True)
            out[f"quantize_dynamic_{net}_s"] = time.perf_counter() - t0
    shutil.rmtree(work / "onnx-export-tmp", ignore_errors=True)
    return out


def _ort_sessions(folder: Path, threads: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return {net: ort.InferenceSession(str(folder / net / "model.onnx"), opts, providers=["CPUExecutionProvider"])
            for net in ONNX_IO}


def _ort_generate(sess: dict, tokenizer, sched_cfg, steps: int, size: int, guidance: float = 7.5, inner=None):
    """One image with ONNX Runtime sessions: text encoder, `steps` Euler steps with CFG, VAE decode; each
    network call timed in `inner` (a NetworkStats) when given."""
    from tinysd.runstats import measure
    from tinysd.schedulers import NoiseSource, make_scheduler

    names = {"text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae.decode"}

    def run(net, *arrays):
        with measure(inner, names[net]):
            return sess[net].run(None, dict(zip(ONNX_IO[net][0], arrays)))[0]

    sched = make_scheduler("euler", sched_cfg)
    sched.set_timesteps(steps)
    ctx = run("text_encoder", tokenizer(["", PROMPT]))  # (2, 77, 768)
    noise = NoiseSource(0, 1)
    latents = noise.randn((4, size // 8, size // 8)) * sched.init_noise_sigma  # (1, 4, h, w) float64
    for i, t in enumerate(sched.timesteps):
        x = sched.scale_model_input(latents, i).astype(np.float32)
        eps = run("unet", np.concatenate([x, x]), np.array([t], np.float32), ctx).astype(np.float64)
        eps = eps[:1] + guidance * (eps[1:] - eps[:1])
        latents = sched.step(eps, i, latents).prev_sample
    return run("vae_decoder", (latents / 0.18215).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# one variant
# ---------------------------------------------------------------------------------------------
def _inputs(size):
    rng = np.random.default_rng(SEED + 1)
    h = size // 8
    sample = rng.standard_normal((2, 4, h, h), dtype=np.float32)
    latent = rng.standard_normal((1, 4, h, h), dtype=np.float32)
    return sample, latent


def _time_calls(obj, attr: str, name: str, stats) -> None:
    """Time every call of obj.attr (a bound method) under `name` in `stats`."""
    f = getattr(obj, attr)

    def timed(*a, **k):
        with stats.measure(name):
            return f(*a, **k)

    setattr(obj, attr, timed)


def _phase(stats, calls: int, name: str, fn):
    """Run fn `calls` times: the first call under `{name}_first` (cold: lazy initialisation, Numba's cache
    load, torch's first-call work), the others under `name` (warm; reported as their mean). Returns fn()."""
    for i in range(calls):
        with stats.measure(name if i or calls == 1 else f"{name}_first"):
            out = fn()
    return out


def _rss_bytes() -> int:
    """The process's resident set now (VmRSS), bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def run_variant(args) -> dict:
    from tinysd.runstats import NetworkStats

    v, work = args.child, Path(args.work)
    sample, latent = _inputs(args.size)
    stats = NetworkStats()
    inner = NetworkStats()  # the network calls inside the generate phase
    if v == "diffusers":
        import torch
        from diffusers import StableDiffusionPipeline

        torch.set_num_threads(args.threads)
        with stats.measure("load"):
            pipe = StableDiffusionPipeline.from_pretrained(work / "sd15", safety_checker=None,
                                                           requires_safety_checker=False)
        pipe.tokenizer.model_max_length = 77  # folders saved before the tokenizer was given its length
        ids = pipe.tokenizer(["", PROMPT], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.inference_mode():
            if not args.generate_only:
                ctx = _phase(stats, args.calls, "text_encoder", lambda: pipe.text_encoder(ids)[0])
                _phase(stats, args.calls, "unet",
                       lambda: pipe.unet(torch.from_numpy(sample), torch.tensor(T), encoder_hidden_states=ctx))
                _phase(stats, args.calls, "vae_decode", lambda: pipe.vae.decode(torch.from_numpy(latent)))
            for obj, attr, name in ((pipe.text_encoder, "forward", "text_encoder"), (pipe.unet, "forward", "unet"),
                                    (pipe.vae, "decode", "vae.decode")):
                _time_calls(obj, attr, name, inner)
            with stats.measure("generate"):
                pipe(PROMPT, num_inference_steps=args.gen_steps, guidance_scale=7.5, height=args.size,
                     width=args.size, generator=torch.Generator().manual_seed(0), output_type="np")
        extra = {"torch_threads": torch.get_num_threads()}
    elif v in SDCPP:
        extra = _sdcpp_run(args, stats, inner)
    elif v in ORT:
        import onnxruntime as ort

        from tinysd.config import SchedulerConfig
        from tinysd.tokenizer import CLIPTokenizer

        folder = work / ("onnx-fp32" if v == "ort-fp32" else "onnx-int8")
        tokenizer = CLIPTokenizer.from_dir(work / "sd15" / "tokenizer")
        sched_cfg = SchedulerConfig.from_json(work / "sd15" / "scheduler" / "scheduler_config.json")
        with stats.measure("load"):
            sess = _ort_sessions(folder, args.threads)

        def run(net, *arrays):
            return sess[net].run(None, dict(zip(ONNX_IO[net][0], arrays)))[0]

        ids = tokenizer(["", PROMPT])
        if not args.generate_only:
            ctx = _phase(stats, args.calls, "text_encoder", lambda: run("text_encoder", ids))
            _phase(stats, args.calls, "unet", lambda: run("unet", sample, np.array([T], np.float32), ctx))
            _phase(stats, args.calls, "vae_decode", lambda: run("vae_decoder", latent))
        with stats.measure("generate"):
            _ort_generate(sess, tokenizer, sched_cfg, args.gen_steps, args.size, inner=inner)
        extra = {"onnxruntime": ort.__version__}
    else:
        from tinysd.pipeline import Pipeline

        if v.endswith("-untiled"):  # attention without query tiles (the engine before tiling), for comparison
            import tinysd.interp.float
            import tinysd.interp.integer

            tinysd.interp.float.ATTENTION_TILE_ELEMENTS = tinysd.interp.integer.ATTENTION_TILE_ELEMENTS = 1 << 62
            v = v[: -len("-untiled")]
        from tinysd.offload import free_memory, reuse_freed_blocks

        reuse_freed_blocks()  # as the `tinysd` command does at start
        path = work / ("sd15" if v == "fp32" else v)
        if not args.generate_only:
            with stats.measure("load"):  # all three networks, as a library user holding the pipeline
                pipe = Pipeline.from_pretrained(path)
            ids = pipe.tokenizer(["", PROMPT])
            ctx = _phase(stats, args.calls, "text_encoder", lambda: pipe.text_encoder(ids))
            _phase(stats, args.calls, "unet", lambda: pipe.unet(sample, T, ctx))
            _phase(stats, args.calls, "vae_decode", lambda: pipe.vae.decode(latent))
            del pipe, ctx
            free_memory()
        # the one-shot job as `tinysd generate` runs it: each network read when needed, dropped after use
        rss = _rss_bytes()
        pipe = Pipeline.from_pretrained(path, low_memory=True)
        pipe.stats = inner
        with stats.measure("generate"):
            pipe.generate(PROMPT, steps=args.gen_steps, guidance_scale=7.5, width=args.size, height=args.size,
                          seed=0)
        extra = {"generate_rss_before_mb": rss / 2**20}
    res = {k: {"s": e.seconds / e.calls, "calls": e.calls, "peak_mb": e.peak / 2**20, "exact_peak": e.exact} for k, e in stats.entries.items()}
    nets = {k: {"calls": e.calls, "s": e.seconds, "peak_mb": e.peak / 2**20} for k, e in inner.entries.items()}
    # each inner block resets the kernel's peak: the generate's peak is the largest of its blocks' and the last one's
    res["generate"]["peak_mb"] = max([res["generate"]["peak_mb"]] + [n["peak_mb"] for n in nets.values()])
    return {"phases": res, "generate_networks": nets, **extra}


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def child(variant, args, work) -> dict | None:
    cmd = [sys.executable, __file__, "--child", variant, "--work", str(work), "--size", str(args.size),
           "--gen-steps", str(args.gen_steps), "--calib-size", str(args.calib_size), "--threads", str(args.threads), "--calls", str(args.calls)] + (["--tiny"] if args.tiny else []) + (
        ["--generate-only"] if args.generate_only else [])
    env = dict(os.environ, NUMBA_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        print(f"{variant}: failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-3:]}", flush=True)
        return None
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t0
    res["uptime"] = os.getloadavg()
    print(f"{variant}: {json.dumps(res)}", flush=True)
    return res


def table(runs: dict[str, list[dict]], gen_steps: int) -> list[str]:
    """Best time per phase over rounds, ratio to diffusers, peak RSS (max over rounds); '-' for phases not run."""
    nan = float("nan")

    def best(rs, ph, key, pick):
        vals = [r["phases"][ph][key] for r in rs if ph in r["phases"]]
        return pick(vals) if vals else nan

    t = {v: {ph: best(rs, ph, "s", min) for ph in PHASES} for v, rs in runs.items() if rs}
    inner = {"text_encoder": "text_encoder", "unet": "unet", "vae_decode": "vae.decode"}
    for v, b in t.items():  # phases not run apart (--generate-only): the generate's own calls, marked *
        for ph, k in inner.items():
            if b[ph] != b[ph]:
                calls = [r["generate_networks"][k] for r in runs[v] if k in r.get("generate_networks", {})]
                # the text encoder's total (diffusers encodes the CFG pair in two calls, the others in one)
                b[ph] = -min((c["s"] / (1 if ph == "text_encoder" else c["calls"]) for c in calls), default=nan)
    peak = {v: {ph: best(rs, ph, "peak_mb", max) for ph in PHASES} for v, rs in runs.items() if rs}
    for v, b in t.items():  # 20-step estimate
        b["generate20"] = b["generate"] + max(0, 20 - gen_steps) * abs(b["unet"]) if gen_steps < 20 else b["generate"]
    ref = t.get("diffusers")
    cols = ("text_encoder", "unet", "vae_decode", "generate20")
    head = ["variant"] + [f"{c} s (x diffusers)" for c in cols] + ["peak RSS MiB: load / te / unet / vae / generate"]
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def num(x, fmt):
        return "-" if x != x else format(abs(x), fmt) + ("*" if x < 0 else "")

    for v, b in t.items():
        cells = [v]
        for c in cols:
            r = f" ({abs(b[c] / ref[c]):.2f}x)" if ref and b[c] == b[c] and ref[c] == ref[c] else ""
            cells.append(num(b[c], ".2f") + r)
        p = peak[v]
        cells.append(" / ".join(num(p[ph], ".0f") for ph in PHASES))
        out.append("| " + " | ".join(cells) + " |")
    if gen_steps < 20:
        out.append(f"(generate20 = measured {gen_steps}-step generate + {20 - gen_steps} x the one-step UNet time)")
    out.append("(* = not run apart (--generate-only): the time of that network's call inside the generate)")
    for v, rs in runs.items():  # the cold first calls (--calls > 1), apart from the warm ones in the table
        first = {ph: min((r["phases"][f"{ph}_first"]["s"] for r in rs if f"{ph}_first" in r["phases"]), default=nan)
                 for ph in cols[:3]}
        if any(x == x for x in first.values()):
            out.append(f"{v} first (cold) call s: " + ", ".join(f"{ph} {num(x, '.2f')}" for ph, x in first.items()))
    for v, rs in runs.items():  # per-network peaks inside the generate (tinysd: low memory, with its reads)
        nets = [r["generate_networks"] for r in rs if r.get("generate_networks")]
        if nets:
            per = {k: max(n[k]["peak_mb"] for n in nets if k in n) for k in nets[0]}
            out.append(f"{v} generate, peak RSS per network call (MiB): "
                       + ", ".join(f"{k} {m:.0f}" for k, m in per.items()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gen-steps", type=int, default=20, help="sampler steps of the timed generate (default 20)")
    ap.add_argument("--size", type=int, default=512, help="image height = width (default 512)")
    ap.add_argument("--calib-size", type=int, default=256, help="image size of the one calibration run (default 256)")
    ap.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--calls", type=int, default=2,
                    help="calls of each network phase; the first is reported apart as cold, the table uses the "
                         "mean of the others (default 2)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat all variants, order reversed every other round")
    ap.add_argument("--work", type=Path, default=None, help="keep the models in this folder (reused when present)")
    ap.add_argument("--json", type=Path, default=None, help="also write all results to this JSON file")
    ap.add_argument("--generate-only", action="store_true",
                    help="skip the text encoder / UNet / VAE phases (tinysd: also the eager load): the job's time and memory")
    ap.add_argument("--tiny", action="store_true", help="a tiny model of SD 1.5's structure (a quick trial)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every engine (default 2)")
    ap.add_argument("--combine", type=Path, nargs="+", default=None,
                    help="only print the table of these --json files' runs together (runs made in parallel streams)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.combine:
        runs: dict = {}
        for f in args.combine:
            doc = json.loads(f.read_text())
            for v, rs in doc["runs"].items():
                runs.setdefault(v, []).extend(rs)
        print("\n".join(table(runs, args.gen_steps)))
        return
    if args.child:
        prep = {"prepare": run_prepare, "prepare-onnx": run_prepare_onnx}
        res = prep[args.child](args) if args.child in prep else run_variant(args)
        print(json.dumps(res))
        return
    wanted = [v for v in args.only.split(",") if v]
    for v in wanted:
        if v not in ALL:
            ap.error(f"--only: unknown variant {v!r}")
    print(f"SD 1.5 (random weights), {args.size}x{args.size}, generate {args.gen_steps} steps; {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()}", flush=True)
    tmp = None
    if args.work is None:
        tmp = tempfile.mkdtemp(prefix="tinysd-bench-gen-")
        args.work = Path(tmp)
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": {v: [] for v in wanted}}
    try:
        if not (args.work / "w8a8").is_dir():
            results["prepare"] = child("prepare", args, args.work)
            if results["prepare"] is None:
                raise SystemExit("prepare failed")
        if any(v in ORT for v in wanted) and not all((args.work / f / "vae_decoder" / "model.onnx").is_file()
                                                      for f in ("onnx-fp32", "onnx-int8")):
            results["prepare_onnx"] = child("prepare-onnx", args, args.work)
            if results["prepare_onnx"] is None:
                raise SystemExit("ONNX export failed")
        for r in range(args.rounds):
            for v in (wanted if r % 2 == 0 else wanted[::-1]):
                res = child(v, args, args.work)
                if res:
                    results["runs"][v].append(res)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    lines = table(results["runs"], args.gen_steps)
    print("\n" + "\n".join(lines))
    print(f"\nload after: {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
