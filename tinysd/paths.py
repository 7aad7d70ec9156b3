"""Where shipped data lives: the tokenizer vocabulary and the default model."""
import os
from pathlib import Path

# weights/ sits beside the package in the source tree (installs are editable: see README).
WEIGHTS_DIR = Path(os.environ.get("TINYSD_WEIGHTS", Path(__file__).resolve().parent.parent / "weights"))
TOKENIZER_DIR = WEIGHTS_DIR / "tokenizer"
DEFAULT_MODEL_DIR = WEIGHTS_DIR / "tinysd-shapes"
