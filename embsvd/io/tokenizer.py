"""A checkpoint's tokenizer read from its ``tokenizer.json`` with the ``tokenizers`` library.

embsvd needs five things of a tokenizer: its vocabulary, the ids of a text, the token
string of an id, the unknown token and the special tokens. ``transformers``'
``AutoTokenizer`` provides them too, but importing it costs seconds (it imports torch)
and loading builds more than is used; ``tokenizer.json`` (what every fast tokenizer
saves, and what embsvd writes for GGUF files) holds all five. Folders without one (a
bare ``vocab.txt``) still load through ``transformers``.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from functools import cached_property
from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"


# Prefixes that mark a word-initial token: byte-level BPE's space, SentencePiece's.
WORD_START_MARKERS = ("Ġ", "▁")
MARKER_MIN_SHARE = 0.05  # of the vocabulary, for the marker to count as the tokenizer's


class FastTokenizer:
    """The part of the ``transformers`` tokenizer interface embsvd uses, over a
    ``tokenizers.Tokenizer``: ``len``, ``get_vocab``, ``encode``,
    ``convert_ids_to_tokens``, ``unk_token_id`` and ``all_special_ids``.

    Special tokens are those ``tokenizer.json`` marks special and those
    ``tokenizer_config.json`` names (``bos_token``, ...); the unknown token is the one it
    names, else the model's.
    """

    def __init__(self, file: Path):
        from tokenizers import Tokenizer

        self.file = file
        self.backend = Tokenizer.from_file(str(file))
        # a tokenizer.json may pad or truncate (the bundled MiniLM pads to 128)
        self.backend.no_padding()
        self.backend.no_truncation()
        named = _named_special_tokens(file.parent)
        added = self.backend.get_added_tokens_decoder()
        special = {i for i, token in added.items() if token.special}
        special |= {self.backend.token_to_id(t) for t in named.values()} - {None}
        self._special = sorted(special)
        unk = named.get("unk_token") or getattr(self.backend.model, "unk_token", None)
        self.unk_token_id = self.backend.token_to_id(unk) if unk else None

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Token -> id, a fresh dict each call, copied from one read of the tokenizer: a
        run asks three times, and ``tokenizers`` builds the dict anew each time (70 ms at
        128k tokens against 5 ms for the copy)."""
        return dict(self._vocab)

    @cached_property
    def _vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self.backend.id_to_token(i) for i in ids]

    @cached_property
    def all_special_ids(self) -> list[int]:
        return self._special

    def __repr__(self) -> str:
        return f"FastTokenizer({self.file}, {len(self)} tokens)"


SPECIAL_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _named_special_tokens(folder: Path) -> dict[str, str]:
    """``{"unk_token": "[UNK]", ...}`` from ``tokenizer_config.json``, as transformers
    reads them (a value may be a string or an ``AddedToken`` dict)."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    named = {}
    for key in SPECIAL_KEYS:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            named[key] = value
    return named


def fast_tokenizer(folder: Path) -> FastTokenizer | None:
    """The folder's ``tokenizer.json`` as a :class:`FastTokenizer`, or ``None`` without one."""
    file = folder / TOKENIZER_FILE
    return FastTokenizer(file) if file.is_file() else None


def word_start_marker(vocab: Collection[str]) -> str | None:
    """``Ġ`` (byte-level BPE) or ``▁`` (SentencePiece) when at least 5% of the vocabulary
    starts with it; ``None`` for vocabularies without word-initial forms (WordPiece)."""
    counts = dict.fromkeys(WORD_START_MARKERS, 0)  # each marker is one character
    for token in vocab:  # one pass, its first character: 7 ms at 128k tokens, not 18
        first = token[:1]
        if first in counts:
            counts[first] += 1
    marker = max(counts, key=counts.__getitem__)
    return marker if counts[marker] >= MARKER_MIN_SHARE * len(vocab) else None
