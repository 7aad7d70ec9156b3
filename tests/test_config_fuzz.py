"""Every single-key mutation of the four config files of the tiny fixture model ends in exit 0 with the right
image or in exit 2 with one line: never a traceback, never a silently wrong image."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinysd import tokenizer as tokenizer_module
from clitools import run

TINY = Path(__file__).parent / "fixtures" / "tiny-sd"
CONFIG_FILES = ("unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json")
MUTATIONS = {"0": 0, "-1": -1, "null": None, "a string": "x", "NaN": math.nan, "huge": 10**12}
# accepted values that mean something else, and so legitimately give another image
CHANGES_THE_IMAGE = {("unet/config.json", "downsample_padding", "0"),  # diffusers' asymmetric stride-2 padding
                     ("scheduler/scheduler_config.json", "steps_offset", "0")}  # other timesteps


@pytest.fixture
def cached_tokenizer(monkeypatch):
    """The tokenizer files are never mutated: load them once (the fuzz then runs ~10x faster)."""
    load, cache = tokenizer_module.CLIPTokenizer.from_dir.__func__, {}

    def from_dir(cls, path=tokenizer_module.TOKENIZER_DIR):
        return cache.setdefault(str(path), None) or cache.__setitem__(str(path), load(cls, path)) or cache[str(path)]

    monkeypatch.setattr(tokenizer_module.CLIPTokenizer, "from_dir", classmethod(from_dir))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture
def no_heap_trim(monkeypatch):
    """The low-memory pipeline's garbage collection after each network (tinysd.offload.free_memory) costs
    ~70 ms per network in this test process's large heap and frees nothing the fuzz checks: skip it."""
    from tinysd import offload

    monkeypatch.setattr(offload, "free_memory", lambda: None)


def test_every_single_key_mutation(tmp_path, cached_tokenizer, no_heap_trim):
    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    out = tmp_path / "out.png"
    args = ["generate", "a red circle", "--model", model, "--steps", 1, "-o", out]
    res = run(args)
    assert res.exit_code == 0, res.output
    baseline = _pixels(out)
    outcomes = {"same image": 0, "other image": 0, "refused": 0}
    for rel in CONFIG_FILES:
        path = model / rel
        original = path.read_text()
        config = json.loads(original)
        for key in config:
            for label, value in MUTATIONS.items():
                path.write_text(json.dumps(dict(config, **{key: value})))
                out.unlink(missing_ok=True)
                res = run(args)
                what = f"{rel} {key}={label}"
                assert "Traceback" not in res.output and isinstance(res.exception, (SystemExit, type(None))), what
                if res.exit_code == 0:
                    pixels = _pixels(out)
                    if (rel, key, label) in CHANGES_THE_IMAGE:
                        assert not np.array_equal(pixels, baseline) and pixels.std() > 1, what
                        outcomes["other image"] += 1
                    else:
                        assert np.array_equal(pixels, baseline), f"{what}: accepted but the image changed"
                        outcomes["same image"] += 1
                else:
                    assert res.exit_code == 2, f"{what}: exit {res.exit_code}\n{res.output}"
                    lines = res.stderr.strip().splitlines()
                    assert len(lines) == 1 and lines[0].startswith("tinysd: error: "), f"{what}: {res.stderr}"
                    assert not out.exists(), what
                    # the line names the file and the key, or (a valid value that changes the architecture,
                    # e.g. mid_block_type=null) the weight file and the tensors that then do not fit
                    assert (str(path) in lines[0] and f"{key}=" in lines[0]) or \
                        "tensors do not match its config" in lines[0], f"{what}: {lines[0]}"
                    outcomes["refused"] += 1
        path.write_text(original)
    n = sum(len(json.loads((TINY / rel).read_text())) for rel in CONFIG_FILES) * len(MUTATIONS)
    assert sum(outcomes.values()) == n
    assert outcomes["other image"] == len(CHANGES_THE_IMAGE)
    print(f"{n} mutations: {outcomes}")
