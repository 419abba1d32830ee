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

Random streams. The null's generator (in a run, the null's stream that ``run_checks``
spawns from ``random_state``) is split with ``numpy.random.SeedSequence.spawn`` into two
children (``null_streams``), each driving a generator of the parent's bit generator type:

- child 0, the target's random groups: its spectrum, effective rank and global share;
- child 1, the pairs' random groups: every group's, drawn in the order of the groups'
  names, each group's draws avoiding the tokens of those drawn before it in the same row.

So a rerun with the same seed gives the same numbers, and the pairs' null (``PairNull``:
every pair's group-mean r in every variant) depends only on the matrix, the groups' tokens
and matched candidates, the matching, ``n_null``, the seed and the ``MeanReference``:
not on which group is the target, on centering or on ``n_components``. ``pair_null``
computes it once per process for these (a ``MatrixMemo`` of ``PAIR_NULLS_KEPT`` entries:
the matrix by identity and fingerprint, the rest by value), so the runs of a sweep over
targets, centering and components share it. The target's null (``TargetNull``: its draws,
spectra and global shares) is memoized the same way by ``target_null``, per target and
centering (``TARGET_NULLS_KEPT`` entries), for runs that differ in ``n_components`` only.
A memo holds no matrix: a matrix that is gone, or changed in place since (its fingerprint
differs), is never answered from it. Holm's correction stays per run, over all of the
run's tests. ``clear_null_memos`` forgets every memoized null, pools and norms.

The random groups' means are formed from one gather of every group's rows per block of
draws (``MEANS_BLOCK`` gathered floats), summed in float64 without a float64 copy of the
rows; the target's spectra come from batched eigenvalues of the draws' Gram matrices
(``SPECTRA_BLOCK`` float64s at once). No step loops over draws in Python. ``W`` may be an
``np.ndarray``, an ``np.memmap`` or an ``embsvd.io.rows.BFloat16Rows``: it is read only by
``W[ids]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embsvd.checks.matching import (
    Matching,
    MemberMatch,
    TokenPools,
    clear_memos,
    describe_match,
    draw_random_groups,
    match_groups,
)
from embsvd.groups import TokenGroup
from embsvd.io.memo import MatrixMemo, value_digest
from embsvd.method.analysis import AnalysisResult, MeanReference, effective_rank, mean_corr_key

SPECTRA_BLOCK = 1 << 20  # float64s of the target's gathered draws at once (8 MB)
MEANS_BLOCK = 1 << 22  # gathered rows' floats of the random groups held at once
PAIR_NULLS_KEPT = 4  # pairs' nulls memoized: a sweep alternates between few settings
TARGET_NULLS_KEPT = 32  # targets' nulls (per target and centering, ~1 MB each)


@dataclass(frozen=True)
class NullComparison:
    """An observed statistic against its null distribution."""

    observed: float
    mean: float
    sd: float
    percentile: float  # percent of null draws strictly below the observed value, 0-100
    p_value: float  # two-sided


@dataclass(frozen=True, eq=False)
class PairNull:
    """Every pair's group-mean r over the pairs' random groups.

    Attributes:
        names: The groups, sorted.
        pairs: ``(a, b)`` with ``a < b``, in ``names`` order.
        r: ``{variant: (n_pairs, n_draws)}``, read-only, row ``k`` the null of ``pairs[k]``.
    """

    names: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    r: dict[str, np.ndarray]

    @property
    def n_draws(self) -> int:
        return next(iter(self.r.values())).shape[1] if self.r else 0

    def of(self, variant: str, pair: tuple[str, str]) -> np.ndarray:
        """The null of one pair in one variant, ``(n_draws,)``."""
        return self.r[variant][self.pairs.index(pair)]


@dataclass(frozen=True)
class NullStreams:
    """The null's two seed sequences (see the module docstring) and its bit generator."""

    target: np.random.SeedSequence
    pairs: np.random.SeedSequence
    bit_generator: type[np.random.BitGenerator] = np.random.PCG64


