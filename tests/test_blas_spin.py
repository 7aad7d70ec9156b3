"""Importing tinysd before NumPy stops OpenBLAS's worker threads from spinning after each call (they take a
core from the Numba kernel that follows an sgemm); a user's own OPENBLAS_THREAD_TIMEOUT is kept."""
import os
import subprocess
import sys

import pytest

# CPU time of the whole process (every thread) while the main thread sleeps right after three sgemms: only
# spinning BLAS workers use any
PROBE = """
import os, sys, time
if sys.argv[1] == "tinysd first":
    import tinysd  # noqa: F401
import numpy as np
a = np.ones((1024, 1024), np.float32)
for _ in range(3):
    a @ a
t0 = time.process_time()
time.sleep(0.5)
print(os.environ.get("OPENBLAS_THREAD_TIMEOUT"), time.process_time() - t0)
"""


def _probe(order, **env):
    run_env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    run_env.update(OPENBLAS_NUM_THREADS="2", **env)
    out = subprocess.run([sys.executable, "-c", PROBE, order], env=run_env, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts worker threads only with 2+ CPUs")
def test_openblas_workers_sleep_after_a_call_when_tinysd_is_imported_first():
    setting, spun = _probe("numpy first")
    assert setting == "None" and spun > 0.01  # OpenBLAS's default: the worker spins (measured 0.1 s)
    setting, spun = _probe("tinysd first")
    assert setting == "4" and spun < 0.005  # measured 0.0002 s
    setting, spun = _probe("tinysd first", OPENBLAS_THREAD_TIMEOUT="28")
    assert setting == "28" and spun > 0.01
