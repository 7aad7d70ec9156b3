"""AIMET encodings files (0.6.1, 1.0.0, 2.0.0, 2.1.0, AdaRound's parameter file) and the Encoding type."""
import json
import os

import numpy as np
import pytest

from tinysd.errors import TinySDError
from tinysd.quant.encodings import (
    Encoding,
    load_encodings,
    round_half_away_from_zero,
    save_encodings,
)
from tinysd.quant.observers import encoding_from_range
from tinysd.quant.weights import quantize_bias, quantize_weight


def _model_encodings():
    """A small set of encodings of every kind tinysd writes, made by the library itself."""
    rng = np.random.default_rng(0)
    act = {
        "unet.conv_in.out": encoding_from_range(-1.7, 2.3, 8),
        "unet.down_blocks.0.resnets.0.nonlinearity.out": encoding_from_range(-0.278, 5.1, 16),
        "text_encoder.text_model.final_layer_norm.out": encoding_from_range(0.0, 0.0, 16),  # degenerate
    }
    w = rng.normal(scale=0.05, size=(6, 4, 3, 3))
    wq, wenc = quantize_weight(w)
    _, benc = quantize_bias(rng.normal(size=6), act["unet.conv_in.out"].scale[0], wenc.scale)
    params = {
        "unet.conv_in.weight": wenc,
        "unet.conv_in.bias": benc,
        "unet.time_embedding.linear_1.weight": encoding_from_range(-0.4, 0.3, 8, symmetric=True),
    }
    return act, params


@pytest.mark.parametrize("version", ["1.0.0", "0.6.1"])
def test_round_trip(tmp_path, version):
    act, params = _model_encodings()
    path = tmp_path / "model.encodings"
    save_encodings(path, act, params, version=version)
    act2, params2, v = load_encodings(path)
    assert v == version
    assert act2.keys() == act.keys() and params2.keys() == params.keys()
    for name in act:
        assert act2[name] == act[name], name
    for name in params:
        assert params2[name] == params[name], name
    # float64 scales come back bit for bit
    assert act2["unet.conv_in.out"].scale.tobytes() == act["unet.conv_in.out"].scale.tobytes()


def test_v1_layout_written(tmp_path):
    act, params = _model_encodings()
    path = tmp_path / "e.json"
    save_encodings(path, act, params)
    doc = json.loads(path.read_text())
    assert set(doc) == {"version", "activation_encodings", "param_encodings", "excluded_layers", "quantizer_args"}
    assert doc["version"] == "1.0.0" and doc["excluded_layers"] == []
    for entry in doc["activation_encodings"] + doc["param_encodings"]:
        assert set(entry) == {"name", "dtype", "enc_type", "is_sym", "bw", "scale", "offset"}
        assert entry["dtype"] == "INT" and isinstance(entry["is_sym"], bool)
        assert len(entry["scale"]) == len(entry["offset"])
    w = next(e for e in doc["param_encodings"] if e["name"] == "unet.conv_in.weight")
    assert w["enc_type"] == "PER_CHANNEL" and w["is_sym"] is True and w["bw"] == 8
    assert w["offset"] == [-128] * 6
    b = next(e for e in doc["param_encodings"] if e["name"] == "unet.conv_in.bias")
    assert b["bw"] == 32 and b["offset"] == [-(2**31)] * 6
    a = next(e for e in doc["activation_encodings"] if e["name"] == "unet.conv_in.out")
    assert a["enc_type"] == "PER_TENSOR" and a["is_sym"] is False and len(a["scale"]) == 1
    args = doc["quantizer_args"]
    assert args["activation_bitwidth"] == 16 and args["param_bitwidth"] == 8
    assert args["is_symmetric"] is True and args["per_channel_quantization"] is True


