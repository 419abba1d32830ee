"""The Hydra side of embsvd: the only package that reads a ``DictConfig``; everything it
calls takes typed arguments.

- ``config``: the schemas, group files and ``validate``: every job checked before a run opens;
- ``job``: one job = one MLflow run (``experiments/run.py``);
- ``compose``, ``sweeps``: the multirun callbacks (every job composed and checked before
  launch; the parent run);
- ``figures_job``: a finished sweep's paper figures (``experiments/figures.py``);
- ``project``: the project folder (where ``mlruns/`` and ``figures/`` go);
- ``provenance``, ``report``: git state and versions; the commands a sweep prints;
- ``secrets``: the redaction rule that keeps tokens and passwords out of runs, Hydra's
  files and the console (the ``RedactSecrets`` callback).
"""

from embsvd.pipeline.compose import ComposeJobsOnce, ComposeOnce
from embsvd.pipeline.config import read_group_file, validate, with_group_files
from embsvd.pipeline.figures_job import FIGURES_ARTIFACT_PATH, figure_style, figures_job
from embsvd.pipeline.job import PARENT_RUN_FILE, SWEEP_ID_FILE, flatten, run_job, run_name
from embsvd.pipeline.secrets import RedactSecrets
from embsvd.pipeline.sweeps import SweepTracking

__all__ = [
    "FIGURES_ARTIFACT_PATH",
    "PARENT_RUN_FILE",
    "SWEEP_ID_FILE",
    "ComposeJobsOnce",
    "ComposeOnce",
    "RedactSecrets",
    "SweepTracking",
    "figure_style",
    "figures_job",
    "flatten",
    "read_group_file",
    "run_job",
    "run_name",
    "validate",
    "with_group_files",
]
