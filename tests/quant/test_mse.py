"""MSE-optimal ranges (tinysd/quant/mse.py, MSEObserver) and the "mse" calibration method."""
import sys
from pathlib import Path

import numpy as np
import pytest

from tinysd.checkpoint import load_checkpoint
from tinysd.errors import TinySDError
from tinysd.quant.calibration import (
    CALIBRATION_METHODS,
    calibrate_model,
    calibrate_observers,
    quantize_model,
    ranges_from_observers,
)
from tinysd.quant.mse import Buckets, expected_error, mse_range, rounding_integral
from tinysd.quant.observers import (
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    encoding_from_range,
    mse_range_of,
)

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))  # quantfix
TINY = TESTS / "fixtures" / "tiny-sd"


def sq_error(x, lo, hi, bits):
    """Exact squared quantize-dequantize error of values x with the encoding of [lo, hi]."""
    enc = encoding_from_range(lo, hi, bits)
    return float(np.sum(np.square(enc.dequantize(enc.quantize(x)) - x)))


def brute_force(x, bits, per_octave=64, octaves=7):
    """Smallest exact error over every offset of a dense geometric grid of scales, and its range."""
    n = 2**bits - 1
    mn, mx = min(x.min(), 0.0), max(x.max(), 0.0)
    best = (np.inf, None)
    for s in (mx - mn) / n * np.exp2(-np.arange(octaves * per_octave + 1) / per_octave):
        o = np.arange(-n, 1, dtype=np.float64)[:, None]  # (n + 1, 1): every offset
        q = np.clip(np.floor(x[None, :] / s + 0.5), o, o + n)  # (n + 1, N)
        e = np.sum(np.square(q * s - x[None, :]), axis=1)
        i = int(np.argmin(e))
        if e[i] < best[0]:
            best = (float(e[i]), (o[i, 0] * s, (o[i, 0] + n) * s))
    return best


def test_rounding_integral_matches_numerical_integration():
    """G(b) - G(a) against a midpoint-rule integral of (t - round(t))**2 over [a, b]."""
    assert rounding_integral(np.array([0.0]))[0] == 0.0
    assert rounding_integral(np.array([12.0]))[0] == 1.0  # 12 whole periods of mean 1/12
    for a, b in [(0.0, 0.3), (0.2, 0.5), (0.4, 0.6), (0.5, 1.75), (2.49, 2.51), (7.1, 9.9), (65534.2, 65535.4),
                 (-1.3, 0.8), (-3.5, -2.25)]:
        m = 1_000_000
        t = a + (b - a) * (np.arange(m) + 0.5) / m
        want = float(np.mean(np.square(t - np.round(t)))) * (b - a)
        got = float(rounding_integral(np.array([b]))[0] - rounding_integral(np.array([a]))[0])
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), (a, b)


@pytest.mark.parametrize("scale,offset", [(0.05, -40), (0.2, -3), (0.013, -255), (0.4, 0)])
def test_expected_error_is_the_error_of_values_spread_in_their_buckets(scale, offset):
    """The error model: values uniform inside each bucket. Dense uniform samples in each bucket must
    give the modelled error (rounding inside the range, clipping outside, both signs)."""
    rng = np.random.default_rng(1)
    edges = np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 0.2, size=60))])  # up to ~6
    counts = rng.integers(0, 50, size=(2, edges.size - 1))
    samples, buckets = [], []
    for sign, c in zip((-1.0, 1.0), counts):
        keep = c > 0
        buckets.append(Buckets(edges[:-1][keep], edges[1:][keep], c[keep].astype(np.float64)))
        for a, b, k in zip(edges[:-1], edges[1:], c):
            samples.append(sign * (a + (b - a) * (np.arange(2000) + 0.5) / 2000).repeat(k))  # midpoint rule
    x = np.concatenate(samples)
    n = 255
    q = np.clip(np.floor(x / scale + 0.5), offset, offset + n)
    empirical = float(np.sum(np.square(q * scale - x))) / 2000
    model = expected_error(buckets[0], buckets[1], scale, offset, 8)
    assert model == pytest.approx(empirical, rel=2e-3)
    # clip_weight scales the clipping part only
    clipped = np.clip(x, offset * scale, (offset + n) * scale)
    clip_part = float(np.sum(np.square(clipped - x))) / 2000
    w3 = expected_error(buckets[0], buckets[1], scale, offset, 8, clip_weight=3.0)
    assert w3 == pytest.approx(model + 2 * clip_part, rel=2e-3)