def test_legacy_layout_written(tmp_path):
    act, params = _model_encodings()
    path = tmp_path / "e.json"
    save_encodings(path, act, params, version="0.6.1")
    doc = json.loads(path.read_text())
    assert set(doc) == {"version", "activation_encodings", "param_encodings", "quantizer_args"}
    assert isinstance(doc["activation_encodings"], dict)
    chans = doc["param_encodings"]["unet.conv_in.weight"]
    assert isinstance(chans, list) and len(chans) == 6
    for c, d in enumerate(chans):
        assert set(d) == {"bitwidth", "dtype", "is_symmetric", "max", "min", "offset", "scale"}
        assert d["is_symmetric"] == "True" and d["dtype"] == "int" and d["offset"] == -128
        assert d["min"] == -128 * d["scale"] and d["max"] == 127 * d["scale"]
    (a,) = doc["activation_encodings"]["unet.conv_in.out"]
    assert a["is_symmetric"] == "False" and a["bitwidth"] == 8
    assert doc["quantizer_args"]["is_symmetric"] == "True"
    assert doc["quantizer_args"]["per_channel_quantization"] == "True"


# Illustrative files in the layouts documented by AIMET's "Encoding Format Specification"
# (quic/aimet Docs/quantsim/encoding_spec.rst, sections 0.6.1 and 1.0.0). The numeric values of the
# activation and the per-tensor weight are those of the spec's own PyTorch example; tensor names are
# tinysd's. Hand-written here as test data, not produced by AIMET.
LEGACY_EXAMPLE = """{
    "version": "0.6.1",
    "activation_encodings": {
        "unet.conv_in.out": [
            {"bitwidth": 8, "dtype": "int", "is_symmetric": "False",
             "max": 2.6086959838867188, "min": -2.109158515930176,
             "offset": -114.0, "scale": 0.018501389771699905}
        ]
    },
    "param_encodings": {
        "unet.conv_out.weight": [
            {"bitwidth": 8, "dtype": "int", "is_symmetric": "False",
             "max": 0.06318144500255585, "min": -0.06268782913684845,
             "offset": -127.0, "scale": 0.0004936049808748066}
        ],
        "unet.conv_in.weight": [
            {"bitwidth": 8, "dtype": "int", "is_symmetric": "True",
             "max": 1.5240000486373901, "min": -1.5360000133514404, "offset": -128, "scale": 0.012000000104308128},
            {"bitwidth": 8, "dtype": "int", "is_symmetric": "True",
             "max": 1.9049999713897705, "min": -1.9199999570846558, "offset": -128, "scale": 0.014999999664723873}
        ]
    },
    "quantizer_args": {"activation_bitwidth": 8, "dtype": "int", "is_symmetric": "True",
                       "param_bitwidth": 8, "per_channel_quantization": "True",
                       "quant_scheme": "post_training_tf"}
}"""

V1_EXAMPLE = """{
    "version": "1.0.0",
    "activation_encodings": [
        {"name": "unet.conv_in.out", "dtype": "INT", "enc_type": "PER_TENSOR", "is_sym": false,
         "bw": 16, "scale": [8.392462041229010e-05], "offset": [-15490.0]}
    ],
    "param_encodings": [
        {"name": "unet.conv_in.weight", "dtype": "INT", "enc_type": "PER_CHANNEL", "is_sym": true,
         "bw": 8, "scale": [0.012000000104308128, 0.014999999664723873, 0.010999999940395355],
         "offset": [-128.0, -128.0, -128.0]},
        {"name": "unet.conv_in.bias", "dtype": "INT", "enc_type": "PER_CHANNEL", "is_sym": true,
         "bw": 32, "scale": [1e-06, 2e-06, 3e-06], "offset": [-2147483648, -2147483648, -2147483648]}
    ],
    "excluded_layers": [],
    "quantizer_args": {"activation_bitwidth": 16, "dtype": "int", "is_symmetric": true,
                       "param_bitwidth": 8, "per_channel_quantization": true,
                       "quant_scheme": "post_training_tf"}
}"""


