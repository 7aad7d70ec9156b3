"""Every worked example in docs/arithmetic.md is exactly what the reference code prints."""
import importlib.util
import re
from pathlib import Path

import pytest

from tinysd.fixedpoint import ARITHMETIC_SPEC_VERSION

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "arithmetic.md"


def _examples_module():
    spec = importlib.util.spec_from_file_location("spec_examples", ROOT / "tools" / "spec_examples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EXAMPLES = _examples_module()


@pytest.mark.parametrize("name", sorted(EXAMPLES.EXAMPLES))
def test_spec_example_block_matches_code(name):
    text = SPEC.read_text()
    assert f"<!-- example: {name}," in text, f"example {name} missing from {SPEC.name}"
    assert EXAMPLES.block(name) in text, f"example {name} in {SPEC.name} differs from tools/spec_examples.py"


def test_spec_version_matches_code():
    m = re.search(r'ARITHMETIC_SPEC_VERSION = "([^"]+)"', SPEC.read_text())
    assert m and m.group(1) == ARITHMETIC_SPEC_VERSION
