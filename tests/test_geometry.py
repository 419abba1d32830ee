"""Whole-vocabulary geometry against independent computations (numpy, scikit-learn)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.covariance import ledoit_wolf_shrinkage as sklearn_ledoit_wolf_shrinkage
from sklearn.decomposition import PCA

import embsvd.method.geometry
from embsvd.method.geometry import (
    cached_global_svd,
    fit_whitening,
    global_svd,
    ledoit_wolf_shrinkage,
    normalize_rows,
)

RTOL = 1e-10


def with_covariance(covariance: np.ndarray, n: int, offset: float, seed: int = 0) -> np.ndarray:
    """``(n, d)`` rows whose 1/n sample covariance is exactly ``covariance`` and mean ``offset``."""
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, len(covariance)))
    # orthonormal columns in the span of centered columns: zero mean, Z^T Z / n = I
    Z = np.linalg.qr(Z - Z.mean(axis=0))[0] * np.sqrt(n)
    return Z @ np.linalg.cholesky(covariance).T + offset


@pytest.fixture
def covariance() -> np.ndarray:
    A = np.random.default_rng(1).normal(size=(6, 6))
    return A @ A.T + 0.5 * np.eye(6)


@pytest.fixture
def low_rank() -> np.ndarray:
    """2000 x 60: rank 8 with distinct singular values, small noise, offset from 0."""
    rng = np.random.default_rng(2)
    scales = np.array([50, 40, 30, 25, 20, 15, 10, 8])
    V = np.linalg.qr(rng.normal(size=(60, 8)))[0].T
    noise = 0.01 * rng.normal(size=(2000, 60))
    return (rng.normal(size=(2000, 8)) * scales) @ V + noise + 3.0


def centered_svd(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, S, Vt = np.linalg.svd(X - X.mean(axis=0), full_matrices=False)
    return S, Vt


def test_normalize_rows_gives_unit_rows_keeps_directions_and_zero_rows():
    W = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32) * 7
    W[2] = 0
    unit = normalize_rows(W)
    assert unit.dtype == np.float64
    norms = np.linalg.norm(unit, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 3, 4]], 1.0, rtol=1e-12)
    np.testing.assert_array_equal(unit[2], 0.0)
    np.testing.assert_allclose(unit * np.linalg.norm(W, axis=1, keepdims=True), W, rtol=1e-6)


@pytest.mark.parametrize("block_rows", [4096, 64, 7])
def test_ledoit_wolf_shrinkage_matches_sklearn(block_rows):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20)) + 5.0
    expected = sklearn_ledoit_wolf_shrinkage(X)
    assert 0 < expected < 1
    assert ledoit_wolf_shrinkage(X, block_rows=block_rows) == pytest.approx(expected, rel=RTOL)
    wide = rng.normal(size=(15, 40))  # n < d: heavy shrinkage
    assert ledoit_wolf_shrinkage(wide, block_rows=4) == pytest.approx(
        sklearn_ledoit_wolf_shrinkage(wide), rel=RTOL
    )
    assert ledoit_wolf_shrinkage(X[:, :1]) == 0.0


def test_whitening_inverts_a_known_covariance(covariance):
    X = with_covariance(covariance, n=400, offset=2.5)
    np.testing.assert_allclose(np.cov(X.T, bias=True), covariance, atol=1e-10)
    whitening = fit_whitening(X, shrinkage=0.0, block_rows=64)
    T = whitening.transform
    # the unique symmetric positive definite T with T @ T = covariance^-1 is covariance^(-1/2)
    np.testing.assert_array_equal(T, T.T)
    assert np.linalg.eigvalsh(T).min() > 0
    np.testing.assert_allclose(T @ T, np.linalg.inv(covariance), atol=1e-8)
    np.testing.assert_allclose(T @ covariance @ T, np.eye(6), atol=1e-8)
    assert whitening.shrinkage == 0.0 and whitening.n_rows == 400
    whitened = whitening.apply(X, block_rows=64)
    assert whitened.shape == X.shape and whitened.dtype == np.float64
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.cov(whitened.T, bias=True), np.eye(6), atol=1e-8)


def test_whitening_shrinks_towards_a_scaled_identity(covariance):
    X = with_covariance(covariance, n=400, offset=-1.0)
    a = 0.3
    shrunk = (1 - a) * covariance + a * np.trace(covariance) / 6 * np.eye(6)
    T = fit_whitening(X, shrinkage=a).transform
    assert np.linalg.eigvalsh(T).min() > 0
    np.testing.assert_allclose(T @ T, np.linalg.inv(shrunk), atol=1e-8)
    default = fit_whitening(X)
    assert default.shrinkage == pytest.approx(sklearn_ledoit_wolf_shrinkage(X), rel=RTOL)


def test_whitening_rows_restrict_the_estimate(covariance):
    X = with_covariance(covariance, n=400, offset=1.0)
    rows = np.arange(0, 400, 3)
    sub = fit_whitening(X, rows=rows, shrinkage=0.2)
    alone = fit_whitening(X[rows], shrinkage=0.2)
    assert sub.n_rows == len(rows)
    np.testing.assert_allclose(sub.mean, X[rows].mean(axis=0), rtol=RTOL)
    np.testing.assert_allclose(sub.transform, alone.transform, rtol=1e-9)
    mask = np.zeros(400, dtype=bool)
    mask[rows] = True
    np.testing.assert_allclose(fit_whitening(X, rows=mask, shrinkage=0.2).transform, sub.transform)


def test_whitening_rejects_a_singular_covariance_and_bad_shrinkage():
    rng = np.random.default_rng(4)
    rank_3 = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 6))
    with pytest.raises(ValueError, match=r"analysis\.whitening_shrinkage: .* singular .* > 0"):
        fit_whitening(rank_3, shrinkage=0.0)
    with pytest.raises(ValueError, match=r"analysis\.whitening_shrinkage: .* singular"):
        fit_whitening(rng.normal(size=(4, 6)), shrinkage=0.0)  # fewer rows than d_model
    assert np.isfinite(fit_whitening(rank_3, shrinkage=0.1).transform).all()
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"analysis\.whitening_shrinkage: .*\[0, 1\].*got"):
            fit_whitening(rank_3, shrinkage=bad)


def test_global_svd_matches_the_full_svd_of_the_centered_matrix(low_rank):
    svd = global_svd(low_rank, 5)
    S, Vt = centered_svd(low_rank)
    np.testing.assert_allclose(svd.singular_values, S[:5], rtol=1e-6)
    cosines = np.abs(np.sum(svd.Vt * Vt[:5], axis=1))
    assert cosines.min() > 0.9999
    np.testing.assert_allclose(svd.Vt @ svd.Vt.T, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(svd.mean, low_rank.mean(axis=0), rtol=RTOL)
    centered = low_rank - low_rank.mean(axis=0)
    assert svd.total_variance == pytest.approx(np.sum(centered**2), rel=RTOL)
    pca = PCA(n_components=5, svd_solver="full").fit(low_rank)
    np.testing.assert_allclose(svd.explained_variance_ratio, pca.explained_variance_ratio_, 1e-6)
    assert svd.n_rows == 2000
    # embsvd.method.svd.svd_flip: the largest-|.| entry of each row of Vt is positive
    assert np.all(svd.Vt[np.arange(5), np.argmax(np.abs(svd.Vt), axis=1)] > 0)


def test_global_svd_is_deterministic_and_exact_at_full_rank(low_rank):
    first, second = global_svd(low_rank, 5), global_svd(low_rank, 5)
    np.testing.assert_array_equal(first.singular_values, second.singular_values)
    np.testing.assert_array_equal(first.Vt, second.Vt)
    blocked = global_svd(low_rank, 5, block_rows=128)
    np.testing.assert_allclose(blocked.Vt, first.Vt, atol=1e-9)
    small = np.random.default_rng(5).normal(size=(30, 7))
    S, Vt = centered_svd(small)
    full = global_svd(small, 7)
    np.testing.assert_allclose(full.singular_values, S, rtol=1e-10)
    np.testing.assert_allclose(np.abs(full.Vt @ Vt.T), np.eye(7), atol=1e-8)


@pytest.mark.parametrize("decay", [0.0, 0.02])  # flat, as after whitening; slowly decaying
def test_global_svd_is_exact_where_a_randomized_svd_is_not(decay):
    """The whole top-50 subspace of a flat or slowly decaying spectrum: a sketch-based
    SVD returns an arbitrary subspace there; the covariance eigendecomposition does not."""
    rng = np.random.default_rng(11)
    d = 120
    scales = np.exp(-decay * np.arange(d))
    W = rng.normal(size=(3000, d)) * scales
    svd = global_svd(W, 50)
    S, Vt = centered_svd(W)
    np.testing.assert_allclose(svd.singular_values, S[:50], rtol=1e-9)
    # the span of the top 50 equals the exact one: every principal cosine is 1
    cosines = np.linalg.svd(svd.Vt @ Vt[:50].T, compute_uv=False)
    assert cosines.min() > 1 - 1e-8


def test_global_svd_rows_restrict_the_rows_used(low_rank):
    rows = np.arange(0, 2000, 3)
    svd = global_svd(low_rank, 4, rows=rows)
    S, Vt = centered_svd(low_rank[rows])
    assert svd.n_rows == len(rows)
    np.testing.assert_allclose(svd.mean, low_rank[rows].mean(axis=0), rtol=RTOL)
    np.testing.assert_allclose(svd.singular_values, S[:4], rtol=1e-6)
    assert np.abs(np.sum(svd.Vt * Vt[:4], axis=1)).min() > 0.9999
    centered = low_rank[rows] - low_rank[rows].mean(axis=0)
    assert svd.total_variance == pytest.approx(np.sum(centered**2), rel=RTOL)


@pytest.mark.parametrize(
    ("n_components", "rows", "allowed"),
    [(0, None, 60), (61, None, 60), (12, np.arange(10), 10)],
)
def test_global_svd_rejects_n_components_out_of_range(low_rank, n_components, rows, allowed):
    message = rf"analysis\.n_global: .* = {allowed} .*got {n_components}"
    with pytest.raises(ValueError, match=message):
        global_svd(low_rank, n_components, rows=rows)


def assert_same_svd(a, b):
    for name in ("mean", "singular_values", "Vt"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.total_variance, a.n_rows) == (b.total_variance, b.n_rows)


def refuse_to_compute(*args, **kwargs):
    raise AssertionError("global_svd was called although the cache should be used")


def test_cached_global_svd_writes_then_reuses_the_file(low_rank, tmp_path, monkeypatch):
    cache_file = tmp_path / "cache" / "global_svd.npz"
    first = cached_global_svd(low_rank, 5, cache_file)
    assert cache_file.is_file()
    assert sorted(path.name for path in cache_file.parent.iterdir()) == [
        "global_svd.npz",
        "global_svd.npz.checksum",  # its checksum record (embsvd.io.cache)
        "global_svd.npz.lock",  # held while it was computed (embsvd.io.cache.exclusive)
    ]
    assert_same_svd(first, global_svd(low_rank, 5))
    monkeypatch.setattr(embsvd.method.geometry, "global_svd", refuse_to_compute)
    assert_same_svd(cached_global_svd(low_rank, 5, cache_file), first)


def test_cached_global_svd_recomputes_a_stale_or_corrupt_file(
    low_rank, tmp_path, monkeypatch, caplog
):
    cache_file = tmp_path / "global_svd.npz"
    cached_global_svd(low_rank, 5, cache_file)
    three = cached_global_svd(low_rank, 3, cache_file)
    assert len(three.singular_values) == 3
    rows = np.arange(100)
    assert cached_global_svd(low_rank, 3, cache_file, rows=rows).n_rows == 100
    cache_file.write_bytes(b"not an npz file")
    with caplog.at_level(logging.WARNING):
        recomputed = cached_global_svd(low_rank, 3, cache_file)
    assert f"cache entry {cache_file} is damaged (15 bytes, its checksum record says" in (
        caplog.text
    )
    assert_same_svd(recomputed, three)
    monkeypatch.setattr(embsvd.method.geometry, "global_svd", refuse_to_compute)
    assert_same_svd(cached_global_svd(low_rank, 3, cache_file), three)


def test_cached_global_svd_recomputes_a_file_edited_in_place(low_rank, tmp_path, caplog):
    """Values changed inside the .npz (same size, still a valid file) are caught by the
    checksum, not served as the global SVD."""
    cache_file = tmp_path / "global_svd.npz"
    first = cached_global_svd(low_rank, 3, cache_file)
    size = cache_file.stat().st_size
    with np.load(cache_file) as stored:
        arrays = dict(stored)
    arrays["singular_values"] = arrays["singular_values"] * 2
    with open(cache_file, "r+b") as handle:  # np.savez stores arrays uncompressed
        np.savez(handle, **arrays)
    assert cache_file.stat().st_size == size
    with caplog.at_level(logging.WARNING):
        again = cached_global_svd(low_rank, 3, cache_file)
    assert f"cache entry {cache_file} is damaged" in caplog.text
    assert_same_svd(again, first)


def known_spectrum(singular_values: np.ndarray, n: int, seed: int = 0) -> tuple:
    """``(X, Vt)``: ``n`` rows offset from 0 whose centered singular values are exactly
    ``singular_values`` (one per column) along the orthonormal rows of ``Vt``."""
    rng = np.random.default_rng(seed)
    d = len(singular_values)
    Z = rng.normal(size=(n, d))
    Z = np.linalg.qr(Z - Z.mean(axis=0))[0]  # orthonormal, zero-mean columns
    Vt = np.linalg.qr(rng.normal(size=(d, d)))[0].T
    return (Z * singular_values) @ Vt + rng.normal(size=d), Vt


SPECTRA = {
    # well separated: a geometric decay
    "gaps": 100.0 * 0.93 ** np.arange(240),
    # near-ties: pairs 1e-9 apart, an exact triple, then a slow tail
    "near-ties": np.concatenate(
        [[50, 50 * (1 - 1e-9), 40, 30, 30, 30, 20, 20 * (1 - 1e-9)], 10 * 0.99 ** np.arange(232)]
    ),
    # flat: every direction the same, so no top subspace is preferred
    "flat": np.full(240, 7.0),
}


@pytest.mark.parametrize("spectrum", list(SPECTRA))
@pytest.mark.parametrize("lanczos", [True, False], ids=["lanczos", "eigh"])
def test_the_fast_global_svd_matches_the_exact_one_on_known_spectra(spectrum, lanczos, monkeypatch):
    """The fast path (float32 scatter, the top eigenpairs by block Lanczos or a full
    eigendecomposition, Rayleigh-Ritz with float64 products) against the float64 scatter's
    exact eigendecomposition: singular values to 1e-10; axes to 1e-10 where their
    singular value is separated from the others, and within a tie their span."""
    monkeypatch.setattr(embsvd.method.geometry, "FULL_EIGH_MAX_D", 64 if lanczos else 10_000)
    values = SPECTRA[spectrum]
    X, true_Vt = known_spectrum(values, n=3000)
    k = 20
    fast = global_svd(X, k, method="fast")
    exact = global_svd(X, k, method="exact")

    np.testing.assert_allclose(fast.singular_values, exact.singular_values, rtol=1e-10)
    np.testing.assert_allclose(fast.singular_values, values[:k], rtol=1e-10)
    np.testing.assert_allclose(fast.mean, exact.mean, rtol=1e-12)
    assert fast.total_variance == pytest.approx(exact.total_variance, rel=1e-12)
    np.testing.assert_allclose(fast.Vt @ fast.Vt.T, np.eye(k), atol=1e-12)
    assert np.all(fast.Vt[np.arange(k), np.argmax(np.abs(fast.Vt), axis=1)] > 0)
    # every axis is an eigenvector of the exact scatter to the checked residual
    centered = X - X.mean(axis=0)
    residual = centered.T @ (centered @ fast.Vt.T) - fast.Vt.T * fast.singular_values**2
    residual = np.linalg.norm(residual, axis=0)
    assert residual.max() <= embsvd.method.geometry.RESIDUAL_TOLERANCE * values[0] ** 2
    # group the components into clusters of (near-)equal singular values
    relative_gap = -np.diff(values) / values[0]
    cluster = np.concatenate([[0], np.cumsum(relative_gap > 1e-6)])
    for c in np.unique(cluster[:k]):
        members = np.flatnonzero(cluster[:k] == c)
        if (cluster == c).sum() > len(members):
            continue  # the tie runs past the k-th component: no top-k span to compare
        cosines = np.linalg.svd(fast.Vt[members] @ true_Vt[members].T, compute_uv=False)
        assert cosines.min() > 1 - 1e-10, (spectrum, members)
        if len(members) == 1:  # Davis-Kahan: sin(angle) <= residual / gap
            (i,) = members
            gap = np.delete(np.abs(values**2 - values[i] ** 2), i).min()
            along = fast.Vt[i] @ true_Vt[i]
            sine = np.linalg.norm(fast.Vt[i] - along * true_Vt[i])
            assert sine <= residual[i] / gap * (1 + 1e-6) + 1e-12, (spectrum, i)


@pytest.mark.parametrize(
    "values",
    [
        SPECTRA["gaps"] ** 2,
        np.concatenate([[50, 50, 40, 30, 30, 30, 20, 20], 10 * 0.9 ** np.arange(232)]),
    ],
    ids=["gaps", "ties"],
)
def test_the_block_lanczos_iteration_converges_to_the_top_eigenpairs(values):
    """The iteration itself, not the full eigendecomposition it falls back to: its
    projected matrix (filled a check at a time) gives the top eigenpairs of ``S``."""
    Q = np.linalg.qr(np.random.default_rng(5).normal(size=(len(values), len(values))))[0]
    S = (Q * values) @ Q.T
    k = 12
    found = embsvd.method.geometry._block_lanczos(S, k)
    assert found is not None
    theta, vectors = found
    np.testing.assert_allclose(theta, values[:k], rtol=1e-10)
    residual = np.linalg.norm(S @ vectors - vectors * theta, axis=0)
    assert residual.max() <= embsvd.method.geometry.LANCZOS_TOLERANCE * values[0]
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(k), atol=1e-12)


def test_the_largest_eigenpairs_alone_are_those_of_a_full_eigendecomposition(monkeypatch, caplog):
    """LAPACK's ``dsyevr`` for the top ``k`` (``embsvd.io.openblas.dsyevr``,
    through numpy's own OpenBLAS, found wherever numpy was built with it) against numpy's
    ``eigh``: the same eigenvalues, eigenvectors up to sign, a tie's span; the matrix left
    as it was; and where no such OpenBLAS is found, numpy's ``eigh`` itself."""
    from embsvd.io import openblas
    from embsvd.method.geometry import _largest_eigenpairs

    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    if blas == "scipy-openblas":  # numpy's wheels: the path the Lanczos checks take
        assert openblas.dsyevr() is not None
    rng = np.random.default_rng(4)
    Q = np.linalg.qr(rng.normal(size=(300, 300)))[0]
    values = np.concatenate([[9.0, 7.0, 7.0, 5.0], np.linspace(4.0, -3.0, 296)])
    H = (Q * values) @ Q.T
    before = H.copy()
    k = 6
    theta, Yt = _largest_eigenpairs(H, k)
    np.testing.assert_array_equal(H, before)
    np.testing.assert_allclose(theta, values[:k], rtol=1e-12)
    np.testing.assert_allclose(Yt @ Yt.T, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(Yt @ H, theta[:, None] * Yt, atol=1e-11)
    single = [0, 3, 4, 5]  # separated: the same axis up to sign
    np.testing.assert_allclose(np.abs(np.sum(Yt[single] * Q[:, single].T, axis=1)), 1, atol=1e-12)
    cosines = np.linalg.svd(Yt[1:3] @ Q[:, 1:3], compute_uv=False)  # the tie: its span
    np.testing.assert_allclose(cosines, 1, atol=1e-12)

    monkeypatch.setattr(openblas, "dsyevr", lambda: None)  # numpy without that OpenBLAS
    theta_eigh, Yt_eigh = _largest_eigenpairs(H, k)
    np.testing.assert_allclose(theta_eigh, theta, rtol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(Yt_eigh[single] * Yt[single], axis=1)), 1, atol=1e-12)
    # dsyevr reporting a failure: said, and numpy's eigh instead
    failing = (lambda *arguments: 3, openblas.ctypes.c_int64)
    monkeypatch.setattr(openblas, "dsyevr", lambda: failing)
    with caplog.at_level(logging.WARNING):
        theta_failed, _ = _largest_eigenpairs(H, k)
    assert "LAPACK's dsyevr failed (info 3); using numpy's eigh" in caplog.text
    np.testing.assert_array_equal(theta_failed, theta_eigh)


