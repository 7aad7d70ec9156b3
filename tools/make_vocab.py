"""Derive the SD 1.x CLIP tokenizer vocabulary (dev-only tool).

Reads OpenAI's BPE merge list `open_clip/bpe_simple_vocab_16e6.txt.gz` from an
open-clip-torch wheel (read straight out of the zip; nothing is installed) and
writes, under `weights/tokenizer/`:

- `vocab.json`: token -> id, 49408 entries, the table OpenAI CLIP builds in
  `SimpleTokenizer.__init__` and that `openai/clip-vit-large-patch14` (the SD 1.x
  tokenizer) ships as vocab.json:
    ids     0..255    the 256 byte characters of GPT-2's bytes_to_unicode, in its order
    ids   256..511    the same characters + "</w>" (a byte that ends a word)
    ids   512..49405  the 48894 merges, each merge's two halves concatenated
    id    49406       <|startoftext|>
    id    49407       <|endoftext|>
- `merges.txt`: "#version: 0.2" then the 48894 merges, one "left right" pair a line,
  in rank order (the first 48894 merge lines of the .gz: 49152 - 256 - 2).
- `README.md`: what generated the files (wheel name, sha256 of the wheel and of
  the .gz, and of the files written).

Usage:
    pip download --no-deps open-clip-torch -d /tmp/ocwheel
    python3 tools/make_vocab.py /tmp/ocwheel/open_clip_torch-*.whl
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

GZ_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
# OpenAI CLIP keeps 49152 - 256 - 2 merges: vocab = 2 * 256 byte tokens + merges + 2 specials = 49408.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
SPECIALS = ("<|startoftext|>", "<|endoftext|>")
OUT_DIR = Path(__file__).resolve().parent.parent / "weights" / "tokenizer"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map, in insertion order.

    Bytes that are printable and not whitespace ('!'..'~', '¡'..'¬', '®'..'ÿ'; 188 of them)
    map to themselves; the other 68 bytes map, in increasing byte order, to chr(256 + n).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def read_merges(gz_bytes: bytes) -> list[tuple[str, str]]:
    """The first N_MERGES merge pairs of OpenAI's bpe_simple_vocab_16e6.txt.gz.

    Line 0 of the decompressed text is a header; lines 1..N_MERGES are "left right".
    """
    lines = gzip.decompress(gz_bytes).decode("utf-8").split("\n")
    merges = []
    for lineno, line in enumerate(lines[1 : N_MERGES + 1], start=1):
        parts = line.split()
        if len(parts) != 2:
            raise SystemExit(f"{GZ_MEMBER}: line {lineno} is not a merge pair: {line!r}")
        merges.append((parts[0], parts[1]))
    if len(merges) != N_MERGES:
        raise SystemExit(f"{GZ_MEMBER}: expected {N_MERGES} merges, found {len(merges)}")
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """OpenAI CLIP's token -> id table (see the module docstring for the layout)."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += [left + right for left, right in merges]
    tokens += list(SPECIALS)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE or len(tokens) != VOCAB_SIZE:
        raise SystemExit(f"vocabulary has {len(tokens)} tokens, {len(vocab)} distinct; expected {VOCAB_SIZE}")
    return vocab


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheel", type=Path, help="open_clip_torch-*.whl (from `pip download --no-deps open-clip-torch`)")
    ap.add_argument("--out", type=Path, default=OUT_DIR, help=f"output folder (default {OUT_DIR})")
    args = ap.parse_args(argv)

    wheel_bytes = args.wheel.read_bytes()
    with zipfile.ZipFile(args.wheel) as z:
        gz_bytes = z.read(GZ_MEMBER)
    merges = read_merges(gz_bytes)
    vocab = build_vocab(merges)

    # One entry per line keeps diffs readable; ensure_ascii=False keeps the byte characters as themselves.
    vocab_bytes = (json.dumps(vocab, ensure_ascii=False, indent=0) + "\n").encode("utf-8")
    merges_bytes = ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode("utf-8")

    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "vocab.json", vocab_bytes)
    write_atomic(args.out / "merges.txt", merges_bytes)
    readme = f"""# SD 1.x CLIP tokenizer vocabulary

Generated by `tools/make_vocab.py`; do not edit by hand. The layout is OpenAI CLIP's
(`SimpleTokenizer`), the same table as the `tokenizer/` folder of SD 1.x
(`openai/clip-vit-large-patch14`): ids 0-255 byte characters, 256-511 byte characters
+ `</w>`, 512-49405 the {N_MERGES} merges joined, 49406 `<|startoftext|>`,
49407 `<|endoftext|>` (also the padding token). {VOCAB_SIZE} tokens in all.

- source wheel: `{args.wheel.name}`, sha256 `{sha256(wheel_bytes)}`
- source member: `{GZ_MEMBER}`, sha256 `{sha256(gz_bytes)}`
- `vocab.json`: {len(vocab_bytes)} bytes, sha256 `{sha256(vocab_bytes)}`
- `merges.txt`: {len(merges_bytes)} bytes, sha256 `{sha256(merges_bytes)}`

Regenerate:

    pip download --no-deps open-clip-torch -d /tmp/ocwheel
    python3 tools/make_vocab.py /tmp/ocwheel/{args.wheel.name}
"""
    write_atomic(args.out / "README.md", readme.encode("utf-8"))
    print(f"wrote {args.out}: {len(vocab)} tokens, {len(merges)} merges", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
