"""Paper figures and tables of one sweep, drawn from what its runs logged.

``write_figure_set`` turns a ``contract.Sweep`` (read from the store by
``embsvd.tracking.read_sweep``) into a folder: every figure in the chosen formats with
the data it plots as a CSV beside it, the top-token tables as CSV, Markdown and LaTeX,
and ``sweep.json`` naming the runs (``embsvd.figures.folder``: which folder, and how a
new drawing joins an earlier one).

One line, panel and table per configuration (``selection.distinct_runs``), named by
display names and by the settings that set runs apart (``selection.Names``). The
statistics drawn are the ones the runs tested (``embsvd.figures.data``): a scree point
is a share ``s_k / ||M||_F`` and its band the same share of random matched groups, each
by its own norm, so point and band agree with the run's null percentile; bars are the
runs' jackknife intervals (``embsvd.interval_method``). A heatmap cell shows r with the
null's mean and percentile beneath it, and a star only there (``figures.heatmaps``).
Token labels never cover a leader line, and leader lines never cross
(``run_figures.label_above``). Components are numbered from 1, as people count them.

One seaborn theme (``paper`` context, colour-blind palette), widths of one or two
columns, TrueType fonts embedded in the PDFs, no timestamps: drawing the same runs twice
writes the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from embsvd.figures import data as figure_data
from embsvd.figures import replicates as replicate_data
from embsvd.figures import tables as paper_tables
from embsvd.figures.data import Row
from embsvd.figures.folder import (  # re-exported: the figure set's folder rules
    MANIFEST,
    MARKER,
    MARKER_VERSION,
    check_replaceable,
    draw_into,
    figure_folder,
)
from embsvd.figures.heatmaps import correlation_figure
from embsvd.figures.run_figures import LABEL_BAND, label_above, mark_legend, plain, text_width
from embsvd.figures.selection import Names, Repeat, distinct_runs, model_of
from embsvd.figures.style import RC, UNDATED, FigureStyle
from embsvd.tracking.artifacts import Table, write_csv
from embsvd.tracking.contract import LoggedRun, Sweep, file_safe

__all__ = [
    "MANIFEST",
    "MARKER",
    "axis_figure",
    "check_replaceable",
    "correlation_figure",
    "figure_folder",
    "scree_figure",
    "write_figure_set",
]

LABEL_FONT_SIZE = 6  # points: token labels on the axis figures
LABEL_GAP = LABEL_FONT_SIZE * 1.6 / 72  # inches between rotated labels: a line and a bit


def write_figure_set(
    sweep: Sweep, output_dir: Path, style: FigureStyle | None = None
) -> list[Path]:
    """Write the sweep's figures and tables into ``<output_dir>/<sweep.name>``
    (``figure_folder``) and return the files written, sorted.

    The folder must be absent or a figure set written here before
    (``check_replaceable``); the set is drawn in a scratch folder and merged in
    (``folder.draw_into``): files of formats not drawn now stay, and a set that fails
    to draw leaves the folder as it was. Runs that repeat a configuration are left out
    for the latest of them, with a warning (``selection.distinct_runs``).

    - ``scree_grid``: a panel per (model, target group), a line per run (variant and
      setting): each component's share ``s_k / ||M||_F``, the 95% band of the shares of
      random matched groups (each by its own norm) and the 95% jackknife intervals;
    - ``group_mean_corr__<model>[__<setting>]``: heatmaps of group-mean r per model (and
      geometry, and setting), raw, centered and (where logged) decorrelated, each cell
      with its null mean and percentile and ``*`` where the Benjamini-Hochberg q over all
      the sweep's tests is below ``style.alpha``; ``n/a`` where no run measured the pair;
    - ``axis__<model>__<group>``: the vocabulary's projections on axis 1, a panel per
      run, the group's words and the extremes labelled, a colour legend;
    - ``top_tokens`` (.csv, .md, .tex);
    - with more than one model, ``cross_model_spectra`` and ``cross_model_overlap``;
    - with ``style.replicates``, runs that differ only in those params pooled
      (``figures.replicates``): a scree line per configuration, its points the mean
      share with a 95% t interval over the replicates and ``n=`` in its label, and
      ``replicates.csv``, every metric's mean, lo, hi and n per configuration.
    """
    style = style or FigureStyle()
    folder = figure_folder(output_dir, sweep.name)
    check_replaceable(folder)  # before anything is read or drawn: a refusal costs nothing
    distinct, repeats = distinct_runs(sweep)
    return draw_into(folder, partial(_draw_all, distinct, repeats, style=style))


def _draw_all(sweep: Sweep, repeats: Sequence[Repeat], staging: Path, style: FigureStyle) -> None:
    with _theme():
        pooled = None  # replicates: one line per configuration (figures.replicates)
        if style.replicates:
            pooled = replicate_data.pooled_scree_rows(sweep, style.replicates)
            metrics = replicate_data.pooled_metric_rows(sweep, style.replicates)
            _write_rows(staging / "replicates.csv", metrics)
        _save(*scree_figure(sweep, style, pooled), staging / "scree_grid", style)
        correlations = figure_data.correlation_rows(sweep, style.alpha)
        n_tests = figure_data.n_tests(correlations)
        for (model, setting), rows in correlations.items():
            fig, rows = correlation_figure(rows, n_tests, style)
            names = [model, setting] if setting else [model]
            _save(fig, rows, _stem(staging, "group_mean_corr", *names), style)
        names = Names.of(sweep)
        for (model, group), runs in _by_model_and_group(sweep).items():
            fig, rows = axis_figure(runs, names, style)
            _save(fig, rows, _stem(staging, "axis", model, group), style)
        if len(figure_data.models(sweep)) > 1:
            _cross_model_spectra(sweep, staging / "cross_model_spectra", style)
            _cross_model_overlap(sweep, staging / "cross_model_overlap", style)
    _top_token_tables(sweep, staging, style)
    _manifest(sweep, repeats, staging, style)


def _stem(folder: Path, kind: str, *names: str) -> Path:
    """``<folder>/<kind>__<name>__...``, each name made ``file_safe``: model labels, group
    names and settings come from runs in the store, and may hold any character."""
    stem = folder / "__".join([kind, *(file_safe(name) for name in names)])
    assert stem.parent == folder, stem  # file_safe leaves no separator, '.' or '..'
    return stem


# --- theme, text and saving ------------------------------------------------------------------


@contextmanager
def _theme() -> Iterator[None]:
    """seaborn's paper theme for the block only: rcParams are restored after it."""
    matplotlib.use("Agg")  # files only: no window, whatever the environment's default
    with plt.rc_context():
        sns.set_theme(context="paper", style="ticks", palette="colorblind", rc=RC)
        yield


