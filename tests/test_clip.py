"""CLIP text encoder graph + float interpreter vs transformers' CLIPTextModel (fixtures from tools/make_fixtures.py)."""
import numpy as np
import pytest

from netfix import REL_TOL, load_net, load_ref, rel_err, shapes_of
from tinysd.config import CLIPTextConfig
from tinysd.errors import TinySDError
from tinysd.interp.float import FloatInterpreter
from tinysd.models import TextEncoder
from tinysd.nn.clip import CLIPTextModel

CASES = [("tiny-sd/text_encoder", "tiny-sd-text_encoder"), ("nets/clip-gelu", "clip-gelu")]


def _encoder(folder):
    cfg, params = load_net(folder)
    return TextEncoder.from_params(CLIPTextConfig.from_dict(cfg), params), params


@pytest.mark.parametrize("folder,ref", CASES)
def test_param_shapes_match_checkpoint(folder, ref):
    cfg, params = load_net(folder)
    assert CLIPTextModel(CLIPTextConfig.from_dict(cfg)).param_shapes() == shapes_of(params)


@pytest.mark.parametrize("folder,ref", CASES)
def test_matches_transformers(folder, ref):
    enc, _ = _encoder(folder)
    r = load_ref(ref)
    for ids, want, skip in [("ids", "last_hidden_state", None), ("ids_short", "last_hidden_state_short", None),
                            ("ids", "clip_skip1", 1)]:
        out = enc(r[ids], clip_skip=skip)
        err = rel_err(out, r[want])
        print(f"{ref} {want}: max|diff|/max|ref| = {err:.2e}")
        assert err <= REL_TOL, (want, err)


def test_clip_skip_zero_is_last_hidden_state():
    enc, _ = _encoder("tiny-sd/text_encoder")
    ids = load_ref("tiny-sd-text_encoder")["ids"]
    np.testing.assert_array_equal(enc(ids, clip_skip=0), enc(ids))


def test_bad_input():
    enc, params = _encoder("nets/clip-gelu")
    with pytest.raises(TinySDError, match="vocabulary"):
        enc(np.array([[0, 320]]))
    with pytest.raises(TinySDError, match="tokens"):
        enc(np.zeros((1, 78), dtype=np.int64))
    with pytest.raises(TinySDError, match="integer"):
        enc(np.zeros((1, 5), dtype=np.float32))
    with pytest.raises(TinySDError, match="clip_skip"):
        enc(np.zeros((1, 5), dtype=np.int64), clip_skip=3)


def test_missing_parameter_is_named():
    cfg, params = load_net("nets/clip-gelu")
    key = "text_model.encoder.layers.1.mlp.fc1.weight"
    del params[key]
    model = CLIPTextModel(CLIPTextConfig.from_dict(cfg))
    with pytest.raises(TinySDError, match=key.replace(".", r"\.")):
        model(FloatInterpreter(params, "text_encoder"), np.zeros((1, 5), dtype=np.int64))
    with pytest.raises(TinySDError, match=key.replace(".", r"\.")):
        TextEncoder.from_params(CLIPTextConfig.from_dict(cfg), params)
