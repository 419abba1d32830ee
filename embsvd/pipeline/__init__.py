"""The Hydra side of embsvd: the only package that reads a ``DictConfig``; everything it
calls takes typed arguments.

- ``job``: one job = one MLflow run (``experiments/run.py``);
- ``sweeps``: the multirun callbacks (each job composed once; the parent run);
- ``figures``: a finished sweep's paper figures (``experiments/figures.py``).
"""

from embsvd.pipeline.figures_job import FIGURES_ARTIFACT_PATH, figure_style, figures_job
from embsvd.pipeline.job import (
    PARENT_RUN_FILE,
    SWEEP_ID_FILE,
    flatten,
    read_group_file,
    run_job,
    run_name,
    with_group_files,
)
from embsvd.pipeline.sweeps import ComposeJobsOnce, ComposeOnce, SweepTracking

__all__ = [
    "FIGURES_ARTIFACT_PATH",
    "PARENT_RUN_FILE",
    "SWEEP_ID_FILE",
    "ComposeJobsOnce",
    "ComposeOnce",
    "SweepTracking",
    "figure_style",
    "figures_job",
    "flatten",
    "read_group_file",
    "run_job",
    "run_name",
    "with_group_files",
]
