"""The run contract: what one analysis becomes in the tracking store, as plain data.

Metric names, tags and CSV tables of a run are defined here and nowhere else, so tools
that read runs (the sweep table, figures) rely on one list; ``embsvd.tracking`` writes
them. Step series use ``step = component`` (from 0). The README lists every name.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.checks.null import NullComparison
from embsvd.checks.order import CyclicOrder, LinearOrder
from embsvd.checks.run import RigorResult
from embsvd.method.analysis import AnalysisResult, PairwiseStat, effective_rank, mean_corr_key

Metric = tuple[str, float, int]  # (key, value, step)
TOP_TOKENS_IN_TAGS = 5  # the first axis' ends, shown as tags in the runs table
NULL_QUANTILES = (2.5, 50.0, 97.5)  # the band of null spectra: a 95% interval and median
PROJECTION_BINS = 200  # of the logged histogram of the vocabulary's projections


def result_metrics(result: AnalysisResult) -> list[Metric]:
    """The analysis' own metrics (all of the contract's but ``n_tokens`` and the checks')."""
    svd = result.svd
    metrics = _series("singular_value", svd.singular_values)
    metrics += _series("explained_variance_ratio", svd.explained_variance_ratio)
    S = svd.singular_values
    # the spectrum's shape in numbers: ~0 last value when centered, a towering first when raw
    metrics += [("singular_value_last_over_first", S[-1] / S[0], 0)]
    metrics += [("singular_value_first_over_second", S[0] / S[1], 0)]
    metrics += [("s1_share", svd.explained_variance_ratio[0], 0)]
    metrics += [("effective_rank", effective_rank(S), 0)]
    pairwise = {mean_corr_key(variant): stat for variant, stat in result.mean_corr.items()}
    pairwise |= {"group_mean_cos": result.group_mean_cos, "axis_corr": result.axis_corr}
    for prefix, stat in pairwise.items():
        metrics += [(f"{prefix}/{a}__{b}", value, 0) for a, b, value in stat.pairs()]
    return metrics


def rigor_metrics(rigor: RigorResult) -> list[Metric]:
    """The checks' metrics; a check that did not run logs none."""
    metrics: list[Metric] = []
    if (null := rigor.null) is not None:
        metrics += [("null/n_null", null.n_null, 0), ("null/n_tests", null.n_tests, 0)]
        metrics += [("null/p_floor", null.p_floor, 0)]
        for name, comparison in null.tests().items():
            metrics += _comparison(f"null/{name}", comparison)
            metrics += [(f"null/{name}/p_holm", null.p_holm[name], 0)]
        metrics += [(f"null/{name}", value, 0) for name, value in null.diagnostics.items()]
    if (stability := rigor.stability) is not None:
        metrics += _series("stability/axis_cos", stability.axis_cos)
        metrics += [("stability/axis0_cos", stability.axis_cos[0], 0)]
        metrics += _series("stability/loo_axis_cos_min", stability.loo_axis_cos_min)
        metrics += _series("stability/eigengap_ratio", stability.eigengap_ratio)
        metrics += [("stability/n_degenerate", int(stability.degenerate.sum()), 0)]
        metrics += [("stability/subspace_angle_deg", stability.subspace_angle_deg, 0)]
        metrics += [("stability/n_resamples", stability.n_resamples, 0)]
        metrics += _series("interval/singular_value_lo", stability.singular_value_lo)
        metrics += _series("interval/singular_value_hi", stability.singular_value_hi)
    if (heldout := rigor.heldout) is not None:
        for variant, prefix in (("leave_one_out", "heldout/"), ("remainder", "heldout/remainder_")):
            median = heldout.subspace_rank_pct_median(variant)
            if median is not None:
                metrics += [(f"{prefix}subspace_rank_pct_median", median, 0)]
                metrics += _series(
                    f"{prefix}axis_rank_pct_median", heldout.axis_rank_pct_median(variant)
                )
        metrics += [("heldout/n_remainder", len(heldout.of("remainder")), 0)]
        if heldout.precision_at_k is not None:
            metrics += [("heldout/precision_at_k", heldout.precision_at_k, 0)]
            metrics += [("heldout/k", heldout.precision_k, 0)]
        if heldout.pool_rank_pct_median is not None:
            metrics += [("heldout/pool_rank_pct_median", heldout.pool_rank_pct_median, 0)]
    if (confounds := rigor.confounds) is not None:
        # component 1 only: a step series would show its last component in run tables
        metrics += [
            (f"confound/spearman_{name}", rho[0], 0) for name, rho in confounds.spearman.items()
        ]
        metrics += [("confound/n_flagged", len(confounds.flagged()), 0)]
    if (view := rigor.global_view) is not None:
        metrics += [("global/n_global", view.n_global, 0)]
        metrics += [("global/group_variance_share", view.group_variance_share, 0)]
        metrics += _series("global/axis_max_cos", view.axis_max_cos)
        metrics += _series("global/axis_share", view.axis_share)
    if (order := rigor.order) is not None:
        metrics += [(f"order/{name}", value, 0) for name, value in order_metrics(order).items()]
    # nan (a constant property, a zero spectrum) is logged as nan: the name is always there
    return [(key, float(value), step) for key, value, step in metrics]


