"""The thread count of the BLAS NumPy calls, set for one block of work (OpenBLAS, through ctypes).

The float interpreter's attention (tinysd/interp/float.py) runs its query tiles on tinysd's own threads
(`run_ranges`), one small sgemm after another on each. OpenBLAS would start its own threads inside every
one of those calls: two tiles at a time with two OpenBLAS threads each was measured 1.5x slower on 2 cores
than with one OpenBLAS thread each. `blas_threads(1)` pins the count for the block and restores it after.

The library is the OpenBLAS that NumPy loaded (found in /proc/self/maps, as threadpoolctl does; NumPy's
wheels name its functions `scipy_openblas_*64_`). Where there is none (another BLAS, another platform),
`blas_threads` yields False and changes nothing; callers then keep to one thread of their own.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import threading

# (get, set) function names, as OpenBLAS builds spell them
_NAMES = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)

_lock = threading.RLock()


@functools.lru_cache(maxsize=None)
def _openblas():
    """(get, set) of the loaded OpenBLAS's thread count, or None."""
    import numpy  # noqa: F401  (loads NumPy's BLAS)

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _NAMES:
            if hasattr(lib, get_name) and hasattr(lib, set_name):
                get, set_ = getattr(lib, get_name), getattr(lib, set_name)
                get.argtypes, get.restype = [], ctypes.c_int
                set_.argtypes, set_.restype = [ctypes.c_int], None
                return get, set_
    return None


@contextlib.contextmanager
def blas_threads(n: int):
    """Within the block, NumPy's BLAS uses `n` threads; yields whether the count could be set."""
    lib = _openblas()
    if lib is None:
        yield False
        return
    get, set_ = lib
    with _lock:
        before = get()
        set_(n)
        try:
            yield True
        finally:
            set_(before)
