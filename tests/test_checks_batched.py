"""The batched and blocked checks against their one-fit-at-a-time references
(``tests/reference_checks.py``, the implementations they replaced): held-out ranks from
one blocked pass over the vocabulary, confounds from per-vocabulary ranks, the jackknife
in the group's row space, the order test's permutation and sine tables.

Observed numbers agree to 1e-10 and ranks, counts and p-values exactly, on small random
matrices (blocks smaller than the vocabulary), on the bundled MiniLM and on a bfloat16
matrix read through ``BFloat16Rows``.
"""

from __future__ import annotations

import dataclasses
import tracemalloc

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

import tests.reference_checks as reference
from embsvd.checks import confounds as confounds_module
from embsvd.checks.confounds import property_ranks, rankdata, token_confounds
from embsvd.checks.heldout import HeldOutValidation, _StackedFits, validate_held_out
from embsvd.checks.order import _every_permutation, order_test
from embsvd.checks.stability import jackknife_rank, resample_stability
from embsvd.groups import KeptToken, TokenForms, TokenGroup, select_single_tokens
from embsvd.io.checkpoint import load_checkpoint
from embsvd.io.rows import BFloat16Rows, widen_bfloat16
from embsvd.method.analysis import (
    VocabularySpan,
    analyze,
    decompose,
    project,
    project_with_span,
    span_basis,
)
from embsvd.pipeline import with_group_files
from tests.test_config import compose_config

TOLERANCE = 1e-10


def held_out_group(kept, remainder=()) -> TokenGroup:
    """A group that kept the rows ``kept`` and holds out the rows ``remainder``."""
    tokens = tuple(KeptToken(f"w{i}", f"t{i}", int(i)) for i in (*kept, *remainder))
    kept_tokens, held = tokens[: len(kept)], tokens[len(kept) :]
    return TokenGroup("g", tuple(t.word for t in tokens), kept_tokens, (), held)


def assert_same_held_out(new: HeldOutValidation, old: HeldOutValidation) -> None:
    """Ranks and precision exactly, distances and the pool median to ``TOLERANCE``."""
    assert (new.n_components, new.precision_k, new.precision_at_k) == (
        old.n_components,
        old.precision_k,
        old.precision_at_k,
    )
    assert new.pool_rank_pct_median == old.pool_rank_pct_median
    assert len(new.words) == len(old.words)
    for placed, expected in zip(new.words, old.words, strict=True):
        assert (placed.word, placed.token_id, placed.variant) == (
            expected.word,
            expected.token_id,
            expected.variant,
        )
        assert placed.subspace_rank_pct == expected.subspace_rank_pct, placed.word
        assert placed.axis_rank_pct == expected.axis_rank_pct, placed.word
        assert placed.distance == pytest.approx(expected.distance, rel=TOLERANCE, abs=TOLERANCE)