@pytest.mark.parametrize("kind", ["normal", "student-t 3", "silu of normal", "exponential"])
def test_search_finds_the_mse_optimal_range(kind):
    """On samples of known distributions the searched range's exact error is the brute-force optimum
    over every offset and 2**(1/64)-spaced scales (to within 0.3%), and clearly below min-max."""
    rng = np.random.default_rng(2)
    x = {"normal": lambda: rng.normal(size=4000),
         "student-t 3": lambda: rng.standard_t(3, size=4000),
         "silu of normal": lambda: (lambda z: z / (1 + np.exp(-z)))(2 * rng.normal(size=4000)),
         "exponential": lambda: -rng.exponential(size=4000)}[kind]()
    x = x.astype(np.float32).astype(np.float64)
    bits = 4
    obs = MSEObserver(bits=bits)
    obs.update(x)
    lo, hi = obs.range()
    found = sq_error(x, lo, hi, bits)
    best, (blo, bhi) = brute_force(x, bits)
    minmax = sq_error(x, x.min(), x.max(), bits)
    assert found <= best * 1.003, (lo, hi, blo, bhi)
    assert found < 0.9 * minmax
    step = (hi - lo) / (2**bits - 1)  # the grid never reaches a full step beyond the data
    assert lo <= 0.0 <= hi and lo > min(x.min(), 0) - step and hi < max(x.max(), 0) + step


def test_eight_bits_beats_minmax_and_percentile_and_sixteen_bits_clips_little():
    rng = np.random.default_rng(3)
    x = rng.standard_t(3, size=100_000).astype(np.float32).astype(np.float64)
    mse8, pct, mm = MSEObserver(bits=8), PercentileObserver(99.99), MinMaxObserver()
    for o in (mse8, pct, mm):
        o.update(x)
    e_mse = sq_error(x, *mse8.range(), 8)
    assert e_mse < sq_error(x, *mm.range(), 8)
    assert e_mse < sq_error(x, *pct.range(), 8)
    lo16, hi16 = mse8.range(bits=16)  # same histogram, 16-bit grid
    assert (hi16 - lo16) > 0.95 * (x.max() - x.min())
    assert sq_error(x, lo16, hi16, 16) <= sq_error(x, x.min(), x.max(), 16) * 1.01
    assert mse_range_of(pct, 8) == mse8.range()  # any histogram observer can be searched


def test_observer_is_deterministic_across_batches_and_merges():
    rng = np.random.default_rng(4)
    x = rng.laplace(size=(6, 5000)).astype(np.float32)
    whole = MSEObserver(bits=8)
    whole.update(x)
    a, b = MSEObserver(bits=8), MSEObserver(bits=8)
    for row in x[:4]:
        a.update(row)
    b.update(x[4:])
    a.merge(b)
    assert a.range() == whole.range()
    assert a.count == x.size


@pytest.mark.parametrize("values", [np.zeros(50), np.ones(50), -np.ones(50), np.array([0.0, 1.0] * 25),
                                    np.array([-1.0, 1.0, 0.5]), np.full(10, 3e-30)])
def test_degenerate_data(values):
    """Constant tensors and point masses (e.g. sin/cos features at exactly +-1) get finite ranges that
    hold their values to within half a step (plus the float32 rounding of the scale, at most
    2**-24 of it per step of the grid)."""
    for bits in (8, 16):
        obs = MSEObserver(bits=bits)
        obs.update(values)
        lo, hi = obs.range()
        assert np.isfinite(lo) and np.isfinite(hi) and lo <= 0.0 <= hi
        enc = encoding_from_range(lo, hi, bits)
        back = enc.dequantize(enc.quantize(values))
        assert np.all(np.abs(back - values) <= enc.scale[0] * (0.5 + 2.0**-24 * (2**bits - 1)))


