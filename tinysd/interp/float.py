"""The float32 NumPy interpreter of the ops interface (`tinysd/nn/ops.py`).

Tensors are float32 `np.ndarray`s. Products (linear, conv2d, matmul) run on
float32 BLAS; normalisation statistics are computed in float64 and the
result rounded once to float32; GELU is x Phi(x) in float64, rounded once
(`tinysd/interp/gelu.py`: erfc by a fitted polynomial, vectorized); softmax
is a vectorized numba row kernel (float32 exp, float64 row sum), and
attention runs it between two sgemms in tiles of query rows. Everything
else is plain float32 NumPy. This matches torch's float32 results to
float32 rounding (not bit for bit: summation orders differ).
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import TinySDError
from ..kernels.blas import blas_threads
from ..kernels.threads import run_ranges
from ..memory import ATTENTION_TILE_ELEMENTS  # integer interpreter: scores above this many elements are tiled
from ..memory import FLOAT_ATTENTION_TILE_SCORES  # this engine's tile: scores per thread
from . import winograd
from .gelu import gelu_kernel

log = logging.getLogger(__name__)

F32 = np.float32

# im2col buffers are built in row bands of at most this many float32 elements
_IM2COL_BUDGET = 1 << 24  # 64 MiB


@functools.lru_cache(maxsize=None)
def _lane_sums():
    """(sum64, sqdev64) (numba, nogil): the float64 sum of a float32 row, and of its squared deviations from
    `mean`, each reassociated into the compiler's vector lanes (fastmath "reassoc" on these two only)."""
    import numba

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
    def sum64(v):
        tot = 0.0
        for i in range(v.shape[0]):
            tot += np.float64(v[i])
        return tot

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
    def sqdev64(v, mean):
        tot = 0.0
        for i in range(v.shape[0]):
            d = np.float64(v[i]) - mean
            tot += d * d
        return tot

    return sum64, sqdev64


# float32 exp for x <= 0 (Cephes expf): x = k ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-7 polynomial, 2**k
# from the exponent bits; relative error below 1 ulp (tests/test_float_interp.py); x < -87 is taken as -87
# (exp(-87) = 1.6e-38: nothing next to the row maximum's 1).
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


@functools.lru_cache(maxsize=None)
def _softmax_kernel():
    """softmax_rows(r0, r1, x, causal_t) (numba, nogil): rows r0..r1-1 of x (R, S) float32, in place.

    x[r, j] <- e_j / float32(sum_j e_j), e_j = exp(x[r, j] - max_j x[r, j]): float32 exp (`_EXP_POLY`), the
    sum in float64 in the order the compiler's vector lanes give. `causal_t` > 0: row r is query
    i = r % causal_t and only columns j <= i take part (the rest are 0). Every loop vectorizes: the maximum
    is taken over order-preserving int32 keys of the float32 bits (a float max reduction would not).
    """
    import numba

    c0, c1, c2, c3, c4, c5 = (np.float32(c) for c in _EXP_POLY)
    log2e, ln2_hi, ln2_lo = np.float32(1.4426950408889634), np.float32(0.693359375), np.float32(-2.12194440e-4)
    sign_off = np.int32(0x7FFFFFFF)
    sum64, _ = _lane_sums()

    @numba.njit(cache=True, nogil=True)
    def softmax_rows(r0, r1, x, causal_t):
        S = x.shape[1]
        xi = x.view(np.int32)
        ibuf = np.empty(S, np.int32)  # 2**k of each exp, as float32 bits
        fbuf = ibuf.view(np.float32)
        mbits = np.empty(1, np.int32)
        mval = mbits.view(np.float32)
        for r in range(r0, r1):
            lim = S if causal_t == 0 else min(r % causal_t + 1, S)
            row = x[r, :lim]
            keys = xi[r, :lim]
            m = np.int32(-2147483648)
            for j in range(lim):  # key(f) = bits(f) ^ (0x7fffffff if f < 0): int32 order = float order
                m = max(m, keys[j] ^ ((keys[j] >> 31) & sign_off))
            mbits[0] = m ^ ((m >> 31) & sign_off)  # the key is its own inverse
            mx = mval[0]
            for j in range(lim):  # exp(x - max), x - max <= 0
                t = max(row[j] - mx, np.float32(-87.0))
                kf = np.floor(t * log2e + np.float32(0.5))
                u = t - kf * ln2_hi - kf * ln2_lo
                p = ((((c0 * u + c1) * u + c2) * u + c3) * u + c4) * u + c5
                row[j] = p * (u * u) + u + np.float32(1.0)
                ibuf[j] = (np.int32(kf) + 127) << 23  # the float32 2**k, k in [-126, 0]
            for j in range(lim):
                row[j] = row[j] * fbuf[j]
            inv = np.float32(sum64(row))
            for j in range(lim):
                row[j] = row[j] / inv
            x[r, lim:] = 0.0

    return softmax_rows


