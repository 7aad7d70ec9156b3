"""Shared builders for the golden tests: synthetic integer cases and conv cases from direct kernel calls."""
from __future__ import annotations

import numpy as np

from tinysd import kernels
from tinysd.kernels import reference as R
from tinysd.fixedpoint import accumulator_shift, quantize_multiplier
from tinysd.golden import GoldenCase, GoldenTensor, GoldenWriter
from tinysd.interp.record import OpRecord, TapTensor


def synthetic_cases(seed: int = 0) -> list[GoldenCase]:
    """Two cases covering every dtype, an image, a conv weight with a per-channel encoding and int32/int64 extremes."""
    rng = np.random.default_rng(seed)
    img8 = rng.integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    img16 = rng.integers(0, 65536, (1, 2, 3, 3), dtype=np.uint16)
    w = rng.integers(-128, 128, (4, 3, 3, 2), dtype=np.int8)
    bias = np.array([-(2**31), 2**31 - 1, 0, 7], np.int32)
    ids = np.array([[49406, 320, 49407], [0, 1, 2**40]], np.int64)
    i16 = rng.integers(-(2**15), 2**15, (5,), dtype=np.int16)
    a = GoldenCase("p000/net/step000", "network", "unet", [
        GoldenTensor("unet.sample", "input", img8, kind="image", scale=[0.0625], offset=[-128], bitwidth=8),
        GoldenTensor("unet.ids", "input", ids),
        GoldenTensor("unet.out", "output", img16, kind="image", scale=[0.001], offset=[-30000], bitwidth=16),
    ], step=0, attrs={"zero_points": {"sample": 128}})
    b = GoldenCase("p000/net/step000/layers/conv", "layer", "unet", [
        GoldenTensor("unet.conv.x", "input", img8[:1], kind="image", scale=[0.0625], offset=[-128], bitwidth=8, short="x"),
        GoldenTensor("unet.conv.weight_q", "param", w, kind="weight", scale=[0.01, 0.02, 0.03, 0.04], offset=[0] * 4,
                     axis=0, bitwidth=8, short="weight_q"),
        GoldenTensor("unet.conv.bias_q", "param", bias, short="bias_q"),
        GoldenTensor("unet.conv.table", "param", i16, short="table"),
        GoldenTensor("unet.conv.out", "output", rng.integers(0, 256, (1, 4, 2, 4), dtype=np.uint8), kind="image",
                     scale=[0.5], offset=[-3], bitwidth=8, short="out"),
    ], op="conv2d", layer="conv", step=0, attrs={"stride": [1, 1], "padding": [0, 0, 0, 0], "x_zp": 128, "name": "c"})
    return [a, b]


def write_synthetic(path, storage="npy", layout="nchw", seed=0, **kw):
    with GoldenWriter(path, storage, layout, model={"name": "synthetic"}, settings={"seed": seed}, **kw) as w:
        for c in synthetic_cases(seed):
            w.write_case(c)
    return path


def conv_record(rng, *, bits=8, n=2, c=5, h=11, w=9, o=7, k=3, stride=1, padding=1, bias=True,
                extra_shift=0) -> OpRecord:
    """An OpRecord of one conv2d computed with tinysd.kernels.conv2d (the fast kernel) on random integers."""
    dt = np.uint8 if bits == 8 else np.uint16
    qmax = 2**bits - 1
    x = rng.integers(0, qmax + 1, (n, c, h, w), dtype=dt)
    x_zp = int(rng.integers(0, qmax + 1))
    wq = rng.integers(-127, 128, (o, c, k, k), dtype=np.int8)
    bq = rng.integers(-(2**20), 2**20, (o,), dtype=np.int32) if bias else None
    bound = kernels.weight_bound(wq, bq, x.dtype)
    acc_shift = np.asarray(accumulator_shift(bound), np.int32) + np.int32(extra_shift)
    # the exact accumulators (identity requantization: multiplier 2**30, shift 1) set a scale that spreads
    # the outputs over about half of [0, qmax]
    acc = R.conv2d_ref(x, x_zp, wq, bq, 2**30, 1, 0, -(2**31), 2**31 - 1, stride=stride, padding=padding)
    real = rng.uniform(0.5, 1.0, o) * qmax / (4 * float(np.std(acc.astype(np.float64))) + 1)
    mult, shift = quantize_multiplier(real * 2.0 ** acc_shift)
    out_zp = qmax // 2 + int(rng.integers(-(qmax // 8), qmax // 8))
    out = kernels.conv2d(x, x_zp, wq, bq, mult, shift, out_zp, 0, qmax, stride=stride, padding=padding,
                         acc_shift=acc_shift)
    params = {"weight_q": wq, "multiplier": mult, "shift": shift, "acc_shift": acc_shift}
    if bq is not None:
        params["bias_q"] = bq
    return OpRecord(op="conv2d", name="conv", tensor="synth.conv.out", inputs={"x": TapTensor(x, x_zp, bits)},
                    output=TapTensor(out, out_zp, bits), attrs={"stride": stride, "padding": padding}, params=params)
