"""A model folder's own generation defaults: sampler, steps and guidance scale.

A step-distilled model (e.g. the LCM-distilled `weights/tinysd-shapes-lcm`) is made to be
sampled one way, so its folder says so in `model_index.json` (a key diffusers ignores):

    "tinysd_defaults": {"sampler": "lcm", "steps": 4, "guidance_scale": 5.0}

`Pipeline.generate` and `tinysd generate` use these values for the options the caller leaves
unset; without the key the global defaults apply (euler, 20 steps, guidance 7.5). Each entry is
optional.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import TinySDError

KEY = "tinysd_defaults"


@dataclass(frozen=True)
class GenerationDefaults:
    """Sampler, step count and guidance scale used when the caller gives none."""

    sampler: str = "euler"
    steps: int = 20
    guidance_scale: float = 7.5

    @classmethod
    def from_index(cls, index: dict, source: str) -> "GenerationDefaults":
        """The defaults of a parsed model_index.json (`source` names it in errors); the global ones without KEY."""
        from .schedulers import SAMPLERS

        d = index.get(KEY)
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise TinySDError(f"{source}: {KEY} must be a JSON object")
        unknown = sorted(set(d) - {"sampler", "steps", "guidance_scale"})
        if unknown:
            raise TinySDError(f"{source}: {KEY}: unknown key {unknown[0]!r} (known: sampler, steps, guidance_scale)")
        out = cls()
        sampler = d.get("sampler", out.sampler)
        if sampler not in SAMPLERS:
            raise TinySDError(f"{source}: {KEY}.sampler={sampler!r} is not one of {', '.join(SAMPLERS)}")
        steps = d.get("steps", out.steps)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
            raise TinySDError(f"{source}: {KEY}.steps={steps!r}: must be an integer in [1, 1000]")
        g = d.get("guidance_scale", out.guidance_scale)
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or abs(g) > 100:
            raise TinySDError(f"{source}: {KEY}.guidance_scale={g!r}: must be a finite number in [-100, 100]")
        return cls(sampler=sampler, steps=steps, guidance_scale=float(g))

    def resolve(self, sampler=None, steps=None, guidance_scale=None) -> tuple:
        """(sampler, steps, guidance_scale): each given value, else this default."""
        return (self.sampler if sampler is None else sampler, self.steps if steps is None else steps,
                self.guidance_scale if guidance_scale is None else guidance_scale)
