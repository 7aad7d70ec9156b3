"""Dev-only: export the tiny fixture model with the real AIMET (aimet-onnx and aimet-torch) into test fixtures.

    python3 tools/make_aimet_fixtures.py [--profile random|trained] [--out DIR] \
        [--aimet-onnx-python /work/venvs/aimet-onnx/bin/python] [--aimet-torch-python /work/venvs/aimet-torch/bin/python]

What it does (never edit the output by hand; rerun this script):

1. With tinysd (this interpreter), runs the float pipeline of `tests/fixtures/tiny-sd` exactly as
   `tinysd quantize --calibration-prompts P --calibration-steps 2` does (the two prompts of
   `CALIBRATION_PROMPTS`, euler, seed 0, cfg 7.5) and records every network call: these are the
   calibration inputs AIMET computes its encodings on, so AIMET and tinysd see the same data. A
   second run (`EVAL_PROMPT`, seed 1000) gives the fixed evaluation inputs.
2. In the aimet-onnx venv (stage `onnx`): exports each diffusers / transformers network of the
   model with `torch.onnx.export` (TorchScript exporter, opset 17, static shapes), builds
   `aimet_onnx.quantsim.QuantizationSimModel` with AIMET's HTP v75 config at W8A8 (int8 params,
   int8 activations) and W8A16 (int16 activations), computes encodings on the calibration inputs,
   and writes `sim.export` in every encodings version aimet-onnx produces (0.6.1, 1.0.0, 2.0.0;
   the model with its external-data file). QuantSim's outputs on the evaluation inputs are saved.
3. In the aimet-torch venv (stage `torch`): `aimet_torch.quantsim.QuantizationSimModel` on the
   torch modules (same config, bitwidths, calibration), exported with the older `sim.export`
   (ONNX + 0.6.1 / 1.0.0 encodings; its pickled `.pth` and `_torch.encodings` side files are
   deleted) and with `sim.onnx.export` (0.6.1, 1.0.0, 2.0.0, 2.1.0), and QuantSim's outputs.
   diffusers' `Timesteps` and transformers' `QuickGELUActivation` have no quantized definition in
   aimet-torch and are excluded with `QuantizationMixin.ignore` (the sinusoidal features are
   tinysd's `unet.time_proj` input; CLIP's activation output is then not quantized). AdaRound
   (`aimet_torch.adaround.adaround_weight.Adaround`, W8A8 UNet, `ADAROUND_ITERATIONS` per layer:
   a few minutes for its 121 layers) writes its version-less parameter file and changes the
   weights; QuantSim on the AdaRounded model with those encodings frozen is exported with
   `sim.onnx.export` (1.0.0) under `aimet-torch-adaround/unet/w8a8/`, with its QuantSim outputs.

`--profile trained` (output tests/fixtures/aimet-trained) does steps 1 and 2 for the shipped trained
model `weights/tinysd-shapes` instead: its UNet and VAE decoder only, calibrated on four prompts at the
model's default 20 steps (80 UNet calls), evaluated on one 20-step run (`PROFILES`), encodings 1.0.0
only, W8A8 and W8A16; its inputs.npz keeps only the evaluation inputs (compressed), so the fixture stays
near 5 MB.

Networks: `unet` (sample, timestep, encoder_hidden_states), `vae_decoder` (latent / scaling
factor -> image: `vae.decode(z).sample`), `vae_encoder` (image -> `latent_dist.mean`),
`text_encoder` (input_ids -> last_hidden_state).

Output in --out: `exports.tar.xz` (every file AIMET wrote, byte for byte, under
`{tool}/{network}/{precision}/`; xz-compressed to keep the repository small), `inputs.npz`
(calibration and evaluation inputs), `quantsim.npz` (QuantSim and float outputs on the
evaluation inputs, keys `{tool}/{network}/{precision}` and `float/{network}`), and
`GENERATED.json` (this script, the versions of every package involved, the settings, and the
SHA-256 of every archived file).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

TOOL = "tools/make_aimet_fixtures.py"
ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_PROMPTS = ("a red circle", "a small blue square on the left")  # as tests/test_cli_quantize.py
CALIBRATION_STEPS = 2
EVAL_PROMPT, EVAL_SEED = "a large green triangle on the right on a white background", 1000
NETWORKS = ("unet", "vae_decoder", "vae_encoder", "text_encoder")
PRECISIONS = {"w8a8": 8, "w8a16": 16}
ONNX_VERSIONS = ("0.6.1", "1.0.0", "2.0.0")  # what aimet-onnx's sim.export writes for per-tensor/channel
TORCH_EXPORT_VERSIONS = ("0.6.1", "1.0.0")  # the older sim.export
TORCH_ONNX_VERSIONS = ("0.6.1", "1.0.0", "2.0.0", "2.1.0")  # sim.onnx.export
OPSET = 17
HTP_CONFIG = "htp_quantsim_config_v75.json"
ADAROUND_ITERATIONS, ADAROUND_NET = 10, "unet"
#: what each fixture holds: --profile random (the default, tests/fixtures/aimet: the random-weight tiny model,
#: every tool, network and encodings version) or trained (tests/fixtures/aimet-trained: the shipped trained
#: model weights/tinysd-shapes at its default 20 calibration steps, aimet-onnx only, UNet and VAE decoder,
#: encodings 1.0.0, W8A8 and W8A16; its inputs.npz holds the evaluation inputs only, compressed)
PROFILES = {
    "random": {"model": "tests/fixtures/tiny-sd", "out": "tests/fixtures/aimet", "prompts": CALIBRATION_PROMPTS,
               "steps": CALIBRATION_STEPS, "eval_prompts": (EVAL_PROMPT,), "eval_seed": EVAL_SEED,
               "networks": NETWORKS, "onnx_versions": ONNX_VERSIONS, "torch": True, "compress_inputs": False},
    "trained": {"model": "weights/tinysd-shapes", "out": "tests/fixtures/aimet-trained",
                "prompts": ("a red circle", "a small blue square on the left",
                            "a large green triangle on the right on a white background",
                            "a yellow square at the top on a black background"),
                "steps": 20, "eval_prompts": ("a purple circle at the bottom on a gray background",),
                "eval_seed": EVAL_SEED, "networks": ("unet", "vae_decoder"), "onnx_versions": ("1.0.0",),
                "torch": False, "compress_inputs": True},
}
IO_NAMES = {  # ONNX input / output names of each exported network
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    "vae_decoder": (["latent"], ["image"]),
    "vae_encoder": (["image"], ["latent_mean"]),
    "text_encoder": (["input_ids"], ["last_hidden_state"]),
}


# ---------------------------------------------------------------------------------------------
# stage 1 (tinysd): calibration and evaluation inputs
# ---------------------------------------------------------------------------------------------
def record_inputs(path: Path, prof: dict) -> None:
    """inputs.npz: `calib/{network}/{i}/{arg}` and `eval/{network}/{i}/{arg}` float32 / int64 arrays."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.calibration import calibrate_observers
    from tinysd.quant.workflow import CALIBRATION_GUIDANCE, CALIBRATION_SAMPLER, CALIBRATION_SEED

    loaded = load_checkpoint(ROOT / prof["model"])
    sf = np.float32(loaded.config.vae.scaling_factor)
    arrays = {}
    for split, prompts, seed in (("calib", prof["prompts"], CALIBRATION_SEED),
                                 ("eval", prof["eval_prompts"], prof["eval_seed"])):
        calls: list = []
        calibrate_observers(loaded, list(prompts), prof["steps"], "minmax", sampler=CALIBRATION_SAMPLER, seed=seed,
                            guidance_scale=CALIBRATION_GUIDANCE, record=calls)
        count = dict.fromkeys(NETWORKS, 0)
        for c in calls:
            if c.kind == "unet":
                sample, t, ctx = c.args[:3]
                args = {"sample": sample, "timestep": np.full((sample.shape[0],), float(t), np.float32),
                        "encoder_hidden_states": ctx}
                net = "unet"
            elif c.kind == "vae.decode":
                net, args = "vae_decoder", {"latent": c.args[0]}
            elif c.kind == "vae.encode":
                net, args = "vae_encoder", {"image": c.args[0]}
            else:
                net, args = "text_encoder", {"input_ids": np.asarray(c.args[0], np.int64)}
            for k, v in args.items():
                arrays[f"{split}/{net}/{count[net]}/{k}"] = np.asarray(v)
            count[net] += 1
        print(f"{split}: {count} calls (vae scaling factor {sf})", flush=True)
    (np.savez_compressed if prof["compress_inputs"] else np.savez)(path, **arrays)


