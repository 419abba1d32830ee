"""Figures drawn for speed, the per-run figures' tools (``run_figures``): a figure of a
fixed size on its own Agg canvas with axes at rectangles given in inches (no layout
pass, no pyplot state), ticks drawn without matplotlib's tick machinery, short texts
stamped from bitmaps rendered once per process, and PNG written by a renderer kept
per size.

matplotlib spends its time on what these replace: five artists per tick copied from the
first, a measure of every tick label to place the axis label, and the layout and
rasterising of every glyph of every text on every drawing. What is left is drawn by
matplotlib as usual. The same inputs draw the same pixels in any process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.artist
import matplotlib.image
import matplotlib.transforms
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.markers import TICKDOWN, TICKLEFT, TICKRIGHT
from matplotlib.text import Text
from matplotlib.textpath import TextToPath
from matplotlib.ticker import MaxNLocator, NullLocator
from matplotlib.transforms import Bbox

from embsvd.figures.style import RC, RUN_FIGURE_DPI, RUN_FIGURE_PNG

# sizes in points, as matplotlib's defaults draw ticks and axis labels
TICK_SIZE = 8  # tick labels
EXPONENT_SIZE = 6  # the exponent of a power of ten
TICK_LENGTH = 3.5
TICK_ROOM = TICK_LENGTH + 3.5  # a tick mark and the gap to its label
LABEL_PAD = 4.0  # between the tick labels and the axis label
TEXT_HEIGHT = 1.2 * TICK_SIZE / 72  # inches of a line of tick labels
GRID_COLOR = "0.9"


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: nothing registered with pyplot, nothing to close."""
    fig = Figure(figsize=(width, height), dpi=RUN_FIGURE_DPI, layout="none")
    FigureCanvasAgg(fig)
    return fig


def axes_at(fig: Figure, left: float, bottom: float, width: float, height: float):
    """Axes at a rectangle given in inches from the figure's lower left corner, without
    matplotlib's ticks (``ticks`` draws them)."""
    w, h = fig.get_size_inches()
    ax = fig.add_axes((left / w, bottom / h, width / w, height / h))
    no_ticks(ax)
    return ax