def _palette(n: int) -> list:
    return sns.color_palette("colorblind", max(n, 1))


def _save(fig, rows: Sequence[Row], stem: Path, style: FigureStyle) -> None:
    """The figure in every format, and the rows it plots as ``<stem>.csv``."""
    for fmt in style.formats:
        fig.savefig(stem.with_suffix(f".{fmt}"), dpi=style.dpi, metadata=UNDATED[fmt])
    plt.close(fig)
    _write_rows(stem.with_suffix(".csv"), rows)


def _write_rows(file: Path, rows: Sequence[Row]) -> None:
    header = list(dict.fromkeys(key for row in rows for key in row))
    write_csv(file, header, [[row.get(key, "") for key in header] for row in rows])


# --- the scree grid --------------------------------------------------------------------------


def scree_figure(
    sweep: Sweep, style: FigureStyle, pooled: Sequence[Row] | None = None
) -> tuple[Any, list[Row]]:
    """The scree grid and the rows it plots: a panel per (model, target group), rows of
    models and columns of groups, a line per run (its variant and setting), one y axis
    for all. Points are shares ``s_k / ||M||_F`` at k = 1, 2, ...; the band, where the
    null ran, is the 95% range of the shares of random matched groups; bars are the
    jackknife intervals that were logged. With ``pooled`` (``replicates.pooled_scree_rows``)
    a line per replicate set: mean shares, bars their 95% t intervals, bands the mean
    null band, ``n=`` in the label; those rows are returned."""
    if pooled is None:
        rows = figure_data.scree_rows(sweep)
        models, groups = figure_data.models(sweep), figure_data.targets(sweep)
    else:
        returned = list(pooled)
        rows = [replicate_data.as_drawn(r) for r in returned]
        models = list(dict.fromkeys(r["model"] for r in rows))
        groups = list(dict.fromkeys(r["group"] for r in rows))
    model_names = {r["model"]: r["model_display"] for r in rows}
    group_names = {r["group"]: r["group_display"] for r in rows}
    order = figure_data.variants(sweep)
    lines = sorted(
        dict.fromkeys(figure_data.series_label(r) for r in rows),
        key=lambda label: order.index(label.split(" · ")[0]),
    )
    colors = dict(zip(lines, _palette(len(lines)), strict=True))
    drawn = {(r["model"], r["group"]) for r in rows}
    fig, axes = plt.subplots(
        len(models),
        len(groups),
        figsize=(style.text_width, 0.6 + 1.45 * len(models)),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for i, model in enumerate(models):
        for j, group in enumerate(groups):
            ax = axes[i][j]
            panel = [r for r in rows if r["model"] == model and r["group"] == group]
            if not panel:
                ax.set_axis_off()
                continue
            for run_id in dict.fromkeys(r["run_id"] for r in panel):
                series = [r for r in panel if r["run_id"] == run_id]
                _spectrum(ax, series, colors[figure_data.series_label(series[0])])
            if i == min(n for n, m in enumerate(models) if (m, group) in drawn):
                ax.set_title(plain(group_names[group]))  # over the column's first panel
            if j == 0:
                ax.set_ylabel(f"{plain(model_names[model])}\n" + r"$s_k / \|M\|_F$")
            if i == len(models) - 1:
                ax.set_xlabel("component $k$")
            sns.despine(ax=ax)
    _shared_ylim(axes, rows, ["normalized", "null_share_q97.5", "normalized_interval_hi"])
    handles = [plt.Line2D([], [], color=colors[x], marker="o", label=x) for x in lines]
    if any(math.isfinite(r["null_share_q97.5"]) for r in rows):
        band = "random matched groups, 95% of shares"
        band += "" if pooled is None else " (mean band over replicates)"
        handles.append(plt.Rectangle((0, 0), 1, 1, color="0.85", label=band))
    if any(math.isfinite(r["normalized_interval_hi"]) for r in rows):
        interval = "95% jackknife interval" if pooled is None else replicate_data.INTERVAL_LABEL
        handles.append(
            plt.Line2D([], [], color="0.3", marker="|", linestyle="none", label=interval)
        )
    ncols = min(len(handles), 4)
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False)
    return fig, rows if pooled is None else returned


