"""MLflow tracking: the only package that imports mlflow. It writes the run contract and
reads sweeps back for figures.

- ``store``: the tracking store and one experiment in it; runs read back as records;
- ``runs``: one run, written in batches, closed with the status it earned;
- ``sweeps``: a sweep's parent run and how its children ended;
- ``reading``: the runs of one sweep (by parent, sweep id or filter) for figures.

The run contract (later tools read runs through it; extend it, don't break it; the full
list is in README.md):

- experiment ``embsvd`` by default; run name ``<model>/<target group>/<centered|raw>``;
- tags ``embsvd.model``, ``embsvd.target_group``, ``embsvd.center``, ``embsvd.source``,
  ``embsvd.weights_sha256``, ``embsvd.version``, ``mlflow.source.git.commit``, ...;
- params: the resolved config, flattened with dotted keys;
- metrics, result tags and CSV tables: defined in ``embsvd.contract`` (the analysis'
  and the checks'), plus ``n_tokens``;
- artifacts besides the tables: ``groups.json``, ``config.yaml``, ``figures/``;
  ``git_diff.patch`` from a checkout with uncommitted changes, ``error.txt`` on failure.

A multirun adds a parent run (tags ``embsvd.role=sweep``, ``embsvd.sweep_id``) whose
children carry ``mlflow.parentRunId`` and ``embsvd.sweep_id``; when the sweep ends the
parent gets ``children.csv`` and ``sweep_summary.txt``, the metrics ``n_children``,
``n_finished``, ``n_failed``, ``n_killed``, ``n_skipped``, and the status its children
earned.
"""

from embsvd.tracking.reading import SweepSelection, log_figures, read_sweep
from embsvd.tracking.runs import RunLogger, log_groups, log_result, start_run, tracked_run
from embsvd.tracking.store import (
    DEFAULT_EXPERIMENT,
    EXPERIMENT_KIND,
    STORE_FOLDER,
    RunRecord,
    TrackingStore,
    default_artifact_root,
    resolve_tracking_uri,
)
from embsvd.tracking.sweeps import CHILD_COLUMNS, SKIPPED_TAG_PREFIX, SweepOutcome, finish_sweep

__all__ = [
    "CHILD_COLUMNS",
    "DEFAULT_EXPERIMENT",
    "EXPERIMENT_KIND",
    "SKIPPED_TAG_PREFIX",
    "STORE_FOLDER",
    "RunLogger",
    "RunRecord",
    "SweepOutcome",
    "SweepSelection",
    "TrackingStore",
    "default_artifact_root",
    "finish_sweep",
    "log_figures",
    "log_groups",
    "log_result",
    "read_sweep",
    "resolve_tracking_uri",
    "start_run",
    "tracked_run",
]
