"""The calibrating interpreter: float32 execution that records the range of every tensor.

`CalibratingInterpreter` is the float interpreter (`interp/float.py`, its
arithmetic unchanged: this class only adds observation) plus one observer per
named tensor:

* every computing op's output, `{network}.{op name}.out`
  (`unet.down_blocks.0.resnets.1.conv1.out`);
* every network input, `{network}.{input name}` (`unet.sample`,
  `unet.time_proj`, `unet.encoder_hidden_states`, `vae.latent`, `vae.image`).

Layout ops (`reshape`, `transpose`, `split`) and `output` record nothing: they
keep their input's encoding. Observers accumulate over every call, so running
the pipeline over many prompts and steps gives ranges over all of them.
`ranges()` returns `{tensor name: (min, max)}` (float64), the input of
`tinysd.quant.prepare.encodings_from_ranges`.

Each op name must occur once per network call (`OpNames`); a repeat raises
RuntimeError, catching graph naming bugs before they corrupt encodings.

Parts. `parts` ({op name: parts}, `tinysd.interp.parts`) names ops an exported device graph
computes as parts: their intermediate values are computed in float64 from the op's input
(the op's own output is unchanged) and recorded as `{network}.{op}.{part}.out`, so that a
part an encodings file lacks can be calibrated (`_observe_parts`).
"""
from __future__ import annotations

import logging
import math
from typing import Mapping

import numpy as np

from ..quant.observers import MinMaxObserver, PercentileObserver
from .float import FloatInterpreter, erf, normalized_group, normalized_layer
from .parts import SQRT2, part_tensor
from .names import COMPUTING_OPS, OpNames, positional_name

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile")
DEFAULT_PERCENTILE = 99.99



def make_observer(method: str, name: str, percentile: float = DEFAULT_PERCENTILE):
    """A fresh observer for `method` ("minmax" or "percentile")."""
    if method == "minmax":
        return MinMaxObserver(name)
    if method == "percentile":
        return PercentileObserver(percentile, name=name)
    raise ValueError(f"method: {method!r} is not one of {METHODS}")


class CalibratingInterpreter(FloatInterpreter):
    """FloatInterpreter that records each named tensor's values with a range observer.

    params, network: as FloatInterpreter. method: "minmax" (exact min/max seen,
    AIMET "tf") or "percentile" (`percentile`-th percentiles, AIMET percentile).
    """

    def __init__(self, params: Mapping[str, np.ndarray], network: str, method: str = "minmax",
                 percentile: float = DEFAULT_PERCENTILE, parts: Mapping[str, tuple] | None = None):
        super().__init__(params, network)
        self.parts = dict(parts or {})
        make_observer(method, "check", percentile)  # validates method and percentile
        self.method = method
        self.percentile = percentile
        self.observers: dict[str, object] = {}
        self.calls = 0  # completed network calls
        self._names = OpNames(network)

    def observe(self, tensor_name: str, x: np.ndarray) -> None:
        """Add the values of `x` to the observer of `tensor_name`."""
        obs = self.observers.get(tensor_name)
        if obs is None:
            obs = self.observers[tensor_name] = make_observer(self.method, tensor_name, self.percentile)
        obs.update(x)

    def ranges(self) -> dict[str, tuple[float, float]]:
        """{tensor name: (min, max)} over everything observed so far, in first-seen order."""
        return {k: tuple(float(v) for v in obs.range()) for k, obs in self.observers.items()}

    def _observe_parts(self, op: str, name: str, args: tuple, kwargs: dict, y: np.ndarray) -> None:
        """Record the parts of op `name` (PARTS formulas, float64) computed from its inputs."""
        t = f"{self.network}.{name}.out"
        parts = self.parts[name]
        seen = lambda part, v: self.observe(part_tensor(t, part), v) if part in parts else None  # noqa: E731
        seen("requant", y)
        x = np.asarray(args[0], np.float64)
        seen("input", x)
        if op in ("silu", "quick_gelu"):
            u = x * 1.702 if op == "quick_gelu" else x
            seen("scaled", u)
            seen("sigmoid", 0.5 * (1.0 + np.tanh(0.5 * u)))  # = 1 / (1 + exp(-u)), without overflow
        elif op == "gelu":
            d = x / SQRT2
            e = erf(d)
            seen("div", d)
            seen("erf", e)
            seen("add", e + 1.0)
            seen("mul", x * (e + 1.0))
        elif op in ("group_norm", "layer_norm"):
            if op == "group_norm":
                groups = kwargs.get("groups", args[2] if len(args) > 2 else None)
                eps = kwargs.get("eps", args[3] if len(args) > 3 else None)
                n = normalized_group(x, groups, eps)
                gamma = self.param(f"{name}.weight").astype(np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))
            else:
                n = normalized_layer(x, kwargs.get("eps", args[2] if len(args) > 2 else None))
                gamma = self.param(f"{name}.weight").astype(np.float64)
            seen("norm", n)
            seen("mul", n * gamma)
        elif op == "matmul":
            b = np.asarray(args[1], np.float64)
            alpha = float(kwargs.get("alpha", args[3] if len(args) > 3 else 1.0))
            c = math.sqrt(alpha) if "b_scaled" in parts else alpha
            seen("a_scaled", x * c)
            seen("b_scaled", b * c)
            if "product" in parts:
                seen("product", np.matmul(x, b))

    # --- boundary ------------------------------------------------------------
    def input(self, x, name: str) -> np.ndarray:
        y = super().input(x, name)
        self.observe(self._names.claim_input(name), y)
        return y

    def output(self, x, name: str) -> np.ndarray:
        self._names.end_call()
        self.calls += 1
        return super().output(x, name)


def _recording(op: str):
    base = getattr(FloatInterpreter, op)

    def method(self, *args, **kwargs):
        name = kwargs["name"] if "name" in kwargs else positional_name(op, args)
        tensor = self._names.claim(name)
        y = base(self, *args, **kwargs)
        self.observe(tensor, y)
        if name in self.parts:
            self._observe_parts(op, name, args, kwargs, y)
        return y

    method.__name__ = op
    method.__doc__ = f"FloatInterpreter.{op}, then record its output as `{{network}}.{{name}}.out`."
    return method


for _op in COMPUTING_OPS:
    setattr(CalibratingInterpreter, _op, _recording(_op))
del _op
