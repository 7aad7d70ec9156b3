"""Samplers against diffusers, step for step (fixture: tools/make_scheduler_fixtures.py).

Tolerances, relative to max |reference| of each compared array:
  STEP_RTOL = 1e-6 when our scheduler is given diffusers' own float32 alphas_cumprod:
    the only differences left are diffusers' float32 step arithmetic (about ten
    float32 roundings of 2**-24 each, ~6e-7 worst case); this isolates the sampler math.
  RUN_RTOL = 5e-5 for whole SD 1.x (scaled_linear) runs with our float64 schedule:
    diffusers builds its table in float32, which moves sigmas near t=0 by up to
    1.3e-5 relative, and Karras endpoints with them. Runs on the `linear`
    schedule are not compared this way: there diffusers' float32 sigma at t=0 is
    itself 8.3e-5 off the exact value (1 - abar = 1e-4 is computed from a float32
    abar), so the linear cases are covered by the step-for-step test only.
"""
import json

import numpy as np
import pytest

from tinysd.config import SchedulerConfig
from tinysd.errors import TinySDError
from tinysd.schedulers import (
    SAMPLERS,
    NoiseSource,
    alphas_cumprod_from_config,
    make_scheduler,
)

STEP_RTOL = 1e-6
RUN_RTOL = 5e-5
AC_RTOL = 4e-6  # our float64 alphas_cumprod vs diffusers' float32 one
T_ATOL_FRACTIONAL = 2 * float(np.spacing(np.float32(1000)))  # diffusers stores fractional timesteps as float32

FIX = np.load(__import__("pathlib").Path(__file__).parent / "fixtures" / "schedulers.npz")
META = json.loads(str(FIX["meta"]))
CASES = META["cases"]


def parse(name):
    sampler, spacing, pred, beta, n = name.split("-")
    karras = sampler.endswith("_karras")
    base = META["sd15_config"] if beta == "scaled_linear" else META["linear_config"]
    cfg = SchedulerConfig(**base, beta_schedule=beta, prediction_type=pred, timestep_spacing=spacing)
    return sampler.removesuffix("_karras"), karras, cfg, beta, int(n[1:])


def ref(name, key):
    return FIX[f"{name}__{key}"]


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("beta", ["scaled_linear", "linear"])
def test_alphas_cumprod_matches_diffusers(beta):
    base = META["sd15_config"] if beta == "scaled_linear" else META["linear_config"]
    ours = alphas_cumprod_from_config(SchedulerConfig(**base, beta_schedule=beta))
    theirs = FIX[f"alphas_cumprod__{beta}"].astype(np.float64)
    assert ours.dtype == np.float64
    assert np.max(np.abs(ours / theirs - 1)) <= AC_RTOL


@pytest.mark.parametrize("name", CASES)
def test_step_for_step_with_diffusers_table(name):
    """Each step fed diffusers' own sample and model output gives diffusers' result."""
    sampler, karras, cfg, beta, n = parse(name)
    s = make_scheduler(sampler, cfg, karras=karras, alphas_cumprod=FIX[f"alphas_cumprod__{beta}"])
    s.set_timesteps(n)
    t_ref = ref(name, "timesteps")
    if np.all(t_ref == np.round(t_ref)) and not (karras and sampler in ("euler", "euler_a")):
        np.testing.assert_array_equal(s.timesteps, t_ref)
    else:
        assert np.max(np.abs(s.timesteps - t_ref)) <= T_ATOL_FRACTIONAL
    if f"{name}__sigmas" in FIX:
        assert rel(s.sigmas, ref(name, "sigmas")) <= STEP_RTOL
    assert abs(s.init_noise_sigma / ref(name, "init_noise_sigma") - 1) <= STEP_RTOL
    sample = ref(name, "sample0")
    for i in range(n):
        scaled = s.scale_model_input(sample, i)
        assert scaled.dtype == np.float64
        assert rel(scaled, ref(name, "scaled")[i]) <= STEP_RTOL, f"scale_model_input, step {i}"
        noise = ref(name, "noise")[i] if s.needs_noise else None
        out = s.step(ref(name, "eps")[i], i, sample, noise=noise)
        assert out.prev_sample.dtype == np.float64
        assert rel(out.prev_sample, ref(name, "prev")[i]) <= STEP_RTOL, f"prev_sample, step {i}"
        if f"{name}__x0" in FIX:
            assert rel(out.pred_original_sample, ref(name, "x0")[i]) <= STEP_RTOL, f"pred_original_sample, step {i}"
        sample = ref(name, "prev")[i]


@pytest.mark.parametrize("name", [c for c in CASES if "-scaled_linear-" in c])
def test_whole_run_with_own_schedule(name):
    """Our float64 schedule, our own trajectory (errors may compound), same model outputs and noise."""
    sampler, karras, cfg, beta, n = parse(name)
    s = make_scheduler(sampler, cfg, karras=karras)
    s.set_timesteps(n)
    # the initial sample is the same standard noise times our init_noise_sigma
    x = ref(name, "sample0").astype(np.float64) / ref(name, "init_noise_sigma") * s.init_noise_sigma
    for i in range(n):
        x = s.step(ref(name, "eps")[i], i, x, noise=ref(name, "noise")[i] if s.needs_noise else None).prev_sample
        assert rel(x, ref(name, "prev")[i]) <= RUN_RTOL, f"step {i}"


