"""CLIP tokenizer: ids equal transformers' CLIPTokenizer (fixture from tools/make_tokenizer_fixture.py)."""
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinysd.errors import TinySDError
from tinysd.paths import TOKENIZER_DIR
from tinysd.tokenizer import CLIPTokenizer

FIXTURES = Path(__file__).parent / "fixtures"

CASES_DOC = json.loads((FIXTURES / "tokenizer_cases.json").read_text(encoding="utf-8"))
CASES = CASES_DOC["cases"]
BY_NAME = {c["name"]: c for c in CASES}


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.from_dir()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_ids_equal_transformers(tok, case):
    ids, infos = tok.tokenize_with_info(case["prompt"])
    assert ids.shape == (1, 77)
    assert ids[0].tolist() == case["ids"]
    assert infos[0].n_tokens == case["n_tokens"]
    assert infos[0].dropped == max(0, case["n_tokens"] - 77)


def test_batch_equals_transformers(tok):
    ids = tok([c["prompt"] for c in CASES])
    assert ids.dtype == np.int64
    assert ids.shape == (len(CASES), 77)
    assert ids.tolist() == [c["ids"] for c in CASES]


def test_fixture_covers_truncation_and_edges():
    # The fixture must exercise what the issue asks for, or the tests above prove little.
    assert any(c["n_tokens"] > 77 for c in CASES)
    assert any(c["n_tokens"] == 77 for c in CASES)
    assert BY_NAME["empty"]["prompt"] == ""
    assert any(any(ord(ch) > 0x3000 for ch in c["prompt"]) for c in CASES)


def test_fixture_was_made_from_shipped_vocabulary():
    gen = CASES_DOC["generator"]
    for name in ("vocab.json", "merges.txt"):
        assert hashlib.sha256((TOKENIZER_DIR / name).read_bytes()).hexdigest() == gen[f"{name} sha256"], name


def test_shape_dtype_single_and_list(tok):
    one = tok("a cat")
    assert one.dtype == np.int64 and one.shape == (1, 77)
    two = tok(["a cat", "a dog on a skateboard"])
    assert two.dtype == np.int64 and two.shape == (2, 77)
    assert (two[0] == one[0]).all()
    assert two[:, 0].tolist() == [49406, 49406]


def test_vocab_size_and_special_ids(tok):
    assert tok.vocab_size == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    vocab = tok.get_vocab()
    assert len(vocab) == 49408
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert sorted(vocab.values()) == list(range(49408))


def test_truncation_warns_with_prompt_and_count(tok, caplog):
    case = BY_NAME["long_prompt_truncated"]
    dropped = case["n_tokens"] - 77
    assert dropped > 0
    with caplog.at_level(logging.WARNING, logger="tinysd.tokenizer"):
        ids, infos = tok.tokenize_with_info(["a cat", case["prompt"]])
    assert [i.dropped for i in infos] == [0, dropped]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "tinysd.tokenizer"]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert case["prompt"][:30] in msg
    assert f"dropped the last {dropped} tokens" in msg
    assert ids[1, 76] == 49407  # EOS kept in the last position


def test_no_warning_at_exactly_77(tok, caplog):
    case = BY_NAME["tokens_75"]
    assert case["n_tokens"] == 77
    with caplog.at_level(logging.WARNING, logger="tinysd.tokenizer"):
        _, infos = tok.tokenize_with_info(case["prompt"])
    assert infos[0].dropped == 0
    assert not [r for r in caplog.records if r.name == "tinysd.tokenizer"]


def test_decode(tok):
    assert tok.decode(tok("A  Photo of a CAT!")[0]) == "a photo of a cat !"
    assert tok.decode([]) == ""


def _diffusers_tokenizer_folder(root, pad_token="<|endoftext|>"):
    """A model folder laid out as diffusers saves SD 1.x: model_index.json + tokenizer/ with
    vocab.json (re-serialized, ASCII-escaped), merges.txt (no trailing newline) and the configs."""
    folder = root / "tokenizer"
    folder.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    vocab = json.loads((TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8")
    (folder / "merges.txt").write_text(merges.rstrip("\n"), encoding="utf-8")
    special = {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False,
               "single_word": False}
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": special, "eos_token": dict(special, content="<|endoftext|>"),
        "pad_token": pad_token, "unk_token": dict(special, content="<|endoftext|>"),
    }))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
        "pad_token": pad_token, "tokenizer_class": "CLIPTokenizer",
    }))
    return folder


def test_loads_diffusers_tokenizer_folder(tmp_path):
    folder = _diffusers_tokenizer_folder(tmp_path)
    prompts = [c["prompt"] for c in CASES]
    expected = [c["ids"] for c in CASES]
    assert CLIPTokenizer.from_dir(folder)(prompts).tolist() == expected
    assert CLIPTokenizer.from_dir(tmp_path)(prompts).tolist() == expected  # model root holding tokenizer/


def test_declared_pad_token_is_used(tmp_path):
    # SD 2.x tokenizers pad with "!" (id 0); a folder's declared pad token wins over the default.
    tok = CLIPTokenizer.from_dir(_diffusers_tokenizer_folder(tmp_path, pad_token="!"))
    ids = tok("a photo of a cat")[0]
    assert tok.pad_token_id == 0
    assert ids[:7].tolist() == BY_NAME["simple"]["ids"][:7]
    assert (ids[7:] == 0).all()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(TinySDError, match="not found"):
        CLIPTokenizer.from_dir(tmp_path / "nope")
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(TOKENIZER_DIR / "vocab.json", folder / "vocab.json")
    with pytest.raises(TinySDError, match="merges.txt"):
        CLIPTokenizer.from_dir(folder)
    (folder / "merges.txt").write_text("#version: 0.2\ni n\nthree parts here\n", encoding="utf-8")
    with pytest.raises(TinySDError, match="line 3"):
        CLIPTokenizer.from_dir(folder)
    (folder / "vocab.json").write_text('{"a": 0', encoding="utf-8")
    with pytest.raises(TinySDError, match="vocab.json"):
        CLIPTokenizer.from_dir(folder)
    (folder / "vocab.json").write_text('{"a": 0, "b": 1}', encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(TinySDError, match="startoftext"):
        CLIPTokenizer.from_dir(folder)


@pytest.mark.parametrize("bad", [None, 3, ["ok", 4], [], b"bytes"])
def test_bad_prompt_type(tok, bad):
    with pytest.raises(TinySDError):
        tok(bad)