def test_argument_errors():
    with pytest.raises(ValueError, match="bits"):
        MSEObserver(bits=17)
    with pytest.raises(ValueError, match="clip_weight"):
        MSEObserver(clip_weight=0)
    with pytest.raises(TinySDError, match="'x': no values"):
        MSEObserver(name="x").range()
    with pytest.raises(ValueError, match="bits"):
        mse_range(Buckets.empty(), Buckets.empty(), -1.0, 1.0, 1)


# ---------------------------------------------------------------------------------------------
# the calibration method on the tiny fixture model
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return load_checkpoint(TINY)


@pytest.fixture(scope="module")
def observers(tiny):
    return calibrate_observers(tiny, ["a red circle"], steps=2, method="mse")


def test_mse_method_needs_a_precision(tiny, observers):
    assert "mse" in CALIBRATION_METHODS
    with pytest.raises(TinySDError, match="mse needs a precision"):
        ranges_from_observers(observers, "mse")
    with pytest.raises(TinySDError, match="mse needs a precision"):
        calibrate_model(tiny, ["a red circle"], steps=1, method="mse")
    with pytest.raises(TinySDError, match="'median' is not one of minmax, percentile, mse"):
        calibrate_model(tiny, ["a red circle"], steps=1, method="median")


def test_mse_ranges_per_precision(observers):
    r8 = ranges_from_observers(observers, "mse", "w8a8")
    r16 = ranges_from_observers(observers, "mse", "w8a16")
    mm = ranges_from_observers(observers, "percentile")  # same observers: percentile ranges
    assert set(r8) == set(r16) == set(mm) == {"text_encoder", "unet", "vae"}
    for net in r8:
        assert list(r8[net]) == list(r16[net]) == list(mm[net])
        for name, (lo, hi) in r8[net].items():
            mn, mx = observers[net][name]._minmax.range()
            step = (hi - lo) / 255
            assert min(mn, 0) - step < lo <= 0.0 <= hi < max(mx, 0) + step, name
    widths = [(hi - lo, r16[n][t][1] - r16[n][t][0]) for n in r8 for t, (lo, hi) in r8[n].items()]
    assert sum(w8 < 0.999 * w16 for w8, w16 in widths) > len(widths) // 2  # 8 bits clips more


def test_mse_model_is_integer_and_reproducible(tiny, observers, tmp_path):
    """A model quantized from mse ranges is an ordinary integer model: run twice it gives identical
    integer tensors, and its AIMET encodings re-imported give the same integer tensors bit for bit."""
    from quantfix import digests, integer_tensors

    from tinysd.quant.encodings import load_encodings, save_encodings

    ranges = ranges_from_observers(observers, "mse", "w8a8")
    q = quantize_model(tiny, "w8a8", ranges)
    d1 = digests(integer_tensors(q))
    assert digests(integer_tensors(quantize_model(tiny, "w8a8", ranges))) == d1
    acts = {name: enc for net in q.networks.values() for name, enc in net.activations.items()}
    params = {name: enc for net in q.networks.values() for name, enc in net.params.items()}
    save_encodings(tmp_path / "e.json", acts, params)
    act2, par2, _ = load_encodings(tmp_path / "e.json")
    assert digests(integer_tensors(quantize_model(tiny, "w8a8", act2, par2))) == d1


def test_quantize_checkpoint_with_mse(tmp_path):
    """`tinysd quantize --method mse` as a library call: the ranges are searched for the folder's
    precision and the method is recorded."""
    from tinysd.quant.folder import load_quantized
    from tinysd.quant.workflow import quantize_checkpoint

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    out, sqnr = quantize_checkpoint(TINY, tmp_path / "q", "w8a16", prompts_file=prompts, steps=1, method="mse",
                                    sqnr_calls=1)
    q = load_quantized(out)
    assert q.precision == "w8a16" and q.info["method"] == "mse"
    assert all(e.bitwidth == 16 for net in q.networks.values() for e in net.activations.values())
    assert set(sqnr) == {"text_encoder", "unet", "vae.decode", "vae.encode"}