def null_streams(rng: np.random.Generator) -> NullStreams:
    """Split the null's generator into the target's and the pairs' streams: the children
    0 and 1 that ``SeedSequence.spawn`` gives its seed sequence next (for a fresh
    generator, the first two). A generator without a seed sequence (restored from a
    state) seeds a new one from its own next draws."""
    seed = getattr(rng.bit_generator, "seed_seq", None)
    if not isinstance(seed, np.random.SeedSequence):
        seed = np.random.SeedSequence(rng.integers(0, 2**63, size=4).tolist())
    target, pairs = seed.spawn(2)
    return NullStreams(target, pairs, type(rng.bit_generator))


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
        pair_null: The pairs' null the group-mean r were compared with (shared, through
            the memo, by the runs that differ only in target, centering or components).
        target_null: The target's draws, spectra and global shares (``singular_values``
            is its spectra).
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
    pair_null: PairNull | None = field(default=None, repr=False, compare=False)
    target_null: TargetNull | None = field(default=None, repr=False, compare=False)

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
    W: Any, draws: np.ndarray, center: bool, global_axes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Singular values of every drawn group's submatrix, ``(n_draws, min(n, d_model))``,
    from the eigenvalues of its ``n x n`` Gram matrix (cheaper than an SVD when n << d);
    and, with ``global_axes`` (``(g, d_model)`` orthonormal), each draw's share of
    variance about its own mean inside their span, ``(n_draws,)``.

    A centered draw of ``n <= d_model`` tokens has rank ``n - 1``: its last singular
    value is 0, and is given as 0 (from the eigenvalues it would come out as rounding
    noise of about ``sqrt(eps) s_1``, which an SVD of the observed group does not have).
    Other zeros (a draw holding two equal rows) come out as such noise, which the
    statistics of the null do not feel.

    The draws of a matched null reuse a few hundred distinct tokens: then each draw's
    Gram matrix is gathered from the Gram matrix of the distinct tokens' rows, centered
    as ``H G H`` (``H = I - 1/n``); else the draws' rows are gathered, ``SPECTRA_BLOCK``
    float64s at a time. The share projects each distinct token on the axes once and
    centers the projections per draw, which equals projecting the draw's deviations."""
    n_draws, n = draws.shape
    k = min(n, W.shape[1])
    tokens, local = np.unique(draws, return_inverse=True)
    local = local.reshape(draws.shape)
    if len(tokens) ** 2 <= n_draws * n * n:  # the distinct tokens' Gram is the cheaper
        spectra, totals = _spectra_from_tokens(W, tokens, local, center, k)
    else:
        spectra, totals = _spectra_from_rows(W, draws, center, k, global_axes is not None)
    if center and n <= W.shape[1]:
        spectra[:, n - 1] = 0.0
    shares = None
    if global_axes is not None:
        projected = _projections(W, tokens, global_axes)[local]
        projected -= projected.mean(axis=1, keepdims=True)  # (n_draws, n, g)
        shares = np.einsum("bng,bng->b", projected, projected) / totals
    return spectra, shares