def test_read_legacy_example(tmp_path):
    path = tmp_path / "legacy.encodings"
    path.write_text(LEGACY_EXAMPLE)
    act, params, version = load_encodings(path)
    assert version == "0.6.1"
    a = act["unet.conv_in.out"]
    assert (a.bitwidth, a.is_symmetric, a.axis) == (8, False, None)
    assert a.offset.tolist() == [-114] and a.zero_point.tolist() == [114]
    assert a.scale.tolist() == [0.018501389771699905]
    assert a.min.tolist() == [-2.109158515930176] and a.max.tolist() == [2.6086959838867188]  # as stored
    st = a.storage()
    assert st.dtype == np.uint8 and st.qmin.tolist() == [0] and st.qmax.tolist() == [255]
    w = params["unet.conv_in.weight"]
    assert w.per_channel and w.axis == 0 and w.channels == 2 and w.is_symmetric
    st = w.storage()
    assert st.dtype == np.int8 and st.qmin.tolist() == [-128, -128] and st.qmax.tolist() == [127, 127]
    assert st.zero_point.tolist() == [0, 0]
    assert not params["unet.conv_out.weight"].per_channel


def test_read_v1_example(tmp_path):
    path = tmp_path / "v1.encodings"
    path.write_text(V1_EXAMPLE)
    act, params, version = load_encodings(path)
    assert version == "1.0.0"
    a = act["unet.conv_in.out"]
    assert (a.bitwidth, a.offset.tolist(), a.storage().dtype) == (16, [-15490], np.uint16)
    # min/max are not in 1.0.0 files: re-derived from scale and offset
    assert a.min.tolist() == [-15490 * a.scale[0]] and a.max.tolist() == [(65535 - 15490) * a.scale[0]]
    w = params["unet.conv_in.weight"]
    assert w.axis == 0 and w.channels == 3 and w.offset.tolist() == [-128] * 3
    b = params["unet.conv_in.bias"]
    st = b.storage()
    assert st.dtype == np.int32 and st.zero_point.tolist() == [0] * 3
    assert st.qmin.tolist() == [-(2**31)] * 3 and st.qmax.tolist() == [2**31 - 1] * 3


def _v1_doc(act=None, params=None, **top):
    doc = json.loads(V1_EXAMPLE)
    if act is not None:
        doc["activation_encodings"][0].update(act)
    if params is not None:
        doc["param_encodings"][0].update(params)
    doc.update(top)
    return doc


def _legacy_doc(act=None, weight=None):
    doc = json.loads(LEGACY_EXAMPLE)
    if act is not None:
        doc["activation_encodings"]["unet.conv_in.out"][0].update(act)
    if weight is not None:
        doc["param_encodings"]["unet.conv_in.weight"][1].update(weight)
    return doc


A, W = "unet.conv_in.out", "unet.conv_in.weight"
BAD_DOCS = {
    "v1 activation bw 33": (_v1_doc(act={"bw": 33}), A, "bitwidth 33 outside [2, 32]"),
    "v1 param bw 1": (_v1_doc(params={"bw": 1}), W, "bitwidth 1 outside [2, 32]"),
    "v1 bw not integer": (_v1_doc(act={"bw": 8.5}), A, "'bw' must be an integer"),
    "v1 zero scale": (_v1_doc(act={"scale": [0.0]}), A, "scale must be > 0"),
    "v1 negative scale": (_v1_doc(params={"scale": [0.1, -0.2, 0.1]}), W, "scale must be > 0"),
    "v1 scale not a number": (_v1_doc(act={"scale": ["0.1"]}), A, "must be a number"),
    "v1 positive offset": (_v1_doc(act={"offset": [3]}), A, "outside [-65535, 0]"),
    "v1 offset too negative": (_v1_doc(params={"offset": [-128, -256, -128]}), W, "outside [-255, 0]"),
    "v1 fractional offset": (_v1_doc(act={"offset": [-12.5]}), A, "must be integers"),
    "v1 lengths differ": (_v1_doc(params={"offset": [-128, -128]}), W, "3 scales, 2 offsets"),
    "v1 per-tensor with 2 scales": (_v1_doc(act={"scale": [0.1, 0.2], "offset": [0, 0]}), A, "PER_TENSOR"),
    "v1 float dtype": (_v1_doc(act={"dtype": "FLOAT"}), A, "dtype 'FLOAT'"),
    "v1 per-block": (_v1_doc(params={"enc_type": "PER_BLOCK", "block_size": 2}), W, "PER_BLOCK"),
    "v1 is_sym as string": (_v1_doc(act={"is_sym": "False"}), A, "'is_sym' must be true or false"),
    "v1 missing scale": (_v1_doc(act={"scale": None}), A, "'scale'"),
    "legacy activation bitwidth 40": (_legacy_doc(act={"bitwidth": 40}), A, "bitwidth 40"),
    "legacy zero scale": (_legacy_doc(act={"scale": 0}), A, "scale must be > 0"),
    "legacy is_symmetric not a bool string": (_legacy_doc(act={"is_symmetric": "yes"}), A, "is_symmetric"),
    "legacy positive offset": (_legacy_doc(weight={"offset": 5}), W, "outside [-255, 0]"),
    "legacy channels disagree": (_legacy_doc(weight={"bitwidth": 16}), W, "channels disagree"),
    "legacy float dtype": (_legacy_doc(act={"dtype": "float"}), A, "dtype 'float'"),
}


