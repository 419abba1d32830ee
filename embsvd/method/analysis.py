"""The analysis of ../shared/method.md on plain arrays: no Hydra, no MLflow.

All arithmetic is float64. Shapes use TransformerLens names: ``d_vocab`` rows of
``W_E``, ``d_model`` columns; ``n`` is the number of tokens in a group.

``W`` is read through its rows only (``W[ids]``, ``embsvd.io.rows.row_blocks``), so it may
be an array, a memory-map or a streamed matrix (a bfloat16 ``BFloat16Rows``, unit
``UnitRows``) that is never widened whole: a group's rows are gathered, the vocabulary
is projected a block of rows at a time.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embsvd.groups import TokenGroup
from embsvd.io.memo import MatrixMemo, ValueMemo, read_only, value_digest
from embsvd.io.rows import BLOCK_ROWS, matmul_rows, parallel_row_blocks
from embsvd.io.vocabulary import Vocabulary
from embsvd.method import backend
from embsvd.method.svd import svd_flip

log = logging.getLogger(__name__)

# The projection's pass and the span's widen a block of W_E's rows to float64 at a time:
# at most NARROW_BLOCK_BYTES of them, so that a narrow matrix's blocks stay in the core's
# cache while the other core works too (a sweep's writer process), but at least a few
# rows, as wide rows' products want. Measured on 2026-11-30, 30522 x 384 float32 onto 10
# axes: 12 ms in 170-row blocks against 16-18 ms in 682-row (2 MiB) ones, and against
# 33-40 ms with the other core busy; the span pass (11 columns and the norms) 17 ms
# against 23 ms, and against 47-50 ms with the other core busy.
NARROW_BLOCK_BYTES = 1 << 19
# the projection's fewest: 128256 x 4096 bfloat16 onto 3 axes took 0.5 s in 64-row
# blocks, 1.3 s in 512-row ones (whose products OpenBLAS spreads over threads)
PROJECT_MIN_ROWS = 64
# the span pass's fewest: at d_model = 4096 (128256 x 4096 bfloat16, 11 columns and the
# norms) 0.87 s in 128-row blocks against 1.03-1.2 s in 64-row ones
SPAN_MIN_ROWS = 128


def widened_block_rows(W_E: Any, min_rows: int) -> int:
    """Rows of ``W_E`` a pass widens to float64 at a time: ``NARROW_BLOCK_BYTES`` of them,
    at least ``min_rows``, at most ``BLOCK_ROWS``."""
    return min(BLOCK_ROWS, max(min_rows, NARROW_BLOCK_BYTES // (8 * W_E.shape[1])))


@dataclass(frozen=True)
class GroupSVD:
    """SVD of one group's submatrix, ``M - mean = U diag(S) Vt`` (``mean = 0`` when raw).

    Attributes:
        mean: The group's mean vector, shape ``(d_model,)``, whether or not it was subtracted.
        center: Whether ``mean`` was subtracted before the SVD.
        U: Left singular vectors, shape ``(n, k)`` with ``k = min(n, d_model)``.
        singular_values: Shape ``(k,)``, descending.
        Vt: Right singular vectors as rows, shape ``(k, d_model)``.
    """

    mean: np.ndarray
    center: bool
    U: np.ndarray
    singular_values: np.ndarray
    Vt: np.ndarray

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        """Each component's share of ``sum(S**2)``: of the variance when centered (equal to
        scikit-learn's ``PCA.explained_variance_ratio_``), of the squared Frobenius norm
        when raw."""
        power = self.singular_values**2
        return power / power.sum()

    @property
    def offset(self) -> np.ndarray:
        """What is subtracted from every row before projecting: the mean, or zero."""
        return self.mean if self.center else np.zeros_like(self.mean)


@dataclass(frozen=True)
class ProjectedToken:
    """A token at one end of a component's projection of the vocabulary.

    ``token`` is the tokenizer's raw string (``Ġstrugg``), ``text`` what people read
    (``␣strugg``: ``embsvd.io.display.display_text``). ``component`` counts from 0, as the
    tables and metric steps do; people read it from 1.
    """

    component: int
    side: str  # "top" (largest projections) or "bottom" (smallest)
    rank: int  # from 1, counted from that end
    token_id: int
    token: str
    text: str
    projection: float
    in_group: bool


@dataclass(frozen=True)
class PairwiseStat:
    """A symmetric statistic between groups, as a square matrix over sorted group names."""

    names: tuple[str, ...]
    values: np.ndarray  # (len(names), len(names))

    def pairs(self) -> list[tuple[str, str, float]]:
        """Every unordered pair once, names in sorted order: ``(a, b, value)`` with a < b."""
        return [
            (a, b, float(self.values[i, j]))
            for (i, a), (j, b) in itertools.combinations(enumerate(self.names), 2)
        ]


MEAN_CORR_VARIANTS = ("raw", "centered", "decorrelated")


def mean_corr_key(variant: str) -> str:
    """The metric prefix of a variant of the group-mean correlation: ``group_mean_corr``
    (raw, the seed's), ``group_mean_corr_centered``, ``group_mean_corr_decorrelated``."""
    return "group_mean_corr" if variant == "raw" else f"group_mean_corr_{variant}"


@dataclass(frozen=True)
class MeanReference:
    """What the corrected group-mean correlations take out of every group mean.

    A model's embeddings are anisotropic: every group mean shares the vocabulary's mean
    direction (and its top principal components), so two unrelated groups' means can
    correlate at r ~ 0.9. ``centered`` subtracts the vocabulary's mean; ``decorrelated``
    also removes the span of ``axes``, the vocabulary's top principal components.

    Attributes:
        mean: Mean of the vocabulary's ordinary rows, ``(d_model,)``.
        axes: Orthonormal rows ``(r, d_model)`` removed for ``decorrelated``; ``None``
            where there are none to remove (whitened geometry, ``remove_global=0``).
    """

    mean: np.ndarray
    axes: np.ndarray | None = None

    def variants(self, means: np.ndarray) -> dict[str, np.ndarray]:
        """Group means ``(..., d_model)`` in every variant this reference defines."""
        centered = np.asarray(means, dtype=np.float64) - self.mean
        found = {"raw": np.asarray(means, dtype=np.float64), "centered": centered}
        if self.axes is not None:
            found["decorrelated"] = centered - (centered @ self.axes.T) @ self.axes
        return found


@dataclass(frozen=True)
class AnalysisResult:
    """Everything one run computes for its target group.

    ``mean_corr`` holds the group-mean correlation in each variant of
    ``MEAN_CORR_VARIANTS`` the run computed (``raw`` always; the others with a
    ``reference``); ``group_mean_corr`` is its ``raw`` entry, the seed's statistic.
    """

    target: str
    center: bool
    target_words: tuple[str, ...]
    target_ids: tuple[int, ...]
    svd: GroupSVD
    group_mean_corr: PairwiseStat
    mean_corr: dict[str, PairwiseStat]
    reference: MeanReference | None
    group_mean_cos: PairwiseStat
    axis_corr: PairwiseStat
    projections: np.ndarray  # (d_vocab, n_components), n_components at most the rank
    top_tokens: tuple[ProjectedToken, ...]
    row_cosine: np.ndarray  # (n, n)
    # the axes asked for; more than projected where the group's rank has fewer
    n_components_requested: int | None = None
    # the target's own rows on the axes, (n, n_components), where some are virtual (a
    # multi-token word's mean row, ``embsvd.io.augmented``) and so not in ``projections``
    target_projection_rows: np.ndarray | None = None
    # the vocabulary on the target's rows' span, read in the projection's pass for the
    # held-out ranks (``analyze(..., vocabulary_span=True)``); ``None`` where not asked
    vocabulary_span: VocabularySpan | None = field(default=None, repr=False, compare=False)

    @property
    def target_projections(self) -> np.ndarray:
        """The target's tokens on the axes, ``(n, n_components)``, in ``target_ids``
        order; a multi-token member's mean row included (``projections`` covers the real
        vocabulary only)."""
        if self.target_projection_rows is not None:
            return self.target_projection_rows
        return self.projections[list(self.target_ids)]

    @property
    def n_components(self) -> int:
        """The axes the vocabulary was projected on: ``min(requested, group_rank)``."""
        return self.projections.shape[1]

    @property
    def components_clamped(self) -> bool:
        """Fewer axes projected than asked for: the target's rank has fewer."""
        requested = self.n_components_requested
        return requested is not None and requested > self.n_components


def group_means(W_E: Any, groups: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Mean embedding of each group: ``{name: (d_model,)}`` (each group's rows gathered)."""
    return {
        name: np.asarray(W_E[list(ids)], dtype=np.float64).mean(axis=0)
        for name, ids in groups.items()
    }


def pairwise(vectors: Mapping[str, np.ndarray], statistic: str) -> PairwiseStat:
    """``pearson`` correlation or ``cosine`` similarity between every pair of vectors."""
    names = tuple(sorted(vectors))
    stacked = np.stack([np.asarray(vectors[name], dtype=np.float64) for name in names])
    if statistic == "pearson":
        stacked = stacked - stacked.mean(axis=1, keepdims=True)
    elif statistic != "cosine":
        raise ValueError(f"statistic: expected 'pearson' or 'cosine', got {statistic!r}")
    unit = stacked / np.linalg.norm(stacked, axis=1, keepdims=True)
    return PairwiseStat(names, np.clip(unit @ unit.T, -1.0, 1.0))


def decompose(M: np.ndarray, center: bool, device: str = "cpu") -> GroupSVD:
    """SVD of a group's submatrix ``M`` (``(n, d_model)``), mean-centered or raw.

    Signs follow :func:`embsvd.method.svd.svd_flip` on both paths: the largest-|.| entry of
    each row of ``Vt`` is positive, so that reruns, other BLAS builds and torch give the same
    axes, and a refit on part of the group whose axis keeps its largest entry points it
    the same way (what the rule cannot promise is said there).
    ``device`` other than ``cpu`` computes it with torch there (``embsvd.method.backend``).
    """
    M = np.asarray(M, dtype=np.float64)
    mean = M.mean(axis=0)
    if device == "cpu":
        U, S, Vt = np.linalg.svd(M - mean if center else M, full_matrices=False)
    else:
        U, S, Vt = backend.svd_on(M - mean if center else M, device)
    U, Vt = svd_flip(U, Vt)
    return GroupSVD(mean=mean, center=center, U=U, singular_values=S, Vt=Vt)


# sets of groups' SVDs kept per process (``group_svds``): a sweep's runs decompose the
# same groups, centered or raw; a few KB a group
GROUP_SVDS_KEPT = 8
_GROUP_SVDS = MatrixMemo(GROUP_SVDS_KEPT)


def group_svds(
    W: Any, ids: Mapping[str, Sequence[int]], center: bool, device: str = "cpu"
) -> dict[str, GroupSVD]:
    """``decompose(W[rows], center, device)`` of each group's rows, memoized per process
    by the matrix, the groups' rows and the centering (``MatrixMemo``), the arrays
    read-only: every run of a sweep decomposes all of its groups, the same ones each
    time (2 ms a run of ten groups on the benchmark's sweep, 2026-11-30)."""

    def computed() -> dict[str, GroupSVD]:
        svds = {name: decompose(W[rows], center, device) for name, rows in ids.items()}
        for svd in svds.values():
            for array in (svd.mean, svd.U, svd.singular_values, svd.Vt):
                read_only(array)
        return svds

    key = (value_digest({name: np.asarray(rows) for name, rows in ids.items()}), center, device)
    return dict(_GROUP_SVDS.get(W, key, computed))


def group_rank(n_tokens: int, d_model: int, center: bool) -> int:
    """The most axes a group's submatrix has: ``min(n - 1, d_model)`` centered (its rows
    minus their mean sum to zero), ``min(n, d_model)`` raw. The SVD returns
    ``min(n, d_model)`` singular values either way; centered, the last is 0 up to rounding
    and its direction is whatever rounding chose: no axis to project on."""
    return max(0, min(n_tokens - int(center), d_model))


def effective_rank(singular_values: np.ndarray) -> np.ndarray | float:
    """The spectrum's effective rank (Roy and Vetterli, 2007): ``exp`` of the entropy of
    ``p = S / sum(S)``; from 1 (one axis) to ``len(S)`` (a flat spectrum), so a faster
    decay gives a smaller value. Works along the last axis: ``(..., k) -> (...)``."""
    S = np.asarray(singular_values, dtype=np.float64)
    p = S / S.sum(axis=-1, keepdims=True)
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    value = np.exp(entropy)
    return float(value) if value.ndim == 0 else value


def project(W_E: Any, svd: GroupSVD, n_components: int, device: str = "cpu") -> np.ndarray:
    """The whole vocabulary on the first ``n_components`` right singular vectors.

    ``(W_E - mean) @ v`` when the SVD was centered, ``W_E @ v`` when raw; float64, in
    blocks of rows (``matmul_rows``: a float64 copy of a large ``W_E`` costs more than the
    product, and a bfloat16 one is widened a block at a time), or with torch on
    ``device``. Returns shape ``(d_vocab, n_components)``.
    """
    axes = svd.Vt[:n_components].T
    if device != "cpu":
        return backend.project_on(W_E, svd.offset, axes, device)
    projections = matmul_rows(W_E, axes, widened_block_rows(W_E, PROJECT_MIN_ROWS))
    projections -= svd.offset @ axes
    return projections


# A vocabulary span (``VocabularySpan``) is kept only up to this many columns: its
# coordinates are ``d_vocab x r`` float64 (10 MB at 128256 tokens and r = 10); a larger
# group's held-out ranks read the matrix again instead
SPAN_MAX_COLUMNS = 64
# Directions of a group's rows whose singular value is below this many float64 epsilons
# per dimension (``d_model``) of the largest are rounding (duplicate or zero rows): not
# part of the span (numpy's matrix_rank rule)
SPAN_EPSILONS = 1.0
EPSILON = np.finfo(np.float64).eps
# vocabulary spans kept per process (``project_with_span``), keyed by the matrix and the
# basis: a sweep's runs that differ only in ``n_components`` (or in settings the target's
# SVD does not see) share one pass; 3 MB each at 30522 tokens, 13 MB at 128256
SPANS_KEPT = 4
_SPANS = MatrixMemo(SPANS_KEPT)
_PROJECTIONS = MatrixMemo(SPANS_KEPT)  # without a span: the projections on every axis


@dataclass(frozen=True)
class VocabularySpan:
    """Every row of ``W`` read onto an orthonormal basis of a group's rows' span, in the
    projection's pass over ``W``: the held-out ranks (``embsvd.checks.heldout``) score
    the vocabulary from these instead of reading ``W`` a second time (one pass of a
    128256 x 4096 bfloat16 matrix widened to float64 is about 0.5 s).

    Attributes:
        basis: ``(d_model, r)`` orthonormal columns (``span_basis``): the group's axes the
            vocabulary was projected on first, then the rest of its rows' span.
        coordinates: ``W @ basis``, ``(d_vocab, r)``, float64, each block of rows widened
            to float64 first.
        norms_sq: ``|w|^2`` of every row, ``(d_vocab,)``, float64: the widened rows'
            ``einsum("ij,ij->i")``.
    """

    basis: np.ndarray
    coordinates: np.ndarray
    norms_sq: np.ndarray


def span_basis(svd: GroupSVD, n_leading: int = 0, tolerance: float | None = None) -> np.ndarray:
    """An orthonormal basis ``(d_model, r)`` of the span of a group's rows: its right
    singular vectors (the first ``n_leading`` whatever their singular value, the rest where
    it is above ``tolerance`` of the largest; default ``SPAN_EPSILONS * d_model``
    epsilons), then, centered, the mean less its part along them (where that is more than
    ``tolerance`` of the mean). Every centered or raw fit to some of the rows, its offset
    and its axes, lies in this span (to rounding)."""
    if tolerance is None:
        tolerance = SPAN_EPSILONS * svd.Vt.shape[1] * EPSILON
    singular = svd.singular_values
    kept = singular > singular[:1].max(initial=0.0) * tolerance
    kept[:n_leading] = True
    basis = svd.Vt[kept].T
    if svd.center:  # the mean, less its part along the centered rows (twice: to rounding)
        mean = svd.mean - basis @ (basis.T @ svd.mean)
        mean -= basis @ (basis.T @ mean)
        if np.linalg.norm(mean) > tolerance * np.linalg.norm(svd.mean):
            basis = np.column_stack([basis, mean / np.linalg.norm(mean)])
    return np.ascontiguousarray(basis)


def project_with_span(
    W_E: Any, svd: GroupSVD, n_components: int
) -> tuple[np.ndarray, VocabularySpan | None]:
    """``project`` (on the CPU), and in the same pass over ``W_E`` the vocabulary's
    ``VocabularySpan`` on the group's rows' span; ``None`` for the span where its basis
    has more than ``SPAN_MAX_COLUMNS`` columns (or half of ``d_model``): then only the
    projection is made.

    The projections are the span's first ``n_components`` coordinates less the offset's:
    the same products as ``project``'s, read with the span's other columns. The span is
    memoized per process by the matrix and the basis (``MatrixMemo``: a matrix changed in
    place is read again): runs that differ only in ``n_components`` read ``W_E`` once,
    as the basis holds the group's axes in the same order whatever their number."""
    basis = span_basis(svd, n_components)
    if basis.shape[1] > min(SPAN_MAX_COLUMNS, W_E.shape[1] // 2):
        return project(W_E, svd, n_components), None
    span = _SPANS.get(W_E, value_digest(basis), lambda: _span_pass(W_E, basis))
    axes = svd.Vt[:n_components].T
    projections = span.coordinates[:, :n_components] - svd.offset @ axes
    return projections, span


def _span_pass(W_E: Any, basis: np.ndarray) -> VocabularySpan:
    """``W_E``'s rows on ``basis``, with their squared norms: one pass over ``W_E``."""
    coordinates, norms_sq = np.empty((W_E.shape[0], basis.shape[1])), np.empty(W_E.shape[0])
    block_rows = widened_block_rows(W_E, SPAN_MIN_ROWS)

    def read(rows: slice, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float64)
        coordinates[rows] = block @ basis
        norms_sq[rows] = np.einsum("ij,ij->i", block, block)

    parallel_row_blocks(W_E, read, block_rows)
    for array in (coordinates, norms_sq):
        array.flags.writeable = False  # shared by the runs that hit the memo
    return VocabularySpan(basis, coordinates, norms_sq)


def project_on_all_axes(W_E: Any, svd: GroupSVD, n_axes: int) -> np.ndarray:
    """``project(W_E, svd, n_axes)``, memoized per process by the matrix, the axes and the
    offset (read-only): runs that differ only in ``n_components`` take their first
    columns from one pass over ``W_E``."""
    key = value_digest(svd.Vt[:n_axes], svd.offset)
    return _PROJECTIONS.get(W_E, key, lambda: read_only(project(W_E, svd, n_axes)))


def clear_span_memo() -> None:
    """Forget the vocabulary spans, projections and groups' SVDs computed so far."""
    _SPANS.clear()
    _PROJECTIONS.clear()
    _GROUP_SVDS.clear()


def extreme_tokens(
    projections: np.ndarray,
    vocab: Vocabulary,
    group_ids: Collection[int],
    top_k: int,
) -> tuple[ProjectedToken, ...]:
    """The ``top_k`` largest and smallest projections of every component.

    ``projections`` is ``(d_vocab, n_components)``. The vocabulary's special tokens and
    rows without a token string are skipped; ``in_group`` marks members of the group
    whose axes these are. Only the tokens reported are decoded for display.
    """
    members = frozenset(int(i) for i in group_ids)
    found: list[ProjectedToken] = []
    for component in range(projections.shape[1]):
        found += _axis_ends(projections[:, component], component, vocab, members, top_k)
    return tuple(found)


# each axis' ends remembered per vocabulary (``_axis_ends``), a few KB each
AXIS_ENDS_KEPT = 64
_AXIS_ENDS: weakref.WeakKeyDictionary[Vocabulary, ValueMemo] = weakref.WeakKeyDictionary()


def _axis_ends(
    column: np.ndarray, component: int, vocab: Vocabulary, members: frozenset[int], top_k: int
) -> tuple[ProjectedToken, ...]:
    """``extreme_tokens`` of one axis (``column``: the vocabulary's projections on it),
    remembered per vocabulary (immutable) by the projections' values: the runs of a sweep
    that differ only in ``n_components`` share their first axes (1 ms an axis on 30522
    tokens before, 2026-11-30)."""
    memo = _AXIS_ENDS.get(vocab)
    if memo is None:
        memo = _AXIS_ENDS.setdefault(vocab, ValueMemo(AXIS_ENDS_KEPT))

    def ends() -> tuple[ProjectedToken, ...]:
        candidates = vocab.reportable_ids
        top, bottom = extreme_positions(column[candidates], top_k)
        return tuple(
            ProjectedToken(
                component=component,
                side=side,
                rank=rank,
                token_id=int(i),
                token=vocab.token_strings[i],
                text=vocab.display_text(int(i)),
                projection=float(column[i]),
                in_group=int(i) in members,
            )
            for side, ids in (("top", candidates[top]), ("bottom", candidates[bottom]))
            for rank, i in enumerate(ids, start=1)
        )

    return memo.get((component, top_k, members, value_digest(column)), ends)


def extreme_positions(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the ``k`` largest and the ``k`` smallest of ``values``, as a
    stable ascending argsort orders them: the largest first, ties by the later position;
    the smallest first, ties by the earlier one. Only the values at or beyond each end's
    ``k``-th are sorted (``np.partition`` finds them): the same positions as the whole
    sort's ends, ties at the threshold included."""
    m = len(values)
    if m <= 2 * k or k < 1 or not np.isfinite(values).all():  # NaN sorts last: the sort
        order = np.argsort(values, kind="stable")
        return order[::-1][:k], order[:k]
    low, high = np.partition(values, [k - 1, m - k])[[k - 1, m - k]]
    upper = np.flatnonzero(values >= high)  # ascending positions: a stable sort keeps them
    top = upper[np.argsort(values[upper], kind="stable")][::-1][:k]
    lower = np.flatnonzero(values <= low)
    bottom = lower[np.argsort(values[lower], kind="stable")][:k]
    return top, bottom


def row_cosine(M: np.ndarray, center: bool) -> np.ndarray:
    """Cosine similarity between the rows of a group's submatrix, centered or raw: ``(n, n)``."""
    M = np.asarray(M, dtype=np.float64)
    if center:
        M = M - M.mean(axis=0)
    norms = np.linalg.norm(M, axis=1, keepdims=True)
    unit = M / np.where(norms == 0, 1.0, norms)
    return unit @ unit.T


def analyze(
    W: Any,
    groups: Mapping[str, TokenGroup],
    target: str,
    vocab: Vocabulary,
    *,
    center: bool = True,
    n_components: int = 3,
    top_k: int = 20,
    device: str = "cpu",
    reference: MeanReference | None = None,
    vocabulary_span: bool = False,
) -> AnalysisResult:
    """Run the method on ``target``, with every group entering the pairwise statistics.

    Args:
        W: The matrix analysed, ``(d_vocab, d_model)``: ``W_E``, ``W_U`` as rows, or either
            transformed (unit rows, whitened); an array, a memory-map or a streamed
            matrix (``embsvd.io.rows``), read by its rows only.
        groups: Every group of the run, after the single-token rule.
        target: The group whose submatrix is decomposed and projected on.
        vocab: The tokens of ``W``'s rows (``Checkpoint.vocabulary``): the top tokens are
            reported by string and display text, special tokens and unnamed rows never.
        center: Subtract each group's mean before its SVD (and before projecting).
        n_components: How many axes to project the vocabulary on; at most the target's
            rank (``group_rank``): beyond it the projection stops, with a warning, and
            ``AnalysisResult.components_clamped`` says so.
        top_k: Tokens to report at each end of each axis.
        device: ``cpu`` (numpy) or a torch device (``cuda``) for the SVDs and the projection.
        reference: The vocabulary's mean (and top components) for the ``centered`` (and
            ``decorrelated``) group-mean correlations; ``None``: ``raw`` only.
        vocabulary_span: Also read the vocabulary onto the target's rows' span in the
            projection's pass (``AnalysisResult.vocabulary_span``, on the CPU), for the
            held-out ranks to score it without a pass of their own.

    The defaults are those of ``conf/analysis/default.yaml``.
    """
    if target not in groups:
        raise ValueError(f"target: {target!r} is not one of the groups {sorted(groups)}")
    if vocab.d_vocab != W.shape[0]:
        raise ValueError(f"vocab: {vocab.d_vocab} tokens for {W.shape[0]} rows of W")
    ids = {name: group.token_ids for name, group in groups.items()}
    svds = group_svds(W, ids, center, device)
    target_svd = svds[target]
    n_tokens = len(ids[target])
    n_axes = group_rank(n_tokens, W.shape[1], center)
    if n_components > n_axes:
        log.warning(
            "analysis.n_components=%d exceeds the %d axes of %s; projecting on %d "
            "(%d tokens%s in %d dimensions)",
            n_components,
            n_axes,
            target,
            n_axes,
            n_tokens,
            ", centered," if center else "",
            W.shape[1],
        )
    span = None
    if vocabulary_span and device == "cpu":
        projections, span = project_with_span(W, target_svd, min(n_components, n_axes))
    elif device == "cpu" and n_axes <= SPAN_MAX_COLUMNS:
        projections = project_on_all_axes(W, target_svd, n_axes)[:, :n_components]
    else:
        projections = project(W, target_svd, min(n_components, n_axes), device)
    means = {name: svd.mean for name, svd in svds.items()}
    names = sorted(means)
    shifted = {"raw": np.stack([means[name] for name in names])}
    if reference is not None:
        shifted = reference.variants(shifted["raw"])
    mean_corr = {
        variant: pairwise(dict(zip(names, rows, strict=True)), "pearson")
        for variant, rows in shifted.items()
    }
    return AnalysisResult(
        target=target,
        center=center,
        target_words=tuple(groups[target].kept_words),
        target_ids=tuple(ids[target]),
        svd=target_svd,
        group_mean_corr=mean_corr["raw"],
        mean_corr=mean_corr,
        reference=reference,
        group_mean_cos=pairwise(means, "cosine"),
        axis_corr=pairwise({name: svd.Vt[0] for name, svd in svds.items()}, "pearson"),
        projections=projections,
        top_tokens=extreme_tokens(projections, vocab, ids[target], top_k),
        row_cosine=row_cosine(W[ids[target]], center),
        n_components_requested=n_components,
        target_projection_rows=_virtual_projections(W, ids[target], target_svd, projections),
        vocabulary_span=span,
    )


def _virtual_projections(
    W: Any, ids: Sequence[int], svd: GroupSVD, projections: np.ndarray
) -> np.ndarray | None:
    """The target's rows on the axes where some ids are virtual (at or past
    ``len(projections)``: multi-token words' mean rows): read from ``projections`` for
    real ids, projected here for virtual ones; ``None`` where all are real."""
    ids = np.asarray(ids, dtype=np.intp)
    virtual = ids >= len(projections)
    if not virtual.any():
        return None
    axes = svd.Vt[: projections.shape[1]].T
    found = np.empty((len(ids), projections.shape[1]))
    found[~virtual] = projections[ids[~virtual]]
    rows = np.asarray(W[ids[virtual]], dtype=np.float64)
    found[virtual] = rows @ axes - svd.offset @ axes
    return found
