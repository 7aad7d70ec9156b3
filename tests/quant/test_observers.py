"""Range observers and AIMET's encoding of a range."""
import math
from fractions import Fraction

import numpy as np
import pytest

from tinysd.errors import TinySDError
from tinysd.quant.observers import (
    MINIMUM_SCALE,
    SMALL_MAGNITUDE,
    MinMaxObserver,
    PercentileObserver,
    encoding_from_range,
)


def _batches(x, n):
    return np.array_split(x.reshape(-1), n)


def test_minmax_exact_and_mergeable():
    rng = np.random.default_rng(0)
    x = rng.standard_cauchy(size=(7, 3, 50)).astype(np.float32)
    obs = MinMaxObserver("unet.a.out")
    for b in _batches(x, 6):
        obs.update(b)
    assert obs.range() == (float(x.min()), float(x.max()))
    assert obs.count == x.size
    a, b = MinMaxObserver(), MinMaxObserver()
    a.update(x[:3])
    b.update(x[3:])
    a.merge(b)
    assert a.range() == obs.range() and a.count == x.size
    obs.update(np.zeros((0, 4), dtype=np.float32))  # empty batches are ignored
    assert obs.range() == (float(x.min()), float(x.max()))


@pytest.mark.parametrize("cls", [MinMaxObserver, PercentileObserver])
def test_observer_errors_name_the_tensor(cls):
    obs = cls(name="unet.mid_block.attentions.0.out")
    with pytest.raises(TinySDError, match=r"'unet\.mid_block\.attentions\.0\.out': no values observed"):
        obs.range()
    with pytest.raises(TinySDError, match=r"'unet\.mid_block\.attentions\.0\.out': non-finite"):
        obs.update(np.array([1.0, np.nan], dtype=np.float32))
    with pytest.raises(TinySDError, match="non-finite"):
        obs.update(np.array([np.inf]))
    if cls is PercentileObserver:  # counted as float32: float64 values beyond its range are refused
        with pytest.raises(TinySDError, match="beyond float32 range"):
            obs.update(np.array([1.0, -1e300]))
    assert obs.count == 0


