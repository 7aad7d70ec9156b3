"""Single-layer cases cut from recorded ops, and the recording interpreter."""
from pathlib import Path

import numpy as np
import pytest
from golden_helpers import conv_record

from tinysd import kernels
from tinysd.golden import GoldenFolder, GoldenWriter
from tinysd.golden.cases import CropLimits, layer_case
from tinysd.interp.record import RecordingInterpreter, TapTensor

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-sd"

GEOMETRIES = [  # (stride, padding, k): the padding cases of SD (1, and asymmetric downsampling)
    (1, 1, 3), (2, 1, 3), (2, (0, 1, 0, 1), 3), (1, 0, 1), (3, 2, 5),
]


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("stride,padding,k", GEOMETRIES)
def test_cut_conv_case_is_exact(bits, stride, padding, k):
    rng = np.random.default_rng(bits * 100 + stride * 10 + k)
    rec = conv_record(rng, bits=bits, n=2, c=5, h=13, w=11, o=7, k=k, stride=stride, padding=padding, extra_shift=2)
    full = rec.output.data
    for lim in (CropLimits(batch=1, channels=3, spatial=2), CropLimits(batch=1, channels=4, spatial=100), None):
        case = layer_case(rec, "synth", "c", limits=lim)
        t = {x.short: x for x in case.tensors}
        out = t["out"].data
        n, o, ho, wo = out.shape
        # the expected output is exactly the leading window of the real op's output
        np.testing.assert_array_equal(out, full[:n, :o, :ho, :wo])
        assert o == (full.shape[1] if lim is None else min(full.shape[1], lim.channels))
        assert ho == (full.shape[2] if lim is None else min(full.shape[2], lim.spatial))
        # the cut case is self-contained: the fast kernel on its own inputs gives it too
        a = case.attrs
        again = kernels.conv2d(t["x"].data, a["x_zp"], t["weight_q"].data, t["bias_q"].data, t["multiplier"].data,
                               t["shift"].data, a["out_zp"], a["qmin"], a["qmax"], stride=tuple(a["stride"]),
                               padding=tuple(a["padding"]), acc_shift=t["acc_shift"].data)
        np.testing.assert_array_equal(again, out)
        assert (case.note is None) == (lim is None or out.shape == full.shape)


def test_cut_input_window_needs_bottom_padding_only_past_the_edge():
    rng = np.random.default_rng(5)
    rec = conv_record(rng, n=1, c=2, h=4, w=4, o=2, k=3, stride=1, padding=1)
    case = layer_case(rec, "synth", "c", limits=CropLimits(channels=2, spatial=3))
    assert case.attrs["padding"] == [1, 0, 1, 0]  # rows 0..3 of the input are read, none past the edge
    assert {t.short: t.data.shape for t in case.tensors}["x"] == (1, 2, 4, 4)
    case = layer_case(rec, "synth", "c", limits=CropLimits(channels=2, spatial=4))
    assert case.attrs["padding"] == [1, 1, 1, 1] and case.note is None


def test_disagreeing_engine_output_is_refused():
    rec = conv_record(np.random.default_rng(1))
    rec.output.data[0, 0, 0, 0] ^= 1
    with pytest.raises(RuntimeError, match="differs from the network's output"):
        layer_case(rec, "synth", "c", limits=CropLimits(channels=2, spatial=2))
    rec.output.data[0, 0, 0, 0] ^= 1
    layer_case(rec, "synth", "c", limits=CropLimits(channels=2, spatial=2))


def test_conv_case_written_and_read_back(tmp_path):
    rec = conv_record(np.random.default_rng(2), bits=16)
    case = layer_case(rec, "synth", "p000/layers/conv", limits=CropLimits(channels=3, spatial=4))
    with GoldenWriter(tmp_path / "g", "raw", "nhwc") as w:
        w.write_case(case)
    g = GoldenFolder(tmp_path / "g")
    by = {t["name"]: t for t in g.tensors}
    assert by["synth.conv.x"]["layout"] == "NHWC" and by["synth.conv.weight_q"]["layout"] == "OHWI"
    assert by["synth.conv.out"]["role"] == "output" and by["synth.conv.multiplier"]["role"] == "param"
    for t in case.tensors:
        np.testing.assert_array_equal(g.load(by[t.name], engine_layout=True), t.data)


# ---------------------------------------------------------------------------------------------
# the recording interpreter
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_unet():
    from tinysd.checkpoint import load_checkpoint
    from tinysd.models import UNet

    loaded = load_checkpoint(TINY)
    return UNet.from_params(loaded.config.unet, loaded.params["unet"])


def test_recording_changes_nothing_and_taps_by_name(tiny_unet):
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    ctx = rng.standard_normal((2, 77, 8)).astype(np.float32)
    inner = tiny_unet.interp
    # a recorder taps the three attention ops (scores, probs, context), so compare with the float engine computing
    # them too; its fused attention agrees to float32 rounding (tests/interp/test_integer.py::test_float_attention_fused)
    inner.fuse_attention = False
    plain = tiny_unet(sample, 10, ctx)
    rec = RecordingInterpreter(inner, match="down_blocks.0.resnets.0.*")
    tiny_unet.interp = rec
    try:
        taped = tiny_unet(sample, 10, ctx)
    finally:
        tiny_unet.interp = inner
    np.testing.assert_array_equal(plain, taped)
    matched = [r for r in rec.records if r.matched]
    assert matched and all(r.name.startswith("down_blocks.0.resnets.0.") for r in matched)
    conv1 = next(r for r in matched if r.name == "down_blocks.0.resnets.0.conv1")
    assert conv1.op == "conv2d" and conv1.tensor == "unet.down_blocks.0.resnets.0.conv1.out"
    assert conv1.attrs == {"stride": 1, "padding": 1} and set(conv1.params) == {"weight", "bias"}
    assert conv1.output.data.shape == (2, 8, 8, 8)
    boundary = [(r.op, r.name) for r in rec.records if not r.matched]
    assert boundary == [("input", "sample"), ("input", "time_proj"), ("input", "encoder_hidden_states"),
                        ("output", "out")]
    np.testing.assert_array_equal(rec.records[-1].inputs["x"].data, plain)
    assert {r.call for r in rec.records} == {0} and rec.calls == 1
    # the full-name form of the glob matches too; ops=False keeps only the boundary
    assert RecordingInterpreter(inner, match="unet.conv_in").matches("conv_in")
    assert not RecordingInterpreter(inner, ops=False).matches("conv_in")


def test_tap_tensor_is_a_private_copy():
    a = np.arange(4, dtype=np.uint8)
    t = TapTensor.of(a)
    a[0] = 9
    assert t.data[0] == 0 and t.zero_point is None
