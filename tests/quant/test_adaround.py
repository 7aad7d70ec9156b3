"""AdaRound (tinysd/quant/adaround.py): a layer with a known optimum, hard decisions, one step from nearest,
determinism across runs and thread counts, and the sampled layer inputs."""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinysd.interp.float import conv2d_nchw
from tinysd.quant.adaround import (AdaRoundSettings, ColumnSampler, adaround_layer, adarounded_params, beta_at,
                                   initial_v, rectified_sigmoid, reconstruction_error)
from tinysd.quant.encodings import round_half_away_from_zero
from tinysd.quant.weights import quantize_weight

ROOT = Path(__file__).resolve().parents[2]


def _paired_layer(seed=1, out=3, k=8, n=256):
    """Inputs in duplicated pairs (x[2i] ~ x[2i+1]): the output sees w[2i] + w[2i+1]. Every weight has a
    fraction 0.3..0.45 of a step, so nearest rounds both of a pair down (0.6..0.9 step short) while
    rounding exactly one of them up is optimal. Weight 0 of each channel sits on the grid (127 steps)."""
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.normal(size=(k // 2, n)), 2, axis=0) + 0.01 * rng.normal(size=(k, n))  # (K, N)
    steps = rng.integers(-100, 100, size=(out, k)) + rng.uniform(0.3, 0.45, size=(out, k))
    steps[:, 0] = 127
    w = steps * 0.01  # (OUT, K)
    _, enc = quantize_weight(w)
    return w, np.asarray(enc.scale, np.float64), x


def _brute_force(w, s, x):
    """The least reconstruction error over every floor / floor + 1 choice, per channel, summed."""
    floor = np.floor(w / s[:, None])
    return sum(min(reconstruction_error(w[o:o + 1], (floor[o] + np.array(b))[None] * s[o], x)
                   for b in itertools.product((0, 1), repeat=w.shape[1])) for o in range(w.shape[0]))


def test_known_optimum_is_found():
    w, s, x = _paired_layer()
    res = adaround_layer(w, s, x, AdaRoundSettings(iterations=1000))
    nearest = round_half_away_from_zero(w / s[:, None])
    assert res.error_nearest == pytest.approx(reconstruction_error(w, nearest * s[:, None], x))
    assert res.error_adaround == pytest.approx(reconstruction_error(w, res.q * s[:, None], x))
    best = _brute_force(w, s, x)
    assert best < res.error_nearest / 3  # the layer rewards leaving nearest
    assert res.error_adaround <= best * 1.01
    up = res.q - np.floor(w / s[:, None])
    assert np.all(up[:, 2:].reshape(w.shape[0], -1, 2).sum(axis=2) == 1)  # one of each off-grid pair rounds up


def test_every_weight_ends_hard_and_within_one_step():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 48)) * 0.1
    x = rng.normal(size=(48, 300)) * rng.uniform(0.1, 3.0, size=(48, 1))
    x[:12] += x[12:24]
    _, enc = quantize_weight(w)
    s = np.asarray(enc.scale)[:, None]
    res = adaround_layer(w, enc.scale, x, AdaRoundSettings(iterations=600))
    assert res.soft == 0.0  # the regularizer drove every h(V) to exactly 0 or 1
    floor = np.floor(w / s)
    assert res.q.dtype == np.int8
    assert np.all((res.q == floor) | (res.q == floor + 1))
    assert np.all(np.abs(res.q - round_half_away_from_zero(w / s)) <= 1)
    assert 0 < res.flipped < 0.5
    assert res.error_adaround < res.error_nearest


def test_grid_ends_are_clipped():
    w = np.array([[1.27, -1.28, 0.3349, -0.7351]])  # steps 127, -128: the ends of the int8 grid
    x = np.random.default_rng(0).normal(size=(4, 50))
    _, enc = quantize_weight(w)
    res = adaround_layer(w, enc.scale, x, AdaRoundSettings(iterations=100))
    assert res.q[0, 0] == 127 and res.q[0, 1] == -128


def test_rectified_sigmoid_start_and_schedule():
    frac = np.array([0.0, 0.1, 0.5, 0.99])
    assert np.allclose(rectified_sigmoid(initial_v(frac)), frac, atol=1e-12)
    st = AdaRoundSettings(iterations=100, warm_start=0.2)
    assert beta_at(19, st) is None
    assert beta_at(20, st) == pytest.approx(20.0) and beta_at(99, st) == pytest.approx(2.0, abs=0.01)


