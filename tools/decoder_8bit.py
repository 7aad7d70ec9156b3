"""Why the VAE decoder does not survive 8-bit activations: the two measurements of docs/quantization.md §10.

    python3 tools/decoder_8bit.py [MODEL] [--scenes 16] [--calibration-scenes 64] [--eval-scenes 24]

MODEL: a float checkpoint (default: the shipped model). The decoder is fed the encoder's latents
of scenes drawn by `tinysd.eval.shapes` (seeded), not sampler outputs, so the script needs no
sampling and is deterministic.

1. GroupNorm inputs: for each GroupNorm of the decoder, the per-image, per-group standard
   deviation of its input in units of the uint8 step of that input's min-max range over the
   same calls ((max - min) / 255): median, minimum, and the share of groups under 3 steps.
2. Fake quantization (the float decoder with each op output rounded to a grid of its range,
   ranges from `--calibration-scenes` scenes, evaluated on `--eval-scenes` others; the integer
   decoder matches this to about 0.02 dB): decoded-image PSNR against float, mean and min, for
   uint8 per tensor, uint8 per channel, uint16 from a given decoder block on, and uint16 for one
   kind of op of the last block only.

Dev-only diagnostics: float arithmetic throughout, nothing here is an integer kernel.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tinysd.checkpoint import load_checkpoint  # noqa: E402
from tinysd.eval import shapes  # noqa: E402
from tinysd.interp.names import COMPUTING_OPS, positional_name as _positional_name  # noqa: E402
from tinysd.interp.float import FloatInterpreter  # noqa: E402
from tinysd.interp.record import RecordingInterpreter  # noqa: E402
from tinysd.models import VAE  # noqa: E402
from tinysd.nn.vae import AutoencoderKL  # noqa: E402
from tinysd.paths import DEFAULT_MODEL_DIR  # noqa: E402


class FakeQuantInterpreter(FloatInterpreter):
    """Float interpreter whose op outputs are rounded to asymmetric grids (per tensor or per channel).

    `collect = True`: record each op output's per-channel (axis 1 of 4-D tensors) min / max.
    `collect = False`: round each op output to `bits(name)` bits over its recorded range (widened
    to include 0), per channel where `per_channel(name)` and the tensor is 4-D, else per tensor.
    """

    def __init__(self, params, network):
        super().__init__(params, network)
        self.collect = True
        self.lo: dict[str, np.ndarray] = {}
        self.hi: dict[str, np.ndarray] = {}
        self.op_of: dict[str, str] = {}
        self.bits = lambda name: 8
        self.per_channel = lambda name: False

    def _tap(self, op: str, name: str, y):
        y = np.asarray(y)
        if self.collect:
            axes = (0, 2, 3) if y.ndim == 4 else None
            lo, hi = np.atleast_1d(y.min(axis=axes)), np.atleast_1d(y.max(axis=axes))
            self.lo[name] = np.minimum(self.lo.get(name, lo), lo)
            self.hi[name] = np.maximum(self.hi.get(name, hi), hi)
            self.op_of[name] = op
            return y
        lo, hi = self.lo[name], self.hi[name]
        if y.ndim == 4 and self.per_channel(name):
            lo, hi = lo[None, :, None, None], hi[None, :, None, None]
        else:
            lo, hi = lo.min(), hi.max()
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        levels = 2 ** self.bits(name) - 1
        scale = np.maximum(hi - lo, 1e-12) / levels
        zp = np.round(-lo / scale)
        q = np.clip(np.round(y / scale) + zp, 0, levels)
        return ((q - zp) * scale).astype(np.float32)


def _tapping(op: str):
    base = getattr(FloatInterpreter, op)

    def method(self, *args, **kwargs):
        name = kwargs["name"] if "name" in kwargs else _positional_name(op, args)
        return self._tap(op, name, base(self, *args, **kwargs))

    return method


for _op in COMPUTING_OPS:
    setattr(FakeQuantInterpreter, _op, _tapping(_op))


def scene_latents(vae: VAE, seed: int, n: int) -> np.ndarray:
    """Encoder latent means (n, 4, h, w) of n drawn scenes (rng seed `seed`)."""
    rng = np.random.default_rng(seed)
    imgs = np.stack([np.asarray(shapes.draw(shapes.sample_scene(rng))) for _ in range(n)])
    x = imgs.astype(np.float32) / 127.5 - 1.0  # (n, H, W, 3) in [-1, 1]
    return vae.encode(x.transpose(0, 3, 1, 2))


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round((img.astype(np.float64) + 1.0) * 127.5), 0, 255)


def groupnorm_table(loaded, z: np.ndarray) -> None:
    rec = RecordingInterpreter(FloatInterpreter(loaded.params["vae"], "vae"), match="decoder.*")
    AutoencoderKL(loaded.config.vae).decode(rec, z)
    print(f"{'GroupNorm':45s} {'C':>4s} {'groups':>6s} {'HxW':>7s} {'median':>7s} {'min':>6s} {'<3 steps':>8s}")
    for r in rec.records:
        if r.op != "group_norm":
            continue
        x = r.inputs["x"].data  # (B, C, H, W)
        b, c, h, w = x.shape
        g = r.attrs["groups"]
        step = (x.max() - x.min()) / 255.0
        ratio = x.reshape(b, g, -1).std(axis=2) / step  # (B, g): per-image, per-group std in steps
        print(f"{r.name:45s} {c:4d} {g:6d} {h:3d}x{w:<3d} {np.median(ratio):7.2f} {ratio.min():6.2f} "
              f"{100 * (ratio < 3).mean():7.1f}%")


def fake_quant_table(loaded, vae: VAE, z_cal: np.ndarray, z_eval: np.ndarray) -> None:
    graph = AutoencoderKL(loaded.config.vae)
    fq = FakeQuantInterpreter(loaded.params["vae"], "vae")
    for i in range(0, len(z_cal), 16):
        graph.decode(fq, z_cal[i:i + 16])
    fq.collect = False
    ref = to_uint8(vae.decode(z_eval))
    names = list(fq.op_of)

    def from_block(prefix: str):
        first = next(i for i, n in enumerate(names) if n.startswith(prefix))
        return set(names[first:])

    variants = [
        ("uint8 per tensor", lambda n: 8, lambda n: False),
        ("uint8 per channel (4-D tensors)", lambda n: 8, lambda n: True),
    ]
    for block in ("decoder.up_blocks.3", "decoder.up_blocks.2"):
        wide = from_block(block)
        variants.append((f"uint8, uint16 from {block} on ({len(wide)} tensors)",
                         lambda n, wide=wide: 16 if n in wide else 8, lambda n: False))
    last = from_block("decoder.up_blocks.3")
    for op in sorted({fq.op_of[n] for n in last}):
        wide = {n for n in last if fq.op_of[n] == op}
        variants.append((f"uint8, uint16 for up_blocks.3 on, {op} only ({len(wide)})",
                         lambda n, wide=wide: 16 if n in wide else 8, lambda n: False))
    variants.append(("uint16 everywhere", lambda n: 16, lambda n: False))
    print(f"\n{'activations':62s} {'PSNR mean':>9s} {'min':>6s}")
    for title, bits, per_channel in variants:
        fq.bits, fq.per_channel = bits, per_channel
        out = to_uint8(graph.decode(fq, z_eval))
        mse = np.square(out - ref).reshape(len(z_eval), -1).mean(axis=1)
        psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))
        print(f"{title:62s} {psnr.mean():9.1f} {psnr.min():6.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--scenes", type=int, default=16, help="scenes of the GroupNorm table (seed 5)")
    ap.add_argument("--calibration-scenes", type=int, default=64, help="fake-quantization ranges (seed 11)")
    ap.add_argument("--eval-scenes", type=int, default=24, help="fake-quantization evaluation (seed 12)")
    args = ap.parse_args(argv)
    loaded = load_checkpoint(args.model)
    vae = VAE.from_params(loaded.config.vae, loaded.params["vae"])
    groupnorm_table(loaded, scene_latents(vae, 5, args.scenes))
    fake_quant_table(loaded, vae, scene_latents(vae, 11, args.calibration_scenes),
                     scene_latents(vae, 12, args.eval_scenes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
