"""The checks on synthetic embeddings with planted structure, against direct computations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from embsvd.checks.confounds import rankdata, spearman, surface_length, token_confounds
from embsvd.checks.heldout import validate_held_out
from embsvd.checks.null import required_draws
from embsvd.checks.run import ChecksConfig, compare_with_global, run_checks
from embsvd.checks.stability import resample_stability
from embsvd.groups import KeptToken, TokenGroup
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import analyze, decompose
from embsvd.method.geometry import GlobalSVD, global_svd

D_MODEL = 16
D_VOCAB = 3000
AXIS = np.eye(D_MODEL)[3]  # the planted axis of group "ordered"
SHARED = np.eye(D_MODEL)[5]  # the planted direction both groups' means share


def word(i: int) -> str:
    """A distinct alphabetic token string per id (``aaa``, ``aab``, ...): pool material."""
    return "".join(chr(97 + (i // 26**p) % 26) for p in (2, 1, 0))


TOKENS = [word(i) for i in range(D_VOCAB)]


def group(name: str, ids, held_out=()) -> TokenGroup:
    kept = tuple(KeptToken(TOKENS[i], TOKENS[i], i) for i in ids)
    rest = tuple(KeptToken(TOKENS[i], TOKENS[i], i) for i in held_out)
    return TokenGroup(name, tuple(k.word for k in kept + rest), kept, (), rest)


def world(planted: bool, seed: int = 0):
    """Noise tokens; with ``planted``, tokens 0-15 ("ordered") lie along AXIS, ordered, and
    both groups' means sit on SHARED, so their group-mean r is high."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(D_VOCAB, D_MODEL))
    if planted:
        W[:16] = 8.0 * np.linspace(-1, 1, 16)[:, None] * AXIS + 0.05 * W[:16]
        W[:16] += 3.0 * SHARED
        W[100:110] += 3.0 * SHARED
    groups = {
        "ordered": group("ordered", range(10), held_out=range(10, 16)),
        "other": group("other", range(100, 110)),
    }
    return W, groups


def checked(W, groups, global_components=True, **settings):
    """The analysis of "ordered" and its checks; ``settings`` override the ``ChecksConfig``
    below, ``global_components=False`` leaves the global view out."""
    vocab = Vocabulary.from_matrix(W, TOKENS)
    result = analyze(W, groups, "ordered", vocab, center=True, n_components=3, top_k=5)
    # uniform draws: these worlds have no word frequencies (the matched null: test_null.py)
    config = dataclasses.replace(
        ChecksConfig(n_null=500, null_match="none", precision_k=6, n_global=8), **settings
    )
    components = global_svd(W, 8) if global_components else None
    checks = run_checks(W, groups, result, vocab, config, global_components=components)
    return result, checks


def test_planted_structure_is_extreme_in_the_null_recovered_and_stable():
    W, groups = world(planted=True)
    result, checks = checked(W, groups)
    assert abs(result.svd.Vt[0] @ AXIS) > 0.99
    assert checks.null.s1_share.percentile == 100.0 and checks.null.s1_share.p_value < 0.01
    pair = checks.null.group_mean_corr["raw"]["ordered", "other"]
    assert pair.observed > 0.6 and pair.percentile == 100.0
    assert checks.null.p_holm["group_mean_corr/ordered__other"] < 0.05  # Holm over 4 tests
    assert checks.stability.axis_cos[0] > 0.99 and checks.stability.loo_axis_cos_min[0] > 0.99
    assert not checks.stability.degenerate[0]  # one strong axis, the rest noise
    assert checks.heldout.subspace_rank_pct_median("leave_one_out") < 1.0
    assert checks.heldout.subspace_rank_pct_median("remainder") < 1.0
    assert checks.heldout.precision_at_k == 1.0  # the 6 closest tokens are the 6 held out
    # the ends of the ordered axis are extreme on it, its middle is not
    ranks = {w.word: w.axis_rank_pct[0] for w in checks.heldout.of("leave_one_out")}
    assert ranks[TOKENS[0]] < 1.0 and ranks[TOKENS[5]] > 10.0