def bfloat16_bits(W: np.ndarray) -> np.ndarray:
    """``W``'s float32 values cut to bfloat16 bit patterns (uint16)."""
    return (np.ascontiguousarray(W, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")


class Unwidened(BFloat16Rows):
    """A ``BFloat16Rows`` that fails where anything would copy it whole."""

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("np.asarray of a BFloat16Rows: the whole matrix was widened")


class Gathered(np.ndarray):
    """An array whose rows may be gathered (an index array) but not read in slices:
    ``row_blocks``' reads of a pass over the vocabulary fail."""

    def __getitem__(self, key):
        if isinstance(key, slice) or (isinstance(key, tuple) and isinstance(key[0], slice)):
            raise AssertionError(f"a pass over the vocabulary read rows {key}")
        return np.asarray(self)[key]


def with_span(W, group: TokenGroup, *, center: bool, n_components: int, **settings):
    """``validate_held_out`` given the span the analysis' projection pass read (on the
    kept words' fit, projected on as many axes as the held-out fits have); also returns
    the span (``None`` where the analysis kept none)."""
    svd = decompose(np.asarray(W[list(group.token_ids)], dtype=np.float64), center)
    n_axes = min(n_components, len(group.token_ids) - int(center))
    # the analysis' own pass reads every row (a Gathered matrix's checks the held-out's)
    _, span = project_with_span(W.view(np.ndarray) if isinstance(W, Gathered) else W, svd, n_axes)
    found = validate_held_out(
        W, group, center=center, n_components=n_components, span=span, **settings
    )
    return found, span


# ---- held-out ranks


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("n_remainder", [0, 4])
def test_held_out_from_one_blocked_pass_equals_one_pass_per_fit(center, n_remainder):
    rng = np.random.default_rng(11 + n_remainder + int(center))
    # c < d_model in each: a subspace that spans the whole space puts every token at
    # distance 0, and their order is rounding noise in either implementation
    spans = 0
    for d_vocab, d_model, n_kept, n_components in [
        (97, 4, 4, 5),  # more components asked for than a leave-one-out fit has
        (300, 8, 7, 3),
        (513, 24, 10, 2),
        (1000, 5, 6, 1),
    ]:
        W = rng.normal(size=(d_vocab, d_model)).astype(np.float32)
        W[: n_kept + n_remainder] = 0.4 * W[: n_kept + n_remainder] + 1.5  # a loose cluster
        group = held_out_group(range(n_kept), range(n_kept, n_kept + n_remainder))
        excluded = {d_vocab - 1, d_vocab - 7, 40}
        settings = dict(
            center=center,
            n_components=n_components,
            excluded_ids=excluded,
            precision_k=3,
            pool_ids=np.arange(20, 90),
        )
        expected = reference.validate_held_out(W, group, **settings)
        for block_rows in (1, 7, 64, None):  # one row, several blocks, one block
            found = validate_held_out(W, group, block_rows=block_rows, **settings)
            assert_same_held_out(found, expected)
        assert len(found.of("remainder")) == n_remainder
        # scored from the analysis' span: no pass of its own, the same ranks (a span is
        # kept where it is at most half as wide as the model: the 513 x 24 case)
        from_span, span = with_span(W, group, **settings)
        assert_same_held_out(from_span, expected)
        if span is not None:
            spans += 1
            assert_same_held_out(with_span(W.view(Gathered), group, **settings)[0], expected)
    assert spans == 1


def test_copies_of_a_words_row_tie_with_it_in_every_block_layout():
    """A row equal to a held-out word's (its own, as a remainder word is ranked, or a
    duplicate token) is never ahead of it, as when every score came from one product,
    whichever block the copy and the word land in."""
    rng = np.random.default_rng(12)
    W = rng.normal(size=(400, 6))
    W[:12] = 0.3 * W[:12] + 2.0
    W[200:260] = W[9]  # copies of a remainder word
    W[300:320] = W[2]  # copies of a kept word
    group = held_out_group(range(8), range(8, 12))
    for center in (True, False):
        settings = dict(center=center, n_components=3, excluded_ids={399}, precision_k=5)
        expected = reference.validate_held_out(W, group, **settings)
        for block_rows in (1, 13, 250, 400):
            assert_same_held_out(
                validate_held_out(W, group, block_rows=block_rows, **settings), expected
            )
    # directly: the kept words' subspace, every row's distance by one formula, so that the
    # 60 copies of word 9 sit exactly at its distance and are not counted ahead of it
    svd = decompose(W[:8], center=True)
    deviations = W - svd.mean
    distances = np.linalg.norm(deviations - deviations @ svd.Vt[:3].T @ svd.Vt[:3], axis=1)
    ranked = np.setdiff1d(np.arange(399), np.arange(8))
    assert (distances[200:260] == distances[9]).all()
    centered = dict(center=True, n_components=3, excluded_ids={399}, precision_k=5)
    placed = {w.token_id: w for w in validate_held_out(W, group, block_rows=13, **centered).words}
    expected_pct = 100.0 * np.count_nonzero(distances[ranked] < distances[9]) / len(ranked)
    assert placed[9].subspace_rank_pct == pytest.approx(expected_pct)


def test_held_out_on_bfloat16_rows_equals_the_float32_matrix_of_the_same_values(tmp_path):
    rng = np.random.default_rng(13)
    values = rng.normal(size=(5000, 16)).astype(np.float32)
    values[:14] = 0.5 * values[:14] + 1.0
    bits = bfloat16_bits(values)
    widened = widen_bfloat16(bits)
    file = tmp_path / "w.bin"
    widened.tofile(file)
    mapped = np.memmap(file, dtype=np.float32, mode="r", shape=widened.shape)
    group = held_out_group(range(10), range(10, 14))
    settings = dict(
        center=True, n_components=3, excluded_ids={0}, precision_k=4, pool_ids=np.arange(30, 200)
    )
    expected = reference.validate_held_out(widened, group, **settings)
    on_array = validate_held_out(widened, group, block_rows=700, **settings)
    assert_same_held_out(on_array, expected)
    for W in (Unwidened(bits), mapped):
        assert validate_held_out(W, group, block_rows=700, **settings) == on_array


def test_held_out_on_bfloat16_rows_never_copies_the_matrix(tmp_path):
    """200000 x 128: a float32 copy would take 102 MB, a float64 one 205 MB; the pass
    holds a block of rows and their scores (``BLOCK_BYTES``) and a few vocabulary-sized
    vectors."""
    d_vocab, d_model = 200_000, 128
    rng = np.random.default_rng(14)
    file = tmp_path / "w.bf16"
    raw = np.memmap(file, dtype="<u2", mode="w+", shape=(d_vocab, d_model))
    for start in range(0, d_vocab, 50_000):  # written a slab at a time
        raw[start : start + 50_000] = bfloat16_bits(rng.normal(size=(50_000, d_model)))
    raw.flush()
    del raw
    W = Unwidened.mapped(file, 0, (d_vocab, d_model))
    group = held_out_group(range(10), range(10, 13))
    tracemalloc.start()
    try:
        validation = validate_held_out(
            W,
            group,
            center=True,
            n_components=3,
            excluded_ids={0},
            precision_k=3,
            pool_ids=np.arange(100, 5000),
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    float32_copy = d_vocab * d_model * 4
    assert peak < float32_copy / 3, f"peak {peak / 1e6:.1f} MB"
    assert len(validation.of("leave_one_out")) == 10 and validation.precision_k == 3


def stacked_fits(W: np.ndarray, group: TokenGroup, center: bool, n_components: int):
    """The fits ``validate_held_out`` scores together: one per left-out word, then all."""
    M = np.asarray(W[list(group.token_ids)], dtype=np.float64)
    n = len(M)
    c = min(n_components, n - 1 - int(center))
    fits = [decompose(np.delete(M, i, axis=0), center) for i in range(n)]
    return _StackedFits([*fits, decompose(M, center)], c)


@pytest.mark.parametrize("center", [True, False])
def test_held_out_with_duplicate_and_zero_kept_rows_equals_the_reference(center):
    """Kept rows that span fewer dimensions than there are words (a word's row repeated,
    a zero row): the null directions are dropped from the basis the vocabulary is read
    onto, and ranks still equal one pass per fit. Copies of the repeated row and more zero
    rows among the ranked tokens tie with the words whose rows they copy."""
    rng = np.random.default_rng(21 + int(center))
    d_vocab, d_model = 900, 40
    W = rng.normal(size=(d_vocab, d_model))
    W[:14] = 0.5 * W[:14] + 1.0
    W[5] = W[3]  # two kept words with one row
    W[7] = 0.0  # a kept word at the origin
    W[[100, 400, 700]] = W[3]
    W[[200, 500]] = 0.0
    group = held_out_group(range(10), range(10, 14))
    # the kept rows span 8 dimensions (10 words, one repeat, one zero): so does the basis
    stacked = stacked_fits(W, group, center, 3)
    assert stacked.coefficients is not None and stacked.read_width == 8
    np.testing.assert_allclose(
        stacked.reader @ stacked.coefficients, stacked.A, rtol=0, atol=TOLERANCE
    )
    settings = dict(
        center=center,
        n_components=3,
        excluded_ids={d_vocab - 1},
        precision_k=3,
        pool_ids=np.arange(20, 300),
    )
    expected = reference.validate_held_out(W, group, **settings)
    for block_rows in (1, 13, 250, None):
        assert_same_held_out(
            validate_held_out(W, group, block_rows=block_rows, **settings), expected
        )
    from_span, span = with_span(W.view(Gathered), group, **settings)
    assert span.basis.shape[1] == 8  # the null directions left out of the span too
    assert_same_held_out(from_span, expected)
    # a small group whose leave-one-out fits have fewer independent rows than axes: a fit
    # of a, a, 0, e has rank 2, and its third axis is whatever direction the SVD completed
    # it with, outside the kept rows' span; the basis then comes from the fits' offsets
    # and axes themselves, and holds that direction too
    small = held_out_group([3, 5, 7, 8, 9], range(10, 14))
    stacked = stacked_fits(W, small, center, 3)
    assert stacked.coefficients is not None
    assert stacked.read_width > np.linalg.matrix_rank(W[list(small.token_ids)])
    np.testing.assert_allclose(
        stacked.reader @ stacked.coefficients, stacked.A, rtol=0, atol=TOLERANCE
    )
    expected = reference.validate_held_out(W, small, **settings)
    for block_rows in (7, None):
        assert_same_held_out(
            validate_held_out(W, small, block_rows=block_rows, **settings), expected
        )
    # the analysis' span lacks the completed direction: the vocabulary is read again
    found, span = with_span(W, small, **settings)
    assert span is not None and span.basis.shape[1] < stacked.read_width
    assert_same_held_out(found, expected)
    with pytest.raises(AssertionError, match="a pass over the vocabulary"):
        with_span(W.view(Gathered), small, **settings)


@pytest.mark.parametrize("center", [True, False])
def test_a_group_wider_than_the_model_is_scored_without_a_basis(center):
    """60 words in 32 dimensions span the whole space: a basis would be ``d_model`` wide
    and save nothing, so each block is multiplied by the fits' offsets and axes directly,
    with the same ranks."""
    rng = np.random.default_rng(23 + int(center))
    d_vocab, d_model = 1200, 32
    W = rng.normal(size=(d_vocab, d_model)).astype(np.float32)
    W[:66] = 0.6 * W[:66] + 0.8
    group = held_out_group(range(60), range(60, 66))
    stacked = stacked_fits(W, group, center, 3)
    assert stacked.coefficients is None and stacked.reader is stacked.A
    settings = dict(
        center=center,
        n_components=3,
        excluded_ids={0, d_vocab - 2},
        precision_k=4,
        pool_ids=np.arange(100, 900),
    )
    expected = reference.validate_held_out(W, group, **settings)
    for block_rows in (17, None):
        assert_same_held_out(
            validate_held_out(W, group, block_rows=block_rows, **settings), expected
        )
    found, span = with_span(W, group, **settings)  # no span kept: as wide as the model
    assert span is None
    assert_same_held_out(found, expected)


def test_the_basis_spans_every_fits_offset_and_axes_and_no_more():
    """The basis is orthonormal, reproduces every offset and axis, and is as wide as the
    kept rows' span: 10 columns for 10 words in 64 dimensions, against 44 offsets and
    axes."""
    rng = np.random.default_rng(25)
    W = rng.normal(size=(50, 64)) + 3.0
    group = held_out_group(range(10))
    for center in (True, False):
        stacked = stacked_fits(W, group, center, 3)
        assert stacked.A.shape == (64, 44) and stacked.read_width == 10
        np.testing.assert_allclose(stacked.reader.T @ stacked.reader, np.eye(10), atol=1e-12)
        np.testing.assert_allclose(
            stacked.reader @ stacked.coefficients, stacked.A, rtol=0, atol=TOLERANCE
        )


@pytest.mark.parametrize("center", [True, False])
def test_the_projection_pass_reads_the_vocabulary_onto_the_groups_span(center):
    """``project_with_span``: the projections ``project`` makes, and in the same pass every
    row's coordinates on an orthonormal basis of the group's rows' span (the projected
    axes first) and its squared norm."""
    rng = np.random.default_rng(26 + int(center))
    W = (rng.normal(size=(700, 48)) + 2.0).astype(np.float32)
    svd = decompose(W[:9], center)
    projections, span = project_with_span(W, svd, 3)
    np.testing.assert_allclose(projections, project(W, svd, 3), rtol=0, atol=1e-12)
    basis = span.basis
    assert basis.shape == (48, 9)  # 8 centered axes and the mean, or 9 raw axes
    np.testing.assert_allclose(basis.T @ basis, np.eye(9), atol=1e-12)
    np.testing.assert_array_equal(basis[:, :3], svd.Vt[:3].T)
    np.testing.assert_allclose(span.coordinates, W.astype(np.float64) @ basis, atol=1e-12)
    np.testing.assert_allclose(span.norms_sq, (W.astype(np.float64) ** 2).sum(axis=1), rtol=1e-14)
    # every row of the group lies in the span: its coordinates keep all of its length
    np.testing.assert_allclose(
        (span.coordinates[:9] ** 2).sum(axis=1), span.norms_sq[:9], rtol=1e-12
    )
    assert span_basis(svd, 3).shape == basis.shape


class CountedPasses(np.ndarray):
    """An array that counts the row slices read from it: a pass over the vocabulary."""

    slices = 0

    def __getitem__(self, key):
        if isinstance(key, slice) or (isinstance(key, tuple) and isinstance(key[0], slice)):
            type(self).slices += 1
        return np.asarray(self)[key]


def test_runs_that_differ_in_n_components_share_one_pass_over_the_vocabulary():
    """The span is memoized by the matrix and the basis: the same group's fit projected on
    another number of axes reads no row (its projections those of a pass of its own), a
    matrix changed in place is read again, and a fit of other rows is not served."""
    rng = np.random.default_rng(28)
    W = ((rng.normal(size=(700, 48)) + 2.0).astype(np.float32)).view(CountedPasses)
    svd = decompose(np.asarray(W)[:9], True)
    CountedPasses.slices = 0
    _, first = project_with_span(W, svd, 1)
    assert CountedPasses.slices > 0
    CountedPasses.slices = 0
    projections, again = project_with_span(W, svd, 3)
    assert CountedPasses.slices == 0 and again is first
    np.testing.assert_array_equal(projections, project_with_span(np.asarray(W), svd, 3)[0])
    assert not first.coordinates.flags.writeable  # shared: no run may change it

    W.view(np.ndarray)[0] += 1.0  # row 0 is among the rows the memo's fingerprint reads
    _, changed = project_with_span(W, svd, 3)
    assert CountedPasses.slices > 0 and changed is not first
    np.testing.assert_allclose(
        changed.coordinates[0], np.asarray(W, dtype=np.float64)[0] @ changed.basis, atol=1e-12
    )
    CountedPasses.slices = 0
    _, other = project_with_span(W, decompose(np.asarray(W)[10:19], True), 3)
    assert CountedPasses.slices > 0 and other is not changed


def test_runs_without_a_span_share_the_projections_on_every_axis():
    """Without the checks' span the analysis projects the vocabulary on every axis of
    the target once per matrix and fit: another ``n_components`` takes its first
    columns (the projections ``project`` makes) and reads no row."""
    from embsvd.io.vocabulary import Vocabulary

    rng = np.random.default_rng(31)
    base = (rng.normal(size=(400, 24)) + 1.0).astype(np.float32)
    W = base.view(CountedPasses)
    groups = {"g": held_out_group(range(7)), "h": held_out_group(range(20, 26))}
    vocab = Vocabulary.from_matrix(base, [f"t{i}" for i in range(400)])
    CountedPasses.slices = 0
    first = analyze(W, groups, "g", vocab, n_components=2, top_k=3)
    assert CountedPasses.slices > 0
    CountedPasses.slices = 0
    second = analyze(W, groups, "g", vocab, n_components=4, top_k=3)
    assert CountedPasses.slices == 0
    expected = project(base, second.svd, 4)
    np.testing.assert_allclose(second.projections, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(second.projections[:, :2], first.projections)
    assert not second.projections.flags.writeable


def test_analyze_keeps_the_span_only_when_asked_and_projects_the_same(minilm):
    checkpoint, groups = minilm
    W, vocab = checkpoint.W, checkpoint.vocabulary
    plain = analyze(W, groups, "months", vocab)
    kept = analyze(W, groups, "months", vocab, vocabulary_span=True)
    assert plain.vocabulary_span is None and isinstance(kept.vocabulary_span, VocabularySpan)
    np.testing.assert_allclose(kept.projections, plain.projections, rtol=0, atol=1e-12)
    assert [t.token_id for t in kept.top_tokens] == [t.token_id for t in plain.top_tokens]


def test_a_span_of_another_matrix_is_refused():
    rng = np.random.default_rng(27)
    W = rng.normal(size=(300, 12))
    group = held_out_group(range(6))
    _, span = project_with_span(W[:200], decompose(W[:6], True), 3)
    with pytest.raises(ValueError, match="coordinates of 200 rows for a matrix of 300"):
        validate_held_out(
            W, group, center=True, n_components=3, excluded_ids=(), precision_k=3, span=span
        )


# ---- confounds


def test_rankdata_from_one_sort_equals_the_unique_based_ranks_and_scipy():
    rng = np.random.default_rng(15)
    for values in (
        rng.normal(size=500),
        rng.integers(0, 6, size=500).astype(float),  # many ties, like token lengths
        rng.integers(0, 6, size=300),  # integers, like ids
        np.array([3.0, np.nan, 1.0, np.nan, 3.0, -0.0, 0.0]),  # nan share one rank, last
        np.array([7.0]),
    ):
        np.testing.assert_array_equal(rankdata(values), reference.rankdata(values))
        if not np.isnan(values).any():
            np.testing.assert_array_equal(rankdata(values), stats.rankdata(values))


def vocabulary(rng, d_vocab=2000):
    """Token norms, strings (with a word-start marker) and ids of a made-up vocabulary."""
    strings = tuple(("Ġ" if i % 3 else "") + "a" * (1 + i % 11) for i in range(d_vocab))
    return rng.uniform(0.5, 2.0, size=d_vocab).astype(np.float32), strings


def test_confounds_equal_the_reference_and_rank_a_vocabulary_once():
    rng = np.random.default_rng(16)
    norms, strings = vocabulary(rng)
    ids = np.arange(5, len(strings) - 2)
    for projections in (
        rng.normal(size=(len(strings), 3)),
        np.round(rng.normal(size=(2000, 2)), 1),
    ):
        expected = reference.token_confounds(projections, norms, strings, ids, "Ġ", 0.3)
        found = token_confounds(projections, norms, strings, ids.copy(), "Ġ", 0.3)
        assert found.n_tokens == expected.n_tokens and found.flagged() == expected.flagged()
        for name, rho in expected.spearman.items():
            np.testing.assert_allclose(found.spearman[name], rho, rtol=0, atol=TOLERANCE)
    first = property_ranks(norms, strings, ids, "Ġ")
    assert property_ranks(norms, strings, ids.copy(), "Ġ") is first  # equal ids: the same ranks
    assert not first["norm"].flags.writeable


def test_an_axis_is_ranked_once_for_the_runs_that_project_on_it():
    """Runs that differ only in ``n_components`` share their first axes: each column's
    ranks are memoized by its values, so the second run ranks only its new axis, with
    the reference's correlations; a column with other values is ranked afresh."""
    rng = np.random.default_rng(30)
    norms, strings = vocabulary(rng)
    ids = np.arange(len(strings))
    projections = rng.normal(size=(len(strings), 3))
    memo = confounds_module._COLUMN_RANKS
    memo.clear()
    token_confounds(projections[:, :2], norms, strings, ids, "Ġ", 0.3)
    assert (memo.hits, memo.misses) == (0, 2)
    found = token_confounds(projections, norms, strings, ids, "Ġ", 0.3)
    assert (memo.hits, memo.misses) == (2, 3)
    expected = reference.token_confounds(projections, norms, strings, ids, "Ġ", 0.3)
    for name, rho in expected.spearman.items():
        np.testing.assert_allclose(found.spearman[name], rho, rtol=0, atol=TOLERANCE)
    changed = projections.copy()
    changed[7, 0] += 1.0
    token_confounds(changed[:, :1], norms, strings, ids, "Ġ", 0.3)
    assert (memo.hits, memo.misses) == (2, 4)


def test_another_vocabulary_never_gets_a_kept_vocabularys_ranks():
    rng = np.random.default_rng(17)
    norms, strings = vocabulary(rng)
    ids = np.arange(len(strings))
    projections = rng.normal(size=(len(strings), 2))
    kept = property_ranks(norms, strings, ids, "Ġ")
    others = {
        "norms": (norms[::-1].copy(), strings, ids, "Ġ"),
        "strings": (norms, tuple(s.replace("a", "bb", 1) for s in strings), ids, "Ġ"),
        "ids": (norms, strings, ids[:-1], "Ġ"),
        "marker": (norms, strings, ids, None),
    }
    for what, (other_norms, other_strings, other_ids, marker) in others.items():
        assert property_ranks(other_norms, other_strings, other_ids, marker) is not kept, what
        found = token_confounds(projections, other_norms, other_strings, other_ids, marker, 0.3)
        expected = reference.token_confounds(
            projections, other_norms, other_strings, other_ids, marker, 0.3
        )
        for name, rho in expected.spearman.items():
            np.testing.assert_allclose(found.spearman[name], rho, rtol=0, atol=TOLERANCE)
    # the same norms written over in place: compared by content, not by the object
    changed = norms.copy()
    before = property_ranks(changed, strings, ids, "Ġ")
    changed[:] = changed[::-1]
    assert property_ranks(changed, strings, ids, "Ġ") is not before
    assert len(confounds_module._property_ranks) <= confounds_module._RANKS_KEPT


# ---- stability


def assert_same_stability(found, expected, d_model: int) -> None:
    assert (found.n_resamples, found.n_deleted, found.exhaustive) == (
        expected.n_resamples,
        expected.n_deleted,
        expected.exhaustive,
    )
    for field in ("singular_value_lo", "singular_value_hi", "axis_cos", "loo_axis_cos"):
        np.testing.assert_allclose(
            getattr(found, field), getattr(expected, field), rtol=TOLERANCE, atol=TOLERANCE
        )
    np.testing.assert_array_equal(found.eigengap_ratio, expected.eigengap_ratio)
    if len(found.axis_cos) < d_model:
        assert found.subspace_angle_deg == pytest.approx(expected.subspace_angle_deg, abs=TOLERANCE)
    else:  # the axes span the whole space: the angle is 0, both are arccos(1 - eps) noise
        assert found.subspace_angle_deg < 1e-5 and expected.subspace_angle_deg < 1e-5


@pytest.mark.parametrize("center", [True, False])
def test_jackknife_in_the_row_space_equals_the_d_model_wide_one(center):
    rng = np.random.default_rng(18 + int(center))
    for n, d_model, n_resamples in [
        (10, 16, 500),  # all 210 subsets
        (10, 16, 50),  # 50 distinct random ones
        (12, 40, 500),
        (25, 6, 200),  # more words than dimensions
        (7, 3, 500),  # the axes fill the space
        (30, 100, 100),
    ]:
        M = rng.normal(size=(n, d_model)) * rng.uniform(0.2, 5.0, size=d_model)
        M += 2.0 * rng.normal(size=d_model)  # an offset: raw spectra lead with it
        if jackknife_rank(n, center) < 1:
            continue
        svd = decompose(M, center)
        expected = reference.resample_stability(M, svd, 3, n_resamples, np.random.default_rng(n))
        found = resample_stability(M, svd, 3, n_resamples, np.random.default_rng(n))
        assert_same_stability(found, expected, d_model)


# ---- order


def assert_same_order(found, expected) -> None:
    assert type(found) is type(expected)
    for field in dataclasses.fields(expected):
        value, wanted = getattr(found, field.name), getattr(expected, field.name)
        if isinstance(wanted, np.ndarray | float):
            np.testing.assert_array_equal(value, wanted)  # nan where nan, counts exact
        else:
            assert value == wanted, field.name


@pytest.mark.parametrize("kind", ["linear", "cyclic"])
def test_order_test_equals_the_reference_exact_and_sampled(kind):
    rng = np.random.default_rng(20)
    for n in (3, 5, 7, 8, 9, 12):  # up to 8 exact (n!), then 10000 or 300 drawn
        M = rng.normal(size=(n, 24))
        angles = 2 * np.pi * np.arange(n) / n
        M[:, :2] += 4.0 * np.column_stack([np.cos(angles), np.sin(angles)])  # a calendar circle
        covariates = {"norms": rng.normal(size=n), "frequencies": rng.normal(size=n)}
        for settings in ({}, covariates) if kind == "linear" else ({},):
            for n_permutations in (10000, 300):
                arguments = dict(kind=kind, n_permutations=n_permutations, **settings)
                words = [f"w{i}" for i in range(n)]
                expected = reference.order_test(M, words, rng=np.random.default_rng(n), **arguments)
                found = order_test(M, words, rng=np.random.default_rng(n), **arguments)
                assert_same_order(found, expected)


def test_the_exact_permutations_are_listed_once_and_shared():
    every = _every_permutation(5)
    assert every.shape == (120, 5) and not every.flags.writeable
    assert len({tuple(row) for row in every}) == 120
    assert [tuple(row) for row in every] == sorted(tuple(row) for row in every)
    assert _every_permutation(5) is every


# ---- the bundled MiniLM


@pytest.fixture(scope="module")
def minilm():
    name = "all_minilm_l6_v2"
    groups = ["digits", "months", "weekdays", "eu_countries", "planets"]
    overrides = [f"model={name}", f"groups=[{','.join(groups)}]"]
    settings = with_group_files(OmegaConf.to_object(compose_config(*overrides)))
    checkpoint = load_checkpoint(settings.model)
    forms = TokenForms(checkpoint.tokenizer)
    selected = {
        group: select_single_tokens(group, spec, checkpoint.tokenizer, name, forms=forms)
        for group, spec in settings.groups.items()
    }
    return checkpoint, selected


@pytest.mark.slow
def test_bundled_minilm_checks_equal_their_references(minilm):
    checkpoint, groups = minilm
    W, vocab = checkpoint.W, checkpoint.vocabulary
    never = vocab.special_ids | {i for i, t in enumerate(vocab.token_strings) if t is None}
    ids = np.array(sorted(set(range(len(W))) - never))
    assert groups["months"].held_out and groups["eu_countries"].held_out  # remainders ranked
    for group in groups.values():
        M = W[group.token_ids]
        for center in (True, False):
            settings = dict(
                center=center,
                n_components=3,
                excluded_ids=never,
                precision_k=10,
                pool_ids=np.arange(1000, 4000),
            )
            expected = reference.validate_held_out(W, group, **settings)
            assert_same_held_out(validate_held_out(W, group, **settings), expected)
            assert_same_held_out(with_span(W.view(Gathered), group, **settings)[0], expected)
            svd = decompose(M, center)
            expected = reference.resample_stability(M, svd, 3, 500, np.random.default_rng(0))
            found = resample_stability(M, svd, 3, 500, np.random.default_rng(0))
            assert_same_stability(found, expected, W.shape[1])
            projections = (W[:] - svd.offset) @ svd.Vt[:3].T
            expected = reference.token_confounds(
                projections, vocab.token_norms, vocab.token_strings, ids, vocab.marker, 0.3
            )
            found = token_confounds(
                projections, vocab.token_norms, vocab.token_strings, ids, vocab.marker, 0.3
            )
            for prop, rho in expected.spearman.items():
                np.testing.assert_allclose(found.spearman[prop], rho, rtol=0, atol=TOLERANCE)
        if group.order != "none":
            arguments = dict(
                norms=np.linalg.norm(M.astype(np.float64), axis=1),
                frequencies=vocab.frequencies.zipf[group.token_ids],
            )
            expected = reference.order_test(
                M, group.kept_words, group.order, rng=np.random.default_rng(1), **arguments
            )
            found = order_test(
                M, group.kept_words, group.order, rng=np.random.default_rng(1), **arguments
            )
            assert_same_order(found, expected)


@pytest.mark.slow
def test_bundled_minilm_as_bfloat16_rows_ranks_as_its_float32_values(minilm):
    checkpoint, groups = minilm
    bits = bfloat16_bits(checkpoint.W[:])
    widened = widen_bfloat16(bits)
    settings = dict(
        center=True,
        n_components=3,
        excluded_ids=checkpoint.vocabulary.special_ids,
        precision_k=10,
        pool_ids=np.arange(1000, 4000),
    )
    for name in ("digits", "eu_countries"):
        on_rows = validate_held_out(Unwidened(bits), groups[name], **settings)
        assert on_rows == validate_held_out(widened, groups[name], **settings)
        assert_same_held_out(
            on_rows, reference.validate_held_out(widened, groups[name], **settings)
        )
