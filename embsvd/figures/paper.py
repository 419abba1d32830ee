"""Paper figures and tables of one sweep, drawn from what its runs logged.

``write_figure_set`` turns a ``contract.Sweep`` (read from the store by
``embsvd.tracking.read_sweep``) into a folder: every figure as PDF and PNG with the data
it plots as a CSV beside it, the top-token tables as CSV, Markdown and LaTeX, and
``sweep.json`` naming the runs.

The statistics drawn are the ones the runs tested (``embsvd.figures.data``): a scree
point is a share ``s_k / ||M||_F`` and its band the same share of random matched groups,
each by its own norm, so point and band agree with the run's null percentile; bars are
the runs' jackknife intervals (``embsvd.interval_method``). A correlation star is
Benjamini-Hochberg over every group-mean test of the sweep, and the figure says so.

One seaborn theme (``paper`` context, colour-blind palette), widths of one or two
columns, TrueType fonts embedded in the PDFs, no timestamps: drawing the same runs twice
writes the same bytes.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from embsvd.figures import data as figure_data
from embsvd.figures import tables as paper_tables
from embsvd.figures.data import Row
from embsvd.figures.run_figures import label_above
from embsvd.figures.style import RC, UNDATED, FigureStyle
from embsvd.tracking.artifacts import Table, write_csv
from embsvd.tracking.contract import LoggedRun, Sweep, file_safe, is_plain_name

MANIFEST = "sweep.json"
# sweep.json's key that marks a folder this module wrote: the only kind it replaces
MARKER = "embsvd_figure_set"
MARKER_VERSION = 1
# the keys of sweep.json as written before it carried the marker: those folders are ours too
UNMARKED_MANIFEST = frozenset({"sweep", "selection", "parent_run_id", "runs", "left_out", "style"})
MANIFEST_MAX_BYTES = 50_000_000  # a manifest of 5000 runs is ~0.5 MB; larger is not ours
LABEL_FONT_SIZE = 6  # points: token labels on the axis figures
LABEL_GAP = LABEL_FONT_SIZE * 1.6 / 72  # inches between rotated labels: a line and a bit


def figure_folder(output_dir: Path, sweep_name: str) -> Path:
    """The folder of a sweep's figure set: ``<output_dir>/<sweep_name>``, resolved.

    Raises:
        ValueError: ``sweep_name`` is not one plain name (``contract.file_safe`` makes
            one), or the folder is a link or does not lie directly in ``output_dir``.
    """
    root = Path(output_dir).expanduser().resolve()
    if not is_plain_name(sweep_name):
        raise ValueError(
            f"the sweep name {sweep_name!r} is not one plain folder name; "
            f"e.g. {file_safe(sweep_name)!r}"
        )
    folder = root / sweep_name
    if folder.is_symlink() or folder.resolve().parent != root:
        raise ValueError(
            f"{folder} is a link or leads out of output_dir {root}; figures are "
            "written only into a folder of output_dir itself: remove the link or choose "
            "another output_dir"
        )
    return folder


def check_replaceable(folder: Path) -> None:
    """Refuse to write a figure set over ``folder`` unless it is absent or a figure set
    (its ``sweep.json`` has ``MARKER``, or the keys it had before the marker).

    Raises:
        ValueError: naming the folder and what to do.
    """
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink() and _is_figure_set(folder):
        return
    raise ValueError(
        f"{folder} exists and is not a figure set this command wrote (no "
        f"{MANIFEST} with {MARKER!r}); it is left as it is: move it away, or choose "
        "another output_dir (or sweep.name for a filter)"
    )


def _is_figure_set(folder: Path) -> bool:
    manifest = folder / MANIFEST
    try:
        if not manifest.is_file() or manifest.stat().st_size > MANIFEST_MAX_BYTES:
            return False
        found = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(found, dict) and (MARKER in found or set(found) == UNMARKED_MANIFEST)


def write_figure_set(
    sweep: Sweep, output_dir: Path, style: FigureStyle | None = None
) -> list[Path]:
    """Write the sweep's figures and tables into ``<output_dir>/<sweep.name>``
    (``figure_folder``) and return the files written, sorted.

    The set is drawn in a fresh folder made inside ``output_dir`` and then takes the
    figure folder's place, which must be absent or a figure set written here before
    (``check_replaceable``): nothing else is ever removed, and a set that fails to draw
    leaves the previous one as it was.

    - ``scree_grid``: a panel per (model, target group), every variant of the group
      overlaid: each component's share ``s_k / ||M||_F``, the 95% band of the shares of
      random matched groups (each by its own norm) and the 95% jackknife intervals;
    - ``group_mean_corr__<model>``: heatmaps of group-mean r per model (and geometry),
      raw, centered and (where logged) decorrelated side by side, each cell with its
      null percentile and ``*`` where the Benjamini-Hochberg q over all the sweep's
      tests is below ``style.alpha``;
    - ``axis__<model>__<group>``: the vocabulary's projections on component 1, a panel
      per variant, the group's words and the extremes labelled;
    - ``top_tokens`` (.csv, .md, .tex);
    - with more than one model, ``cross_model_spectra`` and ``cross_model_overlap``.
    """
    style = style or FigureStyle()
    folder = figure_folder(output_dir, sweep.name)
    check_replaceable(folder)  # before drawing: a refusal costs nothing
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent)
    )
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would keep the figures from whoever shares them
        _draw_all(sweep, staging, style)
        _replace(folder, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _replace(folder: Path, staging: Path) -> None:
    """Put ``staging`` in ``folder``'s place; a previous figure set is moved into a folder
    made for it, then removed: only folders made here or sets written here are removed."""
    check_replaceable(folder)  # again: something may have appeared while drawing
    if not folder.exists():
        staging.rename(folder)  # fails, removing nothing, if a folder appeared since
        return
    previous = Path(
        tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".previous", dir=folder.parent)
    )
    folder.rename(previous / folder.name)
    try:
        staging.rename(folder)
    except BaseException:
        (previous / folder.name).rename(folder)
        previous.rmdir()
        raise
    shutil.rmtree(previous)


def _draw_all(sweep: Sweep, staging: Path, style: FigureStyle) -> None:
    with _theme():
        _save(*scree_figure(sweep, style), staging / "scree_grid", style)
        correlations = figure_data.correlation_rows(sweep, style.alpha)
        n_tests = figure_data.n_tests(correlations)
        for model, rows in correlations.items():
            fig, rows = correlation_figure(model, rows, n_tests, style)
            _save(fig, rows, _stem(staging, "group_mean_corr", model), style)
        for (model, group), runs in _by_model_and_group(sweep).items():
            fig, rows = axis_figure(model, group, runs, style)
            _save(fig, rows, _stem(staging, "axis", model, group), style)
        if len(figure_data.models(sweep)) > 1:
            _cross_model_spectra(sweep, staging / "cross_model_spectra", style)
            _cross_model_overlap(sweep, staging / "cross_model_overlap", style)
    _top_token_tables(sweep, staging, style)
    _manifest(sweep, staging, style)


def _stem(folder: Path, kind: str, *names: str) -> Path:
    """``<folder>/<kind>__<name>__...``, each name made ``file_safe``: model labels and
    group names come from runs in the store, and may hold any character."""
    stem = folder / "__".join([kind, *(file_safe(name) for name in names)])
    assert stem.parent == folder, stem  # file_safe leaves no separator, '.' or '..'
    return stem


# --- theme and saving ------------------------------------------------------------------------


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


# --- figures ---------------------------------------------------------------------------------


def scree_figure(sweep: Sweep, style: FigureStyle) -> tuple[Any, list[Row]]:
    """The scree grid and the rows it plots: a panel per (model, target group), rows of
    models and columns of groups, every variant overlaid, one y axis for all. Points are
    shares ``s_k / ||M||_F``; the band, where the null ran, is the 95% range of the
    shares of random matched groups; bars are the jackknife intervals that were logged."""
    rows = figure_data.scree_rows(sweep)
    models, groups = figure_data.models(sweep), figure_data.targets(sweep)
    variants = figure_data.variants(sweep)
    colors = dict(zip(variants, _palette(len(variants)), strict=True))
    fig, axes = plt.subplots(
        len(models),
        len(groups),
        figsize=(style.text_width, 0.6 + 1.45 * len(models)),
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    for (i, model), (j, group) in _grid(models, groups):
        ax = axes[i][j]
        panel = [r for r in rows if r["model"] == model and r["group"] == group]
        if not panel:
            ax.set_axis_off()
            continue
        for variant in variants:
            series = [r for r in panel if r["variant"] == variant]
            if series:
                _spectrum(ax, series, colors[variant], variant)
        if i == 0:
            ax.set_title(group)
        if j == 0:
            ax.set_ylabel(f"{model}\n" + r"$s_k / \|M\|_F$")
        if i == len(models) - 1:
            ax.set_xlabel("component $k$")
        _despine(ax)
    _shared_ylim(axes, rows, ["normalized", "null_share_q97.5", "normalized_interval_hi"])
    handles = [plt.Line2D([], [], color=colors[v], marker="o", label=v) for v in variants]
    if any(math.isfinite(r["null_share_q97.5"]) for r in rows):
        handles.append(
            plt.Rectangle((0, 0), 1, 1, color="0.85", label="random matched groups, 95% of shares")
        )
    if any(math.isfinite(r["normalized_interval_hi"]) for r in rows):
        handles.append(
            plt.Line2D(
                [], [], color="0.3", marker="|", linestyle="none", label="95% jackknife interval"
            )
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    return fig, rows


def _grid(
    models: list[str], groups: list[str]
) -> Iterator[tuple[tuple[int, str], tuple[int, str]]]:
    for i, model in enumerate(models):
        for j, group in enumerate(groups):
            yield (i, model), (j, group)


def _shared_ylim(axes, rows: list[Row], columns: list[str]) -> None:
    """From 0 to just above the largest value drawn, on every panel: set once all are
    drawn, since a limit set on one shared axis stops the others from autoscaling."""
    drawn = [float(r[c]) for r in rows for c in columns]
    top = max((v for v in drawn if math.isfinite(v)), default=1.0)
    for ax in axes.flat:
        ax.set_ylim(0, 1.05 * top)


def _spectrum(ax, series: list[Row], color, label: str) -> None:
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
    ax.plot(k, y, marker="o", color=color, label=label)
    ax.set_xticks(k)


def _despine(ax) -> None:
    sns.despine(ax=ax)


def correlation_figure(
    model: str, rows: list[Row], n_tests: int, style: FigureStyle
) -> tuple[Any, list[Row]]:
    """Heatmaps of group-mean r for one model (and geometry), a panel per correlation
    variant (raw, centered, decorrelated where logged) on one colour scale, and the rows
    drawn. A cell shows r, beneath it the null percentile, and ``*`` where ``q_bh <
    style.alpha``; ``n_tests``, the sweep's number of tests, is named in the note."""
    names = sorted({r["group_a"] for r in rows} | {r["group_b"] for r in rows})
    panels = [v for v in figure_data.CORRELATION_VARIANTS if any(r["variant"] == v for r in rows)]
    cell = 0.42  # inches
    width = min(style.text_width, 0.8 + len(panels) * (0.5 + cell * len(names)))
    height = min(style.column_width, 1.5 + cell * len(names))
    fig, axes = plt.subplots(1, len(panels), figsize=(width, height), layout="constrained")
    for n, (ax, variant) in enumerate(zip(np.atleast_1d(axes), panels, strict=True)):
        _correlation_panel(ax, [r for r in rows if r["variant"] == variant], names, n == 0)
        ax.set_title(variant)
    fig.colorbar(
        np.atleast_1d(axes)[-1].collections[0],
        ax=axes,
        label="Pearson r of group means",
        shrink=0.8,
    )
    fig.suptitle(model)
    fig.supxlabel(_correlation_note(rows, n_tests, style, width), fontsize=5.5, ha="left", x=0.02)
    return fig, rows


