"""MSE-optimal quantization ranges, searched on a histogram (the idea of AIMET's "tf_enhanced" / SQNR scheme).

For a tensor whose calibration values were counted in buckets (`Buckets`:
magnitude intervals [a, b) with counts, one set per sign, as
`tinysd.quant.observers.MSEObserver` keeps them), `mse_range` finds the
asymmetric `bits`-bit grid whose quantize-dequantize has the smallest
expected squared error over those values:

    error(s, o) = sum over values x of (x - Q(x))**2,
    Q(x) = s * clip(round(x / s), o, o + n),   n = 2**bits - 1, o in [-n, 0]

i.e. the grid {k s : k = o .. o + n}: step (scale) `s`, range
[lo, hi] = [o s, (o + n) s], which always contains 0 (as `encoding_from_range`
requires). Values inside the range cost their rounding error, values outside
it their clipping error (weighted by `clip_weight`; 1: the plain squared
error; AIMET's SqnrEncodingAnalyzer uses 3).

The expectation is exact for values spread uniformly inside each bucket
(log-linear buckets are at most 2**-7 of their values wide, so this is a fine
model of the data): with G(u) = integral_0^u (t - round(t))**2 dt =
k/12 + r**3/3 (k = the integer nearest u, r = u - k), a bucket [a, b) of c
values costs c / (b - a) * s**3 * (G(b/s) - G(a/s)) of rounding error below a
clipping threshold t, and c / (b - a) * ((b - t)**3 - (a - t)**3) / 3 of
clipping error above it. Rounding errors are prefix-summed over buckets and
clipping errors use suffix sums of the first three moments, so one (s, o)
costs O(log B).

Search, all in float64 (scales rounded to float32, as encodings store them),
each scale with its best offset (a shrinking grid search over the offsets
between "no clipping below" and "no clipping above"): scales
s0 * 2**(-i/4) for i = 0 .. 48 (s0 = (max - min) / n, the min-max scale; so
down to 1/4096 of it); then 17 scales 2**(1/32) apart around the best one;
then 17 scales 2**(1/256) apart around that one (`SCALE_ROUNDS`).
The result is deterministic: a function of the counts, the bucket edges and
the exact min / max only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OCTAVES = 12  # smallest scale tried: the min-max scale / 2**12
#: scales tried, in rounds: (scales per octave, scales each side of the previous round's best);
#: round 1 covers all OCTAVES, each later round the interval between the previous best's neighbours
SCALE_ROUNDS = ((4, None), (32, 8), (256, 8))
OFFSET_GRID = 33  # offsets evaluated per round of the offset search


@dataclass(frozen=True)
class Buckets:
    """Counts of one sign's magnitudes: `count[i]` values in [lower[i], upper[i]), ascending, disjoint.

    Arrays float64, 0 <= lower < upper, upper[i] <= lower[i + 1]. Magnitudes below 2**-24 (which
    every grid `encoding_from_range` makes rounds to 0, at a cost below 2**-48 each) are left out.
    """

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray

    @classmethod
    def empty(cls) -> "Buckets":
        z = np.zeros(0)
        return cls(z, z, z)

    @classmethod
    def from_values(cls, magnitudes, edges) -> "Buckets":
        """Buckets of `magnitudes` (>= 0) between sorted `edges` (a reference model for tests)."""
        e = np.asarray(edges, dtype=np.float64)
        c = np.histogram(np.asarray(magnitudes, dtype=np.float64), bins=e)[0].astype(np.float64)
        keep = c > 0
        return cls(e[:-1][keep], e[1:][keep], c[keep])

    def capped(self, max_magnitude: float) -> "Buckets":
        """The same counts with the last bucket ending at `max_magnitude`, the largest magnitude seen.

        A last bucket whose values all equal its lower edge m becomes [m (1 - 2**-20), m]: narrow,
        but wide enough for its moments to stay accurate in float64 (a previous bucket ending
        above m (1 - 2**-20) is cut there: its values are below m, the cut moves none by more
        than 2**-20 of m).
        """
        if self.count.size == 0:
            return self
        m = float(max_magnitude)
        lower, upper = self.lower.copy(), self.upper.copy()
        upper[-1] = min(upper[-1], m)
        if lower[-1] >= upper[-1]:  # a point mass at m
            lower[-1] = m * (1.0 - 2.0**-20)
            if lower.size > 1:
                upper[-2] = min(upper[-2], lower[-1])
        if np.any(upper <= lower):
            raise ValueError("buckets: empty interval after capping (max_magnitude below the counted values?)")
        return Buckets(lower, upper, self.count)


def rounding_integral(u: np.ndarray) -> np.ndarray:
    """G(u) = integral_0^u (t - round(t))**2 dt = k/12 + r**3/3, k = floor(u + 1/2), r = u - k (float64)."""
    u = np.asarray(u, dtype=np.float64)
    k = np.floor(u + 0.5)
    r = u - k
    return k / 12.0 + r * r * r / 3.0


class _Side:
    """Expected squared error of one sign's values against a clipping threshold t >= 0 (magnitude)."""

    def __init__(self, b: Buckets, clip_weight: float):
        self.a, self.b, self.c = b.lower, b.upper, b.count
        self.dens = self.c / (self.b - self.a)  # values per unit length
        self.w = float(clip_weight)
        # suffix sums of the moments sum c, sum c x, sum c x^2 (x uniform in each bucket)
        m0 = self.c
        m1 = self.dens * (self.b**2 - self.a**2) / 2.0
        m2 = self.dens * (self.b**3 - self.a**3) / 3.0
        self.s0, self.s1, self.s2 = (np.concatenate([np.cumsum(m[::-1])[::-1], [0.0]]) for m in (m0, m1, m2))
        self.edges = np.unique(np.concatenate([self.a, self.b]))  # adjacent buckets share an edge
        self.ia = np.searchsorted(self.edges, self.a)
        self.ib = np.searchsorted(self.edges, self.b)

    def prepare(self, scales: np.ndarray) -> np.ndarray:
        """Prefix sums of each bucket's rounding error, (S, B + 1), for scales (S,)."""
        s = scales[:, None]
        g = rounding_integral(self.edges / s)  # (S, E)
        r = self.dens * s**3 * (g[:, self.ib] - g[:, self.ia])  # (S, B)
        return np.concatenate([np.zeros((len(scales), 1)), np.cumsum(r, axis=1)], axis=1)

    def error(self, prefix: np.ndarray, rows: np.ndarray, scales: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Error at thresholds t (any shape); rows/scales: each t's row of `prefix` and its scale."""
        if self.c.size == 0:
            return np.zeros(t.shape)
        j = np.searchsorted(self.b, t, side="right")  # buckets [0, j) lie below t
        jj = np.minimum(j, self.c.size - 1)
        straddle = (j < self.c.size) & (self.a[jj] < t)
        a, dens = self.a[jj], self.dens[jj]
        g = rounding_integral(t / scales) - rounding_integral(a / scales)
        part_round = np.where(straddle, dens * scales**3 * g, 0.0)
        part_clip = np.where(straddle, dens * (self.b[jj] - t) ** 3 / 3.0, 0.0)
        k = j + straddle  # first bucket entirely above t
        clip = self.s2[k] - 2.0 * t * self.s1[k] + t * t * self.s0[k]  # sum c E[(x - t)^2] over buckets >= k
        return prefix[rows, j] + part_round + self.w * (part_clip + np.maximum(clip, 0.0))


def _search(neg: _Side, pos: _Side, scales: np.ndarray, mn: float, mx: float, n: int):
    """Best (error, scale, offset) over `scales`, each with its best offset (module docstring)."""
    S = scales.size
    pre_n, pre_p = neg.prepare(scales), pos.prepare(scales)
    rows = np.arange(S)[:, None]
    s = scales[:, None]
    o_a = np.clip(np.floor(mn / scales), -n, 0)  # lowest offset worth trying: lo reaches min
    o_b = np.clip(np.ceil(mx / scales) - n, -n, 0)  # highest: hi reaches max
    lo_w, hi_w = np.minimum(o_a, o_b), np.maximum(o_a, o_b)

    def cost(o):  # o: (S, K) offsets
        return neg.error(pre_n, rows, s, -o * s) + pos.error(pre_p, rows, s, (o + n) * s)

    while True:
        span = hi_w - lo_w
        o = np.round(lo_w[:, None] + span[:, None] * np.linspace(0.0, 1.0, OFFSET_GRID)[None, :])  # (S, K)
        e = cost(o)
        i = np.argmin(e, axis=1)
        best_o = o[np.arange(S), i]
        best_e = e[np.arange(S), i]
        step = np.ceil(span / (OFFSET_GRID - 1))
        if np.all(step <= 1):
            break
        lo_w = np.maximum(lo_w, best_o - step)
        hi_w = np.minimum(hi_w, best_o + step)
    k = int(np.argmin(best_e))
    return float(best_e[k]), float(scales[k]), int(best_o[k])


def expected_error(neg: Buckets, pos: Buckets, scale: float, offset: int, bits: int, clip_weight: float = 1.0) -> float:
    """The modelled squared error (module docstring) of the grid (scale, offset) with n = 2**bits - 1
    steps over the counted values: the quantity `mse_range` minimises (float64)."""
    n = 2**int(bits) - 1
    s = np.array([float(scale)])
    sides = _Side(neg, clip_weight), _Side(pos, clip_weight)
    rows, o = np.zeros((1, 1), dtype=np.intp), np.array([[float(offset)]])
    e = sides[0].error(sides[0].prepare(s), rows, s[:, None], -o * s[:, None])
    e = e + sides[1].error(sides[1].prepare(s), rows, s[:, None], (o + n) * s[:, None])
    return float(e[0, 0])


def mse_range(neg: Buckets, pos: Buckets, min_value: float, max_value: float, bits: int,
              clip_weight: float = 1.0) -> tuple[float, float]:
    """(lo, hi) = (o s, (o + n) s) of the grid with the least expected squared error (module docstring).

    neg: buckets of the magnitudes of the negative values, pos: of the non-negative ones;
    min_value / max_value: the exact extremes seen (they bound the outer buckets). A range with
    no width (all values 0) is returned as (min(min, 0), max(max, 0)).
    """
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}")
    if not clip_weight > 0:
        raise ValueError(f"clip_weight must be > 0, got {clip_weight!r}")
    n = 2**int(bits) - 1
    mn, mx = min(float(min_value), 0.0), max(float(max_value), 0.0)
    if not mx > mn:
        return mn, mx
    neg_s, pos_s = _Side(neg, clip_weight), _Side(pos, clip_weight)
    s0 = (mx - mn) / n

    def f32(x):
        return np.asarray(x, dtype=np.float32).astype(np.float64)

    s = o = None
    for per_octave, each_side in SCALE_ROUNDS:
        if each_side is None:
            exponents = -np.arange(OCTAVES * per_octave + 1) / per_octave
            scales = s0 * np.exp2(exponents)
        else:
            scales = np.minimum(s * np.exp2(np.arange(-each_side, each_side + 1) / per_octave), s0)
        _, s, o = _search(neg_s, pos_s, np.unique(f32(scales)), mn, mx, n)
    return o * s, (o + n) * s
