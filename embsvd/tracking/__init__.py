"""MLflow tracking: the only package that imports mlflow. It writes the run contract and
reads sweeps back for figures.

- ``contract`` and ``artifacts``: the run contract as plain data, no mlflow: tag keys
  (``Tag``), the run name and its parser, metrics, result tags, CSV tables, and the
  records runs are read back as; docs/contract.md describes it for a reader of runs;
- ``store``: the tracking store and one experiment in it; runs read back as records;
- ``journal``: a sqlite store's journal mode (write-ahead by default), folded back into
  the database when a process that wrote it ends (plain sqlite3, no mlflow);
- ``runs``: one run, written in batches, closed with the status it earned (signals held
  while it closes);
- ``recovery``: the process that writes a run (its tags), and final writes the store
  refused, kept on disk and written by the next command that opens it;
- ``sweeps``: a sweep's parent run and how its children ended;
- ``writer``: a sweep's final writes in a process of their own, beside the next job;
- ``trajectory``: a revision sweep's runs per configuration in training order, and
  what its parent logs of them;
- ``numbers``: the number-structure check's metrics and tables;
- ``reconcile``: runs left RUNNING by a process that is gone, closed;
- ``reading``: the runs of one sweep (by parent, sweep id or filter) for figures; the
  sweeps of a store listed;
- ``export``: a sweep's runs as one table (CSV, Parquet) of metrics, params and tags;
  pooled over replicates, a row per configuration;
- ``replicates``: runs that differ only in declared params, pooled (mean, t interval, n).

Later tools read runs through the contract: extend it, don't break it.
"""

import importlib

# Each public name and the module that defines it. They load on first use, so importing
# the contract (``embsvd.tracking.contract``: records and writers, no mlflow) or a type
# from here costs nothing until a store is opened.
_MODULE_OF = {
    "SweepSelection": "reading",
    "SweepSummary": "reading",
    "find_sweep": "reading",
    "list_sweeps": "reading",
    "SweepChoice": "reading",
    "latest_sweep": "reading",
    "EXPORT_FORMATS": "export",
    "SweepTable": "export",
    "sweep_table": "export",
    "write_table": "export",
    "COLUMN_PREFIXES": "export",
    "numbers_metrics": "numbers",
    "write_numbers_tables": "numbers",
    "PooledTable": "export",
    "pooled_table": "export",
    "Pooled": "replicates",
    "ReplicateSet": "replicates",
    "check_replicate_keys": "replicates",
    "pool": "replicates",
    "replicate_sets": "replicates",
    "identical_message": "trajectory",
    "is_revision_sweep": "trajectory",
    "log_trajectories": "trajectory",
    "sweep_runs": "trajectory",
    "sweep_trajectories": "trajectory",
    "TRAJECTORY_FIGURES": "trajectory",
    "log_figures": "reading",
    "no_progress_bars": "reading",
    "read_tables": "reading",
    "with_tables": "reading",
    "read_sweep": "reading",
    "FinalWriteError": "runs",
    "RunLogger": "runs",
    "Terminated": "runs",
    "close_run": "runs",
    "deferred_signals": "runs",
    "describe": "runs",
    "log_groups": "runs",
    "log_result": "runs",
    "signals_end_runs": "runs",
    "start_run": "runs",
    "tracked_run": "runs",
    "Journal": "journal",
    "DEFAULT_EXPERIMENT": "store",
    "EXPERIMENT_KIND": "store",
    "STORE_FOLDER": "store",
    "RunRecord": "store",
    "TrackingStore": "store",
    "default_artifact_root": "store",
    "resolve_tracking_uri": "store",
    "Change": "reconcile",
    "reconcile_runs": "reconcile",
    "PendingWrite": "recovery",
    "pending_writes": "recovery",
    "process_tags": "recovery",
    "SweepOutcome": "sweeps",
    "abandon_sweep": "sweeps",
    "close_running_children": "sweeps",
    "finish_sweep": "sweeps",
    "format_sweep_table": "sweeps",
    "RunWriter": "writer",
    "close_writer": "writer",
    "drain_writes": "writer",
    "sweep_writer": "writer",
}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'embsvd.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(f"embsvd.tracking.{_MODULE_OF[name]}"), name)
