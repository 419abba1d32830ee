"""Held-out validation: do words the axes were not learned from land where they should?

A group's region is its affine subspace: the offset (the group's mean when centered,
the origin when raw) plus the span of its first ``n_components`` right singular
vectors. For a held-out word two ranks are reported, both as the percent of vocabulary
tokens ranked ahead of it (0 = first):

- its rank by distance to the subspace: does the word belong to the group's region;
- its rank by ``|projection|`` on each axis: is it at an extreme of that axis.

Middle members of an ordered group (the digit 5 on a small-to-large axis) are close to
the subspace but not extreme on the axis, so the two are kept apart.

Words are held out two ways: leave-one-out (each kept word, the subspace learned from
the others) and, for groups with more single-token candidates than ``size``, the
remainder (every candidate not kept, the subspace learned from the kept words). The
tokens a subspace was learned from, and special tokens, are never ranked.
``precision_at_k`` is the share of the group's held-out remainder among the ``k``
tokens closest to the kept words' subspace, with ``k`` at most the remainder's size.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from embsvd.groups import KeptToken, TokenGroup
from embsvd.method.analysis import decompose


@dataclass(frozen=True)
class HeldOutWord:
    """Where one held-out word lands among the vocabulary."""

    word: str
    token: str
    token_id: int
    variant: str  # "leave_one_out" or "remainder"
    distance: float  # to the subspace
    subspace_rank_pct: float  # percent of ranked tokens closer to the subspace
    axis_rank_pct: tuple[float, ...]  # per axis: percent with a larger |projection|


@dataclass(frozen=True)
class HeldOutValidation:
    """Held-out ranks of one group.

    Attributes:
        words: Every held-out word, leave-one-out first.
        n_components: Axes spanning the subspace.
        precision_k: The ``k`` of ``precision_at_k`` (``None`` without a remainder).
        precision_at_k: Share of the remainder among the ``k`` tokens closest to the
            subspace of the kept words (``None`` without a remainder).
        pool_rank_pct_median: For scale: the median subspace rank of the candidate pool's
            tokens (``None`` without a pool).
    """

    words: tuple[HeldOutWord, ...]
    n_components: int
    precision_k: int | None
    precision_at_k: float | None
    pool_rank_pct_median: float | None

    def of(self, variant: str) -> list[HeldOutWord]:
        return [w for w in self.words if w.variant == variant]

    def subspace_rank_pct_median(self, variant: str) -> float | None:
        words = self.of(variant)
        return float(np.median([w.subspace_rank_pct for w in words])) if words else None

    def axis_rank_pct_median(self, variant: str) -> np.ndarray | None:
        """``(n_components,)`` medians over the variant's words."""
        words = self.of(variant)
        return np.median([w.axis_rank_pct for w in words], axis=0) if words else None


class Subspace:
    """An affine subspace and every vocabulary row's distance to it and projections on it."""

    def __init__(
        self, W: np.ndarray, row_norms_sq: np.ndarray, offset: np.ndarray, axes: np.ndarray
    ):
        # one (d_vocab, d_model) @ (d_model, 1 + c) product per subspace
        products = W @ np.vstack([offset, axes]).T
        self.projections = products[:, 1:] - offset @ axes.T  # (d_vocab, c)
        offset_sq = row_norms_sq - 2 * products[:, 0] + offset @ offset
        residual = offset_sq - (self.projections**2).sum(axis=1)
        self.distances = np.sqrt(np.clip(residual, 0.0, None))  # (d_vocab,)


def percent_ahead(scores: np.ndarray, ranked: np.ndarray, token_id: int) -> float:
    """Percent of the ``ranked`` ids whose score is strictly smaller than ``token_id``'s."""
    return float(100.0 * np.count_nonzero(scores[ranked] < scores[token_id]) / len(ranked))


def validate_held_out(
    W: np.ndarray,
    group: TokenGroup,
    *,
    center: bool,
    n_components: int,
    excluded_ids: Collection[int],
    precision_k: int,
    pool_ids: Sequence[int] | None = None,
) -> HeldOutValidation:
    """Leave-one-out and remainder ranks of a group's words (see the module docstring).

    Args:
        W: The matrix the analysis ran on, ``(d_vocab, d_model)``.
        group: The group, with its kept and held-out tokens.
        center: Whether the subspace passes through the group's mean (else the origin).
        n_components: Axes spanning the subspace (fewer when ``n - 1`` rows have fewer).
        excluded_ids: Never ranked (special tokens, rows without a token).
        precision_k: The ``k`` of precision@k, capped at the remainder's size.
        pool_ids: The group's candidate pool, for the reference median.
    """
    W = np.asarray(W, dtype=np.float64)
    row_norms_sq = np.einsum("ij,ij->i", W, W)
    eligible = np.ones(len(W), dtype=bool)
    eligible[list(excluded_ids)] = False
    kept_ids = np.array(group.token_ids)
    c = min(n_components, len(kept_ids) - 1 - int(center))
    words = []
    for i, token in enumerate(group.kept):
        training = np.delete(kept_ids, i)
        subspace = _fit(W, row_norms_sq, training, center, c)
        words.append(_place(token, "leave_one_out", subspace, _ranked(eligible, training)))
    full = _fit(W, row_norms_sq, kept_ids, center, c)
    ranked = _ranked(eligible, kept_ids)
    words += [_place(token, "remainder", full, ranked) for token in group.held_out]
    k = precision = None
    if group.held_out:
        k = min(precision_k, len(group.held_out))
        closest = ranked[np.argsort(full.distances[ranked], kind="stable")[:k]]
        remainder = {token.token_id for token in group.held_out}
        precision = sum(int(i) in remainder for i in closest) / k
    pool_median = None
    if pool_ids is not None and len(pool_ids):
        pool = np.setdiff1d(np.asarray(pool_ids), kept_ids)
        sorted_ranked = np.sort(full.distances[ranked])
        ahead = np.searchsorted(sorted_ranked, full.distances[pool], side="left")
        pool_median = float(np.median(100.0 * ahead / len(ranked)))
    return HeldOutValidation(tuple(words), c, k, precision, pool_median)


def _fit(
    W: np.ndarray, row_norms_sq: np.ndarray, ids: np.ndarray, center: bool, c: int
) -> Subspace:
    svd = decompose(W[ids], center)
    return Subspace(W, row_norms_sq, svd.offset, svd.Vt[:c])


def _ranked(eligible: np.ndarray, training: np.ndarray) -> np.ndarray:
    mask = eligible.copy()
    mask[training] = False
    return np.flatnonzero(mask)


def _place(token: KeptToken, variant: str, subspace: Subspace, ranked: np.ndarray) -> HeldOutWord:
    extremeness = -np.abs(subspace.projections)  # larger |projection| ranks ahead
    return HeldOutWord(
        word=token.word,
        token=token.token,
        token_id=token.token_id,
        variant=variant,
        distance=float(subspace.distances[token.token_id]),
        subspace_rank_pct=percent_ahead(subspace.distances, ranked, token.token_id),
        axis_rank_pct=tuple(
            percent_ahead(extremeness[:, k], ranked, token.token_id)
            for k in range(extremeness.shape[1])
        ),
    )
