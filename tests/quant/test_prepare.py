"""Preparation of integer run-time arrays (tinysd.quant.prepare) on the tiny fixture models."""
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from tinysd.checkpoint import load_checkpoint
from tinysd.errors import TinySDError
from tinysd.fixedpoint import accumulator_shift, quantize_multiplier
from tinysd.interp.calibrate import CalibratingInterpreter
from tinysd.interp.integer import IntegerInterpreter
from tinysd.models import VAE, UNet
from tinysd.nn.unet import UNet2DConditionModel
from tinysd.nn.vae import AutoencoderKL
from tinysd.quant.encodings import load_encodings, save_encodings
from tinysd.quant.observers import encoding_from_range
from tinysd.quant.prepare import (
    MAX_TOKENS,
    encodings_from_ranges,
    multipliers,
    quantize_network,
    requant_arrays,
    softmax_encoding,
    softmax_row_sum_bound,
)
from tinysd.quant.weights import quantize_weight

FIXTURES = Path(__file__).parents[1] / "fixtures"

# field -> dtype of every run-time array (module docstring of tinysd.quant.prepare)
FIELD_DTYPES = {
    "weight_q": "int8", "bias_q": "int32", "multiplier": "int32", "shift": "int32", "acc_shift": "int32",
    "table_q": None, "table": None, "exp_table": "int32", "eps_fx": "int64", "gamma_multiplier": "int32",
    "gamma_shift": "int32", "beta_fx": "int32", "a_multiplier": "int32", "a_shift": "int32",
    "b_multiplier": "int32", "b_shift": "int32", "left_shift": "int32", "multipliers": "int32", "shifts": "int32",
    "max_k": "int64",
}


@pytest.fixture(scope="module")
def tiny():
    return load_checkpoint(FIXTURES / "tiny-sd")


@pytest.fixture(scope="module")
def unet_ranges(tiny):
    cfg = tiny.config.unet
    cal = CalibratingInterpreter(tiny.params["unet"], "unet")
    rng = np.random.default_rng(0)
    for _ in range(2):
        UNet(UNet2DConditionModel(cfg), cal)(rng.standard_normal((2, 4, 8, 8)).astype(np.float32), 400.0,
                                             rng.standard_normal((2, 6, 8)).astype(np.float32))
    return cal.ranges()


@pytest.fixture(scope="module")
def vae_ranges(tiny):
    cal = CalibratingInterpreter(tiny.params["vae"], "vae")
    vae = VAE(AutoencoderKL(tiny.config.vae), cal)
    rng = np.random.default_rng(1)
    vae.decode(rng.standard_normal((1, 4, 4, 4)).astype(np.float32))
    vae.encode(rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32))
    return cal.ranges()


@pytest.fixture(scope="module")
def unet_w8a16(tiny, unet_ranges):
    return _prep_unet(tiny, unet_ranges, "w8a16")


def _prep_unet(tiny, ranges, precision, params=None, acts=None):
    acts = encodings_from_ranges(ranges, precision) if acts is None else acts
    model = UNet2DConditionModel(tiny.config.unet)
    return quantize_network(model, tiny.params["unet"], "unet", precision, acts, params)


