"""Test helpers for the network fixtures written by tools/make_fixtures.py.

Reads a network folder (config.json + *.safetensors) with safetensors directly,
independent of the checkpoint loader, and the reference .npz files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

FIXTURES = Path(__file__).parent / "fixtures"
REFS = FIXTURES / "net_refs"

# Every network output must satisfy max|ours - ref| <= REL_TOL * max|ref|: float32
# rounding (eps 1.2e-7) accumulated through a few dozen ops, with headroom.
REL_TOL = 1e-5


def load_net(folder: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config dict, parameter name -> array) of one network folder; CLIP keys get `text_model.`."""
    folder = FIXTURES / folder
    cfg = json.loads((folder / "config.json").read_text())
    params: dict[str, np.ndarray] = {}
    for f in sorted(folder.glob("*.safetensors")):
        params.update(load_file(str(f)))
    if cfg.get("model_type") == "clip_text_model":
        params = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in params.items()}
    return cfg, params


def load_ref(name: str) -> dict[str, np.ndarray]:
    with np.load(REFS / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max|ours - ref| / max|ref| (shapes must match)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert ours.dtype == np.float32, ours.dtype
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


def shapes_of(params: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in params.items()}
