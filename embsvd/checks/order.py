"""The circle and order test: does a group's geometry reproduce its declared order?

Some token groups have a declared order: ``linear`` (digits 0..9, number words one..ten)
or ``cyclic`` (the 12 months, the 7 weekdays). The members are placed on the plane of the
first two components of the group's *mean-centered* submatrix, whatever the run's own
centering, and that placement is compared with the declared order.

Statistics:
- ``neighbours`` (cyclic): walking once around the plane by angle, how many of the ``n``
  adjacent pairs are calendar neighbours (declared positions differ by 1 mod ``n``);
  ``n`` when the circle is the calendar up to rotation and reflection.
- ``circular_corr`` (cyclic): Fisher and Lee's (1983) circular-circular correlation of
  the members' angles with the calendar angles ``2 pi i / n``: +1 when the angles are the
  calendar's rotated, -1 when reflected (the sign only says which way round).
- ``spearman`` (linear): Spearman's rho of the axis-1 coordinate with declared position.
- ``partial_spearman`` (linear): the same with the ranks of token norm and word frequency
  regressed out of both rank vectors: the order an axis shows beyond those covariates.

Null: the declared labels permuted over the members (the same geometry, random orders);
the covariates stay attached to the tokens. The p-value of a statistic is the share of
permutations whose ``|statistic|`` reaches the observed one (within ``TIE_TOLERANCE``, so
that the symmetric arrangements tie). With ``n <= 8`` all ``n!`` permutations are
enumerated, ``p = count / n!``; above, ``n_permutations`` are drawn and
``p = (1 + count) / (1 + n_permutations)`` (Phipson and Smyth, 2010), never 0.

What it cannot tell:
- The smallest p is bounded. The ``2 n`` rotations and reflections of the calendar give
  the same neighbour count and ``|circular_corr|``, so even a perfect circle of 7 weekdays
  has exact ``p = 14 / 7! = 0.0028``; a perfect linear order has ``2 / n!`` (it and its
  reverse); Monte Carlo p stops at ``1 / (1 + n_permutations)``. With 3 members every
  pair is a calendar neighbour, so ``neighbours`` is always 3 and its p is 1.
- Only the first two components are looked at: an order carried by later ones is missed.
- The null is random orders of *these* points, not random groups of tokens
  (``embsvd.checks.null``): it says the geometry follows the order, not that this is unusual for
  embeddings, nor why (a shared spelling, frequency). The partial Spearman removes only
  the rank-linear part of norm and frequency.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from embsvd.checks.confounds import rankdata
from embsvd.method.analysis import decompose

KINDS = ("linear", "cyclic")
MAX_EXACT_MEMBERS = 8  # 8! = 40320 permutations are enumerated; more members are sampled
PERMUTATIONS_PER_BATCH = 8192  # bounds the (batch, n (n - 1) / 2) float64 block of the null
TIE_TOLERANCE = 1e-12  # relative to max(1, |observed|): rotated calendars tie up to rounding
RESIDUAL_FLOOR = 1e-9  # relative to the ranks' scale: below it a residual is taken as zero


@dataclass(frozen=True)
class CyclicOrder:
    """A cyclic group's placement on its first two centered components against its calendar."""

    words: tuple[str, ...]  # the members in declared order
    coordinates: np.ndarray  # (n, 2): each member on the first two centered components
    angles: np.ndarray  # (n,): atan2 of the coordinates, radians
    angular_order: tuple[int, ...]  # declared positions of the members sorted by angle
    neighbours: int  # adjacent pairs around the angular circle that are calendar neighbours
    neighbours_p: float  # permutation p, P(count >= observed)
    circular_corr: float  # Fisher-Lee correlation of the angles with 2 pi i / n, signed
    circular_corr_p: float  # permutation p of |circular_corr|
    n_permutations: int  # permutations used (n! when exact)
    exact: bool  # all n! permutations enumerated


@dataclass(frozen=True)
class LinearOrder:
    """A linear group's axis-1 coordinate against its declared positions."""

    words: tuple[str, ...]  # the members in declared order
    coordinates: np.ndarray  # (n, 2): each member on the first two centered components
    spearman: float  # Spearman's rho of the axis-1 coordinate with the declared position
    spearman_p: float  # permutation p of |spearman|
    # the same given the ranks of norm and frequency; nan without covariates or when they
    # explain either rank vector entirely
    partial_spearman: float
    partial_spearman_p: float  # permutation p of |partial_spearman|
    n_permutations: int  # permutations used (n! when exact)
    exact: bool  # all n! permutations enumerated


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
    return _fisher_lee(np.sin(a[i] - a[j]), np.sin(b[..., i] - b[..., j]))


def _fisher_lee(sin_a: np.ndarray, sin_b: np.ndarray) -> float | np.ndarray:
    """``fisher_lee`` from the sines of the pairwise differences, ``(p,)`` and ``(..., p)``."""
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
    i, j = np.triu_indices(n, k=1)
    sin_a = np.sin(angles[i] - angles[j])
    # a permutation's calendar angles are 2 pi label / n: the sine of every difference of
    # two of them is one of n * n values, computed once (the same angles, the same sines)
    calendar = 2 * np.pi * np.arange(n) / n
    sines = np.sin(calendar[:, None] - calendar[None, :]).ravel()  # [l * n + m]: l minus m

    def statistics(labels: np.ndarray) -> np.ndarray:  # (b, n) positions -> (b, 2)
        gaps = (labels[:, around] - np.roll(labels[:, around], -1, axis=1)) % n
        neighbours = np.sum((gaps == 1) | (gaps == n - 1), axis=1)
        sin_b = sines[labels[:, i] * n + labels[:, j]]
        return np.column_stack([neighbours, _fisher_lee(sin_a, sin_b)])

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
        every = _every_permutation(n)
        for start in range(0, total, PERMUTATIONS_PER_BATCH):
            yield every[start : start + PERMUTATIONS_PER_BATCH]
        return
    for start in range(0, total, PERMUTATIONS_PER_BATCH):
        size = min(PERMUTATIONS_PER_BATCH, total - start)
        yield rng.permuted(np.tile(np.arange(n), (size, 1)), axis=1)


@functools.cache
def _every_permutation(n: int) -> np.ndarray:
    """All ``n!`` permutations of ``range(n)`` in lexicographic order, ``(n!, n)``, read-only:
    the same table for every exact test of ``n`` members in a process."""
    flat = itertools.chain.from_iterable(itertools.permutations(range(n)))
    every = np.fromiter(flat, dtype=np.intp, count=math.factorial(n) * n).reshape(-1, n)
    every.flags.writeable = False
    return every
