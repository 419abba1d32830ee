"""Word frequencies of a vocabulary's tokens: what a matched null matches groups on.

A token's *surface* is its string without the word-start marker (``ĠFrance`` ->
``France``). Its frequency is the Zipf frequency (``log10`` of occurrences per billion
words; 7.7 for "the", 0 for unknown words) of that surface in the ``wordfreq`` package's
English list, which pools Wikipedia, subtitles, news, books, web text and social media.
Numerals (surfaces of ASCII digits) get wordfreq's own estimate for digit strings.

Only two kinds of surface count as real words here, and only they enter null pools:
``word`` (ASCII letters, present in the frequency list) and ``numeral`` (ASCII digits).
Fragments (``iscrim``), identifiers (``getLogger``), bytes and WordPiece continuations
(``##ing``) are neither. The table is computed once per vocabulary and kept in
``<cache_dir>/frequency/`` (reading the word list costs about 0.2 s, the lookups 0.1 s).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from embsvd.io.cache import replaced_atomically

log = logging.getLogger(__name__)

LANGUAGE, WORDLIST = "en", "large"
LETTERS = re.compile(r"[A-Za-z]+")
DIGITS = re.compile(r"[0-9]+")
KINDS = ("other", "word", "numeral")  # codes 0, 1, 2 of TokenFrequencies.kind


@dataclass(frozen=True)
class TokenFrequencies:
    """Per token of a vocabulary (``d_vocab`` rows).

    Attributes:
        zipf: Zipf frequency of the token's surface, ``(d_vocab,)``; 0 where it is not a
            word or numeral (or a special or unnamed token).
        kind: ``(d_vocab,)`` codes into ``KINDS``: 0 other, 1 word, 2 numeral.
        source: The frequency list, e.g. ``wordfreq 3.1.1 en/large (Zipf)``.
    """

    zipf: np.ndarray
    kind: np.ndarray
    source: str

    def of_kind(self, name: str) -> np.ndarray:
        """``(d_vocab,)`` booleans: the tokens whose surface is a ``word`` or ``numeral``."""
        return self.kind == KINDS.index(name)


def surface(token: str, marker: str | None) -> str:
    """The token without its word-start marker (``Ġ``, ``▁``); unchanged without one."""
    return token[len(marker) :] if marker and token.startswith(marker) else token


def token_frequencies(
    token_strings: Sequence[str | None],
    marker: str | None,
    excluded_ids: Collection[int],
    cache_dir: Path | None = None,
) -> TokenFrequencies:
    """The frequency table of a vocabulary, read from ``cache_dir`` when it was computed
    before for the same tokens, marker and word list (``None``: no disk cache)."""
    excluded = sorted(int(i) for i in excluded_ids)
    key = hashlib.sha256(
        json.dumps([list(token_strings), marker, excluded, _source()]).encode()
    ).hexdigest()[:32]
    return _frequencies(key, tuple(token_strings), marker, tuple(excluded), cache_dir)


@functools.lru_cache(maxsize=4)  # a process's sweep reads each vocabulary's table once
def _frequencies(
    key: str,
    token_strings: tuple[str | None, ...],
    marker: str | None,
    excluded: tuple[int, ...],
    cache_dir: Path | None,
) -> TokenFrequencies:
    cache_file = cache_dir / "frequency" / f"{key}.npz" if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as cached:
                return TokenFrequencies(cached["zipf"], cached["kind"], str(cached["source"]))
        except (OSError, ValueError, KeyError) as error:
            log.warning("%s is unreadable (%r): recomputing", cache_file, error)
    table = _compute(token_strings, marker, set(excluded))
    if cache_file is not None:
        _save(cache_file, table)
    return table


def _compute(
    token_strings: Sequence[str | None], marker: str | None, excluded: set[int]
) -> TokenFrequencies:
    import wordfreq  # its list takes 0.2 s to read: only when a table is built

    known = wordfreq.get_frequency_dict(LANGUAGE, WORDLIST)  # casefolded word -> frequency
    zipf = np.zeros(len(token_strings))
    kind = np.zeros(len(token_strings), dtype=np.int8)
    for token_id, token in enumerate(token_strings):
        if token is None or token_id in excluded:
            continue
        if marker is None and token.startswith("##"):
            continue  # a WordPiece continuation is part of a word, not one
        text = surface(token, marker)
        if LETTERS.fullmatch(text) and text.lower() in known:
            zipf[token_id] = _zipf(known[text.lower()])
            kind[token_id] = KINDS.index("word")
        elif DIGITS.fullmatch(text):
            zipf[token_id] = wordfreq.zipf_frequency(text, LANGUAGE, WORDLIST)
            kind[token_id] = KINDS.index("numeral")
    return TokenFrequencies(zipf, kind, _source())


def _zipf(frequency: float) -> float:
    """wordfreq's Zipf scale: ``log10`` of occurrences per billion words."""
    return math.log10(frequency * 1e9) if frequency > 0 else 0.0


def _source() -> str:
    return f"wordfreq {metadata.version('wordfreq')} {LANGUAGE}/{WORDLIST} (Zipf)"


def _save(cache_file: Path, table: TokenFrequencies) -> None:
    with replaced_atomically(cache_file) as stream:
        np.savez(stream, zipf=table.zipf, kind=table.kind, source=table.source)
