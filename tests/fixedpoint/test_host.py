"""Host-side quantize / dequantize at the network boundary (spec §5)."""
import numpy as np
import pytest

from tinysd.fixedpoint import dequantize, quantize


def test_quantize_rounds_half_up_and_clips():
    x = np.array([0.25, -0.25, 0.75, -0.75, 0.2, 1e9, -1e9])  # x / 0.5 = 0.5, -0.5, 1.5, -1.5, ...
    q = quantize(x, 0.5, 10, 0, 255)
    assert q.dtype == np.uint8
    # floor(t + 0.5) + 10 with t = x / 0.5; ties go up, then clip
    assert q.tolist() == [int(np.floor(t + 0.5)) + 10 if abs(t) < 100 else (255 if t > 0 else 0)
                          for t in x / 0.5]
    assert q[0] == 11 and q[1] == 10  # 0.5 -> 1, -0.5 -> 0


def test_quantize_dequantize_roundtrip_within_half_lsb():
    rng = np.random.default_rng(40)
    x = rng.uniform(-1, 1, 1000).astype(np.float32)
    scale, zp = 2 / 65535, 32768
    q = quantize(x, scale, zp, 0, 65535)
    assert q.dtype == np.uint16
    assert np.max(np.abs(dequantize(q, scale, zp) - x.astype(np.float64))) <= scale / 2 * (1 + 1e-9)


@pytest.mark.parametrize(
    "args, name",
    [((np.ones(2), 0.0, 0, 0, 255), "scale"), ((np.ones(2), float("nan"), 0, 0, 255), "scale"),
     ((np.array([np.nan]), 1.0, 0, 0, 255), "x"), ((np.ones(2), 1.0, 300, 0, 255), "zero_point"),
     ((np.ones(2), 1.0, 0, 10, 5), "qmin")],
)
def test_quantize_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        quantize(*args)
    with pytest.raises(ValueError, match="q"):
        dequantize(np.ones(2), 1.0, 0)
