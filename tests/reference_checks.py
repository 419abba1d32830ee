"""The checks as they were before they were batched and blocked: the reference that the
batched implementations are compared with (to 1e-10, same random streams).

Faithful copies of ``validate_held_out`` (one float64 copy of W and one pass over the
vocabulary per fit), ``token_confounds`` (ranks recomputed per call), ``resample_stability``
and ``order_test``, with the helpers they call. Only the result dataclasses and the
method stage (``decompose``, ``svd_flip``) are imported from the library, so a change to a
check cannot change its reference.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Iterator, Sequence

import numpy as np

from embsvd.checks.confounds import Confounds
from embsvd.checks.heldout import HeldOutValidation, HeldOutWord
from embsvd.checks.order import CyclicOrder, LinearOrder
from embsvd.checks.stability import Stability
from embsvd.groups import KeptToken, TokenGroup
from embsvd.method.analysis import GroupSVD, decompose
from embsvd.method.svd import svd_flip

# ---- embsvd/checks/heldout.py


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


# ---- embsvd/checks/confounds.py

CONTINUATION = "##"


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


# ---- embsvd/checks/stability.py

Z_95 = 1.96


def matched_abs_cos(Vt: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``|cos|`` between row ``k`` of ``Vt`` and row ``k`` of ``reference`` (unit rows):
    shape ``(..., n_components)`` for ``Vt`` of shape ``(..., n_components, d_model)``."""
    return np.abs(np.einsum("...kd,kd->...k", Vt, reference))