@pytest.mark.parametrize("case", list(BAD_DOCS))
def test_bad_tensor_entries_name_file_and_tensor(tmp_path, case):
    doc, tensor, fragment = BAD_DOCS[case]
    doc = json.loads(json.dumps(doc))
    for section in ("activation_encodings", "param_encodings"):  # drop fields set to None
        entries = doc[section] if isinstance(doc[section], list) else [c for v in doc[section].values() for c in v]
        for e in entries:
            for k in [k for k, v in e.items() if v is None]:
                del e[k]
    path = tmp_path / "bad.encodings"
    path.write_text(json.dumps(doc))
    with pytest.raises(TinySDError) as info:
        load_encodings(path)
    msg = str(info.value)
    assert str(path) in msg and repr(tensor) in msg and fragment in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_scale(tmp_path, token):
    path = tmp_path / "nan.encodings"
    path.write_text(V1_EXAMPLE.replace("8.392462041229010e-05", token))
    with pytest.raises(TinySDError, match=r"unet\.conv_in\.out.*non-finite"):
        load_encodings(path)


def test_duplicate_name(tmp_path):
    doc = json.loads(V1_EXAMPLE)
    doc["param_encodings"].append(dict(doc["param_encodings"][0]))
    path = tmp_path / "dup.encodings"
    path.write_text(json.dumps(doc))
    with pytest.raises(TinySDError, match=r"'unet\.conv_in\.weight': listed twice"):
        load_encodings(path)


@pytest.mark.parametrize(
    "text, fragment",
    [
        (V1_EXAMPLE.replace('"1.0.0"', '"3.0.0"'), "unknown encodings version '3.0.0'"),
        (LEGACY_EXAMPLE.replace('"0.6.1"', '"0.5.0"'), "unknown encodings version '0.5.0'"),
        (V1_EXAMPLE.replace('"version": "1.0.0",', ""), "no 'version' field"),
        (V1_EXAMPLE[:200], "malformed JSON"),
        ("[1, 2]", "not an AIMET encodings file"),
        (json.dumps({"version": "1.0.0", "param_encodings": []}), "missing 'activation_encodings'"),
        (json.dumps({"version": "1.0.0", "activation_encodings": {}, "param_encodings": []}), "must be a list"),
        (json.dumps({"version": "0.6.1", "activation_encodings": [], "param_encodings": {}}), "must be an object"),
    ],
)
def test_bad_files(tmp_path, text, fragment):
    path = tmp_path / "x.encodings"
    path.write_text(text)
    with pytest.raises(TinySDError) as info:
        load_encodings(path)
    assert str(path) in str(info.value) and fragment in str(info.value), str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(TinySDError, match="not found"):
        load_encodings(tmp_path / "nope.encodings")


