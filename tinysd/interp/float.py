"""The float32 NumPy interpreter of the ops interface (`tinysd/nn/ops.py`).

Tensors are float32 `np.ndarray`s. Products (linear, conv2d, matmul) run on
float32 BLAS; normalisation statistics are computed in float64 and the
result rounded once to float32; GELU is computed in float64 with an exact
erf and rounded once (numba); softmax is one fused numba row kernel (float32
exp, float64 row sum). Everything else is plain float32 NumPy. This matches
torch's float32 results to float32 rounding (not bit for bit: summation
orders differ).
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import TinySDError
from ..kernels.threads import run_ranges
from ..memory import ATTENTION_TILE_ELEMENTS  # integer interpreter: scores above this many elements are tiled

log = logging.getLogger(__name__)

F32 = np.float32

# im2col buffers are built in row bands of at most this many float32 elements
_IM2COL_BUDGET = 1 << 24  # 64 MiB


@functools.lru_cache(maxsize=None)
def _gelu_kernel():
    """gelu_range(i0, i1, x, out): out[i] = 0.5 x (1 + erf(x / sqrt 2)) in float64, rounded once to float32, for
    i in i0..i1-1 of flat float32 arrays (numba, nogil: ranges run on threads)."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def gelu_range(i0, i1, x, out):
        for i in range(i0, i1):
            xd = np.float64(x[i])
            out[i] = np.float32(0.5 * xd * (1.0 + math.erf(xd * 0.7071067811865476)))

    return gelu_range


@functools.lru_cache(maxsize=None)
def _softmax_kernel():
    """Row softmax, fused (numba): out[r, j] = exp(x[r, j] - max_r) / sum_r, float32 in and out.

    Rows are the flattened leading axes. `causal_t` > 0: row r is query
    i = r % causal_t and only columns j <= i take part (the rest are 0). exp
    is float32, the row sum is accumulated in float64.
    """
    import numba

    @numba.njit(cache=True)
    def softmax_rows(x, out, causal_t):
        R, S = x.shape
        for r in range(R):
            lim = S if causal_t == 0 else min(r % causal_t + 1, S)
            m = x[r, 0]
            for j in range(1, lim):
                if x[r, j] > m:
                    m = x[r, j]
            s = 0.0
            for j in range(lim):
                e = np.exp(x[r, j] - m)
                out[r, j] = e
                s += e
            inv = np.float32(s)
            for j in range(lim):
                out[r, j] = out[r, j] / inv
            for j in range(lim, S):
                out[r, j] = 0.0

    return softmax_rows


# float32 exp for x <= 0 (Cephes expf): x = k ln2 + r, |r| <= ln2 / 2, exp(r) by a degree-7 polynomial, 2**k
# from the exponent bits; relative error below 1 ulp (tests/test_float_interp.py); x < -87 is taken as -87
# (exp(-87) = 1.6e-38: nothing next to the row maximum's 1).
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


