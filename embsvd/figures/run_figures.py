"""Per-run figures (matplotlib), drawn from an ``AnalysisResult``.

matplotlib is imported here only, when a figure is drawn (about 1 s); these quick-look
figures do not need seaborn, whose import costs 2 s more.
"""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import matplotlib.lines
import matplotlib.pyplot as plt
import matplotlib.transforms
import numpy as np
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath

from embsvd.checks.order import CyclicOrder, LinearOrder
from embsvd.checks.run import ChecksResult
from embsvd.figures.style import RC
from embsvd.method.analysis import AnalysisResult, PairwiseStat

N_EXTREMES_LABELLED = 5  # tokens named at each end of the projection figure
COLORBLIND = ["#0173B2", "#DE8F05", "#029E73", "#D55E00", "#CC78BC", "#CA9161", "#949494"]
THEME = {  # small paper-like figures, a colour-blind-safe cycle (seaborn's "colorblind")
    "axes.grid": True,
    "grid.color": "0.9",
    "axes.edgecolor": "0.6",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 6,
}


def draw_run_figures(
    result: AnalysisResult, model_name: str, folder: Path, checks: ChecksResult | None = None
) -> list[Path]:
    """Write the run's four figures as PNG into ``folder`` and return their paths:
    scree plot (with the matched null's 95% band and the jackknife intervals when
    ``checks`` has them), group-mean correlation heatmap, the target's row cosine heatmap,
    the distribution of the vocabulary's projections on component 1, and the members on
    their top plane when the group declares an order."""
    matplotlib.use("Agg")  # files only: no window, whatever the environment's default
    plt.rcParams.update({**THEME, "axes.prop_cycle": matplotlib.cycler(color=COLORBLIND)})
    title = f"{model_name} · {result.target} · {'centered' if result.center else 'raw'}"
    drawers = {
        "scree.png": functools.partial(_scree, checks=checks),
        "group_mean_corr.png": _group_mean_corr,
        "row_cosine.png": _row_cosine,
        # component 0 is axis 1: file names count from 0, as metric steps do
        "projection_component0.png": projection_figure,
    }
    if checks is not None and checks.order is not None:
        drawers["order.png"] = lambda _, plt: order_figure(checks.order, plt)
    paths = []
    for file_name, draw in drawers.items():
        fig = draw(result, plt)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(folder / file_name, dpi=100)  # quick looks, not paper figures
        plt.close(fig)
        paths.append(folder / file_name)
    return paths


def _scree(result: AnalysisResult, plt, checks: ChecksResult | None = None):
    """Each component's share ``s_k / ||M||_F``, against the matched null's shares (every
    random group divided by its own norm, so the band says what ``null/s1_share`` says)
    and the jackknife intervals (over the observed norm) where a component has one."""
    S = result.svd.singular_values
    norm = np.sqrt(np.sum(S**2))
    share = S / norm
    components = np.arange(1, len(S) + 1)
    fig, (linear, log) = plt.subplots(1, 2, figsize=(6.5, 2.6))
    for ax, scale in ((linear, "linear"), (log, "log")):
        if checks is not None and checks.null is not None:
            null_shares = np.sqrt(checks.null.explained_variance_ratio)
            low, high = np.percentile(null_shares, [2.5, 97.5], axis=0)
            label = f"{checks.null.n_null} matched random groups, 95%"
            ax.fill_between(components[: len(low)], low, high, color="0.8", label=label)
        if checks is not None and checks.stability is not None and scale == "linear":
            lo, hi = (
                checks.stability.singular_value_lo / norm,
                checks.stability.singular_value_hi / norm,
            )
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
        ax.plot(components, share, marker="o", markersize=4, label=result.target)
        ax.set_yscale(scale)
        ax.set_xlabel("component")
        ax.set_ylabel(r"$s_k / \|M\|_F$" + f" ({scale})")
        ax.set_xticks(components)
    log.set_ylim(bottom=max(share.min(), 1e-12))  # a centered spectrum ends in ~0
    linear.legend(fontsize=6)
    return fig


