"""tinysd.offload's glibc settings: large freed blocks reused (`reuse_freed_blocks`), the free heap returned
(`free_memory`).

Each case runs in its own interpreter: mallopt changes the whole process.
"""
import json
import os
import subprocess
import sys

import pytest

from tinysd import offload

pytestmark = pytest.mark.skipif(offload._MALLOPT is None, reason="glibc's mallopt is not in this C library")

# Allocates, writes and frees a 64 MiB NumPy block once, then 8 more times, counting the page faults of each part.
PROBE = """
import json, resource, sys
import numpy as np
from tinysd import offload
set_ = offload.reuse_freed_blocks() if sys.argv[1] == "reuse" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def block():
    a = np.empty(64 << 20, np.uint8)
    a[:] = 1
    del a
f0 = faults(); block(); f1 = faults()
for _ in range(8):
    block()
f2 = faults()
print(json.dumps({"set": set_, "first": f1 - f0, "again": f2 - f1}))
"""


def _probe(mode: str, env=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in offload.MALLOC_ENV} | (env or {})
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def test_freed_large_blocks_are_reused_not_faulted_in_again():
    plain, reused = _probe("plain"), _probe("reuse")
    assert reused["set"] is True
    # glibc's default: each 64 MiB block is mapped afresh, and faulted in again every time
    assert plain["again"] >= 4 * plain["first"] > 0
    # with the thresholds raised, the later blocks are the first one's pages: (almost) no new faults
    assert reused["first"] > 0 and reused["again"] < reused["first"] / 4


TRIM_PROBE = """
import json
import numpy as np
from tinysd import offload
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
offload.reuse_freed_blocks()
blocks = [np.ones(64 << 20, np.uint8) for _ in range(4)]
del blocks
kept = rss()
offload.free_memory()
print(json.dumps({"kept": kept, "after": rss()}))
"""


def test_free_memory_still_returns_the_kept_blocks():
    """With the thresholds raised, freed blocks stay resident (for reuse) until `free_memory` (a network dropped
    by the low-memory pipeline) hands them back."""
    env = {k: v for k, v in os.environ.items() if k not in offload.MALLOC_ENV}
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True, env=env)
    r = json.loads(out.stdout)
    assert r["kept"] - r["after"] >= 200 << 20  # of the 256 MiB freed


def test_user_settings_in_the_environment_are_left_alone():
    assert _probe("reuse", {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)})["set"] is False
