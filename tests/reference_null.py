"""The matched null as it was before it was batched and memoized: the reference that the
batched implementation is compared with (to 1e-10 given the same draws), and whose draws
(one stream: the target's random groups, then every group's in the order of ``groups``)
the new stream layout is compared with in distribution.

Faithful copies of ``matched_null``, ``null_spectra``, ``null_mean_correlations`` and the
helpers they call, with the matching and drawing of ``embsvd.checks.matching`` as they
were (``draw_groups`` looped over draws). Only dataclasses and ``describe_match`` (a
string) are imported from the library, so a change to the null cannot change its reference.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from embsvd.checks.matching import Matching, MemberMatch, TokenPools, describe_match
from embsvd.checks.null import NullComparison, NullResult
from embsvd.groups import TokenGroup
from embsvd.method.analysis import AnalysisResult, MeanReference, effective_rank

DRAWS_PER_BATCH = 100  # bounds the (draws, n, d_model) float64 block of a batch
MEANS_BLOCK = 1 << 22  # floats of random groups' means held at once (32 MB)
MAX_REDRAWS = 1000  # rounds of redrawing the picks of a member whose token was taken

# ---- embsvd/checks/matching.py


def draw_groups(
    pools: Mapping[str, np.ndarray], forms: Sequence[str], n_draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_draws`` random groups for a group whose tokens have ``forms``, unmatched
    (``null_match=none``): for every form, as many distinct tokens of that form's pool
    as the group has. Returns token ids, shape ``(n_draws, len(forms))``.

    Raises:
        ValueError: a pool is smaller than the number of tokens needed from it.
    """
    counts = {form: forms.count(form) for form in sorted(set(forms))}
    for form, count in counts.items():
        if len(pools[form]) < count:
            raise ValueError(
                f"analysis.n_null: the {form} candidate pool has {len(pools[form])} tokens, "
                f"fewer than the {count} a matched random group needs; set analysis.n_null=0"
            )
    return np.stack(
        [
            np.concatenate(
                [
                    rng.choice(pools[form], size=count, replace=False)
                    for form, count in counts.items()
                ]
            )
            for _ in range(n_draws)
        ]
    )


def match_members(
    group: TokenGroup,
    pools: TokenPools,
    matching: Matching,
    taken: Collection[int] = (),
    scales: dict | None = None,
) -> tuple[MemberMatch, ...]:
    """Every member's nearest pool tokens under ``matching`` (see the module docstring),
    never the group's own tokens nor those in ``taken`` (the other groups' members).
    ``scales`` caches each pool's quantiles across calls (a run's groups share pools).

    Raises:
        ValueError: the pools cannot give the group distinct replacements.
    """
    own = np.array(group.token_ids)
    never = np.union1d(own, np.asarray(list(taken), dtype=np.int64))
    scales = {} if scales is None else scales
    found = []
    for kept in group.kept:
        pool, numeral = _member_pool(kept.token_id, kept.form, pools, matching, len(own))
        found.append(_nearest(kept.token, kept.token_id, pool, never, matching, numeral, scales))
    union = np.unique(np.concatenate([m.candidates for m in found]))
    if len(union) < len(own):
        raise ValueError(
            f"analysis.null_match={matching.match}: the pools offer {len(union)} distinct "
            f"tokens near the {len(own)} members of {group.name}; raise "
            "analysis.null_neighbours or set analysis.null_match=none"
        )
    return tuple(found)


def _member_pool(
    token_id: int, form: str, pools: TokenPools, matching: Matching, group_size: int
) -> tuple[np.ndarray, bool]:
    """The member's pool: numerals of its form for a numeral when there are enough."""
    kinds = matching.frequencies
    if kinds is not None and kinds.of_kind("numeral")[token_id]:
        numerals = pools.numerals.get(form, np.array([], dtype=np.int64))
        if len(numerals) >= matching.n_neighbours + group_size:
            return numerals, True
    return pools.ids[form], False


class _Quantiles:
    """Mid-rank quantiles (0-1) of a pool's values, and of any value among them."""

    def __init__(self, values: np.ndarray):
        self.sorted = np.sort(values)
        self.of_pool = self.of(values)

    def of(self, value: np.ndarray | float) -> np.ndarray:
        ahead = np.searchsorted(self.sorted, value, "left")
        return (ahead + np.searchsorted(self.sorted, value, "right")) / (2 * len(self.sorted))


