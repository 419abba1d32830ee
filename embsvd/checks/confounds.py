"""Confounds: does an axis merely track a token property that is not its meaning?

The vocabulary's projections on each axis are correlated (Spearman) with three
properties of the tokens: the norm of their embedding as the checkpoint stores it
(before any geometry transform; norm tracks frequency in many models), their id (a
proxy for merge order, hence frequency, in BPE and WordPiece vocabularies) and the
length of their surface string (without the word-start marker or ``##``). An axis whose
``|rho|`` reaches the threshold is flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
    """Ranks from 1, ties sharing their average rank (as ``scipy.stats.rankdata``)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return ((upper - counts + 1 + upper) / 2.0)[inverse]


def spearman(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Spearman's rho of ``x`` (``(n,)``) with each column of ``Y`` (``(n, c)``): ``(c,)``.
    ``nan`` where either side is constant."""
    rx = rankdata(np.asarray(x)) - (len(x) + 1) / 2.0
    ry = np.column_stack([rankdata(column) for column in np.asarray(Y).T]) - (len(x) + 1) / 2.0
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

    Args:
        projections: The vocabulary on the axes, ``(d_vocab, n_components)``.
        token_norms: Norm of every stored embedding row, ``(d_vocab,)``.
        token_strings: Token string of every row.
        token_ids: The tokens to correlate over (named, not special).
        marker: The tokenizer's word-start marker, or ``None``.
        threshold: ``|rho|`` at which an axis is flagged.
    """
    lengths = np.array([surface_length(token_strings[i], marker) for i in token_ids])
    Y = projections[token_ids]
    properties = {"norm": token_norms[token_ids], "token_id": token_ids, "length": lengths}
    return Confounds(
        spearman={name: spearman(values, Y) for name, values in properties.items()},
        threshold=threshold,
        n_tokens=len(token_ids),
    )
