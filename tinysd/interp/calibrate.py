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
"""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from ..quant.observers import MinMaxObserver, PercentileObserver
from .float import FloatInterpreter
from .names import OpNames

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile")
DEFAULT_PERCENTILE = 99.99

#: Ops of the ops interface that compute a named output tensor.
COMPUTING_OPS = (
    "embedding", "linear", "conv2d", "group_norm", "layer_norm", "silu", "gelu", "quick_gelu",
    "softmax", "matmul", "add", "mul", "scale", "concat", "upsample_nearest2x",
)


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
                 percentile: float = DEFAULT_PERCENTILE):
        super().__init__(params, network)
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
        name = kwargs["name"] if "name" in kwargs else _positional_name(op, args)
        tensor = self._names.claim(name)
        y = base(self, *args, **kwargs)
        self.observe(tensor, y)
        return y

    method.__name__ = op
    method.__doc__ = f"FloatInterpreter.{op}, then record its output as `{{network}}.{{name}}.out`."
    return method


# position of the `name` argument of each computing op (after self), per tinysd/nn/ops.py
_NAME_POS = {
    "embedding": 1, "linear": 1, "conv2d": 1, "group_norm": 1, "layer_norm": 1, "silu": 1, "gelu": 1,
    "quick_gelu": 1, "softmax": 1, "matmul": 2, "add": 2, "mul": 2, "scale": 2, "concat": 2,
    "upsample_nearest2x": 1,
}


def _positional_name(op: str, args: tuple) -> str:
    return args[_NAME_POS[op]]


for _op in COMPUTING_OPS:
    setattr(CalibratingInterpreter, _op, _recording(_op))
del _op
