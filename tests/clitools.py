"""Helpers for tests of the click app: run it in-process and check the one-line error contract."""
from click.testing import CliRunner

from tinysd import cli as cli_module


def run(args):
    return CliRunner().invoke(cli_module.cli, [str(a) for a in args])


def assert_one_line_error(res, *needles):
    """Exit status 2, exactly one stderr line `tinysd: error: ...` containing every needle, no traceback."""
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tinysd: error: ")
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