def no_ticks(ax) -> None:
    """No matplotlib ticks on ``ax`` (again after ``set_yscale``, which sets its own)."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(NullLocator())
        axis.set_minor_locator(NullLocator())


def offset(ax, dx: float, dy: float) -> matplotlib.transforms.Transform:
    """A shift of ``(dx, dy)`` points."""
    return matplotlib.transforms.ScaledTranslation(dx / 72, dy / 72, ax.figure.dpi_scale_trans)


def ticks(
    ax,
    which: str,
    values: Sequence[float],
    labels: Sequence[str] | None,
    *,
    rotation: float = 0.0,
    grid: bool = True,
    side: str = "low",
) -> float:
    """Ticks of the ``x`` or ``y`` axis of ``ax`` at ``values`` (data units), with their
    ``labels`` (``None``: the caller draws them) and grid lines across the axes;
    ``side="high"`` puts them right of a y axis. Returns the inches the labels take
    beyond the axes, where the axis label goes.

    Drawn as one line of tick marks, one collection of grid lines and one text per label,
    the marks and labels the figure's artists (outside the axes, and none of the axes'
    lines or texts): matplotlib's own ticks are five artists each, copied from the
    first, and its axis measures every label to place its own label; they cost several
    times their labels.
    """
    high = side == "high"
    if which == "x":
        base = ax.get_xaxis_transform()  # x in data units, y in fractions of the axes
        points = [(v, 0.0) for v in values]
        lines = [[(v, 0.0), (v, 1.0)] for v in values]
        marker, shift, align = TICKDOWN, (0, -TICK_ROOM), {"ha": "center", "va": "top"}
    else:
        base = ax.get_yaxis_transform()
        points = [(float(high), v) for v in values]
        lines = [[(0.0, v), (1.0, v)] for v in values]
        marker, shift = (TICKRIGHT, (TICK_ROOM, 0)) if high else (TICKLEFT, (-TICK_ROOM, 0))
        align = {"ha": "left" if high else "right", "va": "center"}
    if not points:
        return 0.0
    if grid:
        ax.add_collection(
            LineCollection(lines, transform=base, colors=GRID_COLOR, linewidths=0.8, zorder=1.5),
            autolim=False,
        )
    ax.figure.add_artist(
        Line2D(
            *zip(*points, strict=True),
            transform=base,
            marker=marker,
            markersize=TICK_LENGTH,
            markeredgewidth=0.8,
            color="black",
            linestyle="none",
            clip_on=False,
        )
    )
    if labels is None:
        return TICK_ROOM / 72
    for (x, y), label in zip(points, labels, strict=True):
        add_label(ax, x, y, label, base + offset(ax, *shift), rotation=rotation, **align)
    across = (which == "x") == (rotation == 0)  # labels read across the axis
    extent = TEXT_HEIGHT if across else max(text_width(label, TICK_SIZE) for label in labels)
    return TICK_ROOM / 72 + extent


def add_label(ax, x: float, y: float, text: str, transform, size: float = TICK_SIZE, **kwargs):
    """A label outside the axes, placed by ``transform`` (which follows the axes): the
    figure's artist, as tick labels are none of the axes' texts."""
    ax.figure.add_artist(Stamp(x, y, text, transform, size, **kwargs))


class Stamp(matplotlib.artist.Artist):
    """A short text (a tick label, a cell's value, a title) drawn from a bitmap this
    process renders once (``stamp_bitmap``), placed to the nearest pixel. Such texts
    repeat within a run's figures and from run to run, and matplotlib lays out and
    rasterises every glyph of every text anew: half a millisecond a label, most of what
    these figures cost. Its ``get_text`` and ``get_window_extent`` are a ``Text``'s."""

    zorder = 3  # as a Text's: over the axes (the figure draws its own artists first)

    def __init__(
        self,
        x: float,
        y: float,
        text: str,
        transform: matplotlib.transforms.Transform,
        fontsize: float = TICK_SIZE,
        *,
        color: str = "black",
        rotation: float = 0.0,
        ha: str = "left",
        va: str = "baseline",
    ):
        super().__init__()
        self._xy = (x, y)
        self._text = text
        self._look = (float(fontsize), color, float(rotation), ha, va)
        # the font as a Text takes it, when it is made: the theme's, wherever it is drawn
        rc = matplotlib.rcParams
        self._font = (tuple(rc["font.family"]), rc["text.hinting"])
        self.set_transform(transform)

    def get_text(self) -> str:
        return self._text

    def get_rotation(self) -> float:
        return self._look[2]

    def _placed(self, dpi: float) -> tuple[np.ndarray, int, int]:
        bitmap, (dx, dy) = stamp_bitmap(self._text, *self._look, dpi, self._font)
        x, y = self.get_transform().transform(self._xy)
        return bitmap, round(x - dx), round(y - dy)

    def draw(self, renderer) -> None:
        if self.get_visible():
            bitmap, left, bottom = self._placed(renderer.dpi)
            if bitmap.size:
                gc = renderer.new_gc()
                renderer.draw_image(gc, left, bottom, bitmap)
                gc.restore()
        self.stale = False

    def get_window_extent(self, renderer=None) -> Bbox:
        bitmap, left, bottom = self._placed(self.get_figure(root=True).dpi)
        return Bbox.from_bounds(left, bottom, bitmap.shape[1], bitmap.shape[0])


@functools.lru_cache(maxsize=8192)
def stamp_bitmap(
    text: str,
    fontsize: float,
    color: str,
    rotation: float,
    ha: str,
    va: str,
    dpi: float,
    font: tuple[tuple[str, ...], str],  # font.family and text.hinting
) -> tuple[np.ndarray, tuple[float, float]]:
    """``text`` as matplotlib draws it, anchored (``ha``, ``va``) at the centre of a
    transparent canvas, cut to its pixels: their rows bottom first (as ``draw_image``
    takes them), and the anchor's place from their lower left corner."""
    with matplotlib.rc_context({"font.family": list(font[0]), "text.hinting": font[1]}):
        return _rendered(text, fontsize, color, rotation, ha, va, dpi)


def _rendered(
    text: str, fontsize: float, color: str, rotation: float, ha: str, va: str, dpi: float
) -> tuple[np.ndarray, tuple[float, float]]:
    label = Text(0, 0, text, fontsize=fontsize, color=color, rotation=rotation, ha=ha, va=va)
    label.set_figure(_figure_at(dpi))
    width, height, _ = _probe(dpi).get_text_width_height_descent(
        text, label.get_fontproperties(), ismath=False
    )
    # half the canvas each way from the anchor: room for the text whatever its alignment
    across, up = int(width) + 8, int(height) + 8
    if rotation % 180:
        across, up = (up, across) if rotation % 90 == 0 else (max(across, up),) * 2
    canvas = RendererAgg(2 * across, 2 * up, dpi)
    label.set(transform=matplotlib.transforms.IdentityTransform(), x=across, y=up)
    label.draw(canvas)
    pixels = np.asarray(canvas.buffer_rgba())
    rows, columns = np.nonzero(pixels[..., 3])
    if not len(rows):
        return np.zeros((0, 0, 4), np.uint8), (0.0, 0.0)
    top, bottom, left, right = rows.min(), rows.max() + 1, columns.min(), columns.max() + 1
    bitmap = np.ascontiguousarray(pixels[top:bottom, left:right][::-1])
    return bitmap, (across - left, up - (2 * up - bottom))


@functools.cache
def _figure_at(dpi: float) -> Figure:
    return Figure(dpi=dpi)


@functools.cache
def _probe(dpi: float) -> RendererAgg:
    return RendererAgg(1, 1, dpi)


def axis_label(ax, which: str, label: str, beyond: float, side: str = "low") -> None:
    """The axis label, ``beyond`` inches (``ticks``' extent) outside the axes."""
    room = 72 * (beyond + LABEL_PAD / 72)  # points
    if which == "x":
        ax.set_xlabel(label)
        ax.xaxis.set_label_coords(0.5, 0, ax.transAxes + offset(ax, 0, -room))
    elif side == "high":
        ax.set_ylabel(label)
        ax.yaxis.set_label_position("right")
        ax.yaxis.set_label_coords(1, 0.5, ax.transAxes + offset(ax, room, 0))
    else:
        ax.set_ylabel(label)
        ax.yaxis.set_label_coords(0, 0.5, ax.transAxes + offset(ax, -room, 0))


def fixed_limits(ax, which: str) -> tuple[float, float]:
    """The axis' limits, fixed from now on: the ticks drawn for them must stay true."""
    if which == "x":
        low, high = ax.get_xlim()
        ax.set_xlim(low, high)
    else:
        low, high = ax.get_ylim()
        ax.set_ylim(low, high)
    return min(low, high), max(low, high)


def linear_ticks(ax, which: str, length: float, **kwargs) -> float:
    """Ticks at round numbers within the axis' limits, about one per three label heights
    (x) or two (y), as matplotlib spaces them; ``length`` is the axis' in inches."""
    low, high = fixed_limits(ax, which)
    n_bins = max(2, min(9, int(72 * length / (TICK_SIZE * (3 if which == "x" else 2)))))
    slack = 1e-9 * (high - low)
    values = [
        v
        for v in MaxNLocator(nbins=n_bins, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
        if low - slack <= v <= high + slack
    ]
    return ticks(ax, which, values, tick_numbers(values), **kwargs)


def tick_numbers(values: Sequence[float]) -> list[str]:
    """Tick labels with as many decimals as the values need, and a true minus sign."""
    decimals = next(
        (d for d in range(10) if np.allclose(np.round(values, d), values, rtol=0, atol=1e-9)), 10
    )
    labels = [f"{v:.{decimals}f}" for v in values]
    return [f"{0:.{decimals}f}" if float(t) == 0 else t.replace("-", "−") for t in labels]


def log_ticks(ax, length: float, max_ticks: int = 6) -> float:
    """Ticks of a log-scaled y axis ``length`` inches long: at powers of ten where its
    limits hold two or more (every ``step``-th decade, at most ``max_ticks``), labelled
    ``10`` with the exponent raised and smaller, as mathematics sets it (two plain
    texts: matplotlib parses mathematics at several times a text's cost, and Unicode
    superscripts are too small to read); else at round numbers (``log_round_numbers``)."""
    low, high = fixed_limits(ax, "y")
    first, last = int(np.ceil(np.log10(low) - 1e-9)), int(np.floor(np.log10(high) + 1e-9))
    if last <= first:
        values = log_round_numbers(low, high, length)
        return ticks(ax, "y", values, tick_numbers(values))
    step = int(np.ceil((last - first + 1) / max_ticks))
    exponents = [e for e in range(first, last + 1) if e % step == 0]
    beyond = ticks(ax, "y", [10.0**e for e in exponents], None)
    base = ax.get_yaxis_transform()
    widest = 0.0
    for e in exponents:
        exponent = str(e).replace("-", "−")
        width = text_width(exponent, EXPONENT_SIZE)
        widest = max(widest, width)
        up = base + offset(ax, -TICK_ROOM, 0.5)
        add_label(ax, 0, 10.0**e, exponent, up, EXPONENT_SIZE, ha="right", va="bottom")
        left = base + offset(ax, -(TICK_ROOM + 72 * width + 0.5), 0)
        add_label(ax, 0, 10.0**e, "10", left, ha="right", va="center")
    return beyond + widest + text_width("10", TICK_SIZE)


def log_round_numbers(low: float, high: float, length: float) -> list[float]:
    """Values ``m * 10**e`` within ``[low, high]`` (a span of less than two powers of
    ten) for the most mantissas ``m`` whose labels still stand a line and a half apart
    on a log axis ``length`` inches long: 1-9, else 1, 2 and 5, else 1 and 3, else 1;
    round numbers across the limits (``MaxNLocator``) where none has two inside them."""
    span = np.log10(high) - np.log10(low)
    exponents = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    for mantissas in (range(1, 10), (1, 2, 5), (1, 3), (1,)):
        values = [m * 10.0**e for e in exponents for m in mantissas]
        values = [v for v in values if low <= v <= high]
        gaps = np.diff(np.log10(values)) / span * length
        if len(values) >= 2 and gaps.min() >= 1.5 * TEXT_HEIGHT:
            return values
    values = MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high)
    return [v for v in values if low <= v <= high]


def equal_scales(ax, width: float, height: float) -> None:
    """Widen the shorter range of ``ax``'s limits so that a unit is as long on both axes
    (``set_aspect("equal", adjustable="datalim")``, settled now: the ticks follow)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    scale = max((x1 - x0) / width, (y1 - y0) / height)  # data units per inch
    xc, yc = (x0 + x1) / 2, (y0 + y1) / 2
    ax.set_xlim(xc - scale * width / 2, xc + scale * width / 2)
    ax.set_ylim(yc - scale * height / 2, yc + scale * height / 2)


@functools.lru_cache(maxsize=4096)
def text_width(text: str, fontsize: float) -> float:
    """Inches ``text`` takes in the theme's font at ``fontsize`` points."""
    font = FontProperties(family=RC["font.family"], size=fontsize)
    width, _, _ = TextToPath().get_text_width_height_descent(text, font, ismath=False)
    return width / 72


# This process' renderers, one per figure size in pixels: a renderer remembers the sizes
# of the texts it measured, and a sweep's figures repeat most of their texts (titles,
# tick and axis labels, legends), which a fresh canvas would measure all over again.
_RENDERERS: dict[tuple[int, int], RendererAgg] = {}


def save_png(fig: Figure, path: Path) -> None:
    """Draw ``fig`` with this process' renderer of its size and write it as PNG."""
    width, height = (round(v) for v in fig.bbox.size)
    renderer = _RENDERERS.get((width, height))
    if renderer is None or renderer.dpi != fig.dpi:
        renderer = _RENDERERS[(width, height)] = RendererAgg(width, height, fig.dpi)
    renderer.clear()
    fig.draw(renderer)
    pixels = np.asarray(renderer.buffer_rgba())
    matplotlib.image.imsave(path, pixels, format="png", dpi=fig.dpi, **RUN_FIGURE_PNG)


def clear_caches() -> None:
    """Forget the renderers and text bitmaps this process kept: draw as a new process."""
    _RENDERERS.clear()
    stamp_bitmap.cache_clear()
