"""The checks that come with every run: null, stability, held-out ranks, confounds, the
whole-vocabulary view and the order test, each optional, all seeded by one ``random_state``.

The random draws come from independent streams spawned from ``random_state``
(``numpy.random.SeedSequence``): the null's draws do not change when the jackknife's
count does, and a run repeated with the same seed gives the same numbers. Observed
statistics involve no randomness; a different seed changes only the resampled ones.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from embsvd.checks.confounds import Confounds, token_confounds
from embsvd.checks.heldout import HeldOutValidation, validate_held_out
from embsvd.checks.matching import Matching, token_pools
from embsvd.checks.null import NullResult, count_tests, matched_null, required_draws
from embsvd.checks.order import CyclicOrder, LinearOrder, order_test
from embsvd.checks.stability import Stability, jackknife_rank, resample_stability
from embsvd.groups import TokenGroup
from embsvd.io.frequency import TokenFrequencies, token_frequencies
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
class RigorResult:
    """What the checks found; ``None`` for a check that is switched off."""

    random_state: int
    null: NullResult | None = None
    stability: Stability | None = None
    heldout: HeldOutValidation | None = None
    confounds: Confounds | None = None
    global_view: GlobalView | None = None
    order: CyclicOrder | LinearOrder | None = None


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


def needs_frequencies(target: TokenGroup, n_null: int, null_match: str, order: bool) -> bool:
    """Whether the checks read word frequencies: a matched null, or an order test."""
    return bool(n_null and null_match != "none") or (order and target.order != "none")


def assess(
    W: np.ndarray,
    groups: Mapping[str, TokenGroup],
    result: AnalysisResult,
    *,
    token_strings: Sequence[str | None],
    excluded_ids: Collection[int],
    marker: str | None,
    token_norms: np.ndarray | None,
    random_state: int = 0,
    n_null: int = 1000,
    null_match: str = "norm_frequency",
    null_neighbours: int = 50,
    alpha: float = 0.05,
    frequencies: TokenFrequencies | None = None,
    n_resamples: int = 500,
    heldout: bool = True,
    precision_k: int = 10,
    confounds: bool = True,
    confound_threshold: float = 0.3,
    global_svd: GlobalSVD | None = None,
    order: bool = True,
) -> RigorResult:
    """Run the switched-on checks of ``result`` (the analysis of ``W``).

    Args:
        W: The matrix the analysis ran on, ``(d_vocab, d_model)``.
        groups: The run's groups.
        result: The observed analysis of ``result.target``.
        token_strings: Token string of every row (``None`` for unnamed rows).
        excluded_ids: Special tokens: never drawn, ranked or correlated.
        marker: The tokenizer's word-start marker (``Ġ``, ``▁``) or ``None``.
        token_norms: Norm of every stored embedding row (before any transform); needed
            only with ``confounds``.
        random_state: Seeds every draw.
        n_null: Random groups per null statistic (at least; raised to what Holm needs to
            reach ``alpha``, see ``null.required_draws``); 0 switches the null off.
        null_match: What random groups are matched on (``embsvd.checks.matching.NULL_MATCHES``).
        null_neighbours: Nearest pool tokens a member is replaced by one of.
        alpha: The family-wise error rate Holm's correction must be able to reach.
        frequencies: The vocabulary's word frequencies (``None``: computed here, for a
            matched null or an order test).
        n_resamples: Jackknife subsets at most (all of them where there are fewer: 210 for
            10 words, 495 for 12) for the intervals and axis stability; 0: off.
        heldout: Run the held-out validation.
        precision_k: The ``k`` of the held-out precision@k.
        confounds: Correlate the axes with token norm, id and length.
        confound_threshold: ``|rho|`` at which an axis is flagged.
        global_svd: The whole vocabulary's top components; ``None`` skips the comparison.
        order: Test the declared order of a ``linear`` or ``cyclic`` target group.

    The defaults are those of ``conf/analysis/default.yaml``.
    """
    null_rng, resample_rng, order_rng = (
        np.random.default_rng(seed) for seed in np.random.SeedSequence(random_state).spawn(3)
    )
    target = groups[result.target]
    M = W[target.token_ids]
    n_components = result.projections.shape[1]
    unnamed = [i for i, token in enumerate(token_strings) if token is None]
    never_ranked = set(excluded_ids) | set(unnamed)
    ordered = order and target.order != "none" and len(target.kept) >= MIN_ORDERED
    if frequencies is None and needs_frequencies(target, n_null, null_match, order):
        frequencies = token_frequencies(token_strings, marker, excluded_ids)
    checks: dict[str, object] = {}
    if n_null or heldout:  # reading the pools scans the vocabulary: only when needed
        matched = n_null and null_match != "none"
        pools = token_pools(token_strings, excluded_ids, marker, frequencies if matched else None)
    if n_null:
        n_tests = count_tests(len(groups), result, global_svd is not None)
        n_draws = max(n_null, required_draws(n_tests, alpha))
        if n_draws > n_null:
            log.info(
                "analysis.n_null: %d draws instead of %d, so that Holm over %d tests can reach "
                "alpha=%g (smallest p = 2 / (1 + n_null))",
                n_draws,
                n_null,
                n_tests,
                alpha,
            )
        norms = np.linalg.norm(W, axis=1) if null_match in ("norm", "norm_frequency") else None
        matching = Matching(null_match, norms, frequencies, null_neighbours)
        global_axes = global_svd.Vt if global_svd is not None else None
        checks["null"] = matched_null(
            W, groups, result, pools, n_draws, null_rng, matching, global_axes
        )
    movable = len(target.token_ids) - 1 - int(result.center)  # axes a leave-one-out fit has
    if n_resamples and jackknife_rank(len(target.token_ids), result.center) >= 1:
        checks["stability"] = resample_stability(
            M, result.svd, n_components, n_resamples, resample_rng
        )
    elif n_resamples:
        log.warning(
            "stability: %s has too few tokens for jackknife subsets; skipped", result.target
        )
    if movable < 1 and heldout:
        log.warning(
            "held-out ranks: %s has too few tokens to leave one out; skipped", result.target
        )
    if heldout and movable >= 1:
        forms = {k.form for k in target.kept}
        pool = np.unique(np.concatenate([pools.ids[form] for form in sorted(forms)]))
        checks["heldout"] = validate_held_out(
            W,
            target,
            center=result.center,
            n_components=n_components,
            excluded_ids=never_ranked,
            precision_k=precision_k,
            pool_ids=pool,
        )
    if confounds:
        correlated = np.array(sorted(set(range(len(W))) - never_ranked))
        checks["confounds"] = token_confounds(
            result.projections, token_norms, token_strings, correlated, marker, confound_threshold
        )
    if global_svd is not None:
        checks["global_view"] = compare_with_global(M, result.svd, global_svd, n_components)
    if ordered:
        ids = target.token_ids
        checks["order"] = order_test(
            M,
            target.kept_words,
            target.order,
            norms=np.linalg.norm(np.asarray(M, dtype=np.float64), axis=1),
            frequencies=frequencies.zipf[ids],
            rng=order_rng,
        )
    return RigorResult(random_state=random_state, **checks)