def load_calls(npz, split: str, net: str) -> list[dict]:
    """[{input name: array}, ...] of `split` ("calib" / "eval") for one network, in call order."""
    out: dict[int, dict] = {}
    for key in npz.files:
        s, n, i, arg = key.split("/")
        if s == split and n == net:
            out.setdefault(int(i), {})[arg] = npz[key]
    return [out[i] for i in sorted(out)]


# ---------------------------------------------------------------------------------------------
# torch modules (used in both AIMET venvs)
# ---------------------------------------------------------------------------------------------
try:  # the wrappers must be module-level classes: aimet-torch's sim.export pickles the model
    import torch as _torch
except ImportError:  # the driver does not need them
    _torch = None

if _torch is not None:
    class UNetWrapper(_torch.nn.Module):
        """sample, timestep (B,), encoder_hidden_states -> the UNet's output sample."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, encoder_hidden_states):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    class VaeDecoder(_torch.nn.Module):
        """latent (already divided by the scaling factor) -> image: `vae.decode(z).sample`."""

        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, latent):
            return self.vae.decode(latent, return_dict=False)[0]

    class VaeEncoder(_torch.nn.Module):
        """image in [-1, 1] -> `vae.encode(x).latent_dist.mean`."""

        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, image):
            return self.vae.encode(image).latent_dist.mean

    class TextEncoder(_torch.nn.Module):
        """input_ids -> last_hidden_state."""

        def __init__(self, te):
            super().__init__()
            self.te = te

        def forward(self, input_ids):
            return self.te(input_ids, return_dict=False)[0]


def torch_modules(prof: dict):
    """{network: torch.nn.Module in eval mode, float32} of the profile's model and networks."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    model = ROOT / prof["model"]
    unet = UNet2DConditionModel.from_pretrained(model / "unet").float().eval()
    vae = AutoencoderKL.from_pretrained(model / "vae").float().eval()
    te = CLIPTextModel.from_pretrained(model / "text_encoder").float().eval()
    mods = {"unet": UNetWrapper(unet).eval(), "vae_decoder": VaeDecoder(vae).eval(),
            "vae_encoder": VaeEncoder(vae).eval(), "text_encoder": TextEncoder(te).eval()}
    return {n: mods[n] for n in prof["networks"]}


