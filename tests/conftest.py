import os
import tempfile

# Numba caches compiled kernels; keep that cache out of the source tree.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "tinysd-numba-cache"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
HVX_TESTS = Path(__file__).resolve().parent / "hvx"


def pytest_terminal_summary(terminalreporter, config):
    """One line naming what to install when the HVX tests were asked for and left out (tests/hvx/conftest.py).

    Written here because this conftest is loaded by the process that reports, also when pytest-xdist
    workers collect (and deselect) the tests."""
    from tinysd.hvx import runner

    if os.environ.get("TINYSD_REQUIRE_HVX") or os.environ.get("CI") or not runner.missing_tools():
        return
    paths = [Path(str(a).split("::")[0]).resolve() for a in config.args] or [Path(config.rootpath)]
    if any(p == HVX_TESTS or p in HVX_TESTS.parents or HVX_TESTS in p.parents for p in paths):
        terminalreporter.write_line(f"HVX tests not run: {runner.missing_tools_message(runner.missing_tools())}")


@pytest.fixture
def fixtures_dir():
    return FIXTURES
