"""The command line's rough edges: help, --version, -v anywhere, output names, PNG parameters, progress."""
import logging
import os
import subprocess
import sys
from pathlib import Path

from tinysd import __version__
from tinysd.fixedpoint import ARITHMETIC_SPEC_VERSION
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
