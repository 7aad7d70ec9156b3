"""tinysd.offload's glibc settings: large freed blocks reused (`reuse_freed_blocks`), the free heap returned.

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


def test_user_settings_in_the_environment_are_left_alone():
    assert _probe("reuse", {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)})["set"] is False
