"""Write tests/fixtures/tokenizer_cases.json: transformers' CLIP ids for a set of prompts (dev-only).

The reference is transformers' `CLIPTokenizer` loaded from the shipped
`weights/tokenizer/vocab.json` + `merges.txt` (no network), called as diffusers' SD
pipelines call it: `tok(prompts, padding="max_length", max_length=77, truncation=True)`.

In transformers 5.x there is no pure-Python ("slow") CLIP tokenizer any more:
`CLIPTokenizer` is backed by the `tokenizers` library, `CLIPTokenizerFast` is the same
class, and `AutoTokenizer(..., use_fast=False)` returns it too; ftfy is never used. Its
text cleanup is: Unicode NFC, whitespace runs -> one space, lower case. No HTML unescaping.
This tool checks those facts and records them in the fixture.

Two independent cross-checks run here, from a pure-Python BPE written after OpenAI's
published `SimpleTokenizer` algorithm that reads the merge list straight from the
open-clip-torch wheel (so an error in tools/make_vocab.py would show):
- "openai_bpe_hf_cleanup": OpenAI's BPE with transformers' cleanup. Must equal
  transformers on every case; the tool fails otherwise.
- "openai_cleanup_no_ftfy": OpenAI's own cleanup (html.unescape twice, whitespace
  collapse, str.lower, special tokens only via the BPE cache) without ftfy (not
  installed). Informational: the cases where it differs are listed in the fixture.
Finally tinysd's tokenizer is compared with transformers on the cases and on random
strings (seeded), and the tool fails on any difference.

Usage:
    pip download --no-deps open-clip-torch -d /tmp/ocwheel
    python3 tools/make_tokenizer_fixture.py --wheel /tmp/ocwheel/open_clip_torch-*.whl
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import json
import os
import random
import shutil
import sys
import tempfile
import unicodedata
import zipfile
from pathlib import Path

import regex

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from make_vocab import GZ_MEMBER, N_MERGES, bytes_to_unicode, write_atomic  # noqa: E402

from tinysd.paths import TOKENIZER_DIR  # noqa: E402
from tinysd.tokenizer import CLIPTokenizer as TinyTokenizer  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "tokenizer_cases.json"
MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def cases() -> list[tuple[str, str]]:
    """(name, prompt) pairs covering the behaviours the tokenizer must reproduce."""
    long_words = (
        "a breathtaking panoramic landscape of snow capped mountains above a mirror lake at golden hour, "
        "dramatic volumetric clouds, pine forest, tiny wooden cabin with smoke rising from the chimney, "
        "reflections, ultra detailed, 8k, photorealistic, cinematic lighting, by greg rutkowski and "
        "albert bierstadt, trending on artstation, sharp focus, high dynamic range, award winning photograph, "
        "wildflowers in the foreground, a deer drinking at the water's edge, mist over the valley"
    )
    return [
        ("simple", "a photo of a cat"),
        ("empty", ""),
        ("whitespace_only", "   \n\t  "),
        ("punctuation", "Hello, world! How's it going?? ... (yes) [no] {maybe} <tag> a-b_c/d\\e @#$%^&*~`|"),
        ("punctuation_runs", "wow!!!??? ...--- ,,, ;; :: \"quoted\" 'single'"),
        ("digits", "1234567890 3.14159 1,000,000 2nd 1girl 4k 8K uhd 1920x1080 v1.5"),
        ("accents_nfc", "Café crème brûlée naïve façade Ångström Zürich São Paulo"),
        ("accents_decomposed", "Cafe\u0301 cre\u0300me na\u0131\u0308ve A\u030angstro\u0308m"),
        ("cjk", "東京の夜景 一只可爱的猫 고양이 サイバーパンク"),
        ("emoji", "a cat 🐱 with a 🎩 👨‍👩‍👧 ❤️ 🇯🇵"),
        ("mixed_case", "A PhOtO oF a CAT, MasterPiece, HDR, iPhone"),
        ("repeated_whitespace", "a  cat\n\nwith\ta   hat \r\n  in   the\u3000rain\u00a0now  "),
        ("html_entities", "tom &amp; jerry &lt;3 &quot;quoted&quot; &#39;x&#39; caf&eacute; &nbsp;"),
        ("apostrophes", "it's the cat's hat, they're here, we've, I'm, you'll, he'd, don't, can't"),
        ("apostrophes_upper", "IT'S THE CAT'S HAT, THEY'RE, WE'VE, I'M, YOU'LL, HE'D, DON'T"),
        ("apostrophes_curly", "it\u2019s the cat\u2019s hat, \u2018quoted\u2019"),
        ("sd_weights", "(masterpiece:1.2), best quality, ((ultra-detailed)), [lowres], (worst quality:1.4), "
                       "1girl, solo, <lora:foo_v2:0.8>, {blue eyes}, BREAK landscape"),
        ("sd_negative", "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
                        "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark"),
        ("special_tokens_typed", "a <|endoftext|> b <|startoftext|>c"),
        ("special_tokens_upper", "a <|ENDOFTEXT|> b"),
        ("greek_sigma", "ΟΔΥΣΣΕΥΣ σοφός"),
        ("case_mapping_edge", "İstanbul STRASSE Straße ǅ ﬁne ＦＵＬＬＷＩＤＴＨ"),
        ("control_and_invisible", "a\x00b\x1fc\u200bd\ufeffe\u00adf"),
        ("mixed_scripts", "Москва مرحبا שלום हिन्दी ไทย"),
        ("tokens_75", " ".join(["cat"] * 75)),
        ("tokens_76_truncated", " ".join(["cat"] * 76)),
        ("long_prompt_truncated", long_words),
        ("long_digits_truncated", "0123456789" * 12),
    ]


# --- independent reference: OpenAI CLIP's BPE, reading the merge list from the wheel -----------------

class OpenAIReference:
    """A pure-Python CLIP BPE following OpenAI's SimpleTokenizer (bpe(), encoder table)."""

    # OpenAI's pattern (Python: \s is str.isspace(), which includes U+001C..U+001F).
    pattern = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )
    # transformers' patterns run in Rust, where \s is \p{White_Space}: U+001C..U+001F are not whitespace.
    WS = r"\p{White_Space}"
    hf_pattern = regex.compile(
        rf"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^{WS}\p{{L}}\p{{N}}]+"""
    )
    # GPT-2's pattern, which transformers' ByteLevel pre-tokenizer (use_regex=True) applies to each
    # CLIP piece. It only splits a piece that mixes classes: a lower-cased "<|endoftext|>".
    gpt2_pattern = regex.compile(
        rf"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{{L}}+| ?\p{{N}}+| ?[^{WS}\p{{L}}\p{{N}}]+|{WS}+(?!\S)|{WS}+"""
    )
    hf_whitespace = regex.compile(rf"{WS}+")

    def __init__(self, gz_bytes: bytes):
        merges = gzip.decompress(gz_bytes).decode("utf-8").split("\n")[1 : N_MERGES + 1]
        merges = [tuple(m.split()) for m in merges]
        self.byte_encoder = bytes_to_unicode()
        chars = list(self.byte_encoder.values())
        tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
        self.encoder = {t: i for i, t in enumerate(tokens)}
        self.ranks = {m: i for i, m in enumerate(merges)}

    def bpe(self, token: str) -> list[str]:
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        return word

    def _encode_clean(self, text: str, special_cache: bool, hf_split: bool) -> list[int]:
        ids = []
        for piece in (self.hf_pattern if hf_split else self.pattern).findall(text):
            if special_cache and piece.lower() in (BOS, EOS):
                ids.append(self.encoder[piece.lower()])  # OpenAI's bpe() cache maps the specials to themselves
                continue
            for word in self.gpt2_pattern.findall(piece) if hf_split else [piece]:
                word = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
                ids.extend(self.encoder[t] for t in self.bpe(word))
        return ids

    def encode_hf_cleanup(self, text: str) -> list[int]:
        """transformers 5.x's steps: typed special tokens split out first (exact case), then
        NFC, \\s+ -> ' ', per-character lower case, CLIP regex, GPT-2 regex, byte-level, BPE."""
        ids = []
        for part in regex.split(r"(<\|startoftext\|>|<\|endoftext\|>)", text):
            if part in (BOS, EOS):
                ids.append(self.encoder[part])
                continue
            part = unicodedata.normalize("NFC", part)
            part = self.hf_whitespace.sub(" ", part)
            part = "".join(c.lower() for c in part)
            ids.extend(self._encode_clean(part, special_cache=False, hf_split=True))
        return ids

    def encode_openai_cleanup(self, text: str) -> list[int]:
        """OpenAI's basic_clean (without ftfy) + whitespace_clean + lower."""
        text = html.unescape(html.unescape(text)).strip()
        text = " ".join(text.split()).strip().lower()
        return self._encode_clean(text, special_cache=True, hf_split=False)


