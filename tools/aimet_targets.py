"""Dev-only: tinysd's integer networks against AIMET's own QuantSim, on the real AIMET fixture.

    python3 tools/aimet_targets.py [--fixtures tests/fixtures/aimet] [--markdown]

For every export of tests/fixtures/aimet (made by tools/make_aimet_fixtures.py) and both
precisions, quantizes the tiny model exactly as

    tinysd quantize tests/fixtures/tiny-sd -o OUT --precision P --calibration-prompts PROMPTS \
        --calibration-steps 2 --encodings unet=UNET.encodings --onnx unet=UNET.onnx \
        --encodings vae.decode=DEC.encodings --onnx vae.decode=DEC.onnx

does, runs the integer UNet and VAE decoder on the fixture's evaluation inputs and prints the SQNR
of their outputs against QuantSim's outputs on the same inputs (targets: w8a16 >= 60 dB, w8a8 >=
40 dB), with QuantSim's and tinysd's SQNR against float for scale and the number of tensors the
files lack (calibrated by tinysd). The AdaRound export has UNet files only.
Where the fixture has `readback.npz` (`tools/aimet_divergence.py --crosscheck --save F`; `--readback F`
names another), two more columns: aimet-onnx's QuantSim reading the same export against the QuantSim
that wrote it, and tinysd against that reading.
`--fixtures tests/fixtures/aimet-trained` does the same for the shipped trained model's fixture
(`make_aimet_fixtures.py --profile trained`: aimet-onnx only, its 4 calibration prompts x 20 steps).
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXPORTS = {  # tool folder -> (encodings file name, graph file name, QuantSim key) per network folder
    "aimet-onnx": ("{net}_1.0.0.encodings", "{net}.onnx", "aimet-onnx"),
    "aimet-torch-export": ("{net}_1.0.0.encodings", "{net}_1.0.0.onnx", "aimet-torch"),
    "aimet-torch-onnx": ("{net}_2.0.0.encodings", "{net}_2.0.0.onnx", "aimet-torch"),
    "aimet-torch-adaround": ("{net}_1.0.0.encodings", "{net}_1.0.0.onnx", "aimet-torch-adaround"),
}
KEYS = {"unet": "unet", "vae_decoder": "vae.decode"}
TARGETS = {"w8a8": 40.0, "w8a16": 60.0}


def run_network(qmodel, net: str, inputs) -> np.ndarray:
    from tinysd.quant.engine import build_integer_networks

    _, unet, vae = build_integer_networks(qmodel)
    outs, i = [], 0
    while f"eval/{net}/{i}/" + ("sample" if net == "unet" else "latent") in inputs:
        p = f"eval/{net}/{i}/"
        outs.append(unet(inputs[p + "sample"], float(inputs[p + "timestep"][0]), inputs[p + "encoder_hidden_states"])
                    if net == "unet" else vae.decode(inputs[p + "latent"]))
        i += 1
    return np.stack(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", type=Path, default=ROOT / "tests" / "fixtures" / "aimet")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--exports", nargs="+", choices=list(EXPORTS), help="only these exports (default: all)")
    ap.add_argument("--precisions", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    ap.add_argument("--readback", type=Path, default=None,
                    help="aimet_divergence.py --crosscheck --save output (default: FIXTURES/readback.npz if present)")
    args = ap.parse_args()

    from tinysd.quant.calibration import sqnr_db
    from tinysd.quant.folder import load_quantized
    from tinysd.quant.workflow import quantize_checkpoint

    meta = json.loads((args.fixtures / "GENERATED.json").read_text())
    inputs = np.load(args.fixtures / "inputs.npz")
    qs = np.load(args.fixtures / "quantsim.npz")
    readback_npz = args.readback or args.fixtures / "readback.npz"
    readback = dict(np.load(readback_npz)) if readback_npz.exists() else {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with tarfile.open(args.fixtures / "exports.tar.xz") as tar:
            tar.extractall(tmp / "x", filter="data")
        prompts = tmp / "prompts.txt"
        prompts.write_text("\n".join(meta["calibration"]["prompts"]) + "\n")
        for tool, (enc_name, graph_name, qs_key) in EXPORTS.items():
            if args.exports and tool not in args.exports:
                continue
            for prec in args.precisions:
                nets = [n for n in KEYS if (tmp / "x" / tool / n / prec).is_dir()]
                if not nets:
                    continue
                enc = [f"{KEYS[n]}={tmp / 'x' / tool / n / prec / enc_name.format(net=n)}" for n in nets]
                onnx = [f"{KEYS[n]}={tmp / 'x' / tool / n / prec / graph_name.format(net=n)}" for n in nets]
                summary: dict = {}
                out, _ = quantize_checkpoint(ROOT / meta["model"], tmp / f"{tool}-{prec}", prec, prompts_file=prompts,
                                             steps=meta["calibration"]["steps"], encodings=enc, onnx=onnx,
                                             sqnr_calls=1, summary=summary)
                qmodel = load_quantized(out)
                for n in nets:
                    got = run_network(qmodel, n, inputs)
                    ref = qs[f"{qs_key}/{n}/{prec}"]
                    flt = qs[f"float/{n}"]
                    net = "vae" if n != "unet" else "unet"
                    back = readback.get(f"{tool}/{n}/{prec}")
                    back = () if back is None else (sqnr_db(ref, back.reshape(ref.shape)),
                                                     sqnr_db(back.reshape(ref.shape), got))
                    rows.append((tool, n, prec, sqnr_db(ref, got), sqnr_db(flt, ref), sqnr_db(flt, got),
                                 len(summary["calibrated"].get(net, [])), len(summary["derived"].get(net, {})), back))
                print(f"{tool} {prec}: " + "; ".join(summary["lines"]), file=sys.stderr, flush=True)
    head = ("export", "network", "precision", "tinysd vs QuantSim dB", "target", "QuantSim vs float dB",
            "tinysd vs float dB", "tensors calibrated", "tensors derived")
    if readback:
        head += ("aimet-onnx reading the export vs QuantSim dB", "tinysd vs aimet-onnx reading the export dB")
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for tool, n, prec, db, qf, tf, cal, der, back in rows:
        target = f">= {TARGETS[prec]:.0f}: {'met' if db >= TARGETS[prec] else 'missed'}"
        cells = (tool, n, prec, f"{db:.1f}", target, f"{qf:.1f}", f"{tf:.1f}", str(cal), str(der))
        if readback:
            cells += tuple(f"{x:.1f}" for x in back) if back else ("-", "-")
        print("| " + " | ".join(cells) + " |" if args.markdown else "  ".join(cells))


if __name__ == "__main__":
    main()