def test_without_the_plant_the_statistics_fall_inside_the_null():
    W, groups = world(planted=False)
    _, checks = checked(W, groups)
    assert 2.5 < checks.null.s1_share.percentile < 97.5
    assert 2.5 < checks.null.effective_rank.percentile < 97.5
    assert checks.null.group_mean_corr["raw"]["ordered", "other"].p_value > 0.05
    assert checks.stability.axis_cos[0] < 0.9  # noise has no stable axis
    assert checks.heldout.subspace_rank_pct_median("remainder") > 20.0


def test_seeded_checks_repeat_and_another_seed_changes_only_the_draws():
    W, groups = world(planted=True)
    result, first = checked(W, groups, random_state=7)
    _, again = checked(W, groups, random_state=7)
    _, other = checked(W, groups, random_state=8)
    np.testing.assert_array_equal(first.null.singular_values, again.null.singular_values)
    np.testing.assert_array_equal(first.stability.axis_cos, again.stability.axis_cos)
    assert first.null.s1_share == again.null.s1_share
    # new draws: the null and sampled jackknife subsets move, the observed values do not
    assert first.null.s1_share.mean != other.null.s1_share.mean
    _, sampled = checked(W, groups, random_state=7, n_resamples=50)
    _, resampled = checked(W, groups, random_state=8, n_resamples=50)
    assert not np.array_equal(
        sampled.stability.singular_value_lo, resampled.stability.singular_value_lo
    )
    # all 210 subsets of 10 words (the default): the intervals do not depend on the seed
    assert first.stability.exhaustive
    np.testing.assert_array_equal(
        first.stability.singular_value_lo, other.stability.singular_value_lo
    )
    assert first.null.s1_share.observed == other.null.s1_share.observed
    pair = ("ordered", "other")
    observed = first.null.group_mean_corr["raw"][pair].observed
    assert observed == other.null.group_mean_corr["raw"][pair].observed
    assert first.heldout == other.heldout  # no randomness in held-out ranks
    np.testing.assert_array_equal(first.stability.loo_axis_cos, other.stability.loo_axis_cos)
    for name in ("norm", "token_id", "length"):
        np.testing.assert_array_equal(
            first.confounds.spearman[name], other.confounds.spearman[name]
        )
    # independent streams: fewer jackknife subsets leave the null's draws as they were
    _, fewer = checked(W, groups, random_state=7, n_resamples=20)
    np.testing.assert_array_equal(first.null.singular_values, fewer.null.singular_values)


def test_held_out_ranks_and_precision_against_a_direct_computation():
    rng = np.random.default_rng(3)
    W = rng.normal(size=(200, 6))
    W[:8] = W[:8] * 0.3 + 2.0  # a loose cluster
    g = group("g", range(5), held_out=range(5, 8))
    excluded = {199}
    validation = validate_held_out(
        W, g, center=True, n_components=2, excluded_ids=excluded, precision_k=5
    )
    for left_out in range(5):
        training = [i for i in range(5) if i != left_out]
        svd = decompose(W[training], center=True)
        V = svd.Vt[:2]
        deviations = W - svd.mean
        distances = np.linalg.norm(deviations - deviations @ V.T @ V, axis=1)
        ranked = [j for j in range(200) if j not in training and j not in excluded]
        placed = validation.of("leave_one_out")[left_out]
        expected = 100 * sum(distances[j] < distances[left_out] for j in ranked) / len(ranked)
        assert placed.subspace_rank_pct == pytest.approx(expected)
        assert placed.distance == pytest.approx(distances[left_out])
        for k in range(2):
            size = np.abs(deviations @ V[k])
            ahead = sum(size[j] > size[left_out] for j in ranked)
            assert placed.axis_rank_pct[k] == pytest.approx(100 * ahead / len(ranked))
    svd = decompose(W[:5], center=True)
    deviations = W - svd.mean
    distances = np.linalg.norm(deviations - deviations @ svd.Vt[:2].T @ svd.Vt[:2], axis=1)
    ranked = [j for j in range(5, 199)]
    closest = sorted(ranked, key=lambda j: distances[j])[:3]  # k = 5 capped at 3 held out
    assert validation.precision_k == 3
    assert validation.precision_at_k == pytest.approx(sum(j in (5, 6, 7) for j in closest) / 3)
    assert [w.word for w in validation.of("remainder")] == [TOKENS[i] for i in (5, 6, 7)]