def test_fixture_covers_every_sampler():
    assert {parse(c)[0] for c in CASES} == set(SAMPLERS)
    assert {parse(c)[2].prediction_type for c in CASES} == {"epsilon", "v_prediction"}
    assert {parse(c)[2].timestep_spacing for c in CASES} == {"leading", "linspace", "trailing"}


def test_sd15_leading_timesteps():
    """SD 1.5's scheduler config (leading, steps_offset=1): 20 steps are 951, 901, ..., 1 for DDIM and Euler."""
    for name in ("ddim", "euler"):
        s = make_scheduler(name, SchedulerConfig())
        s.set_timesteps(20)
        np.testing.assert_array_equal(s.timesteps, np.arange(951, 0, -50))


def test_bad_sampler_options():
    with pytest.raises(TinySDError, match="unknown"):
        make_scheduler("heun")
    with pytest.raises(TinySDError, match="Karras"):
        make_scheduler("ddim", karras=True)
    s = make_scheduler("euler")
    for bad in (0, -3, 2.5):
        with pytest.raises(TinySDError, match="steps"):
            s.set_timesteps(bad)
    a = make_scheduler("euler_a")
    a.set_timesteps(4)
    with pytest.raises(ValueError, match="noise"):
        a.step(np.zeros((1, 4, 2, 2)), 0, np.zeros((1, 4, 2, 2)))
    d = make_scheduler("dpmpp_2m")
    d.set_timesteps(4)
    d.step(np.zeros((1, 4, 2, 2)), 0, np.ones((1, 4, 2, 2)))
    with pytest.raises(ValueError, match="in order"):
        d.step(np.zeros((1, 4, 2, 2)), 2, np.ones((1, 4, 2, 2)))


def test_euler_a_karras_uses_euler_karras_sigmas():
    e, a = make_scheduler("euler", karras=True), make_scheduler("euler_a", karras=True)
    e.set_timesteps(9)
    a.set_timesteps(9)
    np.testing.assert_array_equal(e.sigmas, a.sigmas)
    np.testing.assert_array_equal(e.timesteps, a.timesteps)
    # with zero noise, one ancestral step lands where Euler lands at sigma_down < sigma_next
    x = np.linspace(-1, 1, 16).reshape(1, 4, 2, 2)
    eps = np.cos(np.arange(16.0)).reshape(1, 4, 2, 2)
    xa = a.step(eps, 0, x, noise=np.zeros_like(x)).prev_sample
    s0, s1 = a.sigmas[0], a.sigmas[1]
    s_down = np.sqrt(s1**2 - s1**2 * (s0**2 - s1**2) / s0**2)
    np.testing.assert_allclose(xa, x + eps * (s_down - s0), rtol=1e-12, atol=1e-12)


def test_noise_source_streams():
    """Documented algorithm: image i draws Generator(PCG64(seed + i)).standard_normal in float64, in call order."""
    src = NoiseSource(7, batch_size=3)
    a, b = src.randn((4, 2, 2)), src.randn((4, 2, 2))
    assert a.shape == (3, 4, 2, 2) and a.dtype == np.float64
    for i in range(3):
        g = np.random.Generator(np.random.PCG64(7 + i))
        np.testing.assert_array_equal(a[i], g.standard_normal((4, 2, 2)))
        np.testing.assert_array_equal(b[i], g.standard_normal((4, 2, 2)))
    single = NoiseSource(8).randn((4, 2, 2))
    np.testing.assert_array_equal(single[0], a[1])
    assert not np.array_equal(a[0], a[1])
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(TinySDError, match="seed"):
            NoiseSource(bad)


def test_lcm_timesteps_and_limits():
    """LCM's 4 steps of SD's schedule are 999, 759, 499, 259 whatever the spacing; more steps than
    original_inference_steps are refused (diffusers raises too)."""
    for spacing in ("leading", "trailing"):
        s = make_scheduler("lcm", SchedulerConfig(timestep_spacing=spacing))
        s.set_timesteps(4)
        np.testing.assert_array_equal(s.timesteps, [999, 759, 499, 259])
    with pytest.raises(TinySDError, match="original_inference_steps"):
        make_scheduler("lcm", SchedulerConfig(original_inference_steps=8)).set_timesteps(9)
    with pytest.raises(TinySDError, match="Karras"):
        make_scheduler("lcm", karras=True)


@pytest.mark.parametrize("dim", [16, 256])
def test_guidance_embedding_matches_diffusers(dim):
    from tinysd.nn.unet import guidance_embedding

    ours = guidance_embedding(FIX["w_embedding__w"], dim)
    theirs = FIX[f"w_embedding__d{dim}"]
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    # both float32 with the same operations; an argument e = 1000 w f_i up to 11000 is rounded to float32 (and
    # NumPy's and torch's exp differ by an ulp), so sin/cos may differ by a few ulps of e: allow 2 ulps of e
    w = FIX["w_embedding__w"].astype(np.float64)
    half = dim // 2
    e = 1000.0 * w[:, None] * np.exp(-np.arange(half) * np.log(10000.0) / (half - 1))[None, :]  # (B, half)
    tol = 2.0 * np.abs(np.concatenate([e, e], axis=1)) * 2.0**-23 + 1e-7
    assert np.all(np.abs(ours.astype(np.float64) - theirs) <= tol)
    np.testing.assert_array_equal(ours[w == 0], theirs[w == 0])
