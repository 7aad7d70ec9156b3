"""Per-network wall time and peak memory of a run (`tinysd generate -v`, `tinysd quantize -v`).

`NetworkStats.measure(name)` times a block and records the peak resident set size (RSS) reached inside
it. On Linux the kernel's peak (VmHWM of /proc/self/status) is reset when the block starts (writing "5"
to /proc/self/clear_refs), so each network's peak is its own: the weights resident then plus that
network's working memory. Where the reset is not allowed the peak is the process's peak so far
(`resource.getrusage` ru_maxrss), marked "so far" in the summary.
"""
from __future__ import annotations

import contextlib
import resource
import time
from dataclasses import dataclass

MiB = 1 << 20


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """The process's peak RSS in bytes since start or since the last `reset_peak_rss`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


@dataclass
class Entry:
    """One network's totals: calls, seconds, the largest peak RSS (bytes) seen in its calls; exact: per-call peaks."""

    calls: int = 0
    seconds: float = 0.0
    peak: int = 0
    exact: bool = True


class NetworkStats:
    """{name: Entry} of timed blocks, in the order first seen."""

    def __init__(self):
        self.entries: dict[str, Entry] = {}

    @contextlib.contextmanager
    def measure(self, name: str):
        """Time the block and record the peak RSS inside it under `name` (calls accumulate)."""
        exact = reset_peak_rss()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            e = self.entries.setdefault(name, Entry())
            e.calls += 1
            e.seconds += dt
            e.peak = max(e.peak, peak_rss_bytes())
            e.exact = e.exact and exact

    def lines(self) -> list[str]:
        """One line per network: `unet: 20 calls, 412.3 s (20.6 s/call), peak RSS 1234 MiB`."""
        out = []
        for name, e in self.entries.items():
            per = f" ({e.seconds / e.calls:.2f} s/call)" if e.calls > 1 else ""
            so_far = "" if e.exact else " (process peak so far)"
            out.append(f"{name}: {e.calls} call{'s' if e.calls != 1 else ''}, {e.seconds:.2f} s{per}, "
                       f"peak RSS {e.peak / MiB:.0f} MiB{so_far}")
        return out


class _NoStats:
    """Stands in for NetworkStats when nothing is measured."""

    @contextlib.contextmanager
    def measure(self, name: str):
        yield


NO_STATS = _NoStats()


def measure(stats, name: str):
    """`stats.measure(name)`, or a block that records nothing when stats is None."""
    return (NO_STATS if stats is None else stats).measure(name)
