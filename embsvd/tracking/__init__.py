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
- metrics, result tags and CSV tables: defined in ``embsvd.tracking.contract`` (the analysis'
  and the checks'), plus ``n_tokens``;
- artifacts besides the tables: ``groups.json``, ``config.yaml``, ``figures/``;
  ``git_diff.patch`` from a checkout with uncommitted changes, ``error.txt`` on failure.

A multirun adds a parent run (tags ``embsvd.role=sweep``, ``embsvd.sweep_id``) whose
children carry ``mlflow.parentRunId`` and ``embsvd.sweep_id``; when the sweep ends the
parent gets ``children.csv`` and ``sweep_summary.txt``, the metrics ``n_children``,
``n_finished``, ``n_failed``, ``n_killed``, ``n_skipped``, and the status its children
earned.
"""

import importlib

# Each public name and the module that defines it. They load on first use, so importing
# the contract (``embsvd.tracking.contract``: records and writers, no mlflow) or a type
# from here costs nothing until a store is opened.
_MODULE_OF = {
    "SweepSelection": "reading",
    "log_figures": "reading",
    "read_sweep": "reading",
    "RunLogger": "runs",
    "log_groups": "runs",
    "log_result": "runs",
    "start_run": "runs",
    "tracked_run": "runs",
    "DEFAULT_EXPERIMENT": "store",
    "EXPERIMENT_KIND": "store",
    "STORE_FOLDER": "store",
    "RunRecord": "store",
    "TrackingStore": "store",
    "default_artifact_root": "store",
    "resolve_tracking_uri": "store",
    "CHILD_COLUMNS": "sweeps",
    "SKIPPED_TAG_PREFIX": "sweeps",
    "SweepOutcome": "sweeps",
    "finish_sweep": "sweeps",
    "format_sweep_table": "sweeps",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'embsvd.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"embsvd.tracking.{_MODULE_OF[name]}"), name)