def test_same_result_every_run():
    w, s, x = _paired_layer(seed=5, out=6, k=10)
    a = adaround_layer(w, s, x, AdaRoundSettings(iterations=200))
    b = adaround_layer(w, s, x, AdaRoundSettings(iterations=200))
    assert np.array_equal(a.q, b.q) and a.error_adaround == b.error_adaround


_THREADS_SCRIPT = """
import json, sys
import numpy as np
from tinysd.quant.adaround import AdaRoundSettings, adaround_layer
rng = np.random.default_rng(7)
w = rng.normal(size=(96, 320)) * 0.05
x = rng.normal(size=(320, 400))
x[:100] += x[100:200]
s = np.abs(w).max(axis=1) / 127
r = adaround_layer(w, s, x, AdaRoundSettings(iterations=30, warm_start=0.5))
print(json.dumps({"q": r.q.tolist(), "err": r.error_adaround.hex()}))
"""


def test_same_result_for_any_thread_count():
    outs = []
    for n in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": n, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
               "PYTHONPATH": str(ROOT)}
        p = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], env=env, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 0, p.stderr
        outs.append(json.loads(p.stdout))
    assert outs[0] == outs[1]


def test_conv_columns_are_the_im2col_columns():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    params = {"c.weight": w, "l.weight": rng.normal(size=(5, 6)).astype(np.float32)}
    ip = ColumnSampler(params, "unet", per_call=10**6, seed=0)
    y = ip.conv2d(x, "c", stride=2, padding=1)  # every position sampled, in (n, ho, wo) order
    cols = ip.columns["c"][0]  # (27, 2 * 3 * 3)
    ref = conv2d_nchw(x, w, None, 2, 1)
    assert np.allclose(w.reshape(4, -1) @ cols, ref.transpose(1, 0, 2, 3).reshape(4, -1), atol=1e-5)
    assert np.array_equal(y, ref)
    xl = x.reshape(2, 15, 6)
    ip.linear(xl, "l")
    assert np.array_equal(ip.columns["l"][0], xl.reshape(30, 6).T)
    few = ColumnSampler(params, "unet", per_call=5, seed=0)
    few.conv2d(x, "c", stride=2, padding=1)
    few.conv2d(x, "c", stride=2, padding=1)
    a, b = few.columns["c"]
    assert a.shape == (27, 5) and not np.array_equal(a, b)  # each call draws its own positions
    assert all(any(np.array_equal(c, d) for d in cols.T) for c in a.T)


def test_gram_inputs_give_the_same_result_as_columns():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    w = (rng.normal(size=(5, 3, 3, 3)) * 0.3).astype(np.float32)
    a = ColumnSampler({"c.weight": w}, "unet", per_call=20, seed=1)
    b = ColumnSampler({"c.weight": w}, "unet", per_call=20, seed=1, gram_max_k=27)
    for ip in (a, b):
        for _ in range(3):
            ip.conv2d(x, "c", padding=1)
    xa, gb = a.inputs()["c"]["x"], b.inputs()["c"]["gram"]
    assert xa.shape == (27, 60) and b.counts["c"] == 60 and not b.columns
    xa64 = xa.astype(np.float64)
    assert np.allclose(gb, xa64 @ xa64.T / 60, rtol=1e-12, atol=1e-12)
    _, enc = quantize_weight(w)
    st = AdaRoundSettings(iterations=150)
    ra = adaround_layer(w.reshape(5, -1), enc.scale, xa, st)
    rb = adaround_layer(w.reshape(5, -1), enc.scale, settings=st, gram=gb)
    assert np.array_equal(ra.q, rb.q) and ra.error_adaround == pytest.approx(rb.error_adaround, rel=1e-9)
    few = adaround_layer(w.reshape(5, -1), enc.scale, xa[:, :20], st)  # N < K: the (D X) X^T path
    assert few.error_adaround <= few.error_nearest


def test_adarounded_params_requantize_to_the_same_integers():
    rng = np.random.default_rng(4)
    w = (rng.normal(size=(8, 4, 3, 3)) * 0.2).astype(np.float32)
    q, enc = quantize_weight(w)
    q = np.clip(q.astype(np.int16) + rng.integers(0, 2, size=q.shape), -128, 127).astype(np.int8)
    params, encs = adarounded_params({"c.weight": w, "c.bias": np.zeros(8, np.float32)},
                                     {"unet.c.weight": (q, enc)}, "unet")
    assert params["c.weight"].dtype == np.float32 and encs["unet.c.weight"] is enc
    assert np.array_equal(enc.quantize(params["c.weight"]), q)


