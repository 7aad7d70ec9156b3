"""Ops of the float32 interpreter against plain float64 references."""
import math

import numpy as np
import pytest

import tinysd.interp.float as F
from tinysd.errors import TinySDError
from tinysd.interp.float import FloatInterpreter, conv2d_nchw


def _conv_ref(x, w, b, stride, pad):
    """Direct float64 loops over output positions."""
    top, bottom, left, right = pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    N, C, H, W = xp.shape
    O, _, KH, KW = w.shape
    Ho, Wo = (H - KH) // stride + 1, (W - KW) // stride + 1
    out = np.zeros((N, O, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            patch = xp[:, :, i * stride:i * stride + KH, j * stride:j * stride + KW]  # (N, C, KH, KW)
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w.astype(np.float64))
    return out + b[None, :, None, None]


@pytest.mark.parametrize("k,stride,pad,budget", [
    (3, 1, (1, 1, 1, 1), None), (3, 2, (0, 1, 0, 1), None), (3, 2, (1, 1, 1, 1), None),
    (1, 1, (0, 0, 0, 0), None), (3, 1, (1, 1, 1, 1), 64),  # tiny budget: many row bands
])
def test_conv2d(monkeypatch, k, stride, pad, budget):
    if budget:
        monkeypatch.setattr(F, "_IM2COL_BUDGET", budget)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 9, 7)).astype(np.float32)
    w = rng.standard_normal((6, 5, k, k)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    got = conv2d_nchw(x, w, b, stride, pad)
    ref = _conv_ref(x, w, b, stride, pad)
    assert got.dtype == np.float32 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("shape", [(2, 5, 9, 7), (1, 3, 8, 8), (1, 4, 1, 1), (2, 16, 6, 11), (1, 2, 2, 3)])
def test_conv3x3_winograd(monkeypatch, shape):
    """F(2x2, 3x3) against the float64 direct convolution: odd and even sizes (partial tiles), single pixels,
    bias or none, one band or many (tiny band budget); its error stays within a few float32 roundings of the
    largest output, as im2col's does."""
    from tinysd.interp import winograd

    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((7, shape[1], 3, 3)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    pad = (1, 1, 1, 1)
    for budget in (winograd.WINOGRAD_BAND_ELEMENTS, 1):
        monkeypatch.setattr(winograd, "WINOGRAD_BAND_ELEMENTS", budget)
        for bias in (b, None):
            got = winograd.conv3x3_winograd(x, w, bias)
            ref = _conv_ref(x, w, np.zeros(7) if bias is None else bias, 1, pad)
            assert got.dtype == np.float32 and got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())


def test_float_interpreter_takes_winograd_only_where_asked_and_worth_it(monkeypatch):
    """conv_winograd=True (generation: models.from_params) runs 3x3 stride-1 padding-1 convolutions with at
    least C/4 tiles by Winograd; everything else, and every conv of the default interpreter (calibration,
    AdaRound), by im2col."""
    from tinysd.interp import winograd
    from tinysd.interp.calibrate import CalibratingInterpreter

    calls = []
    real = winograd.conv3x3_winograd
    monkeypatch.setattr(winograd, "conv3x3_winograd", lambda *a: calls.append(a[0].shape) or real(*a))
    rng = np.random.default_rng(1)
    params = {"c.weight": rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "c.bias": np.zeros(4, np.float32),
              "p.weight": rng.standard_normal((4, 8, 1, 1)).astype(np.float32)}
    x = rng.standard_normal((1, 8, 6, 6)).astype(np.float32)  # 9 tiles >= 8 / 4
    small = x[:, :, :1, :1]  # 1 tile < 8 / 4
    fast, plain = FloatInterpreter(params, "t", conv_winograd=True), FloatInterpreter(params, "t")
    for interp in (fast, plain, CalibratingInterpreter(params, "t")):
        for args in ((x, "c", 1, 1), (x, "c", 2, 1), (x, "c", 1, 0), (x, "p", 1, 0), (small, "c", 1, 1)):
            want = conv2d_nchw(args[0], params[f"{args[1]}.weight"], params.get(f"{args[1]}.bias"), args[2], args[3])
            np.testing.assert_allclose(interp.conv2d(*args), want, rtol=0, atol=1e-5)
    assert calls == [x.shape]
    assert winograd.worth_it(2, 320, 64, 64) and not winograd.worth_it(2, 1280, 16, 16)


def test_gelu_is_correctly_rounded():
    """x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, from math.erfc in float64 and rounded once: the same float32 on
    a dense grid over the whole range where GELU is neither 0 nor x (also the negative tail, where
    0.5 (1 + erf) cancels), random values, and the edges (signed zeros, denormals, huge, inf, nan)."""
    rng = np.random.default_rng(5)
    x = np.concatenate([np.linspace(-16, 16, 160001), rng.standard_normal(40000) * 4,
                        [0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 3e38, -3e38, np.inf]]).astype(np.float32)
    ref = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)]).astype(np.float32)
    got = FloatInterpreter({}, "t").gelu(x, "g")
    np.testing.assert_array_equal(got, ref)
    assert np.array_equal(np.signbit(got), np.signbit(ref))
    special = FloatInterpreter({}, "t").gelu(np.array([np.nan, -np.inf], np.float32), "g")
    assert np.isnan(special).all()  # nan, and -inf * 0 (as 0.5 x (1 + erf(x / sqrt 2)) gives)


