"""A concept run's figures: the cosines between the configured concepts' axes, in the
Euclidean and in the whitened geometry (the heatmap of Park, Choe and Veitch), drawn
with the per-run figures' fixed-layout heatmap (``run_figures.heatmap_figure``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from embsvd.checks.concept_null import ConceptResult
from embsvd.figures.fast_axes import Stamp, save_png
from embsvd.figures.run_data import Square
from embsvd.figures.run_figures import RUN_THEME, TITLE_SIZE, heatmap_figure

GEOMETRY_LABELS = {
    "euclidean": "cosine of concept axes (Euclidean)",
    "whitened": "cosine of concept axes (whitened)",
}


def concept_figure_name(geometry: str) -> str:
    """``concept_cosines_<geometry>.png``."""
    return f"concept_cosines_{geometry}.png"


def draw_concept_figures(result: ConceptResult, model_name: str, folder: Path) -> list[Path]:
    """One heatmap per geometry of ``result.cosines`` as PNG in ``folder``; their paths."""
    paths = []
    with matplotlib.rc_context(RUN_THEME):
        for geometry, (names, cosines) in result.cosines.items():
            side = 2.6 + 0.35 * len(names)
            fig = heatmap_figure(
                Square(tuple(names), cosines),
                GEOMETRY_LABELS.get(geometry, geometry),
                (side + 1.0, side),
            )
            h = fig.get_size_inches()[1]
            title = f"{model_name} · concept {result.concept.name} · {result.axis.estimator}"
            fig.add_artist(
                Stamp(0.5, 1 - 0.06 / h, title, fig.transFigure, TITLE_SIZE, ha="center", va="top")
            )
            path = folder / concept_figure_name(geometry)
            save_png(fig, path)
            paths.append(path)
    return paths
