"""Geometry of the whole vocabulary: unit rows, whitening and the global SVD, numpy only.

``fit_whitening`` gives the "causal inner product" of Park, Choe and Veitch (2024, "The
Linear Representation Hypothesis and the Geometry of Large Language Models"): rows are
mapped to ``(W - mean) @ Cov(W)^{-1/2}``, after which the Euclidean inner product is
``x^T Cov^{-1} y``. With ``d_model`` large against the rows the covariance is estimated
from, it is shrunk towards ``trace/d * I`` (Ledoit-Wolf by default).

Every function reads ``W`` a block of rows at a time (``embsvd.io.rows.row_blocks`` or
gathers ``W[ids]``), so ``W`` may be an array, a memory-map or a bfloat16
``BFloat16Rows`` that is never widened whole; float64 arithmetic throughout, except the
large global SVD's products (``global_svd``). ``unit_rows`` computes unit rows where
they are read; a whitened matrix is a new one (``Whitening.apply``), float32 where the
pipeline keeps it.

The per-checkpoint results (``cached_global_svd``, ``cached_whitening``) are kept on
disk under their cache file and, within a process, in memory.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import json
import logging
import os
import queue
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.io import openblas
from embsvd.io.cache import exclusive, intact, written_with_checksum
from embsvd.io.checkpoint import default_cache_dir
from embsvd.io.memo import MatrixMemo, read_only, value_digest
from embsvd.io.rows import (
    NarrowRows,
    RowShares,
    UnitRows,
    block_rows_for,
    release_rows,
    row_blocks,
)
from embsvd.io.spec import Checkpoint
from embsvd.method.svd import svd_flip

log = logging.getLogger(__name__)

BLOCK_ROWS = None  # rows read at a time: embsvd.io.rows.block_rows_for's choice
# the global SVD takes the fast path when its scatter costs more than this many
# multiply-adds (n * d^2: about a second in float64), and solves for its top
# eigenpairs iteratively above this d_model (a full eigendecomposition of 4096 x 4096
# takes longer than the float32 scatter of a 128k-token vocabulary)
FAST_MIN_WORK = 1 << 36
FULL_EIGH_MAX_D = 1024
# the fast path's check: every refined component's residual against the exact float64
# scatter, ||S v - s^2 v||, at most this fraction of the largest eigenvalue s_1^2
RESIDUAL_TOLERANCE = 1e-6
# the iterative eigensolver's own residual, of s_1^2, against the float32 scatter it
# solves: a tenth of the check's, so that the check's residual is the float32 products'
# (the float32 scatter of 128256 x 4096 bfloat16 rows is 1.3e-6 of s_1^2 from the
# float64 one; its refined axes' residuals were 9.06e-8 whether the iteration stopped at
# 1e-6, 1e-7 or 1e-10 of s_1^2, their singular values within 7e-14 of the exact ones,
# 2026-11-30): iterating past it costs a larger space and its eigendecomposition (2.9 s
# to 1e-10 against 2.3-2.7 s) and makes nothing more exact
LANCZOS_TOLERANCE = RESIDUAL_TOLERANCE / 10
LANCZOS_BLOCK = 16  # columns added to the Krylov space at a time
# convergence is checked (an eigendecomposition of the space's m x m projection) at sizes
# growing by this factor, so that the checks cost a small multiple of the last one, and
# the space overshoots the size that converges by at most this factor: a flat
# 4096-dimensional scatter that converged at 1216 vectors took 2.27-2.34 s at 1.15 and
# 2.50-2.94 s at 1.25 (2026-11-30; scipy's dsyevr for the top eigenpairs alone, with its
# own OpenBLAS beside numpy's, made it slower)
LANCZOS_GROWTH = 1.15
# a Gram-Schmidt pass is repeated where it left less than this share of a row's length
# (1 / sqrt(2): Kahan and Parlett's criterion)
REPASS_SHARE = 2**-0.5
MEMORY_ENTRIES = 2  # per-checkpoint results kept in memory per kind (a d x d each)
# float32 rows per product of the fast scatter: 16384 at 4096 (OpenBLAS's syrk over
# 128256 x 4096: 11.4 s in such blocks, 12.7 s in blocks of 4096 rows)
SCATTER_BLOCK_BYTES = 1 << 28
# float64 rows per block of a pass that multiplies whole blocks (the exact scatter, the
# whitening's moments, the fast path's Rayleigh-Ritz step): 4096 at d_model = 4096; at
# most a PRODUCT_BLOCK_SHARE-th of the rows, so that no block is a float64 copy of W
PRODUCT_BLOCK_BYTES = 1 << 27
PRODUCT_BLOCK_SHARE = 16
# rows the Rayleigh-Ritz pass widens, centers and multiplies at a time in each thread,
# while they are in its cache (8 MB of float64 at d_model = 4096): its first version
# took 1.99-2.02 s over 128256 x 4096 bf16 rows at 256, 2.10-2.27 s at 128 and
# 2.09-2.10 s at 512 (2026-11-30)
FUSED_ROWS = 256
# float64 rows per block that whitening multiplies by its d x d transform, which each
# block reads whole (134 MB at d_model = 4096): 1024 rows there. Whitening 8192 x 4096
# bf16 rows took 4.15 s in blocks of 64, 2.9 s in blocks of 1024 (BLAS's float64 speed)
APPLY_BLOCK_BYTES = 1 << 25


class Geometry(StrEnum):
    """The geometry an analysis runs in (``analysis.geometry``): ``euclidean`` (the rows
    as they are) or ``whitened`` (``fit_whitening``'s causal inner product). Members are
    named as their values because OmegaConf matches and lists an enum by name."""

    euclidean = "euclidean"
    whitened = "whitened"


def normalize_rows(W: Any, dtype: Any = np.float64) -> np.ndarray:
    """A copy of ``W`` (``(d_vocab, d_model)``) with unit-L2 rows, as debiaswe does;
    all-zero rows stay zero. Computed in float64 a block at a time and stored as
    ``dtype``. ``unit_rows`` gives the same rows without storing them."""
    _check_matrix(W)
    unit = np.empty(W.shape, dtype=dtype)
    for rows, block in row_blocks(W):
        block = block.astype(np.float64)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        unit[rows] = block / np.where(norms == 0, 1.0, norms)
    return unit


def unit_rows(W: Any) -> UnitRows:
    """``W``'s rows scaled to unit L2 norm where they are read (``embsvd.io.rows.UnitRows``):
    float64 rows equal to ``normalize_rows(W)``'s, without a copy of ``W``."""
    _check_matrix(W)
    return W if isinstance(W, UnitRows) else UnitRows(W)


def ledoit_wolf_shrinkage(X: Any, *, block_rows: int | None = BLOCK_ROWS) -> float:
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

    def apply(
        self, W: Any, *, block_rows: int | None = None, dtype: Any = np.float64
    ) -> np.ndarray:
        """Whiten every row of ``W`` (``(d_vocab, d_model)``): a new matrix of the same
        shape, computed in float64 a block at a time (``block_rows``; by default as many
        as ``APPLY_BLOCK_BYTES`` of float64 hold) and stored as ``dtype`` (float32 halves
        a large vocabulary's copy, at float32's rounding of each value)."""
        _check_matrix(W)
        if W.shape[1] != len(self.mean):
            raise ValueError(
                f"W: whitening was fitted on d_model={len(self.mean)}, got shape {W.shape}"
            )
        whitened = np.empty(W.shape, dtype=dtype)
        for rows, block in row_blocks(W, block_rows_for(W, block_rows, APPLY_BLOCK_BYTES)):
            whitened[rows] = (block.astype(np.float64) - self.mean) @ self.transform
        return whitened


def fit_whitening(
    W: Any,
    rows: np.ndarray | None = None,
    shrinkage: float | None = None,
    *,
    block_rows: int | None = BLOCK_ROWS,
) -> Whitening:
    """Whitening from the MLE (1/n) covariance ``S`` of ``W[rows]`` (all rows when None),
    shrunk to ``(1 - a) S + a trace(S)/d I``; ``a = shrinkage``, or Ledoit-Wolf's when None.

    Exact: the scatter in float64 and a full eigendecomposition, since the inverse square
    root magnifies an error in the small eigenvalues by the condition number (the global
    SVD's float32 products would not do here). One-off per checkpoint with
    ``cached_whitening``.
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
    del scatter, S  # d x d each: 134 MB at d_model = 4096
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


def checkpoint_whitening(
    checkpoint: Checkpoint, W: Any, *, normalize_rows: bool, shrinkage: float | None
) -> Whitening:
    """The whitening of ``checkpoint``'s matrix ``W`` (unit rows already, with
    ``normalize_rows``), estimated over its ordinary rows: ``cached_whitening`` at the one
    cache file those settings name, under ``<cache>/whitening/``, so the whitened
    geometry and the concept axes' whitened cosines share one fit."""
    rows = checkpoint.ordinary_rows
    rows_digest = hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]
    settings = {
        "weights_sha256": checkpoint.weights_sha256,
        "tensor_key": checkpoint.tensor_key,
        "rows": rows_digest,
        "normalize_rows": normalize_rows,
        "whitening_shrinkage": shrinkage,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    cache_file = (checkpoint.cache_dir or default_cache_dir()) / "whitening" / f"{digest}.npz"
    return cached_whitening(W, cache_file, rows=rows, shrinkage=shrinkage)


def cached_whitening(
    W: Any,
    cache_file: Path,
    *,
    rows: np.ndarray | None = None,
    shrinkage: float | None = None,
) -> Whitening:
    """``fit_whitening`` read from or written to ``cache_file`` (``.npz``), and kept in
    memory for this process while the file is unchanged.

    As ``cached_global_svd``: a file is used only when it matches its checksum record and
    the shape, row count and requested shrinkage it records; its name must encode
    anything else the result depends on (the checkpoint's content, which rows, whether
    rows were normalized). A stale, damaged or unreadable file is recomputed and replaced
    atomically.
    """
    _check_matrix(W)
    n_rows = len(W) if rows is None else len(_row_index(W, rows))
    key = {
        "d_vocab": len(W),
        "d_model": W.shape[1],
        "n_rows": n_rows,
        # the requested value: -1 for Ledoit-Wolf's (the fitted one is stored beside it)
        "requested_shrinkage": -1.0 if shrinkage is None else float(shrinkage),
    }

    def compute() -> Whitening:
        return fit_whitening(W, rows=rows, shrinkage=shrinkage)

    def load(cached: Any) -> Whitening:
        return Whitening(
            mean=cached["mean"],
            transform=cached["transform"],
            shrinkage=float(cached["shrinkage"]),
            n_rows=n_rows,
        )

    def save(whitening: Whitening) -> dict[str, Any]:
        return {
            "mean": whitening.mean,
            "transform": whitening.transform,
            "shrinkage": whitening.shrinkage,
        }

    return _cached(_WHITENINGS, Path(cache_file), key, compute, load, save)


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


GLOBAL_SVD_METHODS = ("auto", "exact", "fast")
# what the cached global SVD's file name encodes of how it was computed: a change here
# makes every cache entry of an older method stale
GLOBAL_SVD_METHOD = (
    "scatter eigendecomposition; float32 products, Lanczos to a tenth of the check "
    "and Rayleigh-Ritz when large"
)


def global_svd(
    W: Any,
    n_components: int,
    *,
    rows: np.ndarray | None = None,
    block_rows: int | None = BLOCK_ROWS,
    method: str = "auto",
) -> GlobalSVD:
    """The top ``n_components`` of the SVD of ``W[rows]`` minus its column mean, from the
    ``d_model x d_model`` scatter ``X^T X`` and its eigendecomposition, so that it is
    exact whatever the spectrum's decay (a randomized SVD returns an arbitrary subspace of
    a flat spectrum and misses the tail of a slowly decaying one).

    ``method``:

    - ``exact``: the scatter in float64 (row blocks) and a full eigendecomposition;
    - ``fast``: for a large vocabulary, where the exact scatter and eigendecomposition
      took 44 s at 128256 x 4096. The scatter's products run in float32 (a block of rows,
      centered, then summed in float64): it differs from the float64 scatter by about
      1e-6 of its largest eigenvalue (1.3e-6 in the 2-norm at 128256 x 4096, mostly the
      float32 sums of its diagonal), far below a bfloat16 embedding's own resolution (3
      significant digits). Its top eigenpairs come from a block Lanczos iteration (above
      ``FULL_EIGH_MAX_D``; a full eigendecomposition below, or where the iteration does
      not converge), to a residual of ``LANCZOS_TOLERANCE`` (1e-7) of ``s_1^2`` against
      the float32 scatter. Then one pass over ``W`` in float64 multiplies the exact scatter
      with those axes: the Rayleigh-Ritz step in their span gives singular values equal
      to the exact path's to about 1e-12 (relative; tested to 1e-10), and every axis'
      residual ``r = ||S v - s^2 v||`` against the exact scatter ``S`` is checked: where
      one exceeds ``RESIDUAL_TOLERANCE`` (1e-6) of ``s_1^2``, the exact path runs
      instead, with a warning. An accepted axis lies within an angle ``r / gap`` of the
      exact one (Davis-Kahan; ``gap``: from ``s^2`` to the nearest other eigenvalue; ``r``
      is the float32 scatter's error along the axis plus at most the iteration's 1e-7:
      9.1e-8 of ``s_1^2`` at 128256 x 4096); the span of near-tied axes is as exact, the
      axes inside it are not determined by the data (nor by the exact path).
      ``total_variance`` is summed in float64 as the exact path's;
    - ``auto`` (default): ``fast`` when the scatter costs more than ``FAST_MIN_WORK``
      multiply-adds (``n * d_model^2``), else ``exact``.

    Signs follow :func:`embsvd.method.svd.svd_flip`, as the group SVD's do: the
    largest-|.| entry of each row of ``Vt`` is positive, so that reruns and other BLAS
    builds give the same axes.
    """
    if method not in GLOBAL_SVD_METHODS:
        raise ValueError(f"method: expected one of {GLOBAL_SVD_METHODS}, got {method!r}")
    A = _Centered(W, rows, block_rows)
    n, d = A.shape
    if not 1 <= n_components <= min(n, d):
        raise ValueError(
            f"analysis.n_global: expected 1 <= n_global <= min(rows, d_model) = {min(n, d)} "
            f"({n} rows, d_model={d}), got {n_components}"
        )
    if method == "auto":
        method = "fast" if n * d * d > FAST_MIN_WORK else "exact"
    if method == "fast":
        found = _fast_global_svd(A, n_components)
        if found is not None:
            return found
    scatter = A.scatter()
    eigenvalues, vectors = _top_eigenpairs(scatter, n_components, iterative=False)
    S = np.sqrt(np.clip(eigenvalues, 0.0, None))
    _, Vt = svd_flip(None, vectors.T)
    return GlobalSVD(A.mean, S, Vt, float(np.trace(scatter)), n)


def _fast_global_svd(A: _Centered, k: int) -> GlobalSVD | None:
    """``global_svd``'s fast path; ``None`` where its residual check fails."""
    scatter = A.scatter_float32()
    _, vectors = _top_eigenpairs(scatter, k, iterative=len(scatter) > FULL_EIGH_MAX_D)
    del scatter
    # Rayleigh-Ritz with the exact scatter: G = X^T (X V) in float64, one pass over W,
    # which also sums the squares of X for the total variance
    G, total = A.scatter_times(vectors)
    H = vectors.T @ G
    theta, Y = np.linalg.eigh((H + H.T) / 2)
    theta, Y = theta[::-1], Y[:, ::-1]
    axes, images = vectors @ Y, G @ Y
    residuals = np.linalg.norm(images - axes * theta, axis=0)
    worst = float(residuals.max() / max(theta[0], np.finfo(float).tiny))
    if not worst <= RESIDUAL_TOLERANCE:
        log.warning(
            "global SVD: the fast path's axes have a residual of %.3g of the largest "
            "eigenvalue (more than %g); computing the exact scatter instead",
            worst,
            RESIDUAL_TOLERANCE,
        )
        return None
    _, Vt = svd_flip(None, axes.T)
    S = np.sqrt(np.clip(theta, 0.0, None))
    return GlobalSVD(A.mean, S, Vt, total, A.shape[0])


def _top_eigenpairs(S: np.ndarray, k: int, *, iterative: bool) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues of the symmetric ``S`` (descending) and their
    eigenvectors as columns: a full eigendecomposition, or (``iterative``) a block
    Lanczos iteration checked by its residuals, falling back to the full one."""
    if iterative and 8 * k <= len(S):
        found = _block_lanczos(S, k)
        if found is not None:
            return found
        log.info("global SVD: the Lanczos iteration did not converge; eigendecomposing")
    eigenvalues, vectors = np.linalg.eigh(S)
    top = np.argsort(eigenvalues)[::-1][:k]
    return eigenvalues[top], vectors[:, top]


def _block_lanczos(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The top ``k`` eigenpairs of the symmetric ``S`` (``d x d``) from a block Krylov
    space (blocks of ``LANCZOS_BLOCK`` vectors, fully reorthogonalized), grown until every
    Ritz pair's residual ``||S v - theta v||`` is at most ``LANCZOS_TOLERANCE`` of the
    largest eigenvalue; ``None`` when the space reaches ``d / 2`` vectors first (a
    spectrum so flat that a full eigendecomposition is as cheap). Deterministic: the start
    block is drawn from a fixed seed."""
    d, width = len(S), LANCZOS_BLOCK
    rng = np.random.default_rng(0)
    most = d // 2 // width * width
    # the basis and its images under S as rows, so that every leading slice is contiguous
    basis, images = np.empty((most, d)), np.empty((most, d))
    # H = images @ basis.T (the basis' Rayleigh quotient, S projected), its first
    # ``known`` rows and columns filled: each check adds the entries the new vectors make
    projected, known = np.empty((most, most)), 0
    block, m = _orthonormal(rng.normal(size=(width, d)), basis[:0], rng), 0
    check = 2 * k + width  # the first size checked; then LANCZOS_GROWTH times larger
    while m + width <= most:
        basis[m : m + width], images[m : m + width] = block, block @ S
        m += width
        if m >= check or m + width > most:
            check = max(check + width, int(m * LANCZOS_GROWTH))
            projected[:m, known:m] = images[:m] @ basis[known:m].T
            projected[known:m, :known] = images[known:m] @ basis[:known].T
            known = m
            H = projected[:m, :m]
            theta, Yt = _largest_eigenpairs((H + H.T) / 2, k)
            vectors = Yt @ basis[:m]  # (k, d)
            residuals = np.linalg.norm(Yt @ images[:m] - theta[:, None] * vectors, axis=1)
            if residuals.max() <= LANCZOS_TOLERANCE * abs(theta[0]):
                return theta, vectors.T
        block = _orthonormal(images[m - width : m], basis[:m], rng, recent=2 * width)
    return None


def _largest_eigenpairs(H: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenvalues of the symmetric ``H`` (descending) and their
    eigenvectors as rows: LAPACK's ``dsyevr`` for those alone where numpy's OpenBLAS has
    it (``embsvd.io.openblas.dsyevr``; the top 50 of 1216 x 1216 in 0.13 s against
    ``eigh``'s 0.21 s, the Lanczos iteration on a flat 4096-dimensional scatter 2.24-2.53 s
    -> 1.95 s, 2026-11-30), else numpy's ``eigh``. Equal to rounding, eigenvectors up to
    sign."""
    lapack, n = openblas.dsyevr(), len(H)
    if lapack is not None and 1 <= k <= n:
        function, integer = lapack
        work = np.array(H, dtype=np.float64, order="F")  # dsyevr overwrites its input
        values, vectors = np.empty(n), np.empty((k, n))  # column-major n x k: rows here
        support, found = np.empty(2 * k, dtype=integer), integer(0)
        info = function(
            openblas.COLUMN_MAJOR, b"V", b"I", b"L", n, work.ctypes.data, n, 0.0, 0.0,
            n - k + 1, n, 0.0, ctypes.byref(found), values.ctypes.data, vectors.ctypes.data,
            n, support.ctypes.data,
        )  # fmt: skip
        if info == 0 and found.value == k:
            return values[:k][::-1].copy(), vectors[::-1].copy()
        log.warning("global SVD: LAPACK's dsyevr failed (info %d); using numpy's eigh", info)
    values, vectors = np.linalg.eigh(H)
    return values[::-1][:k], vectors[:, ::-1][:, :k].T


def _orthonormal(
    Z: np.ndarray, basis: np.ndarray, rng: np.random.Generator, recent: int = 0
) -> np.ndarray:
    """Orthonormal rows spanning the rows of ``Z`` minus their part in ``basis``
    (orthonormal rows); a row that vanishes there (the Krylov space is exhausted) is
    replaced by a random direction, so that the block keeps its size. ``recent``: the
    last rows of ``basis`` that hold most of ``Z`` (a Lanczos block's image lies mostly
    in the last two blocks), taken out first (``_without``)."""
    size = np.linalg.norm(Z, axis=1).max(initial=0.0)
    for _ in range(4):
        Z = _without(Z, basis, recent)
        Q, R = np.linalg.qr(Z.T)
        lost = np.abs(np.diag(R)) <= 1e-10 * size
        if not lost.any():
            return Q.T
        Z = Q.T.copy()
        Z[lost] = rng.normal(size=(int(lost.sum()), Z.shape[1]))
        size = max(size, np.linalg.norm(Z, axis=1).max())
    raise np.linalg.LinAlgError("the Krylov basis could not be extended")


def _without(Z: np.ndarray, basis: np.ndarray, recent: int = 0) -> np.ndarray:
    """The rows of ``Z`` less their part in ``basis`` (orthonormal rows), by classical
    Gram-Schmidt, to rounding: a second pass runs where the first took out more than
    ``1 - REPASS_SHARE`` of a row's length, for then the first pass's rounding errors are
    large against what is left; twice is then enough (Kahan, Parlett). ``recent`` rows at
    the end of ``basis`` are taken out first, so that a Lanczos block (mostly in the last
    two blocks) needs one pass over the whole basis, not two (the reorthogonalization of
    the 128256 x 4096 global components: half of its 1.0 s)."""
    if recent:
        Z = Z - (Z @ basis[-recent:].T) @ basis[-recent:]
    before = np.linalg.norm(Z, axis=1)
    Z = Z - (Z @ basis.T) @ basis
    if np.all(np.linalg.norm(Z, axis=1) >= REPASS_SHARE * before):
        return Z
    return Z - (Z @ basis.T) @ basis


def cached_global_svd(
    W: Any,
    n_components: int,
    cache_file: Path,
    *,
    rows: np.ndarray | None = None,
    method: str = "auto",
) -> GlobalSVD:
    """``global_svd`` read from or written to ``cache_file`` (``.npz``), and kept in
    memory for this process while the file is unchanged.

    A cache is used only when it matches its checksum record (``embsvd.io.cache``) and
    its ``n_components``, ``d_vocab``, ``d_model`` and row count match; the file name must
    encode anything else the result depends on (checkpoint, which rows, the method). A
    stale, damaged or unreadable file is recomputed and replaced atomically.
    """
    _check_matrix(W)
    n_rows = len(W) if rows is None else len(_row_index(W, rows))
    key = dict(n_components=n_components, d_vocab=len(W), d_model=W.shape[1], n_rows=n_rows)

    def compute() -> GlobalSVD:
        return global_svd(W, n_components, rows=rows, method=method)

    def load(cached: Any) -> GlobalSVD:
        arrays = {name: cached[name] for name in ("mean", "singular_values", "Vt")}
        total_variance = float(cached["total_variance"])
        return GlobalSVD(**arrays, total_variance=total_variance, n_rows=n_rows)

    def save(svd: GlobalSVD) -> dict[str, Any]:
        arrays = {name: getattr(svd, name) for name in ("mean", "singular_values", "Vt")}
        return {**arrays, "total_variance": svd.total_variance}

    return _cached(_GLOBAL_SVDS, Path(cache_file), key, compute, load, save)


# per-checkpoint results this process holds: cache file -> (its stamp, key, the result)
_GLOBAL_SVDS: OrderedDict[str, tuple] = OrderedDict()
_WHITENINGS: OrderedDict[str, tuple] = OrderedDict()


def _cached(
    memory: OrderedDict[str, tuple],
    cache_file: Path,
    key: dict[str, Any],
    compute: Callable[[], Any],
    load: Callable[[Any], Any],
    save: Callable[[Any], dict[str, Any]],
) -> Any:
    """The result stored in ``cache_file`` for ``key``: from memory while the file is the
    one this process read or wrote, else from the file when it is intact and holds
    ``key``, else ``compute()``d and written with its checksum record."""
    remembered = memory.get(str(cache_file))
    if remembered is not None and remembered[:2] == (_stamp(cache_file), key):
        memory.move_to_end(str(cache_file))
        return remembered[2]
    result = _load_npz(cache_file, key, load) if intact(cache_file) else None
    if result is None:
        # one process computes (minutes on a large vocabulary); the jobs of a sweep that
        # start together, on this machine or another node sharing the cache, wait for it
        with exclusive(cache_file, f"computing {cache_file.name} in {cache_file.parent}"):
            if intact(cache_file):
                result = _load_npz(cache_file, key, load)
            if result is None:
                result = compute()
                with written_with_checksum(cache_file) as stream:
                    np.savez(stream, **save(result), **key)
    memory[str(cache_file)] = (_stamp(cache_file), key, result)
    memory.move_to_end(str(cache_file))
    while len(memory) > MEMORY_ENTRIES:
        memory.popitem(last=False)
    return result


def _load_npz(cache_file: Path, key: dict[str, Any], load: Callable[[Any], Any]) -> Any:
    """``load(arrays)`` of ``cache_file`` if it was computed for ``key``, else None."""
    try:
        with np.load(cache_file, allow_pickle=False) as cached:
            found = {name: type(value)(cached[name]) for name, value in key.items()}
            if found != key:
                log.info("%s holds %s, not %s: recomputing", cache_file, found, key)
                return None
            return load(cached)
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile) as error:
        log.warning("%s is unreadable (%r): recomputing", cache_file, error)
        return None


def _stamp(file: Path) -> tuple[int, ...] | None:
    try:
        stat = os.stat(file)
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


def row_mean(W: Any, rows: np.ndarray | None = None) -> np.ndarray:
    """Column mean of ``W[rows]`` (all rows when None), ``(d_model,)``, in float64 blocks,
    read-only: computed once per matrix object and selection of rows (``MatrixMemo``: a
    sweep's runs on one checkpoint share it; 5 ms a run on 30522 x 384 before)."""
    key = value_digest(None if rows is None else np.asarray(rows))
    return _ROW_MEANS.get(W, key, lambda: read_only(_Centered(W, rows, BLOCK_ROWS).mean))


_ROW_MEANS = MatrixMemo()


def _check_matrix(W: Any) -> None:
    if len(W.shape) != 2:
        raise ValueError(f"W: expected a (d_vocab, d_model) matrix, got shape {W.shape}")


def _row_index(W: Any, rows: np.ndarray | None) -> np.ndarray | None:
    """``rows`` (indices or a boolean mask) as row numbers, or None for all rows."""
    if rows is None:
        return None
    index = np.arange(len(W))[rows]
    if len(index) == 0:
        raise ValueError(f"rows: selects none of the {len(W)} rows of W")
    return index


def _within(ids: slice | np.ndarray, rows: slice) -> slice | np.ndarray:
    """The rows of W that positions ``rows`` of a block are (``ids``: the block's)."""
    if isinstance(ids, slice):
        return slice(ids.start + rows.start, ids.start + rows.stop)
    return ids[rows]


@dataclass(frozen=True)
class _FusedBuffers:
    """A thread's rows in the Rayleigh-Ritz pass: float64, and float32 to widen a
    bfloat16 or float16 block through."""

    wide: np.ndarray
    narrow: np.ndarray | None


class _Centered:
    """``X = W[rows] - mean`` with ``mean`` the column mean of ``W[rows]``, read a block of
    ``block_rows`` rows at a time: ``W`` (an array, a memory-map, a ``BFloat16Rows``) is
    never copied whole."""

    def __init__(self, W: Any, rows: np.ndarray | None, block_rows: int | None) -> None:
        _check_matrix(W)
        self.W, self.index = W, _row_index(W, rows)
        self.block_rows = block_rows_for(W, block_rows)
        self.shape = (len(self.W) if self.index is None else len(self.index), self.W.shape[1])

    @functools.cached_property
    def mean(self) -> np.ndarray:
        """The column mean of ``W[rows]``, float64: a pass of its own, unless the float32
        scatter's pass (``scatter_float32``) found it first."""
        return self._column_sums() / self.shape[0]

    def _column_sums(self) -> np.ndarray:
        """The float64 column sums of ``W[rows]``: blocks of ``product_rows``, each summed
        by threads (``RowShares``), their sums added in the rows' order."""
        step = self.product_rows()
        narrow = self._narrow_buffer(step)
        total = np.zeros(self.shape[1])
        with RowShares() as shares:
            for part, ids, read in self._block_ids(step):

                def add(rows: slice, ids: slice | np.ndarray = ids) -> np.ndarray:
                    return self._read(ids, rows, narrow).sum(axis=0, dtype=np.float64)

                for partial in shares(part.stop - part.start, add):
                    total += partial
                release_rows(self.W, read)
        return total

    def _block_ids(self, step: int) -> Iterator[tuple[slice, slice | np.ndarray, slice]]:
        """``(positions, the rows of W they are, the span of W they lie in)`` for blocks of
        ``step`` positions: ``release_rows`` the span once a block is done with."""
        for start in range(0, self.shape[0], step):
            part = slice(start, min(start + step, self.shape[0]))
            if self.index is None:
                yield part, part, part
                continue
            ids = self.index[part]  # the rows' span (the ordinary rows: all but a few)
            read = slice(int(ids.min()), int(ids.max()) + 1)
            if read.stop - read.start == len(ids) and np.all(ids[1:] > ids[:-1]):
                ids = read  # consecutive rows: read as a slice, not gathered
            yield part, ids, read

    def _narrow_buffer(self, step: int) -> np.ndarray | None:
        """float32 rows a bfloat16 or float16 block is widened into, for blocks of ``step``."""
        if not isinstance(self.W, NarrowRows):
            return None
        return np.empty((min(step, self.shape[0]), self.shape[1]), dtype=np.float32)

    def _read(self, ids: slice | np.ndarray, rows: slice, into: np.ndarray | None) -> np.ndarray:
        """Rows ``rows`` of a block (``ids``: the block's rows of W), as read (float32 for
        bfloat16); a bfloat16 or float16 block widened into ``into[rows]`` where given."""
        ids = _within(ids, rows)
        if into is not None and isinstance(self.W, NarrowRows):
            return self._read_into(ids, into[rows])
        return np.asarray(self.W[ids])

    def _read_wide(
        self, ids: slice | np.ndarray, rows: slice, out: np.ndarray, narrow: np.ndarray | None
    ) -> None:
        """Rows ``rows`` of a block (``ids``: the block's rows of W) written into the
        float64 ``out`` (exact); a bfloat16 or float16 block through ``narrow`` (float32,
        at least as many rows)."""
        ids = _within(ids, rows)
        if narrow is not None and isinstance(self.W, NarrowRows):
            np.copyto(out, self._read_into(ids, narrow[: len(out)]))
        else:
            np.copyto(out, np.asarray(self.W[ids]))

    def raw_blocks(self, block_rows: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """``(positions, block of W[rows])``, as read (float32 for bfloat16), in blocks of
        ``block_rows`` (default: this matrix's); a mapped matrix's pages are released
        after each block (``embsvd.io.rows.release_rows``)."""
        for part, ids, read in self._block_ids(block_rows or self.block_rows):
            yield part, self._read(ids, slice(0, part.stop - part.start), None)
            release_rows(self.W, read)

    def _read_into(self, ids: slice | np.ndarray, out: np.ndarray) -> np.ndarray:
        """``W[ids]`` widened into ``out``; a gather's copy of the stored rows a block of
        rows at a time."""
        if isinstance(ids, slice):
            self.W.read_into(ids, out)
            return out
        for at in range(0, len(ids), self.block_rows):
            self.W.read_into(ids[at : at + self.block_rows], out[at : at + self.block_rows])
        return out

    def blocks(self, block_rows: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """``(positions, block of X)``, each a fresh float64 array."""
        for part, block in self.raw_blocks(block_rows):
            block = block.astype(np.float64)
            block -= self.mean
            yield part, block

    def product_rows(self) -> int:
        """Rows per block of a pass that multiplies whole blocks (``PRODUCT_BLOCK_BYTES``
        of float64): BLAS runs a product at its speed only on thousands of rows, and
        adding each block's ``d x d`` product to a sum costs as much as the product of a
        few dozen rows (the whitening's moments of 16384 x 4096 rows: 26 s in blocks of
        64, 3.9 s in blocks of 4096)."""
        share = -(-self.shape[0] // PRODUCT_BLOCK_SHARE)
        return max(self.block_rows, min(block_rows_for(self.W, None, PRODUCT_BLOCK_BYTES), share))

    def scatter(self) -> np.ndarray:
        """The scatter ``X^T X``, ``(d_model, d_model)``, in float64."""
        scatter = np.zeros((self.shape[1], self.shape[1]))
        for _, block in self.blocks(self.product_rows()):
            scatter += block.T @ block
        return scatter

    def scatter_float32(self) -> np.ndarray:
        """The scatter ``X^T X`` from float32 products, each block's summed into a float64
        matrix; the column mean (``mean``) from the same pass where not yet known.

        Rows are centered in float32 on a shift ``s`` (the first block's mean rounded to
        float32; ``mean`` rounded to float32 where already known): ``Y = X - e`` with
        ``e = s - mean`` the same for every row, so ``Y^T Y = X^T X + n e e^T`` (``X``'s
        rows sum to zero) and the shift is taken out exactly once the pass has summed the
        rows (in float64, as ``mean``'s own pass does: the 128256 x 4096 global
        components' separate pass of 0.46-0.65 s). ``s`` need only lie near the rows:
        float32's rounding is relative to ``|x - s|``. A bfloat16 or float32 block (exact
        in float32) is centered with one rounding per value, as a float64 one cast to
        float32 would be.
        """
        n, d = self.shape
        known = "mean" in self.__dict__
        shift = self.mean.astype(np.float32) if known else None
        scatter, product = np.zeros((d, d)), np.empty((d, d), dtype=np.float32)
        sums = np.zeros(d)
        # blocks of SCATTER_BLOCK_BYTES: a product of fewer rows runs below BLAS speed
        step = max(self.block_rows, SCATTER_BLOCK_BYTES // (4 * d))
        centered = np.empty((min(step, n), d), dtype=np.float32)
        with RowShares() as shares:  # read, summed and centered by threads; BLAS multiplies
            for part, ids, read in self._block_ids(step):
                Y = centered[: part.stop - part.start]

                def read_rows(
                    rows: slice, ids: slice | np.ndarray = ids, Y: np.ndarray = Y
                ) -> tuple[int, np.ndarray, np.ndarray | None]:
                    # a bfloat16 or float16 block is widened into Y itself (exact)
                    block = self._read(ids, rows, Y)
                    return rows.start, block, None if known else block.sum(axis=0, dtype=np.float64)

                found = shares(len(Y), read_rows)
                if not known:
                    block_sums = np.zeros(d)
                    for _, _, partial in found:  # in the rows' order: the same every time
                        block_sums += partial
                    sums += block_sums
                    if shift is None:  # the first block's mean
                        shift = (block_sums / len(Y)).astype(np.float32)
                blocks = {start: block for start, block, _ in found}  # the same shares

                def center(
                    rows: slice, Y: np.ndarray = Y, blocks: dict = blocks, by: np.ndarray = shift
                ) -> None:
                    # in the block's precision (float32, or float64 rounded once into Y)
                    block = blocks[rows.start]
                    by = by if block.dtype == np.float32 else by.astype(np.float64)
                    np.subtract(block, by, out=Y[rows])

                shares(len(Y), center)
                release_rows(self.W, read)
                np.matmul(Y.T, Y, out=product)  # numpy hands Y^T Y to BLAS syrk: half the work
                shares(d, lambda rows: np.add(scatter[rows], product[rows], out=scatter[rows]))
        if not known:
            self.mean = sums / n
        e = shift.astype(np.float64) - self.mean
        scatter -= n * np.outer(e, e)
        return scatter

    def scatter_times(self, V: np.ndarray) -> tuple[np.ndarray, float]:
        """``X^T (X V)`` for ``V`` (``d_model x k``) and ``sum(X**2)``, both in float64
        from the float64 rows of ``X`` (each row as ``blocks`` gives it: widened, then the
        mean subtracted), in blocks of ``product_rows`` (this pass over the ordinary rows
        of a 128256 x 4096 bfloat16 matrix: 8 s in ``blocks``' gathers of 64 rows, 2.9 s
        in slices of 4096).

        Each block's rows are split between threads (``RowShares``), and each thread
        works through its share ``FUSED_ROWS`` rows at a time while they are in its cache:
        widen, center, square, ``P = X V``, ``X^T P`` (BLAS one thread per call,
        ``embsvd.io.openblas.one_thread_each``), adding to a sum of its own; the shares'
        sums are added in the rows' order. So the widened rows are never written to memory
        and read back: the pass over 128256 x 4096 bfloat16 rows took 2.71-2.79 s widening
        whole blocks to float64 for BLAS's threads, 1.76-1.80 s so (2026-11-30, 2 cores).
        """
        n, d = self.shape
        G, squares = np.zeros((d, V.shape[1])), np.empty(n)
        chunk = min(FUSED_ROWS, n)
        with RowShares() as shares:
            spare: queue.SimpleQueue = queue.SimpleQueue()  # each running share takes one
            for _ in range(shares.workers):
                spare.put(_FusedBuffers(np.empty((chunk, d)), self._narrow_buffer(chunk)))
            with shares.one_blas_thread_each():
                for part, ids, read in self._block_ids(self.product_rows()):

                    def multiply(rows: slice, ids: slice | np.ndarray = ids, at: int = part.start):
                        buffers = spare.get()
                        try:
                            return self._times_share(ids, rows, V, buffers, squares[at:])
                        finally:
                            spare.put(buffers)

                    for sums in shares(part.stop - part.start, multiply):  # in the rows' order
                        G += sums
                    release_rows(self.W, read)
        return G, float(np.sum(squares))

    def _times_share(
        self,
        ids: slice | np.ndarray,
        rows: slice,
        V: np.ndarray,
        buffers: _FusedBuffers,
        squares: np.ndarray,
    ) -> np.ndarray:
        """``X^T (X V)`` over rows ``rows`` of a block (``ids``), ``len(buffers.wide)`` rows
        at a time; each row's ``|x|^2`` written to ``squares`` (at its position in the
        block)."""
        sums, chunk = np.zeros((self.shape[1], V.shape[1])), len(buffers.wide)
        for start in range(rows.start, rows.stop, chunk):
            span = slice(start, min(start + chunk, rows.stop))
            X = buffers.wide[: span.stop - span.start]
            self._read_wide(ids, span, X, buffers.narrow)
            X -= self.mean
            np.einsum("ij,ij->i", X, X, out=squares[span])
            sums += ((X @ V).T @ X).T  # OpenBLAS runs X^T P at 0.9x this speed
        return sums

    def moments(self) -> tuple[np.ndarray, float]:
        """The scatter ``X^T X``, ``(d_model, d_model)``, and ``sum_i |x_i|^4``."""
        scatter, fourth = np.zeros((self.shape[1], self.shape[1])), 0.0
        for _, block in self.blocks(self.product_rows()):
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
