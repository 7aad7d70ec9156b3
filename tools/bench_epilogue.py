"""Micro benchmark of the int32 requantize epilogue of the "i16" GEMM plan (a script, not a test).

    python3 tools/bench_epilogue.py [--repeat 7] [--threads 2] [--cpu]

Times, on SD 1.5 W8A8 shapes, the "i16" plan with the int32 epilogue (`gemm.I32_EPILOGUE` on:
K-blocks summed in an int32 tile, requantized in int32 lanes by `gemm_i16.requant_tile`) against
the int64 epilogue (off), alternating the two in one run, best of --repeat; checks that both give
the same integers. Shapes: linear M x K x N (uint8 activations, prepared int8 weights), the
attention scores matmul (uint8 x uint8) and a 3x3 conv 320 -> 320 at 64x64. Prints the load
average beside the numbers (the machine may be shared); --cpu times CPU seconds of the process
(`time.process_time`, less sensitive to other jobs; meaningful with --threads 1) instead of wall time.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))

import numba  # noqa: E402
import numpy as np  # noqa: E402

from tinysd.fixedpoint import quantize_multiplier  # noqa: E402
from tinysd.kernels import conv2d, gemm, linear, matmul, prepare_weight  # noqa: E402


def _cases(rng):
    """name -> (function of no arguments, number of outputs)."""
    cases = {}
    for m, k, n in ((8192, 320, 320), (8192, 320, 1280), (8192, 1280, 320)):
        x = rng.integers(0, 256, (m, k)).astype(np.uint8)
        w = prepare_weight(rng.integers(-128, 128, (n, k)).astype(np.int8))
        b = rng.integers(-(10**5), 10**5, n).astype(np.int32)
        mult, sh = quantize_multiplier(np.full(n, 3.0 / np.sqrt(k) / 128 / 40))
        cases[f"linear {m}x{k}x{n}"] = ((lambda x=x, w=w, b=b, mult=mult, sh=sh:
                                          linear(x, 120, w, b, mult, sh, 128, 0, 255)), m * n)
    a = rng.integers(0, 256, (16, 256, 40)).astype(np.uint8)
    bt = rng.integers(0, 256, (16, 40, 4096)).astype(np.uint8)
    ms = quantize_multiplier(1.0 / 2000)
    cases["scores (16,256,40)x(16,40,4096)"] = ((lambda: matmul(a, 128, bt, 128, *ms, 0, 0, 255)),
                                                16 * 256 * 4096)
    x = rng.integers(0, 256, (1, 320, 64, 64)).astype(np.uint8)
    w = prepare_weight(rng.integers(-128, 128, (320, 320, 3, 3)).astype(np.int8))
    mc = quantize_multiplier(np.full(320, 3.0 / np.sqrt(2880) / 128 / 40))
    cases["conv3x3 320->320 64x64"] = ((lambda: conv2d(x, 120, w, None, *mc, 128, 0, 255, 1, 1)), 320 * 4096)
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu", action="store_true", help="CPU time (process_time) instead of wall time")
    args = ap.parse_args()
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    rng = np.random.default_rng(0)
    clock = time.process_time if args.cpu else time.perf_counter
    print(f"{'CPU' if args.cpu else 'wall'} time, threads {numba.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"{'case':34s} {'int64 ms':>9s} {'int32 ms':>9s} {'new/old':>8s} {'ns/out old':>10s} {'ns/out new':>10s}")
    for name, (fn, n_out) in _cases(rng).items():
        outs = {}
        best = {True: float("inf"), False: float("inf")}
        for flag in (False, True):  # warm up (JIT) and compare
            gemm.I32_EPILOGUE["enabled"] = flag
            outs[flag] = fn()
        assert np.array_equal(outs[True], outs[False]), name
        for _ in range(args.repeat):
            for flag in (False, True):
                gemm.I32_EPILOGUE["enabled"] = flag
                t0 = clock()
                fn()
                best[flag] = min(best[flag], clock() - t0)
        gemm.I32_EPILOGUE["enabled"] = True
        old, new = best[False], best[True]
        print(f"{name:34s} {old * 1e3:9.1f} {new * 1e3:9.1f} {new / old:8.2f} {old * 1e9 / n_out:10.2f} "
              f"{new * 1e9 / n_out:10.2f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
