"""Matched random-group nulls: is a group's statistic unusual for groups of words like it?

Every statistic a run reports about a group is compared with the same statistic of
``n_null`` random groups. What a random group is matched on decides what the comparison
can tell (``null_match``):

- ``none``: random tokens of the group's tokenizer form (word-initial ``Ġword`` or bare)
  whose surface is ASCII letters or digits, uniformly; the same size and form mix.
  On byte-level BPE this pool is mostly word fragments and identifiers, with larger
  norms than real words, so it mixes "unusual for words" with "unusual for tokens".
- ``norm``, ``frequency``, ``norm_frequency`` (default): every member is replaced by one
  of its ``n_neighbours`` nearest tokens of a pool of real words, nearest in the pool's
  quantiles of token norm (in the analysed geometry), of word frequency (Zipf, see
  ``embsvd.frequency``; a member unknown to the frequency list is matched on token id
  rank instead, and the rule says so), or of both. Pools hold only words of the
  frequency list (ASCII letters) of the member's form; a numeral member draws from the
  numerals of its form when there are enough of them (else from words, and the rule
  says so). The group's own members are never drawn for it.

A pair of groups is compared with pairs of independent random groups, each matched to
its own group. The comparison gives the null's mean and standard deviation, the observed
value's percentile (percent of draws strictly below it, 0-100) and a two-sided
permutation p-value, ``min(1, 2 min(P(null <= obs), P(null >= obs)))`` with the
``(1 + count) / (1 + n_null)`` estimate of Phipson and Smyth (2010), never 0. Holm's
method corrects every null-tested statistic of a run together; its smallest p-value is
``2 / (1 + n_null)``, so ``required_draws`` says how many draws Holm needs to reach alpha.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from embsvd.analysis import AnalysisResult, MeanReference, effective_rank, mean_corr_key
from embsvd.frequency import TokenFrequencies, surface
from embsvd.groups import TokenGroup

WHOLE_WORD = re.compile(r"[A-Za-z]+|[0-9]+")
NULL_MATCHES = ("none", "norm", "frequency", "norm_frequency")
DRAWS_PER_BATCH = 100  # bounds the (draws, n, d_model) float64 block of a batch
MEANS_BLOCK = 1 << 22  # floats of random groups' means held at once (32 MB)
MAX_REDRAWS = 1000  # rounds of redrawing draws that picked one token twice


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


@dataclass(frozen=True)
class TokenPools:
    """Candidate token ids per form (``bare``, ``initial``): ``ids`` the words (or, with
    ``null_match=none``, every whole-word token), ``numerals`` the numerals (empty with
    ``none``, whose ``ids`` hold them); and the rule that chose them."""

    ids: dict[str, np.ndarray]
    numerals: dict[str, np.ndarray]
    rule: str


@dataclass(frozen=True)
class Matching:
    """What random groups are matched on (see the module docstring).

    Attributes:
        match: One of ``NULL_MATCHES``.
        norms: Row norms of the analysed matrix, ``(d_vocab,)`` (for ``norm*``).
        frequencies: The vocabulary's frequency table (for ``*frequency`` and the pools).
        n_neighbours: Nearest pool tokens each member is replaced by one of.
    """

    match: str = "none"
    norms: np.ndarray | None = None
    frequencies: TokenFrequencies | None = None
    n_neighbours: int = 50

    @property
    def on_norm(self) -> bool:
        return self.match in ("norm", "norm_frequency")

    @property
    def on_frequency(self) -> bool:
        return self.match in ("frequency", "norm_frequency")


def token_pools(
    token_strings: Sequence[str | None],
    excluded_ids: Collection[int],
    marker: str | None,
    frequencies: TokenFrequencies | None = None,
) -> TokenPools:
    """The candidate pools of a vocabulary, per form.

    ``initial`` tokens are the marker (``Ġ``, ``▁``) followed by the surface; ``bare``
    tokens have no marker. Without a marker (WordPiece) both forms are one pool, without
    continuations (``##ing``). With ``frequencies`` the pools hold real words and
    numerals apart; without, every surface of ASCII letters or digits (``null_match=none``).
    """
    excluded = set(excluded_ids)
    form_of = {"bare": [], "initial": []}
    for token_id, token in enumerate(token_strings):
        if token is None or token_id in excluded:
            continue
        marked = marker is not None and token.startswith(marker)
        if WHOLE_WORD.fullmatch(surface(token, marker)):
            form_of["initial" if marked else "bare"].append(token_id)
    ids = {form: np.array(found, dtype=np.int64) for form, found in form_of.items()}
    numerals: dict[str, np.ndarray] = {}
    if frequencies is not None:
        numerals = {f: i[frequencies.of_kind("numeral")[i]] for f, i in ids.items()}
        ids = {f: i[frequencies.of_kind("word")[i]] for f, i in ids.items()}
    if marker is None:
        ids["initial"] = ids["bare"]
        numerals = {**numerals, "initial": numerals["bare"]} if numerals else {}
    return TokenPools(ids, numerals, _pool_rule(ids, numerals, marker, frequencies))


def _pool_rule(
    ids: Mapping[str, np.ndarray],
    numerals: Mapping[str, np.ndarray],
    marker: str | None,
    frequencies: TokenFrequencies | None,
) -> str:
    forms = ["bare"] if marker is None else ["bare", "initial"]
    sizes = ", ".join(
        f"{form} {len(ids[form])}" + (f" + {len(numerals[form])} numerals" if numerals else "")
        for form in forms
    )
    kind = (
        f"words of {frequencies.source} (ASCII letters) and numerals"
        if frequencies is not None
        else "tokens whose surface is ASCII letters or digits"
    )
    form_rule = (
        "no word-start marker: one pool, no ## continuations"
        if marker is None
        else f"initial = {marker!r} + surface, bare = surface"
    )
    return f"{kind}, of the member's form ({form_rule}); special tokens excluded; sizes {sizes}"


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


@dataclass(frozen=True)
class MemberMatch:
    """The candidates one member is replaced by, and how they were chosen."""

    token: str  # the member's token, for messages
    candidates: np.ndarray  # token ids, the member's nearest pool tokens
    radius: float  # distance (in pool quantiles) of the farthest candidate
    by_zipf: bool  # matched on Zipf frequency (else on token id rank)
    numeral_pool: bool


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


def describe_match(matching: Matching, members: Sequence[MemberMatch]) -> str:
    """What the target's random groups were matched on, in words, for a tag."""
    if matching.match == "none":
        return "none: uniform draws from the pool of the member's form"
    on = {
        "norm": "token norm",
        "frequency": "word frequency",
        "norm_frequency": "token norm and word frequency",
    }[matching.match]
    radii = [m.radius for m in members]
    text = (
        f"{matching.match}: each member replaced by one of its {matching.n_neighbours} nearest "
        f"pool tokens in pool quantiles of {on}; radius median {np.median(radii):.3f}, "
        f"max {max(radii):.3f}"
    )
    if matching.on_frequency:
        by_zipf = sum(m.by_zipf for m in members)
        text += (
            f"; frequency: {matching.frequencies.source} for {by_zipf} of {len(members)} "
            f"members, token id rank for {len(members) - by_zipf}"
        )
    numerals = sum(m.numeral_pool for m in members)
    if numerals:
        text += f"; {numerals} numeral members drawn from numerals"
    return text


def required_draws(n_tests: int, alpha: float) -> int:
    """The fewest draws whose smallest p-value, ``2 / (1 + n)``, survives Holm over
    ``n_tests`` tests at ``alpha``: ``m * 2 / (1 + n) <= alpha``."""
    return max(2, math.ceil(2 * n_tests / alpha) - 1)


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
    members = _members(groups, pools, matching)
    target_draws = _draw(target, members[result.target], pools, matching, n_null, rng)
    spectra, shares = null_spectra(W, target_draws, result.center, global_axes)
    power = spectra**2
    ratios = power / power.sum(axis=1, keepdims=True)
    # every group gets its own draws, so that a pair's two random groups are independent;
    # matched draws of one row share no token, as the run's own groups share none
    drawn, paired = {}, None
    for name, group in groups.items():
        drawn[name] = _draw(group, members[name], pools, matching, n_null, rng, paired)
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


def _members(
    groups: Mapping[str, TokenGroup], pools: TokenPools, matching: Matching
) -> dict[str, tuple[MemberMatch, ...]]:
    """Every group's members' candidates (none for ``none``), never a member of any of
    the run's groups.

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


def _draw(
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
