"""Calibration prompt files: UTF-8, one prompt per line, blank lines and `#` comments ignored.

The default set ships as package data (`tinysd/data/calibration_prompts.txt`);
`tinysd quantize --calibration-prompts FILE` reads a file in the same format.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from tinysd.errors import TinySDError
from tinysd.fileio import read_text

DEFAULT_PROMPTS_RESOURCE = "data/calibration_prompts.txt"


def parse_prompts(text: str) -> list[str]:
    """The prompts in `text`: each line stripped; empty lines and lines starting with '#' dropped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def read_prompts(path: str | Path | None = None, what: str = "calibration prompt file") -> list[str]:
    """The prompts of a prompt file (None: the shipped calibration set); `what` names it in errors.

    TinySDError naming the file when it is missing, unreadable, not UTF-8 or
    holds no prompt.
    """
    if path is None:
        where = f"tinysd/{DEFAULT_PROMPTS_RESOURCE}"
        try:
            text = resources.files("tinysd").joinpath(DEFAULT_PROMPTS_RESOURCE).read_text(encoding="utf-8")
        except OSError as e:  # a broken install
            raise TinySDError(f"{where}: cannot read the default calibration prompts ({e})") from None
    else:
        where = str(path)
        try:
            text = read_text(path)
        except FileNotFoundError:
            raise TinySDError(f"{path}: {what} not found") from None
        except UnicodeDecodeError as e:
            raise TinySDError(f"{path}: {what} is not UTF-8 ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise TinySDError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    prompts = parse_prompts(text)
    if not prompts:
        raise TinySDError(f"{where}: no prompts (one prompt per line; '#' lines and blank lines are ignored)")
    return prompts
