"""int8 symmetric per-channel weights and int32 biases."""
import logging

import numpy as np
import pytest

from tinysd.errors import TinySDError
from tinysd.quant.encodings import load_encodings, round_half_away_from_zero, save_encodings
from tinysd.quant.weights import INT32_MAX, INT32_MIN, quantize_bias, quantize_weight


def _conv_weight(rng):
    """(8, 4, 3, 3) with channels of very different ranges, including awkward ones."""
    w = rng.normal(size=(8, 4, 3, 3)) * np.array([1e-3, 0.02, 0.5, 3.0, 0.1, 0.1, 0.1, 0.1])[:, None, None, None]
    w[4] = 0.0  # all-zero channel
    w[5] = np.abs(w[5])  # positive only
    w[6] = -np.abs(w[6])  # negative only
    w[7] = np.where(w[7] > 0, w[7] * 0.5, w[7])  # most negative weight dominates
    return w.astype(np.float32)


def test_weight_quantization_error_bound():
    w = _conv_weight(np.random.default_rng(0))
    q, enc = quantize_weight(w, name="unet.conv_in.weight")
    assert q.dtype == np.int8 and q.shape == w.shape
    assert enc.bitwidth == 8 and enc.is_symmetric and enc.axis == 0 and enc.channels == 8
    assert enc.offset.tolist() == [-128] * 8
    assert np.array_equal(enc.scale, enc.scale.astype(np.float32).astype(np.float64))  # float32 values
    w64 = w.astype(np.float64)
    err = np.abs(w64 - q.astype(np.float64) * enc.scale[:, None, None, None])
    per_channel = err.reshape(8, -1).max(axis=1)
    assert np.all(per_channel <= enc.scale / 2), per_channel / enc.scale
    np.testing.assert_array_equal(enc.dequantize(q), q.astype(np.float64) * enc.scale[:, None, None, None])
    assert np.all(q[4] == 0)  # zero channel stays zero
    assert q[5].min() >= 0 and q[6].max() <= 0


def test_weight_scale_follows_aimet_symmetric_rule():
    w = _conv_weight(np.random.default_rng(1))
    q, enc = quantize_weight(w)
    flat = w.astype(np.float64).reshape(8, -1)
    mx, mn = np.maximum(flat.max(axis=1), 0), np.minimum(flat.min(axis=1), 0)
    rule = np.maximum(mx / 127, -mn / 128)  # libpymo getComputedEncodings, 8-bit symmetric
    live = rule > 0
    assert np.all(np.abs(enc.scale[live] - rule[live]) <= rule[live] * 2.0**-24)
    # -128 is reached only by a channel's most negative weight when it (nearly) decides the scale
    qf = q.reshape(8, -1)
    uses_min = (qf == -128).any(axis=1)
    min_decides = -mn / 128 > mx / 127
    assert uses_min[min_decides].all() and min_decides[7]
    np.testing.assert_array_equal(uses_min, round_half_away_from_zero(mn / enc.scale) == -128)
    # the positive side never goes past 127; whichever side decides reaches its end
    assert (qf.max(axis=1) <= 127).all() and (qf.max(axis=1)[live & ~min_decides] == 127).all()


def test_symmetric_channel_uses_minus_127():
    w = np.array([[-2.0, 0.3, 2.0], [0.5, -0.25, 0.1]], dtype=np.float32)  # linear (OUT=2, IN=3)
    q, enc = quantize_weight(w)
    assert q[0].tolist() == [-127, int(round_half_away_from_zero(0.3 / enc.scale[0])), 127]
    assert q[1, 0] == 127


def test_weight_axis_and_errors():
    w = np.random.default_rng(2).normal(size=(3, 5)).astype(np.float32)
    q, enc = quantize_weight(w, axis=1)
    assert enc.axis == 1 and enc.channels == 5 and q.shape == w.shape
    bad = w.copy()
    bad[1, 2] = np.nan
    with pytest.raises(TinySDError, match=r"'unet\.x\.weight': non-finite"):
        quantize_weight(bad, name="unet.x.weight")
    with pytest.raises(TinySDError, match=r"'unet\.x\.weight'.*floating point"):
        quantize_weight(w.astype(np.int32), name="unet.x.weight")
    with pytest.raises(TinySDError, match="axis 2"):
        quantize_weight(w, axis=2)


def test_bias_quantization():
    rng = np.random.default_rng(3)
    w = rng.normal(scale=0.1, size=(6, 10)).astype(np.float32)
    _, wenc = quantize_weight(w)
    b = rng.normal(size=6)
    s_in = 0.0123
    q, benc = quantize_bias(b, s_in, wenc.scale, name="unet.proj.bias")
    assert q.dtype == np.int32
    scale = s_in * wenc.scale
    np.testing.assert_array_equal(benc.scale, scale)
    np.testing.assert_array_equal(q, round_half_away_from_zero(b / scale))
    assert np.all(np.abs(b - q * scale) <= scale / 2)
    assert benc.bitwidth == 32 and benc.is_symmetric and benc.axis == 0
    st = benc.storage()
    assert st.dtype == np.int32 and st.zero_point.tolist() == [0] * 6
    np.testing.assert_array_equal(benc.dequantize(q), q * scale)
    # per-tensor weight scale -> per-tensor bias encoding
    q1, benc1 = quantize_bias(b, s_in, 0.01)
    assert benc1.axis is None and benc1.scale.tolist() == [s_in * 0.01]
    np.testing.assert_array_equal(q1, round_half_away_from_zero(b / (s_in * 0.01)))


def test_bias_ties_round_away_from_zero():
    q, _ = quantize_bias(np.array([2.5, -2.5, 0.5, -0.5]), 1.0, np.array([1.0, 1.0, 1.0, 1.0]))
    assert q.tolist() == [3, -3, 1, -1]


def test_bias_saturates_with_warning(caplog):
    b = np.array([1.0, 5e3, -5e3, 0.0])
    with caplog.at_level(logging.WARNING, logger="tinysd.quant.weights"):
        q, _ = quantize_bias(b, 1e-4, np.full(4, 1e-4), name="unet.conv_out.bias")
    assert q.tolist() == [100000000, INT32_MAX, INT32_MIN, 0]
    messages = [r.getMessage() for r in caplog.records]
    assert any("unet.conv_out.bias" in m and "2 of 4" in m for m in messages), messages


def test_bias_errors():
    with pytest.raises(TinySDError, match=r"'b': 2 bias values but 3 weight scales"):
        quantize_bias(np.zeros(2), 0.1, np.ones(3), name="b")
    with pytest.raises(TinySDError, match="scales must be finite and > 0"):
        quantize_bias(np.zeros(2), 0.0, np.ones(2))
    with pytest.raises(TinySDError, match="non-finite bias"):
        quantize_bias(np.array([np.inf, 0.0]), 0.1, np.ones(2))


@pytest.mark.parametrize("version", ["1.0.0", "0.6.1"])
def test_weight_and_bias_encodings_round_trip(tmp_path, version):
    w = _conv_weight(np.random.default_rng(4))
    _, wenc = quantize_weight(w)
    _, benc = quantize_bias(np.linspace(-1, 1, 8), 0.02, wenc.scale)
    path = tmp_path / "p.encodings"
    params = {"unet.conv_in.weight": wenc, "unet.conv_in.bias": benc}
    save_encodings(path, {}, params, version=version)
    _, loaded, _ = load_encodings(path)
    assert loaded["unet.conv_in.weight"] == wenc and loaded["unet.conv_in.bias"] == benc
