"""PNG writing with A1111's `parameters` text, and reading it back."""
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from tinysd.errors import TinySDError
from tinysd.png import (
    GenerationParams,
    a1111_sampler_name,
    check_output_path,
    file_sha256_prefix,
    params_from_text,
    parse_parameters,
    quote,
    read_parameters,
    sampler_from_a1111,
    unquote,
    write_png,
)
from tinysd.schedulers import SAMPLERS


def image(seed=0, size=(12, 8)):
    a = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(a, mode="RGB")


FULL = GenerationParams(prompt="a red circle, on the left", negative_prompt="blurry, ugly", steps=20, sampler="dpmpp_2m",
                        karras=True, cfg_scale=7.5, seed=1234, width=512, height=768, model_name="v1-5-pruned-emaonly",
                        model_hash="6ce0161689", clip_skip=1, version="tinysd 0.1.0")


def test_a1111_layout():
    """create_infotext's layout: prompt, 'Negative prompt: ...', then the fields in A1111's order."""
    lines = FULL.to_a1111().split("\n")
    assert lines[0] == "a red circle, on the left"
    assert lines[1] == "Negative prompt: blurry, ugly"
    assert lines[2] == ("Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1234, Size: 512x768, "
                        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Version: tinysd 0.1.0")


def test_optional_fields_left_out():
    p = GenerationParams(prompt="a cat", steps=4, sampler="euler_a", cfg_scale=7.0, seed=3, width=64, height=64)
    assert p.to_a1111() == "a cat\nSteps: 4, Sampler: Euler a, CFG scale: 7, Seed: 3, Size: 64x64"


def test_quote_roundtrip():
    for v in ["plain", 'with, comma', 'quote " and, comma', 'back\\slash, too', ""]:
        assert unquote(quote(v)) == v
    assert quote("a, b") == '"a, b"' and quote("ab") == "ab"


def test_parse_a1111_docstring_example():
    """The example in A1111's parse_generation_parameters docstring."""
    text = ("girl with an artist's beret, determined, blue eyes, desert scene\n"
            "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry]\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b")
    d = parse_parameters(text)
    assert d["Prompt"] == "girl with an artist's beret, determined, blue eyes, desert scene"
    assert d["Negative prompt"] == "ugly, fat, obese, chubby, (((deformed))), [blurry]"
    assert (d["Steps"], d["Sampler"], d["CFG scale"], d["Seed"], d["Size-1"], d["Size-2"], d["Model hash"]) == \
        ("20", "Euler a", "7", "965400086", "512", "512", "45dee52b")
    p = params_from_text(text)
    assert (p.sampler, p.karras, p.cfg_scale, p.seed, p.width, p.height, p.clip_skip) == ("euler_a", False, 7.0, 965400086, 512, 512, 0)


def test_sampler_names():
    assert [a1111_sampler_name(s, False) for s in SAMPLERS] == ["DDIM", "Euler", "Euler a", "DPM++ 2M", "LCM"]
    assert a1111_sampler_name("dpmpp_2m", True) == "DPM++ 2M Karras"
    for s in SAMPLERS:
        for k in (False, True):
            assert sampler_from_a1111(a1111_sampler_name(s, k)) == (s, k)
    with pytest.raises(TinySDError, match="sampler"):
        sampler_from_a1111("UniPC")


@pytest.mark.parametrize("params", [
    FULL,
    GenerationParams(prompt="a cat"),
    GenerationParams(prompt='multi\nline "prompt", with\\ odd, chars', negative_prompt="two\nlines, too", sampler="ddim", seed=2**32 + 5),
    GenerationParams(prompt="un chat noir, café, 猫", negative_prompt="ß", cfg_scale=1.25),
])
def test_png_roundtrip(tmp_path, params):
    out = write_png(image(), tmp_path / "out.png", params)
    text = read_parameters(out)
    assert text == params.to_a1111()
    assert params_from_text(text) == params
    with Image.open(out) as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im), np.asarray(image()))
    assert os.listdir(tmp_path) == ["out.png"]
    assert (os.stat(out).st_mode & 0o777) == 0o644


def test_no_parameters(tmp_path):
    out = write_png(image(), tmp_path / "plain.png")
    assert read_parameters(out) is None


class FailingImage:
    def save(self, f, **kw):
        f.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.png"
    with pytest.raises(TinySDError, match="out.png: cannot write PNG"):
        write_png(FailingImage(), target, FULL)
    assert os.listdir(tmp_path) == []
    # an existing file is left as it was
    write_png(image(1), target, FULL)
    before = target.read_bytes()
    with pytest.raises(TinySDError):
        write_png(FailingImage(), target, FULL)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["out.png"]


def test_check_output_path(tmp_path):
    with pytest.raises(TinySDError, match="is a folder"):
        check_output_path(tmp_path)
    with pytest.raises(TinySDError, match="does not exist"):
        check_output_path(tmp_path / "no" / "out.png")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(TinySDError, match="does not exist"):
        check_output_path(f / "out.png")
    assert check_output_path(tmp_path / "ok.png") == tmp_path / "ok.png"


def test_read_errors(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(TinySDError, match="bad.png"):
        read_parameters(bad)


def test_model_hash_is_sha256_prefix(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(bytes(range(256)) * 5000)
    assert file_sha256_prefix(f) == hashlib.sha256(f.read_bytes()).hexdigest()[:10]
