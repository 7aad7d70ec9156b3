"""Networks read from their files when first needed and dropped after use (`Pipeline(low_memory=True)`).

A generation needs its three networks one after another: the text encoder once, at the start; the UNet
for every sampler step; the VAE decoder at the end. A low-memory pipeline holds a `LazyNetwork` for each:
the network's weights are read (from the checkpoint or quantized folder, one network only) on its first
call, and `release()` drops them, so at any time only the weights of the network running are resident
(SD 1.5 w8a8: the UNet's 0.82 GB int8 weights, not the text encoder's and VAE's beside them). The network
built is the one an eager pipeline builds from the same files, so the outputs are identical.

The process's glibc heap settings live here too: `free_memory` hands the free heap back to the OS when a
network is dropped, and `reuse_freed_blocks` (called by the `tinysd` command) keeps large freed blocks
for the next op instead.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import time
from typing import Callable

log = logging.getLogger(__name__)


class LazyNetwork:
    """A network (TextEncoder / UNet / VAE object) built by `load()` on first use, dropped by `release()`.

    Calls and attribute reads go to the network, loading it if it is not loaded.
    """

    def __init__(self, name: str, load: Callable[[], object]):
        self._name = name
        self._load = load
        self._net = None

    @property
    def loaded(self) -> bool:
        return self._net is not None

    def network(self):
        """The network, read from its files if it is not loaded."""
        if self._net is None:
            t0 = time.perf_counter()
            self._net = self._load()
            log.info("low memory: loaded %s in %.1f s", self._name, time.perf_counter() - t0)
        return self._net

    def release(self) -> None:
        """Drop the network and its weights (read again on the next use)."""
        if self._net is not None:
            self._net = None
            free_memory()
            log.info("low memory: released %s", self._name)

    def __call__(self, *args, **kwargs):
        return self.network()(*args, **kwargs)

    def __getattr__(self, attr):  # only for names not found on the LazyNetwork itself
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self.network(), attr)


def release(net) -> None:
    """`net.release()` for a LazyNetwork; nothing for a network held for good."""
    if isinstance(net, LazyNetwork):
        net.release()


def _glibc(function: str) -> Callable | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), function) if name else None
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM, _MALLOPT = _glibc("malloc_trim"), _glibc("mallopt")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
#: blocks below this come from the heap and are reused when freed (glibc's default threshold: 128 KiB,
#: raised by itself up to 32 MiB)
REUSED_BLOCK_BYTES = 1 << 30
#: environment variables with which a user sets glibc's thresholds himself (then left as they are)
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def reuse_freed_blocks() -> bool:
    """Let glibc reuse freed blocks of up to REUSED_BLOCK_BYTES instead of returning them to the OS at once.

    By default glibc maps every block of 32 MiB or more on its own and unmaps it when freed, so the next such
    block is fresh pages: each page is faulted in and zeroed by the kernel again. An integer UNet step at
    512 x 512 allocates several such blocks per attention tile (scores, probabilities, operands: 64 MiB
    each), about 8 GB of fresh pages a step. With both thresholds raised they come from the heap and are
    reused; `free_memory` (a network dropped) still returns the free heap to the OS. Returns whether the
    thresholds were set (not on a non-glibc platform, nor when the user set them in the environment).
    The `tinysd` command calls it once at start; library users may.
    """
    if _MALLOPT is None or any(v in os.environ for v in MALLOC_ENV):
        return False
    return bool(_MALLOPT(M_MMAP_THRESHOLD, REUSED_BLOCK_BYTES)) and bool(_MALLOPT(M_TRIM_THRESHOLD,
                                                                                REUSED_BLOCK_BYTES))


def free_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc `malloc_trim(0)`, where present)."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)