def _profile(work: Path) -> dict:
    return json.loads((work / "profile.json").read_text())


def _as_torch(call: dict, net: str):
    import torch

    return tuple(torch.from_numpy(call[k]) for k in IO_NAMES[net][0])


def _versions(*packages) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


# ---------------------------------------------------------------------------------------------
# stage 2: aimet-onnx
# ---------------------------------------------------------------------------------------------
def stage_onnx(work: Path) -> None:
    import numpy as np
    import onnx
    import torch
    import aimet_onnx.common.quantsim_config as qc
    from aimet_onnx.quantsim import QuantizationSimModel

    cfg = str(Path(qc.__file__).parent / HTP_CONFIG)
    npz = np.load(work / "inputs.npz")
    prof = _profile(work)
    versions = prof["onnx_versions"]
    modules = torch_modules(prof)
    outputs = {}
    for net, module in modules.items():
        calib, evals = load_calls(npz, "calib", net), load_calls(npz, "eval", net)
        src = work / "float" / f"{net}.onnx"
        src.parent.mkdir(parents=True, exist_ok=True)
        ins, outs = IO_NAMES[net]
        with torch.no_grad():
            torch.onnx.export(module, _as_torch(calib[0], net), str(src), dynamo=False, opset_version=OPSET,
                              input_names=ins, output_names=outs, do_constant_folding=True)
            outputs[f"float/{net}"] = np.stack([module(*_as_torch(c, net)).numpy() for c in evals])
        model = onnx.load(str(src))
        for prec, bits in PRECISIONS.items():
            t0 = time.time()
            sim = QuantizationSimModel(model, param_type="int8", activation_type=f"int{bits}", config_file=cfg)
            sim.compute_encodings(calib)
            d = work / "archive" / "aimet-onnx" / net / prec
            d.mkdir(parents=True, exist_ok=True)
            for i, v in enumerate(versions):
                sim.export(str(d), f"{net}_{v}" if i else net, export_model=i == 0, encoding_version=v)
            os.replace(d / f"{net}.encodings", d / f"{net}_{versions[0]}.encodings")
            outputs[f"aimet-onnx/{net}/{prec}"] = np.stack([sim.session.run(None, c)[0] for c in evals])
            print(f"aimet-onnx {net} {prec}: {time.time() - t0:.1f} s", flush=True)
    np.savez(work / "quantsim-onnx.npz", **outputs)
    (work / "versions-onnx.json").write_text(json.dumps(_versions("aimet-onnx", "onnx", "onnxruntime", "torch",
                                                                  "diffusers", "transformers", "numpy")))