def test_save_rejects_bad_encodings_and_leaves_file_untouched(tmp_path):
    act, params = _model_encodings()
    path = tmp_path / "out.encodings"
    save_encodings(path, act, params)
    before = path.read_bytes()
    bad_act = dict(act, **{"unet.x.out": encoding_from_range(-1, 1, 4)})
    with pytest.raises(TinySDError, match=r"activation tensor 'unet\.x\.out': bitwidth 4"):
        save_encodings(path, bad_act, params)
    per_channel_act = dict(act, **{"unet.y.out": encoding_from_range([-1, -2], [1, 2], 8, axis=0)})
    with pytest.raises(TinySDError, match=r"'unet\.y\.out': per-channel activation"):
        save_encodings(path, per_channel_act, params)
    bad_params = dict(params, **{"unet.z.weight": encoding_from_range(-1, 1, 16, symmetric=True)})
    with pytest.raises(TinySDError, match=r"param tensor 'unet\.z\.weight': bitwidth 16"):
        save_encodings(path, act, bad_params)
    axis1 = dict(params, **{"unet.t.weight": encoding_from_range([-1, -2], [1, 2], 8, symmetric=True, axis=1)})
    with pytest.raises(TinySDError, match=r"'unet\.t\.weight': per-channel axis 1"):
        save_encodings(path, act, axis1)
    with pytest.raises(TinySDError, match="tinysd writes encodings versions 0.6.1, 1.0.0, not '2.0.0'"):
        save_encodings(path, act, params, version="2.0.0")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.encodings"]  # no temporary files left behind


def test_save_replaces_atomically(tmp_path):
    act, params = _model_encodings()
    path = tmp_path / "sub" / "out.encodings"
    save_encodings(path, act, params, version="0.6.1")
    save_encodings(path, act, params, version="1.0.0")
    assert load_encodings(path)[2] == "1.0.0"
    assert os.listdir(path.parent) == ["out.encodings"]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(bitwidth=8, scale=[0.1], offset=[0], is_symmetric=False, dtype="float"), "dtype 'float'"),
        (dict(bitwidth=1, scale=[0.1], offset=[0], is_symmetric=False), "bitwidth 1"),
        (dict(bitwidth=8, scale=[0.1, 0.2], offset=[0, 0], is_symmetric=False), "per-tensor encoding has 2"),
        (dict(bitwidth=8, scale=[0.1], offset=[0, 0], is_symmetric=False, axis=0), "1 scales, 2 offsets"),
        (dict(bitwidth=8, scale=[0.1], offset=[0], is_symmetric=False, min=[0, 1]), "1 scales, 2 min"),
        (dict(bitwidth=8, scale=[-0.1], offset=[0], is_symmetric=False), "scale must be > 0"),
        (dict(bitwidth=8, scale=[0.1], offset=[-256], is_symmetric=False), "outside [-255, 0]"),
        (dict(bitwidth=8, scale=[0.1], offset=[0], is_symmetric="True"), "is_symmetric must be a bool"),
        (dict(bitwidth=8, scale=[0.1], offset=[0], is_symmetric=False, axis=-1), "axis must be"),
    ],
)
def test_encoding_validation(kwargs, fragment):
    with pytest.raises(TinySDError) as info:
        Encoding(**kwargs)
    assert fragment in str(info.value)


def test_quantize_dequantize_asymmetric():
    enc = encoding_from_range(-1.3, 4.2, 8)
    x = np.linspace(-1.3, 4.2, 10001)
    q = enc.quantize(x)
    assert q.dtype == np.uint8
    err = np.abs(enc.dequantize(q) - x)
    assert err.max() <= enc.scale[0] / 2 * (1 + 1e-12)
    assert enc.dequantize(enc.quantize(0.0)) == 0.0  # zero is exact
    assert enc.quantize(-100.0) == 0 and enc.quantize(100.0) == 255  # saturates


def test_quantize_per_channel_axis():
    w = np.ones((3, 5, 2))
    enc = encoding_from_range([-1, -2], [1, 4], 8, symmetric=True, axis=2)
    q = enc.quantize(w)
    assert q.dtype == np.int8 and q.shape == w.shape
    np.testing.assert_array_equal(q[..., 0], round_half_away_from_zero(1 / enc.scale[0]))
    np.testing.assert_array_equal(q[..., 1], round_half_away_from_zero(1 / enc.scale[1]))
    with pytest.raises(TinySDError, match="does not fit a tensor of shape"):
        enc.quantize(np.zeros((2, 3, 4)))


