"""The delete-d jackknife of a group's spectrum and axes, against direct computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from embsvd.checks.stability import (
    _subsets,
    eigengap_ratio,
    largest_principal_angle,
    resample_stability,
)
from embsvd.method.analysis import decompose

N_ROWS, D_MODEL = 10, 16  # a group of ten words, as in the method's two groups
DELETED = 4  # ceil(sqrt(10))


def planted(rng: np.random.Generator, strengths: tuple[float, ...], n: int = N_ROWS) -> np.ndarray:
    """``(n, D_MODEL)`` unit noise plus ``strengths[j]`` times a random ``N(0, 1)`` coefficient
    along axis ``e_j`` of the space."""
    M = rng.normal(size=(n, D_MODEL))
    for j, strength in enumerate(strengths):
        M[:, j] += strength * rng.normal(size=n)
    return M


def test_ten_rows_give_all_210_subsets_of_six_when_allowed():
    M = np.random.default_rng(0).normal(size=(N_ROWS, D_MODEL))
    stability = resample_stability(M, decompose(M, True), 3, 210, np.random.default_rng(0))
    assert (stability.n_deleted, stability.n_resamples, stability.exhaustive) == (4, 210, True)
    kept, exhaustive = _subsets(N_ROWS, DELETED, 500, np.random.default_rng(0))
    assert exhaustive and kept.shape == (210, 6)
    assert len({tuple(row) for row in kept}) == 210


def test_fewer_resamples_draw_distinct_random_subsets_reproducibly():
    kept, exhaustive = _subsets(N_ROWS, DELETED, 100, np.random.default_rng(3))
    assert not exhaustive and kept.shape == (100, 6)
    assert len({tuple(row) for row in kept}) == 100  # distinct subsets
    assert all(len(set(row)) == 6 for row in kept)  # without replacement
    assert kept.min() >= 0 and kept.max() < N_ROWS
    np.testing.assert_array_equal(kept, _subsets(N_ROWS, DELETED, 100, np.random.default_rng(3))[0])
    M = np.random.default_rng(1).normal(size=(N_ROWS, D_MODEL))
    svd = decompose(M, center=True)
    first, again, other = (
        resample_stability(M, svd, 3, 100, np.random.default_rng(seed)) for seed in (7, 7, 8)
    )
    assert (first.n_resamples, first.exhaustive) == (100, False)
    np.testing.assert_array_equal(first.singular_value_lo, again.singular_value_lo)
    np.testing.assert_array_equal(first.axis_cos, again.axis_cos)
    assert not np.array_equal(first.singular_value_lo, other.singular_value_lo)


def test_method_names_the_jackknife_for_ten_centered_words():
    M = np.random.default_rng(2).normal(size=(N_ROWS, D_MODEL))
    stability = resample_stability(M, decompose(M, True), 3, 210, np.random.default_rng(0))
    assert stability.method == (
        "delete-4 jackknife over all 210 subsets of 6 rows; "
        "95% interval = estimate +- 1.96 se; components 1-5"
    )


@pytest.mark.parametrize("center", [True, False])
def test_variance_follows_the_delete_d_formula(center):
    M = np.random.default_rng(4).normal(size=(N_ROWS, D_MODEL))
    svd = decompose(M, center)
    stability = resample_stability(M, svd, 3, 210, np.random.default_rng(0))
    c = int(center)
    thetas = []  # s_1 of each subset at the per-row scale, one subset at a time
    for deleted in itertools.combinations(range(N_ROWS), DELETED):
        subset = np.delete(M, deleted, axis=0)
        if center:
            subset = subset - subset.mean(axis=0)
        thetas.append(np.linalg.svd(subset, compute_uv=False)[0] / np.sqrt(N_ROWS - DELETED - c))
    mean = sum(thetas) / len(thetas)
    variance = (N_ROWS - DELETED) / (DELETED * len(thetas)) * sum((t - mean) ** 2 for t in thetas)
    half_width = 1.96 * np.sqrt(variance) * np.sqrt(N_ROWS - c)
    s1 = svd.singular_values[0]
    assert stability.singular_value_lo[0] == pytest.approx(max(s1 - half_width, 0.0), rel=1e-10)
    assert stability.singular_value_hi[0] == pytest.approx(s1 + half_width, rel=1e-10)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("strengths", [(), (6.0,)], ids=["isotropic", "dominant-axis"])
def test_every_interval_holds_its_estimate_and_none_is_fake(center, strengths):
    rng = np.random.default_rng(5)
    n_intervals = N_ROWS - DELETED - int(center)
    for _ in range(200 if not strengths else 50):
        M = planted(rng, strengths)
        svd = decompose(M, center)
        stability = resample_stability(M, svd, 3, 210, rng)
        lo, hi = stability.singular_value_lo, stability.singular_value_hi
        assert len(lo) == len(hi) == n_intervals  # shorter than the spectrum of 10
        estimate = svd.singular_values[:n_intervals]
        assert np.all((lo <= estimate) & (estimate <= hi))
        assert np.all(hi - lo > 1e-6 * estimate[0])  # no 0-wide (or 0-valued) fake ones


def test_intervals_stop_at_d_model():
    M = np.random.default_rng(6).normal(size=(N_ROWS, 3))  # subsets of 6 rows, rank 3
    stability = resample_stability(M, decompose(M, False), 3, 210, np.random.default_rng(0))
    assert len(stability.singular_value_lo) == 3 and stability.method.endswith("components 1-3")


def test_large_group_intervals_cover_the_true_scale():
    # 400 rows of N(0, diag(9, 4, 1, 0.25, ...)): s_k / sqrt(n - 1) estimates sqrt(lambda_k)
    variances = np.array([9.0, 4.0, 1.0, 0.25, 0.25, 0.25])
    n, seeds = 400, range(50)
    covered = np.zeros(3)
    for seed in seeds:
        rng = np.random.default_rng(seed)
        M = rng.normal(size=(n, len(variances))) * np.sqrt(variances)
        stability = resample_stability(M, decompose(M, True), 2, 100, rng)
        assert stability.n_deleted == 20 and not stability.exhaustive
        lo, hi = stability.singular_value_lo[:3], stability.singular_value_hi[:3]
        truth = np.sqrt(variances[:3]) * np.sqrt(n - 1)
        covered += (lo <= truth) & (truth <= hi)
    assert np.all(covered / len(seeds) >= 0.85), covered


def test_a_planted_axis_is_stable_and_noise_is_not():
    rng = np.random.default_rng(8)
    strong = planted(rng, (30.0,))
    noise = planted(rng, ())
    for center in (True, False):
        stable = resample_stability(strong, decompose(strong, center), 3, 210, rng)
        unstable = resample_stability(noise, decompose(noise, center), 3, 210, rng)
        assert stable.axis_cos[0] > 0.99 and stable.loo_axis_cos_min[0] > 0.99
        assert unstable.axis_cos[0] < 0.9
        assert stable.axis_cos.shape == (3,) and stable.loo_axis_cos.shape == (N_ROWS, 3)


def test_a_planted_plane_keeps_its_subspace():
    rng = np.random.default_rng(9)
    M = planted(rng, (50.0, 50.0))  # two equal axes: each mixes, their plane does not
    stability = resample_stability(M, decompose(M, True), 2, 210, rng)
    assert stability.subspace_angle_deg < 5.0
    noise = planted(rng, ())
    assert resample_stability(noise, decompose(noise, True), 2, 210, rng).subspace_angle_deg > 30


def test_bad_sizes_are_refused_by_name():
    M = np.random.default_rng(10).normal(size=(N_ROWS, D_MODEL))
    with pytest.raises(ValueError, match="n_resamples: .* at least 2, got 1"):
        resample_stability(M, decompose(M, True), 3, 1, np.random.default_rng(0))
    tiny = M[:3]  # a delete-2 subset keeps 1 row: rank 0 once centered
    with pytest.raises(ValueError, match="M: a delete-2 subset of 3 rows keeps 1, rank 0 centered"):
        resample_stability(tiny, decompose(tiny, True), 1, 10, np.random.default_rng(0))


def test_eigengap_ratio_follows_norths_rule():
    # lambda = 16, 9, 1: errors lambda * sqrt(2 / 8) = 8, 4.5, 0.5
    ratio = eigengap_ratio(np.array([4.0, 3.0, 1.0]), n_samples=8)
    np.testing.assert_allclose(ratio, [7 / 8, 7 / 8, 8 / 4.5])
    assert list(ratio < 1) == [True, True, False]


def test_largest_principal_angle_of_a_rotated_plane():
    theta = np.radians(30)
    A = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    B = np.array([[1.0, 0, 0], [0, np.cos(theta), np.sin(theta)]])
    assert largest_principal_angle(A, B) == pytest.approx(30.0)
    assert largest_principal_angle(B[[1, 0]], B) == pytest.approx(0.0, abs=1e-6)  # order-free