# ---------------------------------------------------------------------------------------------
# stage 3: aimet-torch
# ---------------------------------------------------------------------------------------------
def stage_torch(work: Path) -> None:
    import numpy as np
    import torch
    import aimet_torch.common.quantsim as quantsim_settings
    import aimet_torch.common.quantsim_config as qc
    from aimet_torch.quantsim import QuantizationSimModel

    _ignore_unknown_modules()
    cfg = str(Path(qc.__file__).parent / HTP_CONFIG)
    npz = np.load(work / "inputs.npz")
    prof = _profile(work)
    outputs = {}
    for net, module in torch_modules(prof).items():
        calib, evals = load_calls(npz, "calib", net), load_calls(npz, "eval", net)
        ins, outs = IO_NAMES[net]
        dummy = _as_torch(calib[0], net)
        for prec, bits in PRECISIONS.items():
            t0 = time.time()
            sim = QuantizationSimModel(module, dummy, default_output_bw=bits, default_param_bw=8, config_file=cfg)

            def forward_pass(m):
                with torch.no_grad():
                    for c in calib:
                        m(*_as_torch(c, net))

            sim.compute_encodings(forward_pass)
            d = work / "archive" / "aimet-torch-export" / net / prec
            d.mkdir(parents=True, exist_ok=True)
            for v in TORCH_EXPORT_VERSIONS:
                quantsim_settings.encoding_version = v
                sim.export(str(d), f"{net}_{v}", dummy, onnx_export_args={"input_names": ins, "output_names": outs,
                                                                       "opset_version": OPSET})
            quantsim_settings.encoding_version = "1.0.0"
            for f in list(d.iterdir()):  # pickled weights and aimet-torch's own torch-named encodings: not device files
                if f.suffix == ".pth" or f.name.endswith("_torch.encodings") or f.name.startswith("temp_onnx"):
                    f.unlink()
            d = work / "archive" / "aimet-torch-onnx" / net / prec
            d.mkdir(parents=True, exist_ok=True)
            for v in TORCH_ONNX_VERSIONS:
                sim.onnx.export(dummy, str(d / f"{net}_{v}.onnx"), encoding_version=v, dynamo=False,
                                opset_version=OPSET, input_names=ins, output_names=outs)
            with torch.no_grad():
                outputs[f"aimet-torch/{net}/{prec}"] = np.stack([sim.model(*_as_torch(c, net)).numpy() for c in evals])
            print(f"aimet-torch {net} {prec}: {time.time() - t0:.1f} s", flush=True)
    outputs.update(adaround(work, npz, cfg, ADAROUND_NET, prof))
    np.savez(work / "quantsim-torch.npz", **outputs)
    (work / "versions-torch.json").write_text(json.dumps(_versions("aimet-torch", "onnx", "torch", "torchvision",
                                                                   "diffusers", "transformers", "numpy")))


def _ignore_unknown_modules() -> None:
    """Modules aimet-torch has no quantized definition of (see the module docstring) are left float."""
    from aimet_torch.nn import QuantizationMixin
    from diffusers.models.embeddings import Timesteps
    from transformers.activations import QuickGELUActivation

    QuantizationMixin.ignore(Timesteps)
    QuantizationMixin.ignore(QuickGELUActivation)