def test_gelu_split_over_threads(monkeypatch):
    from tinysd.kernels import threads

    x = np.linspace(-9, 9, 1001, dtype=np.float32)[:1001 - 1001 % 7].reshape(7, -1)
    one = FloatInterpreter({}, "t").gelu(x, "g")
    monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(threads, "thread_count", lambda: 3)
    np.testing.assert_array_equal(FloatInterpreter({}, "t").gelu(x, "g"), one)


def test_softmax_causal_and_norms():
    ops = FloatInterpreter({"n.weight": np.full(6, 2.0, np.float32), "n.bias": np.ones(6, np.float32)}, "t")
    rng = np.random.default_rng(1)
    s = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    p = ops.softmax(s, "p", causal=True)
    assert np.all(p[..., np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]] == 0)
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-6)
    np.testing.assert_allclose(p[..., 1, :2], np.exp(s[..., 1, :2]) / np.exp(s[..., 1, :2]).sum(-1, keepdims=True), atol=1e-6)
    x = rng.standard_normal((2, 6, 3, 5)).astype(np.float32) * 3 + 1
    g = ops.group_norm(x, "n", groups=3, eps=1e-6).astype(np.float64)
    xg = x.reshape(2, 3, -1).astype(np.float64)
    ref = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-6)).reshape(x.shape) * 2 + 1
    np.testing.assert_allclose(g, ref, atol=1e-6)


def test_missing_parameter_names_the_tensor():
    with pytest.raises(TinySDError, match=r"unet: missing parameter conv_in\.weight"):
        FloatInterpreter({}, "unet").conv2d(np.zeros((1, 1, 3, 3), np.float32), "conv_in")


def _attention_ref(q, k, v, alpha):
    s = alpha * np.matmul(q.astype(np.float64), k.astype(np.float64))
    e = np.exp(s - s.max(-1, keepdims=True))
    return np.matmul(e / e.sum(-1, keepdims=True), v.astype(np.float64))


class _ThreeOps(FloatInterpreter):
    """Overrides matmul (same arithmetic), so `attention` runs the three ops instead of the fused kernel."""

    def matmul(self, a, b, name, alpha=1.0):
        return FloatInterpreter.matmul(self, a, b, name, alpha)


@pytest.mark.parametrize("shape", [(2, 3, 50, 8, 77, 8), (1, 2, 9, 5, 300, 7), (1, 1, 1, 4, 1, 4)])
def test_fused_attention_against_float64(monkeypatch, shape):
    """The fused attention rows (float32 exp polynomial, rows split over 3 threads) against float64, also with
    scores spread over 200 (exp underflow clamped) and against the three-op path."""
    from tinysd.kernels import threads

    monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(threads, "thread_count", lambda: 3)
    B, H, T, d, S, dv = shape
    rng = np.random.default_rng(sum(shape))
    for spread in (1.0, 30.0):
        q = (rng.standard_normal((B, H, T, d)) * spread).astype(np.float32)
        k = rng.standard_normal((B, H, d, S)).astype(np.float32)
        v = rng.standard_normal((B, H, S, dv)).astype(np.float32)
        alpha = d ** -0.5
        got = FloatInterpreter({}, "t").attention(q, k, v, "a", alpha=alpha)
        assert got.dtype == np.float32 and got.shape == (B, H, T, dv)
        np.testing.assert_allclose(got, _attention_ref(q, k, v, alpha), rtol=0, atol=2e-5 * spread)
        three = _ThreeOps({}, "t").attention(q, k, v, "a", alpha=alpha)
        np.testing.assert_allclose(got, three, rtol=0, atol=2e-5 * spread)