def _same_arrays(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("precision", ["w8a8", "w8a16"])
def test_deterministic_and_well_formed(tiny, unet_ranges, unet_w8a16, precision):
    q1 = unet_w8a16 if precision == "w8a16" else _prep_unet(tiny, unet_ranges, precision)
    q2 = _prep_unet(tiny, unet_ranges, precision)
    _same_arrays(q1.arrays, q2.arrays)  # bit for bit
    bits = 8 if precision == "w8a8" else 16
    act_dtype = np.dtype(f"uint{bits}")
    p = tiny.params["unet"]
    ops = set()
    for key, a in q1.arrays.items():
        op, field = key.rsplit(".", 1)
        ops.add(op)
        assert f"unet.{op}.out" in q1.activations, key  # arrays are named after ops of the graph
        want = FIELD_DTYPES[field] or act_dtype.name  # tables: the activation dtype
        assert a.dtype == np.dtype(want), key
        if field == "weight_q":
            assert a.shape == p[f"{op}.weight"].shape
            assert q1.params[f"unet.{op}.weight"].per_channel
        if field in ("multiplier", "shift", "acc_shift", "bias_q") and f"{op}.weight_q" in q1.arrays:
            assert a.shape == (p[f"{op}.weight"].shape[0],), key
        if field == "table":
            assert a.shape == (2**bits,)
    # every computing op of the graph has its arrays
    for op in ("conv_in", "time_embedding.linear_1", "down_blocks.0.resnets.0.norm1",
               "down_blocks.0.attentions.0.transformer_blocks.0.attn1.scores",
               "down_blocks.0.attentions.0.transformer_blocks.0.attn1.probs",
               "down_blocks.0.attentions.0.transformer_blocks.0.norm1",
               "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.mul",
               "down_blocks.0.resnets.0.add", "up_blocks.0.resnets.0.concat", "conv_act"):
        assert op in ops, op
    # softmax outputs use the fixed encoding 2**-bits, zero point 0
    probs = [k for k in q1.activations if k.endswith(".probs.out")]
    assert probs and all(q1.activations[k] == softmax_encoding(bits) for k in probs)
    # the attention scale 1/sqrt(d) is folded into the scores multiplier
    op = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.scores"
    a = q1.activations
    cfg = tiny.config.unet
    d = cfg.block_out_channels[0] // cfg.heads(0)
    attn = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    real = d**-0.5 * a[f"{attn}.to_q.out"].scale[0] * a[f"{attn}.to_k.out"].scale[0] / a[f"unet.{op}.out"].scale[0]
    m, s, n = (int(q1.arrays[f"{op}.{f}"][0]) for f in ("multiplier", "shift", "acc_shift"))
    assert (m, s) == quantize_multiplier(real * 2.0**n)
    assert int(q1.arrays[f"{op}.max_k"][0]) == d  # K = head dimension
    assert n == accumulator_shift(d * (2**bits - 1) ** 2)
    op = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.context"  # probs @ v: softmax row-sum bound
    assert int(q1.arrays[f"{op}.acc_shift"][0]) == accumulator_shift((2**bits + MAX_TOKENS) * (2**bits - 1))


@pytest.mark.parametrize("precision,version", [("w8a16", "1.0.0"), ("w8a8", "0.6.1")])
def test_given_encodings_reproduce_the_arrays(tiny, unet_ranges, unet_w8a16, tmp_path, precision, version):
    """Re-preparing from the encodings a network records (activations and weights), also through an
    AIMET file, gives the same integers bit for bit."""
    q = unet_w8a16 if precision == "w8a16" else _prep_unet(tiny, unet_ranges, precision)
    again = _prep_unet(tiny, unet_ranges, precision, params=q.params, acts=q.activations)
    _same_arrays(q.arrays, again.arrays)
    path = tmp_path / f"enc-{version}.json"
    save_encodings(path, q.activations, q.params, version=version)
    acts, params, _ = load_encodings(path)
    _same_arrays(q.arrays, _prep_unet(tiny, unet_ranges, precision, params=params, acts=acts).arrays)


def test_param_encodings_are_used(tiny, unet_ranges):
    """Weights quantized with a given (here: per-tensor) encoding use its scale."""
    q = _prep_unet(tiny, unet_ranges, "w8a8")
    params = dict(q.params)
    w = tiny.params["unet"]["conv_in.weight"]
    lo, hi = float(w.min()), float(w.max())
    params["unet.conv_in.weight"] = encoding_from_range(lo, hi, 8, symmetric=True)
    q2 = _prep_unet(tiny, unet_ranges, "w8a8", params=params, acts=q.activations)
    np.testing.assert_array_equal(q2.arrays["conv_in.weight_q"], params["unet.conv_in.weight"].quantize(w))
    assert not np.array_equal(q2.arrays["conv_in.weight_q"], q.arrays["conv_in.weight_q"])
    del params["unet.conv_in.weight"]  # a file that lacks a weight: per-channel encodings from its values
    q3 = _prep_unet(tiny, unet_ranges, "w8a8", params=params, acts=q.activations)
    np.testing.assert_array_equal(q3.arrays["conv_in.weight_q"], q.arrays["conv_in.weight_q"])
    assert q3.params["unet.conv_in.weight"] == q.params["unet.conv_in.weight"]


def test_missing_and_bad_encodings_listed(tiny, unet_ranges):
    acts = encodings_from_ranges(unet_ranges, "w8a8")
    gone = ["unet.sample", "unet.conv_in.out", "unet.mid_block.resnets.1.add.out"]
    for k in gone:
        del acts[k]
    with pytest.raises(TinySDError) as e:
        _prep_unet(tiny, unet_ranges, "w8a8", acts=acts)
    msg = str(e.value)
    assert "\n" not in msg and all(k in msg for k in gone)
    with pytest.raises(TinySDError, match="16-bit encoding, w8a8 needs 8"):
        _prep_unet(tiny, unet_ranges, "w8a8", acts=encodings_from_ranges(unet_ranges, "w8a16"))
    with pytest.raises(TinySDError, match="precision"):
        encodings_from_ranges(unet_ranges, "w4a8")


def test_softmax_given_encoding_overridden(tiny, unet_ranges, caplog):
    caplog.set_level(logging.INFO, logger="tinysd.quant.prepare")
    acts = encodings_from_ranges(unet_ranges, "w8a8")
    q = _prep_unet(tiny, unet_ranges, "w8a8", acts=acts)  # calibrated probs ranges differ from the fixed one
    name = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.probs.out"
    assert acts[name] != softmax_encoding(8) and q.activations[name] == softmax_encoding(8)
    notes = [r.message for r in caplog.records if "fixed encoding" in r.message]
    assert len(notes) == 1 and notes[0].startswith("unet: 12 softmax outputs")


def test_vae_decoder_only(tiny, vae_ranges):
    """Without encodings for the encoder (a decoder-only file), the decoder is prepared and runs."""
    acts = {k: v for k, v in encodings_from_ranges(vae_ranges, "w8a8").items()
            if not (k.startswith("vae.encoder.") or k.startswith("vae.quant_conv") or k == "vae.image")}
    q = quantize_network(AutoencoderKL(tiny.config.vae), tiny.params["vae"], "vae", "w8a8", acts)
    assert not any(k.startswith("encoder.") for k in q.arrays) and "decoder.conv_in.weight_q" in q.arrays
    vae = VAE(AutoencoderKL(tiny.config.vae), IntegerInterpreter(q))
    assert vae.decode(np.zeros((1, 4, 2, 2), np.float32)).shape == (1, 3, 4, 4)
    with pytest.raises(TinySDError, match="vae.image"):
        vae.encode(np.zeros((1, 3, 4, 4), np.float32))
    full = quantize_network(AutoencoderKL(tiny.config.vae), tiny.params["vae"], "vae", "w8a8",
                            encodings_from_ranges(vae_ranges, "w8a8"))
    assert "encoder.conv_in.weight_q" in full.arrays and "quant_conv.weight_q" in full.arrays


def test_multipliers_edges():
    m, s = multipliers([0.0, 2.0**-33, 0.75, 3.0], "x")
    assert m.tolist() == [0, 0, 1610612736, 1610612736] and s.tolist() == [0, 0, 0, 2]
    with pytest.raises(TinySDError, match="x: rescale factor"):
        multipliers([2.0**30], "x")
    m, s, n = requant_arrays([0.5, 0.25], np.array([2**31 - 1, 2**33]), "x")
    assert n.tolist() == [0, 3] and s.tolist() == [0, 2] and m.tolist() == [2**30, 2**30]  # 0.5, 0.25 * 8


@pytest.mark.parametrize("bits", [8, 16])
def test_softmax_row_sum_bound(bits):
    """The bound the probs @ v accumulator shift relies on, on random and adversarial rows."""
    from tinysd.kernels.softmax import make_exp_table, softmax

    rng = np.random.default_rng(bits)
    dtype = np.uint8 if bits == 8 else np.uint16
    qmax = 2**bits - 1
    for scale in (1e-4, 0.01, 0.3):
        table = make_exp_table(scale, bits)
        for t in (1, 2, 3, 7, 77, 1000):
            rows = [rng.integers(0, qmax + 1, (64, t)), np.full((4, t), qmax),  # random; all equal
                    np.where(np.arange(t) % 2, qmax, qmax - 1)[None].repeat(2, 0)]  # ties near the max
            for r in rows:
                out = softmax(r.astype(dtype), table, bits).astype(np.int64)
                assert out.sum(axis=-1).max() <= softmax_row_sum_bound(bits, t)
        x = rng.integers(0, qmax + 1, (3, 9, 9)).astype(dtype)
        assert softmax(x, table, bits, causal=True).astype(np.int64).sum(-1).max() <= softmax_row_sum_bound(bits, 9)


def test_weights_quantized_per_channel(tiny, unet_ranges):
    q = _prep_unet(tiny, unet_ranges, "w8a8")
    w = tiny.params["unet"]["down_blocks.0.resnets.0.conv1.weight"]
    want, enc = quantize_weight(w)
    np.testing.assert_array_equal(q.arrays["down_blocks.0.resnets.0.conv1.weight_q"], want)
    assert q.params["unet.down_blocks.0.resnets.0.conv1.weight"] == enc
    bias_enc = q.params["unet.down_blocks.0.resnets.0.conv1.bias"]
    s_in = q.activations["unet.down_blocks.0.resnets.0.act1.out"].scale[0]
    np.testing.assert_array_equal(bias_enc.scale, s_in * enc.scale)
    assert all(re.fullmatch(r"unet\..+\.(weight|bias)", k) for k in q.params)


def test_sqnr_db():
    from tinysd.quant.calibration import sqnr_db

    ref = np.array([3.0, -4.0])
    assert sqnr_db(ref, ref) == float("inf")
    assert sqnr_db(ref, ref + [0.5, 0.0]) == pytest.approx(10 * np.log10(25 / 0.25))
    assert sqnr_db(np.zeros(2), ref) == float("-inf")
    with pytest.raises(ValueError, match="shape"):
        sqnr_db(ref, ref[:1])
