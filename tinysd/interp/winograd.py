"""Float 3x3 convolutions (stride 1, padding 1) by Winograd's minimal filtering F(2x2, 3x3).

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (2016). Each 2x2 block of outputs of
one output channel o is, summed over the input channels c,

    Y = A^T [ sum_c (G g[o, c] G^T) * (B^T d[c] B) ] A                 (* elementwise, 4 x 4)

with d[c] the 4 x 4 input tile around the block (zero padded) and

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].

The sum over c is 16 GEMMs, one per point k of the 4 x 4 transform domain: M[k] = U[k] (O, C) @ V[k]
(C, T) over the T tiles. That is 16 multiplications per 4 outputs where im2col needs 36, so 2.25x fewer;
the transforms are additions (and halves for the weights). The weights are transformed per call
(`_weight_transform`, O x C x 16 floats): keeping U would hold 16/9 of every 3x3 weight in memory. So
Winograd pays only where the tiles outnumber the channels enough (`worth_it`), which at SD 1.5 size
are the convolutions at the two largest UNet levels and every VAE convolution.

Numerics: float32, another summation than im2col's; on SD 1.5 shapes the largest error relative to the
largest output of a float64 convolution is about 5e-7 (im2col: 3e-7). The float engine uses it for
generation (`FloatInterpreter(conv_winograd=True)`); calibration and AdaRound keep im2col, so quantized
models do not change.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels.threads import run_ranges

F32 = np.float32

#: float32 elements of the transformed inputs and products (V, M) per band of tile rows
WINOGRAD_BAND_ELEMENTS = 1 << 22  # 16 MiB


def worth_it(n: int, c: int, h: int, w: int) -> bool:
    """True where F(2x2, 3x3) is faster than im2col + one GEMM for an (n, c, h, w) input: at least c / 4
    tiles (measured on SD 1.5 shapes, 2 threads: 320 channels at 64 x 64 83 -> 52 ms, 640 at 32 x 32 73 ->
    60, 1280 at 32 x 32 302 -> 234; 1280 at 16 x 16, 128 tiles, 79 -> 114: the per-call weight transform
    and its reads dominate)."""
    return 4 * n * ((h + 1) // 2) * ((w + 1) // 2) >= c


@njit(cache=True, nogil=True, error_model="numpy")
def _weight_transform(o0, o1, w, U):
    """U[4a + b, o, c] = (G g G^T)[a, b] for g = w[o, c], o in [o0, o1): w (O, C, 3, 3), U (16, O, C) float32."""
    C = w.shape[1]
    half = np.float32(0.5)
    t = np.empty((4, 3), np.float32)  # G g
    for o in range(o0, o1):
        for c in range(C):
            g = w[o, c]
            for j in range(3):
                s = half * (g[0, j] + g[2, j])
                t[0, j] = g[0, j]
                t[1, j] = s + half * g[1, j]
                t[2, j] = s - half * g[1, j]
                t[3, j] = g[2, j]
            for a in range(4):
                s = half * (t[a, 0] + t[a, 2])
                U[4 * a, o, c] = t[a, 0]
                U[4 * a + 1, o, c] = s + half * t[a, 1]
                U[4 * a + 2, o, c] = s - half * t[a, 1]
                U[4 * a + 3, o, c] = t[a, 2]


@njit(cache=True, nogil=True, error_model="numpy")
def _input_transform(c0, c1, x, r0, r1, th, tw, V):
    """V[4a + b, c, t] = (B^T d B)[a, b] for the tiles t of tile rows [r0, r1) (rows of all images, row R =
    image R // th, tile row R % th; t = (R - r0) * tw + tile column), channels [c0, c1): x (N, C, H, W)."""
    H, W = x.shape[2], x.shape[3]
    wp = 2 * tw + 2
    d = np.zeros((4, wp), np.float32)  # the 4 input rows of a tile row, zero padded
    t = np.empty((4, wp), np.float32)  # B^T d
    for c in range(c0, c1):
        for R in range(r0, r1):
            n = R // th
            ty = R - n * th
            for i in range(4):
                y = 2 * ty + i - 1
                di = d[i]
                di[:] = 0
                if 0 <= y < H:
                    xr = x[n, c, y]
                    dv = di[1:W + 1]
                    for j in range(W):
                        dv[j] = xr[j]
            d0, d1, d2, d3 = d[0], d[1], d[2], d[3]
            for j in range(wp):
                t[0, j] = d0[j] - d2[j]
                t[1, j] = d1[j] + d2[j]
                t[2, j] = d2[j] - d1[j]
                t[3, j] = d1[j] - d3[j]
            base = (R - r0) * tw
            for a in range(4):
                ta = t[a]
                v0, v1 = V[4 * a, c, base:base + tw], V[4 * a + 1, c, base:base + tw]
                v2, v3 = V[4 * a + 2, c, base:base + tw], V[4 * a + 3, c, base:base + tw]
                for tx in range(tw):
                    v0[tx] = ta[2 * tx] - ta[2 * tx + 2]
                    v1[tx] = ta[2 * tx + 1] + ta[2 * tx + 2]
                    v2[tx] = ta[2 * tx + 2] - ta[2 * tx + 1]
                    v3[tx] = ta[2 * tx + 1] - ta[2 * tx + 3]


@njit(cache=True, nogil=True, error_model="numpy")
def _output_transform(o0, o1, M, b, r0, r1, th, tw, out):
    """out[n, o, 2 ty + i, 2 tx + j] = (A^T m A)[i, j] + b[o] for m = M[:, o, t] (4 x 4), the tiles of tile rows
    [r0, r1) (as _input_transform), channels [o0, o1); outputs past H, W (odd sizes) are not written."""
    H, W = out.shape[2], out.shape[3]
    s = np.empty((8, tw), np.float32)  # A^T m: rows i = 0, 1 x columns b
    for o in range(o0, o1):
        bo = b[o]
        for R in range(r0, r1):
            n = R // th
            ty = R - n * th
            base = (R - r0) * tw
            for k in range(4):
                m0, m1 = M[k, o, base:base + tw], M[4 + k, o, base:base + tw]
                m2, m3 = M[8 + k, o, base:base + tw], M[12 + k, o, base:base + tw]
                s0, s1 = s[k], s[4 + k]
                for tx in range(tw):
                    s0[tx] = m0[tx] + m1[tx] + m2[tx]
                    s1[tx] = m1[tx] - m2[tx] - m3[tx]
            for i in range(2):
                y = 2 * ty + i
                if y >= H:
                    continue
                orow = out[n, o, y]
                q0, q1, q2, q3 = s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]
                for tx in range(W // 2):
                    orow[2 * tx] = q0[tx] + q1[tx] + q2[tx] + bo
                    orow[2 * tx + 1] = q1[tx] - q2[tx] - q3[tx] + bo
                if W % 2:
                    orow[W - 1] = q0[tw - 1] + q1[tw - 1] + q2[tw - 1] + bo


def conv3x3_winograd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """float32 NCHW 3x3 convolution, stride 1, zero padding 1 (as torch): x (N, C, H, W), w (O, C, 3, 3),
    b (O,) or None -> (N, O, H, W), by F(2x2, 3x3) in bands of tile rows (V and M of a band hold at most
    WINOGRAD_BAND_ELEMENTS floats)."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    x = np.ascontiguousarray(x, dtype=F32)
    w = np.ascontiguousarray(w, dtype=F32)
    b = np.zeros(o, F32) if b is None else np.ascontiguousarray(b, dtype=F32)
    th, tw = (h + 1) // 2, (wd + 1) // 2
    U = np.empty((16, o, c), F32)  # (k, O, C)
    run_ranges(_weight_transform, o, 9 * c, w, U)
    out = np.empty((n, o, h, wd), F32)
    rows = max(1, WINOGRAD_BAND_ELEMENTS // (16 * (c + o) * tw))  # tile rows per band
    for r0 in range(0, n * th, rows):
        r1 = min(n * th, r0 + rows)
        V = np.empty((16, c, (r1 - r0) * tw), F32)  # (k, C, T)
        run_ranges(_input_transform, c, 16 * (r1 - r0) * tw, x, r0, r1, th, tw, V)
        M = np.matmul(U, V)  # (k, O, T): 16 sgemms
        run_ranges(_output_transform, o, 16 * (r1 - r0) * tw, M, b, r0, r1, th, tw, out)
    return out
