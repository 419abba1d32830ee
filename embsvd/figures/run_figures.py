"""Per-run figures: quick looks logged with each run (``figures/`` in the MLflow UI).

``draw_run_figures`` writes them from an analysis and its checks, or, for a run that
deferred them (``analysis.figures=deferred``), from what the run logged: both feed the
same ``RunFigureData`` to the same drawing, so both write the same pixels.

They cost a few hundredths of a second each, so a sweep can draw them with every run
(``fast_axes``): fixed layouts (figure sizes and axes rectangles in inches, margins
measured from the labels' text, no layout pass), a ``Figure`` on its own Agg canvas (no
pyplot state), light ticks, tick labels, cell values and titles stamped from bitmaps
rendered once per process, plain text where matplotlib would parse mathematics, fast PNG
compression. No seaborn: its import costs seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from pathlib import Path

import matplotlib
import matplotlib.lines
import matplotlib.transforms
import numpy as np
from matplotlib.figure import Figure

from embsvd.checks.order import CyclicOrder, LinearOrder
from embsvd.checks.run import ChecksResult
from embsvd.figures.fast_axes import (
    LABEL_PAD,
    TEXT_HEIGHT,
    TICK_ROOM,
    TICK_SIZE,
    Stamp,
    axes_at,
    axis_label,
    equal_scales,
    linear_ticks,
    log_ticks,
    new_figure,
    no_ticks,
    save_png,
    text_width,
    tick_numbers,
    ticks,
)
from embsvd.figures.run_data import (
    N_EXTREMES_LABELLED,
    OrderView,
    Projection,
    RunFigureData,
    Spectrum,
    Square,
    logged_figure_data,
    order_view,
    run_figure_data,
)
from embsvd.figures.style import RUN_RC
from embsvd.method.analysis import AnalysisResult
from embsvd.tracking.contract import LoggedRun

COLORBLIND = ["#0173B2", "#DE8F05", "#029E73", "#D55E00", "#CC78BC", "#CA9161", "#949494"]
RUN_THEME = {**RUN_RC, "axes.prop_cycle": matplotlib.cycler(color=COLORBLIND)}
TITLE_SIZE = 9  # points: the figure's title (model · target · centering)
CELL_TEXT_MAX = 12  # a heatmap with more rows shows colours only
COLORBAR_TICKS = (-1.0, -0.5, 0.0, 0.5, 1.0)
# inches: the title's band, the left margin of a panel with numbers on its y axis
TITLE_ROOM = 0.32
LEFT_ROOM = 0.62


# --- drawing ------------------------------------------------------------------------------------


def draw_run_figures(
    result: AnalysisResult | LoggedRun,
    model_name: str,
    folder: Path,
    checks: ChecksResult | None = None,
) -> list[Path]:
    """Write a run's figures as PNG into ``folder`` and return their paths: ``scree.png``
    (with the matched null's 95% band and the jackknife intervals where the run has
    them), ``group_mean_corr.png``, ``row_cosine.png``, ``projection_component0.png`` (the
    vocabulary's projections on component 1: file names count from 0, as metric steps
    do) and ``order.png`` where the target's order was tested.

    ``result`` is the analysis (with its ``checks``), or a run read back from the store
    with the tables ``run_data.RUN_FIGURE_TABLES``: a run that deferred its figures is
    drawn from what it logged, into the same pixels.
    """
    if isinstance(result, LoggedRun):
        data = logged_figure_data(result, model_name)
    else:
        data = run_figure_data(result, model_name, checks)
    return write_run_figures(data, folder)


def write_run_figures(
    data: RunFigureData, folder: Path, names: Collection[str] | None = None
) -> list[Path]:
    """``data``'s figures as PNG files in ``folder`` (see ``draw_run_figures``); only
    those whose file name is in ``names``, when given."""
    drawers: dict[str, Callable[[], Figure]] = {
        "scree.png": lambda: scree_figure(data.spectrum, data.target),
        "group_mean_corr.png": lambda: heatmap_figure(
            data.group_mean_corr, "Pearson r of group means", (4.0, 3.4)
        ),
        "row_cosine.png": lambda: heatmap_figure(
            data.row_cosine,
            f"cosine ({'centered' if data.center else 'raw'} rows)",
            (5.0, 4.25),
        ),
        "projection_component0.png": lambda: projection_view_figure(data.projection, data.target),
    }
    if data.order is not None:
        drawers["order.png"] = functools.partial(order_view_figure, data.order)
    if names is not None:
        drawers = {name: draw for name, draw in drawers.items() if name in names}
    paths = []
    with matplotlib.rc_context(RUN_THEME):
        for file_name, draw in drawers.items():
            fig = draw()
            _title(fig, data.title)
            save_png(fig, folder / file_name)
            paths.append(folder / file_name)
    return paths


def _title(fig: Figure, title: str) -> None:
    """``model · target · centering`` above the figure."""
    h = fig.get_size_inches()[1]
    fig.add_artist(
        Stamp(0.5, 1 - 0.06 / h, title, fig.transFigure, TITLE_SIZE, ha="center", va="top")
    )


def scree_figure(spectrum: Spectrum, target: str) -> Figure:
    """Each component's share ``s_k / ||M||_F``, linear and log, against the matched
    null's shares (every random group divided by its own norm, so the band says what
    ``null/s1_share`` says) and the jackknife intervals (over the observed norm) where a
    component has one."""
    S = spectrum.singular_values
    norm = np.sqrt(np.sum(S**2))
    share = S / norm
    components = np.arange(1, len(S) + 1)
    fig = new_figure(6.5, 2.6)
    width, height, bottom = 2.45, 2.6 - TITLE_ROOM - 0.5, 0.5
    linear = axes_at(fig, LEFT_ROOM, bottom, width, height)
    log = axes_at(fig, 3.85, bottom, width, height)
    for ax, scale in ((linear, "linear"), (log, "log")):
        if spectrum.null_low is not None:
            k = len(spectrum.null_low)
            label = f"{spectrum.n_null} matched random groups, 95%"
            ax.fill_between(
                components[:k], spectrum.null_low, spectrum.null_high, color="0.8", label=label
            )
        if spectrum.interval_lo is not None and scale == "linear":
            lo, hi = spectrum.interval_lo / norm, spectrum.interval_hi / norm
            k = len(lo)  # later components have no interval: no bar rather than a zero
            ax.errorbar(
                components[:k],
                share[:k],
                yerr=[share[:k] - lo, hi - share[:k]],
                fmt="none",
                ecolor="0.3",
                elinewidth=0.8,
                capsize=2,
                label="jackknife 95%",
            )
        ax.plot(components, share, marker="o", markersize=4, label=target)
        ax.set_yscale(scale)
        no_ticks(ax)
        if scale == "log":
            ax.set_ylim(bottom=max(share.min(), 1e-12))  # a centered spectrum ends in ~0
            beyond = log_ticks(ax, height)
        else:
            beyond = linear_ticks(ax, "y", height)
        axis_label(ax, "y", f"s_k / ‖M‖_F ({scale})", beyond)
        shown = [k for k in components if len(S) <= 12 or k == 1 or k % 5 == 0]
        axis_label(ax, "x", "component", ticks(ax, "x", shown, [str(k) for k in shown]))
    linear.legend(loc="upper right", fontsize=6)  # shares fall from the left
    return fig


def heatmap_figure(square: Square, cbar_label: str, size: tuple[float, float]) -> Figure:
    """``square`` as colours in [-1, 1] with its names on both axes and a colour bar, and
    with at most ``CELL_TEXT_MAX`` rows its values written in the cells below the
    diagonal (the table is symmetric, and a row with itself is 1: a diagonal cell is
    written only when it is not; ``n/a`` for nan, never a 0 for nothing). The axes fill
    what the names and the colour bar leave."""
    names, values = [plain(n) for n in square.names], square.values
    fig = new_figure(*size)
    longest = max((text_width(n, TICK_SIZE) for n in square.names), default=0.0)
    margin = min(longest, 0.4 * min(size)) + TICK_ROOM / 72 + 0.06
    colorbar_room = 0.12 + 0.15 + 0.4 + TEXT_HEIGHT + 0.1  # gap, bar, its ticks and label
    side = min(size[0] - margin - colorbar_room, size[1] - margin - TITLE_ROOM - 0.05)
    ax = axes_at(fig, margin, margin, side, side)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.9")  # nan: not measured
    ax.imshow(values, vmin=-1, vmax=1, cmap=cmap, aspect="auto", interpolation="nearest")
    positions = range(len(names))
    ticks(ax, "x", positions, names, rotation=90, grid=False)
    ticks(ax, "y", positions, names, grid=False)
    if len(names) <= CELL_TEXT_MAX:
        for (i, j), value in np.ndenumerate(values):
            text = "n/a" if np.isnan(value) else f"{value:.2f}"
            if i > j or (i == j and text != "1.00"):
                color = "white" if abs(value) > 0.6 else "black"
                stamp = Stamp(j, i, text, ax.transData, 6, color=color, ha="center", va="center")
                fig.add_artist(stamp)
    bar = axes_at(fig, margin + side + 0.12, margin, 0.15, side)
    gradient = np.linspace(-1, 1, 256)[:, None]
    bar.imshow(
        gradient,
        cmap=cmap,
        vmin=-1,
        vmax=1,
        aspect="auto",
        origin="lower",
        extent=(0, 1, -1, 1),
        interpolation="nearest",
    )
    labels = tick_numbers(COLORBAR_TICKS)
    beyond = ticks(bar, "y", COLORBAR_TICKS, labels, grid=False, side="high")
    axis_label(bar, "y", cbar_label, beyond, side="high")
    return fig


def projection_view_figure(projection: Projection, target: str) -> Figure:
    """The vocabulary's projections on component 1 (a log-scaled histogram), the target's
    words and the extremes outside it labelled above (``label_above``), a colour legend
    beneath; the band above the axes is as tall as the longest label needs."""
    marks = [(x, word, "C1") for x, word in projection.members]
    marks += [(x, label, "C0") for x, label in projection.extremes]
    longest = max((text_width(label, 6) for _, label, _ in marks), default=0.0)
    top = TITLE_ROOM + LABEL_BAND / 72 + min(longest, 1.0) + 0.04
    bottom = 2 * TEXT_HEIGHT + (TICK_ROOM + LABEL_PAD) / 72 + 0.25  # and a legend
    fig = new_figure(6.5, 3.4)
    width, height = 6.5 - LEFT_ROOM - 0.2, max(3.4 - top - bottom, 1.0)
    ax = axes_at(fig, LEFT_ROOM, bottom, width, height)
    ax.stairs(projection.counts, projection.edges, fill=True, color="0.6")
    ax.set_yscale("log")
    no_ticks(ax)
    axis_label(ax, "y", "tokens", log_ticks(ax, height))
    axis_label(ax, "x", "projection on component 1", linear_ticks(ax, "x", width))
    low, high = ax.get_xlim()
    label_above(ax, marks, gap=(high - low) / 60, low=low, high=high, fontsize=6)
    ax.legend(
        handles=mark_legend("C1", "C0", f"words of {target}", N_EXTREMES_LABELLED),
        loc="lower center",
        bbox_to_anchor=(0.5, 0.02),
        bbox_transform=fig.transFigure,
        ncols=2,
        frameon=False,
        fontsize=6,
    )
    return fig


def order_view_figure(order: OrderView) -> Figure:
    """The members on the plane of the first two centered components, labelled, joined in
    declared order (closed for a cyclic group: the calendar is a loop), at equal scales;
    the title carries the statistic (``order_title``)."""
    path = order.coordinates
    if order.cyclic:
        path = np.vstack([path, path[:1]])
    right = 0.1 + max((text_width(f" {w}", 6) for w in order.words), default=0.0)
    top = TITLE_ROOM + 2 * TEXT_HEIGHT + 0.1
    fig = new_figure(3.4, 3.4)
    width, height = 3.4 - LEFT_ROOM - min(right, 1.0), 3.4 - top - 0.5
    ax = axes_at(fig, LEFT_ROOM, 0.5, width, height)
    ax.plot(path[:, 0], path[:, 1], color="0.7", lw=0.8, zorder=1)
    ax.scatter(*order.coordinates.T, s=12, color=COLORBLIND[0], zorder=2)
    for (x, y), word in zip(order.coordinates, order.words, strict=True):
        ax.text(x, y, f" {plain(word)}", fontsize=6, va="center", gid="member-label")
    equal_scales(ax, width, height)
    axis_label(ax, "x", "component 1 (centered)", linear_ticks(ax, "x", width))
    axis_label(ax, "y", "component 2 (centered)", linear_ticks(ax, "y", height))
    ax.set_title(order.title)
    return fig


def projection_figure(result: AnalysisResult, plt=None) -> Figure:
    """The projection figure of an analysis (``projection_view_figure``); ``plt`` is
    accepted for callers of the pyplot version and not used."""
    data = run_figure_data(result, "")
    with matplotlib.rc_context(RUN_THEME):
        return projection_view_figure(data.projection, result.target)


def order_figure(order: CyclicOrder | LinearOrder, plt=None) -> Figure:
    """The figure of an order test (``order_view_figure``); ``plt`` is not used."""
    with matplotlib.rc_context(RUN_THEME):
        return order_view_figure(order_view(order))


# --- labels above an axis, shared with the paper's axis figures -----------------------------------


def mark_legend(group_color, extreme_color, group: str, n_extremes: int) -> list:
    """The legend of a projection figure's colours: the group's words, the extremes."""
    return [
        matplotlib.lines.Line2D([], [], color=group_color, lw=1, label=group),
        matplotlib.lines.Line2D(
            [],
            [],
            color=extreme_color,
            lw=1,
            label=f"tokens outside the group among the {n_extremes} at each end",
        ),
    ]


LEADER_RISE = 7.0  # points above the axes: the slanted part of a leader line
LEADER_STEM = 3.0  # points: its upright part, under the label
LABEL_LIFT = 1.5  # points between a leader line's end and its label
LABEL_BAND = LEADER_RISE + LEADER_STEM + LABEL_LIFT  # points above the axes before a label


def label_above(
    ax, marks: list[tuple[float, str, object]], gap: float, low: float, high: float, fontsize: float
) -> None:
    """Label points ``(x, label, color)`` of ``ax`` in a row above it.

    Each point is marked by a vertical line through the axes (gid ``token-mark``). Its
    leader line (gid ``leader-line``) runs from the axes' top edge at ``x``, slanted, to
    the label's place and straight up under the label, which starts ``LABEL_LIFT`` points
    above it, rotated (gid ``token-label``). Places keep the points' order at least
    ``gap`` (data units) apart (``spread_apart``), so leader lines never cross (two
    leaders meet only where their points coincide, at the axes' edge), and labels sit
    above every leader line, so none covers one. Labels are drawn as written: a token may
    hold ``$``, which matplotlib would otherwise read as mathematics.
    """
    marks = sorted(marks, key=lambda m: (m[0], m[1]))
    places = spread_apart([x for x, _, _ in marks], gap, low, high)
    above = _points_above_axes(ax)
    for (x, label, color), place in zip(marks, places, strict=True):
        ax.axvline(x, color=color, lw=0.5, alpha=0.6, gid="token-mark")
        leader = matplotlib.lines.Line2D(
            [x, place, place],
            [0.0, LEADER_RISE, LEADER_RISE + LEADER_STEM],
            transform=above,
            color=color,
            lw=0.4,
            clip_on=False,
            gid="leader-line",
        )
        ax.add_artist(leader)  # not add_line: the places must not widen the x limits
        ax.annotate(
            label,
            xy=(place, LEADER_RISE + LEADER_STEM),
            xycoords=above,
            xytext=(0, LABEL_LIFT),
            textcoords="offset points",
            rotation=90,
            ha="center",
            va="bottom",
            fontsize=fontsize,
            color=color,
            gid="token-label",
            parse_math=False,
        )


def _points_above_axes(ax) -> matplotlib.transforms.Transform:
    """x in data units, y in points above the axes' top edge: leader lines keep their
    shape in points whatever the panel's height, and follow the axes when a layout
    moves them."""
    points = matplotlib.transforms.Affine2D().scale(1 / 72) + ax.figure.dpi_scale_trans
    top = matplotlib.transforms.ScaledTranslation(0, 1, ax.transAxes)
    return matplotlib.transforms.blended_transform_factory(ax.transData, points + top)


def plain(text: str) -> str:
    """A name drawn as written where matplotlib reads ``$...$`` as mathematics."""
    return text.replace("$", r"\$")


def wrap(text: str, width: float, fontsize: float) -> str:
    """``text`` broken into lines no wider than ``width`` inches, measured in the font,
    with a tenth to spare: a screen's hinting widens small text by up to ~6%."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", fontsize) <= 0.9 * width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def spread_apart(xs: list[float], gap: float, low: float, high: float) -> list[float]:
    """Positions for labels of the sorted points ``xs``: as close to them as possible, at
    least ``gap`` apart and inside ``[low, high]`` when they fit (else spread rightwards
    from ``low``)."""
    places = list(xs)
    for i in range(len(places)):
        floor = low if i == 0 else places[i - 1] + gap
        places[i] = max(places[i], floor)
    if places and places[-1] > high and (len(places) - 1) * gap <= high - low:
        places[-1] = high
        for i in range(len(places) - 2, -1, -1):
            places[i] = min(places[i], places[i + 1] - gap)
    return places