def _shared_ylim(axes, rows: list[Row], columns: list[str]) -> None:
    """From 0 to just above the largest value drawn, on every panel: set once all are
    drawn, since a limit set on one shared axis stops the others from autoscaling."""
    drawn = [float(r[c]) for r in rows for c in columns]
    top = max((v for v in drawn if math.isfinite(v)), default=1.0)
    for ax in axes.flat:
        ax.set_ylim(0, 1.05 * top)


def _spectrum(ax, series: list[Row], color) -> None:
    """One run's spectrum; components drawn from 1 (the rows count from 0, as steps do)."""
    k = np.array([r["component"] + 1 for r in series])
    y = np.array([r["normalized"] for r in series])
    low = np.array([r["null_share_q2.5"] for r in series], dtype=float)
    high = np.array([r["null_share_q97.5"] for r in series], dtype=float)
    if np.isfinite(low).any():
        ax.fill_between(k, low, high, color=color, alpha=0.18, linewidth=0)
    lo = np.array([r["normalized_interval_lo"] for r in series], dtype=float)
    hi = np.array([r["normalized_interval_hi"] for r in series], dtype=float)
    has = np.isfinite(lo) & np.isfinite(hi)  # a component without an interval: no bar
    if has.any():
        yerr = [y[has] - np.minimum(y[has], lo[has]), np.maximum(y[has], hi[has]) - y[has]]
        ax.errorbar(
            k[has], y[has], yerr=yerr, fmt="none", ecolor=color, elinewidth=0.6, capsize=1.5
        )
    ax.plot(k, y, marker="o", color=color, label=figure_data.series_label(series[0]))
    ax.set_xticks(k)


# --- the axis figures ------------------------------------------------------------------------


def _by_model_and_group(sweep: Sweep) -> dict[tuple[str, str], list[LoggedRun]]:
    found: dict[tuple[str, str], list[LoggedRun]] = {}
    for run in sweep.runs:
        if run.table(Table.PROJECTION_HISTOGRAM):
            found.setdefault((model_of(run), run.target), []).append(run)
    order = figure_data.variants(sweep)
    return {key: sorted(runs, key=lambda r: order.index(r.variant)) for key, runs in found.items()}


