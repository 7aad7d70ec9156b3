"""The ops interface every network graph is written against.

A graph (`tinysd/nn/clip.py`, `unet.py`, `vae.py`) is a plain function of an
interpreter `ops`, a config and its inputs. It never does arithmetic on
tensors itself: every computation goes through one of the methods below, so
that the same graph runs as float32 NumPy (`interp/float.py`), as a
range-recording float pass (`interp/calibrate.py`), as integer arithmetic
(`interp/integer.py`) or under a recorder that taps tensors (`interp/record.py`).

Tensors are whatever the interpreter uses (an `np.ndarray` for the float
interpreter, a quantized tensor for the integer one); graph code may only read
`x.shape` and pass tensors back into `ops`.

Names. Parameterised ops take the module path of their parameters, exactly as
diffusers / transformers name them (`down_blocks.0.resnets.1.conv1` reads
`down_blocks.0.resnets.1.conv1.weight` and `.bias`). Every op that computes
takes a `name` that is unique within one network call; the interpreter names
the op's output tensor `{network}.{name}.out` (for example
`unet.down_blocks.0.resnets.1.conv1.out`). Encodings, golden files and error
messages all use those names. Layout ops (`reshape`, `transpose`, `split`)
compute nothing, keep their input's encoding and take no name.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

Tensor = Any  # interpreter-specific


class Ops(Protocol):
    # --- network boundary -------------------------------------------------
    def input(self, x: np.ndarray, name: str) -> Tensor:
        """A host float array entering the network (quantized by integer interpreters)."""

    def output(self, x: Tensor, name: str) -> np.ndarray:
        """A network output returned to the host as float32 (dequantized by integer interpreters)."""

    # --- parameterised ops -------------------------------------------------
    def embedding(self, ids: np.ndarray, name: str) -> Tensor:
        """Rows of `{name}.weight` (V, D) gathered by integer ids (...,) -> (..., D)."""

    def linear(self, x: Tensor, name: str) -> Tensor:
        """x (..., IN) @ `{name}.weight`.T (OUT, IN) + `{name}.bias` (OUT,) if present -> (..., OUT)."""

    def conv2d(self, x: Tensor, name: str, stride: int = 1, padding: int | tuple[int, int, int, int] = 0) -> Tensor:
        """NCHW convolution with `{name}.weight` (OUT, IN, KH, KW) and optional bias.

        `padding` is one int for all sides or (top, bottom, left, right); padded
        values are real zeros.
        """

    def group_norm(self, x: Tensor, name: str, groups: int, eps: float) -> Tensor:
        """GroupNorm over (N, C, ...) with affine `{name}.weight`, `{name}.bias` (C,)."""

    def layer_norm(self, x: Tensor, name: str, eps: float) -> Tensor:
        """LayerNorm over the last axis with affine `{name}.weight`, `{name}.bias`."""

    # --- elementwise / reductions -------------------------------------------
    def silu(self, x: Tensor, name: str) -> Tensor: ...

    def gelu(self, x: Tensor, name: str) -> Tensor:
        """Exact (erf) GELU, as torch's default."""

    def quick_gelu(self, x: Tensor, name: str) -> Tensor:
        """x * sigmoid(1.702 x), CLIP's activation."""

    def softmax(self, x: Tensor, name: str, causal: bool = False) -> Tensor:
        """Softmax over the last axis. `causal`: for (..., T, T) scores, position j > i is masked out."""

    def matmul(self, a: Tensor, b: Tensor, name: str, alpha: float = 1.0) -> Tensor:
        """Batched product of two activations: alpha * (a (..., M, K) @ b (..., K, N)) -> (..., M, N)."""

    def add(self, a: Tensor, b: Tensor, name: str) -> Tensor:
        """a + b with NumPy broadcasting."""

    def mul(self, a: Tensor, b: Tensor, name: str) -> Tensor:
        """a * b with NumPy broadcasting."""

    def scale(self, x: Tensor, factor: float, name: str) -> Tensor:
        """x * factor for a constant factor (e.g. a resnet's 1/output_scale_factor)."""

    def concat(self, xs: Sequence[Tensor], axis: int, name: str) -> Tensor: ...

    def upsample_nearest2x(self, x: Tensor, name: str) -> Tensor:
        """(N, C, H, W) -> (N, C, 2H, 2W), each value repeated 2x2."""

    # --- layout (no arithmetic, no name) -------------------------------------
    def reshape(self, x: Tensor, shape: Sequence[int]) -> Tensor: ...

    def transpose(self, x: Tensor, axes: Sequence[int]) -> Tensor: ...

    def split(self, x: Tensor, sections: int, axis: int) -> list[Tensor]:
        """Equal split into `sections` parts along `axis` (torch.chunk)."""