def order_metrics(order: CyclicOrder | LinearOrder) -> dict[str, float]:
    """The order test's numbers: for a cyclic group the angular neighbours and the
    Fisher-Lee circular correlation, for a linear one the (partial) Spearman, each with
    its permutation p."""
    names = (
        ("neighbours", "neighbours_p", "circular_corr", "circular_corr_p")
        if isinstance(order, CyclicOrder)
        else ("spearman", "spearman_p", "partial_spearman", "partial_spearman_p")
    )
    found = {name: float(getattr(order, name)) for name in names}
    found |= {"n_members": len(order.words), "n_permutations": order.n_permutations}
    return found | {"exact": float(order.exact)}


def _series(key: str, values: Sequence[float]) -> list[Metric]:
    return [(key, float(v), step) for step, v in enumerate(values)]


def _comparison(prefix: str, comparison: NullComparison) -> list[Metric]:
    return [
        (f"{prefix}/{field}", getattr(comparison, field), 0)
        for field in ("mean", "sd", "percentile", "p_value")
    ]


def result_tags(result: AnalysisResult, rigor: RigorResult) -> dict[str, str]:
    """Tags a runs table shows: the first axis' ends, and the checks' warnings."""
    first_axis = [t for t in result.top_tokens if t.component == 0]
    tags = {
        f"embsvd.axis0.{side}": " ".join(
            t.token for t in first_axis if t.side == side and t.rank <= TOP_TOKENS_IN_TAGS
        )
        for side in ("top", "bottom")
    }
    tags["embsvd.random_state"] = str(rigor.random_state)
    if rigor.null is not None:
        tags["embsvd.null_pool"] = rigor.null.pool_rule
        tags["embsvd.null_match"] = rigor.null.match
    if rigor.stability is not None:
        tags["embsvd.interval_method"] = rigor.stability.method
    if rigor.order is not None:
        kind = "cyclic" if isinstance(rigor.order, CyclicOrder) else "linear"
        tags["embsvd.order"] = f"{kind}: {' '.join(rigor.order.words)}"
    if rigor.stability is not None and rigor.stability.degenerate.any():
        tags["embsvd.warning.degenerate_axes"] = ",".join(
            str(k) for k in np.flatnonzero(rigor.stability.degenerate)
        )
    if rigor.confounds is not None and rigor.confounds.flagged():
        tags["embsvd.warning.confounds"] = " ".join(
            f"axis{k}:{name}={rho:+.2f}" for k, name, rho in rigor.confounds.flagged()
        )
    return tags


def write_tables(result: AnalysisResult, rigor: RigorResult, folder: Path) -> None:
    """Every CSV artifact of a run into ``folder``."""
    svd = result.svd
    write_csv(
        folder / "spectrum.csv",
        ["component", "singular_value", "explained_variance_ratio"],
        [
            [i, s, r]
            for i, (s, r) in enumerate(
                zip(svd.singular_values, svd.explained_variance_ratio, strict=True)
            )
        ],
    )
    _write_square(folder / "group_mean_corr.csv", result.group_mean_corr)
    write_csv(
        folder / "top_tokens.csv",
        ["component", "side", "rank", "token_id", "token", "projection", "in_group"],
        [
            [t.component, t.side, t.rank, t.token_id, t.token, t.projection, t.in_group]
            for t in result.top_tokens
        ],
    )
    _write_projection_tables(result, folder)
    words = list(result.target_words)
    write_csv(
        folder / "row_cosine.csv",
        ["word", *words],
        [[w, *row] for w, row in zip(words, result.row_cosine, strict=True)],
    )
    _write_rigor_tables(result, rigor, folder)