def largest_principal_angle(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Largest principal angle, in degrees, between the spans of the orthonormal rows of
    ``A`` (``(..., c, d_model)``) and ``B`` (``(c, d_model)``)."""
    cosines = np.linalg.svd(A @ B.T, compute_uv=False)
    return np.degrees(np.arccos(np.clip(cosines.min(axis=-1), -1.0, 1.0)))


def rows_deleted(n_rows: int) -> int:
    """Rows a delete-d jackknife subset leaves out of ``n_rows``: ``ceil(sqrt(n_rows))``."""
    return math.isqrt(n_rows - 1) + 1 if n_rows > 0 else 0  # exact, no float sqrt


def jackknife_rank(n_rows: int, center: bool) -> int:
    """Rank of a delete-d subset of a group of ``n_rows`` (before ``d_model`` caps it):
    how many singular values get an interval. Below 1, there is no jackknife."""
    return n_rows - rows_deleted(n_rows) - int(center)


def resample_stability(
    M: np.ndarray,
    full: GroupSVD,
    n_components: int,
    n_resamples: int,
    rng: np.random.Generator,
) -> Stability:
    """Delete-d jackknife and leave-one-out statistics of the decomposition ``full`` of ``M``.

    Args:
        M: The group's submatrix, ``(n, d_model)``.
        full: ``decompose(M, center)``.
        n_components: Axes whose stability is measured (at most the subsets' rank,
            ``n - ceil(sqrt(n)) - c``, are).
        n_resamples: The most subsets used (at least 2); all ``C(n, d)`` when there are no
            more than this, else this many distinct random ones.
        rng: The source of the random subsets.

    Raises:
        ValueError: If ``n_resamples < 2`` or the subsets have rank 0 (``n`` too small).
    """
    M = np.asarray(M, dtype=np.float64)
    n, d_model = M.shape
    c, d = int(full.center), rows_deleted(n)
    rank = jackknife_rank(n, full.center)
    if n_resamples < 2:
        raise ValueError(f"n_resamples: a jackknife variance needs at least 2, got {n_resamples}")
    if rank < 1:
        raise ValueError(
            f"M: a delete-{d} subset of {n} rows keeps {n - d}, rank {rank} "
            f"{'centered' if full.center else 'raw'}; the jackknife needs rank >= 1"
        )
    n_intervals = min(rank, d_model)
    kept, exhaustive = _subsets(n, d, n_resamples, rng)
    sub_S, sub_Vt = _decompose_stack(M[kept], full.center)
    lo, hi = _jackknife_interval(
        full.singular_values[:n_intervals], sub_S[:, :n_intervals], n, d, c
    )
    c_axes = min(n_components, n_intervals)
    reference = full.Vt[:c_axes]
    loo_rows = np.array([np.delete(np.arange(n), i) for i in range(n)])
    _, loo_Vt = _decompose_stack(M[loo_rows], full.center)
    return Stability(
        n_resamples=len(kept),
        n_deleted=d,
        exhaustive=exhaustive,
        singular_value_lo=lo,
        singular_value_hi=hi,
        axis_cos=matched_abs_cos(sub_Vt[:, :c_axes], reference).mean(axis=0),
        subspace_angle_deg=float(np.median(largest_principal_angle(sub_Vt[:, :c_axes], reference))),
        loo_axis_cos=matched_abs_cos(loo_Vt[:, :c_axes], reference),
        eigengap_ratio=eigengap_ratio(full.singular_values, n)[:c_axes],
    )


def _subsets(n: int, d: int, n_resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Rows kept by each delete-``d`` subset, ``(N, n - d)`` (sorted within a row), and
    whether they are all ``C(n, d)`` of them."""
    if math.comb(n, d) <= n_resamples:
        return np.array(list(itertools.combinations(range(n), n - d))), True
    kept = np.empty((0, n - d), dtype=np.intp)
    while len(kept) < n_resamples:  # redraw the duplicates: distinct subsets, no weights
        draws = np.sort(np.argsort(rng.random((n_resamples, n)), axis=1)[:, : n - d], axis=1)
        kept = np.concatenate([kept, draws])
        _, first = np.unique(kept, axis=0, return_index=True)
        kept = kept[np.sort(first)]  # keep the order drawn, so a seed fixes the subsets
    return kept[:n_resamples], False


def _jackknife_interval(
    singular_values: np.ndarray, subset_values: np.ndarray, n: int, d: int, c: int
) -> tuple[np.ndarray, np.ndarray]:
    """95% delete-d jackknife interval ``(lo, hi)``, each ``(k,)``, of the full group's
    ``singular_values`` (``(k,)``) from those of ``N`` subsets of ``n - d`` rows
    (``(N, k)``); ``c = 1`` when centered."""
    # compare per row: s_k of m rows grows like sqrt(m - c), so unscaled subset values
    # would measure the subset size, not the words' spread
    theta_hat = singular_values / np.sqrt(n - c)
    theta = subset_values / np.sqrt(n - d - c)
    variance = (n - d) / (d * len(theta)) * ((theta - theta.mean(axis=0)) ** 2).sum(axis=0)
    half_width = Z_95 * np.sqrt(variance)
    scale = np.sqrt(n - c)
    return np.maximum(theta_hat - half_width, 0.0) * scale, (theta_hat + half_width) * scale


def _decompose_stack(stack: np.ndarray, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """Singular values ``(b, k)`` and right singular vectors ``(b, k, d_model)`` of a stack
    of submatrices ``(b, m, d_model)``, decomposed as :func:`decompose` does, signs included.
    The statistics use ``|cos|`` all the same: a sign rule can still reverse a refit's
    axis that barely moved (``embsvd.method.svd.svd_flip``)."""
    if center:
        stack = stack - stack.mean(axis=1, keepdims=True)
    _, S, Vt = np.linalg.svd(stack, full_matrices=False)
    return S, svd_flip(None, Vt)[1]


def eigengap_ratio(singular_values: np.ndarray, n_samples: int) -> np.ndarray:
    """North's separation of every axis, ``(k,)``: the smaller gap to a neighbouring
    eigenvalue over the sampling error of the larger of the two,
    ``lambda sqrt(2 / n_samples)`` (``inf`` for a lone axis; ``nan`` for zero ones)."""
    eigenvalues = np.asarray(singular_values, dtype=np.float64) ** 2
    error = eigenvalues * np.sqrt(2.0 / n_samples)
    with np.errstate(invalid="ignore", divide="ignore"):
        to_next = (eigenvalues[:-1] - eigenvalues[1:]) / error[:-1]
    ratio = np.full(len(eigenvalues), np.inf)
    ratio[:-1] = to_next
    ratio[1:] = np.fmin(ratio[1:], to_next)
    return ratio


# ---- embsvd/checks/order.py

KINDS = ("linear", "cyclic")
MAX_EXACT_MEMBERS = 8  # 8! = 40320 permutations are enumerated; more members are sampled
PERMUTATIONS_PER_BATCH = 8192  # bounds the (batch, n (n - 1) / 2) float64 block of the null
TIE_TOLERANCE = 1e-12  # relative to max(1, |observed|): rotated calendars tie up to rounding
RESIDUAL_FLOOR = 1e-9  # relative to the ranks' scale: below it a residual is taken as zero


def order_test(
    M: np.ndarray,
    words: Sequence[str],
    kind: str,
    *,
    norms: np.ndarray | None = None,
    frequencies: np.ndarray | None = None,
    n_permutations: int = 10000,
    rng: np.random.Generator | None = None,
) -> CyclicOrder | LinearOrder:
    """Test whether a group's geometry reproduces its declared order.

    Args:
        M: The group's submatrix, ``(n, d_model)``, rows in declared order.
        words: The members, ``(n,)``, in the same order.
        kind: ``linear`` (digits, number words) or ``cyclic`` (months, weekdays).
        norms: Token norms, ``(n,)``; a covariate of the partial Spearman (linear only).
        frequencies: Word frequencies, ``(n,)``; likewise (linear only).
        n_permutations: Monte Carlo permutations when ``n > 8`` (else all ``n!``).
        rng: Draws the Monte Carlo permutations; ``np.random.default_rng(0)`` when None.
    """
    M, covariates = _validated(M, words, kind, norms, frequencies, n_permutations)
    # the order lives in the spread around the group's mean, whatever the run's centering
    svd = decompose(M, center=True)
    coordinates = (M - svd.mean) @ svd.Vt[:2].T
    rng = np.random.default_rng(0) if rng is None else rng
    if kind == "cyclic":
        return _cyclic_order(tuple(words), coordinates, n_permutations, rng)
    return _linear_order(tuple(words), coordinates, covariates, n_permutations, rng)


def fisher_lee(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Fisher and Lee's (1983) circular-circular correlation of angles ``a`` with ``b``:
    ``sum_{i<j} sin(a_i - a_j) sin(b_i - b_j) / sqrt(sum sin^2(a_i - a_j) sum sin^2(b_i - b_j))``.

    Args:
        a: Angles in radians, ``(n,)``.
        b: Angles in radians, ``(n,)``, or ``(..., n)`` for one correlation per row.

    Returns:
        A float for ``(n,)`` ``b``, else an array of shape ``b.shape[:-1]``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or b.shape[-1] != a.shape[0]:
        raise ValueError(f"b: expected last axis of length {a.shape[0]}, got shape {b.shape}")
    i, j = np.triu_indices(a.shape[0], k=1)
    sin_a = np.sin(a[i] - a[j])
    sin_b = np.sin(b[..., i] - b[..., j])
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (sin_b @ sin_a) / np.sqrt((sin_a @ sin_a) * np.sum(sin_b**2, axis=-1))
    return float(rho) if np.ndim(rho) == 0 else rho


def _validated(
    M, words, kind, norms, frequencies, n_permutations
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``M`` as float64 and the covariates given, after checking every argument once."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected 'linear' or 'cyclic', got {kind!r}")
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[1] < 2:
        raise ValueError(f"M: expected an (n, d_model) array, d_model >= 2, got shape {M.shape}")
    n = M.shape[0]
    if n < 3:
        raise ValueError(f"M: an order test needs at least 3 members (rows), got {n}")
    if len(words) != n:
        raise ValueError(f"words: expected one word per row of M ({n}), got {len(words)}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations: expected at least 1, got {n_permutations}")
    covariates = []
    for name, values in (("norms", norms), ("frequencies", frequencies)):
        if values is not None:
            values = np.asarray(values, dtype=np.float64)
            if values.shape != (n,):
                raise ValueError(
                    f"{name}: expected one value per row of M, shape ({n},), got {values.shape}"
                )
            covariates.append(values)
    return M, covariates


def _cyclic_order(words, coordinates, n_permutations, rng) -> CyclicOrder:
    n = len(words)
    angles = np.arctan2(coordinates[:, 1], coordinates[:, 0])
    around = np.argsort(angles, kind="stable")  # members in angular order

    def statistics(labels: np.ndarray) -> np.ndarray:  # (b, n) positions -> (b, 2)
        gaps = (labels[:, around] - np.roll(labels[:, around], -1, axis=1)) % n
        neighbours = np.sum((gaps == 1) | (gaps == n - 1), axis=1)
        return np.column_stack([neighbours, fisher_lee(angles, 2 * np.pi * labels / n)])

    observed, p, total, exact = _permutation_test(statistics, n, n_permutations, rng)
    return CyclicOrder(
        words=words,
        coordinates=coordinates,
        angles=angles,
        angular_order=tuple(int(i) for i in around),
        neighbours=int(observed[0]),
        neighbours_p=float(p[0]),
        circular_corr=float(observed[1]),
        circular_corr_p=float(p[1]),
        n_permutations=total,
        exact=exact,
    )


def _linear_order(words, coordinates, covariates, n_permutations, rng) -> LinearOrder:
    n = len(words)
    axis_ranks = rankdata(coordinates[:, 0])
    # Spearman is the partial Spearman given the intercept alone: both are correlations of
    # least-squares residuals of ranks, so one routine serves the two
    residualizers = [_residualizer([], n)] + ([_residualizer(covariates, n)] if covariates else [])

    def statistics(labels: np.ndarray) -> np.ndarray:  # (b, n) positions -> (b, 1 or 2)
        positions = labels + 1.0  # distinct positions: their ranks
        return np.column_stack(
            [_residual_corr(Q @ axis_ranks, positions @ Q) for Q in residualizers]
        )

    observed, p, total, exact = _permutation_test(statistics, n, n_permutations, rng)
    partial = (observed[1], p[1]) if covariates else (np.nan, np.nan)
    return LinearOrder(
        words=words,
        coordinates=coordinates,
        spearman=float(observed[0]),
        spearman_p=float(p[0]),
        partial_spearman=float(partial[0]),
        partial_spearman_p=float(partial[1]),
        n_permutations=total,
        exact=exact,
    )


def _residualizer(covariates: list[np.ndarray], n: int) -> np.ndarray:
    """``(n, n)`` symmetric projector giving least-squares residuals on an intercept and
    the covariates' ranks (``pinv``, so that collinear covariates do no harm)."""
    Z = np.column_stack([np.ones(n), *(rankdata(values) for values in covariates)])
    return np.eye(n) - Z @ np.linalg.pinv(Z)


def _residual_corr(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Pearson of residuals ``x`` (``(n,)``) with each row of ``Y`` (``(b, n)``): ``(b,)``.
    Residuals on an intercept have mean 0, so it is their cosine. ``nan`` where a residual
    vanishes: rounding noise left by an exact fit would otherwise give any value."""
    floor = RESIDUAL_FLOOR * len(x) ** 1.5  # centered ranks 1..n have norm ~ n^1.5 / sqrt(12)
    x_norm, Y_norms = np.linalg.norm(x), np.linalg.norm(Y, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (Y @ x) / (x_norm * Y_norms)
    return np.where((Y_norms < floor) | (x_norm < floor), np.nan, rho)


def _permutation_test(
    statistics: Callable[[np.ndarray], np.ndarray],
    n: int,
    n_permutations: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Observed statistics ``(s,)`` of the declared order and their permutation p of
    ``|statistic|``, with the number of permutations and whether they were all ``n!``.

    ``statistics`` maps label permutations ``(b, n)`` (row: the declared position each
    member gets) to ``(b, s)``."""
    observed = statistics(np.arange(n)[None, :])[0]
    floor = np.abs(observed) - TIE_TOLERANCE * np.maximum(1.0, np.abs(observed))
    exact = n <= MAX_EXACT_MEMBERS
    total = math.factorial(n) if exact else n_permutations
    count = np.zeros(len(observed))
    for batch in _permutation_batches(n, total, exact, rng):
        count += np.sum(np.abs(statistics(batch)) >= floor, axis=0)  # nan never counts
    p = count / total if exact else (1 + count) / (1 + total)
    return observed, np.where(np.isnan(observed), np.nan, p), total, exact


def _permutation_batches(
    n: int, total: int, exact: bool, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Label permutations ``(b, n)``: all ``n!`` in lexicographic order, or ``total``
    drawn from ``rng``, in batches of at most ``PERMUTATIONS_PER_BATCH`` rows."""
    if exact:
        flat = itertools.chain.from_iterable(itertools.permutations(range(n)))
        every = np.fromiter(flat, dtype=np.intp, count=total * n).reshape(total, n)
        for start in range(0, total, PERMUTATIONS_PER_BATCH):
            yield every[start : start + PERMUTATIONS_PER_BATCH]
        return
    for start in range(0, total, PERMUTATIONS_PER_BATCH):
        size = min(PERMUTATIONS_PER_BATCH, total - start)
        yield rng.permuted(np.tile(np.arange(n), (size, 1)), axis=1)
