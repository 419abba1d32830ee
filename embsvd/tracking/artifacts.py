"""The run contract's CSV tables: each file's name and columns, and their writers.

Part of the contract (``contract`` holds the tags, the run name and the metrics); no
mlflow here either. Floats are written at full precision and booleans as
``true``/``false``, so a table read back gives the logged numbers exactly.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Collection, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.checks.run import ChecksResult
from embsvd.io.memo import ValueMemo, value_digest
from embsvd.method.analysis import AnalysisResult, PairwiseStat, mean_corr_key
from embsvd.tracking.contract import (
    NULL_COMPARISON_FIELDS,
    null_metric,
    pair_metric,
    pair_statistics,
)

NULL_QUANTILES = (2.5, 50.0, 97.5)  # the band of null spectra: a 95% interval and median
PROJECTION_BINS = 200  # of the logged histogram of the vocabulary's projections
NULL_SHARE = "share"  # null_spectrum.csv's rows of s_k / ||M||_F, each draw by its own norm


class Table(StrEnum):
    """The CSV artifacts: a run's, and ``children.csv`` of a sweep's parent."""

    SPECTRUM = "spectrum.csv"
    GROUP_MEAN_CORR = "group_mean_corr.csv"
    GROUP_PAIRS = "group_pairs.csv"  # every pair's statistics; metrics: the target's pairs
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
    UNDERTRAINED = "undertrained.csv"  # reference and flagged tokens (analysis.undertrained)
    # trajectories across training: a run's axes; a revision sweep's parent, its tables
    AXES = "axes.csv"
    TRAJECTORY_STEPS = "trajectory_steps.csv"
    TRAJECTORY_ALIGNMENT = "trajectory_alignment.csv"
    TRAJECTORY_ANGLES = "trajectory_angles.csv"
    TRAJECTORY_SPECTRUM = "trajectory_spectrum.csv"
    TRAJECTORY_GROUP_MEAN_CORR = "trajectory_group_mean_corr.csv"


# Each table's header. A column with <...> stands for one column per value (a group, a
# word, a component), filled in by ``header``.
_SPECTRUM = ("component", "singular_value", "explained_variance_ratio")
COLUMNS: dict[Table, tuple[str, ...]] = {
    Table.SPECTRUM: _SPECTRUM,
    Table.GROUP_MEAN_CORR: ("group", "<group>"),
    Table.GROUP_PAIRS: ("statistic", "group_a", "group_b", "value"),
    Table.TOP_TOKENS: (
        *("component", "side", "rank", "token_id", "token", "text", "projection", "in_group"),
        "undertrained",
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
    Table.UNDERTRAINED: ("token_id", "token", "text", "indicator", "kind"),
    Table.AXES: ("component", "dim_<d>"),
    Table.TRAJECTORY_STEPS: (
        *("configuration", "position", "step", "revision", "run_id"),
        *("embedding_sha256", "identical_to"),
    ),
    Table.TRAJECTORY_ALIGNMENT: (
        *("configuration", "position", "step", "revision", "run_id", "component"),
        *("abs_cos", "sign"),
    ),
    Table.TRAJECTORY_ANGLES: (
        *("configuration", "position", "step", "revision", "run_id", "index"),
        "angle_degrees",
    ),
    Table.TRAJECTORY_SPECTRUM: (
        *("configuration", "position", "step", "revision", "run_id", "component"),
        *("singular_value", "explained_variance_ratio"),
    ),
    Table.TRAJECTORY_GROUP_MEAN_CORR: (
        *("configuration", "position", "step", "revision", "run_id", "variant"),
        *("group_a", "group_b", "r"),
    ),
}


class NumbersTable(StrEnum):
    """The number-structure check's CSV artifacts, logged only where ``numbers.enabled``
    (so not in ``Table``, every member of which a run with the default checks logs);
    written by ``embsvd.tracking.numbers``."""

    SPECTRUM = "numbers_spectrum.csv"  # per frequency k: shares, both nulls
    MEMBERS = "numbers_members.csv"  # the integers analysed, their tokens and frequencies


NUMBERS_COLUMNS: dict[NumbersTable, tuple[str, ...]] = {
    NumbersTable.SPECTRUM: (
        *("k", "period", "tested", "share"),
        *("perm_mean", "perm_q95", "perm_p", "freq_mean", "freq_q95", "freq_p", "zipf_share"),
    ),
    NumbersTable.MEMBERS: ("n", "token", "token_id", "form", "zipf", "analysed"),
}


class ConceptTable(StrEnum):
    """A concept axis' CSV artifacts, logged only where ``concept`` is set (so not in
    ``Table``); written by ``embsvd.tracking.concepts``, described in docs/concepts.md."""

    TOP_TOKENS = "concept_top_tokens.csv"  # the vocabulary's ends on the axis
    PAIRS = "concept_pairs.csv"  # each pair (sets: each cross pair) on the axis
    LOO = "concept_loo.csv"  # leave-one-pair-out |cos|
    NULL = "concept_null.csv"  # first-PC share and consistency against random pairs
    COSINES = "concept_cosines.csv"  # every configured concept's axis against every other
    PROJECTION_HISTOGRAM = "concept_projection_histogram.csv"  # the vocabulary on the axis


CONCEPT_JSON = "concept.json"  # the concept's kept and dropped pairs, as groups.json
CONCEPT_COLUMNS: dict[ConceptTable, tuple[str, ...]] = {
    ConceptTable.TOP_TOKENS: (
        *("side", "pole", "rank", "token_id", "token", "text", "projection", "in_concept"),
    ),
    ConceptTable.PAIRS: (
        *("negative_word", "negative_token_id", "positive_word", "positive_token_id"),
        *("negative_projection", "positive_projection", "difference_cos"),
    ),
    ConceptTable.LOO: ("left_out", "abs_cos"),
    ConceptTable.NULL: (
        *("statistic", "observed", "null_mean", "null_q95", "percentile", "p_value", "n_null"),
    ),
    ConceptTable.COSINES: ("geometry", "concept_a", "concept_b", "cosine"),
    ConceptTable.PROJECTION_HISTOGRAM: ("bin_left", "bin_right", "count"),
}

# what a revision sweep's parent logs (``embsvd.tracking.trajectory``), not a run
TRAJECTORY_TABLES = (
    Table.TRAJECTORY_STEPS,
    Table.TRAJECTORY_ALIGNMENT,
    Table.TRAJECTORY_ANGLES,
    Table.TRAJECTORY_SPECTRUM,
    Table.TRAJECTORY_GROUP_MEAN_CORR,
)
# the CSV artifacts that tools reading a sweep back use
TABLES_READ = (
    Table.GROUP_PAIRS,  # with NULL_GROUP_MEAN_CORR: the pairs a run logs no metric for
    Table.NULL_GROUP_MEAN_CORR,
    Table.TOP_TOKENS,
    Table.NULL_SPECTRUM,
    Table.PROJECTION_HISTOGRAM,
    Table.GROUP_PROJECTIONS,
)

# --- the explorer: the whole vocabulary's projections and the page drawn from them -------
# In a folder of their own (not a ``Table``): logged with the per-run figures, so a run
# with ``analysis.figures=false`` has none. The page is built from the table alone.
EXPLORER_FOLDER = "explorer"
EXPLORER_TABLE = "explorer/vocabulary_projections.csv"
EXPLORER_PAGE = "explorer.html"  # at the run's root: one click in the MLflow UI
EXPLORER_COLUMNS = ("token_id", "text", "group", "special", "projection_<k>")
EXPLORER_DIGITS = 6  # significant digits of the projections: 30k tokens in ~1.5 MB
EXPLORER_GROUP_SEPARATOR = ";"  # a token in several groups lists them all


def write_explorer_table(
    file: Path,
    projections: np.ndarray,
    texts: Sequence[str],
    groups: dict[str, Sequence[int]],
    special_ids: Collection[int] = (),
) -> np.ndarray:
    """Every token's projections on the run's axes, for the explorer page; returns the
    projections as written (``(d_vocab, n_components)`` float64: what reading the file
    back gives, exactly).

    Args:
        file: The CSV to write (``EXPLORER_TABLE``'s name).
        projections: ``(d_vocab, n_components)``, written to ``EXPLORER_DIGITS``
            significant digits (``%.6g``): relative error below 5e-7, and a number a
            float32 holds exactly to those digits.
        texts: The text people read for every row (``Vocabulary.display_texts``).
        groups: Group name -> the token ids it kept; listed per token, sorted by name and
            joined by ``EXPLORER_GROUP_SEPARATOR``.
        special_ids: Special tokens: ``true`` in ``special``.
    """
    projections = np.asarray(projections, dtype=np.float64)
    if len(texts) != len(projections):
        raise ValueError(f"texts: {len(texts)} texts for {len(projections)} rows of projections")
    # a row's numbers formatted at once (each row a tuple from the columns) and the lines
    # joined by hand (csv.writer's quoting rule kept): a third of the time of a
    # csv.writer row by row at 256k tokens
    numbers = ",".join([f"%.{EXPLORER_DIGITS}g"] * projections.shape[1])
    written = [numbers % row for row in zip(*projections.T.tolist(), strict=True)]
    lines = [",".join(header_of(EXPLORER_COLUMNS, range(projections.shape[1])))]
    lines += map(str.__add__, _row_prefixes(texts, groups, special_ids), written)
    with open(file, "w", newline="", encoding="utf-8") as handle:
        handle.write("\r\n".join(lines) + "\r\n")
    # the text's numbers, parsed as a reader of the file parses them (correctly rounded)
    return np.array(",".join(written).split(","), dtype=np.float64).reshape(projections.shape)


# the last table's cells before its numbers (``_row_prefixes``): a sweep's runs of one
# vocabulary and set of groups write the same ones (35 ms a run at 30522 tokens)
_LAST_PREFIXES: list[Any] = [None, None, None]  # texts, (groups, special ids), prefixes


def _row_prefixes(
    texts: Sequence[str], groups: dict[str, Sequence[int]], special_ids: Collection[int]
) -> list[str]:
    """Every row's ``token_id,text,group,special,`` cells, remembered for the last
    ``texts`` tuple (a vocabulary's ``display_texts``; immutable, so the same object has
    the same texts) with the same groups and special tokens."""
    key = (
        {name: tuple(int(i) for i in ids) for name, ids in groups.items()},
        sorted(int(i) for i in special_ids),
    )
    cached_texts, cached_key, prefixes = _LAST_PREFIXES
    if cached_texts is texts and cached_key == key:
        return prefixes
    n_tokens = len(texts)
    group_cells = {
        i: _quoted(EXPLORER_GROUP_SEPARATOR.join(names))
        for i, names in explorer_memberships(groups).items()
    }
    special = ["false"] * n_tokens
    for i in special_ids:
        if 0 <= int(i) < n_tokens:
            special[int(i)] = "true"
    prefixes = [
        f"{i},{_quoted(text)},{group_cells.get(i, '')},{flag},"
        for i, (text, flag) in enumerate(zip(texts, special, strict=True))
    ]
    if isinstance(texts, tuple):
        _LAST_PREFIXES[:] = [texts, key, prefixes]
    return prefixes


def explorer_memberships(groups: dict[str, Sequence[int]]) -> dict[int, list[str]]:
    """Token id -> the names of the groups that kept it, sorted: an explorer table's
    ``group`` cell, joined by ``EXPLORER_GROUP_SEPARATOR``."""
    member_of: dict[int, list[str]] = {}
    for name in sorted(groups):
        for token_id in groups[name]:
            member_of.setdefault(int(token_id), []).append(name)
    return member_of


# what makes csv.writer (QUOTE_MINIMAL) quote a field: the delimiter, the quote character
# or a line break
_NEEDS_QUOTES = re.compile('[,"\r\n]')


def _quoted(field: str) -> str:
    """A CSV field as ``csv.writer`` writes it (``QUOTE_MINIMAL``)."""
    if _NEEDS_QUOTES.search(field):
        return '"' + field.replace('"', '""') + '"'
    return field


def header_of(columns: Sequence[str], values: Sequence[Any] = ()) -> list[str]:
    """``columns``, a ``<...>`` column repeated for each of ``values`` (``header``)."""
    return [
        re.sub(r"<[^>]+>", str(value), column)
        for column in columns
        for value in (values if "<" in column else [None])
    ]


def header(table: Table, values: Sequence[Any] = ()) -> list[str]:
    """``table``'s columns, its ``<...>`` column repeated for each of ``values``."""
    return header_of(COLUMNS[table], values)


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
        folder / Table.GROUP_PAIRS,
        header(Table.GROUP_PAIRS),
        [list(statistic) for statistic in pair_statistics(result)],
    )
    write_csv(
        folder / Table.TOP_TOKENS,
        header(Table.TOP_TOKENS),
        [
            [t.component, t.side, t.rank, t.token_id, t.token, t.text, t.projection, t.in_group]
            # empty where under-trained tokens were not looked for (analysis.undertrained)
            + ["" if checks.undertrained is None else t.token_id in checks.undertrained]
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
    write_axes(result, folder)  # what a revision sweep's parent aligns across steps


def _write_projection_tables(result: AnalysisResult, folder: Path) -> None:
    """The vocabulary's projections as a histogram per component, and the target's own
    projections: enough to redraw the axis figures from the store alone."""
    lines = [_histogram_lines(k, result.projections[:, k]) for k in range(result.n_components)]
    write_csv(folder / Table.PROJECTION_HISTOGRAM, header(Table.PROJECTION_HISTOGRAM), [], lines)
    write_csv(
        folder / Table.GROUP_PROJECTIONS,
        header(Table.GROUP_PROJECTIONS, range(result.projections.shape[1])),
        [
            [word, token_id, *row]  # a multi-token member's row: its mean row's projection
            for word, token_id, row in zip(
                result.target_words, result.target_ids, result.target_projections, strict=True
            )
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


def write_axes(result: AnalysisResult, folder: Path) -> None:
    """``axes.csv``: the axes the vocabulary was projected on, one row per component and
    a column per coordinate (``n_components x d_model``; ``Vt``'s rows with their
    ``svd_flip`` signs), in the run's geometry."""
    axes = result.svd.Vt[: result.n_components]
    lines = [
        _numbers_text(("axis", k, value_digest(row)), lambda k=k, row=row: [[k, *row.tolist()]])
        for k, row in enumerate(axes)
    ]
    write_csv(folder / Table.AXES, header(Table.AXES, range(axes.shape[1])), [], lines)


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


# null_group_mean_corr.csv's column of each null field a metric names
_NULL_COLUMNS = {"mean": "null_mean", "sd": "null_sd", "p_holm": "p_holm"}


def pair_metrics(tables: dict[str, Sequence[dict[str, str]]]) -> dict[str, float]:
    """The pair statistics of ``group_pairs.csv`` and their null tests of
    ``null_group_mean_corr.csv``, keyed as the metrics a run of either group logs
    (``contract.with_target``): what a run read back holds for the pairs without its
    target. Exact: the tables hold the floats' ``repr``."""
    found = {
        pair_metric(row["statistic"], row["group_a"], row["group_b"]): float(row["value"])
        for row in tables.get(Table.GROUP_PAIRS, ())
    }
    for row in tables.get(Table.NULL_GROUP_MEAN_CORR, ()):
        test = pair_metric(mean_corr_key(row["variant"]), row["group_a"], row["group_b"])
        for field in (*NULL_COMPARISON_FIELDS, "p_holm"):
            found[null_metric(test, field)] = float(row[_NULL_COLUMNS.get(field, field)])
    return found


def write_csv(
    file: Path, columns: Sequence[str], rows: list[list[Any]], lines: Sequence[str] = ()
) -> None:
    """A CSV with floats at full precision (``repr``) and booleans as ``true``/``false``,
    as ``csv.writer`` writes it; then ``lines``, rows already written as CSV. A row of
    plain ints and floats (the axes', the histograms') is joined directly: no cell of it
    needs quoting, and the writer's pass over each cell was half of such a table's time
    (2026-11-30)."""
    with open(file, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            line = _numbers_line(row)
            if line is None:
                writer.writerow([_cell(value) for value in row])
            else:
                handle.write(line)
        handle.writelines(lines)


# CSV lines of numbers remembered per process (``_numbers_text``), a few KB each
NUMBERS_TEXTS_KEPT = 128
_NUMBERS_TEXTS = ValueMemo(NUMBERS_TEXTS_KEPT)


def _numbers_text(key: tuple, rows: Callable[[], list[list[Any]]]) -> str:
    """The CSV lines of ``rows()``, rows of ints and floats (``_numbers_line``), remembered
    by ``key``, which names what they are made of by value: the runs of a sweep that
    differ only in ``n_components`` share their first axes, and those axes' rows of
    ``axes.csv`` and ``projection_histogram.csv`` (1.2 ms an axis of the histogram on
    30522 tokens, 0.5 ms of the axes at d_model = 384, 2026-11-30)."""
    return _NUMBERS_TEXTS.get(key, lambda: "".join(_numbers_line(row) for row in rows()))


def _histogram_lines(k: int, projections: np.ndarray) -> str:
    """Component ``k``'s rows of ``projection_histogram.csv``: ``PROJECTION_BINS`` bins of
    the vocabulary's ``projections`` on it."""

    def rows() -> list[list[Any]]:
        counts, edges = np.histogram(projections, bins=PROJECTION_BINS)
        return [[k, edges[i], edges[i + 1], int(c)] for i, c in enumerate(counts)]

    return _numbers_text(("histogram", k, PROJECTION_BINS, value_digest(projections)), rows)


def _numbers_line(row: Sequence[Any]) -> str | None:
    """The CSV line of a row of ints and floats (``None`` for any other row)."""
    cells = []
    for value in row:
        kind = type(value)
        if kind is float or kind is np.float64:
            cells.append(float.__repr__(value))
        elif kind is int:
            cells.append(int.__repr__(value))
        else:
            return None
    return ",".join(cells) + "\r\n"  # csv.writer's line terminator


def _cell(value: Any) -> Any:
    kind = type(value)
    if kind is float or kind is np.float64:  # most cells: float's repr, without the checks
        return float.__repr__(value)
    if kind is int or kind is str:
        return value
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value
