"""Experiment: AdaRound of the w8a8 UNet with inputs from the integer (nearest) network instead of the float one.

    python3 tools/adaround_qinputs.py [--iterations 200] [--samples 1024] [--every 4]

A script, not a test. The shipped model is calibrated as `tinysd quantize` does it (26 prompts x 20 steps,
min-max); the w8a8 UNet is quantized with nearest rounding. Every --every-th recorded calibration UNet call
(from the first) is replayed through a float `ColumnSampler` and through the integer nearest UNet whose
linear / conv2d inputs are dequantized and sampled at the same positions (same generators), giving X_f
and X_q. Per UNet layer: "float" AdaRound (loss ||(W_soft - W) X_f||^2, tinysd's) and "quantized-input"
AdaRound (loss ||W_soft X_q - W X_f||^2, AIMET-style asymmetric reconstruction; gradient
2 (W_soft G_qq - W G_fq)). Reports the UNet SQNR at w8a8 of nearest / float / quantized-input AdaRound
on held-out calibration calls (every 8th, from the 3rd: not sampled).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))

import numpy as np  # noqa: E402

from tinysd.checkpoint import load_checkpoint  # noqa: E402
from tinysd.interp.integer import IntegerInterpreter  # noqa: E402
from tinysd.models import UNet  # noqa: E402
from tinysd.paths import DEFAULT_MODEL_DIR  # noqa: E402
from tinysd.quant import adaround as ar  # noqa: E402
from tinysd.quant.calibration import (calibrate_observers, model_graphs, quantize_model,  # noqa: E402
                                      ranges_from_observers, replay_sqnr)
from tinysd.quant.engine import build_integer_networks  # noqa: E402
from tinysd.quant.prompts import read_prompts  # noqa: E402
from tinysd.quant.weights import quantize_weight  # noqa: E402


class QSampler(IntegerInterpreter):
    """Integer interpreter that samples the dequantized inputs of linear / conv2d with `sampler`'s generators."""

    def __init__(self, qnet, sampler):
        super().__init__(qnet)
        self.sampler = sampler

    def _real(self, x):
        scale = np.float32(self.qnet.activations[x.enc].scale[0])
        return (x.data.astype(np.float32) - np.float32(x.zp)) * scale

    def linear(self, x, name):
        self.sampler.sample_linear(self._real(x), name)
        return super().linear(x, name)

    def conv2d(self, x, name, stride=1, padding=0):
        self.sampler.sample_conv2d(self._real(x), name, stride, padding)
        return super().conv2d(x, name, stride, padding)


def asym_adaround(w, s, xf, xq, st):
    """AdaRound with loss mean ||W_soft xq - W xf||^2 (+ the same regularizer); returns q int8."""
    n = xf.shape[1]
    xf, xq = xf.astype(np.float64), xq.astype(np.float64)
    gqq, gfq = xq @ xq.T / n, xf @ xq.T / n
    s = s.reshape(-1, 1)
    ws = w / s
    floor = np.floor(ws)
    v = ar.initial_v(ws - floor)
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    wg = w @ gfq
    for step in range(st.iterations):
        sig = ar._sigmoid(v)
        h_raw = sig * (ar.ZETA - ar.GAMMA) + ar.GAMMA
        h = np.clip(h_raw, 0.0, 1.0)
        grid = floor + h
        w_soft = np.clip(grid, ar.QMIN, ar.QMAX) * s
        grad_h = 2.0 * (w_soft @ gqq - wg) * s * ((grid >= ar.QMIN) & (grid <= ar.QMAX))
        beta = ar.beta_at(step, st)
        if beta is not None:
            u = 2.0 * h - 1.0
            grad_h = grad_h - st.reg_weight * 2.0 * beta * np.sign(u) * np.abs(u) ** (beta - 1.0)
        grad_v = grad_h * (ar.ZETA - ar.GAMMA) * sig * (1.0 - sig) * ((h_raw > 0.0) & (h_raw < 1.0))
        m1 = 0.9 * m1 + 0.1 * grad_v
        m2 = 0.999 * m2 + 0.001 * grad_v * grad_v
        t = step + 1
        v = v - st.lr * (m1 / (1.0 - 0.9**t)) / (np.sqrt(m2 / (1.0 - 0.999**t)) + 1e-8)
    return np.clip(floor + (v >= 0.0), ar.QMIN, ar.QMAX).astype(np.int8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--every", type=int, default=4)
    args = ap.parse_args(argv)
    st = ar.AdaRoundSettings(iterations=args.iterations, samples=args.samples).check()
    loaded = load_checkpoint(DEFAULT_MODEL_DIR)
    t0 = time.perf_counter()
    calls: list = []
    obs = calibrate_observers(loaded, read_prompts(None), 20, "minmax", record=calls)
    ranges = ranges_from_observers(obs, "minmax", "w8a8")
    near = quantize_model(loaded, "w8a8", ranges)
    unet_calls = [c for c in calls if c.kind == "unet"]
    fit, held = unet_calls[::args.every], unet_calls[2::8]
    print(f"calibration {time.perf_counter() - t0:.0f} s; {len(fit)} fitting calls, {len(held)} held-out", flush=True)
    t0 = time.perf_counter()
    per_call = -(-args.samples // len(fit))
    params = loaded.params["unet"]
    fs = ar.ColumnSampler(params, "unet", per_call, st.seed)
    qs = ar.ColumnSampler(params, "unet", per_call, st.seed)
    graph = model_graphs(loaded.config)["unet"]
    fnet, qnet = UNet(graph, fs), UNet(graph, QSampler(near.networks["unet"], qs))
    for c in fit:
        fnet(*c.args, **c.kwargs)
        qnet(*c.args, **c.kwargs)
    xf, xq = fs.inputs(), qs.inputs()
    print(f"sampling {time.perf_counter() - t0:.0f} s; {len(xf)} layers", flush=True)
    codes = {"float": {}, "quantized": {}}
    t0 = time.perf_counter()
    for name in sorted(xf):
        w = params[f"{name}.weight"]
        key = f"unet.{name}.weight"
        _, enc = quantize_weight(w, axis=0, name=key)
        s = np.broadcast_to(enc.scale, (w.shape[0],)).astype(np.float64)
        w2 = w.reshape(w.shape[0], -1).astype(np.float64)
        a, b = xf[name]["x"], xq[name]["x"]
        codes["float"][key] = (ar.adaround_layer(w2, s, a, st).q.reshape(w.shape), enc)
        codes["quantized"][key] = (asym_adaround(w2, s, a, b, st).reshape(w.shape), enc)
    print(f"AdaRound (both variants) {time.perf_counter() - t0:.0f} s", flush=True)
    held_calls = held
    res = {"nearest": replay_sqnr(held_calls, build_integer_networks(near))["unet"]}
    for label, c in codes.items():
        p, e = ar.adarounded_params(params, c, "unet")
        ld = type(loaded)(**{**loaded.__dict__, "params": {**loaded.params, "unet": p}})
        qm = quantize_model(ld, "w8a8", ranges, {"unet": e})
        res[label] = replay_sqnr(held_calls, build_integer_networks(qm))["unet"]
    print("w8a8 UNet SQNR on held-out calibration calls: " +
          ", ".join(f"{k} {v:.2f} dB" for k, v in res.items()), flush=True)


if __name__ == "__main__":
    main()