def test_the_lanczos_iteration_is_the_same_with_either_eigendecomposition(monkeypatch):
    from embsvd.io import openblas

    values = SPECTRA["gaps"] ** 2
    Q = np.linalg.qr(np.random.default_rng(6).normal(size=(len(values), len(values))))[0]
    S = (Q * values) @ Q.T
    theta, vectors = embsvd.method.geometry._block_lanczos(S, 12)
    monkeypatch.setattr(openblas, "dsyevr", lambda: None)
    theta_eigh, vectors_eigh = embsvd.method.geometry._block_lanczos(S, 12)
    np.testing.assert_allclose(theta_eigh, theta, rtol=1e-13)
    np.testing.assert_allclose(np.abs(np.sum(vectors * vectors_eigh, axis=0)), 1, atol=1e-10)


@pytest.mark.parametrize("recent", [0, 8])
def test_gram_schmidt_repeats_a_pass_only_where_the_first_cancelled_most(recent):
    """``_without``: rows almost in the basis' span (one pass leaves 1e-8 of them, with
    rounding errors of 1e-16 of what it took out: far from orthogonal) get a second pass
    and come out orthogonal to rounding; rows mostly outside it take one pass. With
    ``recent``, the last rows (where a Lanczos block lies mostly) are taken out first:
    rows mostly there need one pass over the whole basis."""
    from embsvd.method.geometry import _without

    rng = np.random.default_rng(11)
    basis = np.linalg.qr(rng.normal(size=(300, 40)))[0].T  # 40 orthonormal rows
    span = basis[-recent:] if recent else basis
    near = rng.normal(size=(4, len(span))) @ span + 1e-8 * rng.normal(size=(4, 300))
    far = rng.normal(size=(4, 300))

    def orthogonality(Z: np.ndarray) -> float:
        return float(np.abs(Z @ basis.T).max() / np.linalg.norm(Z, axis=1).min())

    def one_pass(Z: np.ndarray) -> np.ndarray:
        if recent:
            Z = Z - (Z @ basis[-recent:].T) @ basis[-recent:]
        return Z - (Z @ basis.T) @ basis

    once = one_pass(near)
    if not recent:
        assert orthogonality(once) > 1e-12  # the premise: one pass is not enough here
    assert orthogonality(_without(near, basis, recent)) <= 1e-14
    np.testing.assert_array_equal(_without(far, basis, recent), one_pass(far))  # one pass
    assert orthogonality(one_pass(far)) <= 1e-14
    if recent:  # taken out of the recent rows first, one pass was enough
        np.testing.assert_array_equal(_without(near, basis, recent), once)


