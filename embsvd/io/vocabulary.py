"""What the analysis and its checks need to know about a checkpoint's tokens.

The analysis reports token strings (and the text people read for them) and skips
special tokens; the checks also draw random groups of real words matched on norm and
frequency, and correlate the axes with token norm and length. All of it is a property
of the vocabulary, not of one run, so it is read once per checkpoint
(``Checkpoint.vocabulary``) and handed to ``analyze`` and ``run_checks`` as one value.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.io.cache import intact, written_with_checksum
from embsvd.io.display import DisplayTexts, TokenDecoding, display_text, guess_decoding
from embsvd.io.frequency import TokenFrequencies, token_frequencies
from embsvd.io.rows import row_blocks

log = logging.getLogger(__name__)
NORM_BLOCK_ROWS = None  # rows read at a time for the norms: row_blocks' default


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """The tokens of one token matrix: strings, special ids, marker, norms, frequencies
    and the text people read for each token.

    Build it with ``Checkpoint.vocabulary`` (or ``Vocabulary.from_matrix`` for a matrix
    of your own); the word frequencies are read on first use and kept.

    Attributes:
        token_strings: The token string of every row, ``(d_vocab,)``; ``None`` for rows
            the tokenizer lacks (padding rows of a rounded-up vocabulary).
        token_norms: Euclidean norm of every stored row, ``(d_vocab,)``, before any
            transform of the matrix: the confound the axes are correlated with.
        special_ids: Ids of the special tokens ([CLS], <s>, ...): never reported, drawn,
            ranked or correlated.
        marker: The word-start marker (``Ġ`` byte-level BPE, ``▁`` SentencePiece), or
            ``None`` for vocabularies without word-initial forms (WordPiece).
        cache_dir: Where the frequency table is kept between processes (under
            ``frequency/``); ``None``: computed in memory only.
        decoding: How the checkpoint's tokenizer decodes a token
            (``embsvd.io.display.token_decoding``); ``None``: guessed from ``marker`` and
            the strings (``embsvd.io.display.guess_decoding``).
    """

    token_strings: tuple[str | None, ...]
    token_norms: np.ndarray
    special_ids: frozenset[int] = frozenset()
    marker: str | None = None
    cache_dir: Path | None = None
    decoding: TokenDecoding | None = None

    def __post_init__(self) -> None:
        # frozen: normalise the containers once, so that every reader gets the same types
        object.__setattr__(self, "token_strings", tuple(self.token_strings))
        object.__setattr__(self, "special_ids", frozenset(int(i) for i in self.special_ids))
        if len(self.token_norms) != len(self.token_strings):
            raise ValueError(
                f"token_norms: {len(self.token_norms)} norms for {len(self.token_strings)} "
                "token strings; give one per row of the matrix"
            )
        outside = sorted(i for i in self.special_ids if not 0 <= i < len(self.token_strings))
        if outside:
            raise ValueError(
                f"special_ids: {outside} are not rows of a {len(self.token_strings)}-token "
                "vocabulary"
            )

    @classmethod
    def from_matrix(
        cls,
        W: Any,
        token_strings: Sequence[str | None],
        special_ids: Collection[int] = (),
        *,
        marker: str | None = None,
        cache_dir: Path | None = None,
        decoding: TokenDecoding | None = None,
        norms_file: Path | None = None,
    ) -> Vocabulary:
        """The vocabulary of a stored matrix ``W`` (``(d_vocab, d_model)``), its norms
        computed here, or read from ``norms_file`` (``cached_row_norms``) when given.

        Raises:
            ValueError: ``token_strings`` does not have one string per row of ``W``.
        """
        if len(token_strings) != W.shape[0]:
            raise ValueError(
                f"token_strings: {len(token_strings)} strings for {W.shape[0]} rows of W"
            )
        norms = row_norms(W) if norms_file is None else cached_row_norms(W, norms_file)
        return cls(tuple(token_strings), norms, frozenset(special_ids), marker, cache_dir, decoding)

    @property
    def d_vocab(self) -> int:
        return len(self.token_strings)

    @cached_property
    def frequencies(self) -> TokenFrequencies:
        """The word frequency of every token (what a matched null matches on); computed
        on first use (a second or so for a large vocabulary), then kept here and in
        ``cache_dir``."""
        return token_frequencies(self.token_strings, self.marker, self.special_ids, self.cache_dir)

    @cached_property
    def unnamed_ids(self) -> frozenset[int]:
        """The rows without a token string (no token of the tokenizer); computed once."""
        return frozenset(i for i, token in enumerate(self.token_strings) if token is None)

    @cached_property
    def reportable_ids(self) -> np.ndarray:
        """The rows a projection's top tokens may name, ascending: those with a token
        string, less the special tokens; computed once (read-only)."""
        eligible = np.ones(self.d_vocab, dtype=bool)
        eligible[list(self.unnamed_ids | self.special_ids)] = False
        ids = np.flatnonzero(eligible)
        ids.flags.writeable = False
        return ids

    @cached_property
    def token_decoding(self) -> TokenDecoding:
        """``decoding``, or the one the strings and marker imply; decided once."""
        if self.decoding is not None:
            return self.decoding
        special = [self.token_strings[i] for i in self.special_ids]
        return guess_decoding(self.token_strings, self.marker, [t for t in special if t])

    def display_text(self, token_id: int) -> str:
        """The text people read for row ``token_id`` (``embsvd.io.display.display_text``:
        decoded, a space shown as ``␣``, control characters and stray bytes escaped);
        ``""`` for a row the tokenizer lacks. Microseconds a token: computed when asked."""
        return display_text(self.token_strings[token_id], self.token_decoding)

    @cached_property
    def display_texts(self) -> tuple[str, ...]:
        """:meth:`display_text` of every row, ``(d_vocab,)``, computed once on first use."""
        decoding = self.token_decoding
        return tuple(display_text(token, decoding) for token in self.token_strings)

    def display_texts_to_hand_over(self) -> Sequence[str]:
        """``display_texts`` for another process: these where already computed, else
        computed there, on first use (``embsvd.io.display.DisplayTexts``)."""
        if "display_texts" in self.__dict__:
            return self.display_texts
        return DisplayTexts(self.token_strings, self.token_decoding)


def row_norms(W: Any) -> np.ndarray:
    """``np.linalg.norm(W, axis=1)``, ``(d_vocab,)``, in blocks of rows
    (``embsvd.io.rows.row_blocks``): a large memory-mapped matrix is read once, without a
    squared copy of the whole of it, and a bfloat16 one is widened a block at a time."""
    norms = np.empty(len(W), dtype=np.result_type(W.dtype, np.float32))
    for rows, block in row_blocks(W, NORM_BLOCK_ROWS):
        norms[rows] = np.linalg.norm(block.astype(norms.dtype, copy=False), axis=1)
    return norms


def cached_row_norms(W: Any, cache_file: Path) -> np.ndarray:
    """``row_norms(W)``, kept in ``cache_file`` (``.npy``) between processes: a pass over a
    large matrix costs a second or so. The file name must name the matrix (its file's
    hash and tensor); an entry that is damaged (``embsvd.io.cache.intact``), unreadable or
    of another length is computed again and replaced atomically."""
    if intact(cache_file):
        try:
            norms = np.load(cache_file, allow_pickle=False)
        except (OSError, ValueError) as error:
            log.warning("%s is unreadable (%r): computing the norms again", cache_file, error)
        else:
            if norms.shape == (len(W),):
                return norms
    norms = row_norms(W)
    with written_with_checksum(cache_file) as stream:
        np.save(stream, norms)
    return norms
