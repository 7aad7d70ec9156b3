"""UNet graph + float interpreter vs diffusers' UNet2DConditionModel (fixtures from tools/make_fixtures.py)."""
import numpy as np
import pytest

from netfix import REL_TOL, load_net, load_ref, rel_err, shapes_of
from tinysd.config import UNetConfig
from tinysd.errors import TinySDError
from tinysd.models import UNet
from tinysd.nn.unet import UNet2DConditionModel, timestep_features

# tiny-sd: SD 1.x block types, 2 layers, mid block; unet-linear-heads: 3 blocks, DownBlock2D last,
# per-block heads, linear projections; unet-nomid-cond: no mid block, time_cond_proj_dim,
# flip_sin_to_cos False, freq_shift 1, downsample_padding 0.
CASES = [("tiny-sd/unet", "tiny-sd-unet"), ("nets/unet-linear-heads", "unet-linear-heads"),
         ("nets/unet-nomid-cond", "unet-nomid-cond")]


def _unet(folder):
    cfg, params = load_net(folder)
    return UNet.from_params(UNetConfig.from_dict(cfg), params)


@pytest.mark.parametrize("folder,ref", CASES)
def test_param_shapes_match_checkpoint(folder, ref):
    cfg, params = load_net(folder)
    assert UNet2DConditionModel(UNetConfig.from_dict(cfg)).param_shapes() == shapes_of(params)


@pytest.mark.parametrize("folder,ref", CASES)
def test_timestep_features_match_diffusers(folder, ref):
    cfg = UNetConfig.from_dict(load_net(folder)[0])
    r = load_ref(ref)
    ours = timestep_features(r["timesteps"], 2, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
    err = float(np.abs(ours - r["time_proj"]).max())
    print(f"{ref} time_proj: max|diff| = {err:.2e}")
    assert ours.dtype == np.float32
    assert err <= 1e-4  # values in [-1, 1]; sin/cos of float32 arguments up to ~1000 rad


@pytest.mark.parametrize("folder,ref", CASES)
def test_matches_diffusers(folder, ref):
    unet = _unet(folder)
    r = load_ref(ref)
    cond = r.get("timestep_cond")
    for t, want in [(r["timesteps"], "out"), (int(r["t_scalar"]), "out_t_scalar")]:
        out = unet(r["sample"], t, r["context"], timestep_cond=cond)
        err = rel_err(out, r[want])
        print(f"{ref} {want}: max|diff|/max|ref| = {err:.2e}")
        assert err <= REL_TOL, (want, err)


def test_heads_follow_diffusers_reversal():
    # up block i takes the head count of down block n-1-i
    cfg = UNetConfig.from_dict(load_net("nets/unet-linear-heads")[0])
    m = UNet2DConditionModel(cfg)
    assert [a.blocks[0].attn1.heads for a in m.down_blocks[0].attentions + m.down_blocks[1].attentions] == [2, 4]
    assert m.mid_block.attentions[0].blocks[0].attn1.heads == 8
    assert [b.attentions[0].blocks[0].attn1.heads for b in m.up_blocks[1:]] == [4, 2]


def test_bad_input():
    unet = _unet("tiny-sd/unet")
    r = load_ref("tiny-sd-unet")
    with pytest.raises(TinySDError, match="multiple of 2"):
        unet(r["sample"][:, :, :7], 10, r["context"])
    with pytest.raises(TinySDError, match="context"):
        unet(r["sample"], 10, r["context"][:1])
    with pytest.raises(TinySDError, match="timestep_cond"):
        unet(r["sample"], 10, r["context"], timestep_cond=np.zeros((2, 8), np.float32))
    with pytest.raises(TinySDError, match="timestep"):
        unet(r["sample"], [1, 2, 3], r["context"])
    cond_unet = _unet("nets/unet-nomid-cond")
    rc = load_ref("unet-nomid-cond")
    with pytest.raises(TinySDError, match="requires timestep_cond"):
        cond_unet(rc["sample"], 10, rc["context"])
