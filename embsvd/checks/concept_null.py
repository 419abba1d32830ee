"""Is a concept's axis more than any pairs of words would give? A random-pair null, and
leave-one-pair-out stability.

Random pairs. Every draw replaces the concept's tokens by random ones drawn as the group
null draws (``embsvd.checks.matching``): with ``null_match`` other than ``none`` each
token by one of its ``null_neighbours`` nearest pool tokens of its form in token norm
and word frequency, so random pair ``i`` is matched to pair ``i`` on both of its words;
with ``none`` uniformly from the whole-word pool of its form. A draw has as many pairs
(or words per set) as the concept kept, shares no token within itself and never uses
one of the concept's. Each draw's first-PC share and pair consistency (with the axis
the concept's own estimator gives the draw) form the null distributions.

Both statistics are one-sided (a concept is a direction when they are large), so the
p-value is ``(1 + #{null >= observed}) / (1 + n_null)`` (Phipson and Smyth's +1: never
0, its smallest value ``1 / (1 + n_null)``). Validity: it holds when the concept's
pairs, as sets of tokens, are exchangeable with the matched random pairs under the
hypothesis of no shared direction; matching on norm and frequency takes those two
properties out of the comparison, nothing else (two words of one part of speech share
directions that random words of the same frequency need not).

The draws come from their own stream, ``SeedSequence(random_state, spawn_key=(CONCEPT_STREAM,))``:
the group checks' streams (``embsvd.checks.run``) are not touched, and a rerun with the
same seed draws the same pairs.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from embsvd.checks.matching import (
    Matching,
    TokenPools,
    describe_match,
    draw_random_groups,
    match_members,
    token_pools,
)
from embsvd.groups import TokenGroup
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import ProjectedToken, extreme_tokens
from embsvd.method.concepts import (
    ConceptAxis,
    ConceptTokens,
    concept_axis,
    concept_statistics,
    leave_one_out,
    project_on_axis,
)

CONCEPT_STREAM = 0xC0C  # the spawn key of the concept null's stream (see above)
NULL_BLOCK = 1 << 22  # float64s of gathered draws' rows at once (32 MB)
QUANTILE = 95.0  # the null's percentile reported beside its mean


@dataclass(frozen=True)
class NullSummary:
    """An observed statistic against its random-pair null (one-sided, upper)."""

    observed: float
    mean: float
    q95: float  # the null's 95th percentile
    percentile: float  # percent of draws strictly below the observed value
    p_value: float  # (1 + #{null >= observed}) / (1 + n_null)


@dataclass(frozen=True)
class ConceptNull:
    """The random-pair null of a concept's first-PC share and pair consistency.

    Attributes:
        n_null: Random draws.
        match: What the random pairs were matched on, in words.
        pool_rule: How the candidate pools were chosen.
        first_pc_share: The observed first-PC share against the draws'.
        consistency: The observed pair consistency against the draws'.
        null_first_pc_share: The draws' first-PC shares ``(n_null,)``.
        null_consistency: The draws' pair consistencies ``(n_null,)``.
    """

    n_null: int
    match: str
    pool_rule: str
    first_pc_share: NullSummary
    consistency: NullSummary
    null_first_pc_share: np.ndarray
    null_consistency: np.ndarray


def upper_p_value(observed: float, null: np.ndarray) -> float:
    """``(1 + #{null >= observed}) / (1 + len(null))``."""
    return float((1 + np.count_nonzero(null >= observed)) / (1 + len(null)))


def summarize(observed: float, null: np.ndarray) -> NullSummary:
    return NullSummary(
        observed=float(observed),
        mean=float(null.mean()),
        q95=float(np.percentile(null, QUANTILE)),
        percentile=float(100.0 * np.count_nonzero(null < observed) / len(null)),
        p_value=upper_p_value(observed, null),
    )


def concept_stream(random_state: int) -> np.random.Generator:
    """The concept null's generator (see the module docstring)."""
    return np.random.default_rng(np.random.SeedSequence(random_state, spawn_key=(CONCEPT_STREAM,)))


def as_group(concept: ConceptTokens) -> TokenGroup:
    """The concept's tokens as one group (negative then positive), for the matching."""
    kept = concept.negative + concept.positive
    return TokenGroup(concept.name, tuple(k.word for k in kept), kept=kept, dropped=())


def random_pairs(
    concept: ConceptTokens,
    pools: TokenPools,
    matching: Matching,
    n_null: int,
    rng: np.random.Generator,
    members: tuple = (),
) -> tuple[np.ndarray, np.ndarray]:
    """``n_null`` random stand-ins of the concept's tokens: negative ids ``(n_null, n)``
    and positive ids ``(n_null, m)``, column ``i`` matched to the concept's token ``i``
    (``members``: its tokens' candidates, ``match_members``; found here when not given)."""
    group = as_group(concept)
    if matching.match != "none" and not members:
        members = match_members(group, pools, matching)
    draws = draw_random_groups(group, members, pools, matching, n_null, rng)
    n = len(concept.negative)
    return draws[:, :n], draws[:, n:]


def null_statistics(
    W, negative_ids: np.ndarray, positive_ids: np.ndarray, estimator: str, paired: bool
) -> tuple[np.ndarray, np.ndarray]:
    """First-PC share and consistency of every draw, ``(n_null,)`` each, a block of
    draws at a time (``NULL_BLOCK`` gathered floats)."""
    n_null, width = len(negative_ids), negative_ids.shape[1] + positive_ids.shape[1]
    shares, consistencies = np.empty(n_null), np.empty(n_null)
    rows = max(1, NULL_BLOCK // max(1, width * W.shape[1]))
    for start in range(0, n_null, rows):
        block = slice(start, min(start + rows, n_null))
        neg = np.asarray(W[negative_ids[block]], dtype=np.float64)
        pos = np.asarray(W[positive_ids[block]], dtype=np.float64)
        _, shares[block], consistencies[block] = concept_statistics(neg, pos, estimator, paired)
    return shares, consistencies


def concept_null(
    W,
    concept: ConceptTokens,
    observed: ConceptAxis,
    vocab: Vocabulary,
    *,
    n_null: int,
    null_match: str = "norm_frequency",
    null_neighbours: int = 50,
    random_state: int = 0,
    undertrained_ids: Collection[int] = (),
) -> ConceptNull:
    """The random-pair null of ``observed``, the axis of ``concept`` on ``W``.

    Args:
        W: The matrix the axis was estimated on ``(d_vocab, d_model)``, read by rows.
        concept: The concept's tokens after the single-token rule.
        observed: Its axis and statistics (``concept_axis``).
        vocab: ``W``'s tokens: the pools, the word frequencies.
        n_null: Random draws (at least 2).
        null_match: ``none``, ``norm``, ``frequency`` or ``norm_frequency``.
        null_neighbours: Nearest pool tokens each token is replaced by one of.
        random_state: Seeds the draws (``concept_stream``).
        undertrained_ids: Tokens flagged under-trained: never drawn (as in the group null).

    Raises:
        ValueError: fewer than 2 draws, or pools too small for distinct stand-ins.
    """
    if n_null < 2:
        raise ValueError(f"analysis.n_null: the concept null needs at least 2 draws, got {n_null}")
    matched = null_match != "none"
    frequencies = vocab.frequencies if matched else None
    pools = token_pools(
        vocab.token_strings, vocab.special_ids, vocab.marker, frequencies, undertrained_ids
    )
    matching = Matching.of_matrix(W, null_match, frequencies, null_neighbours)
    members = tuple(match_members(as_group(concept), pools, matching)) if matched else ()
    rng = concept_stream(random_state)
    negative_ids, positive_ids = random_pairs(concept, pools, matching, n_null, rng, members)
    shares, consistencies = null_statistics(
        W, negative_ids, positive_ids, observed.estimator, concept.paired
    )
    return ConceptNull(
        n_null=n_null,
        match=describe_match(matching, members),
        pool_rule=pools.rule,
        first_pc_share=summarize(observed.first_pc_share, shares),
        consistency=summarize(observed.consistency, consistencies),
        null_first_pc_share=shares,
        null_consistency=consistencies,
    )


@dataclass(frozen=True)
class ConceptStability:
    """Leave-one-out: ``|cos|`` of the axis refitted without each unit (a pair, or a
    word of a set) with the full axis."""

    units: tuple[str, ...]
    abs_cos: np.ndarray  # (k,)

    @property
    def min_abs_cos(self) -> float:
        return float(np.nanmin(self.abs_cos)) if np.isfinite(self.abs_cos).any() else np.nan


def concept_stability(W, concept: ConceptTokens, observed: ConceptAxis) -> ConceptStability:
    """Leave-one-pair-out (for sets, leave-one-word-out) stability of ``observed``."""
    neg = np.asarray(W[concept.negative_ids], dtype=np.float64)
    pos = np.asarray(W[concept.positive_ids], dtype=np.float64)
    found = leave_one_out(neg, pos, observed.axis, observed.estimator, concept.paired)
    return ConceptStability(tuple(concept.units), found)


@dataclass(frozen=True)
class ConceptResult:
    """One concept analysed on a matrix: its axis, the vocabulary on it, the checks.

    Attributes:
        concept: The concept's tokens after the single-token rule.
        axis: Its axis and statistics.
        projections: The whole vocabulary on the axis ``(d_vocab,)`` (0: the poles'
            midpoint; the positive pole above).
        top_tokens: The ``top_k`` tokens at each end (``top``: the positive pole).
        stability: Leave-one-out.
        null: The random-pair null, ``None`` with ``n_null = 0``.
        cosines: ``{geometry: (names, (c, c))}``: the configured concepts' axes' cosines
            (filled in by the pipeline, which has both geometries).
    """

    concept: ConceptTokens
    axis: ConceptAxis
    projections: np.ndarray
    top_tokens: tuple[ProjectedToken, ...]
    stability: ConceptStability
    null: ConceptNull | None = None
    cosines: dict[str, tuple[tuple[str, ...], np.ndarray]] = field(default_factory=dict)


def analyse_concept(
    W,
    concept: ConceptTokens,
    vocab: Vocabulary,
    *,
    top_k: int = 20,
    n_null: int = 1000,
    null_match: str = "norm_frequency",
    null_neighbours: int = 50,
    random_state: int = 0,
    undertrained_ids: Collection[int] = (),
) -> ConceptResult:
    """The axis of ``concept`` on ``W`` (its own estimator), the vocabulary projected on it
    with its ``top_k`` tokens at each end, leave-one-out stability and (``n_null > 0``)
    the random-pair null (``undertrained_ids`` left out of its pools)."""
    negative = np.asarray(W[concept.negative_ids], dtype=np.float64)
    positive = np.asarray(W[concept.positive_ids], dtype=np.float64)
    axis = concept_axis(negative, positive, concept.estimator, concept.paired)
    projections = project_on_axis(W, axis.axis, axis.origin)
    top = extreme_tokens(projections[:, None], vocab, concept.token_ids, top_k)
    null = None
    if n_null:
        null = concept_null(
            W,
            concept,
            axis,
            vocab,
            n_null=n_null,
            null_match=null_match,
            null_neighbours=null_neighbours,
            random_state=random_state,
            undertrained_ids=undertrained_ids,
        )
    return ConceptResult(concept, axis, projections, top, concept_stability(W, concept, axis), null)
