"""Integer ops of docs/arithmetic.md, each with a plain reference twin in `reference.py`.

Linear-type ops (`gemm.py`, `conv.py`) compute exact int64 accumulators, by default with int16
SIMD dot products (uint8 activations on AVX-512 VNNI or AVX-VNNI: byte quads) over K-blocks short enough for int32
lanes (`gemm_i16.py`), else with float
BLAS under the bound proved in the spec; then they narrow and requantize in a Numba epilogue. Elementwise and
data-movement ops are in `elementwise.py`. Nonlinear ops (tables, softmax, norms) live in
`tables.py`, `softmax.py`, `norm.py` and are imported from there.
"""
import os

# Numba's OpenMP threads spin-wait after each parallel region by default; on a few cores that
# spinning starves the OpenBLAS threads of the GEMM that follows (measured: 2x slower sgemm, and
# 100x slower small kernels). Passive waiting must be set before the OpenMP runtime starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .conv import conv2d, conv_output_size  # noqa: E402
from .elementwise import (  # noqa: E402
    ADD_LEFT_SHIFT,
    add,
    concat,
    embedding,
    mul,
    requantize_tensor,
    upsample_nearest2x,
)
from .gemm import (  # noqa: E402
    PreparedWeight,
    linear,
    linear_accumulator,
    matmul,
    matmul_accumulator,
    pack_matmul_right,
    plan_linear,
    plan_matmul,
    prepare_weight,
    set_debug,
    weight_bound,
)

__all__ = [
    "ADD_LEFT_SHIFT",
    "PreparedWeight",
    "add",
    "concat",
    "conv2d",
    "conv_output_size",
    "embedding",
    "linear",
    "linear_accumulator",
    "matmul",
    "matmul_accumulator",
    "pack_matmul_right",
    "mul",
    "plan_linear",
    "plan_matmul",
    "prepare_weight",
    "requantize_tensor",
    "set_debug",
    "upsample_nearest2x",
    "weight_bound",
]
