"""Dev-only experiment: would a single-rounding requantize bring tinysd closer to AIMET's QuantSim?

    python3 tools/aimet_rounding_experiment.py [--fixtures tests/fixtures/aimet] [--gemm]

docs/arithmetic.md section 2 requantizes in two roundings: `srdhm(x, M)` to an integer, then a
rounding right shift by n bits, an error of up to 2**-(n+1) step near a half (a quarter of a
step when n = 1); QuantSim rounds once. This experiment (not the spec) prepares the aimet-onnx
W8A8 UNet and VAE decoder of a fixture twice: as the spec says, and with every rescale of an
elementwise op (add, concat, requantize, scale, upsample, softmax requantization) whose
multiplier needs a right shift re-expressed with shift 0 and the denormalized multiplier
round(real * 2**31), which the kernels compute with a single rounding; with --gemm also the
conv / linear / matmul / mul rescales where that multiplier's error bound (|x| 2**-32 for the
largest narrowed accumulator |x|) is below a quarter of the double-rounding window. It prints
the SQNR of each against QuantSim on every evaluation call. The arrays are never saved.
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
KEYS = {"unet": "unet", "vae_decoder": "vae.decode"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", type=Path, default=ROOT / "tests" / "fixtures" / "aimet")
    ap.add_argument("--gemm", action="store_true")
    args = ap.parse_args()

    import tinysd.quant.prepare as P
    from tinysd.checkpoint import load_checkpoint
    from tinysd.interp.integer import IntegerInterpreter
    from tinysd.models import UNet, VAE
    from tinysd.quant.calibration import model_graphs, sqnr_db
    from tinysd.quant.imports import Source, read_sources

    spec_multipliers, spec_requant_arrays = P.multipliers, P.requant_arrays

    def single(real, what):
        m, s = spec_multipliers(real, what)
        r = np.atleast_1d(np.asarray(real, np.float64))
        sel = (s <= -1) & (m != 0)
        return np.where(sel, np.floor(r * 2.0**31 + 0.5), m).astype(np.int32), np.where(sel, 0, s).astype(np.int32)

    def single_gemm(real, bound, what):
        r = np.atleast_1d(np.asarray(real, dtype=np.float64))
        n = np.broadcast_to(np.atleast_1d(np.asarray(P.accumulator_shift(np.asarray(bound, dtype=np.int64)),
                                                     dtype=np.int64)), r.shape)
        rr = r * np.exp2(n.astype(np.float64))
        m, s = spec_multipliers(rr, what)
        xmax = np.broadcast_to(np.asarray(bound, np.float64), r.shape) / np.exp2(n.astype(np.float64))
        sel = (s <= -1) & (m != 0) & (xmax * 2.0**-32 <= 2.0**(s - 1) / 4)
        m2 = np.where(sel, np.floor(rr * 2.0**31 + 0.5), m).astype(np.int32)
        return m2, np.where(sel, 0, s).astype(np.int32), n.astype(np.int32)

    meta = json.loads((args.fixtures / "GENERATED.json").read_text())
    inputs, qs = np.load(args.fixtures / "inputs.npz"), np.load(args.fixtures / "quantsim.npz")
    loaded = load_checkpoint(ROOT / meta["model"])
    graphs = model_graphs(loaded.config)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.fixtures / "exports.tar.xz") as tar:
            tar.extractall(Path(tmp) / "x", filter="data")
        d = {n: Path(tmp) / "x" / "aimet-onnx" / n / "w8a8" for n in KEYS}
        imported = read_sources(loaded, [Source(KEYS[n], d[n] / f"{n}_1.0.0.encodings", d[n] / f"{n}.onnx")
                                         for n in KEYS])
        for label in ("spec", "single rounding" + (" (with gemm / mul)" if args.gemm else "")):
            single_on = label != "spec"
            P.multipliers = single if single_on else spec_multipliers
            P.requant_arrays = single_gemm if single_on and args.gemm else spec_requant_arrays
            try:
                nets = {net: P.quantize_network(graphs[net], {**loaded.params[net], **imp.weights}, net, "w8a8",
                                                imp.activations, {**imp.params, **imp.norm_params}, follow_softmax=True)
                        for net, imp in imported.items()}
            finally:
                P.multipliers, P.requant_arrays = spec_multipliers, spec_requant_arrays
            unet = UNet(graphs["unet"], IntegerInterpreter(nets["unet"]))
            vae = VAE(graphs["vae"], IntegerInterpreter(nets["vae"]))
            got, i = [], 0
            while f"eval/unet/{i}/sample" in inputs:
                p = f"eval/unet/{i}/"
                got.append(unet(inputs[p + "sample"], float(inputs[p + "timestep"][0]), inputs[p + "encoder_hidden_states"]))
                i += 1
            dec, i = [], 0
            while f"eval/vae_decoder/{i}/latent" in inputs:
                dec.append(vae.decode(inputs[f"eval/vae_decoder/{i}/latent"]))
                i += 1
            print(f"{args.fixtures.name} w8a8 {label}: UNet vs QuantSim "
                  f"{sqnr_db(qs['aimet-onnx/unet/w8a8'], np.stack(got)):.2f} dB, VAE decoder "
                  f"{sqnr_db(qs['aimet-onnx/vae_decoder/w8a8'], np.stack(dec)):.2f} dB", flush=True)


if __name__ == "__main__":
    main()
