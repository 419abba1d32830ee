"""The analysis against independent computations (numpy, scikit-learn)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA, TruncatedSVD

from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import (
    analyze,
    decompose,
    extreme_positions,
    extreme_tokens,
    group_svds,
    pairwise,
    project,
    row_cosine,
)
from embsvd.method.svd import svd_flip
from tests.conftest import token_group

RTOL = 1e-10


@pytest.fixture
def cloud() -> np.ndarray:
    """A (10, 6) submatrix offset from the origin, like a group of embeddings."""
    rng = np.random.default_rng(1)
    return rng.normal(size=(10, 6)) * np.array([3, 2, 1.5, 1, 0.5, 0.2]) + 4.0


@pytest.mark.parametrize("center", [True, False])
def test_svd_reconstructs_the_submatrix(cloud, center):
    svd = decompose(cloud, center)
    rebuilt = svd.U @ np.diag(svd.singular_values) @ svd.Vt + (svd.mean if center else 0)
    np.testing.assert_allclose(rebuilt, cloud, rtol=RTOL, atol=1e-12)
    np.testing.assert_allclose(svd.Vt @ svd.Vt.T, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(svd.U.T @ svd.U, np.eye(6), atol=1e-12)
    assert np.all(np.diff(svd.singular_values) <= 0)


def test_centered_spectrum_matches_pca_and_ends_near_zero_when_rank_deficient(cloud):
    pca = PCA().fit(cloud)
    svd = decompose(cloud, center=True)
    np.testing.assert_allclose(svd.singular_values, pca.singular_values_, rtol=1e-9)
    np.testing.assert_allclose(
        svd.explained_variance_ratio, pca.explained_variance_ratio_, rtol=1e-9
    )
    # a centered n x d submatrix with n <= d has rank n - 1: its last singular value is ~0
    wide = np.random.default_rng(2).normal(size=(5, 20)) + 3
    S = decompose(wide, center=True).singular_values
    assert S[-1] / S[0] < 1e-12
    assert decompose(wide, center=False).singular_values[-1] / S[0] > 1e-3


def test_raw_singular_values_match_numpy_and_truncated_svd(cloud):
    svd = decompose(cloud, center=False)
    np.testing.assert_allclose(
        svd.singular_values, np.linalg.svd(cloud, compute_uv=False), rtol=RTOL
    )
    truncated = TruncatedSVD(n_components=3, algorithm="arpack").fit(cloud)
    np.testing.assert_allclose(svd.singular_values[:3], truncated.singular_values_, rtol=1e-8)
    # the raw first component absorbs the cloud's offset: its axis points along the mean
    cos = abs(svd.Vt[0] @ svd.mean) / np.linalg.norm(svd.mean)
    assert cos > 0.9
    power = svd.singular_values**2
    np.testing.assert_allclose(svd.explained_variance_ratio, power / np.sum(cloud**2), rtol=RTOL)


def test_signs_follow_svd_flip_and_do_not_depend_on_input_signs(cloud):
    svd = decompose(cloud, center=True)
    biggest = np.abs(svd.Vt).argmax(axis=1)
    assert np.all(svd.Vt[np.arange(len(svd.Vt)), biggest] > 0)
    # the same subspace found with opposite signs is flipped back to the same vectors
    U, S, Vt = np.linalg.svd(cloud - cloud.mean(axis=0), full_matrices=False)
    U2, Vt2 = svd_flip(-U, -Vt)
    np.testing.assert_allclose(Vt2, svd.Vt, atol=1e-12)
    np.testing.assert_allclose(U2, svd.U, atol=1e-12)
    np.testing.assert_array_equal(decompose(cloud, True).Vt, decompose(cloud.copy(), True).Vt)


@pytest.mark.parametrize("center", [True, False])
def test_projection_is_the_direct_computation(cloud, center):
    W_E = np.random.default_rng(4).normal(size=(50, 6))
    svd = decompose(cloud, center)
    got = project(W_E, svd, n_components=2)
    offset = cloud.mean(axis=0) if center else 0.0
    expected = np.stack([(W_E[i] - offset) @ svd.Vt[:2].T for i in range(50)])
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-12)
    assert got.shape == (50, 2)


def test_groups_svds_are_computed_once_per_matrix_rows_and_centering(cloud):
    W = np.vstack([cloud, cloud[::-1] * 2])
    ids = {"a": [0, 2, 4, 6, 8, 10, 12], "b": [1, 3, 5, 19]}
    first = group_svds(W, ids, center=True)
    assert list(first) == ["a", "b"]
    again = group_svds(W, {"a": tuple(ids["a"]), "b": np.array(ids["b"])}, center=True)
    assert again == first and again["a"] is first["a"]  # the same rows, by value
    for name, rows in ids.items():
        direct = decompose(W[rows], center=True)
        for field in ("mean", "U", "singular_values", "Vt"):
            np.testing.assert_array_equal(getattr(first[name], field), getattr(direct, field))
            assert not getattr(first[name], field).flags.writeable  # shared by later runs
    raw = group_svds(W, ids, center=False)
    assert raw["a"] is not first["a"] and not raw["a"].center
    np.testing.assert_array_equal(raw["b"].Vt, decompose(W[ids["b"]], center=False).Vt)
    assert group_svds(W, {"a": ids["a"]}, center=True)["a"] is not first["a"]  # other groups
    W[ids["a"]] *= 3  # changed in place since: decomposed again
    scaled = group_svds(W, ids, center=True)
    np.testing.assert_allclose(scaled["a"].singular_values, 3 * first["a"].singular_values)


def test_pairwise_statistics_match_numpy():
    rng = np.random.default_rng(5)
    vectors = {"b": rng.normal(size=9), "a": rng.normal(size=9) + 1, "c": rng.normal(size=9)}
    corr = pairwise(vectors, "pearson")
    assert corr.names == ("a", "b", "c")
    expected = np.corrcoef([vectors["a"], vectors["b"], vectors["c"]])
    np.testing.assert_allclose(corr.values, expected, rtol=1e-12)
    cos = pairwise(vectors, "cosine")
    a, b = vectors["a"], vectors["b"]
    assert cos.pairs()[0] == (
        "a",
        "b",
        pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b)),
    )
    assert [p[:2] for p in cos.pairs()] == [("a", "b"), ("a", "c"), ("b", "c")]
    with pytest.raises(
        ValueError, match="statistic: expected 'pearson' or 'cosine', got 'spearman'"
    ):
        pairwise(vectors, "spearman")


def test_extreme_tokens_skip_special_and_unnamed_rows_and_mark_the_group():
    projections = np.array([[9.0], [5.0], [4.0], [-1.0], [-7.0], [8.0], [0.0]])
    # byte-level BPE strings (marker Ġ): each is reported raw and as the text people read
    tokens = ["<|endoftext|>", "Ġfive", "four", "ĠĠ", "Ã¶m", None, "Ċ"]
    vocab = Vocabulary(tuple(tokens), np.ones(7), special_ids=frozenset([0]), marker="Ġ")
    found = extreme_tokens(projections, vocab, group_ids=[1, 4], top_k=2)
    top = [(t.rank, t.token, t.text, t.in_group) for t in found if t.side == "top"]
    bottom = [(t.rank, t.token, t.text, t.in_group) for t in found if t.side == "bottom"]
    # the special token and the unnamed row are skipped
    assert top == [(1, "Ġfive", "␣five", True), (2, "four", "four", False)]
    assert bottom == [(1, "Ã¶m", "öm", True), (2, "ĠĠ", "␣␣", False)]
    assert {t.projection for t in found} == {5.0, 4.0, -7.0, -1.0}
    assert vocab.unnamed_ids == {5}
    assert vocab.reportable_ids.tolist() == [1, 2, 3, 4, 6]
    assert not vocab.reportable_ids.flags.writeable  # computed once, shared by every run


def test_an_axis_ends_are_remembered_per_vocabulary_by_the_projections_values():
    rng = np.random.default_rng(4)
    projections = rng.standard_normal((300, 3))
    tokens = tuple(f"t{i}" for i in range(300))
    vocab = Vocabulary(tokens, np.ones(300), special_ids=frozenset([0]))
    found = extreme_tokens(projections, vocab, group_ids=[5, 6], top_k=4)
    # the first two axes alone, as a run with fewer components: the same tokens, shared
    fewer = extreme_tokens(projections[:, :2].copy(), vocab, group_ids=[6, 5], top_k=4)
    assert fewer == found[: len(fewer)] and fewer[0] is found[0]
    for t in found:  # each what a sort of that axis gives
        order = [i for i in np.argsort(-projections[:, t.component], kind="stable") if i != 0]
        if t.side == "top":
            assert t.token_id == order[t.rank - 1]
        assert t.projection == projections[t.token_id, t.component]
        assert t.in_group == (t.token_id in (5, 6))
    # another group, other ends' size, another vocabulary, other values: found again
    top_ids = {t.token_id for t in found if t.side == "top" and t.component == 0}
    other = extreme_tokens(projections, vocab, group_ids=sorted(top_ids), top_k=4)
    assert all(t.in_group for t in other if t.side == "top" and t.component == 0)
    assert len(extreme_tokens(projections, vocab, [5, 6], top_k=2)) == 3 * 2 * 2
    renamed = Vocabulary(tuple(f"u{i}" for i in range(300)), np.ones(300), frozenset([0]))
    assert extreme_tokens(projections, renamed, [5, 6], top_k=4)[0].token.startswith("u")
    moved = projections.copy()
    moved[:, 0] *= -1
    assert extreme_tokens(moved, vocab, [5, 6], 4)[0].token_id == found[4].token_id


@pytest.mark.parametrize("k", [1, 3, 20])
def test_the_ends_found_by_partition_are_those_of_a_stable_sort(k):
    """``extreme_positions`` against the whole stable argsort it replaces: values with
    many ties (at each end's threshold too), distinct values, fewer values than two
    ends, and a NaN (sorted last, as the sort puts it)."""
    rng = np.random.default_rng(29)
    cases = [
        rng.integers(-4, 5, size=500).astype(np.float64),  # ties everywhere
        rng.normal(size=3000),
        rng.normal(size=2 * k),
        np.r_[rng.normal(size=100), np.nan, rng.normal(size=50)],
        np.zeros(60),
    ]
    for values in cases:
        order = np.argsort(values, kind="stable")
        top, bottom = extreme_positions(values, k)
        np.testing.assert_array_equal(top, order[::-1][:k])
        np.testing.assert_array_equal(bottom, order[:k])


def test_row_cosine_against_direct_computation(cloud):
    for center in (True, False):
        rows = cloud - cloud.mean(axis=0) if center else cloud
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        np.testing.assert_allclose(row_cosine(cloud, center), unit @ unit.T, rtol=1e-12)


@pytest.mark.parametrize("center", [True, False])
def test_analyze_puts_the_pieces_together(center):
    rng = np.random.default_rng(6)
    W_E = rng.normal(size=(40, 6)) + 1.0
    groups = {
        "low": token_group("low", [2, 3, 4, 5]),
        "high": token_group("high", [20, 21, 22, 23, 24]),
    }
    tokens = [f"tok{i}" for i in range(40)]
    vocab = Vocabulary.from_matrix(W_E, tokens, special_ids=[0])
    result = analyze(W_E, groups, "low", vocab, center=center, n_components=2, top_k=3)
    svd = decompose(W_E[[2, 3, 4, 5]], center)
    np.testing.assert_allclose(result.svd.singular_values, svd.singular_values)
    np.testing.assert_allclose(result.projections, project(W_E, svd, 2))
    corr = np.corrcoef(W_E[[20, 21, 22, 23, 24]].mean(0), W_E[[2, 3, 4, 5]].mean(0))[0, 1]
    assert result.group_mean_corr.pairs() == [("high", "low", pytest.approx(corr))]
    high_axis = decompose(W_E[[20, 21, 22, 23, 24]], center).Vt[0]
    axis = np.corrcoef(high_axis, svd.Vt[0])[0, 1]
    assert result.axis_corr.pairs() == [("high", "low", pytest.approx(axis))]
    assert len(result.top_tokens) == 2 * 2 * 3
    best = int(np.argmax(np.delete(result.projections[:, 0], 0))) + 1  # id 0 is excluded
    assert result.top_tokens[0].token_id == best
    assert result.target_words == ("low2", "low3", "low4", "low5")
    assert result.row_cosine.shape == (4, 4)


def test_analyze_clamps_components_to_the_group_size_and_checks_inputs():
    W_E = np.random.default_rng(7).normal(size=(12, 5))
    groups = {"g": token_group("g", [1, 2, 3])}
    tokens = [str(i) for i in range(12)]
    vocab = Vocabulary.from_matrix(W_E, tokens)
    result = analyze(W_E, groups, "g", vocab, n_components=10, top_k=2)
    # 3 centered rows span 2 directions: a third axis would be rounding noise
    assert result.projections.shape == (12, 2)
    raw = analyze(W_E, groups, "g", vocab, center=False, n_components=10, top_k=2)
    assert raw.projections.shape == (12, 3)
    with pytest.raises(ValueError, match=r"target: 'h' is not one of the groups \['g'\]"):
        analyze(W_E, groups, "h", vocab)
    with pytest.raises(ValueError, match="vocab: 12 tokens for 11 rows of W"):
        analyze(W_E[:11], groups, "g", vocab)
    with pytest.raises(ValueError, match="token_strings: 3 strings for 12 rows of W"):
        Vocabulary.from_matrix(W_E, tokens[:3])


def test_clamping_components_is_logged(caplog):
    W_E = np.random.default_rng(8).normal(size=(12, 5))
    tokens = [str(i) for i in range(12)]
    with caplog.at_level("WARNING", logger="embsvd.method.analysis"):
        vocab = Vocabulary.from_matrix(W_E, tokens)
        analyze(W_E, {"g": token_group("g", [1, 2, 3])}, "g", vocab, n_components=4, top_k=1)
    assert "analysis.n_components=4 exceeds the 2 axes of g; projecting on 2" in caplog.text