def _heatmap(values: np.ndarray, labels: list[str], cbar_label: str, plt, size: float):
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.9")  # nan: not measured
    image = ax.imshow(values, vmin=-1, vmax=1, cmap=cmap)
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    ax.grid(False)
    if len(labels) <= 12:
        for (i, j), value in np.ndenumerate(values):
            color = "white" if abs(value) > 0.6 else "black"
            text = "n/a" if np.isnan(value) else f"{value:.2f}"  # never a 0 for nothing
            ax.text(j, i, text, ha="center", va="center", fontsize=6, color=color)
    fig.colorbar(image, ax=ax, label=cbar_label)
    return fig


def _group_mean_corr(result: AnalysisResult, plt):
    stat: PairwiseStat = result.group_mean_corr
    return _heatmap(stat.values, list(stat.names), "Pearson r of group means", plt, 4.0)


def _row_cosine(result: AnalysisResult, plt):
    label = f"cosine ({'centered' if result.center else 'raw'} rows)"
    return _heatmap(result.row_cosine, list(result.target_words), label, plt, 5.0)


def projection_figure(result: AnalysisResult, plt):
    """The vocabulary's projections on component 1 (index 0), the target's words and the
    extremes outside it labelled above (``label_above``), a colour legend beneath."""
    values = result.projections[:, 0]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.hist(values, bins=200, histtype="stepfilled", color="0.6")
    ax.set_yscale("log")
    ax.set_xlabel("projection on component 1")
    ax.set_ylabel("tokens")
    members = [
        (values[i], word, "C1")
        for word, i in zip(result.target_words, result.target_ids, strict=True)
    ]
    extremes = [
        (t.projection, getattr(t, "text", None) or t.token, "C0")  # as people read it
        for t in result.top_tokens
        if t.component == 0 and not t.in_group and t.rank <= N_EXTREMES_LABELLED
    ]
    low, high = ax.get_xlim()
    label_above(ax, members + extremes, gap=(high - low) / 60, low=low, high=high, fontsize=6)
    ax.legend(
        handles=mark_legend("C1", "C0", f"words of {result.target}", N_EXTREMES_LABELLED),
        loc="upper center",
        bbox_to_anchor=(0.5, -0.2),
        ncols=2,
        frameon=False,
        fontsize=6,
    )
    return fig


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


def text_width(text: str, fontsize: float) -> float:
    """Inches ``text`` takes in the theme's font at ``fontsize`` points."""
    font = FontProperties(family=RC["font.family"], size=fontsize)
    width, _, _ = TextToPath().get_text_width_height_descent(text, font, ismath=False)
    return width / 72


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


# appended with order_figure; belongs in the import block above once that file is free


def order_figure(order: CyclicOrder | LinearOrder, plt):
    """The members on the plane of the first two centered components, labelled, joined in
    declared order (closed for a cyclic group); the title carries the statistic, e.g.
    ``neighbours 12/12, p=0.0001; Fisher-Lee 0.97`` or ``Spearman 0.98 (p=0.0001), partial
    0.95 (p=0.0003)``. Returns the matplotlib Figure."""
    path = order.coordinates
    if isinstance(order, CyclicOrder):  # back to the first member: the calendar is a loop
        path = np.vstack([path, path[:1]])
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    ax.plot(path[:, 0], path[:, 1], color="0.7", lw=0.8, zorder=1)
    ax.scatter(*order.coordinates.T, s=12, color=COLORBLIND[0], zorder=2)
    for (x, y), word in zip(order.coordinates, order.words, strict=True):
        ax.text(x, y, f" {word}", fontsize=6, va="center", gid="member-label")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("component 1 (centered)")
    ax.set_ylabel("component 2 (centered)")
    ax.set_title(_order_title(order))
    return fig


def _order_title(order: CyclicOrder | LinearOrder) -> str:
    if isinstance(order, CyclicOrder):
        n = len(order.words)
        return (  # two lines: a 3.4 in figure holds about 40 characters a line
            f"neighbours {order.neighbours}/{n}, p={order.neighbours_p:.2g}\n"
            f"Fisher-Lee {order.circular_corr:.2f}, p={order.circular_corr_p:.2g}"
        )
    title = f"Spearman {order.spearman:.2f} (p={order.spearman_p:.2g})"
    if np.isnan(order.partial_spearman):
        return f"{title}\nno partial"
    return (
        f"{title}\npartial given norm, frequency {order.partial_spearman:.2f} "
        f"(p={order.partial_spearman_p:.2g})"
    )
