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

``pooled_table`` pools the replicates of each configuration (``embsvd.tracking.replicates``):
a row per configuration, its metrics as ``metrics.<key>.mean``, ``.lo``, ``.hi`` (the
95% Student-t interval) and ``.n``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from embsvd.tracking import contract, reading, replicates

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


# the pooled table's first columns; then params.<key> and tags.<key> the replicates share,
# then metrics.<key>.<statistic> for each metric
POOLED_COLUMNS = ("sweep_id", "configuration", "n", "replicates", "run_ids")
POOLED_STATISTICS = ("mean", "lo", "hi", "n")


@dataclass(frozen=True)
class PooledTable:
    """A sweep's FINISHED runs pooled over replicate keys: a row per configuration."""

    sweep: reading.SweepSummary
    frame: pd.DataFrame
    keys: tuple[str, ...]  # the replicate keys
    n_runs: int  # FINISHED runs pooled
    left_out: tuple[str, ...]  # runs not FINISHED, as ``<name> (<status>)``


def pooled_table(table: SweepTable, keys: list[str] | tuple[str, ...]) -> PooledTable:
    """The sweep's FINISHED runs pooled over the replicate ``keys``: one row per
    configuration (runs whose params agree but for the keys), in the order of its first
    run, with ``configuration`` (1, 2, ...), ``n`` (its replicates), ``replicates``
    (what varies, ``analysis.random_state=0,1,2``), ``run_ids``, the ``params.<key>``
    and ``tags.<key>`` its runs share, and per metric ``metrics.<key>.mean``, ``.lo``,
    ``.hi`` (95% Student-t interval over the runs that logged it, ``n - 1`` degrees of
    freedom; empty with one) and ``.n``. Runs not FINISHED are left out (and named):
    a failed run's metrics are partial.

    Raises:
        ValueError: see ``replicates.replicate_sets``; also two runs with one config hash
            (one configuration run twice: never pooled as two replicates).
    """
    frame = table.frame
    finished = [row for row in frame.to_dict("records") if row["status"] == "FINISHED"]
    left_out = tuple(
        f"{row['run_name']} ({row['status']})"
        for row in frame.to_dict("records")
        if row["status"] != "FINISHED"
    )
    _refuse_repeats(finished)
    sets = replicates.replicate_sets(
        finished, keys, _prefixed("params"), _run_name, where="export --replicates"
    )
    metrics = [c.removeprefix("metrics.") for c in frame.columns if c.startswith("metrics.")]
    rows = []
    for number, found in enumerate(sets, start=1):
        row: dict[str, object] = {
            "sweep_id": table.sweep.label,
            "configuration": number,
            "n": found.n,
            "replicates": found.describe(),
            "run_ids": " ".join(str(r["run_id"]) for r in found.members),
        }
        row |= {f"params.{k}": v for k, v in found.shared.items()}
        tags = [_prefixed("tags")(r) for r in found.members]
        row |= {f"tags.{k}": v for k, v in tags[0].items() if all(t.get(k) == v for t in tags[1:])}
        for metric in metrics:
            pooled = replicates.pool(r[f"metrics.{metric}"] for r in found.members)
            row |= {f"metrics.{metric}.{s}": getattr(pooled, s) for s in POOLED_STATISTICS}
        rows.append(row)
    columns = [*POOLED_COLUMNS] + [
        key
        for prefix in COLUMN_PREFIXES
        for key in sorted({k for r in rows for k in r if k.startswith(f"{prefix}.")})
    ]
    pooled_frame = pd.DataFrame.from_records(rows, columns=columns)
    return PooledTable(table.sweep, pooled_frame, tuple(keys), len(finished), left_out)


def _prefixed(prefix: str):
    """A frame row's ``<prefix>.<key>`` columns as ``{key: text}``, empty cells left out."""

    def values(row: dict[str, object]) -> dict[str, str]:
        return {
            key.removeprefix(f"{prefix}."): str(value)
            for key, value in row.items()
            if key.startswith(f"{prefix}.") and not pd.isna(value)
        }

    return values


def _run_name(row: dict[str, object]) -> str:
    return f"{row['run_name']} (run {row['run_id']})"


def _refuse_repeats(rows: list[dict[str, object]]) -> None:
    """Runs with one config hash are one configuration run twice: refused, not pooled."""
    by_hash: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        digest = row.get(f"tags.{contract.Tag.CONFIG_HASH}")
        if isinstance(digest, str) and digest:
            by_hash.setdefault(digest, []).append(row)
    repeated = [runs for runs in by_hash.values() if len(runs) > 1]
    if repeated:
        named = "; ".join(
            ", ".join(_run_name(r) for r in runs) + f" (config hash {str(digest)[:8]})"
            for runs in repeated
            for digest in [runs[0][f"tags.{contract.Tag.CONFIG_HASH}"]]
        )
        raise ValueError(
            f"export --replicates: runs that repeat one configuration (the same config "
            f"hash) would count twice: {named}; export without --replicates to see every "
            "run, or delete the repeats"
        )
