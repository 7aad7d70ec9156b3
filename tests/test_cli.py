"""The `tinysd` command line: generate, one-line errors with exit status 2, nothing written on failure."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinysd import pipeline as pipeline_module
from tinysd.png import params_from_text, read_parameters
from clitools import assert_one_line_error, run

ROOT = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "fixtures" / "tiny-sd"


def test_generate_writes_png_with_parameters(tmp_path):
    out = tmp_path / "out.png"
    res = run(["generate", "a red circle, small", "--model", str(TINY), "--negative-prompt", "blue", "--steps", "2",
               "--cfg", "6", "--seed", "42", "--sampler", "euler_a", "-o", str(out)])
    assert res.exit_code == 0, res.output
    p = params_from_text(read_parameters(out))
    assert (p.prompt, p.negative_prompt, p.steps, p.sampler, p.cfg_scale, p.seed, p.model_name) == \
        ("a red circle, small", "blue", 2, "euler_a", 6.0, 42, "tiny-sd")
    assert os.listdir(tmp_path) == ["out.png"]


def test_generate_batch(tmp_path):
    res = run(["generate", "a square", "--model", str(TINY), "--steps", "1", "--seed", "7", "--batch", "2",
               "--sampler", "dpmpp_2m", "--karras", "--clip-skip", "1", "-o", str(tmp_path / "b.png")])
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(tmp_path)) == ["b-0.png", "b-1.png"]
    seeds = [params_from_text(read_parameters(tmp_path / f"b-{i}.png")).seed for i in (0, 1)]
    assert seeds == [7, 8]
    assert "Clip skip: 2" in read_parameters(tmp_path / "b-0.png")


@pytest.mark.parametrize("extra, needles", [
    (["--width", "20"], ["width", "multiple of 8"]),
    (["--sampler", "heun"], ["--sampler", "heun"]),
    (["--steps", "0"], ["steps"]),
    (["--seed", "-3"], ["seed"]),
    (["--sampler", "ddim", "--karras"], ["Karras"]),
    (["--steps", "many"], ["--steps"]),
    (["--bogus"], ["--bogus"]),
    (["--clip-skip", "5"], ["clip skip 5"]),
])
def test_bad_options(tmp_path, extra, needles):
    res = run(["generate", "x", "--model", str(TINY), "-o", str(tmp_path / "o.png")] + extra)
    assert_one_line_error(res, *needles)
    assert os.listdir(tmp_path) == []


def test_bad_models(tmp_path):
    out = tmp_path / "o.png"
    res = run(["generate", "x", "--model", str(tmp_path / "missing"), "-o", str(out)])
    assert_one_line_error(res, "missing")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04pickle")
    res = run(["generate", "x", "--model", str(ckpt), "-o", str(out)])
    assert_one_line_error(res, "model.ckpt", "pickle")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes((TINY / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()[:5000])
    res = run(["generate", "x", "--model", str(corrupt), "-o", str(out)])
    assert_one_line_error(res, "corrupt.safetensors")
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run(["generate", "x", "--model", str(empty), "-o", str(out)])
    assert_one_line_error(res, "empty")
    assert sorted(os.listdir(tmp_path)) == ["corrupt.safetensors", "empty", "model.ckpt"]


def test_bad_output(tmp_path):
    res = run(["generate", "x", "--model", str(TINY), "-o", str(tmp_path / "nodir" / "o.png")])
    assert_one_line_error(res, "nodir")
    res = run(["generate", "x", "--model", str(TINY)])
    assert_one_line_error(res, "--output")


def test_missing_default_model(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline_module, "DEFAULT_MODEL_DIR", tmp_path / "tinysd-shapes")
    res = run(["generate", "x", "-o", str(tmp_path / "o.png")])
    assert_one_line_error(res, "tinysd-shapes", "--model")
    assert os.listdir(tmp_path) == []


def test_help():
    res = run(["generate", "--help"])
    assert res.exit_code == 0
    assert "shipped model" in res.output and "native size" in res.output
    res = run(["--help"])
    assert res.exit_code == 0 and "generate" in res.output


def test_subprocess_exit_status(tmp_path):
    """A real process: `python -m tinysd` exits 2 with one line on stderr and writes nothing."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = tmp_path / "o.png"
    p = subprocess.run([sys.executable, "-m", "tinysd", "generate", "x", "--model", str(TINY), "--width", "12", "-o", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["tinysd: error: width must be a positive multiple of 8 (got 12)"]
    assert p.stdout == "" and not out.exists()