def test_fused_attention_exp_within_one_ulp():
    """The kernel's exp: one key with score x next to one with score 0 gives p = exp(x) / (1 + exp(x))."""
    x = -np.linspace(0, 80, 4001)
    q = np.ones((1, 1, x.size, 1), np.float32)
    k = np.zeros((1, 1, 1, 2), np.float32)
    v = np.array([[[[0.0], [1.0]]]], np.float32)  # context = p of the second key
    ops = FloatInterpreter({}, "t")
    got = np.empty(x.size)
    for i, xi in enumerate(x.astype(np.float32)):
        k[0, 0, 0, 1] = xi  # scores (0, xi)
        got[i] = ops.attention(q[:, :, :1], k, v, "a")[0, 0, 0, 0]
    e = np.exp(x.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(got, e / (1 + e), rtol=3e-7, atol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_softmax_rows_against_float64(monkeypatch, causal):
    """The vectorized row softmax (maximum over int32 keys of the float bits): rows of one sign, mixed signs
    with -0.0 and +0.0, huge and tiny magnitudes, lengths that leave vector tails; rows split over 3 threads."""
    from tinysd.kernels import threads

    monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(threads, "thread_count", lambda: 3)
    rng = np.random.default_rng(7)
    for S in (1, 5, 17, 77, 300):
        rows = [rng.standard_normal(S), -50 - np.abs(rng.standard_normal(S)) * 30, 1e4 + rng.standard_normal(S),
                rng.standard_normal(S) * 1e-30, np.where(rng.random(S) < 0.5, -0.0, 0.0)]
        x = np.stack(rows).astype(np.float32)[None]  # (1, 5, S)
        if causal:
            x = np.pad(x, ((0, 0), (0, 0), (0, max(0, 5 - S))))[:, :, :5]  # (1, 5, 5): row i is query i
        got = FloatInterpreter({}, "t").softmax(x, "p", causal=causal)
        x64 = x.astype(np.float64)
        if causal:
            x64 = np.where(np.tril(np.ones((5, 5), bool)), x64, -np.inf)
        e = np.exp(x64 - x64.max(-1, keepdims=True))
        ref = e / e.sum(-1, keepdims=True)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


def test_attention_tiles_and_blas_threads(monkeypatch):
    """Attention in many query tiles (a last, partial one too), on threads with BLAS pinned to one thread and
    on the calling thread where BLAS's count cannot be set: against float64, and the pinned count restored."""
    import contextlib

    from tinysd.kernels import blas, threads

    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 3, 45, 8)).astype(np.float32)
    k = rng.standard_normal((2, 3, 8, 64)).astype(np.float32)
    v = rng.standard_normal((2, 3, 64, 5)).astype(np.float32)
    ref = _attention_ref(q, k, v, 0.3)
    monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)
    monkeypatch.setattr(F, "FLOAT_ATTENTION_TILE_SCORES", 64 * 7)  # 7 query rows per tile: 7 tiles per head
    pinned = FloatInterpreter({}, "t").attention(q, k, v, "a", alpha=0.3)
    np.testing.assert_allclose(pinned, ref, rtol=0, atol=2e-6)
    monkeypatch.setattr(F, "blas_threads", lambda n: contextlib.nullcontext(False))
    serial = FloatInterpreter({}, "t").attention(q, k, v, "a", alpha=0.3)
    np.testing.assert_array_equal(serial, pinned)  # the same tiles, the same arithmetic, one thread
    if "openblas" in np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]:
        get, _ = blas._openblas()
        before = get()
        with blas.blas_threads(1) as ok:
            assert ok and get() == 1
        assert get() == before


@pytest.mark.parametrize("threaded", [False, True])
def test_group_and_layer_norm_against_float64(monkeypatch, threaded):
    from tinysd.kernels import threads

    if threaded:
        monkeypatch.setattr(threads, "MIN_PARALLEL_WORK", 0)
        monkeypatch.setattr(threads, "thread_count", lambda: 3)
    rng = np.random.default_rng(5)
    w, b = rng.normal(1, 0.5, 8).astype(np.float32), rng.normal(0, 0.5, 8).astype(np.float32)
    ops = FloatInterpreter({"n.weight": w, "n.bias": b}, "t")
    x = (rng.standard_normal((3, 8, 5, 7)) * rng.uniform(0.1, 30, (1, 8, 1, 1)) + 4).astype(np.float32)
    xg = x.reshape(3, 4, -1).astype(np.float64)
    ref = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-6)).reshape(x.shape)
    ref = ref * w.reshape(1, 8, 1, 1) + b.reshape(1, 8, 1, 1)
    np.testing.assert_allclose(ops.group_norm(x, "n", groups=4, eps=1e-6), ref, rtol=0, atol=2e-6 * np.abs(ref).max())
    xl = x.transpose(0, 2, 3, 1)  # (3, 5, 7, 8), non-contiguous
    x64 = xl.astype(np.float64)
    refl = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(ops.layer_norm(xl, "n", eps=1e-5), refl, rtol=0, atol=2e-6 * np.abs(refl).max())
