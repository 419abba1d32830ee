"""Words the tokenizer splits, read as the mean of their subword rows (``subwords: mean``).

A word that is several tokens (BERT's ``czech ##ia``) has no row of its own. With
``groups.<name>.subwords: mean`` it gets a *virtual* row, the mean of its subword rows
in the matrix analysed, under a *virtual id* at or past the vocabulary's end
(``n_vocab, n_vocab + 1, ...``). The rest of the library reads it through the row
protocol of ``embsvd.io.rows`` and never needs to know:

- ``W[ids]`` of :class:`SubwordMeanRows` gives the real row for an id below ``n_vocab``
  and the mean for a virtual one, so a group's rows, its SVD, its null's observed
  statistics and its held-out leave-one-out fits read the mean like any row;
- ``len(W)``, ``W.shape``, ``W[a:b]``, ``row_blocks`` and ``matmul_rows`` cover the real
  vocabulary only, so whole-vocabulary passes (projections, top tokens, pools, held-out
  ranks, confounds, norms) never see a virtual row: it is never drawn into a null, never
  ranked, never among an axis' extremes.

A mean of subword rows is not a token embedding: no input ever looked it up, and its
norm shrinks with the number and spread of its pieces. Every output where one is used
says so (``docs/checkpoints.md``, "Multi-token words").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from embsvd.io.frequency import DIGITS, KINDS, LANGUAGE, LETTERS, WORDLIST, TokenFrequencies
from embsvd.io.rows import StreamedRows

MULTI_TOKEN_MARK = " (mean)"  # how people read a virtual row's word: "Czechia (mean)"


def multi_token_text(word: str) -> str:
    """The text shown for a virtual row: the word, marked (``Czechia (mean)``)."""
    return f"{word}{MULTI_TOKEN_MARK}"


def joined_tokens(tokens: Sequence[str]) -> str:
    """A virtual row's token string: its subword tokens joined by ``+`` (``czech+##ia``)."""
    return "+".join(tokens)


class VirtualIds:
    """The virtual ids of one run, handed out in turn from ``n_vocab`` (the rows of the
    matrix analysed): one per distinct sequence of subword ids, so that a word listed in
    two groups is one row, and the ids are the same whenever the run's groups are."""

    def __init__(self, n_vocab: int):
        self.n_vocab = int(n_vocab)
        self.subword_ids: list[tuple[int, ...]] = []
        self.words: list[str] = []
        self._ids: dict[tuple[int, ...], int] = {}

    def add(self, subword_ids: Sequence[int], word: str) -> int:
        """The virtual id of the mean of ``subword_ids`` (a new one the first time)."""
        key = tuple(int(i) for i in subword_ids)
        if key not in self._ids:
            self._ids[key] = self.n_vocab + len(self.subword_ids)
            self.subword_ids.append(key)
            self.words.append(word)
        return self._ids[key]

    def __len__(self) -> int:
        return len(self.subword_ids)


