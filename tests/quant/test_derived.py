"""Ranges that follow from a graph's structure (tinysd.quant.derived): the tensors an encodings file
leaves float get ranges derived from the file's encodings of their inputs, never clipped below what
the device graph (which keeps them float) can produce."""
import math
from pathlib import Path

import numpy as np
import pytest

from tinysd.checkpoint import load_checkpoint
from tinysd.interp.parts import part_tensor
from tinysd.interp.trace import trace_network
from tinysd.quant.calibration import model_graphs
from tinysd.quant.derived import ACTIVATION_MINIMA, activation_range, derived_ranges

TINY = Path(__file__).parents[1] / "fixtures" / "tiny-sd"


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _gelu(x):
    from math import erf

    return np.array([0.5 * v * (1.0 + erf(v / math.sqrt(2.0))) for v in np.atleast_1d(x)])


FUNCS = {"silu": _silu, "quick_gelu": lambda x: _silu(1.702 * x) / 1.702, "gelu": _gelu}


@pytest.mark.parametrize("kind", list(FUNCS))
def test_activation_minima_are_the_minima(kind):
    """The stored (x*, f(x*)) is the function's minimum: f(x*) matches, and no point of a fine grid is lower."""
    x_min, f_min = ACTIVATION_MINIMA[kind]
    f = FUNCS[kind]
    assert abs(float(f(np.float64(x_min))[()] if kind != "gelu" else f(x_min)[0]) - f_min) < 1e-15
    grid = np.linspace(x_min - 0.01, x_min + 0.01, 20001)
    assert np.min(f(grid)) >= f_min - 1e-15


@pytest.mark.parametrize("kind", list(FUNCS))
@pytest.mark.parametrize("lo,hi", [(-3.0, 2.0), (0.0, 1.0), (-5.0, -3.0), (-0.5, 4.0), (-20.0, 0.1)])
def test_activation_range_is_the_image(kind, lo, hi):
    """The derived interval is the image of [lo, hi]: it holds every value and is no wider than needed."""
    y = FUNCS[kind](np.linspace(lo, hi, 20001))  # grid step <= 1.3e-3: the sampled extremes are within 1e-5
    r = activation_range(kind, lo, hi)
    assert r[0] <= y.min() + 1e-15 and r[1] >= y.max() - 1e-15
    assert r[0] >= y.min() - 1e-5 and r[1] <= y.max() + 1e-15


@pytest.fixture(scope="module")
def unet_trace():
    tiny = load_checkpoint(TINY)
    return trace_network(model_graphs(tiny.config)["unet"], "unet")


def test_derived_ranges_follow_the_structure(unet_trace):
    """The attention context gets V's range (times alpha), the scores stay calibrated, SiLU the image of
    its input's range, a residual add the sum of its inputs' ranges, and derived ranges feed later ops."""
    ops = unet_trace.ops
    # every op output "from the file" with a distinct range, except the tensors aimet-torch leaves float
    kinds = {op.tensor: op.kind for op in ops if op.tensor}
    float_left = {t for t, k in kinds.items() if k in ("silu", "softmax", "add", "upsample_nearest2x")
                  or (k == "matmul" and t.endswith((".scores.out", ".context.out")))}
    known = {t: (-1.0 - 0.01 * i, 2.0 + 0.02 * i) for i, t in enumerate(kinds) if t not in float_left}
    softmax = {t for t, k in kinds.items() if k == "softmax"}
    known.update({t: (0.0, 1.0) for t in softmax})
    got = derived_ranges(unet_trace, known, float_left - softmax)
    blk = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert got[f"{blk}.context.out"] == (known[f"{blk}.to_v.out"], "a convex combination of its second operand's rows")
    assert f"{blk}.scores.out" not in got
    norm, act = "unet.down_blocks.0.resnets.0.norm1.out", "unet.down_blocks.0.resnets.0.act1.out"
    assert got[act][0] == activation_range("silu", *known[norm])
    a, b = "unet.up_blocks.0.resnets.2.conv_shortcut.out", "unet.up_blocks.0.resnets.2.conv2.out"
    add = "unet.up_blocks.0.resnets.2.add.out"
    assert got[add][0] == (known[a][0] + known[b][0], known[a][1] + known[b][1])
    assert got["unet.up_blocks.0.upsamplers.0.upsample.out"][0] == got[add][0]  # from a derived range
    # an op whose input has no range (neither known nor derivable) is not derived
    del known[norm]
    assert act not in derived_ranges(unet_trace, known, float_left - softmax)


def test_parts_are_derived_in_order(unet_trace):
    """A GELU computed as its parts: erf, add, mul and the output follow from the file's div part, with
    the file's quantized constants."""
    from tinysd.quant.encodings import Encoding

    op = next(o for o in unet_trace.ops if o.kind == "gelu")  # GEGLU's gate: a chunk of the projection
    name, t = op.name, op.tensor
    known = {"unet." + name.rsplit(".", 1)[0] + ".proj.out": (-3.0, 2.0), part_tensor(t, "div"): (-2.0, 1.5)}
    missing = {part_tensor(t, p) for p in ("erf", "add", "mul")} | {t}
    half = Encoding(8, [1 / 255], [0], False)  # the last step's 0.5 on this grid: 128 / 255
    got = derived_ranges(unet_trace, known, missing, {name: ("div", "erf", "add", "mul")},
                         {t.replace(".out", ".const"): half})
    assert set(got) == missing
    erf = (math.erf(-2.0), math.erf(1.5))
    assert got[part_tensor(t, "erf")][0] == erf
    assert got[part_tensor(t, "add")][0] == (erf[0] + 1.0, erf[1] + 1.0)
    mul = got[part_tensor(t, "mul")][0]
    assert mul == (-3.0 * (erf[1] + 1.0), 2.0 * (erf[1] + 1.0))
    c = float(half.dequantize(half.quantize(np.float64(0.5))))
    assert c != 0.5 and got[t][0] == (mul[0] * c, mul[1] * c)