# --- inputs from the AdaRounded-so-far network (AdaRoundSettings.inputs = "quantized") ---------------------
def _shifted_inputs(seed=11, out=8, k=12, n=400):
    """A layer whose quantized-network input x_q misses a systematic part of the float input x_f: x_f = x_q + dx
    with dx correlated with x_q (a per-input gain error of a few %)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(out, k)) * 0.1
    xq = rng.normal(size=(k, n)) * rng.uniform(0.5, 2.0, size=(k, 1))
    dx = xq * rng.uniform(-0.05, 0.05, size=(k, 1)) + 0.01 * rng.normal(size=(k, n))
    _, enc = quantize_weight(w)
    return w, np.asarray(enc.scale, np.float64), xq, dx


def _asym_error(w, q, s, xq, dx):
    e = (q * s[:, None]) @ xq - w @ (xq + dx)
    return float(np.sum(e * e) / xq.shape[1])


def test_quantized_inputs_with_no_input_error_are_the_float_reconstruction():
    w, s, x = _paired_layer(seed=4, out=4, k=8, n=64)
    st = AdaRoundSettings(iterations=300)
    ref = adaround_layer(w, s, x, st)
    cols = adaround_layer(w, s, x, st, dx=np.zeros_like(x))  # N >= K: through G, G_dq = G_dd = 0
    assert np.array_equal(cols.q, ref.q)
    assert cols.error_adaround == pytest.approx(ref.error_adaround, rel=1e-9)
    wide = adaround_layer(w, s, x[:, :6], st, dx=np.zeros((8, 6)))  # N < K: columns kept
    assert np.array_equal(wide.q, adaround_layer(w, s, x[:, :6], st).q)


def test_quantized_inputs_reconstruct_the_float_output_and_beat_float_inputs():
    w, s, xq, dx = _shifted_inputs()
    st = AdaRoundSettings(iterations=800)
    asym = adaround_layer(w, s, xq, st, dx=dx)
    # the reported errors are the asymmetric reconstruction ((W_q x_q - W x_f)^2), nearest's and AdaRound's
    nearest = round_half_away_from_zero(w / s[:, None])
    assert asym.error_nearest == pytest.approx(_asym_error(w, nearest, s, xq, dx), rel=1e-9)
    assert asym.error_adaround == pytest.approx(_asym_error(w, asym.q, s, xq, dx), rel=1e-9)
    # the same problem through the Gram matrices
    n = xq.shape[1]
    g = adaround_layer(w, s, gram=xq @ xq.T / n, gram_dq=dx @ xq.T / n, gram_dd=dx @ dx.T / n, settings=st)
    assert np.array_equal(g.q, asym.q)
    # fitted on the float inputs, AdaRound cannot see dx: on the quantized network it does worse
    flt = adaround_layer(w, s, xq + dx, st)
    assert asym.error_adaround < 0.8 * _asym_error(w, flt.q, s, xq, dx)
    assert asym.error_adaround < 0.8 * asym.error_nearest
    floor = np.floor(w / s[:, None])
    assert np.all((asym.q == floor) | (asym.q == floor + 1)) and asym.soft == 0.0


def test_sequential_driver_fits_each_layer_on_the_adarounded_so_far_network(monkeypatch):
    import tinysd.quant.adaround as ar
    from tinysd.checkpoint import load_checkpoint
    from tinysd.models import TextEncoder
    from tinysd.quant.adaround import adaround_network, adaround_network_sequential, sample_layer_inputs
    from tinysd.quant.calibration import NetworkCall, model_graphs

    loaded = load_checkpoint(ROOT / "tests" / "fixtures" / "tiny-sd")
    rng = np.random.default_rng(0)
    vocab = loaded.params["text_encoder"]["text_model.embeddings.token_embedding.weight"].shape[0]
    calls = [NetworkCall("text_encoder", (rng.integers(0, vocab, size=(2, 77)),)) for _ in range(2)]
    st = AdaRoundSettings(iterations=60, samples=6, inputs="quantized")
    codes, stats = adaround_network_sequential(loaded, calls, "text_encoder", st)
    # float columns kept from one replay or sampled again per layer: the same positions, the same result
    monkeypatch.setattr(ar, "FLOAT_COLUMNS_BYTES", 0)
    again, _ = adaround_network_sequential(loaded, calls, "text_encoder", st)
    assert all(np.array_equal(codes[k][0], again[k][0]) for k in codes)
    params = loaded.params["text_encoder"]
    graph = model_graphs(loaded.config)["text_encoder"]
    order = list(stats)
    assert {f"text_encoder.{n}.weight" for n in order} == set(codes) and len(order) >= 12
    # the first layer to run sees the network's own input: the same result as with float-network inputs
    fcodes, _ = adaround_network(params, {order[0]: sample_layer_inputs(loaded, calls, "text_encoder", st)[order[0]]},
                                 "text_encoder", st)
    key = f"text_encoder.{order[0]}.weight"
    assert np.array_equal(codes[key][0], fcodes[key][0])
    # the last layer to run (K = 16 > 2 * 6: columns kept), re-derived by hand: its input columns in the network
    # whose every other layer has its AdaRounded weight, against the float network's at the same positions
    last = order[-1]
    new, _ = adarounded_params(params, {k: v for k, v in codes.items() if k != f"text_encoder.{last}.weight"},
                               "text_encoder")
    cols = {}
    for tag, p in (("f", params), ("q", new)):
        sampler = ColumnSampler(p, "text_encoder", 3, st.seed, layers=[last])
        for c in calls:
            TextEncoder(graph, sampler)(*c.args)
        cols[tag] = np.concatenate(sampler.columns[last], axis=1).astype(np.float64)
    assert cols["q"].shape == (16, 6) and not np.array_equal(cols["f"], cols["q"])
    w = params[f"{last}.weight"]
    _, enc = quantize_weight(w, axis=0)
    res = adaround_layer(w, enc.scale, cols["q"], st, dx=cols["f"] - cols["q"])
    assert np.array_equal(codes[f"text_encoder.{last}.weight"][0], res.q)
    assert stats[last].error_adaround == res.error_adaround


def test_calls_are_capped_evenly_per_kind():
    from tinysd.quant.adaround import calls_by_kind
    from tinysd.quant.calibration import NetworkCall

    calls = [NetworkCall("unet", (i,)) for i in range(10)] + [NetworkCall("vae.decode", (i,)) for i in range(3)]
    calls.insert(4, NetworkCall("text_encoder", (0,)))
    assert [c.args[0] for c in calls_by_kind(calls, "unet")["unet"]] == list(range(10))
    assert [c.args[0] for c in calls_by_kind(calls, "unet", 4)["unet"]] == [0, 3, 6, 9]
    assert [c.args[0] for c in calls_by_kind(calls, "unet", 5)["unet"]] == [0, 2, 4, 6, 8]
    vae = calls_by_kind(calls, "vae", 4)
    assert list(vae) == ["vae.decode"] and len(vae["vae.decode"]) == 3
    with pytest.raises(Exception, match="calls"):
        AdaRoundSettings(calls=-1).check()


def test_workflow_runs_the_sequential_fit_for_quantized_inputs(monkeypatch):
    """inputs="quantized": every network's calibration calls go to `adaround_network_sequential` (replaced here by
    a fit that keeps nearest rounding), and the "weights" entry of quantization.json records the choice."""
    import tinysd.quant.adaround as ar
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.adaround import calls_by_kind
    from tinysd.quant.calibration import NetworkCall
    from tinysd.quant.workflow import _adaround

    seen = []

    def fit(loaded, calls, network, settings, progress=None):
        seen.append((network, settings.inputs, sorted(calls_by_kind(calls, network))))
        return {}, {}

    monkeypatch.setattr(ar, "adaround_network_sequential", fit)
    loaded = load_checkpoint(ROOT / "tests" / "fixtures" / "tiny-sd")
    calls = [NetworkCall(k, ()) for k in ("text_encoder", "unet", "unet", "vae.decode", "vae.encode")]
    _, _, info = _adaround(loaded, calls, AdaRoundSettings(inputs="quantized", calls=4), None)
    assert seen == [("text_encoder", "quantized", ["text_encoder"]), ("unet", "quantized", ["unet"]),
                    ("vae", "quantized", ["vae.decode", "vae.encode"])]
    assert info["settings"]["inputs"] == "quantized" and info["settings"]["calls"] == 4
    assert info["inputs"].startswith("AdaRounded-so-far network")
