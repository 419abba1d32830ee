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

"Ahead" is strict: a token whose score equals the word's is not counted, and neither is
a token whose row *is* the word's row (the word itself, ranked among the remainder, or a
duplicate embedding), even where rounding puts its score a hair ahead.

Cost: every fit (one per kept word, and the kept words' own) is scored in one pass over
the vocabulary, a block of rows at a time; no copy of the matrix is made, whatever its
stored dtype. Every fit's offset and axes lie in the span of the kept words' rows (a fit
uses some of them; a centered offset is their mean), so a block is read once onto an
orthonormal basis of that span, at most ``n`` columns, and every fit's products come from
those coordinates: ``n`` columns of ``d_model``-long products instead of ``(n + 1)(1 + c)``.
A group of at least ``d_model`` words spans the whole space; its blocks are multiplied by
the offsets and axes themselves. Each block counts the tokens ahead of the left-out words
(one word per fit); the remainder, every word of it under the kept words' fit, is placed
after the pass by sorting that fit's scores once each, whatever its size.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embsvd.groups import TokenGroup
from embsvd.io.rows import BLOCK_ROWS, release_rows, row_blocks
from embsvd.method.analysis import (
    EPSILON,
    SPAN_EPSILONS,
    GroupSVD,
    VocabularySpan,
    decompose,
    span_basis,
)


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


# float64 bytes of one block's rows (as read and widened) and its scores under every fit:
# 8 MiB is ~160 rows at d_model = 4096 with 11 fits. Measured on 2026-11-30 (one group of
# 10 words and 14 held out): 30522 x 384 float32 in 35-42 ms against 44-56 ms with 32 MiB,
# 128256 x 4096 bfloat16 in 1.2 s against 1.3 s with 32 MiB and 1.5 s with 2 MiB
BLOCK_BYTES = 1 << 23
# The basis the vocabulary is read onto may leave out of any fit's offset or axis at most
# SPAN_EPSILONS float64 epsilons per dimension of their stack (``max(d_model, width)``),
# of its length: the worst-case rounding of one d_model-long product. Directions of the
# kept rows (or of the stack) whose singular value is below that share of the largest
# are dropped (numpy's matrix_rank rule): duplicate or zero kept rows leave such null
# directions, at rounding level.
# The held-out words' own scores come from their rows (a product with each fit's offset
# and axes), the vocabulary's from the blocks (read onto the span's basis first): the same
# numbers by different arithmetic, so a copy of a word's row can land a rounding error
# ahead of it. A row ahead by less than this fraction of (|row| + |offset|) is
# compared with the word's row: an identical row ties (never ranks ahead), as it did when
# every score came from one product; any other keeps the strict comparison.
TIE_BAND = 1e-6


def validate_held_out(
    W: np.ndarray,
    group: TokenGroup,
    *,
    center: bool,
    n_components: int,
    excluded_ids: Collection[int],
    precision_k: int,
    pool_ids: Sequence[int] | None = None,
    block_rows: int | None = None,
    span: VocabularySpan | None = None,
) -> HeldOutValidation:
    """Leave-one-out and remainder ranks of a group's words (see the module docstring).

    Every fit (one per left-out word, and the kept words' own) is scored in one pass over
    the vocabulary: ``W`` is read a block of rows at a time, widened to float64 per block
    (never a float32 or float64 copy of all of ``W``), and multiplied by an orthonormal
    basis of the span of every fit's offset and axes (at most ``n`` columns); each fit's
    products come from those coordinates by small matrices (``_StackedFits``). The
    held-out words' own scores come first, from their rows; each block then counts, per
    word, the ranked tokens strictly ahead of it. Memory beyond a block is ``O(d_vocab)``:
    the kept words' fit's distances (for precision@k and the pool median) and the masks of
    ranked tokens.

    Args:
        W: The matrix the analysis ran on, ``(d_vocab, d_model)``: an array, a memmap or
            an ``embsvd.io.rows.BFloat16Rows``.
        group: The group, with its kept and held-out tokens.
        center: Whether the subspace passes through the group's mean (else the origin).
        n_components: Axes spanning the subspace (fewer when ``n - 1`` rows have fewer).
        excluded_ids: Never ranked (special tokens, rows without a token).
        precision_k: The ``k`` of precision@k, capped at the remainder's size.
        pool_ids: The group's candidate pool, for the reference median.
        block_rows: Rows of ``W`` read at a time; ``None``: as many as ``BLOCK_BYTES``
            of float64 allow (at most ``embsvd.io.rows.BLOCK_ROWS``).
        span: The vocabulary already read onto the kept words' span
            (``AnalysisResult.vocabulary_span``, from the projection's pass over this
            ``W``): where its basis holds every fit, the vocabulary is scored from its
            coordinates and ``W`` is not read again (but for the rows a tie compares).
    """
    d_vocab = len(W)
    if span is not None and span.coordinates.shape[0] != d_vocab:
        raise ValueError(
            f"span: coordinates of {span.coordinates.shape[0]} rows for a matrix of "
            f"{d_vocab}; pass the span of this matrix's analysis, or none"
        )
    kept_ids = np.array(group.token_ids, dtype=np.intp)
    n = len(kept_ids)
    c = min(n_components, n - 1 - int(center))
    M = np.asarray(W[kept_ids], dtype=np.float64)
    fits = [decompose(np.delete(M, i, axis=0), center) for i in range(n)]
    fits.append(decompose(M, center))
    stacked = _StackedFits(fits, c, None if span is None else span.basis)
    # the vocabulary's products with the basis, already made: no pass over W
    read = span is None or stacked.reader is not span.basis
    words = [(token, "leave_one_out", i) for i, token in enumerate(group.kept)]
    words += [(token, "remainder", n) for token in group.held_out]
    word_ids = np.array([token.token_id for token, _, _ in words], dtype=np.intp)
    word_fits = np.array([fit for _, _, fit in words], dtype=np.intp)
    own_rows = np.asarray(W[word_ids])  # as stored: an identical row is a tie
    own_distances, own_sizes, bands = stacked.own_scores(own_rows, word_fits)

    eligible = np.ones(d_vocab, dtype=bool)
    eligible[list(excluded_ids)] = False
    rankable = eligible.copy()  # ranked by every fit: no fit was learned from these
    # a multi-token member's mean row (a virtual id, past d_vocab) is ranked among the
    # vocabulary's rows but is none of them
    real_ids = kept_ids[kept_ids < d_vocab]
    rankable[real_ids] = False
    # the kept words' fit (fit n), for every row: its distances give precision@k and the
    # pool median, and with its |projections| they rank the remainder after the pass
    full_distances = np.empty(d_vocab)
    full_sizes = np.empty((d_vocab, c)) if group.held_out else None
    # ranked tokens ahead of each left-out word (word i, fit i), counted block by block
    closer = np.zeros(n, dtype=np.int64)
    larger = np.zeros((n, c), dtype=np.int64)
    if block_rows is None:  # a block's rows (read and widened) and scores: BLOCK_BYTES
        width = stacked.read_width + 3 * stacked.width + 2 * n * (1 + c)
        width += W.shape[1] * 3 // 2 if read else 0
        block_rows = max(1, min(BLOCK_ROWS, BLOCK_BYTES // (8 * width)))
    if read:
        widened = np.empty((min(block_rows, d_vocab), W.shape[1]))  # reused: no fresh pages
        blocks = row_blocks(W, block_rows)
    else:
        starts = range(0, d_vocab, block_rows)
        blocks = ((slice(i, min(i + block_rows, d_vocab)), None) for i in starts)
    for rows, block in blocks:
        if block is None:
            distances, projections = stacked.scores_of(span.coordinates[rows], span.norms_sq[rows])
        elif block.dtype == np.float64:
            distances, projections = stacked.scores(block)
        else:
            rows64 = widened[: len(block)]
            np.copyto(rows64, block)
            distances, projections = stacked.scores(rows64)
        full_distances[rows] = distances[:, n]
        if full_sizes is not None:
            np.abs(projections[:, :, n], out=full_sizes[rows])
        ranked_here = rankable[rows, None]
        # a gap > 0 ranks the row ahead of the word (x - y > 0 exactly when x > y)
        distance_gap = own_distances[:n] - distances[:, :n]  # (b, n)
        size_gap = np.abs(projections[:, :, :n])  # (b, c, n)
        size_gap -= own_sizes[:n].T
        del distances, projections
        is_closer = (distance_gap > 0) & ranked_here
        is_larger = (size_gap > 0) & ranked_here[:, None]
        # rounding can put a copy of a word's row (its own, or a duplicate) just ahead of
        # it: a row within the band of a word is compared with the word's row itself
        near = (is_closer & (distance_gap <= bands[:n])) | (
            is_larger & (size_gap <= bands[:n])
        ).any(axis=1)
        rows_near, words_near = np.nonzero(near)
        if block is None:  # read the few rows compared (as stored, widened as own_rows)
            near_rows = own_rows[:0]
            if len(rows_near):
                near_rows = np.asarray(W[rows_near + rows.start])
                # a mapped file's read maps a large folio (up to 2 MiB) per row: let go
                release_rows(W, rows)
        else:
            near_rows = block[rows_near]
        same = (near_rows == own_rows[words_near]).all(axis=1)
        is_closer[rows_near[same], words_near[same]] = False
        is_larger[rows_near[same], :, words_near[same]] = False
        closer += np.count_nonzero(is_closer, axis=0)
        larger += np.count_nonzero(is_larger, axis=0).T
    ranked = np.flatnonzero(rankable)
    by_distance = np.argsort(full_distances[ranked], kind="stable")  # closest first
    ahead = np.column_stack([closer, larger])  # (n, 1 + c)
    if group.held_out:  # the remainder, all under fit n: ranked by sorting its scores
        remainder = slice(n, None)
        ahead = np.vstack(
            [
                ahead,
                _ahead_by_sorting(
                    W,
                    ranked,
                    full_distances[ranked],
                    by_distance,
                    full_sizes[ranked],
                    own_rows[remainder],
                    own_distances[remainder],
                    own_sizes[remainder],
                    bands[remainder],
                ),
            ]
        )

    n_eligible = int(eligible.sum())
    placed = []
    for w, (token, variant, fit) in enumerate(words):
        training = kept_ids if fit == n else np.delete(kept_ids, fit)
        training = training[training < d_vocab]
        n_ranked = n_eligible - int(eligible[np.unique(training)].sum())
        percent = [float(100.0 * int(count) / n_ranked) for count in ahead[w]]
        placed.append(
            HeldOutWord(
                word=token.word,
                token=token.token,
                token_id=token.token_id,
                variant=variant,
                distance=float(own_distances[w]),
                subspace_rank_pct=percent[0],
                axis_rank_pct=tuple(percent[1:]),
            )
        )
    k = precision = None
    if group.held_out:
        k = min(precision_k, len(group.held_out))
        closest = ranked[by_distance[:k]]
        remainder_ids = {token.token_id for token in group.held_out}
        precision = sum(int(i) in remainder_ids for i in closest) / k
    pool_median = None
    if pool_ids is not None and len(pool_ids):
        pool = np.setdiff1d(np.asarray(pool_ids), kept_ids)
        sorted_ranked = full_distances[ranked][by_distance]
        ahead_of_pool = np.searchsorted(sorted_ranked, full_distances[pool], side="left")
        pool_median = float(np.median(100.0 * ahead_of_pool / len(ranked)))
    return HeldOutValidation(tuple(placed), c, k, precision, pool_median)


def _ahead_by_sorting(
    W: Any,
    ranked: np.ndarray,
    distances: np.ndarray,
    by_distance: np.ndarray,
    sizes: np.ndarray,
    own_rows: np.ndarray,
    own_distances: np.ndarray,
    own_sizes: np.ndarray,
    bands: np.ndarray,
) -> np.ndarray:
    """Ranked tokens ahead of each of ``m`` words held out from one fit, ``(m, 1 + c)``:
    closer to the subspace (a smaller distance) and, per axis, larger (a larger
    ``|projection|``), strictly. ``distances`` ``(r,)`` and ``sizes`` ``(r, c)`` are the
    fit's scores of the ranked tokens ``ranked``; ``by_distance`` sorts ``distances``.

    Each score is sorted once and every word placed in it by bisection, instead of every
    token compared with every word. The band rule is the pass's: the tokens ahead of a
    word by at most its band in any score are compared with its row, and a token with the
    same row leaves every count it was in. A token within the band lies inside a range of
    the sorted scores twice the band wide (rounding one subtraction moves a gap by far
    less than the band), and the band is then checked on the gap itself."""
    m, c = own_sizes.shape
    ahead = np.empty((m, 1 + c), dtype=np.int64)
    near: list[set[int]] = [set() for _ in range(m)]  # positions in ``ranked``
    for j in range(1 + c):
        values = distances if j == 0 else sizes[:, j - 1]
        order = by_distance if j == 0 else np.argsort(values, kind="stable")
        sorted_values = values[order]
        own = own_distances if j == 0 else own_sizes[:, j - 1]
        if j == 0:  # ahead: a distance below the word's
            end = np.searchsorted(sorted_values, own, side="left")
            start = np.searchsorted(sorted_values, own - 2 * bands, side="left")
            ahead[:, j] = end
        else:  # ahead: a |projection| above the word's
            start = np.searchsorted(sorted_values, own, side="right")
            end = np.searchsorted(sorted_values, own + 2 * bands, side="right")
            ahead[:, j] = len(values) - start
        for w in range(m):
            span = sorted_values[start[w] : end[w]]
            gaps = own[w] - span if j == 0 else span - own[w]
            near[w].update(order[start[w] : end[w]][gaps <= bands[w]].tolist())
    for w in range(m):
        if not near[w]:
            continue
        positions = np.array(sorted(near[w]), dtype=np.intp)
        same = positions[(np.asarray(W[ranked[positions]]) == own_rows[w]).all(axis=1)]
        ahead[w, 0] -= np.count_nonzero(distances[same] < own_distances[w])
        ahead[w, 1:] -= np.count_nonzero(sizes[same] > own_sizes[w], axis=0)
    return ahead


class _StackedFits:
    """Affine subspaces (offset + ``c`` axes each), scored together.

    Every fit's distances and projections come from the products of a row ``w`` with the
    fit's offset and axes, by the expansion ``|w - o|^2 - |V (w - o)|^2`` with ``V (w - o)
    = V w - V o``. The products with the ``(d_model, (1 + c) n_fits)`` stack ``A`` of
    every offset and axis (term by term: every fit's offset, then every fit's first axis,
    ...) are read through an orthonormal basis ``Q`` of its columns'
    span: ``w @ A = (w @ Q) @ (Q.T @ A)``, exact in exact arithmetic since ``A = Q Q.T A``,
    and ``Q`` has at most ``n`` columns (the kept rows' span; more only where a fit's axes
    leave it, see ``_span_basis``) against ``A``'s ``(n + 1)(1 + c)``. Where that would not
    save arithmetic (a group of at least ``d_model`` words spans the whole space) a block
    is multiplied by ``A`` itself.

    ``fits[-1]`` is the fit of every kept row: the others' rows are subsets of its own.
    """

    def __init__(self, fits: list[GroupSVD], c: int, span: np.ndarray | None = None):
        self.c = c
        self.n_fits = len(fits)
        self.width = self.n_fits * (1 + c)
        # (d_model, 1 + c, n_fits): [:, 0] the offsets, [:, 1 + a] every fit's axis a
        by_term = np.stack([np.vstack([f.offset, f.Vt[:c]]).T for f in fits], axis=2)
        self.A = np.ascontiguousarray(by_term.reshape(len(by_term), self.width))
        self.offset_on_axes = np.array([f.offset @ f.Vt[:c].T for f in fits]).reshape(len(fits), c)
        self.offset_sq = np.array([f.offset @ f.offset for f in fits])
        basis = _span_basis(self.A, fits[-1], span)
        # a block's rows are multiplied by ``reader``; ``coefficients`` (when not None)
        # turns those coordinates into the products with ``A``
        self.reader = self.A if basis is None else basis
        self.coefficients = None if basis is None else basis.T @ self.A
        self.read_width = self.reader.shape[1]

    def scores(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances ``(b, n_fits)`` and projections ``(b, c, n_fits)`` of float64 rows."""
        return self.scores_of(rows @ self.reader, np.einsum("ij,ij->i", rows, rows))

    def scores_of(
        self, coordinates: np.ndarray, norms_sq: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``scores`` of rows given by their products with ``reader`` ``(b, read_width)``
        and their squared norms ``(b,)``."""
        products = coordinates
        if self.coefficients is not None:
            products = products @ self.coefficients
        products = products.reshape(len(coordinates), 1 + self.c, self.n_fits)
        return _expansion(products, norms_sq[:, None], self.offset_on_axes.T, self.offset_sq)

    def own_scores(
        self, rows: np.ndarray, fits: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row ``i`` under fit ``fits[i]`` alone: its distance ``(m,)``, its ``|projection|``
        on each axis ``(m, c)`` and the band ``(m,)`` within which another row's score is
        checked for coming from the same row."""
        rows64 = rows.astype(np.float64)
        by_fit = self.A.reshape(len(self.A), 1 + self.c, self.n_fits)
        products = np.empty((len(rows), 1 + self.c))
        for fit in np.unique(fits):  # one product per fit: no gathered copy of the stack
            mine = fits == fit
            products[mine] = rows64[mine] @ by_fit[:, :, fit]
        norms_sq = np.einsum("ij,ij->i", rows64, rows64)
        distances, projections = _expansion(
            products[:, :, None],
            norms_sq[:, None],
            self.offset_on_axes[fits][:, :, None],
            self.offset_sq[fits][:, None],
        )
        bands = TIE_BAND * (np.sqrt(norms_sq) + np.sqrt(self.offset_sq[fits]))
        return distances[:, 0], np.abs(projections[:, :, 0]), bands


def _span_basis(
    A: np.ndarray, full: GroupSVD, given: np.ndarray | None = None
) -> np.ndarray | None:
    """An orthonormal basis ``(d_model, r)`` of the span of ``A``'s columns (every fit's
    offset and axes), or ``None`` where reading a block onto it costs at least as much as
    multiplying by ``A`` (``r (d_model + width) >= d_model width``).

    The basis is ``given`` (a ``VocabularySpan``'s, whose coordinates the vocabulary
    already has) where it holds every column and saves arithmetic; else the kept rows'
    span, from the fit of all of them (``full``): its right singular vectors, and the mean
    when centered (``span_basis``); no further factorization. It is checked: every column
    of ``A`` scaled to unit length must lie in it to ``SPAN_EPSILONS``. A fit can ask for
    more axes than its rows have (a leave-one-out fit of ``a, a, 0, e`` has rank 2), and
    the SVD completes those with directions outside the rows' span: then the basis is the
    stack's own, from its SVD.
    """
    d_model, width = A.shape
    tolerance = SPAN_EPSILONS * max(A.shape) * EPSILON
    lengths = np.linalg.norm(A, axis=0)
    unit = A / np.where(lengths > 0, lengths, 1.0)  # a zero offset (raw fits) stays zero

    def holds(basis: np.ndarray) -> bool:
        outside = unit - basis @ (basis.T @ unit)
        return np.einsum("ij,ij->j", outside, outside).max(initial=0.0) <= tolerance**2

    if given is not None and _saves(given.shape[1], d_model, width) and holds(given):
        return given
    basis = span_basis(full, tolerance=tolerance)
    if not _saves(basis.shape[1], d_model, width):
        return None
    if not holds(basis):
        U, singular, _ = np.linalg.svd(unit, full_matrices=False)
        basis = U[:, singular > singular[:1].max(initial=0.0) * tolerance]
        if not _saves(basis.shape[1], d_model, width):
            return None
    return np.ascontiguousarray(basis)


def _saves(r: int, d_model: int, width: int) -> bool:
    """Whether a product with an ``r``-wide basis and then ``(r, width)`` coefficients
    costs less than one with the ``width`` columns themselves."""
    return r * (d_model + width) < d_model * width


def _expansion(
    products: np.ndarray, norms_sq: np.ndarray, offset_on_axes: np.ndarray, offset_sq: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``(b, n_fits)`` and projections ``(b, c, n_fits)`` from ``w . [o, V]``
    (``products``, ``(b, 1 + c, n_fits)``), ``|w|^2`` ``(b, 1)`` and the offsets' own terms
    (``offset_on_axes`` ``(c, n_fits)``, ``offset_sq`` ``(n_fits,)``), term for term as one
    fit at a time did it: the squared projections are added axis by axis, in order."""
    projections = products[:, 1:] - offset_on_axes
    residual = norms_sq - 2 * products[:, 0] + offset_sq
    on_axes = np.zeros(residual.shape)
    for axis in range(projections.shape[1]):
        on_axes += np.square(projections[:, axis])
    residual -= on_axes
    np.clip(residual, 0.0, None, out=residual)
    return np.sqrt(residual, out=residual), projections