def _correlation_panel(ax, rows: list[Row], names: list[str], first: bool) -> None:
    index = {name: i for i, name in enumerate(names)}
    values = np.full((len(names), len(names)), np.nan)
    np.fill_diagonal(values, 1.0)
    labels = np.full(values.shape, "", dtype=object)
    for r in rows:
        i, j = index[r["group_a"]], index[r["group_b"]]
        values[i, j] = values[j, i] = r["r"]
        labels[i, j] = labels[j, i] = _cell_label(r)
    sns.heatmap(
        values,
        ax=ax,
        vmin=-1,
        vmax=1,
        center=0,
        cmap="vlag",
        square=True,
        annot=labels if len(names) <= 14 else None,
        fmt="",
        annot_kws={"fontsize": 5.5},
        xticklabels=names,
        yticklabels=names if first else False,
        linewidths=0.4,
        cbar=False,
    )
    ax.tick_params(length=0)


def _cell_label(row: Row) -> str:
    """``+0.02`` with ``*`` where significant and the null percentile beneath: ``15%``."""
    label = f"{row['r']:+.2f}" + ("*" if row["significant"] is True else "")
    return label if row["percentile"] == "" else f"{label}\n{row['percentile']:.0f}%"


def _correlation_note(rows: list[Row], n_tests: int, style: FigureStyle, width: float) -> str:
    """What the panels and marks mean; stars are named only where a null ran."""
    note = "centered: the vocabulary's mean subtracted"
    if any(r["variant"] == "decorrelated" for r in rows):
        note += "; decorrelated: also its top global components removed"
    if any(r["q_bh"] != "" for r in rows):
        note += (
            f". * Benjamini-Hochberg q < {style.alpha:g} over the sweep's {n_tests} tests of "
            "group-mean r against matched random groups; % = null percentile"
        )
    else:
        note += ". No null test: no significance marked"
    return textwrap.fill(note, width=max(40, int(width * 24)))  # ~24 characters an inch


