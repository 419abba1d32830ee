"""The matched random-group null: pools, matched draws, comparisons and Holm's correction."""

from __future__ import annotations

import numpy as np
import pytest

from embsvd.checks.matching import Matching, draw_groups, draw_matched, match_members, token_pools
from embsvd.checks.null import (
    compare,
    count_tests,
    holm,
    matched_null,
    null_mean_correlations,
    null_spectra,
    required_draws,
)
from embsvd.groups import KeptToken, TokenGroup
from embsvd.io.frequency import KINDS, TokenFrequencies
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import MeanReference, analyze

BPE_TOKENS = [
    "<s>",
    "Ġthe",
    "the",
    "Ġ7",
    "7",
    "Ġ1990",
    "ing",
    "Ġmp3",
    "Ġ,",
    "ĠÃ©",
    "Ġ",
    None,
    "ĠParis",
]
WORDPIECE_TOKENS = ["[CLS]", "the", "##ing", "7", "[unused0]", "paris", "mp3", ",", "é"]


def test_pools_keep_whole_ascii_words_and_numbers_per_form():
    pools = token_pools(BPE_TOKENS, excluded_ids={0}, marker="Ġ")
    initial = [BPE_TOKENS[i] for i in pools.ids["initial"]]
    bare = [BPE_TOKENS[i] for i in pools.ids["bare"]]
    assert initial == ["Ġthe", "Ġ7", "Ġ1990", "ĠParis"]  # not mixed, punctuation, bytes
    assert bare == ["the", "7", "ing"]
    assert "initial = 'Ġ' + surface" in pools.rule
    assert "bare 3, initial 4" in pools.rule


def test_wordpiece_has_one_pool_without_continuations_or_special_tokens():
    pools = token_pools(WORDPIECE_TOKENS, excluded_ids={0}, marker=None)
    assert [WORDPIECE_TOKENS[i] for i in pools.ids["bare"]] == ["the", "7", "paris"]
    assert pools.ids["initial"] is pools.ids["bare"]
    assert "no word-start marker" in pools.rule and "sizes bare 3" in pools.rule


def test_draws_are_matched_in_size_and_form_and_distinct():
    pools = {"bare": np.arange(0, 50), "initial": np.arange(100, 120)}
    draws = draw_groups(
        pools, ["initial", "bare", "bare", "initial", "bare"], 200, np.random.default_rng(0)
    )
    assert draws.shape == (200, 5)
    assert all(len(set(row)) == 5 for row in draws)
    assert ((draws >= 100).sum(axis=1) == 2).all()  # two initial tokens in every draw
    assert ((draws < 50).sum(axis=1) == 3).all()
    assert len(np.unique(draws)) > 60  # not the same few tokens


def test_a_pool_too_small_for_the_group_is_a_clear_error():
    pools = {"bare": np.arange(3), "initial": np.arange(10, 40)}
    with pytest.raises(
        ValueError, match="analysis.n_null: the bare candidate pool has 3 tokens, fewer than the 4"
    ):
        draw_groups(pools, ["bare"] * 4, 5, np.random.default_rng(0))


def test_null_spectra_equal_svds_of_the_drawn_submatrices():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(40, 12)) + 0.5
    draws = np.stack([rng.choice(40, size=6, replace=False) for _ in range(230)])
    axes = np.linalg.qr(rng.normal(size=(12, 3)))[0].T  # 3 orthonormal rows
    for center in (True, False):
        spectra, shares = null_spectra(W, draws, center, axes)
        for row, share, ids in zip(spectra, shares, draws, strict=True):
            M = W[ids] - W[ids].mean(axis=0) if center else W[ids]
            # via the Gram matrix a zero singular value comes out as about sqrt(eps) * s_1
            np.testing.assert_allclose(row, np.linalg.svd(M, compute_uv=False), atol=1e-6)
            deviations = W[ids] - W[ids].mean(axis=0)  # the share is about the draw's mean
            inside = deviations @ axes.T @ axes
            assert share == pytest.approx(np.sum(inside**2) / np.sum(deviations**2))


