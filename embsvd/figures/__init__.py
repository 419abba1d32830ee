"""Figures: the only package that imports matplotlib and seaborn.

- ``run_figures``: the per-run looks (scree, correlations, row cosines, projections);
- ``paper``: a finished sweep's paper figures; ``tables``: its top-token tables;
- ``data``: the rows each paper figure plots, from the runs' logged values (no plotting);
- ``replicates``: those rows pooled over replicates (mean, t interval, n; no plotting);
- ``trajectory``: a revision sweep's axes, spectra and r across training;
- ``numbers``: a run's number-structure spectrum with its nulls;
- ``style``: formats, sizes and the theme (no plotting).

The public names load on first use, so the pipeline imports this package at its top and
pays for matplotlib only when it draws.
"""

import importlib

_MODULE_OF = {
    "draw_run_figures": "run_figures",
    "write_run_figures": "run_figures",
    "write_figure_set": "paper",
    "figure_folder": "paper",
    "check_replaceable": "paper",
    "check_replicates": "replicates",
    "draw_trajectory": "trajectory",
    "draw_numbers_figure": "numbers",
    "draw_concept_figures": "concepts",
    "FigureStyle": "style",
    "FigureFormat": "style",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'embsvd.figures' has no attribute {name!r}")
    return getattr(importlib.import_module(f"embsvd.figures.{_MODULE_OF[name]}"), name)