def test_the_fast_global_svd_on_bfloat16_data_is_the_exact_one():
    X, _ = known_spectrum(100.0 * 0.95 ** np.arange(200), n=2500, seed=3)
    X = ((X.astype(np.float32).view(np.uint32) >> 16) << 16).view(np.float32)
    fast, exact = global_svd(X, 30, method="fast"), global_svd(X, 30, method="exact")
    np.testing.assert_allclose(fast.singular_values, exact.singular_values, rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(fast.Vt * exact.Vt, axis=1)), 1.0, atol=1e-10)
    assert fast.total_variance == pytest.approx(exact.total_variance, rel=1e-12)


def test_the_fast_global_svd_falls_back_to_the_exact_one_when_a_check_fails(
    low_rank, monkeypatch, caplog
):
    exact = global_svd(low_rank, 5, method="exact")
    monkeypatch.setattr(embsvd.method.geometry, "RESIDUAL_TOLERANCE", 0.0)
    with caplog.at_level(logging.WARNING):
        fallen_back = global_svd(low_rank, 5, method="fast")
    assert "fast path's axes have a residual of" in caplog.text
    assert "computing the exact scatter instead" in caplog.text
    assert_same_svd(fallen_back, exact)
    # a Lanczos iteration that does not converge gives way to a full eigendecomposition
    monkeypatch.undo()
    monkeypatch.setattr(embsvd.method.geometry, "FULL_EIGH_MAX_D", 16)
    monkeypatch.setattr(embsvd.method.geometry, "LANCZOS_TOLERANCE", 0.0)
    with caplog.at_level(logging.INFO):
        eigh = global_svd(low_rank, 5, method="fast")
    assert "the Lanczos iteration did not converge; eigendecomposing" in caplog.text
    np.testing.assert_allclose(eigh.singular_values, exact.singular_values, rtol=1e-10)


