"""Benchmark of the exact integer kernels against float32 NumPy (a script, not a test).

    python3 tools/bench_fixedpoint.py [--repeat 5] [--shapes 4096x320x320,...]
    python3 tools/bench_fixedpoint.py --conv-only [--repeat 3]

For each SD 1.5 GEMM shape M x K x N it times float32 `x @ w` and the exact integer linear
(int8 weights x uint8 / uint16 activations) with prepared float32 weights: the raw int64
accumulator (`linear_accumulator`) and the full op with the requantize epilogue (`linear`),
for every method of `plan_linear`: "u8" (byte quads, vpdpbusd, with AVX-512 VNNI or AVX-VNNI), "i16" (int16 SIMD,
vpdpwssd), "split" (float32 BLAS; hi/lo byte planes for uint16) and, for uint16, "f64" (float64 BLAS). The method each dtype uses by
default is marked with *. Ratios are exact-time / float32-time (best of --repeat runs, all
variants of a shape timed in alternation). Then the W8A8 attention products (uint8 x uint8
`matmul`, requantized, one query tile of 512 rows of SD 1.5's 64x64 level: scores and context)
for the "i16" and "split" plans against float32 `a @ b`; requantize throughput (NumPy API and
the Numba kernel) and, if `tinysd.kernels.softmax` exists, softmax throughput. `--conv-only`: the
3x3 convolutions of SD 1.5's four UNet levels (batch 2, padding 1) with the default plans, in GMAC/s,
against float32 `a @ w` of the same GEMM shape (its im2col not counted).
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))

import tinysd  # noqa: E402,F401  (before NumPy, as in the tinysd command: its OpenBLAS setting)
import numpy as np  # noqa: E402

from tinysd.fixedpoint import quantize_multiplier, requantize  # noqa: E402
from tinysd.kernels import (  # noqa: E402
    conv2d,
    gemm,
    linear,
    linear_accumulator,
    matmul,
    prepare_weight,
    requantize_tensor,
)
from tinysd.kernels.gemm_i16 import LANES  # noqa: E402

SHAPES = [(4096, 320, 320), (4096, 1280, 320), (1024, 640, 5760), (64, 1280, 11520)]
#: (batch x heads, M, K, N) of the attention products at SD 1.5's 64x64 level, one 512-row query tile
ATTENTION = {"scores": (16, 512, 40, 4096), "context": (16, 512, 4096, 40)}


def best_time(fn, repeat):
    fn()  # warm up (JIT, caches)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def best_times_interleaved(fns, repeat):
    """Best-of-`repeat` time of each function, measured in alternation so that load spikes on a
    shared machine hit all of them alike."""
    for fn in fns.values():
        fn()  # warm up
    best = {key: float("inf") for key in fns}
    for _ in range(repeat):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    return best


COLUMNS = [  # (key, activation bits, method, full op?)
    ("a8_split_acc", 8, "split", False), ("a8_split_lin", 8, "split", True),
    ("a8_i16_acc", 8, "i16", False), ("a8_i16_lin", 8, "i16", True),
    *([("a8_u8_acc", 8, "u8", False), ("a8_u8_lin", 8, "u8", True)] if gemm.gemm_i16.QUADS else []),
    ("a16_i16_acc", 16, "i16", False), ("a16_i16_lin", 16, "i16", True),
    ("a16_split_acc", 16, "split", False), ("a16_split_lin", 16, "split", True),
    ("a16_f64_lin", 16, "f64", True),
]


def _label(bits, method, lin):
    star = "*" if method == (gemm.A8_METHOD if bits == 8 else gemm.A16_METHOD) else ""
    return f"A{bits} {method}{star} {'lin' if lin else 'acc'}"


def bench_gemm(shapes, repeat, rng):
    labels = [_label(bits, method, lin) for _, bits, method, lin in COLUMNS]
    print(f"{'shape MxKxN':>18} {'f32 ms':>8} | " + " ".join(f"{h:>14}" for h in labels) + "   (ratios to f32)")
    for m, k, n in shapes:
        x8 = rng.integers(0, 256, (m, k)).astype(np.uint8)
        x16 = rng.integers(0, 65536, (m, k)).astype(np.uint16)
        w = rng.integers(-127, 128, (n, k)).astype(np.int8)
        pw = prepare_weight(w)
        bias = rng.integers(-1000, 1000, n).astype(np.int32)
        mult, shift = quantize_multiplier(np.full(n, 1e-6))
        xf = x8.astype(np.float32)
        wf = np.ascontiguousarray(w.T, dtype=np.float32)  # (K, N)
        fns = {"f32": lambda: xf @ wf}
        for key, bits, method, lin in COLUMNS:
            x, qmax, acc_shift = (x8, 255, 0) if bits == 8 else (x16, 65535, 6)
            if lin:
                fns[key] = (lambda x=x, q=qmax, a=acc_shift, meth=method:
                            linear(x, 3, pw, bias, mult, shift, 5, 0, q, a, method=meth))
            else:
                fns[key] = lambda x=x, meth=method: linear_accumulator(x, 3, pw, bias, method=meth)
        t = best_times_interleaved(fns, repeat)
        t_f32 = t.pop("f32")
        print(f"{m:>6}x{k:>5}x{n:>5} {t_f32 * 1e3:8.1f} | "
              + " ".join(f"{t[key] / t_f32:14.2f}" for key, *_ in COLUMNS))


def bench_attention(repeat, rng, rows=None):
    """W8A8 (uint8 x uint8: "i16", "split") and W8A16 (uint16 x uint16: "i16", "f64") attention
    products against float32 `a @ b`, timed in alternation; rows: query-tile rows (default 512)."""
    for bits, dt, methods in ((8, np.uint8, ("i16", "split")), (16, np.uint16, ("i16", "f64"))):
        default = gemm.A8_METHOD if bits == 8 or gemm.A8_METHOD == "i16" else "f64"  # method=None
        print(f"{f'W8A{bits} attention':>34} {'f32 ms':>8} | "
              + " ".join(f"{meth + ('*' if meth == default else ''):>8}" for meth in methods)
              + "   (ratios to f32; ms)")
        for name, (bt, m, k, n) in ATTENTION.items():
            m = rows or m
            a = rng.integers(0, 2**bits, (bt, m, k)).astype(dt)
            b = rng.integers(0, 2**bits, (bt, k, n)).astype(dt)
            af, bf = a.astype(np.float32), b.astype(np.float32)
            fns = {"f32": lambda: af @ bf}
            for method in methods:
                fns[method] = lambda meth=method: matmul(a, 3, b, 7, 2**30, -12, 5, 0, 2**bits - 1, 0, method=meth)
            t = best_times_interleaved(fns, repeat)
            print(f"{name:>8} ({bt}, {m:>4}, {k:>4}) x ({k:>4}, {n:>4}) {t['f32'] * 1e3:8.1f} | "
                  + " ".join(f"{t[meth] / t['f32']:8.2f}" for meth in methods) + "   "
                  + " ".join(f"{t[meth] * 1e3:.1f}" for meth in methods))


def bench_requantize(repeat, rng):
    size = 4_000_000
    acc = rng.integers(-2**24, 2**24, size).astype(np.int32)
    mult, shift = quantize_multiplier(1e-5)
    t = best_time(lambda: requantize(acc, mult, shift, 7, 0, 255), repeat)
    print(f"requantize (NumPy API, int32 -> uint8 range): {size / t / 1e6:8.1f} M elements/s")
    x = rng.integers(0, 65536, size).astype(np.uint16)
    mult, shift = quantize_multiplier(0.7)
    t = best_time(lambda: requantize_tensor(x, 100, mult, shift, 7, 0, 65535), repeat)
    print(f"requantize_tensor (Numba, uint16 -> uint16):   {size / t / 1e6:8.1f} M elements/s")


def bench_softmax(repeat, rng):
    try:
        from tinysd.kernels.softmax import make_exp_table, softmax
    except ImportError:
        print("softmax: tinysd.kernels.softmax not present; skipped")
        return
    for bits, dt in ((8, np.uint8), (16, np.uint16)):
        x = rng.integers(0, 2**bits, (8, 1024, 1024)).astype(dt)  # (B*heads, T, T) scores
        table = make_exp_table(8.0 / 2**bits, bits)
        t = best_time(lambda: softmax(x, table), repeat)
        print(f"softmax (uint{bits} scores, rows of 1024):      {x.size / t / 1e6:8.1f} M elements/s")


CONV_LEVELS = [(320, 64), (640, 32), (1280, 16), (1280, 8)]  # (channels in = out, latent side)


def bench_conv(repeat, rng):
    print(f"3x3 conv2d, batch 2, padding 1 (GMAC/s; {LANES}-lane SIMD, uint8 plan {gemm.A8_METHOD}, uint16 plan "
          f"{gemm.A16_METHOD}; float32: a @ w of the GEMM shape)")
    for c, side in CONV_LEVELS:
        w = rng.integers(-127, 128, (c, c, 3, 3)).astype(np.int8)
        pw, bias = prepare_weight(w), rng.integers(-1000, 1000, c).astype(np.int32)
        gmac = 2 * side * side * c * 9 * c / 1e9
        a, wf = rng.standard_normal((2 * side * side, 9 * c), np.float32), rng.standard_normal((9 * c, c), np.float32)
        fns = {}
        for bits in (8, 16):
            x = rng.integers(0, 2**bits, (2, c, side, side)).astype(np.uint8 if bits == 8 else np.uint16)
            fns[bits] = lambda x=x, q=2**bits - 1: conv2d(x, q // 3, pw, bias, 2**30, -12, q // 2, 0, q, padding=1)
        t = best_times_interleaved(fns, repeat)
        t["f32"] = best_time(lambda: a @ wf, repeat)  # apart, in case NumPy's BLAS threads spin after a call
        print(f"  {c:5d} ch at {side:2d}x{side:<2d}: uint8 {gmac / t[8]:6.0f}  uint16 {gmac / t[16]:6.0f}  "
              f"float32 {gmac / t['f32']:6.0f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--shapes", default=",".join(f"{m}x{k}x{n}" for m, k, n in SHAPES))
    ap.add_argument("--skip-gemm", action="store_true")
    ap.add_argument("--attention-only", action="store_true", help="only the attention products")
    ap.add_argument("--attention-rows", type=int, default=None, help="query-tile rows (default 512)")
    ap.add_argument("--conv-only", action="store_true", help="only the 3x3 convolutions")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    import numba

    print(f"numpy {np.__version__}, numba {numba.__version__}, threads {numba.get_num_threads()}, "
          f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    if args.conv_only:
        bench_conv(args.repeat, rng)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        return
    if args.attention_only:
        bench_attention(args.repeat, rng, args.attention_rows)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
        return
    if not args.skip_gemm:
        bench_gemm(shapes, args.repeat, rng)
        bench_attention(args.repeat, rng, args.attention_rows)
    bench_requantize(args.repeat, rng)
    bench_softmax(args.repeat, rng)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