def test_round_half_away_from_zero():
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999999999999994, -0.49999999999999994,
                  2.0**52 + 1, -(2.0**52) - 1, 1e300, 0.0, 2.4999999999999996])
    expected = np.array([1, -1, 2, -2, 3, -3, 0, 0, 2.0**52 + 1, -(2.0**52) - 1, 1e300, 0, 2])
    np.testing.assert_array_equal(round_half_away_from_zero(x), expected)
    rng = np.random.default_rng(5)
    y = rng.normal(scale=1000, size=10000)
    r = round_half_away_from_zero(y)
    assert np.all(np.abs(y - r) <= 0.5) and np.all(r == np.trunc(r))


def test_bitwidths_are_checked_where_used_not_when_read(tmp_path):
    """AIMET files hold encodings tinysd does not use (16-bit norm scales, 4-bit weights of another layer):
    reading accepts every bitwidth the spec allows; the quantizer checks the tensors it uses."""
    path = tmp_path / "odd.encodings"
    path.write_text(json.dumps(_v1_doc(act={"bw": 4, "offset": [-3]}, params={"bw": 16})))
    act, params, _ = load_encodings(path)
    assert act[A].bitwidth == 4 and params[W].bitwidth == 16


# 2.0.0 / 2.1.0: the list layout of AIMET's spec (ONNX QuantizeLinear fields); hand-written test data.
V2_EXAMPLE = {
    "version": "2.0.0",
    "producer": {"package": "aimet-onnx", "version": "2.42.0"},
    "encodings": [
        {"name": "/conv_in/Conv_output_0", "output_dtype": "uint8", "y_scale": 0.02, "y_zero_point": 114},
        {"name": "/act/Sigmoid_output_0", "output_dtype": "uint8", "y_scale": 0.00392156862745098},
        {"name": "/norm/Add_output_0", "output_dtype": "uint16", "y_scale": 1e-4, "y_zero_point": 30000},
        {"name": "/x/signed", "output_dtype": "int16", "y_scale": 2e-4, "y_zero_point": -100},
        {"name": "conv_in.weight", "output_dtype": "int8", "axis": 0, "y_scale": [0.012, 0.015, 0.011]},
        {"name": "onnx::MatMul_12", "output_dtype": "int8", "axis": 1, "y_scale": [0.5, 0.25],
         "y_zero_point": [0, 0]},
        {"name": "conv_in.bias", "output_dtype": "int32", "axis": 0, "y_scale": [1e-6, 2e-6, 3e-6]},
        {"name": "per_tensor.weight", "output_dtype": "int8", "y_scale": [0.1]},
    ],
}


@pytest.mark.parametrize("version", ["2.0.0", "2.1.0"])
def test_read_v2(tmp_path, version):
    path = tmp_path / "v2.encodings"
    path.write_text(json.dumps(dict(V2_EXAMPLE, version=version)))
    act, params, v = load_encodings(path)
    assert v == version
    assert list(act) == ["/conv_in/Conv_output_0", "/act/Sigmoid_output_0", "/norm/Add_output_0"]
    assert set(params) == {"/x/signed", "conv_in.weight", "onnx::MatMul_12", "conv_in.bias", "per_tensor.weight"}
    a = act["/conv_in/Conv_output_0"]  # uint8, zero point 114: offset -114 on the unsigned grid
    assert (a.bitwidth, a.offset.tolist(), a.scale.tolist(), a.is_symmetric) == (8, [-114], [0.02], False)
    assert act["/act/Sigmoid_output_0"].offset.tolist() == [0]  # y_zero_point omitted: 0
    assert act["/norm/Add_output_0"].storage().dtype == np.uint16
    s = params["/x/signed"]  # int16 with zero point -100: unsigned grid offset -(2**15 - 100)
    assert s.bitwidth == 16 and s.offset.tolist() == [-(2**15 - 100)] and not s.is_symmetric
    assert np.allclose(s.dequantize(s.quantize([0.0, 0.01])), [0.0, 0.01])
    w = params["conv_in.weight"]  # int8, zero point 0: symmetric, offset -128, per channel on axis 0
    assert (w.axis, w.channels, w.is_symmetric, w.offset.tolist()) == (0, 3, True, [-128] * 3)
    assert w.storage().dtype == np.int8
    assert params["onnx::MatMul_12"].axis == 1  # the graph's axis: the name map moves it with the layout
    b = params["conv_in.bias"]
    assert b.bitwidth == 32 and b.storage().dtype == np.int32
    assert not params["per_tensor.weight"].per_channel