def frame(ids: list[int]) -> list[int]:
    """[BOS] + ids[:75] + [EOS], padded with EOS to 77: what truncation + max_length padding gives."""
    body = [49406] + ids[: MAX_LENGTH - 2] + [49407]
    return body + [49407] * (MAX_LENGTH - len(body))


def random_strings(n: int, seed: int) -> list[str]:
    """Seeded random strings mixing ASCII, punctuation, whitespace, accents, CJK, emoji and specials."""
    rng = random.Random(seed)
    alphabet = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        + list(" \t\n\r\u00a0\u3000  ")
        + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
        + list("éèêëàâäôöûüçñÅßøÆœıİſǅﬁΣσςЖжأب")
        + ["\u0301", "\u0308", "\u200b", "\u200d", "\ufe0f", "\x00", "\x1f"]
        + list("東京猫犬の夜한국어ไทย")
        + ["🐱", "🎩", "❤", "🇯", "🇵", "👨"]
        + ["'s", "'t", "'re", "'ll", "'S", BOS, EOS, "<|ENDOFTEXT|>", "&amp;"]
    )
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", type=Path, required=True, help="open_clip_torch-*.whl, for the independent BPE check")
    ap.add_argument("--fuzz", type=int, default=3000, help="random strings compared tinysd vs transformers")
    args = ap.parse_args(argv)

    import tokenizers
    import transformers

    # 1. What transformers' CLIP tokenizer is in this version.
    assert transformers.CLIPTokenizerFast is transformers.CLIPTokenizer, "expected one CLIP tokenizer class"
    tmp = Path(tempfile.mkdtemp(prefix="tinysd-hftok-"))
    try:
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(TOKENIZER_DIR / name, tmp / name)
        (tmp / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer"}))
        hf = transformers.CLIPTokenizer.from_pretrained(str(tmp), local_files_only=True)
        slow = transformers.AutoTokenizer.from_pretrained(str(tmp), use_fast=False, local_files_only=True)
    finally:
        shutil.rmtree(tmp)
    assert type(slow) is type(hf), f"use_fast=False gave {type(slow)}, not {type(hf)}"
    assert len(hf) == 49408 and hf.bos_token_id == 49406 and hf.eos_token_id == 49407 and hf.pad_token_id == 49407

    def hf_ids(prompts):
        return hf(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True)["input_ids"]

    with zipfile.ZipFile(args.wheel) as z:
        gz_bytes = z.read(GZ_MEMBER)
    ref = OpenAIReference(gz_bytes)
    tiny = TinyTokenizer.from_dir(TOKENIZER_DIR)

    # 2. The cases.
    named = cases()
    prompts = [p for _, p in named]
    expected = hf_ids(prompts)
    full = hf(prompts, add_special_tokens=True)["input_ids"]  # untruncated, with BOS/EOS
    out_cases, openai_differs, failures = [], [], []
    for (name, prompt), ids, untrunc in zip(named, expected, full):
        ref_hf = ref.encode_hf_cleanup(prompt)
        if frame(ref_hf) != ids or len(ref_hf) + 2 != len(untrunc):
            failures.append(f"{name}: OpenAI BPE with transformers' cleanup differs from transformers")
        if frame(ref.encode_openai_cleanup(prompt)) != ids:
            openai_differs.append(name)
        out_cases.append({"name": name, "prompt": prompt, "n_tokens": len(untrunc), "ids": ids})
    ours = tiny(prompts).tolist()
    failures += [f"{n}: tinysd differs from transformers" for (n, _), a, b in zip(named, ours, expected) if a != b]

    # 3. Fuzz: tinysd vs transformers, and the independent reference vs transformers.
    fuzz = random_strings(args.fuzz, seed=0)
    fuzz_hf = hf_ids(fuzz)
    fuzz_tiny = tiny(fuzz).tolist()
    n_tiny_bad = sum(a != b for a, b in zip(fuzz_tiny, fuzz_hf))
    n_ref_bad = 0
    for s, ids in zip(fuzz, fuzz_hf):
        if frame(ref.encode_hf_cleanup(s)) != ids:
            n_ref_bad += 1
            if n_ref_bad <= 5:
                print(f"reference differs on {s!r}", file=sys.stderr)
    if n_tiny_bad:
        failures.append(f"fuzz: tinysd differs from transformers on {n_tiny_bad}/{len(fuzz)} strings")
    if n_ref_bad:
        failures.append(f"fuzz: OpenAI BPE with transformers' cleanup differs on {n_ref_bad}/{len(fuzz)} strings")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        return 1

    def sha(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    doc = {
        "generator": {
            "tool": "tools/make_tokenizer_fixture.py",
            "reference": "transformers.CLIPTokenizer (tokenizers-backed; CLIPTokenizerFast is the same class, "
                         "AutoTokenizer use_fast=False returns it too; no slow CLIP tokenizer, no ftfy)",
            "call": "tok(prompts, padding='max_length', max_length=77, truncation=True)['input_ids']",
            "n_tokens": "len(tok(prompt)['input_ids']): untruncated length with BOS and EOS",
            "cleanup": "typed <|startoftext|>/<|endoftext|> (exact case) -> their ids; then NFC, "
                       "regex \\s+ -> ' ', per-character lower case; no ftfy, no HTML unescaping",
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "vocab.json sha256": sha(TOKENIZER_DIR / "vocab.json"),
            "merges.txt sha256": sha(TOKENIZER_DIR / "merges.txt"),
            "cross_checks": {
                "openai_bpe_hf_cleanup": f"equal on all cases and {len(fuzz)} random strings "
                                         f"(merges read from {args.wheel.name}:{GZ_MEMBER}, "
                                         f"sha256 {hashlib.sha256(gz_bytes).hexdigest()})",
                "tinysd": f"equal on all cases and {len(fuzz)} random strings",
                "openai_cleanup_no_ftfy_differs_on": openai_differs,
            },
        },
        "cases": out_cases,
    }
    # One case per line: small, and diffs stay readable.
    body = ",\n".join("    " + json.dumps(c, ensure_ascii=False) for c in out_cases)
    head = json.dumps({k: v for k, v in doc.items() if k != "cases"}, ensure_ascii=False, indent=2)[:-2]
    text = head + ',\n  "cases": [\n' + body + "\n  ]\n}\n"
    assert json.loads(text) == doc
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(OUT, text.encode("utf-8"))
    print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(out_cases)} cases); "
          f"OpenAI cleanup (no ftfy) differs on: {openai_differs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