def test_the_global_svd_method_is_chosen_by_size_and_checked(low_rank, monkeypatch):
    calls = []
    real = embsvd.method.geometry._fast_global_svd
    monkeypatch.setattr(
        embsvd.method.geometry, "_fast_global_svd", lambda *a: calls.append(a) or real(*a)
    )
    global_svd(low_rank, 3)  # 2000 x 60^2: small, exact
    assert not calls
    monkeypatch.setattr(embsvd.method.geometry, "FAST_MIN_WORK", 2000 * 60 * 60 - 1)
    global_svd(low_rank, 3)
    assert len(calls) == 1
    with pytest.raises(ValueError, match=r"method: expected one of \('auto', 'exact', 'fast'\)"):
        global_svd(low_rank, 3, method="randomized")


PARALLEL_SVD = r"""
import sys, time
from pathlib import Path
import numpy as np
import embsvd.method.geometry as geometry

cache_file, barrier, parties = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
computed = geometry.global_svd

def counted(*args, **kwargs):  # leaves a mark for each computation this process does
    (cache_file.parent / f"computed.{sys.argv[4]}").touch()
    return computed(*args, **kwargs)

geometry.global_svd = counted
W = np.random.default_rng(0).normal(size=(400, 24))
barrier.mkdir(parents=True, exist_ok=True)
(barrier / sys.argv[4]).touch()
while len(list(barrier.iterdir())) < parties:  # every process starts at the same moment
    time.sleep(0.005)
svd = geometry.cached_global_svd(W, 5, cache_file)
print(repr(svd.singular_values.tolist()))
"""


@pytest.mark.slow
def test_jobs_starting_together_compute_the_global_components_once(tmp_path):
    """Parallel jobs (a joblib sweep, a cluster's nodes on a shared cache) that miss the
    cache at once: one computes under the entry's lock, the others wait and read it."""
    import subprocess
    import sys

    cache_file, parties = tmp_path / "cache" / "global.npz", 3
    cache_file.parent.mkdir()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PARALLEL_SVD,
                str(cache_file),
                str(tmp_path / "go"),
                str(parties),
                str(n),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(parties)
    ]
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0] * parties, outputs
    assert len({out for out, _ in outputs}) == 1  # the same components everywhere
    assert len(list(cache_file.parent.glob("computed.*"))) == 1  # computed once
    assert (cache_file.parent / "global.npz.lock").is_file()
