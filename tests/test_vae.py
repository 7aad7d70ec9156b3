"""VAE graph + float interpreter vs diffusers' AutoencoderKL (fixtures from tools/make_fixtures.py)."""
import pytest

from netfix import REL_TOL, load_net, load_ref, rel_err, shapes_of
from tinysd.config import VAEConfig
from tinysd.errors import TinySDError
from tinysd.models import VAE
from tinysd.nn.vae import AutoencoderKL

# tiny-sd: 2 blocks, mid-block attention; vae-3block: 3 blocks, 2 layers, no mid-block attention, 3 latents.
CASES = [("tiny-sd/vae", "tiny-sd-vae"), ("nets/vae-3block", "vae-3block")]


def _vae(folder):
    cfg, params = load_net(folder)
    return VAE.from_params(VAEConfig.from_dict(cfg), params)


@pytest.mark.parametrize("folder,ref", CASES)
def test_param_shapes_match_checkpoint(folder, ref):
    cfg, params = load_net(folder)
    assert AutoencoderKL(VAEConfig.from_dict(cfg)).param_shapes() == shapes_of(params)


@pytest.mark.parametrize("folder,ref", CASES)
def test_matches_diffusers(folder, ref):
    vae = _vae(folder)
    r = load_ref(ref)
    for got, want in [(vae.encode(r["x"]), "mean"), (vae.encode(r["x_odd"]), "mean_odd"), (vae.decode(r["z"]), "image")]:
        err = rel_err(got, r[want])
        print(f"{ref} {want}: max|diff|/max|ref| = {err:.2e}")
        assert err <= REL_TOL, (want, err)


def test_config_scaling_factor():
    assert _vae("nets/vae-3block").scaling_factor == 0.13025
    assert _vae("tiny-sd/vae").scaling_factor == 0.18215


def test_bad_input():
    vae = _vae("tiny-sd/vae")
    r = load_ref("tiny-sd-vae")
    with pytest.raises(TinySDError, match="image"):
        vae.encode(r["z"])
    with pytest.raises(TinySDError, match="latent"):
        vae.decode(r["x"])