def test_null_mean_correlations_are_numpys_correlations_row_by_row():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(60, 30)) + 0.3
    draws = [np.stack([rng.choice(60, size=k, replace=False) for _ in range(7)]) for k in (4, 5, 6)]
    reference = MeanReference(W.mean(axis=0), np.linalg.qr(rng.normal(size=(30, 2)))[0].T)
    found = null_mean_correlations(W, draws, reference)
    for variant in ("raw", "centered", "decorrelated"):
        for row in range(7):
            means = reference.variants(np.stack([W[d[row]].mean(axis=0) for d in draws]))[variant]
            np.testing.assert_allclose(found[variant][row], np.corrcoef(means), atol=1e-12)
    assert set(null_mean_correlations(W, draws, None)) == {"raw"}


def test_compare_gives_percentile_and_two_sided_permutation_p_value():
    null = np.arange(1.0, 101.0)  # 1, 2, ..., 100
    inside = compare(10.5, null)
    assert inside.percentile == 10.0  # 10 of 100 draws below
    assert inside.p_value == pytest.approx(2 * 11 / 101)  # (1 + 10 draws <= 10.5) / 101, doubled
    assert inside.mean == 50.5 and inside.sd == pytest.approx(np.std(null, ddof=1))
    beyond = compare(200.0, null)
    assert beyond.percentile == 100.0
    assert beyond.p_value == pytest.approx(2 / 101)  # never 0
    assert compare(-5.0, null).percentile == 0.0
    assert compare(50.5, null).p_value == 1.0  # capped


def test_holm_against_a_hand_worked_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(holm([0.2]), [0.2])  # one test: unchanged


# --- matched nulls: what random groups are matched on -----------------------------------


def frequencies_of(zipf, kinds) -> TokenFrequencies:
    return TokenFrequencies(
        np.asarray(zipf, dtype=float), np.array([KINDS.index(k) for k in kinds]), "test list"
    )


def group_of(name, ids, tokens) -> TokenGroup:
    kept = tuple(KeptToken(tokens[i], tokens[i], int(i)) for i in ids)
    return TokenGroup(name, tuple(k.word for k in kept), kept, ())


