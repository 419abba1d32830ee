"""Matched random-group nulls: is a group's statistic unusual for groups of words like it?

Every statistic a run reports about a group is compared with the same statistic of
``n_null`` random groups, drawn as ``embsvd.checks.matching`` says: matched to the group's
members in token norm and word frequency over real words by default (``null_match``),
uniform over whole-word tokens with ``none``. What they are matched on decides what the
comparison can tell: ``none`` on byte-level BPE mixes "unusual for words" with "unusual
for tokens", since its pool is mostly fragments and identifiers with larger norms.

A pair of groups is compared with pairs of random groups, each matched to its own group
(sharing no token in a matched null). The comparison gives the null's mean and standard
deviation, the observed value's percentile (percent of draws strictly below it, 0-100)
and a two-sided permutation p-value, ``min(1, 2 min(P(null <= obs), P(null >= obs)))``
with the ``(1 + count) / (1 + n_null)`` estimate of Phipson and Smyth (2010), never 0. Holm's
method corrects every null-tested statistic of a run together; its smallest p-value is
``2 / (1 + n_null)``, so ``required_draws`` says how many draws Holm needs to reach alpha.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from embsvd.checks.matching import (
    Matching,
    MemberMatch,
    TokenPools,
    describe_match,
    draw_random_groups,
    match_groups,
)
from embsvd.groups import TokenGroup
from embsvd.method.analysis import AnalysisResult, MeanReference, effective_rank, mean_corr_key

DRAWS_PER_BATCH = 100  # bounds the (draws, n, d_model) float64 block of a batch
MEANS_BLOCK = 1 << 22  # floats of random groups' means held at once (32 MB)


@dataclass(frozen=True)
class NullComparison:
    """An observed statistic against its null distribution."""

    observed: float
    mean: float
    sd: float
    percentile: float  # percent of null draws strictly below the observed value, 0-100
    p_value: float  # two-sided


@dataclass(frozen=True)
class NullResult:
    """The matched null of a run's statistics.

    Attributes:
        n_null: Random groups drawn per statistic.
        pool_rule: How the candidate pools were chosen, with their sizes.
        match: What random groups were matched on, with the achieved tolerance.
        s1_share: The target's first explained-variance ratio.
        effective_rank: The target spectrum's effective rank (its decay).
        global_share: The share of the target's variance in the span of the vocabulary's
            top components (``None`` without them).
        group_mean_corr: ``{variant: {(a, b): comparison}}`` for every variant of the
            group-mean correlation and every pair (sorted names).
        p_holm: Holm-corrected p-value of every test, keyed by its metric name
            (``s1_share``, ``group_mean_corr_centered/a__b``, ...).
        singular_values: The null draws' spectra, ``(n_null, k)``, for bands in figures.
        explained_variance_ratio: The same, as shares of the total, ``(n_null, k)``.
        diagnostics: How close the drawn tokens came to the members they replace
            (``norm_ratio_median``, ``zipf_diff_median``, ``match_radius_max``).
    """

    n_null: int
    pool_rule: str
    match: str
    s1_share: NullComparison
    effective_rank: NullComparison
    global_share: NullComparison | None
    group_mean_corr: dict[str, dict[tuple[str, str], NullComparison]]
    p_holm: dict[str, float]
    singular_values: np.ndarray
    explained_variance_ratio: np.ndarray
    diagnostics: dict[str, float] = field(default_factory=dict)

    @property
    def n_tests(self) -> int:
        return len(self.p_holm)

    @property
    def p_floor(self) -> float:
        """The smallest two-sided p-value ``n_null`` draws can give."""
        return 2.0 / (1 + self.n_null)

    def tests(self) -> dict[str, NullComparison]:
        """Every comparison of the run, keyed as ``p_holm`` is."""
        found = {"s1_share": self.s1_share, "effective_rank": self.effective_rank}
        if self.global_share is not None:
            found["global_share"] = self.global_share
        for variant, pairs in self.group_mean_corr.items():
            found |= {f"{mean_corr_key(variant)}/{a}__{b}": c for (a, b), c in pairs.items()}
        return found


def required_draws(n_tests: int, alpha: float) -> int:
    """The fewest draws whose smallest p-value, ``2 / (1 + n)``, Holm-corrected over
    ``n_tests`` tests, falls below ``alpha``: ``2 m / (1 + n) < alpha``, so that a
    statistic beyond every draw can be called significant (at ``<= alpha`` it could
    only tie with it)."""
    return max(2, math.floor(2 * n_tests / alpha))


def null_spectra(
    W: np.ndarray, draws: np.ndarray, center: bool, global_axes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Singular values of every drawn group's submatrix, ``(n_draws, min(n, d_model))``,
    from the eigenvalues of its ``n x n`` Gram matrix (cheaper than an SVD when n << d;
    a zero singular value comes out as about ``sqrt(eps) s_1``, which the statistics of
    the null do not feel); and, with ``global_axes`` (``(g, d_model)`` orthonormal), each
    draw's share of variance about its own mean inside their span, ``(n_draws,)``."""
    n = draws.shape[1]
    k = min(n, W.shape[1])
    spectra = np.empty((len(draws), k))
    shares = None if global_axes is None else np.empty(len(draws))
    for start in range(0, len(draws), DRAWS_PER_BATCH):
        M = np.asarray(W[draws[start : start + DRAWS_PER_BATCH]], dtype=np.float64)
        deviations = M - M.mean(axis=1, keepdims=True)
        if center:
            M = deviations
        eigenvalues = np.linalg.eigvalsh(M @ M.transpose(0, 2, 1))[:, ::-1][:, :k]
        spectra[start : start + len(M)] = np.sqrt(np.clip(eigenvalues, 0.0, None))
        if shares is not None:
            inside = ((deviations @ global_axes.T) ** 2).sum(axis=(1, 2))
            shares[start : start + len(M)] = inside / (deviations**2).sum(axis=(1, 2))
    return spectra, shares


