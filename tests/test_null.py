"""The matched random-group null: pools, draws, comparisons and Holm's correction."""

from __future__ import annotations

import numpy as np
import pytest

from embsvd.null import (
    compare,
    draw_groups,
    draw_means,
    holm,
    null_spectra,
    rowwise_pearson,
    token_pools,
)

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
    assert "initial = 'Ġ' + word" in pools.rule
    assert "bare 3, initial 4" in pools.rule


def test_wordpiece_has_one_pool_without_continuations_or_special_tokens():
    pools = token_pools(WORDPIECE_TOKENS, excluded_ids={0}, marker=None)
    assert [WORDPIECE_TOKENS[i] for i in pools.ids["bare"]] == ["the", "7", "paris"]
    assert pools.ids["initial"] is pools.ids["bare"]
    assert "no word-start marker" in pools.rule and "size 3" in pools.rule


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
    for center in (True, False):
        spectra = null_spectra(W, draws, center)
        for row, ids in zip(spectra, draws, strict=True):
            M = W[ids] - W[ids].mean(axis=0) if center else W[ids]
            # via the Gram matrix a zero singular value comes out as about sqrt(eps) * s_1
            np.testing.assert_allclose(row, np.linalg.svd(M, compute_uv=False), atol=1e-6)
    np.testing.assert_allclose(draw_means(W, draws)[7], W[draws[7]].mean(axis=0))


def test_rowwise_pearson_is_numpys_correlation_row_by_row():
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(5, 30)), rng.normal(size=(5, 30))
    expected = [np.corrcoef(a, b)[0, 1] for a, b in zip(A, B, strict=True)]
    np.testing.assert_allclose(rowwise_pearson(A, B), expected)


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
