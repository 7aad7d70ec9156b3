"""The timestep features as a device graph computes them (tinysd.interp.parts.device_timestep_features):
AIMET quantizes the timestep, the frequencies, their product, Sin, Cos and the Concat before the UNet's
`time_proj` input; tinysd then computes the features from those quantized values (host side)."""
import math

import numpy as np
import pytest

from tinysd.errors import TinySDError
from tinysd.interp.parts import device_timestep_features
from tinysd.nn.unet import timestep_features
from tinysd.quant.encodings import Encoding


def _enc(scale, zp, bits=8):
    return Encoding(bits, np.array([scale], np.float64), np.array([-zp], np.int64), False, None)


def _qd(x: float, scale: float, zp: int, bits: int = 8) -> float:
    """Scalar quantize-dequantize, half up, clipped (spec section 5), written out for the test."""
    q = min(max(math.floor(x / scale + 0.5) + zp, 0), 2**bits - 1)
    return (q - zp) * scale


def test_without_encodings_it_is_the_float_features():
    for t in (999, 1.5, np.array([3.0, 700.0])):
        got = device_timestep_features(t, 2, 8, True, 0, {})
        np.testing.assert_array_equal(got, timestep_features(t, 2, 8, True, 0))


def test_quantized_timestep_only():
    """Only the timestep quantized (scale 2): the features are the float ones of the grid value."""
    got = device_timestep_features(1.0, 1, 16, True, 0, {"timestep": _enc(2.0, 0)})
    np.testing.assert_allclose(got, timestep_features(2.0, 1, 16, True, 0), rtol=0, atol=1e-6)
    assert not np.allclose(got, timestep_features(1.0, 1, 16, True, 0), atol=1e-3)


@pytest.mark.parametrize("flip", [True, False])
def test_every_part_quantized(flip):
    """dim 4: frequencies [1, 0.01]; every step rounds to its own grid, in the graph's order."""
    s1 = 2 / 255  # sin / cos / concat grid: [-1.0039, 0.9961]
    encs = {"timestep": _enc(2.0, 0), "const": _enc(1 / 255, 0), "mul": _enc(2.0, 0),
            "sin": _enc(s1, 128), "cos": _enc(s1, 128), "concat": _enc(2 / 250, 125)}
    got = device_timestep_features(np.array([501.0, 3.0]), 2, 4, flip, 0, encs)
    for b, t in enumerate((501.0, 3.0)):
        tq = _qd(t, 2.0, 0)  # 502, 4
        f = [_qd(1.0, 1 / 255, 0), _qd(0.01, 1 / 255, 0)]  # [1, 3/255]
        e = [_qd(tq * fi, 2.0, 0) for fi in f]
        sc = [_qd(math.sin(v), s1, 128) for v in e] + [_qd(math.cos(v), s1, 128) for v in e]
        x = [_qd(v, 2 / 250, 125) for v in sc]
        want = x[2:] + x[:2] if flip else x
        np.testing.assert_allclose(got[b], want, rtol=0, atol=1e-12)
    assert got.dtype == np.float64 and got.shape == (2, 4)


def test_odd_dim_is_padded_and_bad_t_is_refused():
    got = device_timestep_features(10.0, 1, 5, True, 0, {"timestep": _enc(1.0, 0)})
    assert got.shape == (1, 5) and got[0, 4] == 0.0
    with pytest.raises(TinySDError, match="timestep"):
        device_timestep_features(np.zeros(3), 2, 4, True, 0, {"timestep": _enc(1.0, 0)})
