"""The batched, memoized matched null against the loop it replaced (tests/reference_null.py).

Given the same draws, the batched spectra, shares, group means and comparisons equal the
reference to 1e-10. The new stream layout (the target's and the pairs' draws from two
spawned streams, the pairs drawn in name order) changes the draws, so against the old
layout only the distributions are compared: every null statistic's mean within
``MEAN_SE`` standard errors of the old one, and the two-sample Kolmogorov-Smirnov
distance below its critical value at ``KS_ALPHA``. The memo: runs that differ in target,
centering or components share one pairs' null object; other groups, seeds, draws,
matching or matrices never do; a ``BFloat16Rows`` of the same values gives the same
numbers without being copied whole.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import tests.reference_null as reference
from embsvd.checks.matching import (
    Matching,
    draw_groups,
    draw_random_groups,
    match_groups,
    matrix_row_norms,
    remember_row_norms,
    token_pools,
)
from embsvd.checks.null import (
    NullResult,
    clear_null_memos,
    matched_null,
    null_mean_correlations,
    null_spectra,
    null_streams,
    pair_draws,
)
from embsvd.checks.run import ChecksConfig, run_checks
from embsvd.groups import KeptToken, TokenGroup
from embsvd.io.frequency import KINDS, TokenFrequencies
from embsvd.io.rows import BFloat16Rows
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import MeanReference, analyze

MEAN_SE = 4.0  # a null's mean under the new layout is within 4 standard errors of the old
KS_ALPHA = 1e-4  # the two layouts' draws pass a two-sample KS test at this level
TOLERANCE = 1e-10


@pytest.fixture(autouse=True)
def fresh_memos():
    """Every test starts without memoized nulls, pools or norms, and leaves none behind."""
    clear_null_memos()
    yield
    clear_null_memos()


def word(i: int) -> str:
    return "".join(chr(97 + (i // 26**p) % 26) for p in (2, 1, 0))


def group_of(name: str, ids, tokens) -> TokenGroup:
    kept = tuple(KeptToken(tokens[i], tokens[i], int(i)) for i in ids)
    return TokenGroup(name, tuple(k.word for k in kept), kept, ())


def bfloat16_bits(W: np.ndarray) -> np.ndarray:
    """``W``'s float32 values cut to bfloat16 bit patterns (uint16)."""
    return (np.ascontiguousarray(W, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")


class Unwidened(BFloat16Rows):
    """A ``BFloat16Rows`` that fails where anything would copy it whole."""

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("np.asarray of a BFloat16Rows: the whole matrix was widened")


@dataclasses.dataclass
class World:
    W: np.ndarray  # float32, every value exactly a bfloat16
    tokens: list[str]
    frequencies: TokenFrequencies
    groups: dict[str, TokenGroup]
    vocab: Vocabulary
    reference: MeanReference
    axes: np.ndarray  # the top 3 components of the centered vocabulary

    def analyse(self, target: str, center: bool = True, n_components: int = 2):
        return analyze(
            self.W,
            self.groups,
            target,
            self.vocab,
            center=center,
            n_components=n_components,
            top_k=3,
            reference=self.reference,
        )

    def pools(self, match: str):
        return token_pools(self.tokens, (), None, self.frequencies if match != "none" else None)


def small_world(seed: int = 0, d_vocab: int = 1500, d_model: int = 24) -> World:
    """Real-word tokens whose norm grows with the id (as frequency does in real models),
    a frequency list, and three groups of different sizes."""
    rng = np.random.default_rng(seed)
    W = (rng.normal(size=(d_vocab, d_model)) + 0.4) * np.linspace(0.5, 2.0, d_vocab)[:, None]
    W = (bfloat16_bits(W).astype(np.uint32) << 16).view(np.float32)  # bfloat16 values
    tokens = [word(i) for i in range(d_vocab)]
    kinds = np.full(d_vocab, KINDS.index("word"))
    frequencies = TokenFrequencies(rng.uniform(1, 6, d_vocab), kinds, "test list")
    groups = {
        "alpha": group_of("alpha", range(100, 110), tokens),
        "beta": group_of("beta", range(600, 608), tokens),
        "gamma": group_of("gamma", range(1200, 1212), tokens),
    }
    W64 = W.astype(np.float64)
    mean = W64.mean(axis=0)
    axes = np.linalg.svd(W64 - mean, full_matrices=False)[2][:3]
    vocab = Vocabulary.from_matrix(W, tokens)
    return World(W, tokens, frequencies, groups, vocab, MeanReference(mean, axes[:1]), axes)


def null_of(world: World, result, match="norm_frequency", n_null=600, seed=11, **changes):
    """``matched_null`` of ``result`` on ``world`` (``changes``: ``W``, ``groups``,
    ``n_neighbours``), with the global share."""
    W = changes.get("W", world.W)
    matching = Matching.of_matrix(W, match, world.frequencies, changes.get("n_neighbours", 30))
    groups = changes.get("groups", world.groups)
    pools = world.pools(match)
    rng = np.random.default_rng(seed)
    return matched_null(W, groups, result, pools, n_null, rng, matching, world.axes)


# --- the batched code equals the loop, given the same draws ---------------------------


def without_structural_zero(spectra: np.ndarray, center: bool, d_model: int) -> np.ndarray:
    """The reference's spectra with a centered draw's structurally zero singular value
    (rank ``n - 1`` when ``n <= d_model``) given as 0, as ``null_spectra`` gives it; the
    reference had rounding noise there, checked here to be below ``1e-6 s_1``."""
    n = spectra.shape[1]
    if not center or n > d_model:
        return spectra
    assert np.all(spectra[:, n - 1] <= 1e-6 * spectra[:, 0])
    exact = spectra.copy()
    exact[:, n - 1] = 0.0
    return exact


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("pool", "route"), [(300, "rows"), (40, "tokens")])
def test_batched_spectra_and_shares_equal_the_reference_loop(dtype, pool, route, monkeypatch):
    """From the draws' gathered rows (many distinct tokens) or from the distinct tokens'
    Gram matrix (few): the reference's spectra and shares, the structural zero aside."""
    import embsvd.checks.null as null_module

    other = {"rows": "_spectra_from_tokens", "tokens": "_spectra_from_rows"}[route]
    monkeypatch.setattr(null_module, other, None)  # the other route would fail
    rng = np.random.default_rng(3)
    W = (rng.normal(size=(300, 20)) + 0.7).astype(dtype)
    draws = np.stack([rng.choice(pool, size=7, replace=False) for _ in range(1234)])
    axes = np.linalg.qr(rng.normal(size=(20, 4)))[0].T
    for center in (True, False):
        spectra, shares = null_spectra(W, draws, center, axes)
        expected, expected_shares = reference.null_spectra(W, draws, center, axes)
        expected = without_structural_zero(expected, center, W.shape[1])
        np.testing.assert_allclose(spectra, expected, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(shares, expected_shares, rtol=0, atol=TOLERANCE)
        assert null_spectra(W, draws, center)[1] is None
        if center:
            assert np.all(spectra[:, -1] == 0.0)  # 7 tokens in 20 dimensions: rank 6


def test_a_draw_wider_than_the_model_keeps_its_last_singular_value():
    """Centered, 7 tokens in 5 dimensions have rank 5: no zero is imposed."""
    rng = np.random.default_rng(8)
    W = rng.normal(size=(60, 5)) + 0.3
    draws = np.stack([rng.choice(60, size=7, replace=False) for _ in range(200)])
    spectra, _ = null_spectra(W, draws, True)
    np.testing.assert_allclose(spectra, reference.null_spectra(W, draws, True)[0], atol=TOLERANCE)
    assert spectra.shape == (200, 5) and np.all(spectra[:, -1] > 1e-3)


def test_batched_mean_correlations_equal_the_reference_loop_for_unequal_groups():
    rng = np.random.default_rng(4)
    W = (rng.normal(size=(200, 30)) + 0.5).astype(np.float32)
    draws = [
        np.stack([rng.choice(200, size=k, replace=False) for _ in range(517)]) for k in (3, 8, 5)
    ]
    axes = np.linalg.qr(rng.normal(size=(30, 2)))[0].T
    for mean_reference in (MeanReference(W.mean(axis=0).astype(np.float64), axes), None):
        found = null_mean_correlations(W, draws, mean_reference)
        expected = reference.null_mean_correlations(W, draws, mean_reference)
        assert set(found) == set(expected)
        for variant in expected:
            np.testing.assert_allclose(found[variant], expected[variant], rtol=0, atol=TOLERANCE)


def reference_tests(world_W, groups, result, pools, matching, null, seed, global_axes):
    """Every comparison of a run, computed by the reference from the draws ``null`` made:
    its target's draws, and the pairs' draws redrawn from the pairs' stream of ``seed``."""
    streams = null_streams(np.random.default_rng(seed))
    members = match_groups(groups, pools, matching)
    target_rng = np.random.Generator(streams.bit_generator(streams.target))
    target = groups[result.target]
    redrawn = draw_random_groups(
        target, members[result.target], pools, matching, null.n_null, target_rng
    )
    np.testing.assert_array_equal(redrawn, null.target_null.draws)  # the target's stream
    pairs_rng = np.random.Generator(streams.bit_generator(streams.pairs))
    drawn = pair_draws(groups, members, pools, matching, null.n_null, pairs_rng)
    spectra, shares = reference.null_spectra(world_W, redrawn, result.center, global_axes)
    spectra = without_structural_zero(spectra, result.center, world_W.shape[1])
    power = spectra**2
    ratios = power / power.sum(axis=1, keepdims=True)
    names = sorted(groups)
    null_r = reference.null_mean_correlations(world_W, [drawn[n] for n in names], result.reference)
    found = {
        "s1_share": reference.compare(result.svd.explained_variance_ratio[0], ratios[:, 0]),
        "effective_rank": reference.compare(
            reference.effective_rank(result.svd.singular_values),
            reference.effective_rank(spectra),
        ),
    }
    if global_axes is not None:
        observed = reference._global_share(world_W[target.token_ids], global_axes)
        found["global_share"] = reference.compare(observed, shares)
    for variant, pairs in reference._mean_corr_comparisons(names, null_r, result).items():
        prefix = "group_mean_corr" if variant == "raw" else f"group_mean_corr_{variant}"
        found |= {f"{prefix}/{a}__{b}": c for (a, b), c in pairs.items()}
    return found, spectra


def assert_same_comparisons(found, expected):
    assert set(found) == set(expected)
    for name, comparison in expected.items():
        for attribute in ("observed", "mean", "sd", "percentile", "p_value"):
            assert getattr(found[name], attribute) == pytest.approx(
                getattr(comparison, attribute), abs=TOLERANCE
            ), (name, attribute)


def assert_equals_the_reference(W, groups, result, pools, matching, null, seed, axes):
    expected, spectra = reference_tests(W, groups, result, pools, matching, null, seed, axes)
    assert_same_comparisons(null.tests(), expected)
    np.testing.assert_allclose(null.singular_values, spectra, rtol=0, atol=TOLERANCE)
    p_values = [expected[name].p_value for name in null.p_holm]
    np.testing.assert_allclose(
        list(null.p_holm.values()), reference.holm(p_values), rtol=0, atol=TOLERANCE
    )


@pytest.mark.parametrize("match", ["norm_frequency", "none"])
@pytest.mark.parametrize("center", [True, False])
def test_matched_null_equals_the_reference_given_the_same_draws(match, center):
    world = small_world()
    result = world.analyse("beta", center=center)
    null = null_of(world, result, match)
    matching = Matching.of_matrix(world.W, match, world.frequencies, 30)
    pools = world.pools(match)
    assert_equals_the_reference(
        world.W, world.groups, result, pools, matching, null, 11, world.axes
    )


def test_a_run_with_one_group_has_no_pairs_as_before():
    world = small_world()
    groups = {"alpha": world.groups["alpha"]}
    result = analyze(world.W, groups, "alpha", world.vocab, n_components=2, top_k=3)
    null = null_of(world, result, groups=groups)
    assert null.group_mean_corr == {"raw": {}} and null.pair_null.pairs == ()
    assert set(null.tests()) == {"s1_share", "effective_rank", "global_share"}


@pytest.mark.slow
def test_on_minilm_the_batched_null_equals_the_reference_given_the_same_draws():
    from tests.test_bundled_statistics import GROUPS, bundled

    model = bundled("all_minilm_l6_v2", GROUPS)
    W, vocab = model.checkpoint.W, model.checkpoint.vocabulary
    mean_reference = MeanReference(model.components.mean, model.components.Vt[:1])
    axes = model.components.Vt
    pools = token_pools(vocab.token_strings, vocab.special_ids, vocab.marker, vocab.frequencies)
    matching = Matching.of_matrix(W, "norm_frequency", vocab.frequencies, 50)
    np.testing.assert_array_equal(matching.norms, np.linalg.norm(np.asarray(W), axis=1))
    for target, center in (("digits", True), ("eu_countries", False)):
        result = analyze(W, model.groups, target, vocab, center=center, reference=mean_reference)
        rng = np.random.default_rng(5)
        null = matched_null(W, model.groups, result, pools, 1000, rng, matching, axes)
        assert_equals_the_reference(W, model.groups, result, pools, matching, null, 5, axes)


# --- the new stream layout against the old one, in distribution -----------------------


def old_layout_nulls(W, groups, result, pools, n_null, rng, matching, global_axes):
    """Every null statistic's draws as the old ``matched_null`` made them (one stream:
    the target's draws, then each group's in ``groups`` order), keyed as ``tests()``."""
    members = reference.match_groups(groups, pools, matching)
    target_draws = reference.draw_random_groups(
        groups[result.target], members[result.target], pools, matching, n_null, rng
    )
    spectra, shares = reference.null_spectra(W, target_draws, result.center, global_axes)
    drawn, paired = {}, None
    for name, group in groups.items():
        drawn[name] = reference.draw_random_groups(
            group, members[name], pools, matching, n_null, rng, paired
        )
        if matching.match != "none":
            paired = np.concatenate([p for p in (paired, drawn[name]) if p is not None], axis=1)
    power = spectra**2
    found = {
        "s1_share": power[:, 0] / power.sum(axis=1),
        "effective_rank": reference.effective_rank(spectra),
    }
    if shares is not None:
        found["global_share"] = shares
    names = sorted(groups)
    null_r = reference.null_mean_correlations(W, [drawn[n] for n in names], result.reference)
    for variant, r in null_r.items():
        prefix = "group_mean_corr" if variant == "raw" else f"group_mean_corr_{variant}"
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                found[f"{prefix}/{a}__{names[j]}"] = r[:, i, j]
    return found


def new_layout_nulls(null: NullResult) -> dict[str, np.ndarray]:
    """The same statistics' draws, as the new ``matched_null`` keeps them."""
    power = null.singular_values**2
    found = {
        "s1_share": power[:, 0] / power.sum(axis=1),
        "effective_rank": reference.effective_rank(null.singular_values),
    }
    if null.target_null.shares is not None:
        found["global_share"] = null.target_null.shares
    pairs = null.pair_null
    for variant, r in pairs.r.items():
        prefix = "group_mean_corr" if variant == "raw" else f"group_mean_corr_{variant}"
        found |= {f"{prefix}/{a}__{b}": r[k] for k, (a, b) in enumerate(pairs.pairs)}
    return found


def ks_distance(x: np.ndarray, y: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the ECDFs."""
    x, y = np.sort(x), np.sort(y)
    points = np.concatenate([x, y])
    gaps = np.searchsorted(x, points, "right") / len(x) - np.searchsorted(y, points, "right") / len(
        y
    )
    return float(np.abs(gaps).max())


def assert_same_distribution(new: np.ndarray, old: np.ndarray, name: str) -> None:
    """Means within ``MEAN_SE`` standard errors; KS distance below its ``KS_ALPHA``
    critical value, ``sqrt(-ln(alpha / 2) / 2) sqrt((n + m) / (n m))``."""
    n, m = len(new), len(old)
    se = math.sqrt(new.var(ddof=1) / n + old.var(ddof=1) / m)
    assert abs(new.mean() - old.mean()) <= MEAN_SE * se, (name, new.mean(), old.mean(), se)
    critical = math.sqrt(-math.log(KS_ALPHA / 2) / 2) * math.sqrt((n + m) / (n * m))
    assert ks_distance(new, old) < critical, (name, ks_distance(new, old), critical)


@pytest.mark.parametrize("match", ["norm_frequency", "none"])
def test_the_new_stream_layout_draws_the_old_layouts_distributions(match):
    world = small_world(seed=1)
    # the groups in an order other than their names': the old layout drew them in this order
    world.groups = {name: world.groups[name] for name in ("gamma", "alpha", "beta")}
    result = world.analyse("alpha")
    n_null = 3000
    null = null_of(world, result, match, n_null=n_null, seed=21, n_neighbours=40)
    matching = Matching.of_matrix(world.W, match, world.frequencies, 40)
    pools = world.pools(match)
    rng = np.random.default_rng(21)
    old = old_layout_nulls(world.W, world.groups, result, pools, n_null, rng, matching, world.axes)
    new = new_layout_nulls(null)
    assert set(new) == set(old) == set(null.tests())
    for name in old:
        assert not np.array_equal(new[name], old[name]), name  # other draws
        assert_same_distribution(new[name], old[name], name)
    # the old layout's draws above are the old implementation's: its nulls have their means
    rng = np.random.default_rng(21)
    before = reference.matched_null(
        world.W, world.groups, result, pools, n_null, rng, matching, world.axes
    )
    for name, comparison in before.tests().items():
        assert old[name].mean() == pytest.approx(comparison.mean, abs=TOLERANCE)


@pytest.mark.slow
def test_on_minilm_the_new_layout_draws_the_old_layouts_distributions():
    from tests.test_bundled_statistics import GROUPS, bundled

    model = bundled("all_minilm_l6_v2", GROUPS)
    W, vocab = model.checkpoint.W, model.checkpoint.vocabulary
    mean_reference = MeanReference(model.components.mean, model.components.Vt[:1])
    result = analyze(W, model.groups, "eu_countries", vocab, center=True, reference=mean_reference)
    pools = token_pools(vocab.token_strings, vocab.special_ids, vocab.marker, vocab.frequencies)
    matching = Matching.of_matrix(W, "norm_frequency", vocab.frequencies, 50)
    axes = model.components.Vt
    n_null = 2000
    null = matched_null(
        W, model.groups, result, pools, n_null, np.random.default_rng(0), matching, axes
    )
    rng = np.random.default_rng(0)
    old = old_layout_nulls(W, model.groups, result, pools, n_null, rng, matching, axes)
    new = new_layout_nulls(null)
    assert set(new) == set(old)
    for name in old:
        assert_same_distribution(new[name], old[name], name)


# --- the memo --------------------------------------------------------------------------


def test_runs_that_differ_in_target_centering_or_components_share_the_pairs_null():
    world = small_world()
    first = null_of(world, world.analyse("alpha", center=True, n_components=2))
    other_target = null_of(world, world.analyse("beta", center=False, n_components=1))
    fewer_axes = null_of(world, world.analyse("alpha", center=True, n_components=1))
    assert other_target.pair_null is first.pair_null
    assert fewer_axes.pair_null is first.pair_null
    assert other_target.group_mean_corr == first.group_mean_corr
    # the target's own null is shared by runs of the same target and centering only
    assert fewer_axes.target_null is first.target_null
    assert other_target.target_null is not first.target_null
    # forgotten and computed again: the same numbers (same seed), a new object
    clear_null_memos()
    again = null_of(world, world.analyse("beta", center=False, n_components=1))
    assert again.pair_null is not first.pair_null
    assert again.tests() == other_target.tests() and again.p_holm == other_target.p_holm
    np.testing.assert_array_equal(again.singular_values, other_target.singular_values)


def test_other_groups_seeds_draws_matching_references_or_matrices_get_their_own_null():
    world = small_world()
    result = world.analyse("alpha")
    first = null_of(world, result)
    assert null_of(world, result).pair_null is first.pair_null
    moved = dict(world.groups, gamma=group_of("gamma", range(1250, 1262), world.tokens))
    elsewhere = dataclasses.replace(world, groups=moved)
    unchanged_copy = world.W.copy()
    others = {
        "groups": null_of(elsewhere, elsewhere.analyse("alpha")),
        "seed": null_of(world, result, seed=12),
        "n_null": null_of(world, result, n_null=601),
        "n_neighbours": null_of(world, result, n_neighbours=31),
        "match": null_of(world, result, "norm"),
        "reference": null_of(
            world,
            dataclasses.replace(world, reference=MeanReference(world.reference.mean)).analyse(
                "alpha"
            ),
        ),
        "equal matrix": null_of(world, result, W=unchanged_copy),
    }
    for what, null in others.items():
        assert null.pair_null is not first.pair_null, what
        assert null.pair_null is not others["groups"].pair_null or what == "groups", what
    # an equal matrix gives equal numbers; the others' draws or references differ
    assert others["equal matrix"].tests() == first.tests()
    assert others["seed"].tests() != first.tests()
    assert set(others["reference"].group_mean_corr) == {"raw", "centered"}


def test_a_matrix_changed_in_place_or_gone_is_never_answered_from_the_memo():
    import embsvd.checks.null as null_module

    world = small_world()
    result = world.analyse("alpha")
    W = world.W.copy()
    before = null_of(world, result, W=W)
    W[:] = W[::-1]  # every row moved: the matrix object is the same, its rows are not
    after = null_of(world, result, W=W)
    assert after.pair_null is not before.pair_null
    fresh = null_of(world, result, W=W.copy())
    assert after.tests() == fresh.tests() and after.tests() != before.tests()
    kept = len(null_module._PAIR_NULLS.entries)
    del W, before, after  # the memo holds no matrix: its entries go with it
    assert len(null_module._PAIR_NULLS.entries) == kept - 1


@pytest.mark.parametrize("match", ["norm_frequency", "none"])
def test_bfloat16_rows_of_the_same_values_give_the_same_null_without_a_whole_copy(match):
    world = small_world()
    rows = Unwidened(bfloat16_bits(world.W))
    result = world.analyse("gamma")
    stored = null_of(world, result, match)
    streamed = null_of(world, result, match, W=rows)
    assert streamed.pair_null is not stored.pair_null  # another matrix object
    assert streamed.tests() == stored.tests() and streamed.p_holm == stored.p_holm
    np.testing.assert_array_equal(streamed.singular_values, stored.singular_values)
    # through run_checks, the null alone (the other checks read W their own way)
    config = ChecksConfig(
        n_null=300, null_match=match, n_resamples=0, heldout=False, confounds=False, order=False
    )
    on_rows = run_checks(rows, world.groups, result, world.vocab, config).null
    on_array = run_checks(world.W, world.groups, result, world.vocab, config).null
    assert on_rows.tests() == on_array.tests()


def test_row_norms_are_read_once_per_matrix_a_block_at_a_time(tmp_path):
    rng = np.random.default_rng(6)
    W = rng.normal(size=(20000, 8)).astype(np.float32)  # more rows than one block
    bits = bfloat16_bits(W)
    widened = (bits.astype(np.uint32) << 16).view(np.float32)
    file = tmp_path / "w.bin"
    W.tofile(file)
    mapped = np.memmap(file, dtype=np.float32, mode="r", shape=W.shape)
    for matrix, values in ((W, W), (mapped, W), (Unwidened(bits), widened)):
        norms = matrix_row_norms(matrix)
        np.testing.assert_array_equal(norms, np.linalg.norm(values, axis=1))
        assert matrix_row_norms(matrix) is norms
        assert not norms.flags.writeable
    assert matrix_row_norms(W.copy()) is not matrix_row_norms(W)


class Unreadable(BFloat16Rows):
    """A ``BFloat16Rows`` that fails when a block of its rows is read (a pass over it);
    the memo's fingerprint, a gather of 64 rows, still reads."""

    def _rows(self, key):
        if isinstance(key, slice):
            raise AssertionError("a block of the matrix was read")
        return super()._rows(key)


def test_the_vocabularys_norms_are_the_matchings_without_a_pass_over_the_matrix(tmp_path):
    """``remember_row_norms`` hands the vocabulary's norms (kept in the cache between
    processes) to the null's norm matching: the same values ``matrix_row_norms`` computes,
    and no pass over the matrix for them."""
    rng = np.random.default_rng(7)
    bits = bfloat16_bits(rng.normal(size=(5000, 8)))
    vocab = Vocabulary.from_matrix(BFloat16Rows(bits), [f"t{i}" for i in range(5000)])
    np.testing.assert_array_equal(vocab.token_norms, matrix_row_norms(BFloat16Rows(bits)))
    W = Unreadable(bits)
    given = remember_row_norms(W, vocab.token_norms)
    assert matrix_row_norms(W) is given
    assert Matching.of_matrix(W, "norm").norms is given
    np.testing.assert_array_equal(given, vocab.token_norms)
    assert not given.flags.writeable
    with pytest.raises(AssertionError, match="a block of the matrix was read"):
        matrix_row_norms(Unreadable(bits))  # another matrix object: computed, so read
    with pytest.raises(ValueError, match=r"norms: shape \(4999,\) for the 5000 rows of W"):
        remember_row_norms(Unreadable(bits), vocab.token_norms[:-1])


def test_token_pools_are_read_once_per_vocabulary():
    world = small_world()
    tokens = world.tokens
    first = token_pools(tokens, {0}, None, world.frequencies)
    assert token_pools(tuple(tokens), [0], None, world.frequencies) is first
    assert not first.ids["bare"].flags.writeable
    renamed = [*tokens[:5], "x,y", *tokens[6:]]  # token 5 is no longer a word
    other_frequencies = TokenFrequencies(
        world.frequencies.zipf,
        np.where(np.arange(len(tokens)) == 7, 0, world.frequencies.kind),
        "test list",
    )
    different = {
        "strings": token_pools(renamed, {0}, None, world.frequencies),
        "excluded": token_pools(tokens, {0, 3}, None, world.frequencies),
        "marker": token_pools(tokens, {0}, "G", world.frequencies),
        "frequencies": token_pools(tokens, {0}, None, other_frequencies),
        "unmatched": token_pools(tokens, {0}, None, None),
    }
    for what, pools in different.items():
        assert pools is not first, what
    assert 5 in first.ids["bare"] and 5 not in different["strings"].ids["bare"]
    assert 3 not in different["excluded"].ids["bare"]
    assert 7 not in different["frequencies"].ids["bare"]


# --- unmatched draws, vectorized ---------------------------------------------------------


@pytest.mark.parametrize(("size", "count"), [(40, 3), (5, 4)])
def test_unmatched_draws_are_uniform_samples_without_replacement(size, count):
    """Both ways of drawing (position by position for a large pool, sorted random keys
    for a small one): no token twice in a row, and every token equally likely at every
    position (counts within 5 binomial standard deviations)."""
    n_draws = 20000
    draws = draw_groups(
        {"bare": np.arange(100, 100 + size)}, ["bare"] * count, n_draws, np.random.default_rng(8)
    )
    assert draws.shape == (n_draws, count)
    assert (np.sort(draws, axis=1)[:, 1:] != np.sort(draws, axis=1)[:, :-1]).all()
    expected = n_draws / size
    sd = math.sqrt(n_draws * (1 / size) * (1 - 1 / size))
    for position in range(count):
        counts = np.bincount(draws[:, position] - 100, minlength=size)
        assert np.abs(counts - expected).max() < 5 * sd