def axis_figure(runs: list[LoggedRun], names: Names, style: FigureStyle) -> tuple[Any, list[Row]]:
    """The axis figure of one (model, group) and the rows it plots: a panel per run
    (titled by its variant and setting), each with a band above it for its token labels
    (``run_figures.label_above``: leader lines that never cross, labels that never cover
    them), sized to the longest label so that labels never reach the panel above; a
    colour legend under the last panel. One column wide while the labels fit side by
    side, else the text width."""
    rows_by_run = [figure_data.axis_rows(run, names) for run in runs]
    first = rows_by_run[0][0]
    longest = max(
        (text_width(r["label"], LABEL_FONT_SIZE) for rows in rows_by_run for r in rows),
        default=0.1,
    )
    band = LABEL_BAND / 72 + longest + 0.05  # inches of leader lines and labels
    title, heading, plot, ticks, left, right = 0.25, 0.17, 0.95, 0.42, 0.55, 0.2  # inches
    n_labels = max(sum(r["kind"] != "bin" for r in rows) for rows in rows_by_run)
    fits = n_labels * LABEL_GAP <= style.column_width - left - right
    fig_width = style.column_width if fits else style.text_width
    colors = _palette(2)  # blue: extremes, orange: the group's words
    handles = mark_legend(
        colors[1], colors[0], f"words of {plain(first['group_display'])}", figure_data.N_EXTREMES
    )
    # side by side where the two entries fit the width (a handle and padding: ~0.45 in)
    entries = sum(text_width(h.get_label(), RC["legend.fontsize"]) + 0.45 for h in handles)
    legend_columns = 2 if entries <= fig_width - 0.1 else 1
    legend = 0.1 + 0.15 * (3 - legend_columns)  # inches: one line, or two
    block = heading + band + plot + ticks
    height = title + len(runs) * block + legend
    fig = plt.figure(figsize=(fig_width, height))
    width = fig_width - left - right
    for n, rows in enumerate(rows_by_run):
        top = height - title - n * block
        bottom = top - heading - band - plot
        ax = fig.add_axes([left / fig_width, bottom / height, width / fig_width, plot / height])
        _axis_panel(ax, rows, colors, width)
        ax.set_ylabel("tokens")
        fig.text(left / fig_width, (top - 0.02) / height, plain(figure_data.series_label(rows[0])),
                 va="top", ha="left", fontstyle="italic", gid="panel-title")  # fmt: skip
        ax.set_xlabel("projection on component 1" if n == len(runs) - 1 else "")
    fig.text(
        0.02,
        1 - 0.05 / height,
        plain(f"{first['model_display']} · {first['group_display']}"),
        va="top",
        fontweight="bold",
    )
    fig.legend(
        handles=handles,
        loc="lower center",
        ncols=legend_columns,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    return fig, [r for rows in rows_by_run for r in rows]


def _axis_panel(ax, rows: list[Row], colors: list, width_in: float) -> None:
    bins = [r for r in rows if r["kind"] == "bin"]
    edges = np.array([b["bin_left"] for b in bins] + [bins[-1]["bin_right"]])
    counts = np.array([b["count"] for b in bins], dtype=float)
    ax.stairs(counts, edges, fill=True, color="0.75", linewidth=0)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.8)
    ax.set_xlim(edges[0], edges[-1])
    sns.despine(ax=ax)
    marks = [
        (r["projection"], r["label"], colors[1] if r["kind"] == "group" else colors[0])
        for r in rows
        if r["kind"] != "bin"
    ]
    low, high = edges[0], edges[-1]
    gap = LABEL_GAP / width_in * (high - low)  # in data units
    label_above(ax, marks, gap, low + gap / 2, high - gap / 2, LABEL_FONT_SIZE)


# --- comparing models ------------------------------------------------------------------------


