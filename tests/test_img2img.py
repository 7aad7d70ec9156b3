"""img2img (tinysd/img2img.py, Pipeline(init_image=, strength=)) against diffusers' StableDiffusionImg2ImgPipeline.

The fixture (tests/fixtures/img2img_runs.npz, tools/make_pipeline_fixtures.py --what img2img) holds diffusers'
runs on the tiny model with tinysd's seeded noise; see the tool's docstring for how the noise is fed.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinysd import img2img
from tinysd.errors import TinySDError
from tinysd.pipeline import Pipeline
from tinysd.png import GenerationParams, params_from_text, read_parameters
from tinysd.schedulers import make_scheduler
from clitools import assert_one_line_error, run

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-sd"
RUNS = np.load(FIXTURES / "img2img_runs.npz")
META = json.loads(str(RUNS["meta"]))
RUN_RTOL = 1e-4  # as tests/test_pipeline.py: the project's bound for network outputs, applied to whole runs


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained(TINY)


@pytest.fixture(scope="module")
def init():
    return Image.fromarray(RUNS["init_image"], mode="RGB")


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def run_fixture(pipe, init, run, **kw):
    m = META
    return pipe.generate(m["prompt"], negative_prompt=m["negative_prompt"], steps=m["steps"], guidance_scale=m["cfg"],
                         seed=m["seed"], sampler=run["sampler"], karras=run["karras"], batch_size=m["batch"],
                         init_image=init, strength=run["strength"], **kw)


@pytest.mark.parametrize("run", META["runs"], ids=[r["key"] for r in META["runs"]])
def test_img2img_matches_diffusers(pipe, init, run):
    """Final latents, decoded image and 8-bit image of diffusers' img2img, batch 2, steps = int(5 x strength)."""
    calls = []
    res = run_fixture(pipe, init, run, callback=lambda done, total: calls.append((done, total)))
    key = run["key"]
    n_run = len(RUNS[f"{key}__timesteps"])
    assert calls == [(k, n_run) for k in range(1, n_run + 1)]
    assert rel(res.latents, RUNS[f"{key}__latents"]) <= RUN_RTOL
    ref_images = RUNS[f"{key}__images"].astype(np.float64)  # (B, H, W, 3) in [0, 1]
    decoded = pipe.vae.decode((res.latents / pipe.vae.scaling_factor).astype(np.float32))
    ours = np.clip(decoded.astype(np.float64) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    assert np.max(np.abs(ours - ref_images)) <= RUN_RTOL
    ours_u8 = np.stack([np.asarray(im) for im in res.images]).astype(np.int64)
    assert np.max(np.abs(ours_u8 - np.round(ref_images * 255))) <= 1
    assert [im.size for im in res.images] == [init.size] * 2
    p = res.params[0]
    assert (p.steps, p.denoising_strength, p.width, p.height) == (META["steps"], run["strength"], 24, 16)


def test_resized_init_image_matches_diffusers(pipe):
    """A 25x17 image: diffusers resizes it with Lanczos to 24x16 (a multiple of its vae_scale_factor, 2, here);
    tinysd rounds down to its size multiple (8), the same size here, and resizes the same way."""
    run = META["resized_run"]
    res = run_fixture(pipe, Image.fromarray(RUNS[run["init_image"]]), run)
    assert res.images[0].size == (24, 16)
    assert rel(res.latents, RUNS[f"{run['key']}__latents"]) <= RUN_RTOL


def test_timesteps_run_are_diffusers(pipe):
    for run in META["runs"]:
        sched = make_scheduler(run["sampler"], pipe.config.scheduler, karras=run["karras"])
        sched.set_timesteps(META["steps"])
        i0 = img2img.start_index(META["steps"], run["strength"])
        np.testing.assert_allclose(sched.timesteps[i0:], RUNS[f"{run['key']}__timesteps"], rtol=1e-6)


def test_batch_image_i_is_seed_plus_i(pipe, tmp_path):
    """Image 1 of the fixture's batch is the batch of one with seed + 1 (its own noise stream); a path works too."""
    path = tmp_path / "init.png"
    Image.fromarray(RUNS["init_image"]).save(path)
    one = pipe.generate(META["prompt"], negative_prompt=META["negative_prompt"], steps=META["steps"],
                        guidance_scale=META["cfg"], seed=META["seed"] + 1, sampler="euler_a", init_image=path,
                        strength=0.6)
    batch = RUNS["euler_a_s0.6__latents"]
    assert rel(one.latents[0], batch[1]) <= RUN_RTOL and rel(one.latents[0], batch[0]) > 1e-2


@pytest.mark.parametrize("steps, strength, start", [(20, 0.75, 5), (10, 0.3, 7), (5, 1.0, 0), (50, 0.57, 22),
                                                    (4, 0.25, 3)])
def test_start_index_is_get_timesteps(steps, strength, start):
    """diffusers: init = min(int(steps * strength), steps); t_start = steps - init (float product, truncated)."""
    assert img2img.start_index(steps, strength) == start


def test_size_rule_and_preprocess(tmp_path):
    """No width/height: the image's size rounded down to the size multiple, resized with Lanczos; given: resized."""
    assert img2img.init_image_size((30, 21), 8) == (24, 16)
    assert img2img.init_image_size((30, 21), 8, width=40) == (40, 16)
    with pytest.raises(TinySDError, match="height 5 is smaller than 8 pixels"):
        img2img.init_image_size((30, 5), 8)
    rgb = np.random.default_rng(0).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    x = img2img.image_to_array(Image.fromarray(rgb), 24, 16)
    want = np.asarray(Image.fromarray(rgb).resize((24, 16), resample=Image.LANCZOS), np.float32)
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), np.float32(2) * (want / np.float32(255)) - np.float32(1))
    assert x.dtype == np.float32 and x.shape == (1, 3, 16, 24) and x.min() >= -1 and x.max() <= 1
    rgba = Image.fromarray(np.dstack([rgb, np.zeros((21, 30), np.uint8)]), mode="RGBA")
    rgba.save(tmp_path / "a.png")
    assert img2img.load_init_image(tmp_path / "a.png").mode == "RGB"


