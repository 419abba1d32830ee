"""Heatmaps of group-mean correlations for the paper figures: r with what it was tested
against, a star only where that is shown, ``n/a`` where nothing was measured.

A cell shows r and, where the run's null ran, the null's mean r and r's percentile among
the random matched groups beneath it: SmolLM2's raw r of -0.04 between digits and EU
countries is significant because random groups correlate at +0.71 there, and the cell
must say so rather than read as a negative correlation. The caption says what a cell
holds and what ``*`` tests (Benjamini-Hochberg over every group-mean test of the sweep),
or that nothing was marked and why.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from embsvd.figures import data as figure_data
from embsvd.figures.data import Row
from embsvd.figures.run_figures import plain, text_width, wrap
from embsvd.figures.style import FigureStyle

CELL_FONT_SIZE = 5.5  # points: the text of a heatmap cell
NOTE_FONT_SIZE = 5.5  # points: the caption
MIN_CELL = 0.45  # inches: the narrowest heatmap cell that holds "null -0.71"
MAX_CELL = 0.6  # inches
MAX_HEIGHT = 9.0  # inches: a page of a paper's text, the most a heatmap figure takes


def correlation_figure(rows: list[Row], n_tests: int, style: FigureStyle) -> tuple[Any, list[Row]]:
    """Heatmaps of group-mean r for one model (and geometry and setting), a panel per
    correlation variant (raw, centered, decorrelated where logged) on one colour scale,
    and the rows drawn.

    A cell shows r and, where the null ran, the null's mean and r's percentile among
    the random groups beneath it; ``*`` only there, where ``q_bh < style.alpha``
    (``data.is_marked``). A pair that no run of the selection measured reads ``n/a``,
    never a number (grey). As many panels stand side by side as keep a cell ``MIN_CELL``
    inches wide (``_heatmap_grid``); where no layout does, cells carry no text and
    nothing is marked. The caption says what is shown: what a star tests (with
    ``n_tests``, the sweep's number of tests), or that nothing reached it."""
    names = sorted({r["group_a"] for r in rows} | {r["group_b"] for r in rows})
    shown = {r[f"group_{s}"]: r[f"group_{s}_display"] for r in rows for s in "ab"}
    panels = [v for v in figure_data.CORRELATION_VARIANTS if any(r["variant"] == v for r in rows)]
    (n_rows, n_columns), cell = _heatmap_grid(len(panels), len(names), style)
    annotate = cell >= MIN_CELL
    longest = max(text_width(shown[n], 6) for n in names)
    margin = 0.35 + longest  # inches: y tick labels
    width = min(style.text_width, margin + n_columns * (cell * len(names) + 0.15) + 0.9)
    note = wrap(_correlation_note(rows, n_tests, style, annotate), width - 0.3, NOTE_FONT_SIZE)
    height = 0.45 + n_rows * (cell * len(names) + 0.25 + min(longest, 0.9))
    height += (note.count("\n") + 1) * NOTE_FONT_SIZE * 1.3 / 72 + 0.15
    fig, axes = plt.subplots(
        n_rows, n_columns, figsize=(width, height), layout="constrained", squeeze=False
    )
    labels = [plain(shown[name]) for name in names]
    for n, (ax, variant) in enumerate(zip(axes.flat, panels, strict=False)):
        y_labels = labels if n % n_columns == 0 else False  # once a row
        _correlation_panel(ax, rows, variant, (names, labels, y_labels), annotate)
        ax.set_title(variant)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    fig.colorbar(axes.flat[0].collections[0], ax=axes, label="Pearson r of group means", shrink=0.8)
    fig.suptitle(plain(_heatmap_title(rows[0])))
    fig.supxlabel(note, fontsize=NOTE_FONT_SIZE, ha="left", x=0.02)
    return fig, [r | {"marked": figure_data.is_marked(r) and annotate} for r in rows]


def _heatmap_title(row: Row) -> str:
    return " · ".join(filter(None, [row["model_display"], row["setting"]]))


def _heatmap_grid(
    n_panels: int, n_groups: int, style: FigureStyle
) -> tuple[tuple[int, int], float]:
    """(rows, columns) of panels and the cell's width in inches: as many panels side by
    side as keep a cell ``MIN_CELL`` wide within the text width and ``MAX_HEIGHT``, the
    cell at most ``MAX_CELL``; where no layout keeps it, one row of small cells."""
    room = style.text_width - 1.9  # tick labels, the colour bar and its label
    for columns in range(n_panels, 0, -1):
        rows = math.ceil(n_panels / columns)
        wide = (room - 0.15 * columns) / (columns * n_groups)
        tall = (MAX_HEIGHT - 1.5 - 1.2 * rows) / (rows * n_groups)  # titles, labels, caption
        if min(wide, tall) >= MIN_CELL:
            return (rows, columns), min(MAX_CELL, wide, tall)
    return (1, n_panels), (room - 0.15 * n_panels) / (n_panels * n_groups)


def _correlation_panel(ax, rows: list[Row], variant: str, axes_labels, annotate: bool):
    """One variant's heatmap. ``axes_labels``: the group names, their x tick labels and
    y tick labels (``False``: none)."""
    names, x_labels, y_labels = axes_labels
    index = {name: i for i, name in enumerate(names)}
    values = np.full((len(names), len(names)), np.nan)
    np.fill_diagonal(values, 1.0)
    labels = np.full(values.shape, "", dtype=object)
    mine = [r for r in rows if r["variant"] == variant]
    for r in mine:
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
        annot=labels if annotate else None,
        fmt="",
        annot_kws={"fontsize": CELL_FONT_SIZE},
        xticklabels=x_labels,
        yticklabels=y_labels,
        linewidths=0.4,
        cbar=False,
    )
    ax.tick_params(axis="x", labelrotation=90)
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_facecolor("0.93")  # a pair no run measured: grey, and "n/a" where cells hold text
    ax.tick_params(length=0)
    if not annotate:
        return
    for i, j in zip(*np.nonzero(np.isnan(values)), strict=True):
        ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", color="0.35",
                fontsize=CELL_FONT_SIZE, gid="unmeasured")  # fmt: skip


