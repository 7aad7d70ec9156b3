"""Dev-only: where tinysd's integer network and AIMET's QuantSim part, tensor by tensor.

    python3 tools/aimet_divergence.py [--fixtures tests/fixtures/aimet] [--net unet] [--precision w8a8] \
        [--call 0] [--force] [--aimet-onnx-python /work/venvs/aimet-onnx/bin/python] [--top 25]
    python3 tools/aimet_divergence.py --sensitivity [--fixtures ...]
    python3 tools/aimet_divergence.py --crosscheck [--fixtures ...] [--save readback.npz]

For one evaluation call of an aimet-onnx export of the fixture (made by tools/make_aimet_fixtures.py):

1. in the aimet-onnx venv (stage `aimet`): builds `QuantizationSimModel` on the exported graph with
   the same config and precision, loads the exported encodings (`load_encodings_to_sim`), runs the
   call and saves every quantized tensor (the `{name}_updated` outputs of QuantSim's quantizers);
2. with tinysd: quantizes the model with the same files (`--encodings` / `--onnx`, as
   tools/aimet_targets.py), runs the integer network on the same inputs and compares, for every op
   output that has a QuantSim counterpart of the same shape (through the ONNX name map), tinysd's
   codes with QuantSim's values quantized on the same encoding: the share of equal codes, the
   largest difference in steps and the SQNR.

--crosscheck reads every export back with AIMET's other simulator: aimet-onnx's QuantSim built on the
exported graph with the exported 1.0.0 encodings (`load_encodings_to_sim`, quantizers the file lacks disabled),
run on every evaluation call and compared with the output of the QuantSim that wrote the file (aimet-torch's
for its exports); `--save F` keeps those outputs (tests/fixtures/aimet/readback.npz, which
tools/aimet_targets.py reads).

--sensitivity instead measures QuantSim against itself (UNet, both precisions, every evaluation
call): its output on the evaluation inputs against its output when 1 % of the `sample` codes
(random, seed 0) are moved by one step of the sample's encoding, when the context gets
N(0, 1e-6) noise, and from ONNX Runtime sessions with graph optimizations off or one thread:
how far a one-step difference in a few codes carries (the scale of what tinysd vs QuantSim can
reach without emulating QuantSim's float32 bit for bit).

With --force, each compared op's output is replaced by QuantSim's codes before the next op reads it,
so every difference is the op's own (its arithmetic against QuantSim's float32 on the same input
codes), not one carried from earlier ops. Prints one line per tensor in execution order (the --top
worst by equal share, then a summary); nothing is written to the fixture (but --crosscheck --save
tests/fixtures/aimet/readback.npz writes that file).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"unet": "unet", "vae_decoder": "vae.decode"}
HTP_CONFIG = "htp_quantsim_config_v75.json"
INPUTS = {"unet": ("sample", "timestep", "encoder_hidden_states"), "vae_decoder": ("latent",)}


def _quantsim(graph, encodings, bits: int):
    """(aimet-onnx venv) aimet-onnx's QuantSim on an exported graph (HTP config, int8 parameters, `bits`-bit
    activations) with the exported encodings loaded; quantizers the file lacks are disabled."""
    import onnx
    import aimet_onnx.common.quantsim_config as qc
    from aimet_onnx.quantsim import QuantizationSimModel, load_encodings_to_sim

    sim = QuantizationSimModel(onnx.load(str(graph)), param_type="int8", activation_type=f"int{bits}",
                               config_file=str(Path(qc.__file__).parent / HTP_CONFIG))
    load_encodings_to_sim(sim, str(encodings), strict=False)
    return sim


def stage_aimet(onnx_path: str, enc_path: str, bits: int, inputs_npz: str, out_npz: str) -> None:
    """(aimet-onnx venv) every quantized tensor of QuantSim on the inputs in `inputs_npz`."""
    from aimet_onnx.layer_output_utils import LayerOutput

    sim = _quantsim(onnx_path, enc_path, bits)
    feed = dict(np.load(inputs_npz))
    names = [n for n in LayerOutput.get_activation_names(sim.model.model) if n.endswith("_updated")]
    LayerOutput.register_activations(sim.model.model, names)
    from aimet_onnx.utils import OrtInferenceSession

    sess = OrtInferenceSession(sim.model.model, ["CPUExecutionProvider"])
    vals = sess.run(names, feed)
    out = {n[:-len("_updated")]: v for n, v in zip(names, vals)}
    out["__output__"] = sim.session.run(None, feed)[0]
    np.savez(out_npz, **out)


def stage_sensitivity(fixtures: str, archive: str) -> None:
    """(aimet-onnx venv) QuantSim's UNet against itself on slightly moved inputs (module docstring)."""
    from aimet_onnx.utils import OrtInferenceSession, register_aimet_custom_ops
    from onnxruntime import GraphOptimizationLevel, SessionOptions

    inputs = np.load(Path(fixtures) / "inputs.npz")
    # the same QuantSim graph and encodings in other, equally valid float32 evaluations by ONNX Runtime
    variants = {"graph optimizations off": {"graph_optimization_level": GraphOptimizationLevel.ORT_DISABLE_ALL},
                "one thread": {"intra_op_num_threads": 1}}

    def session(model, opts):
        so = register_aimet_custom_ops(SessionOptions())
        for k, v in opts.items():
            setattr(so, k, v)
        return OrtInferenceSession(model, ["CPUExecutionProvider"], session_options=so)

    def snr(a, b):
        a = a.astype(np.float64)
        return 10 * np.log10(np.sum(a ** 2) / np.sum((a - b) ** 2))

    for prec, bits in (("w8a8", 8), ("w8a16", 16)):
        d = Path(archive) / "aimet-onnx" / "unet" / prec
        sim = _quantsim(d / "unet.onnx", d / "unet_1.0.0.encodings", bits)
        enc = json.loads((d / "unet_1.0.0.encodings").read_text())
        s = next(a["scale"] for a in enc["activation_encodings"] if a["name"] == "sample")
        s = float(s[0] if isinstance(s, list) else s)
        rng = np.random.default_rng(0)
        sessions = {name: session(sim.model.model, opts) for name, opts in variants.items()}
        base, moved, noisy = [], [], []
        other = {name: [] for name in variants}
        i = 0
        while f"eval/unet/{i}/sample" in inputs:
            feed = {k: inputs[f"eval/unet/{i}/{k}"] for k in INPUTS["unet"]}
            base.append(sim.session.run(None, feed)[0])
            for name, sess in sessions.items():
                other[name].append(sess.run(None, feed)[0])
            step = (rng.random(feed["sample"].shape) < 0.01) * rng.choice([-1.0, 1.0], feed["sample"].shape)
            moved.append(sim.session.run(None, {**feed, "sample": (feed["sample"] + s * step).astype(np.float32)})[0])
            ctx = feed["encoder_hidden_states"] + rng.normal(0, 1e-6, feed["encoder_hidden_states"].shape)
            noisy.append(sim.session.run(None, {**feed, "encoder_hidden_states": ctx.astype(np.float32)})[0])
            i += 1
        base, moved, noisy = map(np.stack, (base, moved, noisy))
        print(f"unet {prec}: QuantSim vs QuantSim with 1 % of the sample codes moved one step: "
              f"{snr(base, moved):.2f} dB; with the context + N(0, 1e-6): {snr(base, noisy):.2f} dB", flush=True)
        for name, outs in other.items():
            outs = np.stack(outs)
            print(f"unet {prec}: QuantSim vs QuantSim, {name}: {snr(base, outs):.2f} dB "
                  f"({np.mean(outs != base):.1%} of the output values differ)", flush=True)