@functools.lru_cache(maxsize=None)
def _attention_kernel():
    """Fused attention rows (numba, nogil): softmax(q k) v one query row at a time, float32.

    attention_rows(r0, r1, q, k, v, T, out) for rows r0..r1-1 of q (BH*T, d) (row r belongs to head bh = r // T),
    k (BH, d, S), v (BH, S, dv), out (BH*T, dv): scores s_j = sum_c q[r, c] k[bh, c, j] (float32, c in order),
    p_j = exp(s_j - max s) / float32(sum_j exp(s_j - max s)) (float32 exp, see _EXP_POLY; the sum in
    float64), out[r] = sum_j p_j v[bh, j] (float32, j in order). Two rows of a head are computed together (they
    share the loads of k and v; each row's sums keep their order). Only two rows of scores are alive per thread.
    """
    import numba

    c0, c1, c2, c3, c4, c5 = (np.float32(c) for c in _EXP_POLY)
    log2e, ln2_hi, ln2_lo = np.float32(1.4426950408889634), np.float32(0.693359375), np.float32(-2.12194440e-4)

    @numba.njit(cache=True, nogil=True, inline="always")
    def exp_row(s, ibuf, fbuf):  # s[:] = exp(s[:]) for s <= 0; returns the float64 sum
        for j in range(s.shape[0]):
            x = max(s[j], np.float32(-87.0))
            kf = np.floor(x * log2e + np.float32(0.5))
            r = x - kf * ln2_hi - kf * ln2_lo
            p = ((((c0 * r + c1) * r + c2) * r + c3) * r + c4) * r + c5
            s[j] = p * (r * r) + r + np.float32(1.0)
            ibuf[j] = (np.int32(kf) + 127) << 23  # the float32 2**k, k in [-126, 0]
        tot = 0.0
        for j in range(s.shape[0]):
            e = s[j] * fbuf[j]
            s[j] = e
            tot += e
        return tot

    @numba.njit(cache=True, nogil=True, inline="always")
    def softmax_row(s, ibuf, fbuf):  # s[:] = exp(s - max s) / float32(float64 sum)
        m = s[0]
        for j in range(1, s.shape[0]):
            m = max(m, s[j])
        for j in range(s.shape[0]):
            s[j] -= m
        inv = np.float32(exp_row(s, ibuf, fbuf))
        for j in range(s.shape[0]):
            s[j] = s[j] / inv

    @numba.njit(cache=True, nogil=True)
    def attention_rows(r0, r1, q, k, v, T, out):
        d, S, dv = q.shape[1], k.shape[2], v.shape[2]
        s0 = np.empty(S, np.float32)  # (S,) scores / probabilities of row r
        s1 = np.empty(S, np.float32)  # (S,) of row r + 1
        ibuf = np.empty(S, np.int32)
        fbuf = ibuf.view(np.float32)
        a0 = np.empty(dv, np.float32)
        a1 = np.empty(dv, np.float32)
        r = r0
        while r < r1:
            pair = r + 1 < r1 and (r + 1) // T == r // T  # two rows of one head share each load of k and v
            kk = k[r // T]  # (d, S)
            vv = v[r // T]  # (S, dv)
            s0[:] = 0.0
            s1[:] = 0.0
            c = 0
            while c + 4 <= d:  # four terms per pass over the row, added in the order of c
                q0, q1, q2, q3 = q[r, c], q[r, c + 1], q[r, c + 2], q[r, c + 3]
                if pair:
                    u0, u1, u2, u3 = q[r + 1, c], q[r + 1, c + 1], q[r + 1, c + 2], q[r + 1, c + 3]
                    for j in range(S):
                        k0, k1, k2, k3 = kk[c, j], kk[c + 1, j], kk[c + 2, j], kk[c + 3, j]
                        s0[j] = s0[j] + q0 * k0 + q1 * k1 + q2 * k2 + q3 * k3
                        s1[j] = s1[j] + u0 * k0 + u1 * k1 + u2 * k2 + u3 * k3
                else:
                    for j in range(S):
                        s0[j] = s0[j] + q0 * kk[c, j] + q1 * kk[c + 1, j] + q2 * kk[c + 2, j] + q3 * kk[c + 3, j]
                c += 4
            while c < d:
                for j in range(S):
                    s0[j] += q[r, c] * kk[c, j]
                if pair:
                    for j in range(S):
                        s1[j] += q[r + 1, c] * kk[c, j]
                c += 1
            softmax_row(s0, ibuf, fbuf)
            if pair:
                softmax_row(s1, ibuf, fbuf)
            a0[:] = 0.0
            a1[:] = 0.0
            j = 0
            while j + 4 <= S:  # four terms per pass over the accumulator, in the order of j
                p0, p1, p2, p3 = s0[j], s0[j + 1], s0[j + 2], s0[j + 3]
                if pair:
                    w0, w1, w2, w3 = s1[j], s1[j + 1], s1[j + 2], s1[j + 3]
                    for c in range(dv):
                        v0, v1, v2, v3 = vv[j, c], vv[j + 1, c], vv[j + 2, c], vv[j + 3, c]
                        a0[c] = a0[c] + p0 * v0 + p1 * v1 + p2 * v2 + p3 * v3
                        a1[c] = a1[c] + w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3
                else:
                    for c in range(dv):
                        a0[c] = a0[c] + p0 * vv[j, c] + p1 * vv[j + 1, c] + p2 * vv[j + 2, c] + p3 * vv[j + 3, c]
                j += 4
            while j < S:
                for c in range(dv):
                    a0[c] += s0[j] * vv[j, c]
                if pair:
                    for c in range(dv):
                        a1[c] += s1[j] * vv[j, c]
                j += 1
            out[r, :] = a0
            if pair:
                out[r + 1, :] = a1
                r += 2
            else:
                r += 1

    return attention_rows


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
    out = float32((x - mean) / sqrt(var + eps) * w[c] + b[c]) in float64, c = (r % G) * Cg + i // P."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def norm_rows(r0, r1, x, G, Cg, P, w, b, eps, out):
        n = x.shape[1]
        for r in range(r0, r1):
            s = 0.0
            for i in range(n):
                s += np.float64(x[r, i])
            mean = s / n
            ss = 0.0
            for i in range(n):
                dd = np.float64(x[r, i]) - mean
                ss += dd * dd
            sd = math.sqrt(ss / n + eps)
            for cl in range(Cg):
                ch = (r % G) * Cg + cl
                wc = np.float64(w[ch])
                bc = np.float64(b[ch])
                for p in range(cl * P, (cl + 1) * P):
                    out[r, p] = np.float32((np.float64(x[r, p]) - mean) / sd * wc + bc)

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
    "vae"), used in tensor names and error messages.
    """

    def __init__(self, params: Mapping[str, np.ndarray], network: str):
        self.params = params
        self.network = network
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
        return conv2d_nchw(x, self.param(f"{name}.weight"), self._bias(name), stride, padding)

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
        run_ranges(_gelu_kernel(), xf.size, 1, xf.reshape(-1), out.reshape(-1))  # elements in parallel
        return out

    def quick_gelu(self, x: np.ndarray, name: str) -> np.ndarray:
        with np.errstate(over="ignore"):
            return x / (F32(1) + np.exp(F32(-1.702) * x))

    def softmax(self, x: np.ndarray, name: str, causal: bool = False) -> np.ndarray:
        S = x.shape[-1]
        x2 = np.ascontiguousarray(x, dtype=F32).reshape(-1, S)  # (rows, S)
        out = np.empty_like(x2)
        if x2.shape[0]:
            _softmax_kernel()(x2, out, x.shape[-2] if causal else 0)
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
        """softmax(alpha q k [causal]) v (ops `{name}.scores`, `.probs`, `.context`), fused: one query row at a
        time (`_attention_kernel`, rows split over threads), so no (T, S) scores are ever stored.

        q (B, H, T, d), k (B, H, d, S), v (B, H, S, d) -> (B, H, T, d) float32. alpha scales the operand
        `matmul` would scale (the smaller of q and k), rounded to float32 as there. As the three ops when causal
        or when a subclass overrides `matmul` / `softmax` (the calibrating interpreter observes them).
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
        q2 = np.ascontiguousarray(q, dtype=F32).reshape(B * H * T, d)  # (BH*T, d)
        k3 = np.ascontiguousarray(k, dtype=F32).reshape(B * H, d, S)  # (BH, d, S)
        v3 = np.ascontiguousarray(v, dtype=F32).reshape(B * H, S, v.shape[-1])  # (BH, S, d)
        out = np.empty((B * H * T, v.shape[-1]), dtype=F32)  # (BH*T, d)
        run_ranges(_attention_kernel(), B * H * T, S * d, q2, k3, v3, T, out)
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