V2_BAD = {
    "float dtype": ({"output_dtype": "float8e4m3fn"}, "not supported"),
    "unknown dtype": ({"output_dtype": "quint8"}, "output_dtype"),
    "per block": ({"axis": 1, "block_size": 32, "y_scale": [0.1, 0.2]}, "per-block"),
    "nested scale": ({"axis": 1, "y_scale": [[0.1, 0.2]]}, "per-block"),
    "meta scale (2.1.0 double quantization)": ({"y_scale": {"x": [[3]], "x_scale": [0.001]}}, "meta"),
    "fractional zero point": ({"y_zero_point": -0.5}, "fractional"),
    "several scales without axis": ({"y_scale": [0.1, 0.2]}, "no 'axis'"),
    "lengths differ": ({"axis": 0, "y_scale": [0.1, 0.2], "y_zero_point": [1, 2, 3]}, "2 scales, 3 zero points"),
    "missing scale": ({"y_scale": None}, "'y_scale'"),
    "zero scale": ({"y_scale": 0.0}, "scale must be > 0"),
    "zero point outside the grid": ({"y_zero_point": 300}, "outside [-255, 0]"),
}


@pytest.mark.parametrize("case", list(V2_BAD))
def test_bad_v2_entries(tmp_path, case):
    change, fragment = V2_BAD[case]
    entry = dict(V2_EXAMPLE["encodings"][0])
    entry.update({k: v for k, v in change.items() if v is not None})
    for k in [k for k, v in change.items() if v is None]:
        del entry[k]
    path = tmp_path / "bad2.encodings"
    path.write_text(json.dumps({"version": "2.0.0", "encodings": [entry]}))
    with pytest.raises(TinySDError) as info:
        load_encodings(path)
    msg = str(info.value)
    assert str(path) in msg and "/conv_in/Conv_output_0" in msg and fragment in msg, msg


def test_v2_duplicate_and_layout(tmp_path):
    path = tmp_path / "dup.encodings"
    path.write_text(json.dumps({"version": "2.0.0", "encodings": [V2_EXAMPLE["encodings"][0]] * 2}))
    with pytest.raises(TinySDError, match="listed twice"):
        load_encodings(path)
    path.write_text(json.dumps({"version": "2.0.0", "activation_encodings": []}))
    with pytest.raises(TinySDError, match="'encodings' must be a list"):
        load_encodings(path)


def test_adaround_parameter_files(tmp_path):
    """AdaRound's parameter file has no version: aimet-torch writes {"param_encodings": {NAME: [0.6.1 ENC, ...]}},
    aimet-onnx also accepts a bare 0.6.1 dict or a 1.0.0 list. All read as version "adaround"."""
    legacy = json.loads(LEGACY_EXAMPLE)["param_encodings"]
    v1 = json.loads(V1_EXAMPLE)["param_encodings"]
    for doc in ({"param_encodings": legacy}, legacy, v1, {"param_encodings": v1}):
        path = tmp_path / "ada.encodings"
        path.write_text(json.dumps(doc))
        act, params, version = load_encodings(path)
        assert version == "adaround" and act == {}
        assert "unet.conv_in.weight" in params and params["unet.conv_in.weight"].channels in (2, 3)
    path.write_text(json.dumps({"param_encodings": {"unet.x.weight": [{"bitwidth": 8, "is_symmetric": "True",
                                                                        "offset": -128, "scale": -1.0}]}}))
    with pytest.raises(TinySDError, match=r"unet\.x\.weight.*scale must be > 0"):
        load_encodings(path)
    path.write_text(json.dumps({"foo": 1}))
    with pytest.raises(TinySDError, match="no 'version' field"):
        load_encodings(path)