def stage_crosscheck(fixtures: str, archive: str, out_npz: str) -> None:
    """(aimet-onnx venv) aimet-onnx's QuantSim on each export (its graph and 1.0.0 encodings), every evaluation
    call: for aimet-torch's exports AIMET's other simulator reading the same file."""
    import aimet_onnx
    import onnxruntime

    inputs = np.load(Path(fixtures) / "inputs.npz")
    out = {}
    for tool in ("aimet-onnx", "aimet-torch-onnx", "aimet-torch-export", "aimet-torch-adaround"):
        for net in INPUTS:
            for prec, bits in (("w8a8", 8), ("w8a16", 16)):
                d = Path(archive) / tool / net / prec
                graph = d / (f"{net}.onnx" if tool == "aimet-onnx" else f"{net}_1.0.0.onnx")
                if not graph.exists():
                    continue
                sim = _quantsim(graph, d / f"{net}_1.0.0.encodings", bits)
                calls, i = [], 0
                while f"eval/{net}/{i}/{INPUTS[net][0]}" in inputs:
                    calls.append(sim.session.run(None, {k: inputs[f"eval/{net}/{i}/{k}"] for k in INPUTS[net]})[0])
                    i += 1
                out[f"{tool}/{net}/{prec}"] = np.stack(calls)
    out["__generated__"] = np.array(json.dumps({
        "generator": "tools/aimet_divergence.py --crosscheck",
        "exports.tar.xz": hashlib.sha256((Path(fixtures) / "exports.tar.xz").read_bytes()).hexdigest(),
        "aimet-onnx": aimet_onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}))
    np.savez(out_npz, **out)


