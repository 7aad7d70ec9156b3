"""Compiling the integer kernels in child processes, so that a first run peaks no higher than later ones.

Numba compiles a kernel the first time it is called with new argument types and caches the machine
code (`cache=True`); later processes load it from the cache in milliseconds. But a compile leaves
LLVM's memory in the process for good: the 20 kernels of an SD 1.5 w8a8 generate added about 120 MiB
to its UNet call's peak (1266 against 1146 MiB with the cache warm; malloc_trim gave back 40 MiB of it).

So before a pipeline reads integer networks, `ensure_compiled` looks for a stamp that says this
machine's Numba cache holds every kernel signature of those precisions; without one it compiles
them in child processes (`python -m tinysd.kernels.precompile PART/PARTS KEY ...`, one per core),
whose memory ends with them, and the networks then load the machine code from the cache. The
signatures are data: `signatures.json`, {key: {kernel: [[argument type, ...], ...]}}, with key
"<precision> <GEMM methods>" (`run_key`), written by tools/make_kernel_signatures.py from quantized
folders. A signature it lacks is compiled in the process as before: more memory, same integers.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import IO

from numba import types
from numba.core.registry import CPUDispatcher

log = logging.getLogger(__name__)

SIGNATURES_FILE = Path(__file__).with_name("signatures.json")
STAMP_PREFIX = "tinysd-compiled-"
CHILD_TIMEOUT_S = 1800  # compiling every kernel of one key takes 20-60 s on 2 cores
MAX_CHILDREN = 4  # compiles run in parallel, one signature list slice per child


def run_key(precision: str) -> str:
    """The signatures.json key of one network precision ("w8a8", "w8a16") with this CPU's GEMM methods
    (`gemm.A8_METHOD` / `gemm.A16_METHOD`: "w8a8 u8/i16" on AVX-512 VNNI or AVX-VNNI)."""
    from . import gemm

    return f"{precision} {gemm.A8_METHOD}/{gemm.A16_METHOD}"


# ------------------------------------------------------------------ argument types as text
def type_text(t) -> str:
    """`uint8[2d,C]`, `readonly int8[3d,C]`, `int64`: one Numba argument type as signatures.json writes it."""
    if isinstance(t, types.Array):
        return f"{'readonly ' if not t.mutable else ''}{t.dtype}[{t.ndim}d,{t.layout}]"
    if isinstance(t, (types.Integer, types.Float, types.Boolean)):
        return str(t)
    raise ValueError(f"no text form for Numba type {t!r}")


def parse_type(text: str):
    """The Numba type of `type_text`'s form."""
    readonly = text.startswith("readonly ")
    body = text.removeprefix("readonly ")
    if "[" not in body:
        return getattr(types, body)
    dtype, dims = body[:-1].split("[")
    ndim, layout = dims.split(",")
    return types.Array(getattr(types, dtype), int(ndim.removesuffix("d")), layout, readonly=readonly)


# ------------------------------------------------------------------ the kernels
def dispatcher(name: str) -> CPUDispatcher:
    """The Numba dispatcher `module:name` (e.g. "tinysd.kernels.gemm:_gemm_i32")."""
    module, attr = name.split(":")
    obj = getattr(importlib.import_module(module), attr)
    if not isinstance(obj, CPUDispatcher):
        raise TypeError(f"{name} is not a Numba function")
    return obj


def dispatchers_in_use() -> dict[str, CPUDispatcher]:
    """{module:name: dispatcher} of the module-level Numba functions of every imported tinysd module."""
    found = {}
    for mname, module in list(sys.modules.items()):
        if mname == "tinysd" or mname.startswith("tinysd."):
            for attr, obj in list(vars(module).items()):
                if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == mname:
                    found[f"{mname}:{attr}"] = obj
    return found


def used_signatures() -> dict[str, list[list[str]]]:
    """{kernel: [[argument type, ...], ...]} of every signature this process compiled or loaded."""
    return {name: sorted([type_text(t) for t in sig] for sig in d.signatures)
            for name, d in sorted(dispatchers_in_use().items()) if d.signatures}


def kernel_counts() -> tuple[int, int]:
    """(signatures compiled in this process, signatures loaded from Numba's cache)."""
    compiled = loaded = 0
    for d in dispatchers_in_use().values():
        compiled += sum(d.stats.cache_misses.values())
        loaded += sum(d.stats.cache_hits.values())
    return compiled, loaded


@lru_cache(maxsize=1)
def _signature_table() -> dict:
    if not SIGNATURES_FILE.exists():  # only while tools/make_kernel_signatures.py writes the first one
        return {}
    return json.loads(SIGNATURES_FILE.read_text())