def _write_projection_tables(result: AnalysisResult, folder: Path) -> None:
    """The vocabulary's projections as a histogram per component, and the target's own
    projections: enough to redraw the axis figures from the store alone."""
    rows = []
    for k in range(result.projections.shape[1]):
        counts, edges = np.histogram(result.projections[:, k], bins=PROJECTION_BINS)
        rows += [[k, edges[i], edges[i + 1], int(c)] for i, c in enumerate(counts)]
    write_csv(
        folder / "projection_histogram.csv", ["component", "bin_left", "bin_right", "count"], rows
    )
    n_components = result.projections.shape[1]
    write_csv(
        folder / "group_projections.csv",
        ["word", "token_id", *(f"projection_{k}" for k in range(n_components))],
        [
            [word, token_id, *result.projections[token_id]]
            for word, token_id in zip(result.target_words, result.target_ids, strict=True)
        ],
    )


def _write_rigor_tables(result: AnalysisResult, rigor: RigorResult, folder: Path) -> None:
    if (null := rigor.null) is not None:
        write_csv(
            folder / "null_spectrum.csv",
            ["component", "statistic", "observed", "null_mean", "null_sd"]
            + [f"null_q{q:g}" for q in NULL_QUANTILES]
            + ["percentile"],
            _band_rows("singular_value", result.svd.singular_values, null.singular_values)
            + _band_rows(
                "explained_variance_ratio",
                result.svd.explained_variance_ratio,
                null.explained_variance_ratio,
            )
            # s_k / ||M||_F, every draw by its own norm: what the scree figures draw
            + _band_rows(
                "share",
                np.sqrt(result.svd.explained_variance_ratio),
                np.sqrt(null.explained_variance_ratio),
            ),
        )
        write_csv(
            folder / "null_group_mean_corr.csv",
            [
                "variant",
                "group_a",
                "group_b",
                "observed",
                "null_mean",
                "null_sd",
                "percentile",
                "p_value",
                "p_holm",
            ],
            [
                [variant, a, b, c.observed, c.mean, c.sd, c.percentile, c.p_value]
                + [null.p_holm[f"{mean_corr_key(variant)}/{a}__{b}"]]
                for variant, pairs in null.group_mean_corr.items()
                for (a, b), c in pairs.items()
            ],
        )
    if (stability := rigor.stability) is not None:
        write_csv(
            folder / "stability.csv",
            [
                "component",
                "singular_value",
                "interval_lo",
                "interval_hi",
                "axis_cos",
                "loo_axis_cos_min",
                "eigengap_ratio",
                "degenerate",
            ],
            [
                [
                    k,
                    result.svd.singular_values[k],
                    stability.singular_value_lo[k],  # at least as long as axis_cos
                    stability.singular_value_hi[k],
                    stability.axis_cos[k],
                    stability.loo_axis_cos_min[k],
                    stability.eigengap_ratio[k],
                    stability.degenerate[k],
                ]
                for k in range(len(stability.axis_cos))
            ],
        )
        write_csv(
            folder / "stability_loo.csv",
            ["left_out_word", "component", "abs_cos"],
            [
                [word, k, cosine]
                for word, row in zip(result.target_words, stability.loo_axis_cos, strict=True)
                for k, cosine in enumerate(row)
            ],
        )
    if (heldout := rigor.heldout) is not None:
        axes = [f"axis_rank_pct_{k}" for k in range(heldout.n_components)]
        write_csv(
            folder / "heldout.csv",
            ["variant", "word", "token", "token_id", "distance", "subspace_rank_pct", *axes],
            [
                [
                    w.variant,
                    w.word,
                    w.token,
                    w.token_id,
                    w.distance,
                    w.subspace_rank_pct,
                    *w.axis_rank_pct,
                ]
                for w in heldout.words
            ],
        )
    if (confounds := rigor.confounds) is not None:
        write_csv(
            folder / "confounds.csv",
            ["component", "property", "spearman", "flagged"],
            [
                [k, name, rho[k], bool(abs(rho[k]) >= confounds.threshold)]
                for name, rho in confounds.spearman.items()
                for k in range(len(rho))
            ],
        )
    if (order := rigor.order) is not None:
        write_csv(
            folder / "order.csv",
            ["position", "word", "coordinate_1", "coordinate_2"],
            [
                [i, w, *xy]
                for i, (w, xy) in enumerate(zip(order.words, order.coordinates, strict=True))
            ],
        )
    if (view := rigor.global_view) is not None:
        write_csv(
            folder / "global_spectrum.csv",
            ["component", "singular_value", "explained_variance_ratio"],
            [
                [k, s, r]
                for k, (s, r) in enumerate(
                    zip(view.svd.singular_values, view.svd.explained_variance_ratio, strict=True)
                )
            ],
        )


