"""Matched random-group nulls: is a group's statistic unusual for any group of its size?

Every statistic a run reports about a group is compared with the same statistic of
``n_null`` random groups drawn from a candidate pool: tokens of the same tokenizer form
as the group's tokens (whole words written in ASCII letters, or digits; special tokens
excluded), the same size, and, for a group that mixes forms, the same number of tokens
of each form. A pair of groups is compared with pairs of random groups of the two
groups' sizes and forms, drawn independently.

The comparison gives the null's mean and standard deviation, the observed value's
percentile (percent of null draws strictly below it, 0-100) and a two-sided
permutation p-value, ``min(1, 2 min(P(null <= obs), P(null >= obs)))`` with the
``(1 + count) / (1 + n_null)`` estimate of Phipson and Smyth (2010), which is never 0.
P-values of the group pairs of a run are corrected together with Holm's method.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from embsvd.analysis import AnalysisResult, effective_rank
from embsvd.groups import TokenGroup

WHOLE_WORD = re.compile(r"[A-Za-z]+|[0-9]+")
POOL_RULE = (
    "tokens of the group's form that are whole words of ASCII letters or digits "
    "({forms}); special tokens excluded; size {sizes}"
)
DRAWS_PER_BATCH = 100  # bounds the (draws, n, d_model) float64 block of a batch


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
        pool_rule: How the candidate pool was chosen, with its sizes per form.
        s1_share: The target's first explained-variance ratio.
        effective_rank: The target spectrum's effective rank (its decay).
        group_mean_corr: Every pair ``(a, b)`` (sorted names) of group-mean correlations.
        p_holm: Holm-corrected p-values of ``group_mean_corr``, same keys.
        singular_values: The null draws' spectra, ``(n_null, k)``, for bands in figures.
        explained_variance_ratio: The same, as shares of the total, ``(n_null, k)``.
    """

    n_null: int
    pool_rule: str
    s1_share: NullComparison
    effective_rank: NullComparison
    group_mean_corr: dict[tuple[str, str], NullComparison]
    p_holm: dict[tuple[str, str], float]
    singular_values: np.ndarray
    explained_variance_ratio: np.ndarray


@dataclass(frozen=True)
class TokenPools:
    """Candidate token ids per form (``bare``, ``initial``) and the rule that chose them."""

    ids: dict[str, np.ndarray]
    rule: str


def token_pools(
    token_strings: Sequence[str | None], excluded_ids: Collection[int], marker: str | None
) -> TokenPools:
    """The candidate pools of a vocabulary.

    ``initial`` tokens are the marker (``Ġ``, ``▁``) followed by a whole word; ``bare``
    tokens are a whole word without it. Without a marker (WordPiece) both forms are the
    whole-word tokens that are not continuations (``##ing``).
    """
    excluded = set(excluded_ids)
    bare, initial = [], []
    for token_id, token in enumerate(token_strings):
        if token is None or token_id in excluded:
            continue
        if marker is not None and token.startswith(marker):
            if WHOLE_WORD.fullmatch(token[len(marker) :]):
                initial.append(token_id)
        elif WHOLE_WORD.fullmatch(token):
            bare.append(token_id)
    pools = {"bare": np.array(bare, dtype=np.int64), "initial": np.array(initial, dtype=np.int64)}
    if marker is None:
        pools["initial"] = pools["bare"]
        forms, sizes = "no word-start marker: one pool, no ## continuations", str(len(bare))
    else:
        forms = f"initial = {marker!r} + word, bare = word"
        sizes = ", ".join(f"{form} {len(ids)}" for form, ids in sorted(pools.items()))
    return TokenPools(pools, POOL_RULE.format(forms=forms, sizes=sizes))


def draw_groups(
    pools: Mapping[str, np.ndarray], forms: Sequence[str], n_draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_draws`` random groups matched to a group whose tokens have ``forms``.

    Each draw takes, for every form, as many distinct tokens of that form's pool as the
    group has. Returns token ids, shape ``(n_draws, len(forms))``.

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


def null_spectra(W: np.ndarray, draws: np.ndarray, center: bool) -> np.ndarray:
    """Singular values of every drawn group's submatrix, ``(n_draws, min(n, d_model))``,
    from the eigenvalues of its ``n x n`` Gram matrix (cheaper than an SVD when n << d;
    a zero singular value comes out as about ``sqrt(eps) s_1``, which the statistics of
    the null do not feel)."""
    n = draws.shape[1]
    k = min(n, W.shape[1])
    spectra = np.empty((len(draws), k))
    for start in range(0, len(draws), DRAWS_PER_BATCH):
        M = np.asarray(W[draws[start : start + DRAWS_PER_BATCH]], dtype=np.float64)
        if center:
            M = M - M.mean(axis=1, keepdims=True)
        eigenvalues = np.linalg.eigvalsh(M @ M.transpose(0, 2, 1))[:, ::-1][:, :k]
        spectra[start : start + len(M)] = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return spectra


def draw_means(W: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Mean vector of every drawn group, ``(n_draws, d_model)``."""
    means = np.empty((len(draws), W.shape[1]))
    for start in range(0, len(draws), DRAWS_PER_BATCH):
        batch = draws[start : start + DRAWS_PER_BATCH]
        means[start : start + len(batch)] = np.asarray(W[batch], dtype=np.float64).mean(axis=1)
    return means


def rowwise_pearson(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``A`` with the same row of ``B``: ``(n_rows,)``."""
    A = A - A.mean(axis=1, keepdims=True)
    B = B - B.mean(axis=1, keepdims=True)
    return (A * B).sum(axis=1) / (np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1))


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
) -> NullResult:
    """The null of ``result``'s statistics: its target's spectrum and every group-mean r.

    Args:
        W: The matrix the analysis ran on, ``(d_vocab, d_model)``.
        groups: The run's groups (the target among them).
        result: The observed analysis.
        pools: The candidate pools, from :func:`token_pools`.
        n_null: Random groups per statistic.
        rng: The source of the draws.
    """
    forms = {name: [k.form for k in group.kept] for name, group in groups.items()}
    target_draws = draw_groups(pools.ids, forms[result.target], n_null, rng)
    spectra = null_spectra(W, target_draws, result.center)
    power = spectra**2
    ratios = power / power.sum(axis=1, keepdims=True)
    observed_ratios = result.svd.explained_variance_ratio
    # every group gets its own draws, so that a pair's two random groups are independent
    means = {
        name: draw_means(W, draw_groups(pools.ids, forms[name], n_null, rng)) for name in groups
    }
    pairs = list(itertools.combinations(sorted(groups), 2))
    observed_r = {(a, b): r for a, b, r in result.group_mean_corr.pairs()}
    corr = {
        (a, b): compare(observed_r[a, b], rowwise_pearson(means[a], means[b])) for a, b in pairs
    }
    p_holm = dict(zip(pairs, holm([corr[pair].p_value for pair in pairs]), strict=True))
    return NullResult(
        n_null=n_null,
        pool_rule=pools.rule,
        s1_share=compare(observed_ratios[0], ratios[:, 0]),
        effective_rank=compare(effective_rank(result.svd.singular_values), effective_rank(spectra)),
        group_mean_corr=corr,
        p_holm={pair: float(p) for pair, p in p_holm.items()},
        singular_values=spectra,
        explained_variance_ratio=ratios,
    )
