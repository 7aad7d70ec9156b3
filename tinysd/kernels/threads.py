"""Run a Numba kernel over disjoint ranges of rows on a few Python threads.

The kernels of norm.py, softmax.py and tables.py are serial `@njit(nogil=True)` loops over a range
[r0, r1) of independent rows (or elements); `run_ranges` splits [0, n) into one contiguous range per
thread and runs them concurrently. Every range writes only its own rows of the output, so the result
is the same integers as one serial call. (Numba's `parallel=True` would do the same but triples the
kernels' compile time, which every fresh process pays when the cache is cold.)
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numba

#: Below this much work (rows x elements per row) the kernel runs on the calling thread only.
MIN_PARALLEL_WORK = 1 << 15

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _executor(n: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < n:
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tinysd-kernel")
        return _pool


def thread_count() -> int:
    """Threads `run_ranges` uses: Numba's (NUMBA_NUM_THREADS, numba.set_num_threads)."""
    return numba.get_num_threads()


def run_ranges(kernel, n: int, work_per_item: int, *args) -> None:
    """kernel(r0, r1, *args) for consecutive ranges covering [0, n), one per thread (`thread_count()`), when
    n * work_per_item >= MIN_PARALLEL_WORK; otherwise kernel(0, n, *args) on the calling thread.

    `kernel` must release the GIL for most of its time (a `nogil=True` kernel, or a function whose work is
    in such kernels and NumPy calls that release it) and write only items r0..r1-1 of its outputs.
    """
    threads = min(thread_count(), n)
    if threads <= 1 or n * max(1, work_per_item) < MIN_PARALLEL_WORK:
        kernel(0, n, *args)
        return
    bounds = [n * i // threads for i in range(threads + 1)]
    pool = _executor(threads - 1)
    futures = [pool.submit(kernel, bounds[i], bounds[i + 1], *args) for i in range(1, threads)]
    kernel(bounds[0], bounds[1], *args)  # the first range on this thread
    for f in futures:
        f.result()
