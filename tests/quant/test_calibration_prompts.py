"""The default calibration prompt set shipped as package data."""
import re
from importlib import resources

from tinysd.eval import shapes


def _prompts():
    text = resources.files("tinysd").joinpath("data/calibration_prompts.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _grammar():
    alt = lambda words: "|".join(re.escape(w) for w in words)  # noqa: E731
    return re.compile(
        rf"a (?:(?P<size>{alt(shapes.SIZES)}) )?(?P<color>{alt(shapes.COLORS)}) (?P<shape>{alt(shapes.SHAPES)})"
        rf"(?: (?P<position>{alt(shapes.POSITIONS)}))?(?: on a (?P<background>{alt(shapes.BACKGROUNDS)}) background)?"
    )


def test_calibration_prompts_shipped_and_varied():
    prompts = _prompts()
    assert 16 <= len(prompts) <= 32
    assert len(set(prompts)) == len(prompts)
    grammar = _grammar()
    matches = [m for m in (grammar.fullmatch(p) for p in prompts) if m]
    assert len(matches) >= 12 and len(prompts) - len(matches) >= 8  # both kinds present
    for m in matches:  # the grammar's own caption writer gives back the same text
        attrs = {k: v for k, v in m.groupdict().items() if v}
        assert attrs.get("background") != attrs["color"]
        assert shapes.caption(attrs) == m.group(0)
    seen = lambda key: {m.group(key) for m in matches} - {None}  # noqa: E731
    assert seen("shape") == set(shapes.SHAPES)
    assert seen("color") == set(shapes.COLORS)
    assert seen("size") == set(shapes.SIZES)
    assert seen("position") == set(shapes.POSITIONS)
    assert len(seen("background")) >= 6
    assert any(m.group("size") is None for m in matches) and any(m.group("background") is None for m in matches)
