"""Op-name bookkeeping shared by the interpreters: every op name occurs once per network call.

A network call is everything between two `ops.output` calls (every graph ends
with exactly one `output`). A repeated name within one call is a graph naming
bug: two ops would share an activation encoding, a golden file entry and an
error message. Interpreters that name tensors (calibrate, prepare, integer)
check it with `OpNames.claim`.

A call that was aborted by an exception never reaches `output`; the next call
then starts by claiming the same first name again, which is taken as the start
of a new call (so only the first name of a call is not checked for repeats).
"""
from __future__ import annotations

#: Ops of the ops interface that compute a named output tensor.
COMPUTING_OPS = (
    "embedding", "linear", "conv2d", "group_norm", "layer_norm", "silu", "gelu", "quick_gelu",
    "softmax", "matmul", "add", "mul", "scale", "concat", "upsample_nearest2x",
)
# position of the `name` argument of each computing op (after self), per tinysd/nn/ops.py
_NAME_POS = {
    "embedding": 1, "linear": 1, "conv2d": 1, "group_norm": 1, "layer_norm": 1, "silu": 1, "gelu": 1,
    "quick_gelu": 1, "softmax": 1, "matmul": 2, "add": 2, "mul": 2, "scale": 2, "concat": 2,
    "upsample_nearest2x": 1,
}


def positional_name(op: str, args: tuple) -> str:
    """The op name among the positional arguments `args` (after self) of computing op `op`."""
    return args[_NAME_POS[op]]


class OpNames:
    """The op names seen in the current network call of one network."""

    def __init__(self, network: str):
        self.network = network
        self._seen: set[str] = set()
        self._first: str | None = None

    def claim(self, name: str) -> str:
        """Register op `name`; RuntimeError if it already occurred in this call. Returns `{network}.{name}.out`."""
        self._claim(name)
        return f"{self.network}.{name}.out"

    def claim_input(self, name: str) -> str:
        """Register network input `name` (same rule); returns its tensor name `{network}.{name}`."""
        self._claim(f"<input>{name}")
        return f"{self.network}.{name}"

    def _claim(self, key: str) -> None:
        if not isinstance(key, str) or not key or key == "<input>":
            raise RuntimeError(f"{self.network}: op name must be a non-empty string, got {key!r}")
        if key == self._first:  # the previous call was aborted: a new call starts
            self.end_call()
        if key in self._seen:
            raise RuntimeError(f"{self.network}: op name {key!r} occurs twice in one network call (graph naming bug)")
        if not self._seen:
            self._first = key
        self._seen.add(key)

    def end_call(self) -> None:
        """Forget the names: the next op starts a new network call."""
        self._seen.clear()
        self._first = None
