"""Fixtures of the HVX tests: the kernels built once per session and run under qemu-hexagon.

Without qemu-user, clang and lld the tests skip with one line naming what to install; under
CI (`TINYSD_REQUIRE_HVX` or `CI` set in the environment, as `.ci/run` does) they fail instead.
"""
import os

import pytest

from tinysd.hvx import runner

REQUIRED = bool(os.environ.get("TINYSD_REQUIRE_HVX") or os.environ.get("CI"))


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