def test_latent_sample():
    moments = np.zeros((1, 8, 2, 3), np.float32)
    moments[:, :4] = 0.5
    moments[:, 4:] = np.log(4.0)  # std 2
    moments[0, 4, 0, 0] = 100.0  # logvar clamped to 20
    noise = np.ones((2, 4, 2, 3))
    z = img2img.latent_sample(moments, noise, 0.25)
    assert z.shape == (2, 4, 2, 3)
    assert z[1, 1, 1, 1] == pytest.approx(0.25 * (0.5 + 2.0))
    assert z[0, 0, 0, 0] == pytest.approx(0.25 * (0.5 + np.exp(10.0)))


def test_moments_mean_is_encode(pipe, init):
    x = img2img.image_to_array(init, 24, 16)
    m = pipe.vae.encode_moments(x)
    assert m.shape == (1, 8, 8, 12)
    np.testing.assert_array_equal(m[:, :4], pipe.vae.encode(x))


@pytest.mark.parametrize("kwargs, match", [
    (dict(strength=0.0), r"strength must be a number in \(0, 1\]"),
    (dict(strength=1.5), "strength must be"),
    (dict(strength=-0.2), "strength must be"),
    (dict(strength=float("nan")), "strength must be .* nan"),
    (dict(strength=float("inf")), "strength must be"),
    (dict(strength="0.5"), "strength must be"),
    (dict(strength=True), "strength must be"),
    (dict(strength=0.1, steps=5), r"strength 0.1 with 5 steps runs no step"),
    (dict(init_image=None, strength=0.5), "strength is only used with an init image"),
    (dict(init_image=3), "init image must be a PIL image or an image file path"),
    (dict(init_image="/nonexistent/x.png"), "init image /nonexistent/x.png: no such file"),
    (dict(width=20), "width must be a positive multiple of 8"),
])
def test_bad_arguments(pipe, init, kwargs, match):
    kw = dict(init_image=init, steps=5)
    kw.update(kwargs)
    with pytest.raises(TinySDError, match=match):
        pipe("a red circle", **kw)


def test_bad_files(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:1000])  # of ~3 kB: the pixel data cut short
    os.mkfifo(tmp_path / "fifo.png")
    for name, match in [("text.png", "not an image file"), ("empty.png", "not an image file"),
                        ("cut.png", "cannot read"), ("fifo.png", "FIFO"), ("missing.png", "no such file"),
                        (".", "cannot read")]:
        with pytest.raises(TinySDError, match=f"init image {tmp_path / name}: .*{match}"):
            img2img.load_init_image(tmp_path / name)


def test_png_denoising_strength_as_a1111():
    p = GenerationParams(prompt="a cat", steps=20, sampler="euler_a", cfg_scale=7.0, seed=5, width=512, height=512,
                         model_name="m", model_hash="0123456789", clip_skip=1, denoising_strength=0.75,
                         version="tinysd 0.1.0")
    assert p.to_a1111() == ("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 512x512, Model hash: "
                            "0123456789, Model: m, Denoising strength: 0.75, Clip skip: 2, Version: tinysd 0.1.0")
    assert params_from_text(p.to_a1111()) == p
    assert "Denoising strength" not in GenerationParams(prompt="a cat").to_a1111()


