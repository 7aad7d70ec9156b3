"""LCM: a w-conditioned UNet (time_cond_proj_dim) with the lcm sampler, against diffusers, and a model
folder's own generation defaults (fixtures: tools/make_lcm_fixtures.py, tests/fixtures/tiny-sd-lcm/ on top
of tests/fixtures/tiny-sd/)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clitools import assert_one_line_error, run
from tinysd import Pipeline
from tinysd.nn.unet import guidance_embedding
from tinysd.png import parse_parameters, read_parameters

FIX = Path(__file__).parent / "fixtures"
RUNS = np.load(FIX / "lcm_runs.npz")
META = json.loads(str(RUNS["meta"]))
RUN_RTOL = 1e-4  # as tests/test_pipeline.py's whole runs


@pytest.fixture(scope="module")
def lcm_dir(tmp_path_factory):
    """tiny-sd with tiny-sd-lcm's w-conditioned UNet, LCM scheduler config and model_index.json (defaults)."""
    d = tmp_path_factory.mktemp("lcm") / "tiny-sd-lcm"
    shutil.copytree(FIX / "tiny-sd", d)
    shutil.rmtree(d / "unet")
    shutil.copytree(FIX / "tiny-sd-lcm", d, dirs_exist_ok=True)
    return d


@pytest.fixture(scope="module")
def pipe(lcm_dir):
    return Pipeline.from_pretrained(lcm_dir)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_defaults_come_from_the_folder(pipe):
    d = pipe.defaults
    assert (d.sampler, d.steps, d.guidance_scale) == ("lcm", META["steps"], META["cfg"])
    assert pipe.config.unet.time_cond_proj_dim == META["cond_dim"]


def test_lcm_run_matches_diffusers(pipe):
    """The folder's defaults (lcm, 4 steps, guidance 5 -> timestep_cond of w = 4, no CFG batch) against diffusers'
    StableDiffusionPipeline with LCMScheduler: same noise, final latents and images."""
    res = pipe.generate(META["prompt"], seed=META["seed"], batch_size=META["batch"])
    p = res.params[0]
    assert (p.sampler, p.steps, p.cfg_scale) == ("lcm", META["steps"], META["cfg"])
    assert rel(res.latents, RUNS["latents"]) <= RUN_RTOL
    ref_images = RUNS["images"].astype(np.float64)
    decoded = pipe.vae.decode((res.latents / pipe.vae.scaling_factor).astype(np.float32))
    ours = np.clip(decoded.astype(np.float64) / 2 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    assert np.max(np.abs(ours - ref_images)) <= RUN_RTOL
    ours_u8 = np.stack([np.asarray(im) for im in res.images]).astype(np.int64)
    assert np.max(np.abs(ours_u8 - np.round(ref_images * 255))) <= 1


def test_w_conditioned_unet_gets_the_guidance_embedding_and_no_cfg_batch(pipe):
    calls = []
    inner = pipe.unet

    class Spy:
        def __call__(self, x, t, ctx, timestep_cond=None):
            calls.append((x.shape[0], timestep_cond))
            return inner(x, t, ctx, timestep_cond=timestep_cond)

    pipe.unet = Spy()
    try:
        pipe.generate("a blue square", steps=2, guidance_scale=3.0, seed=1)
    finally:
        pipe.unet = inner
    assert [b for b, _ in calls] == [1, 1]  # only the prompt: guidance is in timestep_cond
    np.testing.assert_array_equal(calls[0][1], guidance_embedding(np.array([2.0]), META["cond_dim"]))


def test_cli_generate_without_options_uses_the_model_defaults(lcm_dir, tmp_path):
    out = tmp_path / "a.png"
    res = run(["generate", "a red circle", "-o", out, "--model", lcm_dir])
    assert res.exit_code == 0, res.output
    params = parse_parameters(read_parameters(out))
    assert (params["Steps"], params["Sampler"], params["CFG scale"]) == ("4", "LCM", "5")
    # given options win over the folder's
    res = run(["generate", "a red circle", "-o", out, "--model", lcm_dir, "--steps", "2", "--sampler", "euler"])
    assert res.exit_code == 0, res.output
    params = parse_parameters(read_parameters(out))
    assert (params["Steps"], params["Sampler"]) == ("2", "Euler")


def test_bad_defaults_are_one_line_errors(lcm_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(lcm_dir, d)
    for bad, needle in (({"sampler": "heun"}, "tinysd_defaults.sampler"), ({"steps": 0}, "tinysd_defaults.steps"),
                        ({"guidance_scale": "x"}, "tinysd_defaults.guidance_scale"), ({"seed": 1}, "'seed'")):
        index = json.loads((lcm_dir / "model_index.json").read_text())
        index["tinysd_defaults"] = bad
        (d / "model_index.json").write_text(json.dumps(index))
        res = run(["generate", "x", "-o", tmp_path / "b.png", "--model", d])
        assert_one_line_error(res, "model_index.json", needle)
    res = run(["generate", "x", "-o", tmp_path / "b.png", "--model", lcm_dir, "--sampler", "lcm", "--karras"])
    assert_one_line_error(res, "lcm", "Karras")


def test_w_conditioned_unet_quantizes(lcm_dir, pipe):
    """The w-conditioned UNet runs as an integer network (quantized on the fly) and follows its timestep_cond."""
    q = Pipeline.from_pretrained(lcm_dir, precision="w8a8", prompts=["a red circle"], steps=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    ctx = pipe.encode_prompt(["a red circle"])
    outs = {}
    for w in (4.0, 0.0):
        cond = guidance_embedding(np.array([w]), META["cond_dim"])
        f, i = pipe.unet(x, 499, ctx, timestep_cond=cond), q.unet(x, 499, ctx, timestep_cond=cond)
        sqnr = 10 * np.log10(np.sum(f.astype(np.float64) ** 2) / np.sum((f.astype(np.float64) - i) ** 2))
        assert sqnr > 15, (w, sqnr)  # a random tiny UNet, calibrated on 2 LCM steps of one prompt (19.4 dB at w=4)
        outs[w] = (f, i)
    # the embedding changes the output (by more than the quantization error)
    change = np.abs(outs[4.0][0] - outs[0.0][0]).max()
    assert np.abs(outs[4.0][1] - outs[0.0][1]).max() > 0.5 * change > 0



def test_quantized_folder_keeps_the_defaults(lcm_dir, tmp_path):
    """`tinysd quantize` writes the float folder's defaults into quantization.json; generate from it uses them."""
    prompts, q, out = tmp_path / "p.txt", tmp_path / "q", tmp_path / "q.png"
    prompts.write_text("a red circle\n")
    res = run(["quantize", lcm_dir, "-o", q, "--precision", "w8a8", "--calibration-steps", "1",
               "--calibration-prompts", prompts, "--sqnr-calls", "1"])
    assert res.exit_code == 0, res.output
    info = json.loads((q / "quantization.json").read_text())["info"]
    assert info["generation_defaults"] == {"sampler": "lcm", "steps": 4, "guidance_scale": 5.0}
    assert (info["calibration"]["sampler"], info["calibration"]["guidance_scale"]) == ("lcm", 5.0)
    res = run(["generate", "a red circle", "-o", out, "--model", q])
    assert res.exit_code == 0, res.output
    params = parse_parameters(read_parameters(out))
    assert (params["Steps"], params["Sampler"], params["CFG scale"]) == ("4", "LCM", "5")