def _cell_label(row: Row) -> str:
    """``-0.04*`` over ``null 0.71`` and ``pct 0`` where the null ran, else ``-0.04``."""
    label = f"{row['r']:+.2f}" + ("*" if figure_data.is_marked(row) else "")
    if row["null_mean"] == "" or row["percentile"] == "":
        return label
    return f"{label}\nnull {row['null_mean']:+.2f}\npct {row['percentile']:.0f}"


def _correlation_note(rows: list[Row], n_tests: int, style: FigureStyle, annotate: bool) -> str:
    """What the panels, the cells and the marks mean, as drawn: a star is promised only
    where one is drawn, a null only where cells show it."""
    parts = ["centered: the vocabulary's mean subtracted"]
    if any(r["variant"] == "decorrelated" for r in rows):
        parts[0] += "; decorrelated: also its top global components removed"
    if not annotate:
        parts.append("cells too small for their values: they are in the CSV; nothing marked")
    elif any(r["null_mean"] != "" and r["percentile"] != "" for r in rows):
        parts.append(
            "cell: r of the two groups' mean vectors; null: the mean r of random groups "
            "matched on token norm and frequency; pct: r's percentile among them"
        )
        if any(figure_data.is_marked(r) for r in rows):
            parts.append(
                f"*: Benjamini-Hochberg q < {style.alpha:g} over the sweep's {n_tests} tests, "
                "r against the matched null (two-sided permutation p)"
            )
        else:
            parts.append(
                f"no pair reaches Benjamini-Hochberg q < {style.alpha:g} over the sweep's "
                f"{n_tests} tests: none marked"
            )
    else:
        parts.append("cell: r of the two groups' mean vectors; no null test ran: none marked")
    if _has_unmeasured(rows):
        parts.append("grey, n/a: no run of the selection measured the pair")
    return ". ".join(parts) + "."


def _has_unmeasured(rows: list[Row]) -> bool:
    names = {r["group_a"] for r in rows} | {r["group_b"] for r in rows}
    pairs = len(names) * (len(names) - 1) // 2
    variants = {r["variant"] for r in rows}
    measured = {(r["variant"], r["group_a"], r["group_b"]) for r in rows}
    return len(measured) < pairs * len(variants)
