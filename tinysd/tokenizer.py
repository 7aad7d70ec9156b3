"""The SD 1.x CLIP BPE tokenizer, built on the `tokenizers` library.

Text -> ids, step by step (the pipeline transformers 5.x builds for `CLIPTokenizer`,
which is what diffusers' SD 1.x pipelines use):

1. special tokens: a literal `<|startoftext|>` / `<|endoftext|>` in the prompt (exact
   case) becomes its id (49406 / 49407) and is not processed further;
2. normalize: Unicode NFC, every run of whitespace (regex `\\s+`) -> one space, lower case
   (per character, Unicode);
3. pre-tokenize: CLIP's regex keeps the pieces
   `<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`
   and drops everything between them (whitespace); each piece is then mapped byte by
   byte to GPT-2's printable byte characters (byte-level);
4. BPE: each piece is split into byte characters, the last one carrying the end-of-word
   suffix `</w>`, and merged by rank with CLIP's 48894 merges;
5. frame: `[BOS] + ids + [EOS]`, truncated to 77 positions (keeping BOS ... EOS), padded
   with the pad id (49407, `<|endoftext|>`, for SD 1.x) to 77.

OpenAI's original tokenizer also runs ftfy.fix_text and html.unescape (twice) before
step 2; transformers' CLIPTokenizer (and so diffusers) does not, and neither do we:
"&amp;" stays four characters and is tokenized as written. See tests/fixtures/tokenizer_cases.json.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from .errors import TinySDError
from .paths import TOKENIZER_DIR

log = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MAX_LENGTH = 77  # CLIP's context length: position embeddings of the SD 1.x text encoder
# CLIP's pre-tokenizer: pieces that are kept; everything between them (whitespace) is dropped.
CLIP_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)
# Prompts quoted in warnings are cut to this many characters.
_QUOTE_CHARS = 60


@dataclass(frozen=True)
class TokenizeInfo:
    """What happened to one prompt: `n_tokens` is its length with BOS and EOS before
    truncation; `dropped` the number of tokens cut to fit 77 positions (0 if none)."""

    n_tokens: int
    dropped: int


def _special_token_content(value) -> str | None:
    """A special token as tokenizer_config.json / special_tokens_map.json write it:
    a string, or an AddedToken dict with a "content" field."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_pad_token(folder: Path) -> str:
    """The pad token a diffusers/transformers tokenizer folder declares; `<|endoftext|>`
    (SD 1.x's) when the folder declares none."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TinySDError(f"{path}: not readable JSON ({e})") from None
        pad = _special_token_content(data.get("pad_token")) if isinstance(data, dict) else None
        if pad is not None:
            return pad
    return EOS_TOKEN


def _quote(prompt: str) -> str:
    """`prompt` shortened for a log line."""
    return repr(prompt if len(prompt) <= _QUOTE_CHARS else prompt[:_QUOTE_CHARS] + "...")


class CLIPTokenizer:
    """SD 1.x's CLIP tokenizer: prompts -> int64 ids of shape (B, 77).

    Build it with `CLIPTokenizer.from_dir(path)`. Ids equal transformers'
    `CLIPTokenizer(prompts, padding="max_length", max_length=77, truncation=True)`.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pad_token: str = EOS_TOKEN,
                 max_length: int = MAX_LENGTH, source: str = "<memory>"):
        """`vocab` maps token -> id (must hold `<|startoftext|>`, `<|endoftext|>` and `pad_token`);
        `merges` are BPE merge pairs in rank order; `source` names where they came from, for messages."""
        for tok in (BOS_TOKEN, EOS_TOKEN, pad_token):
            if tok not in vocab:
                raise TinySDError(f"{source}: vocabulary has no {tok!r} token")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (BOS and EOS), got {max_length}")
        self.source = source
        self.max_length = max_length
        self.bos_token_id = vocab[BOS_TOKEN]
        self.eos_token_id = vocab[EOS_TOKEN]
        self.pad_token_id = vocab[pad_token]

        try:
            model = BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix=END_OF_WORD, fuse_unk=False, unk_token=EOS_TOKEN)
        except Exception as e:  # tokenizers raises its own exception types for bad merges
            raise TinySDError(f"{source}: not a valid BPE vocabulary/merge list ({e})") from None
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                # invert=True: the regex matches are the pieces; what lies between is removed.
                pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        # ids -> text: byte characters -> bytes -> UTF-8, then each "</w>" -> " ". (The trailing
        # space is stripped in decode(): decoders.Strip panics on an empty id list in tokenizers 0.23.)
        tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace(END_OF_WORD, " ")])
        # Typed special tokens map to their ids, matched case-sensitively before normalization.
        tok.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
        self._tok = tok

    @classmethod
    def from_dir(cls, path: str | Path = TOKENIZER_DIR) -> CLIPTokenizer:
        """Load `vocab.json` + `merges.txt` from `path`: tinysd's `weights/tokenizer/`, a
        diffusers `tokenizer/` folder, or a diffusers model folder holding `tokenizer/`.

        A `pad_token` declared in the folder's special_tokens_map.json or tokenizer_config.json
        is honoured; otherwise padding uses `<|endoftext|>` as SD 1.x does.
        Raises TinySDError naming the missing or unreadable file.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise TinySDError(f"{folder}: tokenizer folder not found")
        if not (folder / "vocab.json").is_file() and (folder / "tokenizer" / "vocab.json").is_file():
            folder = folder / "tokenizer"
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        for p in (vocab_path, merges_path):
            if not p.is_file():
                raise TinySDError(f"{p}: tokenizer file not found")
        try:
            vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TinySDError(f"{vocab_path}: not readable JSON ({e})") from None
        if not isinstance(vocab, dict) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()
        ):
            raise TinySDError(f"{vocab_path}: expected a JSON object mapping token -> integer id")
        merges = []
        try:
            lines = merges_path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise TinySDError(f"{merges_path}: not readable ({e})") from None
        for lineno, line in enumerate(lines, start=1):
            line = line.rstrip("\r")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise TinySDError(f"{merges_path}: line {lineno} is not a 'left right' merge pair")
            merges.append((parts[0], parts[1]))
        log.debug("tokenizer from %s: %d tokens, %d merges", folder, len(vocab), len(merges))
        return cls(vocab, merges, pad_token=_read_pad_token(folder), source=str(folder))

    @property
    def vocab_size(self) -> int:
        """Number of tokens, special tokens included (49408 for SD 1.x)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """token -> id for every token, special tokens included."""
        return self._tok.get_vocab(with_added_tokens=True)

    def encode(self, prompt: str) -> list[int]:
        """The BPE ids of `prompt` alone: no BOS/EOS, no truncation, no padding."""
        if not isinstance(prompt, str):
            raise TinySDError(f"prompt must be a string, got {type(prompt).__name__}")
        return self._tok.encode(prompt, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text for `ids` (any int sequence), words separated by one space, no leading/trailing
        space; BOS/EOS/pad are dropped unless `skip_special_tokens` is False."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens).strip(" ")

    def tokenize_with_info(self, prompts: str | list[str]) -> tuple[np.ndarray, list[TokenizeInfo]]:
        """Ids for `prompts` and, per prompt, its length and how many tokens truncation dropped.

        Returns (ids, infos): ids is int64 of shape (B, max_length), each row
        `[BOS] + bpe_ids[: max_length - 2] + [EOS]` followed by pad ids; B = 1 for a
        single string. Each truncated prompt is reported with a logging warning.
        """
        batch = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(batch, (list, tuple)) or not all(isinstance(p, str) for p in batch):
            raise TinySDError("prompt must be a string or a list of strings")
        if len(batch) == 0:
            raise TinySDError("prompt list is empty")
        body = self.max_length - 2  # room between BOS and EOS
        ids = np.full((len(batch), self.max_length), self.pad_token_id, dtype=np.int64)  # (B, 77)
        infos = []
        for row, enc in enumerate(self._tok.encode_batch(list(batch), add_special_tokens=False)):
            bpe = enc.ids
            kept = bpe[:body]
            ids[row, 0] = self.bos_token_id
            ids[row, 1 : 1 + len(kept)] = kept
            ids[row, 1 + len(kept)] = self.eos_token_id
            dropped = len(bpe) - len(kept)
            infos.append(TokenizeInfo(n_tokens=len(bpe) + 2, dropped=dropped))
            if dropped:
                log.warning(
                    "prompt %s is %d tokens long, CLIP takes %d: dropped the last %d tokens (%r)",
                    _quote(batch[row]), len(bpe) + 2, self.max_length, dropped,
                    self.decode(bpe[body:]),
                )
        return ids, infos

    def __call__(self, prompts: str | list[str]) -> np.ndarray:
        """int64 ids of shape (B, max_length) for a prompt or list of prompts (see tokenize_with_info)."""
        return self.tokenize_with_info(prompts)[0]
