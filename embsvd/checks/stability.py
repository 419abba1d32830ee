"""Stability of a group's spectrum and axes when its words change.

Two resamplings of the group's ``n`` rows (its words), each decomposed as the run was
(centered or raw):

- the delete-d jackknife (Shao and Wu 1989; Shao and Tu 1995, ch. 2): every subset keeps
  ``n - d`` rows, drawn *without* replacement, with ``d = ceil(sqrt(n))`` rows deleted.
  All ``C(n, d)`` subsets are used when there are at most ``n_resamples`` of them (210
  for ``n = 10``), else ``n_resamples`` distinct random ones. It gives a 95% interval for
  every singular value a subset can estimate, and each axis' stability as the mean
  ``|cos|`` between a subset's and the full right singular vector of the same index, so
  an axis that trades places with its neighbour counts as unstable; the subspace of the
  first axes is compared by its largest principal angle, which does not care about
  order or rotation inside the subspace;
- leave-one-out (each word dropped once): the smallest ``|cos|`` per axis, and which
  word's absence moves the axis most.

Why the delete-d jackknife. The bootstrap resamples ``n`` rows *with* replacement: a
draw of 10 words holds about 6.5 distinct ones, the duplicated rows weigh twice and
inflate ``s_1``, and the spectrum past the distinct rows is exactly 0, so its percentile
intervals can exclude their own estimate and reach down to 1e-16. Percentile intervals
of subsets drawn without replacement fail too: the top eigenvalues of a smaller sample
are biased upwards, so the subsets' values sit above the full group's and a percentile
interval can miss the estimate. The jackknife uses only the *spread* of the subsets'
values, as a standard error around the full group's own estimate, so its interval always
covers the estimate. Deleting one row at a time (the ordinary jackknife) is inconsistent
for non-smooth statistics such as the median, and singular values are not smooth where
two of them meet; the delete-d jackknife is consistent for them when ``sqrt(n) / d -> 0``
and ``n - d -> inf``, roughly ``sqrt(n) < d < n``. ``d = ceil(sqrt(n))`` sits at the low
end of that range, keeping as many rows per subset as it allows.

The statistic is scale-matched: ``s_k`` of ``m`` rows grows like ``sqrt(m - c)`` (``c =
1`` when centered, else 0), so a subset's value is compared as ``s_k / sqrt(m - c)``, the
per-row scale, which the subsets and the full group estimate alike. With ``N`` subsets
the variance is ``v_k = (n - d) / (d N) sum_s (theta_s,k - mean_s theta_s,k)**2`` and the
interval ``theta_hat_k +- 1.96 sqrt(v_k)`` (clipped at 0), mapped back to the full
group's scale by ``sqrt(n - c)``.

What it cannot tell: with 10 words it is a rough normal-approximation interval, its
standard error estimated from 10 words; it is symmetric, it does not correct the upward
bias of the top singular values of a small group, and its 95% is nominal, not a coverage
guaranteed at this size. A component past a subset's rank (``k >= n - d - c``, 0-based,
or past ``d_model``) gets no interval at all, rather than a fake one of zeros: for
``n = 10`` centered, components 1-5 of the 9 nonzero ones.

Every subset (and leave-one-out fit) is decomposed in coordinates of the group's row
space, ``M = coordinates @ basis`` with ``basis`` orthonormal (``r = min(n, d_model)``
rows): a subset's singular values, and the ``|cos|`` and principal angles of its axes
with the full group's, are those of its ``d_model``-wide SVD, at a cost that does not
grow with ``d_model``.

Degenerate axes follow North et al.'s rule of thumb (1982): the sampling error of an
eigenvalue ``lambda_k = s_k**2`` estimated from ``n`` samples is about
``lambda_k sqrt(2 / n)``; when the gap to a neighbour is smaller, the two axes mix and
each is defined only up to a rotation within their plane. ``eigengap_ratio`` is the
smaller of the two gaps over that error, and an axis is flagged when it is below 1.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from embsvd.method.analysis import GroupSVD
from embsvd.method.svd import svd_flip

Z_95 = 1.96  # two-sided 95% quantile of the standard normal


@dataclass(frozen=True)
class Stability:
    """Resampling statistics of one group's decomposition.

    Attributes:
        n_resamples: Delete-d jackknife subsets used.
        n_deleted: Rows deleted from the group in every subset, ``d = ceil(sqrt(n))``.
        exhaustive: Whether all ``C(n, d)`` subsets were used (else distinct random ones).
        singular_value_lo: Lower end of the 95% interval of each singular value that has
            one, ``(k,)`` with ``k = min(n - d - c, d_model)`` (``c = 1`` when centered):
            shorter than the spectrum, the later components get no interval.
        singular_value_hi: Upper end, ``(k,)``.
        axis_cos: Mean ``|cos|`` of each of the first axes with the subsets' axis of the
            same index, ``(c_axes,)``, ``c_axes = min(n_components, k)``.
        subspace_angle_deg: Median over the subsets of the largest principal angle (in
            degrees) between the subset's and the full ``c_axes``-axis subspace.
        loo_axis_cos: ``(n_words, c_axes)``: ``|cos|`` of each axis with the axis learned
            without word ``i``.
        eigengap_ratio: ``(c_axes,)``: the gap to the nearer neighbouring eigenvalue over
            North's sampling error.
    """

    n_resamples: int
    n_deleted: int
    exhaustive: bool
    singular_value_lo: np.ndarray
    singular_value_hi: np.ndarray
    axis_cos: np.ndarray
    subspace_angle_deg: float
    loo_axis_cos: np.ndarray
    eigengap_ratio: np.ndarray

    @property
    def degenerate(self) -> np.ndarray:
        """``(c_axes,)``: True where an axis is defined only up to rotation."""
        return self.eigengap_ratio < 1.0

    @property
    def loo_axis_cos_min(self) -> np.ndarray:
        """The smallest leave-one-out ``|cos|`` of each axis, ``(c_axes,)``."""
        return self.loo_axis_cos.min(axis=0)

    @property
    def method(self) -> str:
        """The intervals' method in words, for a tag or a caption."""
        n_kept = len(self.loo_axis_cos) - self.n_deleted  # one leave-one-out fit per word
        which = (
            f"all {self.n_resamples}" if self.exhaustive else f"{self.n_resamples} distinct random"
        )
        n_intervals = len(self.singular_value_lo)
        components = f"components 1-{n_intervals}" if n_intervals > 1 else "component 1"
        return (
            f"delete-{self.n_deleted} jackknife over {which} subsets of "
            f"{n_kept} rows; 95% interval = estimate +- {Z_95} se; {components}"
        )


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
    # every subset's rows are rows of M: decompose them in coordinates of M's row space
    # (rank <= n), where the singular values and |cos| are those of the d_model-wide SVD
    coordinates, basis = _row_space(M)
    c_axes = min(n_components, n_intervals)
    reference = full.Vt[:c_axes] @ basis.T  # the full axes in the same coordinates
    sub_S, sub_Vt = _spectra(coordinates[kept], full.center)
    lo, hi = _jackknife_interval(
        full.singular_values[:n_intervals], sub_S[:, :n_intervals], n, d, c
    )
    loo_rows = np.tile(np.arange(n), (n, 1))[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    _, loo_Vt = _spectra(coordinates[loo_rows], full.center)
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


def _row_space(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``M`` (``(n, d_model)``) as ``coordinates @ basis``: ``basis`` ``(r, d_model)`` has
    orthonormal rows spanning M's rows, ``r = min(n, d_model)``. Rows of M and their means
    keep their singular values and right vectors (times ``basis``) in these coordinates."""
    Q, R = np.linalg.qr(M.T)  # M.T = Q R
    return R.T, Q.T


def _spectra(stack: np.ndarray, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """Singular values ``(b, k)`` and right singular vectors ``(b, k, r)`` of a stack of
    submatrices ``(b, m, r)``, each centered first when ``center``; their signs are LAPACK's
    (the statistics use ``|cos|`` and principal angles, which no sign changes)."""
    if center:
        stack = stack - stack.mean(axis=1, keepdims=True)
    _, S, Vt = np.linalg.svd(stack, full_matrices=False)
    return S, Vt


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
