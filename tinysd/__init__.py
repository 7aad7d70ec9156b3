"""tinysd: a from-scratch Stable Diffusion 1.x engine with a bit-exact integer mode."""
import logging
import os

# OpenBLAS's worker threads spin for 2**28 cycles (about 0.1 s) after each BLAS call before they sleep. On a
# few cores that spinning takes a core from the Numba kernel that follows an sgemm in the float network
# (measured on 2 cores: an integer conv right after an sgemm at 371 GMAC/s, 614 after a pause, 670 with
# this setting). 2**4 cycles: they sleep at once. OpenBLAS reads it when it loads (with NumPy), so it holds
# where tinysd is imported first, as by the `tinysd` command; a user's own setting is kept
# (docs/performance.md section 1).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    # Lazy so that `import tinysd.fixedpoint` does not pull in the whole pipeline.
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
