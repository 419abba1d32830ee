"""The run contract's CSV tables: each file's name and columns, and their writers.

Part of the contract (``contract`` holds the tags, the run name and the metrics); no
mlflow here either. Floats are written at full precision and booleans as
``true``/``false``, so a table read back gives the logged numbers exactly.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.checks.run import ChecksResult
from embsvd.method.analysis import AnalysisResult, PairwiseStat, mean_corr_key
from embsvd.tracking.contract import pair_metric

NULL_QUANTILES = (2.5, 50.0, 97.5)  # the band of null spectra: a 95% interval and median
PROJECTION_BINS = 200  # of the logged histogram of the vocabulary's projections
NULL_SHARE = "share"  # null_spectrum.csv's rows of s_k / ||M||_F, each draw by its own norm


class Table(StrEnum):
    """The CSV artifacts: a run's, and ``children.csv`` of a sweep's parent."""

    SPECTRUM = "spectrum.csv"
    GROUP_MEAN_CORR = "group_mean_corr.csv"
    TOP_TOKENS = "top_tokens.csv"
    PROJECTION_HISTOGRAM = "projection_histogram.csv"
    GROUP_PROJECTIONS = "group_projections.csv"
    ROW_COSINE = "row_cosine.csv"
    NULL_SPECTRUM = "null_spectrum.csv"
    NULL_GROUP_MEAN_CORR = "null_group_mean_corr.csv"
    STABILITY = "stability.csv"
    STABILITY_LOO = "stability_loo.csv"
    HELDOUT = "heldout.csv"
    CONFOUNDS = "confounds.csv"
    ORDER = "order.csv"
    GLOBAL_SPECTRUM = "global_spectrum.csv"
    CHILDREN = "children.csv"


# Each table's header. A column with <...> stands for one column per value (a group, a
# word, a component), filled in by ``header``.
_SPECTRUM = ("component", "singular_value", "explained_variance_ratio")
COLUMNS: dict[Table, tuple[str, ...]] = {
    Table.SPECTRUM: _SPECTRUM,
    Table.GROUP_MEAN_CORR: ("group", "<group>"),
    Table.TOP_TOKENS: (
        *("component", "side", "rank", "token_id", "token", "text", "projection", "in_group"),
    ),
    Table.PROJECTION_HISTOGRAM: ("component", "bin_left", "bin_right", "count"),
    Table.GROUP_PROJECTIONS: ("word", "token_id", "projection_<k>"),
    Table.ROW_COSINE: ("word", "<word>"),
    Table.NULL_SPECTRUM: (
        *("component", "statistic", "observed", "null_mean", "null_sd"),
        *(f"null_q{q:g}" for q in NULL_QUANTILES),
        "percentile",
    ),
    Table.NULL_GROUP_MEAN_CORR: (
        *("variant", "group_a", "group_b", "observed", "null_mean", "null_sd"),
        *("percentile", "p_value", "p_holm"),
    ),
    Table.STABILITY: (
        *("component", "singular_value", "interval_lo", "interval_hi", "axis_cos"),
        *("loo_axis_cos_min", "eigengap_ratio", "degenerate"),
    ),
    Table.STABILITY_LOO: ("left_out_word", "component", "abs_cos"),
    Table.HELDOUT: (
        *("variant", "word", "token", "token_id", "distance", "subspace_rank_pct"),
        "axis_rank_pct_<k>",
    ),
    Table.CONFOUNDS: ("component", "property", "spearman", "flagged"),
    Table.ORDER: ("position", "word", "coordinate_1", "coordinate_2"),
    Table.GLOBAL_SPECTRUM: _SPECTRUM,
    Table.CHILDREN: ("job_num", "run_id", "name", "status", "overrides", "error"),
}
# the CSV artifacts that tools reading a sweep back use
TABLES_READ = (
    Table.TOP_TOKENS,
    Table.NULL_SPECTRUM,
    Table.PROJECTION_HISTOGRAM,
    Table.GROUP_PROJECTIONS,
)


def header(table: Table, values: Sequence[Any] = ()) -> list[str]:
    """``table``'s columns, its ``<...>`` column repeated for each of ``values``."""
    return [
        re.sub(r"<[^>]+>", str(value), column)
        for column in COLUMNS[table]
        for value in (values if "<" in column else [None])
    ]


def write_tables(result: AnalysisResult, checks: ChecksResult, folder: Path) -> None:
    """Every CSV artifact of a run into ``folder``."""
    svd = result.svd
    write_csv(
        folder / Table.SPECTRUM,
        header(Table.SPECTRUM),
        [
            [i, s, r]
            for i, (s, r) in enumerate(
                zip(svd.singular_values, svd.explained_variance_ratio, strict=True)
            )
        ],
    )
    _write_square(folder / Table.GROUP_MEAN_CORR, result.group_mean_corr)
    write_csv(
        folder / Table.TOP_TOKENS,
        header(Table.TOP_TOKENS),
        [
            [t.component, t.side, t.rank, t.token_id, t.token, t.text, t.projection, t.in_group]
            for t in result.top_tokens
        ],
    )
    _write_projection_tables(result, folder)
    words = list(result.target_words)
    write_csv(
        folder / Table.ROW_COSINE,
        header(Table.ROW_COSINE, words),
        [[w, *row] for w, row in zip(words, result.row_cosine, strict=True)],
    )
    _write_null_tables(result, checks, folder)
    _write_check_tables(result, checks, folder)


