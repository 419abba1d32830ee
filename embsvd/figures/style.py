"""How figures are drawn: the paper figures' formats, sizes and theme, the per-run
figures' resolution and theme. No matplotlib here, so the configs can name their choices
without importing a plotting library."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FigureFormat(StrEnum):
    """A file format of the figure set (``formats`` in ``conf/figures.yaml``): one that
    ``UNDATED`` knows how to write without a timestamp. Members are named as their values
    because OmegaConf matches and lists an enum by name."""

    pdf = "pdf"
    png = "png"
    svg = "svg"


# no creation date or software version in the files: drawing again writes the same bytes
UNDATED = {"pdf": {"CreationDate": None}, "png": {"Software": None}, "svg": {"Date": None}}
RC = {
    "pdf.fonttype": 42,  # TrueType, embedded: journals reject Type 3 fonts
    "ps.fonttype": 42,
    "font.family": "DejaVu Sans",  # ships with matplotlib, so every machine draws the same
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "lines.markersize": 3,
    "svg.hashsalt": "embsvd",
}

# The per-run figures (``run_figures``): quick looks in the MLflow UI, drawn with every
# run, so they are made for speed: screen resolution, and zlib's fastest compression
# (level 1: a tenth larger than the default level 6, in a third less time; tens of kB)
RUN_FIGURE_DPI = 100
RUN_FIGURE_PNG = {"metadata": UNDATED["png"], "pil_kwargs": {"compress_level": 1}}
RUN_RC = {  # small paper-like figures; the colour cycle is run_figures' (seaborn's colorblind)
    "font.family": "DejaVu Sans",
    "text.hinting": "no_hinting",  # a third less time per glyph than the autohinter's
    "axes.grid": False,  # run_figures draws its own grid lines, with its own ticks
    "axes.edgecolor": "0.6",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 6,
}


@dataclass(frozen=True)
class FigureStyle:
    """How the figure set is drawn: widths in inches (defaults: a two-column paper's
    column and text widths), formats, PNG resolution, the significance level marked on
    the correlation heatmaps, the tokens per end in tables and overlaps, and the
    replicate keys whose runs are pooled (``figures.replicates``; none: one per run)."""

    column_width: float = 3.25
    text_width: float = 6.75
    formats: tuple[str, ...] = ("pdf", "png")
    dpi: int = 300
    alpha: float = 0.05
    top_k: int = 10
    replicates: tuple[str, ...] = ()
