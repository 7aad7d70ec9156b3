"""Fixtures of the HVX tests: the kernels built once per session and run under qemu-hexagon.

Without qemu-user, clang and lld the HVX tests are left out (deselected) and the session ends
with one line naming what to install (written by tests/conftest.py, the conftest the reporting
process loads also under pytest-xdist); under CI (`TINYSD_REQUIRE_HVX` or `CI` set in the
environment, as `.ci/run` does) they run and fail instead.
"""
import os
import tempfile
from pathlib import Path

import pytest

from tinysd.hvx import runner

REQUIRED = bool(os.environ.get("TINYSD_REQUIRE_HVX") or os.environ.get("CI"))
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if REQUIRED or not runner.missing_tools():
        return
    hvx = [i for i in items if HERE in Path(str(i.fspath)).resolve().parents]
    if hvx:
        items[:] = [i for i in items if i not in hvx]
        config.hook.pytest_deselected(items=hvx)


@pytest.fixture(scope="session")
def hvx_exe():
    missing = runner.missing_tools()
    if missing:
        msg = runner.missing_tools_message(missing)
        if REQUIRED:
            pytest.fail(f"{msg} (TINYSD_REQUIRE_HVX/CI is set: the HVX tests must run)", pytrace=False)
        pytest.skip(msg)
    return runner.build()


@pytest.fixture(scope="module")
def hvx(hvx_exe):
    with runner.HvxProcess(hvx_exe) as proc:
        yield proc


GOLDEN_PROMPT = "a large blue triangle at the top on a green background"
CALIBRATION_PROMPTS = ["a red circle", "a small yellow square on the left"]


@pytest.fixture(scope="session")
def default_model_golden(request):
    """{precision: (quantized model folder, GoldenFolder)} of the 20-step shapes model (weights/tinysd-shapes) at
    w8a8 and w8a16, built once.

    Each precision is quantized from one calibration run (2 prompts, 1 euler step), and its golden
    folder holds every network call of one step (text encoder, UNet step 0, VAE) with a layer case
    for every op (`--layers '*'`), stored raw.
    """
    from tinysd.checkpoint import load_checkpoint
    from tinysd.golden import GoldenFolder
    from tinysd.golden.generate import generate_golden
    from tinysd.paths import SHAPES_20_STEP_DIR as DEFAULT_MODEL_DIR
    from tinysd.quant.calibration import calibrate_model, quantize_model
    from tinysd.quant.folder import save_quantized

    if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        pytest.skip("default model not present in weights/")
    # the golden writer fsyncs each of its ~2900 files: on tmpfs that costs nothing, on a busy disk tens of seconds
    shm = Path("/dev/shm")
    tmp = tempfile.TemporaryDirectory(prefix="tinysd-hvx-golden.", dir=shm if shm.is_dir() and os.access(shm, os.W_OK)
                                      else None)
    request.addfinalizer(tmp.cleanup)
    root = Path(tmp.name)
    loaded = load_checkpoint(DEFAULT_MODEL_DIR)
    ranges = calibrate_model(loaded, CALIBRATION_PROMPTS, 1, "minmax", sampler="euler", seed=0)
    out = {}
    for precision in ("w8a8", "w8a16"):
        model = save_quantized(quantize_model(loaded, precision, ranges), root / f"model-{precision}",
                               tokenizer_dir=loaded.tokenizer_dir)
        out[precision] = (model, GoldenFolder(generate_golden(model, root / f"golden-{precision}", [GOLDEN_PROMPT],
                                                              steps=1, layers="*", storage="raw")))
    return out
