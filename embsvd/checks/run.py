"""The checks that come with every run: null, stability, held-out ranks, confounds, the
whole-vocabulary view and the order test, each optional, all seeded by one ``random_state``.

The random draws come from independent streams spawned from ``random_state``
(``numpy.random.SeedSequence``): the null's draws do not change when the jackknife's
count does, and a run repeated with the same seed gives the same numbers. Observed
statistics involve no randomness; a different seed changes only the resampled ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from embsvd.checks.confounds import Confounds, token_confounds
from embsvd.checks.heldout import HeldOutValidation, validate_held_out
from embsvd.checks.matching import Matching, NullMatch, TokenPools, token_pools
from embsvd.checks.null import NullResult, count_tests, matched_null, required_draws
from embsvd.checks.order import CyclicOrder, LinearOrder, order_test
from embsvd.checks.stability import Stability, jackknife_rank, resample_stability
from embsvd.groups import TokenGroup
from embsvd.io.augmented import with_virtual_frequencies
from embsvd.io.frequency import TokenFrequencies
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import AnalysisResult, GroupSVD
from embsvd.method.geometry import GlobalSVD

log = logging.getLogger(__name__)
MIN_ORDERED = 3  # members an order test needs


@dataclass(frozen=True)
class GlobalView:
    """The target group against the top components of the whole (centered) vocabulary.

    Whether ``group_variance_share`` is high or low is read against the matched null's
    share (``NullResult.global_share``): random groups of words like the group's lie in
    the vocabulary's top span too, far more than a uniform direction would.

    Attributes:
        n_global: Global components compared with.
        group_variance_share: Share of the group's variance about its own mean that lies
            in the span of the global components.
        axis_max_cos: Per group axis, the largest ``|cos|`` with one global component.
        axis_share: Per group axis, its squared length inside the global span.
        svd: The global decomposition (its spectrum is logged too).
    """

    n_global: int
    group_variance_share: float
    axis_max_cos: np.ndarray
    axis_share: np.ndarray
    svd: GlobalSVD


@dataclass(frozen=True)
class ChecksConfig:
    """The settings of ``run_checks``; the defaults are ``conf/analysis/default.yaml``'s,
    and each field is named as the ``analysis.*`` key that sets it in a run.

    Attributes:
        random_state: Seeds every draw (the null's, the jackknife's and the order
            test's come from independent streams of it).
        n_null: Random groups per null statistic (at least; raised to what Holm needs to
            reach ``alpha``, see ``embsvd.checks.null.required_draws``); 0: no null.
        null_match: What random groups are matched on: ``none``, ``norm``, ``frequency``
            or ``norm_frequency`` (a ``NullMatch``; a plain string is converted).
        null_neighbours: Nearest pool tokens a member is replaced by one of.
        alpha: The family-wise error rate Holm's correction must be able to reach.
        n_resamples: Jackknife subsets at most (all of them where there are fewer: 210
            for 10 words, 495 for 12) for the intervals and axis stability; 0: off.
        heldout: Rank left-out members (and the held-out remainder) among the vocabulary.
        precision_k: The ``k`` of the held-out precision@k.
        confounds: Correlate the axes with token norm, id and length.
        confound_threshold: ``|rho|`` at which an axis is flagged.
        n_global: Top components of the whole vocabulary the group is compared with, of
            the ``global_components`` given to ``run_checks``; 0: no global view.
        order: Test the declared order of a ``linear`` or ``cyclic`` target group.
    """

    random_state: int = 0
    n_null: int = 1000
    null_match: NullMatch = NullMatch.norm_frequency
    null_neighbours: int = 50
    alpha: float = 0.05
    n_resamples: int = 500
    heldout: bool = True
    precision_k: int = 10
    confounds: bool = True
    confound_threshold: float = 0.3
    n_global: int = 50
    order: bool = True

    def __post_init__(self) -> None:
        """Refuse settings no check can run with, naming the field, the value and what is
        allowed: the one place these ranges are written (a run's ``analysis.*`` keys are
        checked through here before the run opens)."""
        for key in ("precision_k", "null_neighbours"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: must be at least 1, got {getattr(self, key)}")
        for key in ("n_null", "n_resamples"):  # one draw has no spread
            if getattr(self, key) < 0 or getattr(self, key) == 1:
                raise ValueError(f"{key}: must be 0 (off) or at least 2, got {getattr(self, key)}")
        if self.n_global < 0:
            raise ValueError(f"n_global: must be 0 (off) or more, got {self.n_global}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha: a level between 0 and 1, got {self.alpha}")
        if not 0 <= self.confound_threshold <= 1:
            raise ValueError(
                f"confound_threshold: a |Spearman rho| between 0 and 1, "
                f"got {self.confound_threshold}"
            )
        if self.null_match not in tuple(NullMatch):  # a notebook passes a plain string
            raise ValueError(
                f"null_match: {self.null_match!r} is not one of {', '.join(NullMatch)}"
            )
        object.__setattr__(self, "null_match", NullMatch(self.null_match))


@dataclass(frozen=True)
class ChecksResult:
    """What the checks found; ``None`` for a check that is switched off."""

    random_state: int
    null: NullResult | None = None
    stability: Stability | None = None
    heldout: HeldOutValidation | None = None
    confounds: Confounds | None = None
    global_view: GlobalView | None = None
    order: CyclicOrder | LinearOrder | None = None
    # tokens flagged under-trained (embsvd.io.undertrained) that the null's pools left out
    # and the extremes mark; None: not looked for (analysis.undertrained=false)
    undertrained: frozenset[int] | None = None


def compare_with_global(
    M: np.ndarray, svd: GroupSVD, global_svd: GlobalSVD, n_components: int
) -> GlobalView:
    """How much of a group (``M``: ``(n, d_model)``, decomposed as ``svd``) the global
    components explain."""
    G = global_svd.Vt  # (n_global, d_model), orthonormal rows
    deviations = np.asarray(M, dtype=np.float64) - svd.mean
    inside = deviations @ G.T
    axes = svd.Vt[:n_components]
    cosines = np.abs(axes @ G.T)  # (n_components, n_global)
    return GlobalView(
        n_global=len(G),
        group_variance_share=float((inside**2).sum() / (deviations**2).sum()),
        axis_max_cos=cosines.max(axis=1),
        axis_share=(cosines**2).sum(axis=1),
        svd=global_svd,
    )


def _needs_frequencies(target: TokenGroup, config: ChecksConfig) -> bool:
    """Whether the checks read word frequencies: a matched null, or an order test."""
    matched_null = bool(config.n_null and config.null_match != "none")
    return matched_null or (config.order and target.order != "none")


def run_checks(
    W: np.ndarray,
    groups: Mapping[str, TokenGroup],
    result: AnalysisResult,
    vocab: Vocabulary,
    config: ChecksConfig | None = None,
    *,
    global_components: GlobalSVD | None = None,
    timer: Callable[[str], AbstractContextManager[object]] | None = None,
    undertrained_ids: Collection[int] | None = None,
) -> ChecksResult:
    """Run the checks ``config`` switches on for ``result``, the analysis of ``W``.

    Args:
        W: The matrix the analysis ran on, ``(d_vocab, d_model)``.
        groups: The run's groups (every one enters the null's group-mean correlations).
        result: The observed analysis of ``result.target``.
        vocab: The tokens of ``W``'s rows (``Checkpoint.vocabulary``). Special tokens and
            unnamed rows are never drawn, ranked or correlated; the confounds use its
            ``token_norms`` (the stored rows'), the null's norm matching ``W``'s own.
        config: The check settings; ``None``: ``ChecksConfig()``.
        global_components: The whole vocabulary's top components
            (``embsvd.method.geometry.global_svd`` of ``W``'s ordinary rows); the first
            ``config.n_global`` are compared with the group and tested in the null.
            ``None`` skips the global view.
        timer: Called with ``checks.<name>`` around each check (and ``checks.setup``
            around the pools they share), e.g. ``embsvd.pipeline.phases.clock``.
        undertrained_ids: Tokens flagged under-trained
            (``embsvd.io.undertrained.UndertrainedTokens.excluded_ids``): never drawn by
            the null (the held-out ranks keep their pool), and recorded in the result so
            that the extremes mark them; ``None``: not looked for, the pools as before.
    """
    config = config or ChecksConfig()
    timed = timer or (lambda name: nullcontext())
    null_rng, resample_rng, order_rng = (
        np.random.default_rng(seed) for seed in np.random.SeedSequence(config.random_state).spawn(3)
    )
    target = groups[result.target]
    M = W[target.token_ids]
    n_components = result.projections.shape[1]
    never_ranked = vocab.special_ids | vocab.unnamed_ids
    ordered = config.order and target.order != "none" and len(target.kept) >= MIN_ORDERED
    frequencies = vocab.frequencies if _needs_frequencies(target, config) else None
    # a multi-token member (subwords=mean) is matched on its own word's frequency
    frequencies = with_virtual_frequencies(W, frequencies)
    global_svd = None
    if global_components is not None and config.n_global:
        global_svd = global_components.top(config.n_global)
    checks: dict[str, object] = {}
    if config.n_null or config.heldout:  # reading the pools scans the vocabulary: only then
        matched = config.n_null and config.null_match != "none"
        with timed("checks.setup"):
            pools = token_pools(
                vocab.token_strings,
                vocab.special_ids,
                vocab.marker,
                frequencies if matched else None,
            )
    null_pools = pools if config.n_null else None
    if config.n_null and undertrained_ids:  # the null draws no under-trained token
        null_pools = token_pools(
            vocab.token_strings,
            vocab.special_ids,
            vocab.marker,
            frequencies if config.null_match != "none" else None,
            undertrained_ids=undertrained_ids,
        )
    if config.n_null:
        with timed("checks.null"):
            checks["null"] = _null(
                W, groups, result, null_pools, frequencies, global_svd, config, null_rng
            )
    movable = len(target.token_ids) - 1 - int(result.center)  # axes a leave-one-out fit has
    if config.n_resamples and jackknife_rank(len(target.token_ids), result.center) >= 1:
        with timed("checks.stability"):
            checks["stability"] = resample_stability(
                M, result.svd, n_components, config.n_resamples, resample_rng
            )
    elif config.n_resamples:
        log.warning(
            "stability: %s has too few tokens for jackknife subsets; skipped", result.target
        )
    if movable < 1 and config.heldout:
        log.warning(
            "held-out ranks: %s has too few tokens to leave one out; skipped", result.target
        )
    if config.heldout and movable >= 1:
        forms = {k.form for k in target.kept}
        pool = np.unique(np.concatenate([pools.ids[form] for form in sorted(forms)]))
        with timed("checks.heldout"):
            checks["heldout"] = validate_held_out(
                W,
                target,
                center=result.center,
                n_components=n_components,
                excluded_ids=never_ranked,
                precision_k=config.precision_k,
                pool_ids=pool,
                span=result.vocabulary_span,
            )
    if config.confounds:
        correlated = np.ones(len(W), dtype=bool)  # every row but the never-ranked, in order
        correlated[list(never_ranked)] = False
        with timed("checks.confounds"):
            checks["confounds"] = token_confounds(
                result.projections,
                vocab.token_norms,
                vocab.token_strings,
                np.flatnonzero(correlated),
                vocab.marker,
                config.confound_threshold,
            )
    if global_svd is not None:
        with timed("checks.global_view"):
            checks["global_view"] = compare_with_global(M, result.svd, global_svd, n_components)
    if ordered:
        with timed("checks.order"):
            checks["order"] = order_test(
                M,
                target.kept_words,
                target.order,
                norms=np.linalg.norm(np.asarray(M, dtype=np.float64), axis=1),
                frequencies=frequencies.zipf[target.token_ids],
                rng=order_rng,
            )
    if undertrained_ids is not None:
        checks["undertrained"] = frozenset(int(i) for i in undertrained_ids)
    return ChecksResult(random_state=config.random_state, **checks)


def _null(
    W: np.ndarray,
    groups: Mapping[str, TokenGroup],
    result: AnalysisResult,
    pools: TokenPools,
    frequencies: TokenFrequencies | None,
    global_svd: GlobalSVD | None,
    config: ChecksConfig,
    rng: np.random.Generator,
) -> NullResult:
    """The matched null, with at least as many draws as Holm over the run's tests needs."""
    n_tests = count_tests(len(groups), result, global_svd is not None)
    n_draws = max(config.n_null, required_draws(n_tests, config.alpha))
    if n_draws > config.n_null:
        log.info(
            "analysis.n_null: %d draws instead of %d, so that Holm over %d tests can reach "
            "alpha=%g (smallest p = 2 / (1 + n_null))",
            n_draws,
            config.n_null,
            n_tests,
            config.alpha,
        )
    # the row norms are read once per matrix (a sweep's runs share it), a block at a time
    matching = Matching.of_matrix(W, config.null_match, frequencies, config.null_neighbours)
    global_axes = global_svd.Vt if global_svd is not None else None
    return matched_null(W, groups, result, pools, n_draws, rng, matching, global_axes)