def _band_rows(statistic: str, observed: np.ndarray, draws: np.ndarray) -> list[list[Any]]:
    """Per component: the observed value, the null's mean, sd and quantiles, and the
    observed value's percentile (percent of draws strictly below it)."""
    quantiles = np.percentile(draws, NULL_QUANTILES, axis=0)
    below = 100.0 * (draws < observed[: draws.shape[1]]).mean(axis=0)
    return [
        [k, statistic, observed[k], draws[:, k].mean(), draws[:, k].std(ddof=1), *quantiles[:, k]]
        + [below[k]]
        for k in range(draws.shape[1])
    ]


def _write_square(file: Path, stat: PairwiseStat) -> None:
    names = list(stat.names)
    write_csv(
        file, ["group", *names], [[n, *row] for n, row in zip(names, stat.values, strict=True)]
    )


def write_csv(file: Path, header: list[str], rows: list[list[Any]]) -> None:
    """A CSV with floats at full precision (``repr``) and booleans as ``true``/``false``."""
    with open(file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([[_cell(value) for value in row] for row in rows])


def _cell(value: Any) -> Any:
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


# --- reading runs back: what figures and tables are drawn from ------------------------------

SWEEP_ID_TAG = "embsvd.sweep_id"  # on a sweep's parent and children: filter a sweep by name
# step series and CSV artifacts that tools reading a sweep back use
SERIES_READ = (
    "singular_value",
    "explained_variance_ratio",
    "interval/singular_value_lo",
    "interval/singular_value_hi",
)
TABLES_READ = (
    "top_tokens.csv",
    "null_spectrum.csv",
    "projection_histogram.csv",
    "group_projections.csv",
)


def sweep_id(sweep_name: str) -> str:
    """A sweep's id, which also names its folder of figures: the parent run's name
    without ``sweep/``, anything but letters, digits, ``.`` and ``-`` turned into ``_``
    (``sweep/seed_replication/2026-11-28 07-57-50`` -> ``seed_replication_2026-11-28_07-57-50``)."""
    return file_safe(sweep_name.removeprefix("sweep/"))


def file_safe(name: str) -> str:
    """``name`` with every run of characters other than letters, digits, ``.`` and ``-``
    turned into one ``_``: fit for a file or folder name."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", name).strip("_")


@dataclass(frozen=True)
class LoggedRun:
    """A FINISHED run as read back from a tracking store.

    ``series`` holds the step series of ``SERIES_READ`` that the run logged (ordered by
    step), ``tables`` the CSV artifacts of ``TABLES_READ`` it logged, as rows of strings.
    """

    run_id: str
    name: str
    experiment: str
    tags: Mapping[str, str]
    metrics: Mapping[str, float]
    series: Mapping[str, tuple[float, ...]]
    tables: Mapping[str, tuple[Mapping[str, str], ...]]

    @property
    def model_label(self) -> str:
        """The run name's model part: ``<model>[@<revision>][:output]``."""
        return self.name.rsplit("/", 2)[0]

    @property
    def target(self) -> str:
        return self.tags.get("embsvd.target_group", self.name.rsplit("/", 2)[1])

    @property
    def variant(self) -> str:
        """The run name's last part: ``centered`` or ``raw``, with ``+unit_rows`` and
        ``+whitened`` where they apply."""
        return self.name.rsplit("/", 2)[-1]

    @property
    def space(self) -> str:
        """The geometry the group means live in (centering does not change them): the
        variant without ``centered``/``raw``, e.g. ``+whitened``, or ``""``."""
        return self.variant.removeprefix("centered").removeprefix("raw")

    def table(self, file: str) -> tuple[Mapping[str, str], ...]:
        """The rows of a CSV artifact; empty when the run did not log it."""
        return self.tables.get(file, ())


@dataclass(frozen=True)
class Sweep:
    """The runs of one sweep (or of one filter) that figures are made from."""

    name: str  # names the folder of figures
    selection: str  # how the runs were chosen, in words
    parent_run_id: str | None
    runs: tuple[LoggedRun, ...]  # FINISHED runs, in job order
    left_out: tuple[tuple[str, str], ...] = ()  # (run name, status) of runs not FINISHED
