"""Confounds: does an axis merely track a token property that is not its meaning?

The vocabulary's projections on each axis are correlated (Spearman) with three
properties of the tokens: the norm of their embedding as the checkpoint stores it
(before any geometry transform; norm tracks frequency in many models), their id (a
proxy for merge order, hence frequency, in BPE and WordPiece vocabularies) and the
length of their surface string (without the word-start marker or ``##``). An axis whose
``|rho|`` reaches the threshold is flagged.

The properties' ranks belong to the vocabulary: ``property_ranks`` computes them once per
vocabulary in a process, and a run ranks only its axes (one sort each).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embsvd.io.memo import ValueMemo, read_only, value_digest

PROPERTIES = ("norm", "token_id", "length")
CONTINUATION = "##"  # WordPiece's mark of a word-internal token


@dataclass(frozen=True)
class Confounds:
    """Spearman correlations of each axis' projections with token properties.

    Attributes:
        spearman: ``{property: (n_components,)}`` for the properties in ``PROPERTIES``.
        threshold: ``|rho|`` at or above which an axis is flagged.
        n_tokens: Tokens the correlations were computed over.
    """

    spearman: dict[str, np.ndarray]
    threshold: float
    n_tokens: int

    def flagged(self) -> list[tuple[int, str, float]]:
        """``(component, property, rho)`` for every correlation at or above the threshold."""
        return [
            (k, name, float(rho[k]))
            for name, rho in self.spearman.items()
            for k in range(len(rho))
            if abs(rho[k]) >= self.threshold
        ]


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank (as ``scipy.stats.rankdata``; ``nan``
    values, sorted last, share one rank as ``np.unique`` groups them). One sort."""
    values = np.asarray(values)
    if values.size == 0:
        return np.empty(0)
    order = np.argsort(values)  # any order of equal values: they share one rank
    ordered = values[order]
    starts = np.ones(len(ordered), dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    if ordered.dtype.kind in "fc" and np.isnan(ordered[-1]):
        starts[np.searchsorted(ordered, np.nan, side="left") + 1 :] = False
    upper = np.append(np.flatnonzero(starts)[1:], len(ordered))
    counts = np.diff(upper, prepend=0)
    ranks = np.empty(len(ordered))
    ranks[order] = np.repeat((upper - counts + 1 + upper) / 2.0, counts)
    return ranks


def spearman(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Spearman's rho of ``x`` (``(n,)``) with each column of ``Y`` (``(n, c)``): ``(c,)``.
    ``nan`` where either side is constant."""
    return _rho(_centered_ranks(np.asarray(x)), _centered_ranks_of_columns(np.asarray(Y)))


def _centered_ranks(values: np.ndarray) -> np.ndarray:
    return rankdata(values) - (len(values) + 1) / 2.0


def _centered_ranks_of_columns(Y: np.ndarray) -> np.ndarray:
    return np.column_stack([_ranks(column) for column in Y.T]) - (len(Y) + 1) / 2.0


def _ranks(column: np.ndarray) -> np.ndarray:
    """``rankdata(column)``, memoized per process by the column's values: a sweep's runs
    that differ only in ``n_components`` project the vocabulary on the same first axes."""
    return _COLUMN_RANKS.get(value_digest(column), lambda: read_only(rankdata(column)))


COLUMN_RANKS_KEPT = 16  # axes whose ranks a process keeps (0.25 MB each at 30522 tokens)
_COLUMN_RANKS = ValueMemo(COLUMN_RANKS_KEPT)


def _rho(rx: np.ndarray, ry: np.ndarray) -> np.ndarray:
    denominator = np.linalg.norm(rx) * np.linalg.norm(ry, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx @ ry) / denominator


def surface_length(token: str, marker: str | None) -> int:
    """Characters of a token's text: ``Ġthe`` and ``##the`` count 3."""
    if marker is not None and token.startswith(marker):
        return len(token) - len(marker)
    if token.startswith(CONTINUATION) and len(token) > len(CONTINUATION):
        return len(token) - len(CONTINUATION)
    return len(token)


def token_confounds(
    projections: np.ndarray,
    token_norms: np.ndarray,
    token_strings: Sequence[str | None],
    token_ids: np.ndarray,
    marker: str | None,
    threshold: float,
) -> Confounds:
    """Correlate the projections of ``token_ids`` with their norm, id and length.

    The properties' ranks belong to the vocabulary, not to the run: they are computed once
    per vocabulary in a process (``property_ranks``) and only the axes are ranked here.

    Args:
        projections: The vocabulary on the axes, ``(d_vocab, n_components)``.
        token_norms: Norm of every stored embedding row, ``(d_vocab,)``.
        token_strings: Token string of every row.
        token_ids: The tokens to correlate over (named, not special).
        marker: The tokenizer's word-start marker, or ``None``.
        threshold: ``|rho|`` at which an axis is flagged.
    """
    token_ids = np.asarray(token_ids)
    ranks = property_ranks(token_norms, token_strings, token_ids, marker)
    ry = _centered_ranks_of_columns(np.asarray(projections)[token_ids])
    return Confounds(
        spearman={name: _rho(rx, ry) for name, rx in ranks.items()},
        threshold=threshold,
        n_tokens=len(token_ids),
    )


@dataclass(frozen=True, eq=False)
class _PropertyRanks:
    """The centered ranks of ``PROPERTIES`` over ``token_ids``, with what they were
    computed from (copies of the arrays, the strings as a tuple) to match a later call."""

    token_norms: np.ndarray
    token_strings: tuple[str | None, ...]
    token_ids: np.ndarray
    marker: str | None
    ranks: dict[str, np.ndarray]

    def matches(self, token_norms, token_strings, token_ids, marker) -> bool:
        return (
            self.marker == marker
            and np.array_equal(self.token_ids, token_ids)
            and np.array_equal(self.token_norms, token_norms, equal_nan=True)
            and (self.token_strings is token_strings or self.token_strings == tuple(token_strings))
        )


_RANKS_KEPT = 4  # vocabularies whose property ranks a process keeps (a sweep uses one or two)
_property_ranks: list[_PropertyRanks] = []  # most recently used last
_property_ranks_lock = threading.Lock()


def property_ranks(
    token_norms: np.ndarray,
    token_strings: Sequence[str | None],
    token_ids: np.ndarray,
    marker: str | None,
) -> dict[str, np.ndarray]:
    """``{property: centered ranks over token_ids}`` for ``PROPERTIES`` (read-only arrays),
    computed once per vocabulary: a later call with equal norms, strings, ids and marker
    (the same ``Vocabulary``) reuses them, and any other vocabulary computes its own.
    Matching compares contents (the strings by identity first), so a vocabulary's ranks
    are never handed to another, even where Python reuses an object's id."""
    token_ids = np.asarray(token_ids)
    with _property_ranks_lock:
        for i, kept in enumerate(_property_ranks):
            if kept.matches(token_norms, token_strings, token_ids, marker):
                _property_ranks.append(_property_ranks.pop(i))
                return kept.ranks
    strings = tuple(token_strings)
    lengths = np.array([surface_length(strings[i], marker) for i in token_ids], dtype=np.int64)
    properties = {
        "norm": np.asarray(token_norms)[token_ids],
        "token_id": token_ids,
        "length": lengths,
    }
    ranks = {name: _centered_ranks(values) for name, values in properties.items()}
    for rx in ranks.values():
        rx.flags.writeable = False
    entry = _PropertyRanks(np.array(token_norms), strings, token_ids.copy(), marker, ranks)
    with _property_ranks_lock:
        _property_ranks.append(entry)
        del _property_ranks[:-_RANKS_KEPT]
    return ranks