def adaround(work: Path, npz, cfg: str, net: str, prof: dict) -> dict:
    """AdaRound (aimet-torch) of one network at W8A8, then QuantSim with its frozen weight encodings, exported."""
    import copy

    import numpy as np
    import torch
    from aimet_torch.adaround.adaround_weight import Adaround, AdaroundParameters
    from aimet_torch.common.defs import QuantScheme
    from aimet_torch.quantsim import QuantizationSimModel

    _ignore_unknown_modules()
    t0 = time.time()
    module = torch_modules(prof)[net]
    calib, evals = load_calls(npz, "calib", net), load_calls(npz, "eval", net)
    batches = [_as_torch(c, net) for c in calib]
    d = work / "archive" / "aimet-torch-adaround" / net / "w8a8"
    d.mkdir(parents=True, exist_ok=True)
    params = AdaroundParameters(data_loader=batches, num_batches=len(batches), default_num_iterations=ADAROUND_ITERATIONS,
                                forward_fn=lambda model, inputs: model(*inputs))
    torch.manual_seed(0)
    ada = Adaround.apply_adaround(copy.deepcopy(module), batches[0], params, path=str(d), filename_prefix=f"{net}_adaround",
                                  default_param_bw=8, default_quant_scheme=QuantScheme.post_training_tf,
                                  default_config_file=cfg)
    sim = QuantizationSimModel(ada, batches[0], default_output_bw=8, default_param_bw=8, config_file=cfg)
    sim.set_and_freeze_param_encodings(encoding_path=str(d / f"{net}_adaround.encodings"))

    def forward_pass(m):
        with torch.no_grad():
            for b in batches:
                m(*b)

    sim.compute_encodings(forward_pass)
    ins, outs = IO_NAMES[net]
    sim.onnx.export(batches[0], str(d / f"{net}_1.0.0.onnx"), encoding_version="1.0.0", dynamo=False,
                    opset_version=OPSET, input_names=ins, output_names=outs)
    with torch.no_grad():
        out = np.stack([sim.model(*_as_torch(c, net)).numpy() for c in evals])
    print(f"aimet-torch AdaRound {net} w8a8: {time.time() - t0:.1f} s", flush=True)
    return {f"aimet-torch-adaround/{net}/w8a8": out}


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
def _run_stage(python: str, stage: str, work: Path) -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    subprocess.run([python, str(Path(__file__).resolve()), "--stage", stage, "--work", str(work)], check=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=tuple(PROFILES), default="random")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the profile's)")
    ap.add_argument("--aimet-onnx-python", default="/work/venvs/aimet-onnx/bin/python")
    ap.add_argument("--aimet-torch-python", default="/work/venvs/aimet-torch/bin/python")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--stage", choices=("onnx", "torch"), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage == "onnx":
        return stage_onnx(args.work)
    if args.stage == "torch":
        return stage_torch(args.work)

    import numpy as np

    prof = PROFILES[args.profile]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "profile.json").write_text(json.dumps(prof))
        record_inputs(work / "inputs.npz", prof)
        _run_stage(args.aimet_onnx_python, "onnx", work)
        if prof["torch"]:
            _run_stage(args.aimet_torch_python, "torch", work)
        out = args.out or ROOT / prof["out"]
        out.mkdir(parents=True, exist_ok=True)
        files = sorted(p for p in (work / "archive").rglob("*") if p.is_file())
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz", preset=9) as tar:
            for p in files:
                info = tar.gettarinfo(str(p), arcname=str(p.relative_to(work / "archive")))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(p, "rb") as f:
                    tar.addfile(info, f)
        (out / "exports.tar.xz").write_bytes(buf.getvalue())
        if prof["compress_inputs"]:  # the evaluation inputs only (the calibration inputs are rebuilt by step 1)
            with np.load(work / "inputs.npz") as z:
                np.savez_compressed(out / "inputs.npz", **{k: z[k] for k in z.files if k.startswith("eval/")})
        else:
            (out / "inputs.npz").write_bytes((work / "inputs.npz").read_bytes())
        merged = dict(np.load(work / "quantsim-onnx.npz"))
        if prof["torch"]:
            merged.update(np.load(work / "quantsim-torch.npz"))
        (np.savez_compressed if prof["compress_inputs"] else np.savez)(out / "quantsim.npz", **merged)
        exports = {"aimet-onnx": "QuantizationSimModel.export"}
        versions = {"tinysd-side": _versions("numpy", "onnx"),
                    "aimet-onnx venv": json.loads((work / "versions-onnx.json").read_text())}
        if prof["torch"]:
            exports.update({"aimet-torch-export": "QuantizationSimModel.export",
                            "aimet-torch-onnx": "QuantizationSimModel.onnx.export",
                            "aimet-torch-adaround": f"Adaround.apply_adaround ({ADAROUND_NET}, {ADAROUND_ITERATIONS} "
                                                    f"iterations per layer), then QuantizationSimModel.onnx.export"})
            versions["aimet-torch venv"] = json.loads((work / "versions-torch.json").read_text())
        meta = {
            "generator": TOOL,
            "profile": args.profile,
            "model": prof["model"],
            "networks": list(prof["networks"]),
            "calibration": {"prompts": list(prof["prompts"]), "steps": prof["steps"], "sampler": "euler",
                            "seed": 0, "guidance_scale": 7.5},
            "evaluation": {"prompt": prof["eval_prompts"][0], "prompts": list(prof["eval_prompts"]),
                           "seed": prof["eval_seed"], "steps": prof["steps"]},
            "aimet_config": HTP_CONFIG, "opset": OPSET, "precisions": PRECISIONS,
            "exports": exports,
            "versions": versions,
            "files": {str(p.relative_to(work / "archive")): hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
        }
        (out / "GENERATED.json").write_text(json.dumps(meta, indent=1) + "\n")
        size = sum((out / f).stat().st_size for f in ("exports.tar.xz", "inputs.npz", "quantsim.npz", "GENERATED.json"))
        print(f"wrote {out}: {len(files)} files archived, {size / 1e6:.2f} MB in total")


if __name__ == "__main__":
    main()