def null_mean_correlations(
    W: np.ndarray, draws: Sequence[np.ndarray], reference: MeanReference | None
) -> dict[str, np.ndarray]:
    """Pearson r between the mean vectors of every pair of groups drawn in the same row,
    in every variant ``reference`` defines (``raw`` only without one).

    Args:
        W: ``(d_vocab, d_model)``.
        draws: Per group, its random groups' token ids, ``(n_draws, n_members)``.
        reference: What the ``centered`` and ``decorrelated`` variants take out.

    Returns:
        ``{variant: (n_draws, n_groups, n_groups)}``; the means are formed a block of
        rows at a time, so memory stays at ``MEANS_BLOCK`` floats per variant.
    """
    n_groups, n_draws, d_model = len(draws), len(draws[0]), W.shape[1]
    rows = max(1, MEANS_BLOCK // (n_groups * d_model))
    found: dict[str, np.ndarray] = {}
    for start in range(0, n_draws, rows):
        block = slice(start, start + rows)
        means = np.stack(
            [np.asarray(W[ids[block]], dtype=np.float64).mean(axis=1) for ids in draws]
        )
        variants = {"raw": means} if reference is None else reference.variants(means)
        for variant, vectors in variants.items():  # (n_groups, rows, d_model)
            vectors = vectors - vectors.mean(axis=2, keepdims=True)
            vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
            per_row = vectors.transpose(1, 0, 2)
            r = found.setdefault(variant, np.empty((n_draws, n_groups, n_groups)))
            r[block] = per_row @ per_row.transpose(0, 2, 1)
    return found


def compare(observed: float, null: np.ndarray) -> NullComparison:
    """The observed value's place in ``null`` (see the module docstring)."""
    n = len(null)
    p_low = (1 + np.count_nonzero(null <= observed)) / (1 + n)
    p_high = (1 + np.count_nonzero(null >= observed)) / (1 + n)
    return NullComparison(
        observed=float(observed),
        mean=float(null.mean()),
        sd=float(null.std(ddof=1)) if n > 1 else 0.0,
        percentile=float(100.0 * np.count_nonzero(null < observed) / n),
        p_value=float(min(1.0, 2 * min(p_low, p_high))),
    )


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down correction: adjusted p-values in the input order.

    The i-th smallest p-value (from 0) is multiplied by ``m - i``, and the adjusted
    values are made non-decreasing in that order and capped at 1.
    """
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def count_tests(n_groups: int, result: AnalysisResult, global_view: bool) -> int:
    """The tests Holm corrects over in a run: the target's spectrum statistics, its
    global share, and every pair of groups in every variant of the group-mean r."""
    pairs = n_groups * (n_groups - 1) // 2
    return 2 + int(global_view) + pairs * len(result.mean_corr)


def matched_null(
    W: np.ndarray,
    groups: Mapping[str, TokenGroup],
    result: AnalysisResult,
    pools: TokenPools,
    n_null: int,
    rng: np.random.Generator,
    matching: Matching | None = None,
    global_axes: np.ndarray | None = None,
) -> NullResult:
    """The null of ``result``'s statistics: its target's spectrum, its share in the
    global span, and every group-mean r in every variant ``result`` has.

    Args:
        W: The matrix the analysis ran on, ``(d_vocab, d_model)``.
        groups: The run's groups (the target among them).
        result: The observed analysis.
        pools: The candidate pools, from :func:`token_pools`.
        n_null: Random groups per statistic.
        rng: The source of the draws.
        matching: What random groups are matched on (``None``: ``none``).
        global_axes: The vocabulary's top components ``(g, d_model)``, orthonormal; with
            them the target's variance share in their span is tested too.
    """
    matching = matching or Matching()
    target = groups[result.target]
    members = match_groups(groups, pools, matching)
    target_draws = draw_random_groups(target, members[result.target], pools, matching, n_null, rng)
    spectra, shares = null_spectra(W, target_draws, result.center, global_axes)
    power = spectra**2
    ratios = power / power.sum(axis=1, keepdims=True)
    # every group gets its own draws, so that a pair's two random groups are independent;
    # matched draws of one row share no token, as the run's own groups share none
    drawn, paired = {}, None
    for name, group in groups.items():
        drawn[name] = draw_random_groups(group, members[name], pools, matching, n_null, rng, paired)
        if matching.match != "none":
            paired = np.concatenate([p for p in (paired, drawn[name]) if p is not None], axis=1)
    names = sorted(groups)
    null_r = null_mean_correlations(W, [drawn[name] for name in names], result.reference)
    corr = _mean_corr_comparisons(names, null_r, result)
    global_share = None
    if shares is not None:
        global_share = compare(_global_share(W[target.token_ids], global_axes), shares)
    null = NullResult(
        n_null=n_null,
        pool_rule=pools.rule,
        match=describe_match(matching, members[result.target]),
        s1_share=compare(result.svd.explained_variance_ratio[0], ratios[:, 0]),
        effective_rank=compare(effective_rank(result.svd.singular_values), effective_rank(spectra)),
        global_share=global_share,
        group_mean_corr=corr,
        p_holm={},
        singular_values=spectra,
        explained_variance_ratio=ratios,
        diagnostics=_diagnostics(target, target_draws, members[result.target], matching),
    )
    tests = null.tests()
    adjusted = holm([c.p_value for c in tests.values()])
    null.p_holm.update({name: float(p) for name, p in zip(tests, adjusted, strict=True)})
    return null


def _mean_corr_comparisons(
    names: list[str], null_r: Mapping[str, np.ndarray], result: AnalysisResult
) -> dict[str, dict[tuple[str, str], NullComparison]]:
    """Each variant's observed pairs against the random groups' (``null_r``: per variant
    ``(n_null, n_groups, n_groups)`` over ``names``)."""
    found = {}
    for variant, stat in result.mean_corr.items():
        index = {name: i for i, name in enumerate(stat.names)}
        found[variant] = {
            (a, b): compare(stat.values[index[a], index[b]], null_r[variant][:, i, j])
            for i, a in enumerate(names)
            for j, b in enumerate(names)
            if i < j
        }
    return found


def _global_share(M: np.ndarray, axes: np.ndarray) -> float:
    deviations = np.asarray(M, dtype=np.float64) - np.mean(M, axis=0)
    return float(((deviations @ axes.T) ** 2).sum() / (deviations**2).sum())


def _diagnostics(
    group: TokenGroup, draws: np.ndarray, members: Sequence[MemberMatch], matching: Matching
) -> dict[str, float]:
    """How close the drawn tokens came to the members they replace."""
    own = np.array(group.token_ids)
    found: dict[str, float] = {}
    if matching.norms is not None:
        found["norm_ratio_median"] = float(np.median(matching.norms[draws] / matching.norms[own]))
    if matching.frequencies is not None:
        zipf = matching.frequencies.zipf
        known = zipf[own] > 0
        if known.any():
            found["zipf_diff_median"] = float(np.median(zipf[draws][:, known] - zipf[own][known]))
    if members:
        found["match_radius_max"] = max(m.radius for m in members)
    return found
