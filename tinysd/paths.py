"""Where shipped data lives: the tokenizer vocabulary and the default model.

The repository keeps them in the top-level `weights/` folder; a plain install (wheel or sdist)
carries the same folder as package data, `tinysd/weights/` (see setup.py). The installed copy is
used when present, else the checkout's; `TINYSD_WEIGHTS` overrides both.
"""
import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _weights_dir() -> Path:
    if os.environ.get("TINYSD_WEIGHTS"):
        return Path(os.environ["TINYSD_WEIGHTS"])
    installed = _PACKAGE / "weights"
    return installed if installed.is_dir() else _PACKAGE.parent / "weights"


WEIGHTS_DIR = _weights_dir()
TOKENIZER_DIR = WEIGHTS_DIR / "tokenizer"
DEFAULT_MODEL_DIR = WEIGHTS_DIR / "tinysd-shapes-lcm"  # 4 LCM steps (its model_index.json says so)
SHAPES_20_STEP_DIR = WEIGHTS_DIR / "tinysd-shapes"  # the 20-step model it was distilled from