def _data(kind, n, rng):
    if kind == "heavy tails":
        return rng.standard_t(2, size=n).astype(np.float32)
    if kind == "relu":
        return np.maximum(rng.normal(size=n), 0).astype(np.float32)
    if kind == "negative":
        return (-rng.exponential(size=n)).astype(np.float32)
    if kind == "outliers":
        x = rng.normal(size=n).astype(np.float32)
        x[rng.integers(0, n, size=5)] = 500.0
        return x
    if kind == "tiny with zeros":
        x = (rng.normal(size=n) * 1e-6).astype(np.float32)
        x[: n // 2] = 0
        return x
    raise ValueError(kind)


KINDS = ["heavy tails", "relu", "negative", "outliers", "tiny with zeros"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("percentile", [99.99, 99.9, 60.0])
def test_percentile_bound_against_numpy(kind, percentile):
    """The documented bound: hi - x_(k_hi) in [0, 2**-m |x_(k_hi)|] (2**-24 absolute below 2**-24)."""
    rng = np.random.default_rng(KINDS.index(kind) * 10000 + int(percentile * 100))
    n = 30011
    x = _data(kind, n, rng)
    obs = PercentileObserver(percentile, name="t")
    for b in _batches(x, 7):
        obs.update(b)
    lo, hi = obs.range()
    # numpy's "higher"/"lower" percentiles are the order statistics the observer targets
    x_hi = float(np.percentile(x, percentile, method="higher"))
    x_lo = float(np.percentile(x, 100 - percentile, method="lower"))
    s = np.sort(x)
    p = Fraction(percentile) / 100
    assert x_hi == s[math.ceil(p * (n - 1))] and x_lo == s[math.floor((1 - p) * (n - 1))]
    rel = 2.0**-obs.mantissa_bits
    assert 0 <= hi - x_hi <= max(rel * abs(x_hi), SMALL_MAGNITUDE)
    assert 0 <= x_lo - lo <= max(rel * abs(x_lo), SMALL_MAGNITUDE)
    assert x.min() <= lo <= hi <= x.max()


def test_percentile_outliers_are_clipped():
    rng = np.random.default_rng(2)
    x = _data("outliers", 100000, rng)
    obs = PercentileObserver(99.99)
    obs.update(x)
    lo, hi = obs.range()
    assert hi < 10 and lo > -10  # the five 500.0 outliers are beyond the 99.99th percentile
    mm = MinMaxObserver()
    mm.update(x)
    assert mm.range()[1] == 500.0


def test_percentile_100_is_minmax():
    x = _data("heavy tails", 5000, np.random.default_rng(3))
    obs = PercentileObserver(100.0)
    obs.update(x)
    assert obs.range() == (float(x.min()), float(x.max()))


def test_percentile_merge_is_exact_and_order_free():
    rng = np.random.default_rng(4)
    x = np.concatenate([_data(k, 4000, rng) for k in KINDS])
    whole = PercentileObserver(99.9)
    whole.update(x)
    parts = [PercentileObserver(99.9) for _ in range(3)]
    for obs, b in zip(parts, _batches(x[rng.permutation(x.size)], 3)):
        for bb in _batches(b, 4):
            obs.update(bb)
    parts[2].merge(parts[0])
    parts[2].merge(parts[1])
    assert parts[2].range() == whole.range() and parts[2].count == whole.count
    for tail in ("_neg", "_pos"):
        a, b = getattr(parts[2], tail), getattr(whole, tail)
        assert a.small == b.small and a.lo == b.lo and np.array_equal(a.counts, b.counts)


def test_percentile_memory_is_bounded():
    obs = PercentileObserver(99.99, mantissa_bits=7)
    rng = np.random.default_rng(5)
    for _ in range(20):  # magnitudes spanning float32's whole range, both signs
        e = rng.uniform(-149, 127, size=20000)
        obs.update((np.sign(rng.normal(size=e.size)) * 2.0**e).astype(np.float32))
    assert obs.count == 400000
    for tail in (obs._neg, obs._pos):
        assert tail.counts.size <= (255 - 103) * 2**7


def test_percentile_arguments():
    with pytest.raises(ValueError, match="percentile"):
        PercentileObserver(40.0)
    with pytest.raises(ValueError, match="mantissa_bits"):
        PercentileObserver(99.0, mantissa_bits=20)
    with pytest.raises(ValueError, match="mantissa_bits"):
        PercentileObserver(99.0, mantissa_bits=6).merge(PercentileObserver(99.0, mantissa_bits=7))


# Published encodings, (min, max, offset, scale): asymmetric ones from the PyTorch example of AIMET's
# "Encoding Format Specification" (quic/aimet Docs/api_docs/quantization_encoding_specification.rst:
# activations "20", "21", params conv2.weight, fc1.weight); symmetric 8-bit ones from the 0.6.1
# expected results in Qualcomm-AI-research/fastforward tests/export/test_export_schemas.py. Their
# min/max are the re-derived ones; encoding that range again must give the same scale and offset.
AIMET_ASYMMETRIC = [
    (-2.109158515930176, 2.6086959838867188, -114, 0.018501389771699905),
    (-0.12636379897594452, 2.558866932988167, -12, 0.010530316270887852),
    (-0.06268782913684845, 0.06318144500255585, -127, 0.0004936049808748066),
    (-0.05546144023537636, 0.05589814856648445, -127, 0.0004367042565718293),
]
AIMET_SYMMETRIC = [
    (-1.5360000133514404, 1.5240000486373901, -128, 0.012000000104308128),
    (-1.9199999570846558, 1.9049999713897705, -128, 0.014999999664723873),
    (-1.4079999923706055, 1.3969999551773071, -128, 0.010999999940395355),
    (-3.200000047683716, 3.174999952316284, -128, 0.02500000037252903),
]


@pytest.mark.parametrize("mn, mx, offset, scale", AIMET_ASYMMETRIC)
def test_reproduces_aimet_asymmetric(mn, mx, offset, scale):
    enc = encoding_from_range(mn, mx, 8)
    assert enc.offset.tolist() == [offset] and enc.scale.tolist() == [scale]


@pytest.mark.parametrize("mn, mx, offset, scale", AIMET_SYMMETRIC)
def test_reproduces_aimet_symmetric(mn, mx, offset, scale):
    enc = encoding_from_range(mn, mx, 8, symmetric=True)
    assert enc.offset.tolist() == [offset] and enc.scale.tolist() == [scale]
    assert enc.is_symmetric and enc.storage().dtype == np.int8


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("mn, mx", [(-1.3, 4.2), (0.0, 6.5), (-7.0, -0.5), (-3e-3, 1e-3), (2.0, 3.0), (-1e4, 2.5e4)])
def test_encoding_from_range_properties(bits, mn, mx):
    enc = encoding_from_range(mn, mx, bits)
    n = 2**bits - 1
    s, off = enc.scale[0], int(enc.offset[0])
    lo, hi = min(mn, 0.0), max(mx, 0.0)
    assert np.float64(np.float32(s)) == s  # scales are float32 values
    step = (hi - lo) / n
    if step < MINIMUM_SCALE:  # narrow range (here: 16 bits, range < 65535 * 2**-23): widened by n * 2**-23
        step += MINIMUM_SCALE
    assert abs(s - step) <= step * 2.0**-24  # (max - min) / n, rounded to float32
    assert -n <= off <= 0 and off == enc.offset[0]
    assert enc.min[0] == off * s and enc.max[0] == (off + n) * s
    assert enc.dequantize(enc.quantize(0.0)) == 0.0  # zero exactly representable
    x = np.linspace(lo, hi, 20001)
    err = np.abs(enc.dequantize(enc.quantize(x)) - x)  # range covered to within half a step
    assert err.max() <= s / 2 * (1 + 1e-9)


@pytest.mark.parametrize("bits", [8, 16])
def test_symmetric_uses_extra_negative_step_only_when_needed(bits):
    half = 2 ** (bits - 1)
    enc = encoding_from_range(-1.0, 1.0, bits, symmetric=True)  # max side decides: scale = 1 / (half - 1)
    assert enc.offset.tolist() == [-half]
    assert abs(enc.scale[0] - 1.0 / (half - 1)) <= 2.0**-24 / (half - 1)
    enc = encoding_from_range(-2.0, 1.0, bits, symmetric=True)  # min side decides: scale = 2 / half
    assert enc.scale[0] == 2.0 / half
    assert enc.quantize(-2.0).item() == -half and enc.storage().qmax.tolist() == [half - 1]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("value", [0.0, 5.0, -3.0, 1e-30])
def test_degenerate_ranges(symmetric, value):
    enc = encoding_from_range(value, value, 8, symmetric=symmetric)
    assert np.all(np.isfinite(enc.scale)) and enc.scale[0] > 0
    if value == 0.0 or value == 1e-30:
        # widened by aimet_torch v2's minimum scale: exactly 2**-23 per step
        assert enc.scale[0] == MINIMUM_SCALE
        assert enc.offset[0] == (-128 if symmetric else 0)
    assert enc.dequantize(enc.quantize(0.0)) == 0.0
    assert abs(enc.dequantize(enc.quantize(value)) - value) <= enc.scale[0] / 2 * (1 + 1e-9)


def test_per_channel_range():
    mins = np.array([-1.0, 0.0, -0.25, 0.0])
    maxs = np.array([2.0, 3.0, 0.0, 0.0])
    enc = encoding_from_range(mins, maxs, 8, axis=0)
    assert enc.per_channel and enc.channels == 4
    for c in range(4):
        one = encoding_from_range(mins[c], maxs[c], 8)
        assert enc.scale[c] == one.scale[0] and enc.offset[c] == one.offset[0]


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((np.nan, 1.0, 8), "non-finite"),
        ((-np.inf, 1.0, 8), "non-finite"),
        ((2.0, 1.0, 8), "min 2.0 > max 1.0"),
        ((-1.0, 1.0, 1), "bits"),
        (([-1.0, -2.0], [1.0, 2.0], 8), "per-tensor range needs scalar"),
    ],
)
def test_encoding_from_range_errors(args, fragment):
    with pytest.raises(TinySDError) as info:
        encoding_from_range(*args)
    assert fragment in str(info.value)