def norm_world(seed=0, d_vocab=2000, d_model=50):
    """Word tokens with a component along a shared direction that grows with the token id
    (from 1 to 6) and unit noise beside it, so that the norm grows with the id too (as a
    frequency or norm direction in real models)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(d_vocab, d_model))
    noise[:, 0] = 0.0
    W = 3.0 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    W[:, 0] = np.linspace(1, 6, d_vocab)
    tokens = ["".join(chr(97 + (i // 26**p) % 26) for p in (2, 1, 0)) for i in range(d_vocab)]
    frequencies = frequencies_of(rng.uniform(1, 6, d_vocab), ["word"] * d_vocab)
    return W, tokens, frequencies


def test_real_word_pools_keep_words_and_numerals_apart():
    tokens = ["Ġthe", "the", "Ġ7", "7", "Ġiscrim", "getLogger", "Ġ1990", "<s>"]
    kinds = ["word", "word", "numeral", "numeral", "other", "other", "numeral", "other"]
    pools = token_pools(tokens, {7}, "Ġ", frequencies_of([7.7, 7.7, 5, 5, 0, 0, 4, 0], kinds))
    assert [tokens[i] for i in pools.ids["initial"]] == ["Ġthe"]
    assert [tokens[i] for i in pools.numerals["initial"]] == ["Ġ7", "Ġ1990"]
    assert [tokens[i] for i in pools.ids["bare"]] == ["the"]  # getLogger: not a word
    assert "words of test list" in pools.rule and "initial 1 + 2 numerals" in pools.rule


def test_members_are_replaced_by_their_nearest_pool_tokens_never_themselves():
    W, tokens, frequencies = norm_world()
    norms = np.linalg.norm(W, axis=1)
    pools = token_pools(tokens, (), None, frequencies)
    group = group_of("g", range(1990, 2000), tokens)
    for match in ("norm", "frequency", "norm_frequency"):
        members = match_members(group, pools, Matching(match, norms, frequencies, 20))
        for kept, member in zip(group.kept, members, strict=True):
            assert len(member.candidates) == 20
            assert not set(member.candidates) & set(group.token_ids)
            if match == "norm":  # the 20 nearest in norm: the ids around the member's
                assert np.abs(norms[member.candidates] / norms[kept.token_id] - 1).max() < 0.02
                assert np.abs(member.candidates - kept.token_id).max() <= 30
            if match == "frequency":
                gap = np.abs(frequencies.zipf[member.candidates] - frequencies.zipf[kept.token_id])
                assert gap.max() < 0.2  # 20 of 2000 uniform on [1, 6]: within ~0.05 quantile
        draws = draw_matched(members, 300, np.random.default_rng(1))
        assert draws.shape == (300, 10)
        assert all(len(set(row)) == 10 for row in draws)  # no token twice in a draw
        for i, member in enumerate(members):
            assert set(draws[:, i]) <= set(member.candidates)


def test_a_member_unknown_to_the_frequency_list_is_matched_on_id_rank():
    W, tokens, frequencies = norm_world()
    zipf = frequencies.zipf.copy()
    zipf[1995] = 0.0  # not in the list
    frequencies = TokenFrequencies(zipf, frequencies.kind, frequencies.source)
    pools = token_pools(tokens, (), None, frequencies)
    group = group_of("g", range(1990, 2000), tokens)
    members = match_members(group, pools, Matching("frequency", None, frequencies, 20))
    unknown = members[5]
    assert not unknown.by_zipf and all(m.by_zipf for i, m in enumerate(members) if i != 5)
    assert np.abs(unknown.candidates - 1995).max() <= 30  # nearest ids, own members excluded


def test_a_norm_matched_null_is_calibrated_where_an_unmatched_one_is_not():
    """Two groups of large tokens: their means share the norm direction because their
    tokens are large. In worlds where the groups are exchangeable with their norm
    neighbours, the norm-matched null rejects about 5% of the time (two-sided, at 5%);
    the unmatched one, drawing small tokens as often as large, calls most of them unusual."""
    rejected = {"none": 0, "norm": 0}
    n_worlds = 40
    for seed in range(n_worlds):
        W, tokens, frequencies = norm_world(seed)
        norms = np.linalg.norm(W, axis=1)
        groups = {
            "big": group_of("big", range(1600, 1610), tokens),
            "also_big": group_of("also_big", range(1640, 1650), tokens),
        }
        vocab = Vocabulary.from_matrix(W, tokens)
        result = analyze(W, groups, "big", vocab, center=True, n_components=2, top_k=3)
        pools = token_pools(tokens, (), None, frequencies)
        for match in rejected:
            matching = Matching(match, norms, frequencies, 50)
            null = matched_null(
                W, groups, result, pools, 300, np.random.default_rng(seed), matching
            )
            rejected[match] += null.group_mean_corr["raw"]["also_big", "big"].p_value < 0.05
    assert rejected["norm"] / n_worlds <= 0.15
    assert rejected["none"] / n_worlds >= 0.5
    assert "norm: each member replaced by one of its 50 nearest" in null.match
    assert null.diagnostics["norm_ratio_median"] == pytest.approx(1.0, abs=0.02)


def test_random_groups_of_a_pair_never_share_a_token_nor_draw_a_member():
    W, tokens, frequencies = norm_world()
    norms = np.linalg.norm(W, axis=1)
    groups = {"a": group_of("a", range(1000, 1010), tokens)}
    groups["b"] = group_of("b", range(1010, 1020), tokens)  # neighbours: same candidates
    pools = token_pools(tokens, (), None, frequencies)
    matching = Matching("norm", norms, frequencies, 40)
    taken = list(range(1000, 1020))
    a = match_members(groups["a"], pools, matching, taken)
    b = match_members(groups["b"], pools, matching, taken)
    first = draw_matched(a, 500, np.random.default_rng(0))
    second = draw_matched(b, 500, np.random.default_rng(1), avoid=first)
    assert not any(set(x) & set(y) for x, y in zip(first, second, strict=True))
    assert not set(np.concatenate([first.ravel(), second.ravel()])) & set(taken)


def test_holm_covers_every_test_and_every_variant_of_the_run():
    W, tokens, frequencies = norm_world()
    groups = {
        name: group_of(name, ids, tokens)
        for name, ids in (("a", range(0, 10)), ("b", range(500, 510)), ("c", range(900, 908)))
    }
    axes = np.eye(W.shape[1])[:1]
    reference = MeanReference(W.mean(axis=0), axes)
    vocab = Vocabulary.from_matrix(W, tokens)
    result = analyze(W, groups, "a", vocab, n_components=2, top_k=3, reference=reference)
    assert set(result.mean_corr) == {"raw", "centered", "decorrelated"}
    pools = token_pools(tokens, (), None)
    null = matched_null(W, groups, result, pools, 200, np.random.default_rng(0), None, axes)
    tests = null.tests()
    assert null.n_tests == len(tests) == count_tests(3, result, True) == 3 + 3 * 3
    assert set(null.p_holm) == set(tests)
    assert "group_mean_corr_decorrelated/a__c" in tests and "global_share" in tests
    np.testing.assert_allclose(
        list(null.p_holm.values()), holm([c.p_value for c in tests.values()])
    )
    # each variant's observed r is the analysis', its null the same transform of the draws
    assert tests["group_mean_corr_centered/b__c"].observed == pytest.approx(
        np.corrcoef(W[500:510].mean(0) - reference.mean, W[900:908].mean(0) - reference.mean)[0, 1]
    )


def test_mean_reference_variants_subtract_the_mean_and_remove_the_axes():
    rng = np.random.default_rng(4)
    means = rng.normal(size=(5, 6))
    axes = np.linalg.qr(rng.normal(size=(6, 2)))[0].T
    mean = rng.normal(size=6)
    variants = MeanReference(mean, axes).variants(means)
    np.testing.assert_allclose(variants["raw"], means)
    np.testing.assert_allclose(variants["centered"], means - mean)
    np.testing.assert_allclose(variants["decorrelated"] @ axes.T, 0.0, atol=1e-12)
    residual = (means - mean) - (means - mean) @ axes.T @ axes
    np.testing.assert_allclose(variants["decorrelated"], residual)
    assert set(MeanReference(mean).variants(means)) == {"raw", "centered"}


@pytest.mark.parametrize(("n_tests", "alpha"), [(1, 0.05), (6, 0.05), (276, 0.05), (91, 0.01)])
def test_required_draws_let_holm_reach_alpha_and_no_fewer_do(n_tests, alpha):
    n = required_draws(n_tests, alpha)
    assert n_tests * 2 / (1 + n) < alpha  # the smallest p, corrected, is below alpha
    assert n_tests * 2 / n >= alpha  # one draw fewer would not be


def test_pools_too_small_for_the_runs_groups_are_a_clear_error():
    W, tokens, frequencies = norm_world(d_vocab=30)
    groups = {"a": group_of("a", range(0, 10), tokens), "b": group_of("b", range(10, 20), tokens)}
    result = analyze(W, groups, "a", Vocabulary.from_matrix(W, tokens), n_components=2, top_k=3)
    pools = token_pools(tokens, (), None, frequencies)
    matching = Matching("frequency", None, frequencies, 50)
    with pytest.raises(
        ValueError,
        match=r"analysis.null_match=frequency: the pools offer 10 distinct tokens near the "
        r"members of the run's 2 groups, which need 20 distinct ones per draw; raise "
        r"analysis.null_neighbours, or set analysis.null_match=none",
    ):
        matched_null(W, groups, result, pools, 50, np.random.default_rng(0), matching)
