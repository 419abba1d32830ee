"""How the paper figures are drawn: formats, sizes, the one theme. No matplotlib here, so
the figures config can name its choices without importing a plotting library."""

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


@dataclass(frozen=True)
class FigureStyle:
    """How the figure set is drawn: widths in inches (defaults: a two-column paper's
    column and text widths), formats, PNG resolution, the significance level marked on
    the correlation heatmaps and the tokens per end in tables and overlaps."""

    column_width: float = 3.25
    text_width: float = 6.75
    formats: tuple[str, ...] = ("pdf", "png")
    dpi: int = 300
    alpha: float = 0.05
    top_k: int = 10