def _nearest(
    token: str,
    token_id: int,
    pool: np.ndarray,
    never: np.ndarray,
    matching: Matching,
    numeral: bool,
    scales: dict,
) -> MemberMatch:
    """The ``n_neighbours`` pool tokens nearest ``token_id`` in the pool's quantiles of
    each matched property, leaving out ``never``."""
    frequencies = matching.frequencies
    by_zipf = frequencies is not None and frequencies.zipf[token_id] > 0
    properties = []
    if matching.on_norm:
        properties.append(("norm", matching.norms))
    if matching.on_frequency:
        # a member the frequency list does not know is matched on id rank (merge order)
        ranks = np.arange(len(frequencies.zipf), dtype=float)
        properties.append(("zipf", frequencies.zipf) if by_zipf else ("id", ranks))
    squared = np.zeros(len(pool))
    for name, values in properties:
        key = (id(pool), name)
        if key not in scales:
            scales[key] = _Quantiles(values[pool])
        squared += (scales[key].of_pool - scales[key].of(values[token_id])) ** 2
    squared[np.isin(pool, never)] = np.inf
    k = min(matching.n_neighbours, int(np.isfinite(squared).sum()))
    nearest = np.argpartition(squared, k - 1)[:k] if k < len(pool) else np.arange(len(pool))
    nearest = nearest[np.argsort(squared[nearest], kind="stable")]  # the farthest last
    radius = float(np.sqrt(squared[nearest[-1]])) if k else math.inf
    return MemberMatch(token, pool[nearest], radius, by_zipf, numeral)


def draw_matched(
    members: Sequence[MemberMatch],
    n_draws: int,
    rng: np.random.Generator,
    avoid: np.ndarray | None = None,
) -> np.ndarray:
    """``n_draws`` groups, member ``i`` replaced by a uniform pick of its candidates that
    its row has not used yet: no token twice in a draw, nor in the same row of ``avoid``
    (``(n_draws, m)``: the draws of the groups it will be paired with, as the real
    groups share no token either). Members are placed in turn, each redrawing only the
    rows where its pick was taken. Returns ``(n_draws, n_members)`` token ids."""
    used = np.empty((n_draws, 0), dtype=np.int64) if avoid is None else avoid
    columns = []
    for member in members:
        column = member.candidates[rng.integers(0, len(member.candidates), n_draws)]
        for _ in range(MAX_REDRAWS):
            taken = (column[:, None] == used).any(axis=1)
            if not taken.any():
                break
            picks = rng.integers(0, len(member.candidates), int(taken.sum()))
            column[taken] = member.candidates[picks]
        else:
            raise ValueError(
                f"analysis.null_neighbours: after {MAX_REDRAWS} rounds some draws still find "
                f"every candidate of {member.token!r} taken by other members; raise "
                "analysis.null_neighbours"
            )
        columns.append(column)
        used = np.concatenate([used, column[:, None]], axis=1)
    return np.stack(columns, axis=1)


def match_groups(
    groups: Mapping[str, TokenGroup], pools: TokenPools, matching: Matching
) -> dict[str, tuple[MemberMatch, ...]]:
    """Every group's members' candidates (none for ``none``), never a member of any of
    the run's groups: ``{name: (MemberMatch, ...)}``.

    Raises:
        ValueError: the pools cannot give every group distinct replacements in one draw
            (a tiny vocabulary, or ``null_neighbours`` too small).
    """
    if matching.match == "none":
        return {name: () for name in groups}
    taken = sorted({i for group in groups.values() for i in group.token_ids})
    scales: dict = {}  # every pool's quantiles, computed once for all groups
    members = {name: match_members(g, pools, matching, taken, scales) for name, g in groups.items()}
    candidates = [m.candidates for found in members.values() for m in found]
    room = len(np.unique(np.concatenate(candidates)))
    if room < len(taken):
        raise ValueError(
            f"analysis.null_match={matching.match}: the pools offer {room} distinct tokens near "
            f"the members of the run's {len(groups)} groups, which need {len(taken)} distinct "
            "ones per draw; raise analysis.null_neighbours, or set analysis.null_match=none"
        )
    return members


def draw_random_groups(
    group: TokenGroup,
    members: Sequence[MemberMatch],
    pools: TokenPools,
    matching: Matching,
    n_null: int,
    rng: np.random.Generator,
    paired: np.ndarray | None = None,
) -> np.ndarray:
    """A group's random replacements: uniform and independent with ``none`` (the
    unmatched null, kept as it was for comparison), else picks of its ``members``'
    candidates sharing no token with the same row of ``paired``."""
    if matching.match == "none":
        return draw_groups(pools.ids, [k.form for k in group.kept], n_null, rng)
    return draw_matched(members, n_null, rng, paired)


# ---- embsvd/checks/null.py


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
