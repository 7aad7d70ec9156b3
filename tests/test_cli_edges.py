"""The command line's rough edges: help, --version, -v anywhere, output names, PNG parameters, progress."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinysd import __version__
from tinysd import cli as cli_module
from tinysd.errors import TinySDError
from tinysd.fixedpoint import ARITHMETIC_SPEC_VERSION
from tinysd.png import params_from_text, read_parameters
from clitools import assert_one_line_error, run

ROOT = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "fixtures" / "tiny-sd"


def test_no_arguments_prints_the_help():
    res = run([])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].startswith("Usage: tinysd") and any(line.split()[:1] == ["generate"] for line in lines)
    assert res.stderr == ""


def test_version():
    res = run(["--version"])
    assert res.exit_code == 0
    assert res.stdout == f"tinysd {__version__} (arithmetic spec {ARITHMETIC_SPEC_VERSION})\n"


def test_verbose_before_or_after_the_command(tmp_path):
    logger = logging.getLogger("tinysd")
    for args in (["-v", "generate"], ["generate", "-v"], ["generate", "--verbose"]):
        logger.setLevel(logging.NOTSET)
        res = run(args + ["a square", "--model", TINY, "--steps", 1, "-o", tmp_path / "v.png"])
        assert res.exit_code == 0, res.output
        assert "tinysd: loaded" in res.stderr, args  # an INFO record of the pipeline
    res = run(["-v", "generate", "-v", "a square", "--model", TINY, "--steps", 1, "-o", tmp_path / "v.png"])
    assert res.exit_code == 0 and "tinysd: step 1/1" in res.stderr  # -v twice: DEBUG
    for command in ("quantize", "golden", "compare"):
        assert "--verbose" in run([command, "--help"]).stdout


def test_interrupt_while_importing_is_one_line():
    """Ctrl-C during the imports of `python -m tinysd`: one line, status 130 (no traceback)."""
    code = ("import signal, sys, tinysd.__main__ as m\n"
            "import builtins\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name == 'cli' or name.endswith('.cli'):\n"
            "        raise KeyboardInterrupt\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "m.main(['--version'])\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 130, p.stderr
    assert p.stderr == "tinysd: aborted\n"


@pytest.mark.parametrize("name, needles", [("x.jpg", ["x.jpg", "PNG images only", "not a .jpg name"]),
                                           ("newdir/", ["newdir", "PNG images only", "not a folder name"]),
                                           ("noext", ["noext", "PNG images only"])])
def test_output_names_must_end_in_png(tmp_path, name, needles):
    res = run(["generate", "x", "--model", TINY, "--steps", 1, "-o", f"{tmp_path}/{name}"])
    assert_one_line_error(res, *needles)
    assert list(tmp_path.iterdir()) == []
    res = run(["generate", "x", "--model", TINY, "--steps", 1, "-o", tmp_path / "UPPER.PNG"])
    assert res.exit_code == 0, res.output


class _Bars:
    """Stands in for cli.progress_bar: records (label, length, final position) of every bar."""

    def __init__(self):
        self.bars = []

    def __call__(self, length, label):
        rec = {"label": label, "length": length, "pos": 0}
        self.bars.append(rec)

        class Bar:
            pos = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                rec["closed"] = True

            def update(self, n):
                self.pos += n
                rec["pos"] = self.pos
                assert self.pos <= length

        return Bar()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The tiny model quantized by the CLI (w8a8, two prompts, two steps), with the progress bars it showed."""
    work = tmp_path_factory.mktemp("q")
    prompts = work / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    bars = _Bars()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_module, "progress_bar", bars)
        res = run(["quantize", TINY, "-o", work / "tiny-w8a8", "--precision", "w8a8", "--calibration-prompts", prompts,
                   "--calibration-steps", 2])
    assert res.exit_code == 0, res.output
    return work / "tiny-w8a8", bars.bars


def test_quantize_shows_progress(quantized):
    _, bars = quantized
    # 2 prompts x 2 steps; then the integer replay of every recorded call: 2 text encoder, 2 x 2 UNet, 2 VAE
    # decoder and 2 VAE encoder calls
    assert bars == [{"label": "tinysd calibration", "length": 4, "pos": 4, "closed": True},
                    {"label": "tinysd SQNR", "length": 10, "pos": 10, "closed": True}]


def test_quantize_checks_the_output_folder_before_calibrating(tmp_path, monkeypatch):
    bars = _Bars()
    monkeypatch.setattr(cli_module, "progress_bar", bars)
    if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new files even to root
        target = Path("/proc/tinysd-quantized")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        target = tmp_path / "ro" / "q"
    res = run(["quantize", TINY, "-o", target, "--precision", "w8a8"])
    assert_one_line_error(res, str(target), "cannot write")
    assert bars.bars == []  # refused before any calibration step


def test_png_parameters_record_precision_and_source(quantized, tmp_path):
    from tinysd.png import model_hash

    folder, _ = quantized
    for model, precision in ((TINY, "fp32"), (folder, "w8a8")):
        out = tmp_path / f"{precision}.png"
        res = run(["generate", "a red circle", "--model", model, "--steps", 1, "-o", out])
        assert res.exit_code == 0, res.output
        text = read_parameters(out)
        p = params_from_text(text)
        assert p.precision == precision and f"Precision: {precision}" in text
        if precision == "fp32":
            assert p.source_model is None and p.source_model_hash is None
        else:
            assert (p.model_name, p.source_model, p.source_model_hash) == ("tiny-w8a8", "tiny-sd", model_hash(TINY))
            assert len(p.source_model_hash) == 10


def test_an_encodings_problem_is_counted_once(quantized):
    from tinysd.checkpoint import load_checkpoint
    from tinysd.quant.calibration import quantize_model
    from tinysd.quant.folder import load_quantized

    q = load_quantized(quantized[0])
    acts = {n: e for net in q.networks.values() for n, e in net.activations.items()}
    del acts["unet.conv_in.out"]  # read by the first resnet, its residual add and the skip connection
    with pytest.raises(TinySDError) as e:
        quantize_model(load_checkpoint(TINY), "w8a8", acts)
    assert str(e.value) == "unet (w8a8): 1 encoding problem(s): no encoding for activation unet.conv_in.out"