def _write_projection_tables(result: AnalysisResult, folder: Path) -> None:
    """The vocabulary's projections as a histogram per component, and the target's own
    projections: enough to redraw the axis figures from the store alone."""
    rows = []
    for k in range(result.projections.shape[1]):
        counts, edges = np.histogram(result.projections[:, k], bins=PROJECTION_BINS)
        rows += [[k, edges[i], edges[i + 1], int(c)] for i, c in enumerate(counts)]
    write_csv(folder / Table.PROJECTION_HISTOGRAM, header(Table.PROJECTION_HISTOGRAM), rows)
    write_csv(
        folder / Table.GROUP_PROJECTIONS,
        header(Table.GROUP_PROJECTIONS, range(result.projections.shape[1])),
        [
            [word, token_id, *result.projections[token_id]]
            for word, token_id in zip(result.target_words, result.target_ids, strict=True)
        ],
    )


def _write_null_tables(result: AnalysisResult, checks: ChecksResult, folder: Path) -> None:
    if (null := checks.null) is None:
        return
    svd = result.svd
    write_csv(
        folder / Table.NULL_SPECTRUM,
        header(Table.NULL_SPECTRUM),
        _band_rows("singular_value", svd.singular_values, null.singular_values)
        + _band_rows(
            "explained_variance_ratio", svd.explained_variance_ratio, null.explained_variance_ratio
        )
        # s_k / ||M||_F, every draw by its own norm: what the scree figures draw
        + _band_rows(
            NULL_SHARE,
            np.sqrt(svd.explained_variance_ratio),
            np.sqrt(null.explained_variance_ratio),
        ),
    )
    write_csv(
        folder / Table.NULL_GROUP_MEAN_CORR,
        header(Table.NULL_GROUP_MEAN_CORR),
        [
            [variant, a, b, c.observed, c.mean, c.sd, c.percentile, c.p_value]
            + [null.p_holm[pair_metric(mean_corr_key(variant), a, b)]]
            for variant, pairs in null.group_mean_corr.items()
            for (a, b), c in pairs.items()
        ],
    )


def _write_check_tables(result: AnalysisResult, checks: ChecksResult, folder: Path) -> None:
    if (stability := checks.stability) is not None:
        write_csv(
            folder / Table.STABILITY,
            header(Table.STABILITY),
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
            folder / Table.STABILITY_LOO,
            header(Table.STABILITY_LOO),
            [
                [word, k, cosine]
                for word, row in zip(result.target_words, stability.loo_axis_cos, strict=True)
                for k, cosine in enumerate(row)
            ],
        )
    if (heldout := checks.heldout) is not None:
        write_csv(
            folder / Table.HELDOUT,
            header(Table.HELDOUT, range(heldout.n_components)),
            [
                [w.variant, w.word, w.token, w.token_id, w.distance, w.subspace_rank_pct]
                + [*w.axis_rank_pct]
                for w in heldout.words
            ],
        )
    if (confounds := checks.confounds) is not None:
        write_csv(
            folder / Table.CONFOUNDS,
            header(Table.CONFOUNDS),
            [
                [k, name, rho[k], bool(abs(rho[k]) >= confounds.threshold)]
                for name, rho in confounds.spearman.items()
                for k in range(len(rho))
            ],
        )
    if (order := checks.order) is not None:
        write_csv(
            folder / Table.ORDER,
            header(Table.ORDER),
            [
                [i, w, *xy]
                for i, (w, xy) in enumerate(zip(order.words, order.coordinates, strict=True))
            ],
        )
    if (view := checks.global_view) is not None:
        spectrum = zip(view.svd.singular_values, view.svd.explained_variance_ratio, strict=True)
        write_csv(
            folder / Table.GLOBAL_SPECTRUM,
            header(Table.GLOBAL_SPECTRUM),
            [[k, s, r] for k, (s, r) in enumerate(spectrum)],
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
        file,
        header(Table.GROUP_MEAN_CORR, names),
        [[n, *row] for n, row in zip(names, stat.values, strict=True)],
    )


def write_csv(file: Path, columns: Sequence[str], rows: list[list[Any]]) -> None:
    """A CSV with floats at full precision (``repr``) and booleans as ``true``/``false``."""
    with open(file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([[_cell(value) for value in row] for row in rows])


def _cell(value: Any) -> Any:
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
