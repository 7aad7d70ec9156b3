"""Values that would give a black image or a failed allocation: non-finite weights, overflowing networks,
huge guidance scales and image sizes are refused with one line."""
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tinysd import Pipeline
from tinysd.errors import TinySDError
from tinysd.memory import check_generation_memory, estimate_generation_bytes
from tinysd.safetensors_io import SafetensorsFile, write_safetensors
from clitools import assert_one_line_error, run

TINY = Path(__file__).parent / "fixtures" / "tiny-sd"
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


def _edited_model(tmp_path, tensor: str, edit) -> Path:
    """A copy of the tiny model whose UNet tensor `tensor` is replaced by edit(tensor)."""
    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    sf = SafetensorsFile(model / UNET_FILE)
    arrays = sf.read_raw(sf.keys())
    arrays = {k: (edit(np.array(a, np.float32)) if k == tensor else np.array(a)) for k, a in arrays.items()}
    write_safetensors(model / UNET_FILE, arrays, metadata=sf.metadata)
    return model


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_are_refused_at_load(tmp_path, bad):
    def edit(a):
        a.reshape(-1)[3] = bad
        return a

    model = _edited_model(tmp_path, "conv_in.weight", edit)
    res = run(["generate", "x", "--model", model, "--steps", 1, "-o", tmp_path / "o.png"])
    assert_one_line_error(res, UNET_FILE, "'conv_in.weight'", "1 NaN or infinite value(s)")
    assert not (tmp_path / "o.png").exists()


def test_an_overflowing_network_stops_naming_the_step_and_network(tmp_path):
    model = _edited_model(tmp_path, "conv_out.weight", lambda a: np.sign(a) * np.float32(3e38))  # finite; overflows
    res = run(["generate", "x", "--model", model, "--steps", 2, "-o", tmp_path / "o.png"])
    assert_one_line_error(res, "step 1/2: the UNet output is not finite")
    assert "RuntimeWarning" not in res.output and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("cfg", ["1e300", "-1e300", "101", "inf", "nan"])
def test_guidance_scale_is_bounded(tmp_path, cfg):
    res = run(["generate", "x", "--model", TINY, "--cfg", cfg, "-o", tmp_path / "o.png"])
    assert_one_line_error(res, "guidance scale", "[-100, 100]")


def test_huge_images_are_refused_before_any_allocation(tmp_path):
    # (100000 x 16 now fits: its attention is computed in query tiles; this one does not)
    res = run(["generate", "x", "--model", TINY, "--width", 100000, "--height", 100000, "-o", tmp_path / "o.png"])
    line = assert_one_line_error(res, "100000x100000 with batch 1", "GiB of memory", "--width/--height or --batch")
    res = run(["generate", "x", "--model", TINY, "--batch", 100000, "--width", 256, "--height", 256,
               "-o", tmp_path / "o.png"])
    assert_one_line_error(res, "256x256 with batch 100000", "GiB of memory")
    assert line and list(tmp_path.iterdir()) == []
    cfg = Pipeline.from_pretrained(TINY).config
    check_generation_memory(cfg, 64, 64, 1, limit=1 << 30)
    with pytest.raises(TinySDError, match="more than this machine's 0.1 GiB"):
        check_generation_memory(cfg, 256, 256, 1, limit=1 << 27, itemsize=8)  # attention tiles lowered the estimate
    with pytest.raises(TinySDError, match="more than this machine's 0.1 GiB"):
        check_generation_memory(cfg, 256, 256, 1, limit=1 << 26)  # float: fused attention, one tile of scores per thread


@pytest.mark.parametrize("model, size, batch", [(TINY, 64, 1), (TINY, 32, 2), (None, 64, 1)])
def test_the_memory_estimate_bounds_the_measured_peak(model, size, batch):
    """The estimate is at least the peak NumPy allocation of a float generation, and at most 3x it."""
    pipe = Pipeline.from_pretrained(model)
    pipe.generate("warm up", steps=1, width=pipe.size_multiple, height=pipe.size_multiple)
    tracemalloc.start()
    try:
        pipe.generate("a red circle", steps=1, width=size, height=size, batch_size=batch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    est = max(estimate_generation_bytes(pipe.config, size, size, batch).values())
    assert peak <= est <= 3 * peak, (peak, est)