def signatures(key: str) -> dict[str, list[list[str]]]:
    """{kernel: [[argument type, ...], ...]} that runs of `key` use ({} for a key not in the file)."""
    return _signature_table().get(key, {})


def work_items(keys) -> list[tuple[str, tuple[str, ...]]]:
    """The distinct (kernel, signature) pairs of `keys`, in a fixed order."""
    return sorted({(name, tuple(sig)) for key in keys for name, sigs in signatures(key).items() for sig in sigs})


def compile_part(keys, part: int, parts: int) -> None:
    """Compile (or load from the cache) every `parts`-th signature of `keys`, from the `part`-th."""
    for name, sig in work_items(keys)[part::parts]:
        dispatcher(name).compile(tuple(parse_type(t) for t in sig))


# ------------------------------------------------------------------ the stamp and the child
def _stamp(key: str) -> Path | None:
    """The file that says Numba's cache holds `key`'s signatures, or None when the cache cannot be found.

    Its name hashes what Numba's own cache index depends on: Numba's version, the target CPU and its
    features, and the size and modification time of every kernel module's source (Numba drops a
    module's entries when its source changes); and the signature list itself."""
    sigs = signatures(key)
    if not sigs:
        return None
    first = dispatcher(next(iter(sigs)))
    folder = first.stats.cache_path
    if not folder:
        return None
    import numba

    h = hashlib.sha256()
    h.update(repr((numba.__version__, first.targetctx.codegen().magic_tuple())).encode())
    h.update(json.dumps(sigs, sort_keys=True).encode())
    for module in sorted({name.split(":")[0] for name in sigs}):
        st = os.stat(importlib.import_module(module).__file__)
        h.update(repr((module, st.st_size, st.st_mtime_ns)).encode())
    return Path(folder) / f"{STAMP_PREFIX}{key.replace(' ', '-').replace('/', '-')}-{h.hexdigest()[:16]}"


def ensure_compiled(precisions) -> None:
    """Make sure Numba's cache holds the kernels of `precisions` ("w8a8", "w8a16"), compiling them in child
    processes (one per core, at most MAX_CHILDREN) when it does not (see the module docstring). Never raises
    but for the caller's own interruption: a failed child is one warning, and the kernels then compile in this
    process as they are first called."""
    if os.environ.get("NUMBA_DISABLE_JIT", "0") != "0":
        return
    stamps = {k: s for k in sorted({run_key(p) for p in precisions}) if (s := _stamp(k)) is not None and not s.exists()}
    if not stamps:
        return
    import numba

    n = len(work_items(stamps))
    parts = max(1, min(MAX_CHILDREN, numba.config.NUMBA_NUM_THREADS, n))
    log.info("compiling the integer kernels (%s) once for this machine: Numba's cache does not have them yet",
             ", ".join(stamps))
    t0 = time.perf_counter()
    root = str(Path(__file__).resolve().parents[2])  # the children import this tinysd, wherever it came from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    children: list[tuple[subprocess.Popen, IO[str]]] = []
    failures = []
    try:
        for part in range(parts):
            # stderr to an unlinked file, not a pipe: a child that writes much while its sibling is waited on
            # cannot block on a full pipe
            err = tempfile.TemporaryFile("w+")
            try:
                child = subprocess.Popen([sys.executable, "-m", __name__, f"{part}/{parts}", *stamps], env=env,
                                         stdout=subprocess.DEVNULL, stderr=err)
            except BaseException:
                err.close()
                raise
            children.append((child, err))
        for child, err in children:
            try:
                child.wait(timeout=max(1.0, t0 + CHILD_TIMEOUT_S - time.perf_counter()))
            except subprocess.TimeoutExpired:
                failures.append(f"timed out after {CHILD_TIMEOUT_S} s")
                continue
            if child.returncode != 0:
                err.seek(0)
                failures.append((err.read().strip().splitlines() or [f"exit code {child.returncode}"])[-1])
    except OSError as e:
        failures.append(str(e))
    finally:
        for child, err in children:
            if child.poll() is None:
                child.kill()
                child.wait()
            err.close()
    if failures:
        log.warning("compiling the kernels in a child process failed (%s); they compile as they are used", failures[0])
        return
    for stamp in stamps.values():
        try:
            stamp.write_text(f"{stamp.name}\n")
        except OSError as e:  # the kernels are cached all the same; the next run's children only load them
            log.warning("%s: cannot write (%s)", stamp, e.strerror or e)
    log.info("compiled %d kernel signatures in %d child process%s in %.1f s", n, parts, "es" if parts > 1 else "",
             time.perf_counter() - t0)


if __name__ == "__main__":  # python -m tinysd.kernels.precompile PART/PARTS KEY ...
    _part, _parts = map(int, sys.argv[1].split("/"))
    compile_part(sys.argv[2:], _part, _parts)