class SubwordMeanRows(StreamedRows):
    """A ``(n_vocab, d_model)`` matrix ``base`` whose ids ``n_vocab + i`` also read the mean
    of ``base``'s rows ``subword_ids[i]`` (computed once, float64, then cast to the rows'
    dtype). ``len``, ``shape`` and slices are ``base``'s: only an integer index reaches a
    virtual row.

    Args:
        base: The matrix analysed (an array, a memmap or a streamed matrix).
        subword_ids: Per virtual id, in order, the rows it is the mean of.
        words: Per virtual id, the word it stands for (messages, ``text``).
    """

    def __init__(self, base: Any, subword_ids: Sequence[Sequence[int]], words: Sequence[str]):
        if len(subword_ids) != len(words):
            raise ValueError(f"{len(words)} words for {len(subword_ids)} virtual rows")
        self.base = base
        self.subword_ids = tuple(tuple(int(i) for i in ids) for ids in subword_ids)
        self.words = tuple(words)
        n_vocab = len(base)
        outside = [
            ids for ids in self.subword_ids if not ids or not all(0 <= i < n_vocab for i in ids)
        ]
        if outside:
            raise ValueError(
                f"subword_ids: {outside[0]} are not rows of the {n_vocab}-row matrix; each "
                "virtual row is the mean of one or more real rows"
            )
        self.means = np.stack(
            [np.asarray(base[list(ids)], dtype=np.float64).mean(axis=0) for ids in self.subword_ids]
        ).astype(self.dtype)
        self.means.flags.writeable = False

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.base.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.result_type(self.base.dtype, np.float32)

    @property
    def nbytes(self) -> int:
        return getattr(self.base, "nbytes", 0)

    @property
    def n_vocab(self) -> int:
        return len(self.base)

    def is_virtual(self, token_id: int) -> bool:
        return token_id >= self.n_vocab

    def _rows(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            return np.asarray(self.base[key], dtype=self.dtype)
        ids = np.asarray(key)
        if ids.ndim == 0:
            return self._rows(ids[None])[0]
        if ids.dtype == bool:
            raise TypeError(f"{self!r}: index its rows by id or slice, not by a mask")
        virtual = ids >= self.n_vocab
        if not virtual.any():
            return np.asarray(self.base[ids], dtype=self.dtype)
        if (ids >= self.n_vocab + len(self.means)).any() or (ids < 0).any():
            raise IndexError(f"{self!r}: ids {ids[(ids < 0) | virtual].tolist()} out of range")
        out = np.empty((*ids.shape, self.shape[1]), dtype=self.dtype)
        if (~virtual).any():
            out[~virtual] = np.asarray(self.base[ids[~virtual]], dtype=self.dtype)
        out[virtual] = self.means[ids[virtual] - self.n_vocab]
        return out

    def virtual_norms(self) -> np.ndarray:
        """The Euclidean norms of the virtual rows, ``(n_virtual,)``."""
        return np.linalg.norm(self.means.astype(np.float64), axis=1)

    def text(self, token_id: int) -> str:
        """The marked word of a virtual id (``multi_token_text``)."""
        return multi_token_text(self.words[token_id - self.n_vocab])

    def __repr__(self) -> str:
        return f"SubwordMeanRows(shape={self.shape}, virtual={len(self.means)})"


def subword_mean_rows(W: Any, virtual: VirtualIds) -> Any:
    """``W`` with ``virtual``'s rows readable by their ids; ``W`` itself when there are
    none, so that a run without multi-token words reads its matrix as before.

    Raises:
        ValueError: ``virtual`` was numbered from another row count than ``len(W)``.
    """
    if not len(virtual):
        return W
    if virtual.n_vocab != len(W):
        raise ValueError(
            f"virtual ids numbered from {virtual.n_vocab}, but the matrix has {len(W)} rows; "
            "number them from the rows of the matrix analysed (VirtualIds(len(W)))"
        )
    return SubwordMeanRows(W, virtual.subword_ids, virtual.words)


def real_rows(W: Any) -> Any:
    """The matrix of real rows behind ``W`` (``W`` itself unless a ``SubwordMeanRows``):
    what whole-vocabulary statistics are computed and memoized on."""
    return W.base if isinstance(W, SubwordMeanRows) else W


def with_virtual_norms(W: Any, norms: np.ndarray) -> np.ndarray:
    """``norms`` (``(n_vocab,)``, of ``W``'s real rows) followed by the norms of ``W``'s
    virtual rows, so that ``norms[token_id]`` reads any id of ``W``; ``norms`` when it has
    none."""
    if not isinstance(W, SubwordMeanRows):
        return norms
    found = np.concatenate([np.asarray(norms), W.virtual_norms().astype(norms.dtype)])
    found.flags.writeable = False
    return found


def with_virtual_frequencies(W: Any, table: TokenFrequencies | None) -> TokenFrequencies | None:
    """``table`` extended past its ``n_vocab`` tokens by one entry per virtual row of ``W``:
    the word's own Zipf frequency in the same list (wordfreq splits a multi-word phrase
    and combines its parts), kind ``word`` (ASCII letters), ``numeral`` (digits) or
    ``other``. A matched null then matches a multi-token member on its word's frequency,
    as it does a single-token one."""
    if table is None or not isinstance(W, SubwordMeanRows):
        return table
    import wordfreq

    zipf, kind = [], []
    for word in W.words:
        if DIGITS.fullmatch(word):
            kind.append(KINDS.index("numeral"))
        elif LETTERS.fullmatch(word):
            kind.append(KINDS.index("word"))
        else:
            kind.append(KINDS.index("other"))
        zipf.append(wordfreq.zipf_frequency(word, LANGUAGE, WORDLIST))
    return TokenFrequencies(
        np.concatenate([table.zipf, zipf]),
        np.concatenate([table.kind, np.array(kind, dtype=table.kind.dtype)]),
        table.source,
    )
