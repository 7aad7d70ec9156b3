"""Where one UNet step spends its time: per op kind, for tinysd fp32 / w8a16 / w8a8 and diffusers fp32.

    python3 tools/profile_unet.py [--size 32] [--batch 2] [--calls 2] [--only fp32,w8a16,w8a8,diffusers]

A dev-only script (may use torch). The UNet is SD 1.5's config with the random weights and inputs of
tools/bench_unet.py (same seed); the integer UNets are quantized as bench_unet.py does (min-max ranges from one
float step on the same input). Every variant runs in its own process; each makes `--calls` UNet calls and the
table uses the fastest call (the first includes one-time work: Numba cache loading, float32 parameter copies).

* tinysd: the interpreter is wrapped in `TimedOps`, a proxy that times every op call (the interpreter and the
  graph are unchanged: the proxy only forwards, so outputs are those of an unwrapped run). Op kinds: conv2d by
  kernel size, linear, the two attention products (`*.scores`, `*.context`), softmax, the norms, the
  activations, add / mul / scale / concat / upsample, layout ops (reshape, transpose, split: views, their copies
  are paid by the op that reads them), and "graph (outside ops)" = step time minus the sum of the ops. The float
  engine runs every attention as one fused `attention` call, the integer engine when the scores exceed its
  query-tile size (64 x 64 latents): "attention (float: fused; integer: query tiles)".
  The integer interpreter is also run with a timed kernel backend (`kernels=`), which splits the op times into
  the kernels (`linear`, `conv2d`, `matmul`, `softmax`, `requantize_tensor`, ...) plus `prepare_weight` (the
  per-call int16 / float32 copy of the int8 weight); "interpreter (outside kernels)" is the rest.
* diffusers: torch.profiler (CPU), self time of each aten op, grouped into the same kinds.

Prints one markdown table per view (seconds per step and share of the step).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))

import tinysd  # noqa: E402,F401  (before NumPy, as in the tinysd command: its OpenBLAS setting)
import numpy as np  # noqa: E402

import bench_unet as B  # noqa: E402

ALL = ("fp32", "w8a16", "w8a8", "diffusers")
OP_ORDER = ("conv2d 3x3", "conv2d 1x1", "linear", "attention scores matmul", "softmax", "attention context matmul",
            "attention (float: fused; integer: query tiles)", "group norm", "layer norm", "silu", "gelu", "add", "mul", "scale", "concat",
            "upsample", "layout (reshape/transpose/split)", "input/output", "graph (outside ops)")


def op_kind(op: str, args: tuple, kwargs: dict, inner) -> str:
    """The profile bucket of one ops-interface call."""
    if op == "conv2d":
        name = args[1] if len(args) > 1 else kwargs["name"]
        arrays = getattr(getattr(inner, "qnet", None), "arrays", None)
        w = arrays[f"{name}.weight_q"] if arrays is not None else inner.params[f"{name}.weight"]
        return f"conv2d {w.shape[2]}x{w.shape[3]}"
    if op == "matmul":
        name = args[2] if len(args) > 2 else kwargs["name"]
        return "attention scores matmul" if name.endswith(".scores") else "attention context matmul"
    if op in ("reshape", "transpose", "split"):
        return "layout (reshape/transpose/split)"
    if op in ("input", "output"):
        return "input/output"
    return {"group_norm": "group norm", "layer_norm": "layer norm", "upsample_nearest2x": "upsample",
            "attention": "attention (float: fused; integer: query tiles)"}.get(op, op)


class TimedOps:
    """Forwards every ops-interface call to `inner` and adds its wall time to `times[op_kind(...)]`.

    Attributes that are not methods (e.g. `attention_tile_elements`) are read from `inner`; `attention` is a
    class attribute so that `multihead_attention` finds it (it looks on the type).
    """

    def __init__(self, inner, times: dict):
        self._inner, self._times = inner, times

    def __getattr__(self, attr):
        v = getattr(self._inner, attr)
        if attr.startswith("_") or not callable(v):
            return v

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = v(*args, **kwargs)
            self._times[op_kind(attr, args, kwargs, self._inner)] += time.perf_counter() - t0
            return out

        return timed

    def attention(self, *args, **kwargs):
        return self.__getattr__("attention")(*args, **kwargs)


def timed_backend(backend, times: dict) -> SimpleNamespace:
    """A copy of a kernel backend whose every function adds its wall time to `times[function name]`."""

    def wrap(name, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            times[name] += time.perf_counter() - t0
            return out

        return timed

    return SimpleNamespace(**{k: wrap(k, f) for k, f in vars(backend).items()})


def run_tinysd(args) -> dict:
    from tinysd.models import UNet
    from tinysd.nn.unet import UNet2DConditionModel
    from tinysd.offload import reuse_freed_blocks

    reuse_freed_blocks()  # as the `tinysd` command does at start

    cfg = B.unet_config()
    sample, context = B.inputs(cfg, args.size, args.batch)
    graph = UNet2DConditionModel(cfg)
    op_times: dict = collections.defaultdict(float)
    k_times: dict = collections.defaultdict(float)
    if args.variant == "fp32":
        from tinysd.interp.float import FloatInterpreter

        interp = FloatInterpreter(B.random_params(cfg), "unet", conv_winograd=True)  # as generation runs it
    else:
        import tinysd.kernels as K
        from tinysd.interp import integer as I

        prep = K.prepare_weight

        def timed_prepare(w):
            t0 = time.perf_counter()
            out = prep(w)
            k_times["prepare_weight"] += time.perf_counter() - t0
            return out

        K.prepare_weight = timed_prepare  # this child process only
        interp = I.IntegerInterpreter(B.load_qnet(args.work, args.variant),
                                      kernels=timed_backend(I.CPU_KERNELS, k_times))
    unet = UNet(graph, TimedOps(interp, op_times))
    best = None
    for _ in range(args.calls):
        op_times.clear()
        k_times.clear()
        t0 = time.perf_counter()
        out = unet(sample, B.T, context)
        step = time.perf_counter() - t0
        if best is None or step < best["step_s"]:
            best = {"step_s": step, "ops": dict(op_times), "kernels": dict(k_times)}
    best["ops"]["graph (outside ops)"] = best["step_s"] - sum(best["ops"].values())
    if best["kernels"]:
        best["kernels"]["interpreter (outside kernels)"] = best["step_s"] - sum(best["kernels"].values())
    np.save(Path(args.work) / f"{args.variant}.npy", np.asarray(out, dtype=np.float32))
    return best


def torch_kind(op: str) -> str:
    """The profile bucket of an aten op (self time)."""
    o = op.removeprefix("aten::")
    if "conv" in o:
        return "conv2d (all)"
    if o in ("addmm", "mm", "linear", "matmul"):
        return "linear"
    if o in ("bmm", "baddbmm"):
        return "attention matmuls (bmm)"
    if "scaled_dot_product" in o or "flash_attention" in o:
        return "attention (fused sdpa)"
    if "softmax" in o:
        return "softmax"
    if "group_norm" in o:
        return "group norm"
    if "layer_norm" in o:
        return "layer norm"
    if o in ("silu", "silu_"):
        return "silu"
    if o == "gelu":
        return "gelu"
    if o in ("add", "add_"):
        return "add"
    if o in ("mul", "mul_", "div", "div_"):
        return "mul"
    if o in ("cat",):
        return "concat"
    if "upsample" in o:
        return "upsample"
    if o in ("copy_", "contiguous", "clone", "empty", "empty_like", "view", "reshape", "transpose", "permute",
             "_reshape_alias", "as_strided", "chunk", "split", "t", "_unsafe_view", "expand", "slice", "select"):
        return "layout (copies, views, allocs)"
    return "other aten: " + o


def run_diffusers(args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    cfg = B.unet_config()
    sample, context = B.inputs(cfg, args.size, args.batch)
    bargs = SimpleNamespace(variant="diffusers", size=args.size, batch=args.batch, calls=1, work=args.work)
    fn_holder = {}

    def capture(fn, calls):  # take bench_unet's model construction, run it here
        fn_holder["fn"] = fn
        return [0.0], fn()

    orig = B.timed_calls
    B.timed_calls = capture
    try:
        B.run_variant(bargs)  # builds the model, loads the weights, makes one (warm-up) call, saves the output
    finally:
        B.timed_calls = orig
    fn = fn_holder["fn"]
    best = None
    for _ in range(args.calls):
        t0 = time.perf_counter()
        fn()
        plain = time.perf_counter() - t0
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        times: dict = collections.defaultdict(float)
        for e in prof.key_averages():
            times[torch_kind(e.key)] += e.self_cpu_time_total / 1e6
        if best is None or plain < best["step_s"]:
            best = {"step_s": plain, "profiled_step_s": sum(times.values()), "ops": dict(times)}
    return best


def child(variant, args, work) -> dict | None:
    cmd = [sys.executable, __file__, "--child", variant, "--work", str(work), "--size", str(args.size),
           "--batch", str(args.batch), "--calls", str(args.calls), "--threads", str(args.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"{variant}: failed (exit {p.returncode}): {p.stderr.strip()[-2000:]}", flush=True)
        return None
    res = json.loads(p.stdout.strip().splitlines()[-1])
    print(f"{variant}: step {res['step_s']:.2f} s", flush=True)
    return res


def table(results: dict, key: str, order=()) -> str:
    variants = [v for v, r in results.items() if r and r.get(key)]
    kinds = [k for k in order if any(k in results[v][key] for v in variants)]
    kinds += sorted({k for v in variants for k in results[v][key]} - set(kinds),
                    key=lambda k: -max(results[v][key].get(k, 0.0) for v in variants))
    lines = ["| op kind | " + " | ".join(f"{v} s (share)" for v in variants) + " |",
             "| --- |" + " --- |" * len(variants)]
    for k in kinds:
        cells = []
        for v in variants:
            t = results[v][key].get(k)
            cells.append("" if t is None else f"{t:.2f} ({100 * t / results[v]['step_s']:.0f} %)")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| **step** | " + " | ".join(f"**{results[v]['step_s']:.2f}**" for v in variants) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=32, help="latent height = width (default 32; 64 = 512x512 images)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--calls", type=int, default=2, help="UNet calls per variant; the fastest is reported")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for diffusers (default 2)")
    ap.add_argument("--only", default=",".join(ALL))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.variant = args.child
        if args.child == "prepare":
            res = B.run_prepare(args)
            res["step_s"] = res["calibration_step_s"]
        elif args.child == "diffusers":
            res = run_diffusers(args)
        else:
            res = run_tinysd(args)
        print(json.dumps(res))
        return
    wanted = [v for v in args.only.split(",") if v]
    for v in wanted:
        if v not in ALL:
            ap.error(f"--only: unknown variant {v!r}")
    print(f"SD 1.5 UNet, random weights, latent {args.size}x{args.size}, batch {args.batch}; load "
          f"{os.getloadavg()}", flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="tinysd-profile-") as work:
        if any(v.startswith("w8") for v in wanted):
            child("prepare", args, work)
        for v in wanted:
            results[v] = child(v, args, work)
        outputs = {v: np.load(Path(work) / f"{v}.npy") for v in wanted if (Path(work) / f"{v}.npy").is_file()}
    print(f"load after: {os.getloadavg()}")
    print("\nops (tinysd: ops-interface calls; diffusers: aten self time)\n")
    print(table(results, "ops", OP_ORDER))
    if any(r and r.get("kernels") for r in results.values()):
        print("\ninteger kernels\n")
        print(table({v: r for v, r in results.items() if r and r.get("kernels")}, "kernels"))
    print("\noutputs: " + "; ".join(f"{k} {v}" for k, v in B.accuracy(outputs).items()))
    if "diffusers" in results and results["diffusers"]:
        d = results["diffusers"]["step_s"]
        print("ratios to diffusers: " + ", ".join(f"{v} {r['step_s'] / d:.2f}" for v, r in results.items() if r))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