def test_cli_img2img(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(RUNS["init_image"]).resize((30, 21)).save(src)  # not a multiple of 8: rounded down to 24x16
    out = tmp_path / "out.png"
    res = run(["generate", "a red circle", "--model", TINY, "--init-image", src, "--strength", "0.6", "--steps", "5",
               "--sampler", "dpmpp_2m", "-o", out])
    assert res.exit_code == 0, res.output
    text = read_parameters(out)
    assert "Steps: 5, Sampler: DPM++ 2M" in text and ", Denoising strength: 0.6," in text
    assert Image.open(out).size == (24, 16)


@pytest.mark.parametrize("extra, needles", [
    (["--init-image", "{tmp}/missing.png"], ["init image", "missing.png", "no such file"]),
    (["--init-image", "{tmp}/bad.png"], ["init image", "bad.png", "not an image"]),
    (["--init-image", "{tmp}/in.png", "--strength", "0"], ["strength", "(0, 1]"]),
    (["--init-image", "{tmp}/in.png", "--strength", "1.01"], ["strength", "(0, 1]"]),
    (["--init-image", "{tmp}/in.png", "--strength", "nan"], ["strength", "nan"]),
    (["--init-image", "{tmp}/in.png", "--strength", "x"], ["--strength"]),
    (["--init-image", "{tmp}/in.png", "--strength", "0.1", "--steps", "4"], ["strength 0.1 with 4 steps"]),
    (["--strength", "0.5"], ["--strength", "--init-image"]),
    (["--init-image", "{tmp}/tiny.png"], ["init image", "width 6 is smaller than 8", "--width"]),
    (["--init-image", "{tmp}/in.png", "--width", "20"], ["width", "multiple of 8"]),
])
def test_cli_bad_img2img(tmp_path, extra, needles):
    Image.fromarray(RUNS["init_image"]).save(tmp_path / "in.png")
    Image.fromarray(RUNS["init_image"][:6, :6]).save(tmp_path / "tiny.png")
    (tmp_path / "bad.png").write_text("hello")
    before = sorted(os.listdir(tmp_path))
    res = run(["generate", "x", "--model", TINY, "-o", tmp_path / "o.png"] + [a.format(tmp=tmp_path) for a in extra])
    assert_one_line_error(res, *needles)
    assert sorted(os.listdir(tmp_path)) == before


@pytest.fixture(scope="module")
def quantized():
    """tiny-sd calibrated (1 prompt, 1 step: the encoder sees the decoded image) and quantized to w8a8."""
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.calibration import calibrate_model, quantize_model

    loaded = load_checkpoint(TINY)
    ranges = calibrate_model(loaded, ["a red circle on the left"], steps=1)
    return loaded, ranges, quantize_model(loaded, "w8a8", ranges)


def test_integer_img2img(pipe, init, quantized):
    """The integer engine runs img2img with the VAE encoder as an integer network (every op's output integer
    codes); its mean half is `encode` bit for bit; the run stays near the float one."""
    from tinysd.interp.record import RecordingInterpreter
    from tinysd.quant.calibration import sqnr_db
    from tinysd.quant.engine import build_integer_networks

    loaded, _, qmodel = quantized
    te, unet, vae = build_integer_networks(qmodel)
    ipipe = Pipeline(pipe.tokenizer, te, unet, vae, loaded.config, model_name="tiny-sd", precision="w8a8")
    inner = vae.interp
    vae.interp = rec = RecordingInterpreter(inner)
    run = dict(sampler="euler_a", karras=False, strength=0.6)
    res = run_fixture(ipipe, init, run)
    vae.interp = inner
    encoder = [r for r in rec.records if r.tensor and r.tensor.startswith("vae.encoder.")]
    assert encoder and rec.records[0].op == "input" and rec.records[0].tensor == "vae.image"
    for r in encoder:
        assert r.output.data.dtype.kind in "iu", r.tensor
    x = img2img.image_to_array(init, 24, 16)
    np.testing.assert_array_equal(vae.encode_moments(x)[:, :4], vae.encode(x))
    assert res.params[0].precision == "w8a8" and res.params[0].denoising_strength == 0.6
    ref = RUNS["euler_a_s0.6__latents"]  # the float run (diffusers; tinysd's float run matches it)
    assert sqnr_db(ref, res.latents) >= 15.0  # measured 22.7 dB (w8a16: 30.9 dB)


def test_encoder_that_cannot_run_is_one_error(pipe, init):
    """A quantized VAE without encoder encodings (e.g. an AIMET decoder-only import) raises the integer
    interpreter's TinySDError naming the tensor; the pipeline says it was the init image's encoding."""
    class NoEncoder:
        scaling_factor = pipe.vae.scaling_factor

        def encode_moments(self, x):
            raise TinySDError("vae (w8a8): no encoding for activation vae.image (this part of the network was not "
                              "quantized)")

    p = Pipeline(pipe.tokenizer, pipe.text_encoder, pipe.unet, NoEncoder(), pipe.config, precision="w8a8")
    with pytest.raises(TinySDError, match="init image: the VAE encoder cannot run: .*vae.image"):
        p("x", steps=2, init_image=init, strength=0.5)