def crosscheck(args: argparse.Namespace) -> None:
    """--crosscheck: each export read back by aimet-onnx's QuantSim against the QuantSim that wrote it."""
    sys.path.insert(0, str(ROOT))
    from tinysd.quant.calibration import sqnr_db

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.fixtures / "exports.tar.xz") as tar:
            tar.extractall(Path(tmp) / "x", filter="data")
        subprocess.run([args.aimet_onnx_python, __file__, "--stage", "crosscheck", "--args", str(args.fixtures),
                        str(Path(tmp) / "x"), str(Path(tmp) / "cc.npz")], check=True,
                       env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
        cc = dict(np.load(Path(tmp) / "cc.npz"))
    if args.save:  # for tools/aimet_targets.py --readback and tests/fixtures/aimet/readback.npz
        np.savez(args.save, **cc)
    qs = np.load(args.fixtures / "quantsim.npz")
    print("| export | network | precision | aimet-onnx QuantSim on the export vs the exporting QuantSim dB |")
    print("|---|---|---|---|")
    for key, got in cc.items():
        if key == "__generated__":
            continue
        tool, net, prec = key.split("/")
        ref = qs[f"{tool if tool in ('aimet-onnx', 'aimet-torch-adaround') else 'aimet-torch'}/{net}/{prec}"]
        print(f"| {tool} | {net} | {prec} | {sqnr_db(ref, got.reshape(ref.shape)):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", type=Path, default=ROOT / "tests" / "fixtures" / "aimet")
    ap.add_argument("--net", choices=tuple(KEYS), default="unet")
    ap.add_argument("--precision", choices=("w8a8", "w8a16"), default="w8a8")
    ap.add_argument("--call", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--save", type=Path, default=None, help="also save QuantSim's tensors (ONNX names) and tinysd's "
                                                            "op outputs (tinysd names, codes) to this .npz")
    ap.add_argument("--aimet-onnx-python", default="/work/venvs/aimet-onnx/bin/python")
    ap.add_argument("--sensitivity", action="store_true")
    ap.add_argument("--crosscheck", action="store_true")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage == "aimet":
        a = args.args
        return stage_aimet(a[0], a[1], int(a[2]), a[3], a[4])
    if args.stage == "crosscheck":
        return stage_crosscheck(*args.args)
    if args.crosscheck:
        return crosscheck(args)
    if args.stage == "sensitivity":
        return stage_sensitivity(args.args[0], args.args[1])
    if args.sensitivity:
        with tempfile.TemporaryDirectory() as tmp:
            with tarfile.open(args.fixtures / "exports.tar.xz") as tar:
                tar.extractall(Path(tmp) / "x", filter="data")
            subprocess.run([args.aimet_onnx_python, __file__, "--stage", "sensitivity", "--args", str(args.fixtures),
                            str(Path(tmp) / "x")], check=True, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
        return None

    sys.path.insert(0, str(ROOT))
    from tinysd.interp.integer import QTensor
    from tinysd.fixedpoint import quantize
    from tinysd.quant.calibration import model_graphs, sqnr_db
    from tinysd.quant.engine import build_integer_networks
    from tinysd.quant.folder import load_quantized
    from tinysd.quant.onnx_map import map_onnx
    from tinysd.quant.workflow import quantize_checkpoint

    meta = json.loads((args.fixtures / "GENERATED.json").read_text())
    inputs = np.load(args.fixtures / "inputs.npz")
    net, prec = args.net, args.precision
    bits = 8 if prec == "w8a8" else 16
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with tarfile.open(args.fixtures / "exports.tar.xz") as tar:
            tar.extractall(tmp / "x", filter="data")
        d = tmp / "x" / "aimet-onnx" / net / prec
        enc, graph = d / f"{net}_1.0.0.encodings", d / f"{net}.onnx"
        feed = {k: inputs[f"eval/{net}/{args.call}/{k}"] for k in INPUTS[net]}
        np.savez(tmp / "feed.npz", **feed)
        subprocess.run([args.aimet_onnx_python, __file__, "--stage", "aimet", "--args", str(graph), str(enc), str(bits),
                        str(tmp / "feed.npz"), str(tmp / "qs.npz")], check=True, env={"CUDA_VISIBLE_DEVICES": "",
                       "PATH": "/usr/bin:/bin"})
        qs = dict(np.load(tmp / "qs.npz"))
        prompts = tmp / "prompts.txt"
        prompts.write_text(meta["calibration"]["prompts"][0] + "\n")
        out, _ = quantize_checkpoint(ROOT / meta["model"], tmp / "q", prec, prompts_file=prompts, steps=1,
                                     encodings=[f"{KEYS[net]}={enc}"], onnx=[f"{KEYS[net]}={graph}"], sqnr_calls=1,
                                     summary={})
        qmodel = load_quantized(out)
        tnet = "unet" if net == "unet" else "vae"
        m = map_onnx(graph, tnet, model_graphs(qmodel.config)[tnet], None, ("all",) if net == "unet" else ("decode",))
        by_tensor: dict[str, list[str]] = {}
        for r in m.rows:
            if r.tinysd and r.role in ("activation", "alias", "input", "part"):
                by_tensor.setdefault(r.tinysd, []).append(r.onnx)
        _, unet, vae = build_integer_networks(qmodel)
        wrapper = unet if net == "unet" else vae
        inner = wrapper.interp
        rows, mine = [], {}

        class Forcing:
            def __getattr__(self, name):
                f = getattr(inner, name)
                if name in ("reshape", "transpose", "split", "output", "timestep_features") or not callable(f):
                    return f

                def wrapped(*a, **k):
                    y = f(*a, **k)
                    if not isinstance(y, QTensor):
                        return y
                    ref = next((qs[o] for o in by_tensor.get(y.enc, ()) if o in qs and qs[o].shape == y.data.shape),
                               None)
                    if ref is None:
                        rows.append((y.enc, None, None, None))
                        return y
                    e = inner.qnet.activations[y.enc]
                    codes = quantize(ref, float(e.scale[0]), int(e.zero_point[0]), 0, 2**bits - 1).astype(y.data.dtype)
                    diff = np.abs(codes.astype(np.int64) - y.data.astype(np.int64))
                    mine[y.enc] = y.data.copy()
                    rows.append((y.enc, float(np.mean(diff == 0)), int(diff.max()),
                                 sqnr_db(codes.astype(np.float64), y.data.astype(np.float64))))
                    return QTensor(codes, y.zp, y.bits, y.enc) if args.force else y

                return wrapped

        wrapper.interp = Forcing()
        if net == "unet":
            got = wrapper(feed["sample"], float(feed["timestep"][0]), feed["encoder_hidden_states"])
        else:
            got = wrapper.decode(feed["latent"])
        ref_out = np.load(args.fixtures / "quantsim.npz")[f"aimet-onnx/{net}/{prec}"][args.call]
        print(f"{net} {prec} call {args.call}{' (forced)' if args.force else ''}: output vs QuantSim "
              f"{sqnr_db(ref_out, got):.2f} dB; QuantSim rerun vs fixture {sqnr_db(ref_out, qs['__output__']):.2f} dB")
        if args.save:
            np.savez(args.save, **{f"qs/{k}": v for k, v in qs.items()}, **{f"tinysd/{k}": v for k, v in mine.items()})
        compared = [r for r in rows if r[1] is not None]
        print(f"{len(compared)} of {len(rows)} op outputs compared; all codes equal in "
              f"{sum(r[1] == 1.0 for r in compared)}")
        for r in compared:
            print(f"  {r[0]:70s} equal {100 * r[1]:6.2f} %  max {r[2]:4d} steps  {r[3]:7.2f} dB")
        print("worst:")
        for r in sorted(compared, key=lambda r: r[1])[:args.top]:
            print(f"  {r[0]:70s} equal {100 * r[1]:6.2f} %  max {r[2]:4d} steps  {r[3]:7.2f} dB")
        print("not compared: " + ", ".join(r[0] for r in rows if r[1] is None)[:2000])


if __name__ == "__main__":
    main()
