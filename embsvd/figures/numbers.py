"""The number-structure figure of a run: power share against period, with the nulls.

One panel: the integer tokens' Fourier power share at every period ``n_used / k``
(``embsvd.checks.numbers``), each null's 95th percentile as a band from zero, the
log-frequency sequence's own spectrum, and the tested periods marked. A share above both
bands at a tested period is what the order carries beyond what frequency explains.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from embsvd.checks.numbers import NumberStructure
from embsvd.figures.style import RUN_RC

FIGURE_NAME = "numbers_spectrum.png"
SIZE = (6.4, 2.8)  # inches: the legend sits right of the panel
LONGER_PERIODS = (20, 50, 100, 200, 500, 1000, 2000, 5000)  # ticks beside the tested ones
DPI = 150
COLORS = {"share": "#0173B2", "perm": "#949494", "freq": "#DE8F05", "zipf": "#029E73"}


def draw_numbers_figure(structure: NumberStructure, title: str, folder: Path) -> Path:
    """Draw ``structure``'s spectrum into ``folder / FIGURE_NAME`` and return the path."""
    periods = structure.spectrum_periods
    with matplotlib.rc_context(RUN_RC):
        fig = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for name, label in (("perm", "order permuted"), ("freq", "frequency only")):
            band = getattr(structure, name)
            ax.fill_between(periods, 0, band.q95, color=COLORS[name], alpha=0.2, linewidth=0)
            ax.plot(periods, band.q95, color=COLORS[name], lw=0.8, label=f"{label}: 95th pct.")
        ax.plot(periods, structure.zipf_share, ":", color=COLORS["zipf"], lw=0.8)
        ax.plot([], [], ":", color=COLORS["zipf"], label="log frequency's own")
        ax.plot(
            periods,
            structure.share,
            "o-",
            color=COLORS["share"],
            ms=2,
            lw=0.8,
            label="embedding rows",
        )
        for period in structure.periods:
            ax.axvline(period, color="0.3", lw=0.5, ls="--")
            ax.annotate(
                f"T={period}",
                (period, 1),
                xycoords=("data", "axes fraction"),
                xytext=(2, -8),
                textcoords="offset points",
                fontsize=6,
            )
        ax.set_xscale("log")
        shown = [p for p in LONGER_PERIODS if p <= periods.max()]
        ax.set_xticks(sorted({*structure.periods, *shown}), minor=False)
        ax.set_xticks([], minor=True)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlim(periods.min() * 0.9, periods.max() * 1.1)
        top = np.nanmax([structure.share.max(), structure.perm.q95.max(), structure.freq.q95.max()])
        ax.set_ylim(0, (top if np.isfinite(top) and top > 0 else 1) * 1.15)
        ax.set_xlabel(f"period (integers 0..{structure.n_used - 1}, log scale)")
        ax.set_ylabel("share of Fourier power")
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        path = folder / FIGURE_NAME
        fig.savefig(path)
    return path