def _by_model_and_group(sweep: Sweep) -> dict[tuple[str, str], list[LoggedRun]]:
    found: dict[tuple[str, str], list[LoggedRun]] = {}
    for run in sweep.runs:
        if run.table(Table.PROJECTION_HISTOGRAM):
            found.setdefault((run.model_label, run.target), []).append(run)
    order = figure_data.variants(sweep)
    return {key: sorted(runs, key=lambda r: order.index(r.variant)) for key, runs in found.items()}


def axis_figure(
    model: str, group: str, runs: list[LoggedRun], style: FigureStyle
) -> tuple[Any, list[Row]]:
    """The axis figure of one (model, group) and the rows it plots: a panel per run
    (variant), each with a band above it for its token labels, sized to the longest
    label so that labels never reach the panel above. One column wide while the labels
    fit side by side, else the text width. Labels carry the gid ``token-label``."""
    rows_by_run = [figure_data.axis_rows(run) for run in runs]
    longest = max((len(r["label"]) for rows in rows_by_run for r in rows), default=1)
    band = 0.12 + longest * LABEL_FONT_SIZE * 0.6 / 72  # inches of labels above a panel
    title, plot, ticks, left, right = 0.25, 0.95, 0.3, 0.55, 0.2  # inches
    block = band + plot + ticks
    height = title + len(runs) * block + 0.15  # the last panel's x label
    n_labels = max(sum(r["kind"] != "bin" for r in rows) for rows in rows_by_run)
    # one column while the labels fit side by side, else the whole text width
    fits = n_labels * LABEL_GAP <= style.column_width - left - right
    fig_width = style.column_width if fits else style.text_width
    fig = plt.figure(figsize=(fig_width, height))
    colors = _palette(2)
    width = fig_width - left - right
    for n, (run, rows) in enumerate(zip(runs, rows_by_run, strict=True)):
        bottom = height - title - n * block - band - plot
        ax = fig.add_axes([left / fig_width, bottom / height, width / fig_width, plot / height])
        _axis_panel(ax, rows, colors, width)
        ax.set_ylabel("tokens")
        ax.text(0.99, 0.97, run.variant, transform=ax.transAxes, ha="right", va="top")
        if n == len(runs) - 1:
            ax.set_xlabel("projection on component 1")
    fig.text(0.02, 1 - 0.05 / height, f"{model} · {group}", va="top", fontweight="bold")
    return fig, [r for rows in rows_by_run for r in rows]


