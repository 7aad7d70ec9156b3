"""tinysd: a from-scratch Stable Diffusion 1.x engine with a bit-exact integer mode."""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    # Lazy so that `import tinysd.fixedpoint` does not pull in the whole pipeline.
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