def _cross_model_spectra(sweep: Sweep, stem: Path, style: FigureStyle) -> None:
    rows = figure_data.cross_model_spectra_rows(sweep)
    if not rows:  # no group, variant and setting that two models share (e.g. zipped)
        return
    panels = list(dict.fromkeys((r["group"], r["setting"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    shown = {r["model"]: r["model_display"] for r in rows}
    groups = {r["group"]: r["group_display"] for r in rows}
    colors = dict(zip(models, _palette(len(models)), strict=True))
    line_styles = ["-", "--", ":", "-."]
    styles = {v: line_styles[i % 4] for i, v in enumerate(figure_data.variants(sweep))}
    ncols = min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(style.text_width, 0.7 + 1.5 * nrows),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, (group, setting) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rows if (r["group"], r["setting"]) == (group, setting)]
        for run_id in dict.fromkeys(r["run_id"] for r in mine):
            series = [r for r in mine if r["run_id"] == run_id]
            ax.plot(
                [r["component"] + 1 for r in series],
                [r["normalized"] for r in series],
                color=colors[series[0]["model"]],
                linestyle=styles[series[0]["variant"]],
                marker="o",
            )
        ax.set_title(plain(" · ".join(filter(None, [groups[group], setting]))))
        ax.set_xlabel("component $k$")
        sns.despine(ax=ax)
    _shared_ylim(axes, rows, ["normalized"])
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    axes[0][0].set_ylabel(r"$s_k / \|M\|_F$")
    handles = [plt.Line2D([], [], color=colors[m], label=plain(shown[m])) for m in models] + [
        plt.Line2D([], [], color="0.3", linestyle=ls, label=v) for v, ls in styles.items()
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncols=min(len(handles), 4), frameon=False
    )
    _save(fig, rows, stem, style)


def _cross_model_overlap(sweep: Sweep, stem: Path, style: FigureStyle) -> None:
    rows = figure_data.cross_model_overlap_rows(sweep, style.top_k)
    if not rows:
        return
    pairs = list(dict.fromkeys((r["model_a_display"], r["model_b_display"]) for r in rows))
    fig, axes = plt.subplots(
        len(pairs),
        1,
        figsize=(style.column_width, 0.9 + 1.4 * len(pairs)),
        squeeze=False,
        layout="constrained",
    )
    for ax, (model_a, model_b) in zip(axes[:, 0], pairs, strict=True):
        panel = [
            r for r in rows if (r["model_a_display"], r["model_b_display"]) == (model_a, model_b)
        ]
        sns.barplot(
            x=[
                plain("\n".join(filter(None, [r["group_display"], r["variant"], r["setting"]])))
                for r in panel
            ],  # fmt: skip
            y=[r["overlap"] for r in panel],
            hue=[f"component {r['component'] + 1}" for r in panel],
            ax=ax,
            palette="colorblind",
        )
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"shared top-{style.top_k}")
        ax.set_title(plain(f"{model_a} vs {model_b}"))
        ax.tick_params(axis="x", labelsize=5.5)
        ax.legend(frameon=False, fontsize=5.5)
        sns.despine(ax=ax)
    _save(fig, rows, stem, style)


# --- tables and the manifest -------------------------------------------------------------------


def _top_token_tables(sweep: Sweep, folder: Path, style: FigureStyle) -> None:
    rows = figure_data.top_token_rows(sweep, style.top_k)
    _write_rows(folder / "top_tokens.csv", rows)
    (folder / "top_tokens.md").write_text(
        paper_tables.markdown_tables(rows, style.top_k), encoding="utf-8"
    )
    (folder / "top_tokens.tex").write_text(
        paper_tables.latex_tables(rows, style.top_k), encoding="utf-8"
    )


def _manifest(sweep: Sweep, repeats: Sequence[Repeat], folder: Path, style: FigureStyle) -> None:
    """``sweep.json``: which runs the figures show, which were left out and why, with
    which settings, and the files of this drawing (written last, so it lists them all)."""
    manifest = {
        MARKER: MARKER_VERSION,  # what lets a later figures command write into this folder
        "sweep": sweep.name,
        "selection": sweep.selection,
        "parent_run_id": sweep.parent_run_id,
        "runs": [{"run_id": r.run_id, "name": r.name} for r in sweep.runs],
        "left_out": [{"name": name, "status": status} for name, status in sweep.left_out],
        "repeats": [
            {"run_id": r.run_id, "name": r.name, "kept": repeat.kept.run_id, "same": repeat.same}
            for repeat in repeats
            for r in repeat.left_out
        ],
        "style": {**asdict(style), "formats": list(style.formats)},
        "pooled": replicate_data.manifest(sweep, style.replicates) if style.replicates else [],
        "files": sorted([p.name for p in folder.iterdir()] + [MANIFEST]),
        "kept": [],  # files of formats not drawn now, from earlier drawings (folder.draw_into)
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