def _axis_panel(ax, rows: list[Row], colors: list, width_in: float) -> None:
    bins = [r for r in rows if r["kind"] == "bin"]
    edges = np.array([b["bin_left"] for b in bins] + [bins[-1]["bin_right"]])
    counts = np.array([b["count"] for b in bins], dtype=float)
    ax.stairs(counts, edges, fill=True, color="0.75", linewidth=0)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.8)
    ax.set_xlim(edges[0], edges[-1])
    _despine(ax)
    marks = [
        (r["projection"], r["label"], colors[1] if r["kind"] == "group" else colors[0])
        for r in rows
        if r["kind"] != "bin"
    ]
    low, high = edges[0], edges[-1]
    gap = LABEL_GAP / width_in * (high - low)  # in data units
    label_above(ax, marks, gap, low + gap / 2, high - gap / 2, LABEL_FONT_SIZE)


def _cross_model_spectra(sweep: Sweep, stem: Path, style: FigureStyle) -> None:
    rows = figure_data.cross_model_spectra_rows(sweep)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    models = figure_data.models(sweep)
    colors = dict(zip(models, _palette(len(models)), strict=True))
    line_styles = ["-", "--", ":", "-."]
    styles = {v: line_styles[i % 4] for i, v in enumerate(figure_data.variants(sweep))}
    ncols = min(len(groups), 4)
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(style.text_width, 0.7 + 1.5 * nrows),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, group in zip(axes.flat, groups, strict=False):
        for r_model in models:
            for variant, linestyle in styles.items():
                series = [
                    r
                    for r in rows
                    if r["group"] == group and r["model"] == r_model and r["variant"] == variant
                ]
                if series:
                    ax.plot(
                        [r["component"] + 1 for r in series],
                        [r["normalized"] for r in series],
                        color=colors[r_model],
                        linestyle=linestyle,
                        marker="o",
                    )
        ax.set_title(group)
        ax.set_xlabel("component $k$")
        _despine(ax)
    _shared_ylim(axes, rows, ["normalized"])
    for ax in axes.flat[len(groups) :]:
        ax.set_axis_off()
    axes[0][0].set_ylabel(r"$s_k / \|M\|_F$")
    handles = [plt.Line2D([], [], color=colors[m], label=m) for m in models] + [
        plt.Line2D([], [], color="0.3", linestyle=ls, label=v) for v, ls in styles.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    _save(fig, rows, stem, style)


def _cross_model_overlap(sweep: Sweep, stem: Path, style: FigureStyle) -> None:
    rows = figure_data.cross_model_overlap_rows(sweep, style.top_k)
    pairs = list(dict.fromkeys((r["model_a"], r["model_b"]) for r in rows))
    fig, axes = plt.subplots(
        len(pairs),
        1,
        figsize=(style.column_width, 0.9 + 1.4 * len(pairs)),
        squeeze=False,
        layout="constrained",
    )
    for ax, (model_a, model_b) in zip(axes[:, 0], pairs, strict=True):
        panel = [r for r in rows if (r["model_a"], r["model_b"]) == (model_a, model_b)]
        sns.barplot(
            x=[f"{r['group']}\n{r['variant']}" for r in panel],
            y=[r["overlap"] for r in panel],
            hue=[f"component {r['component'] + 1}" for r in panel],
            ax=ax,
            palette="colorblind",
        )
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"shared top-{style.top_k}")
        ax.set_title(f"{model_a} vs {model_b}")
        ax.tick_params(axis="x", labelsize=5.5)
        ax.legend(frameon=False, fontsize=5.5)
        _despine(ax)
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


def _manifest(sweep: Sweep, folder: Path, style: FigureStyle) -> None:
    """``sweep.json``: which runs the figures show, and with which settings."""
    manifest = {
        MARKER: MARKER_VERSION,  # what lets a later figures command replace this folder
        "sweep": sweep.name,
        "selection": sweep.selection,
        "parent_run_id": sweep.parent_run_id,
        "runs": [{"run_id": r.run_id, "name": r.name} for r in sweep.runs],
        "left_out": [{"name": name, "status": status} for name, status in sweep.left_out],
        "style": {**asdict(style), "formats": list(style.formats)},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