def _attention_tiles(j0, j1, q, k, v, out, rows):
    """Attention tiles j0..j1-1 (tile j: head j // n, query rows (j % n) * rows.. of n per head): scores
    q k (sgemm), softmax in place (`_softmax_kernel`), times v (sgemm). q (BH, T, d), k (BH, d, S),
    v (BH, S, dv), out (BH, T, dv). One (rows, S) buffer of scores; NumPy releases the GIL in both products."""
    T, S = q.shape[1], k.shape[2]
    n = -(-T // rows)
    scores = np.empty((min(rows, T), S), dtype=F32)  # (rows, S)
    softmax_rows = _softmax_kernel()
    for j in range(j0, j1):
        bh, t0 = j // n, (j % n) * rows
        t1 = min(T, t0 + rows)
        s = scores[: t1 - t0]
        np.matmul(q[bh, t0:t1], k[bh], out=s)  # (rows, S)
        softmax_rows(0, t1 - t0, s, 0)
        np.matmul(s, v[bh], out=out[bh, t0:t1])  # (rows, dv)


@functools.lru_cache(maxsize=None)
def _erf_ufunc():
    """A float64 -> float64 ufunc: math.erf (numba)."""
    import numba

    @numba.vectorize(["float64(float64)"], cache=True)
    def erf(x):
        return math.erf(x)

    return erf


def erf(x) -> np.ndarray:
    """erf of a float array, in float64 (libm's erf, elementwise)."""
    return _erf_ufunc()(np.ascontiguousarray(x, dtype=np.float64))


def normalized_group(x: np.ndarray, groups: int, eps: float) -> np.ndarray:
    """GroupNorm without its affine, float64: (x - mean_g) / sqrt(var_g + eps) per (sample, group)."""
    N = x.shape[0]
    xg = x.reshape(N, groups, -1).astype(np.float64)  # (N, G, C/G * spatial)
    mean = xg.mean(axis=-1, keepdims=True)
    var = np.square(xg - mean).mean(axis=-1, keepdims=True)
    return ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)


