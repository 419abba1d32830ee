"""Geometry of the whole vocabulary: unit rows, whitening and an exact global SVD, numpy only.

``fit_whitening`` gives the "causal inner product" of Park, Choe and Veitch (2024, "The
Linear Representation Hypothesis and the Geometry of Large Language Models"): rows are
mapped to ``(W - mean) @ Cov(W)^{-1/2}``, after which the Euclidean inner product is
``x^T Cov^{-1} y``. With ``d_model`` large against the rows the covariance is estimated
from, it is shrunk towards ``trace/d * I`` (Ledoit-Wolf by default).

All arithmetic is float64, done ``BLOCK_ROWS`` rows at a time so that a float32
``(d_vocab, d_model)`` matrix is never copied whole to float64 besides outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from embsvd.io.cache import intact, written_with_checksum
from embsvd.method.svd import svd_flip

log = logging.getLogger(__name__)

BLOCK_ROWS = 4096


class Geometry(StrEnum):
    """The geometry an analysis runs in (``analysis.geometry``): ``euclidean`` (the rows
    as they are) or ``whitened`` (``fit_whitening``'s causal inner product). Members are
    named as their values because OmegaConf matches and lists an enum by name."""

    euclidean = "euclidean"
    whitened = "whitened"


def normalize_rows(W: np.ndarray) -> np.ndarray:
    """A float64 copy of ``W`` (``(d_vocab, d_model)``) with unit-L2 rows, as debiaswe
    does; all-zero rows stay zero."""
    W = _matrix(W).astype(np.float64)
    norms = np.linalg.norm(W, axis=1, keepdims=True)
    return W / np.where(norms == 0, 1.0, norms)


def ledoit_wolf_shrinkage(X: np.ndarray, *, block_rows: int = BLOCK_ROWS) -> float:
    """Ledoit-Wolf shrinkage intensity in [0, 1] of the covariance of the rows of ``X``
    (``(n_samples, n_features)``, centered here), towards ``trace(S)/d * I``.

    The same formula as scikit-learn's ``ledoit_wolf_shrinkage(X, assume_centered=False)``.
    """
    X = _Centered(X, None, block_rows)
    return _ledoit_wolf(*X.moments(), n=X.shape[0])


@dataclass(frozen=True)
class Whitening:
    """``x -> (x - mean) @ transform``, with ``transform`` the inverse square root of the
    shrunk covariance.

    Attributes:
        mean: Mean of the rows the covariance was estimated from, shape ``(d_model,)``.
        transform: Symmetric, shape ``(d_model, d_model)``.
        shrinkage: Weight of ``trace(S)/d * I`` in the shrunk covariance, in [0, 1].
        n_rows: How many rows the covariance was estimated from.
    """

    mean: np.ndarray
    transform: np.ndarray
    shrinkage: float
    n_rows: int

    def apply(self, W: np.ndarray, *, block_rows: int = BLOCK_ROWS) -> np.ndarray:
        """Whiten every row of ``W`` (``(d_vocab, d_model)``); float64, same shape."""
        W = _matrix(W)
        if W.shape[1] != len(self.mean):
            raise ValueError(
                f"W: whitening was fitted on d_model={len(self.mean)}, got shape {W.shape}"
            )
        whitened = np.empty(W.shape, dtype=np.float64)
        for start in range(0, len(W), block_rows):
            part = slice(start, start + block_rows)
            whitened[part] = (W[part].astype(np.float64) - self.mean) @ self.transform
        return whitened


def fit_whitening(
    W: np.ndarray,
    rows: np.ndarray | None = None,
    shrinkage: float | None = None,
    *,
    block_rows: int = BLOCK_ROWS,
) -> Whitening:
    """Whitening from the MLE (1/n) covariance ``S`` of ``W[rows]`` (all rows when None),
    shrunk to ``(1 - a) S + a trace(S)/d I``; ``a = shrinkage``, or Ledoit-Wolf's when None.
    """
    if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
        raise ValueError(
            "analysis.whitening_shrinkage: expected a number in [0, 1], or null for the "
            f"Ledoit-Wolf value, got {shrinkage!r}"
        )
    X = _Centered(W, rows, block_rows)
    (n, d), (scatter, fourth) = X.shape, X.moments()
    a = _ledoit_wolf(scatter, fourth, n) if shrinkage is None else float(shrinkage)
    S = scatter / n
    shrunk = (1 - a) * S + a * (np.trace(S) / d) * np.eye(d)
    values, vectors = np.linalg.eigh(shrunk)
    # eigh returns ~1e-17 rather than 0 for a singular matrix: use matrix_rank's tolerance
    if values[0] <= max(values[-1], 0.0) * d * np.finfo(np.float64).eps:
        raise ValueError(
            f"analysis.whitening_shrinkage: the covariance of the {n} rows (d_model={d}) "
            f"shrunk by {a:g} is singular (eigenvalues {values[0]:.3g} to {values[-1]:.3g}), "
            "so it has no inverse square root; set a value > 0, or null for Ledoit-Wolf"
        )
    transform = (vectors / np.sqrt(values)) @ vectors.T
    return Whitening(X.mean, (transform + transform.T) / 2, a, n)


@dataclass(frozen=True)
class GlobalSVD:
    """Top of the SVD of a centered matrix, ``W[rows] - mean ~ U diag(S) Vt``.

    Attributes:
        mean: Column mean of the rows used, shape ``(d_model,)``.
        singular_values: Shape ``(k,)``, descending.
        Vt: Right singular vectors as orthonormal rows, shape ``(k, d_model)``.
        total_variance: Squared Frobenius norm of ``W[rows] - mean`` (all components).
        n_rows: How many rows were used.
    """

    mean: np.ndarray
    singular_values: np.ndarray
    Vt: np.ndarray
    total_variance: float
    n_rows: int

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        """Each component's share of the total variance, shape ``(k,)``."""
        return self.singular_values**2 / self.total_variance

    def top(self, k: int) -> GlobalSVD:
        """The first ``k`` components (all when there are fewer)."""
        return dataclasses.replace(self, singular_values=self.singular_values[:k], Vt=self.Vt[:k])


def global_svd(
    W: np.ndarray,
    n_components: int,
    *,
    rows: np.ndarray | None = None,
    block_rows: int = BLOCK_ROWS,
) -> GlobalSVD:
    """The top ``n_components`` of the exact SVD of ``W[rows]`` minus its column mean.

    Computed from the ``d_model x d_model`` scatter matrix ``X^T X`` (float64, in row
    blocks) and its eigendecomposition, so it is exact whatever the spectrum's decay (a
    randomized SVD returns an arbitrary subspace of a flat spectrum and misses the tail of
    a slowly decaying one); ``d_model`` up to 8192 costs at most 0.5 GB. Signs follow
    :func:`embsvd.method.svd.svd_flip`, as the group SVD's do: the largest-|.| entry of
    each row of ``Vt`` is positive, so that reruns and other BLAS builds give the same axes.
    """
    A = _Centered(W, rows, block_rows)
    n, d = A.shape
    if not 1 <= n_components <= min(n, d):
        raise ValueError(
            f"analysis.n_global: expected 1 <= n_global <= min(rows, d_model) = {min(n, d)} "
            f"({n} rows, d_model={d}), got {n_components}"
        )
    scatter = A.scatter()
    eigenvalues, vectors = np.linalg.eigh(scatter)
    top = np.argsort(eigenvalues)[::-1][:n_components]
    S = np.sqrt(np.clip(eigenvalues[top], 0.0, None))
    _, Vt = svd_flip(None, vectors[:, top].T)
    return GlobalSVD(A.mean, S, Vt, float(np.trace(scatter)), n)


def cached_global_svd(
    W: np.ndarray, n_components: int, cache_file: Path, *, rows: np.ndarray | None = None
) -> GlobalSVD:
    """``global_svd`` read from or written to ``cache_file`` (``.npz``).

    A cache is used only when it matches its checksum record (``embsvd.io.cache``) and
    its ``n_components``, ``d_vocab``, ``d_model`` and row count match; the file name must
    encode anything else the result depends on (checkpoint, which rows). A stale, damaged
    or unreadable file is recomputed and replaced atomically.
    """
    cache_file, W = Path(cache_file), _matrix(W)
    n_rows = len(W) if rows is None else len(_row_index(W, rows))
    key = dict(n_components=n_components, d_vocab=len(W), d_model=W.shape[1], n_rows=n_rows)
    if intact(cache_file):
        cached = _load_svd(cache_file, key)
        if cached is not None:
            return cached
    svd = global_svd(W, n_components, rows=rows)
    with written_with_checksum(cache_file) as stream:
        arrays = {name: getattr(svd, name) for name in ("mean", "singular_values", "Vt")}
        np.savez(stream, **arrays, total_variance=svd.total_variance, **key)
    return svd


def _load_svd(cache_file: Path, key: dict[str, int]) -> GlobalSVD | None:
    """The ``GlobalSVD`` in ``cache_file`` if it was computed for ``key``, else None."""
    try:
        with np.load(cache_file, allow_pickle=False) as cached:
            found = {name: int(cached[name]) for name in key}
            if found != key:
                log.info("%s holds %s, not %s: recomputing", cache_file, found, key)
                return None
            arrays = {name: cached[name] for name in ("mean", "singular_values", "Vt")}
            total_variance = float(cached["total_variance"])
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as error:
        log.warning("%s is unreadable (%r): recomputing", cache_file, error)
        return None
    return GlobalSVD(**arrays, total_variance=total_variance, n_rows=key["n_rows"])


def row_mean(W: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Column mean of ``W[rows]`` (all rows when None), ``(d_model,)``, in float64 blocks."""
    return _Centered(W, rows, BLOCK_ROWS).mean


def _matrix(W: np.ndarray) -> np.ndarray:
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"W: expected a (d_vocab, d_model) matrix, got shape {W.shape}")
    return W


def _row_index(W: np.ndarray, rows: np.ndarray | None) -> np.ndarray | None:
    """``rows`` (indices or a boolean mask) as row numbers, or None for all rows."""
    if rows is None:
        return None
    index = np.arange(len(W))[rows]
    if len(index) == 0:
        raise ValueError(f"rows: selects none of the {len(W)} rows of W")
    return index


class _Centered:
    """``X = W[rows] - mean`` with ``mean`` the column mean of ``W[rows]``, read in float64
    blocks of ``block_rows`` rows: a float32 ``W`` is never copied whole."""

    def __init__(self, W: np.ndarray, rows: np.ndarray | None, block_rows: int) -> None:
        self.W, self.index, self.block_rows = _matrix(W), _row_index(W, rows), block_rows
        self.shape = (len(self.W) if self.index is None else len(self.index), self.W.shape[1])
        self.mean = np.zeros(self.shape[1])
        self.mean = sum(block.sum(axis=0) for _, block in self.blocks()) / self.shape[0]

    def blocks(self) -> Iterator[tuple[slice, np.ndarray]]:
        """``(positions, block of X)``, each a fresh float64 array."""
        for start in range(0, self.shape[0], self.block_rows):
            part = slice(start, min(start + self.block_rows, self.shape[0]))
            block = self.W[part] if self.index is None else self.W[self.index[part]]
            yield part, block.astype(np.float64) - self.mean

    def scatter(self) -> np.ndarray:
        """The scatter ``X^T X``, ``(d_model, d_model)``."""
        scatter = np.zeros((self.shape[1], self.shape[1]))
        for _, block in self.blocks():
            scatter += block.T @ block
        return scatter

    def moments(self) -> tuple[np.ndarray, float]:
        """The scatter ``X^T X``, ``(d_model, d_model)``, and ``sum_i |x_i|^4``."""
        scatter, fourth = np.zeros((self.shape[1], self.shape[1])), 0.0
        for _, block in self.blocks():
            scatter += block.T @ block
            fourth += float(np.sum(np.sum(block**2, axis=1) ** 2))
        return scatter, fourth


def _ledoit_wolf(scatter: np.ndarray, fourth: float, n: int) -> float:
    """scikit-learn's formula; its ``sum(X2.T @ X2)`` is ``sum_i |x_i|^4``."""
    d = len(scatter)
    if d == 1:  # any shrinkage gives the same 1 x 1 covariance
        return 0.0
    trace = np.trace(scatter) / n
    mu = trace / d
    delta_ = float(np.sum(scatter**2)) / n**2
    beta = (fourth / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    # beta <= delta keeps the shrinkage <= 1, which would otherwise invert covariances
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)
