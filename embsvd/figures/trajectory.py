"""A revision sweep's trajectory figure, one per configuration: how the group's axes,
spectrum and group-mean r move across training, against the final checkpoint.

Four panels over the steps (the step numbers where the revisions' names give them, else
their place in the declared order): each axis' ``|cos|`` with the final step's axis
(signs matched), the principal angles between their subspaces, the singular values, and
the target's group-mean r with each other group. Revisions whose analysed matrices are
byte-identical are marked with a hollow ring. Drawn once per sweep, so plain matplotlib
(no pyplot state), not the per-run figures' fast drawing.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from embsvd.figures.style import RUN_RC, UNDATED
from embsvd.tracking.trajectory import ConfigurationTrajectory, figure_name

FIGURE_SIZE = (8.0, 5.6)  # inches: four panels, two by two
FIGURE_DPI = 110
MAX_SINGULAR_VALUES = 5  # drawn in the spectrum panel


def draw_trajectory(
    found: ConfigurationTrajectory, folder: Path, identical: set[str] = frozenset()
) -> Path:
    """Draw ``found``'s figure into ``folder`` (``figure_name(configuration)``) and
    return its path; ``identical``: revisions whose matrix another revision shares."""
    with matplotlib.rc_context(RUN_RC):
        fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        (cos_ax, angle_ax), (spectrum_ax, corr_ax) = fig.subplots(2, 2, sharex=True)
        x = np.array(found.x, dtype=float)
        named = x.tolist() != list(range(len(x)))
        alignment = found.alignment
        for k in range(alignment.abs_cos.shape[1]):
            cos_ax.plot(x, alignment.abs_cos[:, k], marker="o", label=f"axis {k + 1}")
        cos_ax.set(title="|cos| with the final step's axis (signs matched)", ylim=(-0.02, 1.02))
        for k in range(alignment.angles.shape[1]):
            angle_ax.plot(x, np.degrees(alignment.angles[:, k]), marker="o", label=f"θ{k + 1}")
        angle_ax.set(title="principal angles with the final subspace (°)", ylim=(-2, 92))
        # the first few: a group of n words has up to n of them, which a legend cannot list
        n_values = min(MAX_SINGULAR_VALUES, *(len(step.singular_values) for step in found.steps))
        for k in range(n_values):
            values = [step.singular_values[k] for step in found.steps]
            spectrum_ax.plot(x, values, marker="o", label=f"s{k + 1}")
        spectrum_ax.set(title="singular values")
        pairs = sorted({key for step in found.steps for key in step.correlations})
        for variant, a, b in pairs:
            values = [step.correlations.get((variant, a, b), np.nan) for step in found.steps]
            corr_ax.plot(x, values, marker="o", label=f"{a}–{b} ({variant})")
        corr_ax.set(title="group-mean r", ylim=(-1.05, 1.05))
        marked = [i for i, step in enumerate(found.steps) if step.revision in identical]
        for ax in (cos_ax, angle_ax, spectrum_ax, corr_ax):
            for i in marked:
                ax.axvline(x[i], color="0.6", linewidth=0.6, linestyle=":")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", frameon=False)
        for ax in (spectrum_ax, corr_ax):
            ax.set_xlabel("step" if named else "checkpoint (declared order)")
            ax.set_xticks(x, [step.revision for step in found.steps], rotation=30, ha="right")
        note = " · dotted: identical embeddings" if marked else ""
        fig.suptitle(f"{found.configuration}: axes across training{note}")
        path = folder / figure_name(found.configuration)
        fig.savefig(path, format="png", metadata=UNDATED["png"])
    return path
