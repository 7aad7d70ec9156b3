"""CalibratingInterpreter and calibrate_model on the tiny fixture models."""
from pathlib import Path

import numpy as np
import pytest

from tinysd.checkpoint import load_checkpoint
from tinysd.interp.calibrate import CalibratingInterpreter
from tinysd.interp.float import FloatInterpreter
from tinysd.models import VAE, TextEncoder, UNet
from tinysd.nn.clip import CLIPTextModel
from tinysd.nn.unet import UNet2DConditionModel
from tinysd.nn.vae import AutoencoderKL
from tinysd.quant.calibration import calibrate_model
from tinysd.quant.prepare import Preparer, run_graph



FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def tiny():
    return load_checkpoint(FIXTURES / "tiny-sd")


class FloatTap(FloatInterpreter):
    """FloatInterpreter that keeps every computing op's output by tensor name (one call).

    Attention as the three ops (scores, probs, context), as the calibrating interpreter computes it to observe
    them; the fused attention of the float engine agrees with them to float32 rounding
    (tests/interp/test_integer.py::test_float_attention_fused)."""

    fuse_attention = False

    def __init__(self, params, network):
        super().__init__(params, network)
        self.outs = {}

    def __getattribute__(self, k):
        f = super().__getattribute__(k)
        if k in ("reshape", "transpose", "split", "output", "param") or k.startswith("_") or not callable(f):
            return f
        if k == "input":
            def tap_in(x, name):
                y = f(x, name)
                self.outs[f"{self.network}.{name}"] = y
                return y
            return tap_in

        def tap(*a, **kw):
            y = f(*a, **kw)
            name = kw.get("name") or [v for v in a if isinstance(v, str)][0]
            self.outs[f"{self.network}.{name}.out"] = y
            return y
        return tap


def _unet_inputs(cfg, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, cfg.in_channels, 8, 8)).astype(np.float32)
    ctx = rng.standard_normal((2, 5, cfg.cross_attention_dim)).astype(np.float32)
    return x, float(rng.integers(1, 1000)), ctx


def test_same_outputs_as_float_and_exact_ranges(tiny):
    cfg = tiny.config.unet
    m = UNet2DConditionModel(cfg)
    p = tiny.params["unet"]
    cal = CalibratingInterpreter(p, "unet")
    tap = FloatTap(p, "unet")
    args = _unet_inputs(cfg, 0)
    got = UNet(m, cal)(*args)
    ref = UNet(m, tap)(*args)
    np.testing.assert_array_equal(got, ref)  # recording changes nothing
    ranges = cal.ranges()
    assert list(ranges) == list(tap.outs)  # same tensors, same order: every op output and input
    for name, y in tap.outs.items():
        assert ranges[name] == (float(y.min()), float(y.max())), name
    assert cal.calls == 1
    # a second call widens ranges to the union
    args2 = _unet_inputs(cfg, 1)
    tap2 = FloatTap(p, "unet")
    UNet(m, cal)(*args2)
    UNet(m, tap2)(*args2)
    for name in ranges:
        lo, hi = cal.ranges()[name]
        assert lo == min(ranges[name][0], float(tap2.outs[name].min()))
        assert hi == max(ranges[name][1], float(tap2.outs[name].max()))


def test_names_match_the_preparation_pass(tiny):
    """Calibration records exactly the tensors the preparation pass needs encodings for."""
    cfgs = tiny.config
    rng = np.random.default_rng(2)
    latent = rng.standard_normal((1, 4, 4, 4)).astype(np.float32)
    image = rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    ids = rng.integers(0, 100, (2, 6))
    cases = [
        ("text_encoder", CLIPTextModel(cfgs.text_encoder), lambda m, i: TextEncoder(m, i)(ids)),
        ("unet", UNet2DConditionModel(cfgs.unet), lambda m, i: UNet(m, i)(*_unet_inputs(cfgs.unet, 3))),
        ("vae", AutoencoderKL(cfgs.vae), lambda m, i: (VAE(m, i).decode(latent), VAE(m, i).encode(image))),
    ]
    for net, m, run in cases:
        cal = CalibratingInterpreter(tiny.params[net], net)
        run(m, cal)
        names = set(cal.ranges())
        prep = Preparer(tiny.params[net], net, "w8a8", {})
        run_graph(m, prep, net)
        needed = {p.split("no encoding for activation ", 1)[1] for p in prep.problems}
        assert needed == names - {n for n in names if n.endswith(".probs.out")}, net  # softmax outputs: fixed
        assert all(n.startswith(f"{net}.") for n in names)
        assert len(names) == len(cal.ranges())


def test_percentile_inside_minmax(tiny):
    cfg = tiny.config.unet
    m = UNet2DConditionModel(cfg)
    mm = CalibratingInterpreter(tiny.params["unet"], "unet", "minmax")
    pc = CalibratingInterpreter(tiny.params["unet"], "unet", "percentile", percentile=99.0)
    args = _unet_inputs(cfg, 4)
    UNet(m, mm)(*args)
    UNet(m, pc)(*args)
    r_mm, r_pc = mm.ranges(), pc.ranges()
    assert list(r_mm) == list(r_pc)
    assert all(r_mm[k][0] <= r_pc[k][0] <= r_pc[k][1] <= r_mm[k][1] for k in r_mm)
    assert sum(r_pc[k] != r_mm[k] for k in r_mm) > len(r_mm) // 2  # 99th percentile clips most tensors


def test_duplicate_op_name_is_a_graph_bug():
    p = {"l.weight": np.eye(3, dtype=np.float32)}
    cal = CalibratingInterpreter(p, "toy")

    def graph(ops, x, second_name):
        h = ops.silu(ops.input(x, "x"), "act")
        h = ops.silu(h, second_name)
        return ops.output(h, "out")

    x = np.ones((2, 3), np.float32)
    graph(cal, x, "act2")
    graph(cal, x, "act2")  # a new call may reuse the names
    with pytest.raises(RuntimeError, match="'act' occurs twice"):
        graph(cal, x, "act")
    graph(cal, x, "act2")  # the aborted call does not poison the next one
    with pytest.raises(RuntimeError, match="'<input>y' occurs twice"):
        cal.input(x, "x"), cal.input(x, "y"), cal.input(x, "y")
    with pytest.raises(ValueError, match="method"):
        CalibratingInterpreter(p, "toy", "mean")


def test_calibrate_model_covers_every_pass(tiny):
    record = []
    ranges = calibrate_model(tiny, ["a red circle", "a blue square"], steps=2, record=record)
    assert set(ranges) == {"text_encoder", "unet", "vae"}
    kinds = [c.kind for c in record]
    assert kinds.count("text_encoder") == 2 and kinds.count("unet") == 4
    assert kinds.count("vae.decode") == 2 and kinds.count("vae.encode") == 2
    unet_call = next(c for c in record if c.kind == "unet")
    assert unet_call.args[0].shape[0] == 2  # conditional and unconditional halves in one batch
    assert "vae.image" in ranges["vae"] and "vae.encoder.conv_in.out" in ranges["vae"]
    assert "vae.latent" in ranges["vae"] and "unet.encoder_hidden_states" in ranges["unet"]
    # the UNet's context range covers both the empty and the real prompts' features
    te_out = np.concatenate([c.output for c in record if c.kind == "text_encoder"])
    lo, hi = ranges["unet"]["unet.encoder_hidden_states"]
    assert lo == float(te_out.min()) and hi == float(te_out.max())
