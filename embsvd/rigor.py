"""The checks that come with every run: null, stability, held-out ranks, confounds and
the whole-vocabulary view, each optional, all seeded by one ``random_state``.

The random draws come from independent streams spawned from ``random_state``
(``numpy.random.SeedSequence``): the null's draws do not change when the bootstrap's
count does, and a run repeated with the same seed gives the same numbers. Observed
statistics involve no randomness; a different seed changes only the resampled ones.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from embsvd.analysis import AnalysisResult, GroupSVD
from embsvd.confounds import Confounds, token_confounds
from embsvd.geometry import GlobalSVD
from embsvd.groups import TokenGroup
from embsvd.heldout import HeldOutValidation, validate_held_out
from embsvd.null import NullResult, matched_null, token_pools
from embsvd.stability import Stability, resample_stability

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlobalView:
    """The target group against the top components of the whole (centered) vocabulary.

    Attributes:
        n_global: Global components compared with.
        group_variance_share: Share of the group's variance about its own mean that lies
            in the span of the global components.
        chance_share: The same share for a direction uniform on the sphere,
            ``n_global / d_model``.
        axis_max_cos: Per group axis, the largest ``|cos|`` with one global component.
        axis_share: Per group axis, its squared length inside the global span.
        svd: The global decomposition (its spectrum is logged too).
    """

    n_global: int
    group_variance_share: float
    chance_share: float
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
        chance_share=len(G) / G.shape[1],
        axis_max_cos=cosines.max(axis=1),
        axis_share=(cosines**2).sum(axis=1),
        svd=global_svd,
    )


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
    n_bootstrap: int = 200,
    heldout: bool = True,
    precision_k: int = 10,
    confounds: bool = True,
    confound_threshold: float = 0.3,
    global_svd: GlobalSVD | None = None,
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
        n_null: Random groups per null statistic; 0 switches the null off.
        n_bootstrap: Bootstrap resamples; 0 switches stability off.
        heldout: Run the held-out validation.
        precision_k: The ``k`` of the held-out precision@k.
        confounds: Correlate the axes with token norm, id and length.
        confound_threshold: ``|rho|`` at which an axis is flagged.
        global_svd: The whole vocabulary's top components; ``None`` skips the comparison.

    The defaults are those of ``conf/analysis/default.yaml``.
    """
    null_rng, bootstrap_rng = (
        np.random.default_rng(seed) for seed in np.random.SeedSequence(random_state).spawn(2)
    )
    target = groups[result.target]
    M = W[target.token_ids]
    n_components = result.projections.shape[1]
    unnamed = [i for i, token in enumerate(token_strings) if token is None]
    never_ranked = set(excluded_ids) | set(unnamed)
    checks: dict[str, object] = {}
    if n_null or heldout:  # reading the pools scans the vocabulary: only when needed
        pools = token_pools(token_strings, excluded_ids, marker)
    if n_null:
        checks["null"] = matched_null(W, groups, result, pools, n_null, null_rng)
    movable = len(target.token_ids) - 1 - int(result.center)  # axes a leave-one-out fit has
    if n_bootstrap and movable >= 1:
        checks["stability"] = resample_stability(
            M, result.svd, n_components, n_bootstrap, bootstrap_rng
        )
    if movable < 1 and (n_bootstrap or heldout):
        log.warning(
            "stability and held-out ranks: %s has too few tokens to leave one out; skipped",
            result.target,
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
    return RigorResult(random_state=random_state, **checks)
