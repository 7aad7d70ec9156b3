"""Range observers for calibration, and the encoding of a range (AIMET's rules).

An observer sees every value a tensor takes during calibration (`update` once
per batch, any shape) and reports a range `(min, max)`; `encoding_from_range`
turns that range into an `Encoding`.

- `MinMaxObserver`: the exact smallest and largest value seen (AIMET's "tf"
  scheme, `quant_scheme = "post_training_tf"`).
- `PercentileObserver`: the (100 - p)-th and p-th percentiles of all values
  seen (each tail clipped separately, as AIMET's percentile scheme), from a
  log-linear histogram of bounded size that merges exactly across batches and
  observers. See its docstring for the exact estimate and its error bound.

`encoding_from_range` follows AIMET: libpymo's `getComputedEncodings`
(quic/aimet `ModelOptimizations/DlQuantization/src/quantization_utils.cpp`) for
scale and offset, and aimet_torch v2's `MinMaxEncodingAnalyzer` for
degenerate ranges; see its docstring.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from tinysd.errors import TinySDError
from tinysd.quant.encodings import Encoding, round_half_away_from_zero

# aimet_torch v2 `_MINIMUM_SCALE`: ranges narrower than this many units per step are widened.
MINIMUM_SCALE = float(np.finfo(np.float32).eps)  # 2**-23
# libpymo clamps ranges to 0.99 of float32's largest value before computing an encoding.
_FLOAT32_LIMIT = 0.99 * float(np.finfo(np.float32).max)
# PercentileObserver: magnitudes below this share one bucket (they quantize like 0).
SMALL_MAGNITUDE = 2.0**-24


def _finite_array(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiu":
        raise TinySDError(f"tensor {name!r}: cannot observe values of dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise TinySDError(f"tensor {name!r}: non-finite values during calibration")
    return x


class MinMaxObserver:
    """Exact running minimum and maximum of every value seen.

    Memory: two floats. `range()` returns (min, max) as float64 exactly as seen.
    """

    def __init__(self, name: str = "tensor"):
        self.name = name
        self.count = 0
        self._min = math.inf
        self._max = -math.inf

    def update(self, x) -> None:
        """Observe all values of `x` (any shape, float or integer); non-finite -> TinySDError."""
        x = _finite_array(x, self.name)
        if x.size == 0:
            return
        self._min = min(self._min, float(x.min()))
        self._max = max(self._max, float(x.max()))
        self.count += int(x.size)

    def merge(self, other: "MinMaxObserver") -> None:
        """Add everything `other` has seen (exact)."""
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        self.count += other.count

    def range(self) -> tuple[float, float]:
        if self.count == 0:
            raise TinySDError(f"tensor {self.name!r}: no values observed during calibration")
        return self._min, self._max


class _TailHistogram:
    """Counts of non-negative float32 magnitudes in log-linear buckets.

    Magnitudes below `SMALL_MAGNITUDE` (2**-24) share one bucket [0, 2**-24):
    an encoding's scale is never below 2**-23 (`MINIMUM_SCALE`), so they all
    quantize like 0. Any other magnitude v goes to bucket
    `key(v) = bits(float32(v)) >> (23 - m)`: its float32 exponent and the top
    `m` bits of its mantissa. Float32 bit patterns of non-negative numbers
    are ordered like the numbers, so keys are too, and bucket `key` holds
    [2**e (1 + j/2**m), 2**e (1 + (j+1)/2**m)), of width 2**(e - m) <= 2**-m
    times any value in it. Counts are kept for keys [lo, lo + len) only,
    growing as needed: at most (255 - 103) * 2**m keys exist above 2**-24.
    """

    def __init__(self, mantissa_bits: int):
        self.shift = 23 - mantissa_bits
        self.small = 0  # count of magnitudes < SMALL_MAGNITUDE
        self.lo = 0
        self.counts = np.zeros(0, dtype=np.int64)

    def add_counts(self, by_key: np.ndarray) -> None:
        """Add counts indexed by key (length 2**(8 + m)); key `small_key - 1` holds all magnitudes < 2**-24."""
        small_key = 103 << (23 - self.shift)  # key of 2**-24 (float32 exponent field 103)
        self.small += int(by_key[small_key - 1])
        big = by_key[small_key:]
        nz = np.flatnonzero(big)
        if nz.size == 0:
            return
        kmin, kmax = small_key + int(nz[0]), small_key + int(nz[-1])
        self._cover(kmin, kmax)
        self.counts[kmin - self.lo: kmax - self.lo + 1] += by_key[kmin: kmax + 1]

    def _cover(self, kmin: int, kmax: int) -> None:
        if self.counts.size == 0:
            self.lo, self.counts = kmin, np.zeros(kmax - kmin + 1, dtype=np.int64)
            return
        lo = min(self.lo, kmin)
        hi = max(self.lo + self.counts.size - 1, kmax)
        if lo != self.lo or hi != self.lo + self.counts.size - 1:
            grown = np.zeros(hi - lo + 1, dtype=np.int64)
            grown[self.lo - lo: self.lo - lo + self.counts.size] = self.counts
            self.lo, self.counts = lo, grown

    def merge(self, other: "_TailHistogram") -> None:
        self.small += other.small
        if other.counts.size == 0:
            return
        self._cover(other.lo, other.lo + other.counts.size - 1)
        start = other.lo - self.lo
        self.counts[start: start + other.counts.size] += other.counts

    @property
    def total(self) -> int:
        return self.small + int(self.counts.sum())

    def _edges(self, index: int) -> tuple[float, float]:
        key = self.lo + index
        lower = np.array([key << self.shift], dtype=np.uint32).view(np.float32)[0]
        upper_bits = min((key + 1) << self.shift, 0x7F800000)  # capped at +inf
        upper = np.array([upper_bits], dtype=np.uint32).view(np.float32)[0]
        return float(lower), float(upper)

    def buckets(self):
        """The non-empty buckets at or above 2**-24 as `tinysd.quant.mse.Buckets` (float64 edges, ascending)."""
        from .mse import Buckets

        idx = np.flatnonzero(self.counts)
        if idx.size == 0:
            return Buckets.empty()
        keys = (self.lo + idx).astype(np.uint64)
        lower = (keys << np.uint64(self.shift)).astype(np.uint32).view(np.float32).astype(np.float64)
        upper_bits = np.minimum((keys + np.uint64(1)) << np.uint64(self.shift), np.uint64(0x7F800000))
        upper = upper_bits.astype(np.uint32).view(np.float32).astype(np.float64)
        return Buckets(lower, upper, self.counts[idx].astype(np.float64))

    def bounds_of_rank(self, rank: int, descending: bool) -> tuple[float, float]:
        """[lower, upper) magnitude bounds of the `rank`-th (0-based) magnitude, ascending or descending."""
        if not descending and rank < self.small:
            return 0.0, SMALL_MAGNITUDE
        if descending and rank >= self.total - self.small:
            return 0.0, SMALL_MAGNITUDE
        if not descending:
            rank -= self.small
        counts = self.counts[::-1] if descending else self.counts
        i = int(np.searchsorted(np.cumsum(counts), rank, side="right"))
        return self._edges(self.counts.size - 1 - i if descending else i)


class HistogramObserver:
    """Exact counts of all values seen in log-linear buckets, plus their exact min and max.

    The common part of `PercentileObserver` and `MSEObserver`: values are
    rounded to float32 and counted in one `_TailHistogram` of magnitudes for
    x < 0 and one for x >= 0 (m = `mantissa_bits`, default 7: 128 buckets per
    octave, each no wider than 2**-m of the values in it; magnitudes below
    2**-24 share one bucket). Counts are exact integers, so `update` and
    `merge` give the same histogram however the data are batched or split.
    Subclasses define `range()`.
    """

    def __init__(self, mantissa_bits: int = 7, name: str = "tensor"):
        if not isinstance(mantissa_bits, int) or not 0 <= mantissa_bits <= 10:
            raise ValueError(f"mantissa_bits must be an integer in [0, 10], got {mantissa_bits!r}")
        self.mantissa_bits = mantissa_bits
        self.name = name
        self._neg = _TailHistogram(mantissa_bits)  # magnitudes of x < 0
        self._pos = _TailHistogram(mantissa_bits)  # x >= 0
        self._minmax = MinMaxObserver(name)

    @property
    def count(self) -> int:
        return self._minmax.count

    def update(self, x) -> None:
        """Observe all values of `x` (any shape, float or integer); non-finite -> TinySDError."""
        x = _finite_array(x, self.name)
        if x.size == 0:
            return
        with np.errstate(over="ignore"):  # overflow to inf is detected just below
            x32 = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if not (np.isfinite(x32.min()) and np.isfinite(x32.max())):  # float64 beyond float32's range
            raise TinySDError(f"tensor {self.name!r}: values beyond float32 range during calibration")
        bits = x32.view(np.uint32)
        m = self.mantissa_bits
        key = (bits & np.uint32(0x7FFFFFFF)) >> np.uint32(23 - m)  # bucket of |x|
        key = np.maximum(key, np.uint32((103 << m) - 1))  # |x| < 2**-24 -> one "small" key
        key |= (bits >> np.uint32(31)) << np.uint32(8 + m)  # sign bit above the key
        by_key = np.bincount(key, minlength=2 << (8 + m))  # (2 * 2**(8+m),)
        self._pos.add_counts(by_key[: 1 << (8 + m)])
        self._neg.add_counts(by_key[1 << (8 + m):])
        self._minmax.update(x32)

    def merge(self, other: "HistogramObserver") -> None:
        """Add everything `other` has seen (exact); both must use the same mantissa_bits."""
        if other.mantissa_bits != self.mantissa_bits:
            raise ValueError("cannot merge histogram observers with different mantissa_bits")
        self._neg.merge(other._neg)
        self._pos.merge(other._pos)
        self._minmax.merge(other._minmax)


class PercentileObserver(HistogramObserver):
    """Percentile range of all values seen, in bounded memory.

    range() returns (lo, hi) estimating the order statistics x_(k_lo) and
    x_(k_hi) of the n values seen (as float32, sorted ascending, 0-based):

        k_hi = ceil(p/100 * (n - 1))        (numpy's percentile(method="higher"))
        k_lo = floor((1 - p/100) * (n - 1)) (numpy's percentile(method="lower"))

    with p the exact binary value of `percentile`. Values are counted in
    log-linear buckets of |x| (one histogram for x < 0, one for x >= 0; see
    `_TailHistogram`), m = `mantissa_bits` (default 7: 128 buckets per octave).
    hi is the upper edge of x_(k_hi)'s bucket and lo the lower edge of
    x_(k_lo)'s, then clipped to the exact max/min seen, so the range never
    cuts inside the chosen order statistics:

        0 <= hi - x_(k_hi) <= 2**-m * |x_(k_hi)|
        0 <= x_(k_lo) - lo <= 2**-m * |x_(k_lo)|

    for |x_(k)| >= 2**-24; magnitudes below 2**-24 share one bucket, so there
    the bound is 2**-24 absolute (such values quantize like 0 on any grid
    `encoding_from_range` makes). Inputs are rounded to float32 first, which
    moves a float64 value by at most 2**-24 of itself.

    Memory: per sign one count for |x| < 2**-24 and an int64 array over the
    occupied key range: 128 counters (1 KiB) per octave of magnitudes seen
    for m = 7, never more than 2 * 152 * 2**m counters (311 KiB) whatever
    the number of values (`update` also uses a temporary 2 * 2**(8+m)-entry
    bincount, 512 KiB for m = 7); update and
    merge add counts exactly, so the result does not depend on how the data
    were batched or split among observers.
    """

    def __init__(self, percentile: float = 99.99, mantissa_bits: int = 7, name: str = "tensor"):
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        super().__init__(mantissa_bits, name)
        self.percentile = float(percentile)

    def _bounds_of_rank(self, k: int) -> tuple[float, float]:
        """(lower, upper) real-value bounds of the bucket holding the k-th smallest value."""
        n_neg = self._neg.total
        if k < n_neg:  # negatives in ascending order = magnitudes descending
            m_lo, m_hi = self._neg.bounds_of_rank(k, descending=True)
            return -m_hi, -m_lo
        return self._pos.bounds_of_rank(k - n_neg, descending=False)

    def range(self) -> tuple[float, float]:
        n = self.count
        if n == 0:
            raise TinySDError(f"tensor {self.name!r}: no values observed during calibration")
        mn, mx = self._minmax.range()
        p = Fraction(self.percentile) / 100
        k_hi = math.ceil(p * (n - 1))
        k_lo = math.floor((1 - p) * (n - 1))
        lo = max(self._bounds_of_rank(k_lo)[0], mn)
        hi = min(self._bounds_of_rank(k_hi)[1], mx)
        return lo, hi


class MSEObserver(HistogramObserver):
    """The range whose `bits`-bit grid quantizes the values seen with the least squared error.

    Counts values exactly as `PercentileObserver` does (log-linear histogram,
    `HistogramObserver`); `range(bits)` searches the asymmetric grid
    (scale s, offset o, range [o s, (o + n) s] with n = 2**bits - 1) that
    minimises the expected quantize-dequantize error of those counts,
    rounding error inside the range plus `clip_weight` times clipping error
    outside it (`tinysd.quant.mse.mse_range`: the idea of AIMET's
    "tf_enhanced" / SQNR scheme, with an exact error model and a finer
    search). Unlike min-max and percentile ranges, the best range depends on
    the bitwidth: 8-bit grids are coarse, so clipping a few outliers pays;
    16-bit grids are fine, so the search clips far less. `bits` given at
    construction is the default of `range()`.
    """

    def __init__(self, bits: int = 8, clip_weight: float = 1.0, mantissa_bits: int = 7, name: str = "tensor"):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}")
        if not clip_weight > 0:
            raise ValueError(f"clip_weight must be > 0, got {clip_weight!r}")
        super().__init__(mantissa_bits, name)
        self.bits = bits
        self.clip_weight = float(clip_weight)

    def range(self, bits: int | None = None) -> tuple[float, float]:
        """(lo, hi), float64: the MSE-optimal range for a `bits`-bit grid (default: the constructor's)."""
        return mse_range_of(self, self.bits if bits is None else bits, self.clip_weight)


def mse_range_of(observer: HistogramObserver, bits: int, clip_weight: float = 1.0) -> tuple[float, float]:
    """The MSE-optimal `bits`-bit range of everything `observer` (any HistogramObserver, e.g. a
    PercentileObserver) has counted: `tinysd.quant.mse.mse_range` on its buckets, the outermost
    bucket of each sign ending at the exact min / max seen. TinySDError when nothing was seen."""
    from .mse import mse_range

    if observer.count == 0:
        raise TinySDError(f"tensor {observer.name!r}: no values observed during calibration")
    mn, mx = observer._minmax.range()
    neg = observer._neg.buckets().capped(max(-mn, 0.0))
    pos = observer._pos.buckets().capped(max(mx, 0.0))
    return mse_range(neg, pos, mn, mx, bits, clip_weight)


def encoding_from_range(min_value, max_value, bits: int, symmetric: bool = False, axis: int | None = None) -> Encoding:
    """The AIMET encoding of the range [min_value, max_value] on a `bits`-bit grid.

    `min_value`/`max_value` are floats (per-tensor, axis None) or equal-length
    1-D arrays (per-channel along `axis`). All arithmetic is float64,
    elementwise, with n = 2**bits - 1 steps:

    1. Include zero: min = min(min, 0), max = max(max, 0); then clamp both to
       +-0.99 * float32 max (libpymo).
    2. Degenerate ranges (aimet_torch v2 MinMaxEncodingAnalyzer): where
       (max - min) / n < 2**-23, widen: asymmetric max += 2**-23 * n;
       symmetric min -= 2**-23 * ceil(n/2), max += 2**-23 * floor(n/2).
       So min == max (all zeros included) never divides by zero, and no step
       is below 2**-23 (for 16 bits this touches ranges narrower than
       65535 * 2**-23 ~= 0.0078; for 8 bits, narrower than ~3e-5).
    3. Scale and offset (libpymo getComputedEncodings):
       symmetric:  scale = max(max / floor(n/2), -min / ceil(n/2)),
                   offset = -ceil(n/2)           (8 bits: grid [-128, 127] * scale)
       asymmetric: scale = (max - min) / n.
    4. scale is rounded to the nearest float32 (AIMET files and QNN hold fp32
       scales, so the file, this golden model and a device agree exactly).
    5. asymmetric: offset = clip(round_half_away_from_zero(min / scale), -n, 0)
       (C's `round`, as libpymo; aimet_torch v2 rounds ties to even in float32,
       which can differ only at exact .5 ties).
    6. min and max are re-derived as offset * scale and (offset + n) * scale, so
       real 0 is exactly the integer -offset and the grid covers the range to
       within scale/2 at each end.

    Non-finite inputs or min > max raise TinySDError.
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 32:
        raise TinySDError(f"bits must be an integer in [2, 32], got {bits!r}")
    mn = np.array(min_value, dtype=np.float64).reshape(-1)
    mx = np.array(max_value, dtype=np.float64).reshape(-1)
    if axis is None and (mn.size != 1 or mx.size != 1):
        raise TinySDError("per-tensor range needs scalar min and max (give an axis for per-channel ranges)")
    if mn.size != mx.size or mn.size == 0:
        raise TinySDError(f"min has {mn.size} values and max {mx.size}")
    if not (np.all(np.isfinite(mn)) and np.all(np.isfinite(mx))):
        raise TinySDError("range has a non-finite min or max")
    if np.any(mn > mx):
        c = int(np.argmax(mn > mx))
        raise TinySDError(f"range min {mn[c]} > max {mx[c]}")
    n = float(2**bits - 1)
    n_pos, n_neg = math.floor(n / 2), math.ceil(n / 2)

    mn = np.clip(np.minimum(mn, 0.0), -_FLOAT32_LIMIT, 0.0)  # (1)
    mx = np.clip(np.maximum(mx, 0.0), 0.0, _FLOAT32_LIMIT)
    narrow = (mx - mn) / n < MINIMUM_SCALE  # (2)
    if symmetric:
        mn = np.where(narrow, mn - MINIMUM_SCALE * n_neg, mn)
        mx = np.where(narrow, mx + MINIMUM_SCALE * n_pos, mx)
        scale = np.maximum(mx / n_pos, -mn / n_neg)  # (3)
        scale = scale.astype(np.float32).astype(np.float64)  # (4)
        offset = np.full(mn.shape, -float(n_neg))
    else:
        mx = np.where(narrow, mx + MINIMUM_SCALE * n, mx)
        scale = ((mx - mn) / n).astype(np.float32).astype(np.float64)  # (3), (4)
        offset = np.clip(round_half_away_from_zero(mn / scale), -n, 0.0)  # (5)
    return Encoding(bitwidth=int(bits), scale=scale, offset=offset, is_symmetric=bool(symmetric), axis=axis)  # (6)
