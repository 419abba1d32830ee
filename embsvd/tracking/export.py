"""A sweep's numbers as one tidy table: a row per run, a column per value.

The columns, in this order (docs/sweeps.md#command-line):

- ``sweep_id``, ``run_id``, ``run_name``, ``experiment``, ``status``, ``start_time``,
  ``end_time`` (UTC), ``reused`` (true for a run a resumed sweep took over from an earlier
  one: it carries that sweep's tags);
- ``metrics.<key>``: each metric's latest value, as MLflow shows it in its runs table.
  Step series (one value per component, e.g. ``singular_value``) are left out: their
  latest value is only their last component (``SweepTable.series`` names them);
- ``params.<key>`` and ``tags.<key>``: as logged, text.

The prefixes are MLflow's own (``mlflow.search_runs``, and its filter strings), so a
column reads as the key that filters on it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from embsvd.tracking import contract, reading

EXPORT_FORMATS = ("csv", "parquet")
RUN_COLUMNS = (
    "sweep_id",
    "run_id",
    "run_name",
    "experiment",
    "status",
    "start_time",
    "end_time",
    "reused",
)
COLUMN_PREFIXES = ("metrics", "params", "tags")  # column name: <prefix>.<key>


@dataclass(frozen=True)
class SweepTable:
    """One sweep's runs as a table, and what it leaves out."""

    sweep: reading.SweepSummary
    frame: pd.DataFrame  # one row per run, in job order
    series: tuple[str, ...]  # metric keys left out: step series


def sweep_table(tracking_uri: str, sweep: str, experiment: str | None = None) -> SweepTable:
    """Every run of the sweep named ``sweep`` (its id or its parent run's id), whatever its
    status; the parent run is left out (its metrics count the runs).

    Raises:
        ValueError: No such sweep (the message lists the latest ones) or experiment.
    """
    summary, runs = reading.find_sweep(tracking_uri, sweep, experiment)
    client = MlflowClient(tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    parent_tags = client.get_run(summary.parent_run_id).data.tags
    reused = set(contract.skipped_jobs(parent_tags).values())
    # a key that one run logs at several steps is a series in every run (a spectrum of one
    # component is still a spectrum)
    series = sorted({m.key for run in runs for m in run.data.to_proto().metrics if m.step > 0})
    rows = [_row(summary.label, run, reused, set(series), experiments) for run in runs]
    frame = pd.DataFrame.from_records(rows, columns=_columns(rows))
    for column in ("start_time", "end_time"):
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
    return SweepTable(summary, frame, tuple(series))


def write_table(frame: pd.DataFrame, path: Path, file_format: str) -> None:
    """Write ``frame`` as ``file_format`` (``EXPORT_FORMATS``) to ``path``, whole or not at all:
    it is written beside ``path`` and then moved there."""
    if file_format not in EXPORT_FORMATS:
        raise ValueError(f"format {file_format!r}: choose from {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    try:
        if file_format == "csv":
            frame.to_csv(scratch, index=False)
        else:
            frame.to_parquet(scratch, index=False)
        os.replace(scratch, path)
    finally:
        Path(scratch).unlink(missing_ok=True)


def _row(
    sweep_id: str, run: Run, reused: set[str], series: set[str], experiments: dict[str, str]
) -> dict[str, object]:
    info = run.info
    row: dict[str, object] = {
        "sweep_id": sweep_id,
        "run_id": info.run_id,
        "run_name": info.run_name,
        "experiment": experiments.get(info.experiment_id, info.experiment_id),
        "status": info.status,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "reused": info.run_id in reused,
    }
    row |= {f"metrics.{k}": v for k, v in run.data.metrics.items() if k not in series}
    row |= {f"params.{k}": v for k, v in run.data.params.items()}
    row |= {f"tags.{k}": v for k, v in run.data.tags.items()}
    return row


def _columns(rows: list[dict[str, object]]) -> list[str]:
    keys = {key for row in rows for key in row}
    return [*RUN_COLUMNS] + [
        key
        for prefix in COLUMN_PREFIXES
        for key in sorted(k for k in keys if k.startswith(f"{prefix}."))
    ]