def _spectra_from_tokens(
    W: Any, tokens: np.ndarray, local: np.ndarray, center: bool, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``null_spectra``'s spectra and each draw's summed squared deviations, from the
    Gram matrix of the distinct ``tokens``' rows (``local``: each draw's indices into
    them)."""
    rows = _projections(W, tokens, None)
    gram = (rows @ rows.T)[local[:, :, None], local[:, None, :]]  # (n_draws, n, n)
    means = gram.mean(axis=2, keepdims=True)  # each row's product with the draw's mean
    centered = gram - means - means.transpose(0, 2, 1) + means.mean(axis=1, keepdims=True)
    eigenvalues = np.linalg.eigvalsh(centered if center else gram)[:, ::-1][:, :k]
    totals = np.trace(centered, axis1=1, axis2=2)
    return np.sqrt(np.clip(eigenvalues, 0.0, None)), totals


def _spectra_from_rows(
    W: Any, draws: np.ndarray, center: bool, k: int, with_totals: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """``null_spectra``'s spectra (and each draw's summed squared deviations), from the
    draws' gathered rows, ``SPECTRA_BLOCK`` float64s at a time."""
    n_draws, n = draws.shape
    spectra = np.empty((n_draws, k))
    totals = np.empty(n_draws) if with_totals else None
    rows = max(1, SPECTRA_BLOCK // max(1, n * W.shape[1]))
    for start in range(0, n_draws, rows):
        block = slice(start, min(start + rows, n_draws))
        stored = W[draws[block]]  # (rows, n, d_model), float32 for bfloat16
        mean = stored.sum(axis=1, dtype=np.float64, keepdims=True)
        mean /= n
        deviations = np.subtract(stored, mean, dtype=np.float64)
        M = deviations if center else stored.astype(np.float64)
        gram = M @ M.transpose(0, 2, 1)
        eigenvalues = np.linalg.eigvalsh(gram)[:, ::-1][:, :k]
        spectra[block] = np.sqrt(np.clip(eigenvalues, 0.0, None))
        if totals is not None:
            totals[block] = (
                np.trace(gram, axis1=1, axis2=2)  # the deviations' squares, summed
                if center
                else np.einsum("bnd,bnd->b", deviations, deviations)
            )
    return spectra, totals


def _projections(W: Any, tokens: np.ndarray, axes: np.ndarray | None) -> np.ndarray:
    """``W[tokens] @ axes.T`` in float64, ``(len(tokens), g)``, a block of rows at a
    time; the rows themselves in float64 without ``axes``."""
    width = W.shape[1] if axes is None else len(axes)
    found = np.empty((len(tokens), width))
    rows = max(1, SPECTRA_BLOCK // max(1, W.shape[1]))
    for start in range(0, len(tokens), rows):
        block = slice(start, start + rows)
        gathered = np.asarray(W[tokens[block]], dtype=np.float64)
        found[block] = gathered if axes is None else gathered @ axes.T
    return found


def group_means(W: Any, draws: Sequence[np.ndarray], rows: slice) -> np.ndarray:
    """The mean vectors of every group's random groups in ``rows`` of the draws,
    ``(len(rows), n_groups, d_model)`` float64: one gather of all their rows, each group's
    summed in float64 from the rows as stored (float32 for bfloat16), never a float64
    copy of them."""
    ids = np.concatenate([d[rows] for d in draws], axis=1)
    gathered = W[ids]  # (rows, all members, d_model)
    sizes = [d.shape[1] for d in draws]
    bounds = np.cumsum([0, *sizes])
    means = np.empty((len(ids), len(draws), W.shape[1]))
    for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        np.sum(gathered[:, a:b], axis=1, dtype=np.float64, out=means[:, g])
    means /= np.asarray(sizes, dtype=np.float64)[:, None]
    return means


def _correlation_blocks(W: Any, draws: Sequence[np.ndarray], reference: MeanReference | None):
    """``(rows, {variant: (len(rows), n_groups, n_groups)})`` over blocks of the draws:
    Pearson r between the groups' mean vectors of each row, per variant."""
    n_draws = len(draws[0])
    members = sum(d.shape[1] for d in draws)
    rows = max(1, MEANS_BLOCK // max(1, members * W.shape[1]))
    for start in range(0, n_draws, rows):
        block = slice(start, min(start + rows, n_draws))
        means = group_means(W, draws, block)
        variants = {"raw": means} if reference is None else reference.variants(means)
        found = {}
        for variant, vectors in variants.items():  # (rows, n_groups, d_model)
            vectors = vectors - vectors.mean(axis=2, keepdims=True)
            gram = vectors @ vectors.transpose(0, 2, 1)
            norms = np.sqrt(np.diagonal(gram, axis1=1, axis2=2))  # each vector's length
            gram /= norms[:, :, None]
            gram /= norms[:, None, :]
            found[variant] = gram
        yield block, found


def null_mean_correlations(
    W: Any, draws: Sequence[np.ndarray], reference: MeanReference | None
) -> dict[str, np.ndarray]:
    """Pearson r between the mean vectors of every pair of groups drawn in the same row,
    in every variant ``reference`` defines (``raw`` only without one).

    Args:
        W: ``(d_vocab, d_model)``.
        draws: Per group, its random groups' token ids, ``(n_draws, n_members)``.
        reference: What the ``centered`` and ``decorrelated`` variants take out.

    Returns:
        ``{variant: (n_draws, n_groups, n_groups)}``; the means are formed a block of
        draws at a time, ``MEANS_BLOCK`` gathered floats.
    """
    n_groups, n_draws = len(draws), len(draws[0])
    found: dict[str, np.ndarray] = {}
    for block, variants in _correlation_blocks(W, draws, reference):
        for variant, r in variants.items():
            found.setdefault(variant, np.empty((n_draws, n_groups, n_groups)))[block] = r
    return found


_PAIR_NULLS = MatrixMemo(PAIR_NULLS_KEPT)
_TARGET_NULLS = MatrixMemo(TARGET_NULLS_KEPT)


def clear_null_memos() -> None:
    """Forget every memoized pairs' and target's null, and the matching's pools, norms
    and candidates."""
    _PAIR_NULLS.clear()
    _TARGET_NULLS.clear()
    clear_memos()


@dataclass(frozen=True, eq=False)
class TargetNull:
    """The target's random groups and their spectra (arrays read-only, shared).

    Attributes:
        draws: Token ids, ``(n_draws, n)``.
        singular_values: ``(n_draws, min(n, d_model))`` (``null_spectra``).
        shares: Each draw's variance share in the global span, ``(n_draws,)``, or ``None``.
    """

    draws: np.ndarray
    singular_values: np.ndarray
    shares: np.ndarray | None


def target_null(
    W: Any,
    target: TokenGroup,
    members: Sequence[MemberMatch],
    pools: TokenPools,
    matching: Matching,
    n_draws: int,
    seed: np.random.SeedSequence,
    center: bool,
    global_axes: np.ndarray | None = None,
    bit_generator: type[np.random.BitGenerator] = np.random.PCG64,
) -> TargetNull:
    """The target's null: ``n_draws`` random groups drawn from ``seed`` and their spectra.
    Memoized per process like ``pair_null`` (runs that differ only in ``n_components``,
    or in the other groups where they leave the target's candidates alone, share it)."""
    key = (
        tuple((k.token_id, k.form) for k in target.kept),
        value_digest([m.candidates for m in members]),
        value_digest(pools.ids) if matching.match == "none" else None,
        matching.match,
        matching.n_neighbours,
        n_draws,
        _seed_digest(seed, bit_generator),
        center,
        None if global_axes is None else value_digest(np.asarray(global_axes)),
    )

    def compute() -> TargetNull:
        rng = np.random.Generator(bit_generator(seed))
        draws = draw_random_groups(target, members, pools, matching, n_draws, rng)
        spectra, shares = null_spectra(W, draws, center, global_axes)
        for array in (draws, spectra, shares):
            if array is not None:
                array.flags.writeable = False  # shared by every run that hits the memo
        return TargetNull(draws, spectra, shares)

    return _TARGET_NULLS.get(W, key, compute)


def _seed_digest(seed: np.random.SeedSequence, bit_generator: type) -> str:
    """What a stream's numbers depend on: its seed sequence and bit generator."""
    return value_digest(seed.entropy, seed.spawn_key, seed.pool_size, bit_generator.__name__)


def pair_draws(
    groups: Mapping[str, TokenGroup],
    members: Mapping[str, Sequence[MemberMatch]],
    pools: TokenPools,
    matching: Matching,
    n_draws: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Every group's random groups for the pairs' null, ``{name: (n_draws, n)}`` in name
    order: each group its own draws, so that a pair's two random groups are independent;
    matched draws of one row share no token, as the run's own groups share none."""
    drawn, paired = {}, None
    for name in sorted(groups):
        group = groups[name]
        drawn[name] = draw_random_groups(
            group, members[name], pools, matching, n_draws, rng, paired
        )
        if matching.match != "none":
            paired = np.concatenate([p for p in (paired, drawn[name]) if p is not None], axis=1)
    return drawn


def pair_null(
    W: Any,
    groups: Mapping[str, TokenGroup],
    members: Mapping[str, Sequence[MemberMatch]],
    pools: TokenPools,
    matching: Matching,
    n_draws: int,
    seed: np.random.SeedSequence,
    reference: MeanReference | None,
    bit_generator: type[np.random.BitGenerator] = np.random.PCG64,
) -> PairNull:
    """The pairs' null: every pair's group-mean r, in every variant ``reference``
    defines, over ``n_draws`` random groups per group drawn from ``seed``
    (``pair_draws``). Memoized per process: the same ``W`` object (unchanged) with equal
    groups, candidates, pools, matching, draws, seed and reference gives the same object.
    """
    names = tuple(sorted(groups))
    key = (
        tuple((n, tuple((k.token_id, k.form) for k in groups[n].kept)) for n in names),
        value_digest([[m.candidates for m in members[n]] for n in names]),
        value_digest(pools.ids) if matching.match == "none" else None,
        matching.match,
        matching.n_neighbours,
        n_draws,
        _seed_digest(seed, bit_generator),
        None if reference is None else value_digest(reference.mean, reference.axes),
    )

    def compute() -> PairNull:
        rng = np.random.Generator(bit_generator(seed))
        drawn = pair_draws(groups, members, pools, matching, n_draws, rng)
        pairs = tuple((a, b) for i, a in enumerate(names) for b in names[i + 1 :])
        upper = np.triu_indices(len(names), 1)
        r: dict[str, np.ndarray] = {}
        for block, variants in _correlation_blocks(W, [drawn[n] for n in names], reference):
            for variant, found in variants.items():
                out = r.setdefault(variant, np.empty((len(pairs), n_draws)))
                out[:, block] = found[:, upper[0], upper[1]].T
        for array in r.values():
            array.flags.writeable = False  # shared by every run that hits the memo
        return PairNull(names, pairs, r)

    return _PAIR_NULLS.get(W, key, compute)


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
    W: Any,
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
        rng: The null's stream: its seed sequence gives the target's and the pairs'
            streams (``null_streams``; see the module docstring).
        matching: What random groups are matched on (``None``: ``none``).
        global_axes: The vocabulary's top components ``(g, d_model)``, orthonormal; with
            them the target's variance share in their span is tested too.
    """
    matching = matching or Matching()
    target = groups[result.target]
    members = match_groups(groups, pools, matching)
    streams = null_streams(rng)
    own = target_null(
        W,
        target,
        members[result.target],
        pools,
        matching,
        n_null,
        streams.target,
        result.center,
        global_axes,
        streams.bit_generator,
    )
    spectra, shares, target_draws = own.singular_values, own.shares, own.draws
    power = spectra**2
    ratios = power / power.sum(axis=1, keepdims=True)
    pairs = pair_null(
        W,
        groups,
        members,
        pools,
        matching,
        n_null,
        streams.pairs,
        result.reference,
        streams.bit_generator,
    )
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
        group_mean_corr=_mean_corr_comparisons(pairs, result),
        p_holm={},
        singular_values=spectra,
        explained_variance_ratio=ratios,
        diagnostics=_diagnostics(target, target_draws, members[result.target], matching),
        pair_null=pairs,
        target_null=own,
    )
    tests = null.tests()
    adjusted = holm([c.p_value for c in tests.values()])
    null.p_holm.update({name: float(p) for name, p in zip(tests, adjusted, strict=True)})
    return null


def _mean_corr_comparisons(
    pairs: PairNull, result: AnalysisResult
) -> dict[str, dict[tuple[str, str], NullComparison]]:
    """Each variant's observed pairs against the random groups' (``pairs``)."""
    found = {}
    for variant, stat in result.mean_corr.items():
        index = {name: i for i, name in enumerate(stat.names)}
        found[variant] = {
            (a, b): compare(stat.values[index[a], index[b]], pairs.r[variant][k])
            for k, (a, b) in enumerate(pairs.pairs)
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