def normalized_layer(x: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm without its affine, float64, over the last axis."""
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = np.square(x64 - mean).mean(axis=-1, keepdims=True)
    return (x64 - mean) / np.sqrt(var + eps)


@functools.lru_cache(maxsize=None)
def _norm_kernel():
    """norm_rows(r0, r1, x, G, Cg, P, w, b, eps, out) (numba, nogil) for rows r0..r1-1 of x (N*G, Cg*P) float32:
    row r is group r % G; mean and variance (of the row, divided by its length) in float64, then
    out = float32((x - mean) / sqrt(var + eps) * w[c] + b[c]) in float64, c = (r % G) * Cg + i // P.
    The float64 sums are taken in the compiler's vector lanes (`_lane_sums`); every loop vectorizes."""
    import numba

    sum64, sqdev64 = _lane_sums()

    @numba.njit(cache=True, nogil=True, error_model="numpy")  # no ZeroDivisionError branch: the divide vectorizes
    def norm_rows(r0, r1, x, G, Cg, P, w, b, eps, out):
        n = x.shape[1]
        for r in range(r0, r1):
            xr, orow = x[r], out[r]  # rows sliced: indices from 0 vectorize (no wraparound)
            mean = sum64(xr) / n
            sd = math.sqrt(sqdev64(xr, mean) / n + eps)
            c0 = (r % G) * Cg
            wr, br = w[c0:c0 + Cg], b[c0:c0 + Cg]
            if P == 1:  # LayerNorm: one channel per element
                for i in range(n):
                    orow[i] = np.float32((np.float64(xr[i]) - mean) / sd * np.float64(wr[i]) + np.float64(br[i]))
            else:
                for cl in range(Cg):
                    wc, bc = np.float64(wr[cl]), np.float64(br[cl])
                    xs, os = xr[cl * P:(cl + 1) * P], orow[cl * P:(cl + 1) * P]
                    for p in range(P):
                        os[p] = np.float32((np.float64(xs[p]) - mean) / sd * wc + bc)

    return norm_rows


def _norm(x: np.ndarray, G: int, Cg: int, P: int, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """x viewed as (rows, G... ) rows of Cg * P elements, normalised with `_norm_kernel`, in x's shape (float32)."""
    xr = np.ascontiguousarray(x, dtype=F32).reshape(-1, Cg * P)  # (N*G, Cg*P)
    out = np.empty_like(xr)
    run_ranges(_norm_kernel(), xr.shape[0], xr.shape[1], xr, G, Cg, P, np.ascontiguousarray(w, dtype=F32),
               np.ascontiguousarray(b, dtype=F32), float(eps), out)  # rows in parallel
    return out.reshape(x.shape)


def _pad4(padding) -> tuple[int, int, int, int]:
    """An int or (top, bottom, left, right) -> (top, bottom, left, right)."""
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        return (p, p, p, p)
    t = tuple(int(v) for v in padding)
    if len(t) != 4 or min(t) < 0:
        raise ValueError(f"padding must be an int or (top, bottom, left, right) >= 0, got {padding!r}")
    return t


def conv2d_nchw(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, padding) -> np.ndarray:
    """float32 NCHW convolution (cross-correlation, as torch), zero padding, no dilation/groups.

    x (N, C, H, W), w (O, C, KH, KW), b (O,) or None -> (N, O, Ho, Wo) with
    Ho = (H + top + bottom - KH) // stride + 1. im2col + one GEMM per row band.
    """
    N, C, H, W = x.shape
    O, Cw, KH, KW = w.shape
    if Cw != C:
        raise ValueError(f"conv2d: input has {C} channels, weight expects {Cw}")
    top, bottom, left, right = _pad4(padding)
    if top or bottom or left or right:
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    Hp, Wp = x.shape[2], x.shape[3]
    Ho, Wo = (Hp - KH) // stride + 1, (Wp - KW) // stride + 1
    if Ho < 1 or Wo < 1:
        raise ValueError(f"conv2d: input {H}x{W} is smaller than the kernel {KH}x{KW}")
    if KH == KW == 1:
        xs = x[:, :, : (Ho - 1) * stride + 1 : stride, : (Wo - 1) * stride + 1 : stride]
        out = np.matmul(w.reshape(O, C), xs.reshape(N, C, Ho * Wo))  # (N, O, Ho*Wo)
        out = out.reshape(N, O, Ho, Wo)
    else:
        w2 = w.reshape(O, C * KH * KW)  # (O, C*KH*KW), column order (c, kh, kw)
        win = sliding_window_view(x, (KH, KW), axis=(2, 3))  # (N, C, Hp-KH+1, Wp-KW+1, KH, KW)
        win = win[:, :, ::stride, ::stride][:, :, :Ho, :Wo]  # (N, C, Ho, Wo, KH, KW)
        out = np.empty((N, O, Ho, Wo), dtype=F32)
        rows = max(1, _IM2COL_BUDGET // (C * KH * KW * Wo))
        for n in range(N):
            for r0 in range(0, Ho, rows):
                r1 = min(Ho, r0 + rows)
                cols = win[n, :, r0:r1].transpose(0, 3, 4, 1, 2).reshape(C * KH * KW, (r1 - r0) * Wo)  # (C*KH*KW, rows*Wo)
                out[n, :, r0:r1] = (w2 @ cols).reshape(O, r1 - r0, Wo)
    if b is not None:
        out += b[None, :, None, None]
    return out


class FloatInterpreter:
    """Runs a network graph in float32 NumPy.

    params: parameter name -> array (any float dtype; converted to float32
    once, on first use). network: the network's name ("text_encoder", "unet",
    "vae"), used in tensor names and error messages. conv_winograd: 3x3 stride-1
    convolutions with padding 1 by Winograd F(2x2, 3x3) where it is faster
    (`winograd.worth_it`; other floats than im2col's, same accuracy): set for
    generation (`models.from_params`); the default, im2col, keeps the floats that
    calibration and AdaRound have always seen.
    """

    def __init__(self, params: Mapping[str, np.ndarray], network: str, conv_winograd: bool = False):
        self.params = params
        self.network = network
        self.conv_winograd = conv_winograd
        self._f32: dict[str, np.ndarray] = {}
        self.attention_tile_elements = ATTENTION_TILE_ELEMENTS

    # --- parameters ---------------------------------------------------------
    def param(self, name: str) -> np.ndarray:
        """Parameter `name` as float32; TinySDError naming it when missing."""
        p = self._f32.get(name)
        if p is None:
            try:
                raw = self.params[name]
            except KeyError:
                raise TinySDError(f"{self.network}: missing parameter {name}") from None
            p = np.ascontiguousarray(raw, dtype=F32)
            self._f32[name] = p
        return p

    def _bias(self, name: str) -> np.ndarray | None:
        key = f"{name}.bias"
        return self.param(key) if key in self.params else None

    # --- network boundary -------------------------------------------------
    def input(self, x, name: str) -> np.ndarray:
        return np.array(x, dtype=F32)  # a private copy

    def output(self, x, name: str) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=F32)

    # --- parameterised ops -------------------------------------------------
    def embedding(self, ids, name: str) -> np.ndarray:
        w = self.param(f"{name}.weight")  # (V, D)
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= w.shape[0]):
            raise TinySDError(f"{self.network}: {name}: index out of range 0..{w.shape[0] - 1}")
        return w[ids]  # (..., D)

    def linear(self, x: np.ndarray, name: str) -> np.ndarray:
        w = self.param(f"{name}.weight")  # (OUT, IN)
        if x.shape[-1] != w.shape[1]:
            raise ValueError(f"{name}: input has {x.shape[-1]} features, weight expects {w.shape[1]}")
        lead = x.shape[:-1]
        y = x.reshape(-1, x.shape[-1]) @ w.T  # (M, OUT)
        b = self._bias(name)
        if b is not None:
            y += b
        return y.reshape(*lead, w.shape[0])

    def conv2d(self, x: np.ndarray, name: str, stride: int = 1, padding=0) -> np.ndarray:
        w = self.param(f"{name}.weight")
        if (self.conv_winograd and w.shape[2:] == (3, 3) and stride == 1 and _pad4(padding) == (1, 1, 1, 1)
                and x.ndim == 4 and x.shape[1] == w.shape[1] and winograd.worth_it(*x.shape)):
            return winograd.conv3x3_winograd(x, w, self._bias(name))
        return conv2d_nchw(x, w, self._bias(name), stride, padding)

    def group_norm(self, x: np.ndarray, name: str, groups: int, eps: float) -> np.ndarray:
        """GroupNorm: statistics of each (sample, group) in float64, result rounded once (`_norm_kernel`)."""
        C = x.shape[1]
        P = int(np.prod(x.shape[2:], dtype=np.int64))
        if C % groups:
            raise ValueError(f"{name}: {groups} groups do not divide {C} channels")
        return _norm(x, groups, C // groups, P, self.param(f"{name}.weight"), self.param(f"{name}.bias"), eps)

    def layer_norm(self, x: np.ndarray, name: str, eps: float) -> np.ndarray:
        """LayerNorm over the last axis: statistics in float64, result rounded once (`_norm_kernel`)."""
        D = x.shape[-1]
        return _norm(x, 1, D, 1, self.param(f"{name}.weight"), self.param(f"{name}.bias"), eps)

    # --- elementwise / reductions -------------------------------------------
    def silu(self, x: np.ndarray, name: str) -> np.ndarray:
        with np.errstate(over="ignore"):
            return x / (F32(1) + np.exp(-x))

    def gelu(self, x: np.ndarray, name: str) -> np.ndarray:
        xf = np.ascontiguousarray(x, dtype=F32)
        out = np.empty_like(xf)
        run_ranges(gelu_kernel(), xf.size, 1, xf.reshape(-1), out.reshape(-1))  # elements in parallel
        return out

    def quick_gelu(self, x: np.ndarray, name: str) -> np.ndarray:
        with np.errstate(over="ignore"):
            return x / (F32(1) + np.exp(F32(-1.702) * x))

    def softmax(self, x: np.ndarray, name: str, causal: bool = False) -> np.ndarray:
        S = x.shape[-1]
        out = np.array(x, dtype=F32, order="C").reshape(-1, S)  # (rows, S), a copy computed in place
        if out.shape[0]:
            run_ranges(_softmax_kernel(), out.shape[0], S, out, x.shape[-2] if causal else 0)  # rows in parallel
        return out.reshape(x.shape)

    def matmul(self, a: np.ndarray, b: np.ndarray, name: str, alpha: float = 1.0) -> np.ndarray:
        if alpha != 1.0:  # scale the smaller operand: alpha (a @ b) up to float32 rounding
            if a.size <= b.size:
                a = a * F32(alpha)
            else:
                b = b * F32(alpha)
        return np.matmul(a, b)  # (..., M, N)

    #: multihead_attention sends every attention, however small, to `attention` (tinysd/nn/layers.py), which
    #: fuses it. The calibrating interpreter (it overrides matmul / softmax to observe them) computes the three
    #: ops instead: its outputs agree with this engine's to float32 rounding, not bit for bit.
    fuse_attention = True

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, name: str, alpha: float = 1.0,
                  causal: bool = False) -> np.ndarray:
        """softmax(alpha q k [causal]) v (ops `{name}.scores`, `.probs`, `.context`), fused: in tiles of query
        rows (`_attention_tiles`: sgemm, softmax rows, sgemm), so only one tile of scores per thread is stored.

        q (B, H, T, d), k (B, H, d, S), v (B, H, S, d) -> (B, H, T, d) float32. alpha scales the operand
        `matmul` would scale (the smaller of q and k), rounded to float32 as there. Tiles run on
        `thread_count()` threads with BLAS pinned to one thread each (`blas_threads`); where BLAS's count
        cannot be set, on the calling thread. As the three ops when causal or when a subclass overrides
        `matmul` / `softmax` (the calibrating interpreter observes them).
        """
        B, H, T, d = q.shape
        S = k.shape[-1]
        own = type(self).matmul is FloatInterpreter.matmul and type(self).softmax is FloatInterpreter.softmax
        if causal or not own or not self.fuse_attention or T == 0 or S == 0:
            scores = self.matmul(q, k, f"{name}.scores", alpha=alpha)
            return self.matmul(self.softmax(scores, f"{name}.probs", causal=causal), v, f"{name}.context")
        if alpha != 1.0:
            if q.size <= k.size:
                q = q * F32(alpha)
            else:
                k = k * F32(alpha)
        q3 = np.ascontiguousarray(q, dtype=F32).reshape(B * H, T, d)  # (BH, T, d)
        k3 = np.ascontiguousarray(k, dtype=F32).reshape(B * H, d, S)  # (BH, d, S)
        v3 = np.ascontiguousarray(v, dtype=F32).reshape(B * H, S, v.shape[-1])  # (BH, S, d)
        out = np.empty((B * H, T, v.shape[-1]), dtype=F32)  # (BH, T, d)
        rows = max(1, min(T, FLOAT_ATTENTION_TILE_SCORES // S))
        tiles = B * H * -(-T // rows)
        with blas_threads(1) as pinned:
            if pinned:
                run_ranges(_attention_tiles, tiles, rows * S * d, q3, k3, v3, out, rows)
            else:
                _attention_tiles(0, tiles, q3, k3, v3, out, rows)
        return out.reshape(B, H, T, v.shape[-1])

    def add(self, a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
        return np.add(a, b, dtype=F32)

    def mul(self, a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
        return np.multiply(a, b, dtype=F32)

    def scale(self, x: np.ndarray, factor: float, name: str) -> np.ndarray:
        return x * F32(factor)

    def concat(self, xs: Sequence[np.ndarray], axis: int, name: str) -> np.ndarray:
        return np.concatenate(xs, axis=axis)

    def upsample_nearest2x(self, x: np.ndarray, name: str) -> np.ndarray:
        N, C, H, W = x.shape
        y = np.broadcast_to(x[:, :, :, None, :, None], (N, C, H, 2, W, 2))  # (N, C, H, 2, W, 2)
        return y.reshape(N, C, 2 * H, 2 * W)

    # --- layout ----------------------------------------------------------------
    def reshape(self, x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        return np.reshape(x, tuple(shape))

    def transpose(self, x: np.ndarray, axes: Sequence[int]) -> np.ndarray:
        return np.transpose(x, tuple(axes))

    def split(self, x: np.ndarray, sections: int, axis: int) -> list[np.ndarray]:
        return np.split(x, sections, axis=axis)
