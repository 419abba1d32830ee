"""Stability of a group's spectrum and axes when its words change.

Two resamplings of the group's rows (its words), each decomposed as the run was
(centered or raw):

- the bootstrap (``n_resamples`` draws of ``n`` rows with replacement): a 95% percentile
  interval for every singular value, and each axis' stability as the mean ``|cos|``
  between the resampled and the full right singular vector of the same index, so an
  axis that trades places with its neighbour counts as unstable; the subspace of the
  first ``n_components`` axes is compared by its largest principal angle, which does
  not care about order or rotation inside the subspace;
- leave-one-out (each word dropped once): the smallest ``|cos|`` per axis, and which
  word's absence moves the axis most.

With ``n`` words a resample holds about ``0.63 n`` distinct rows, so the intervals of
the later singular values reach down to 0: read them for the first few components.

Degenerate axes follow North et al.'s rule of thumb (1982): the sampling error of an
eigenvalue ``lambda_k = s_k**2`` estimated from ``n`` samples is about
``lambda_k sqrt(2 / n)``; when the gap to a neighbour is smaller, the two axes mix and
each is defined only up to a rotation within their plane. ``eigengap_ratio`` is the
smaller of the two gaps over that error, and an axis is flagged when it is below 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embsvd.analysis import GroupSVD

INTERVAL = (2.5, 97.5)  # percentiles of a 95% bootstrap interval


@dataclass(frozen=True)
class Stability:
    """Resampling statistics of one group's decomposition.

    Attributes:
        n_resamples: Bootstrap draws.
        singular_value_lo: Lower end of each singular value's interval, ``(k,)``.
        singular_value_hi: Upper end, ``(k,)``.
        axis_cos: Mean ``|cos|`` of each of the first ``n_components`` axes with its
            bootstrap counterparts, ``(n_components,)``.
        subspace_angle_deg: Median over the bootstrap of the largest principal angle (in
            degrees) between the resampled and the full ``n_components``-axis subspace.
        loo_axis_cos: ``(n_words, n_components)``: ``|cos|`` of each axis with the axis
            learned without word ``i``.
        eigengap_ratio: ``(n_components,)``: the gap to the nearer neighbouring
            eigenvalue over North's sampling error.
    """

    n_resamples: int
    singular_value_lo: np.ndarray
    singular_value_hi: np.ndarray
    axis_cos: np.ndarray
    subspace_angle_deg: float
    loo_axis_cos: np.ndarray
    eigengap_ratio: np.ndarray

    @property
    def degenerate(self) -> np.ndarray:
        """``(n_components,)``: True where an axis is defined only up to rotation."""
        return self.eigengap_ratio < 1.0

    @property
    def loo_axis_cos_min(self) -> np.ndarray:
        """The smallest leave-one-out ``|cos|`` of each axis, ``(n_components,)``."""
        return self.loo_axis_cos.min(axis=0)


def matched_abs_cos(Vt: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``|cos|`` between row ``k`` of ``Vt`` and row ``k`` of ``reference`` (unit rows):
    shape ``(..., n_components)`` for ``Vt`` of shape ``(..., n_components, d_model)``."""
    return np.abs(np.einsum("...kd,kd->...k", Vt, reference))


def largest_principal_angle(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Largest principal angle, in degrees, between the spans of the orthonormal rows of
    ``A`` (``(..., c, d_model)``) and ``B`` (``(c, d_model)``)."""
    cosines = np.linalg.svd(A @ B.T, compute_uv=False)
    return np.degrees(np.arccos(np.clip(cosines.min(axis=-1), -1.0, 1.0)))


def resample_stability(
    M: np.ndarray,
    full: GroupSVD,
    n_components: int,
    n_resamples: int,
    rng: np.random.Generator,
) -> Stability:
    """Bootstrap and leave-one-out statistics of the decomposition ``full`` of ``M``.

    Args:
        M: The group's submatrix, ``(n, d_model)``.
        full: ``decompose(M, center)``.
        n_components: Axes whose stability is measured (at most ``n - 1``: leave-one-out
            fits keep ``n - 1`` rows).
        n_resamples: Bootstrap draws (at least 2).
        rng: The source of the draws.
    """
    M = np.asarray(M, dtype=np.float64)
    n = len(M)
    c = min(n_components, n - 1 - int(full.center), len(full.singular_values))
    reference = full.Vt[:c]
    rows = rng.integers(0, n, size=(n_resamples, n))
    boot_S, boot_Vt = _decompose_stack(M[rows], full.center)
    lo, hi = np.percentile(boot_S, INTERVAL, axis=0)
    loo_rows = np.array([np.delete(np.arange(n), i) for i in range(n)])
    _, loo_Vt = _decompose_stack(M[loo_rows], full.center)
    return Stability(
        n_resamples=n_resamples,
        singular_value_lo=lo,
        singular_value_hi=hi,
        axis_cos=matched_abs_cos(boot_Vt[:, :c], reference).mean(axis=0),
        subspace_angle_deg=float(np.median(largest_principal_angle(boot_Vt[:, :c], reference))),
        loo_axis_cos=matched_abs_cos(loo_Vt[:, :c], reference),
        eigengap_ratio=eigengap_ratio(full.singular_values, n)[:c],
    )


def _decompose_stack(stack: np.ndarray, center: bool) -> tuple[np.ndarray, np.ndarray]:
    """Singular values ``(b, k)`` and right singular vectors ``(b, k, d_model)`` of a stack
    of submatrices ``(b, m, d_model)``, decomposed as :func:`decompose` does."""
    if center:
        stack = stack - stack.mean(axis=1, keepdims=True)
    _, S, Vt = np.linalg.svd(stack, full_matrices=False)
    return S, Vt


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