def test_intervals_of_the_first_components_cover_their_estimates():
    W, groups = world(planted=True)
    M = W[groups["ordered"].token_ids]
    for center in (True, False):
        svd = decompose(M, center=center)
        stability = resample_stability(M, svd, 3, 500, np.random.default_rng(0))
        S = svd.singular_values[: len(stability.singular_value_lo)]
        assert (stability.singular_value_lo <= S).all() and (stability.singular_value_hi >= S).all()
        assert stability.loo_axis_cos.shape == (10, 3)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 5, size=300).astype(float)  # many ties, like token lengths
    Y = np.column_stack([x + rng.normal(size=300), rng.normal(size=300)])
    expected = [stats.spearmanr(x, Y[:, k]).statistic for k in range(2)]
    np.testing.assert_allclose(spearman(x, Y), expected)
    np.testing.assert_allclose(rankdata(x), stats.rankdata(x))
    assert np.isnan(spearman(np.ones(10), Y[:10])).all()


def test_an_axis_that_tracks_token_id_or_length_is_flagged():
    ids = np.arange(400)
    tokens = ["Ġ" + "a" * (1 + i % 7) for i in ids]
    projections = np.column_stack([ids + np.random.default_rng(5).normal(size=400), ids % 7])
    confounds = token_confounds(projections, np.ones(400) + ids % 3, tokens, ids, "Ġ", 0.3)
    assert confounds.spearman["token_id"][0] > 0.99
    assert confounds.spearman["length"][1] == pytest.approx(1.0)
    flagged = {(k, name) for k, name, _ in confounds.flagged()}
    assert (0, "token_id") in flagged and (1, "length") in flagged
    assert surface_length("Ġthe", "Ġ") == surface_length("##the", None) == 3


def test_global_view_against_a_known_global_basis():
    rng = np.random.default_rng(6)
    M = rng.normal(size=(10, 5))
    svd = decompose(M, center=True)
    basis = GlobalSVD(
        mean=np.zeros(5),
        singular_values=np.array([2.0, 1.0]),
        Vt=np.eye(5)[:2],
        total_variance=10.0,
        n_rows=100,
    )
    view = compare_with_global(M, svd, basis, n_components=2)
    deviations = M - M.mean(axis=0)
    assert view.group_variance_share == pytest.approx(
        (deviations[:, :2] ** 2).sum() / (deviations**2).sum()
    )
    np.testing.assert_allclose(view.axis_max_cos, np.abs(svd.Vt[:2, :2]).max(axis=1))
    np.testing.assert_allclose(view.axis_share, (svd.Vt[:2, :2] ** 2).sum(axis=1))


def test_switched_off_checks_are_absent():
    W, groups = world(planted=True)
    off = dict(n_null=0, n_resamples=0, heldout=False, confounds=False, n_global=0)
    _, checks = checked(W, groups, **off)
    assert dataclasses.astuple(checks) == (0, None, None, None, None, None, None, None)


def test_the_null_draws_what_holm_needs_to_reach_alpha():
    """Eight groups: 28 pairs and 2 spectrum statistics are 30 tests, and 500 draws
    would leave the smallest corrected p at 30 * 2 / 501 = 0.12: the null draws more."""
    W, _ = world(planted=True)
    groups = {f"g{k}": group(f"g{k}", range(100 * k, 100 * k + 10)) for k in range(1, 8)}
    groups["ordered"] = world(planted=True)[1]["ordered"]
    _, checks = checked(W, groups, global_components=False, n_resamples=0, heldout=False)
    null = checks.null
    assert null.n_tests == 2 + 28 == len(null.p_holm)
    assert null.n_null == required_draws(30, 0.05) == 1200 > 500
    assert null.n_tests * null.p_floor < 0.05
