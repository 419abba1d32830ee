"""A sweep's parent run: closed with the status its children earned."""

from __future__ import annotations

import csv
import io
import sys
import traceback
from dataclasses import dataclass

from mlflow.entities import RunStatus

from embsvd.tracking import contract, recovery
from embsvd.tracking.artifacts import COLUMNS, Table
from embsvd.tracking.contract import Tag
from embsvd.tracking.runs import RunLogger, close_run, describe
from embsvd.tracking.store import RunRecord, TrackingStore

# --- sweeps: a parent run and its children ------------------------------------------------


@dataclass(frozen=True)
class SweepOutcome:
    """How a sweep ended, as its parent run records it."""

    status: str
    children: list[RunRecord]
    skipped: dict[str, str]  # job number -> the FINISHED run with the same config

    def with_status(self, status: str) -> list[RunRecord]:
        return [c for c in self.children if c.status == status]


def finish_sweep(
    store: TrackingStore, parent_run_id: str, *, interrupted: bool, completed: bool
) -> SweepOutcome:
    """Close a sweep's parent run with the status its children earned.

    Pending final writes of the store are written first (a child whose last write met a
    locked store gets its status back). Children still RUNNING (a worker that died, a job
    cut off by Ctrl-C) are closed as KILLED, so no run is left RUNNING. The parent is
    KILLED when the sweep was interrupted or any child was killed, FAILED when any child
    failed or the sweep did not complete (it raised before every job reported), else
    FINISHED. It logs ``children.csv``, the children's table as ``sweep_summary.txt`` and
    counts, and is closed by ``close_run`` (kept pending when the store refuses).

    Raises:
        FinalWriteError: the parent's final write failed (its results are kept pending).
    """
    recovery.replay(store.client, store.uri, recovery.report_to_stderr)
    close_running_children(store, parent_run_id, "still RUNNING when its sweep ended")
    children = store.children(parent_run_id)
    parent = store.client.get_run(parent_run_id)
    skipped = {str(job): run_id for job, run_id in contract.skipped_jobs(parent.data.tags).items()}
    statuses = [c.status for c in children]
    if interrupted or "KILLED" in statuses:
        status = "KILLED"
    elif "FAILED" in statuses or not completed:
        status = "FAILED"
    else:
        status = "FINISHED"
    outcome = SweepOutcome(status, children, skipped)
    logger = RunLogger(store.client, parent_run_id, buffered=True, run_name=parent.info.run_name)
    if status == "FAILED" and "FAILED" not in statuses:
        logger.set_tags({Tag.ERROR: "the sweep stopped before its jobs reported"})
    logger.log_metrics(contract.sweep_metrics(statuses, len(skipped)))
    logger.log_text(_children_csv(children), Table.CHILDREN)
    logger.log_text(format_sweep_table(children) + "\n", "sweep_summary.txt")
    close_run(store, logger, status)
    return outcome


def close_running_children(store: TrackingStore, parent_run_id: str, reason: str) -> None:
    """Close the parent's children still RUNNING as KILLED, with ``reason`` as their error."""
    for child in store.children(parent_run_id):
        if child.status == "RUNNING":
            store.client.set_tag(child.run_id, Tag.ERROR, reason)
            store.client.set_terminated(child.run_id, RunStatus.to_string(RunStatus.KILLED))


def abandon_sweep(
    store: TrackingStore, parent_run_id: str, error: BaseException, status: str = "FAILED"
) -> None:
    """Close a sweep whose close raised (``finish_sweep`` or its table), or that stopped
    while it opened: children still RUNNING are closed KILLED, the parent ``status``
    (FAILED; KILLED for an interrupt) with ``error`` (the tag and ``error.txt``), kept
    pending where the store refuses.

    Raises:
        FinalWriteError: the parent could not be written (its results are kept pending).
    """
    try:
        close_running_children(store, parent_run_id, "still RUNNING when its sweep's close failed")
    except Exception as children_error:  # the parent is closed all the same
        print(f"could not close the sweep's running children: {children_error}", file=sys.stderr)
    logger = RunLogger(store.client, parent_run_id, buffered=True, run_name="the sweep's parent")
    logger.set_tags({Tag.ERROR: f"the sweep's close failed: {describe(error)}"})
    logger.log_text("".join(traceback.format_exception(error)), "error.txt")
    close_run(store, logger, status)


def _children_csv(children: list[RunRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS[Table.CHILDREN])
    for child in children:
        writer.writerow(
            [
                child.tags.get(Tag.JOB_NUM, ""),
                child.run_id,
                child.name,
                child.status,
                child.tags.get(Tag.OVERRIDES, ""),
                child.tags.get(Tag.ERROR, ""),
            ]
        )
    return buffer.getvalue()


# --- the sweep's summary table (sweep_summary.txt, and the console) -------------------------


def format_sweep_table(runs: list[RunRecord]) -> str:
    """One line per run: status, group-mean r of the target with each other group, raw
    and centered on the vocabulary's mean (each with its percentile in the matched null),
    last/first singular value, the jackknife stability of axis 0 (mean |cos|), and the
    first axis' top 5 tokens at each end."""
    header = [
        "run",
        "status",
        "group-mean r raw (null pct)",
        "r centered (null pct)",
        "s_last/s_first",
        "axis 0 stability",
        "axis 0 top",
        "axis 0 bottom",
    ]
    rows = [header] + [_row(run) for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) if runs else "(no runs)"


def _correlations(run: RunRecord, prefix: str) -> str:
    """``other=+0.016 (15)`` for every metric ``<prefix>/<a>__<b>`` with the target."""
    target = run.tags.get(Tag.TARGET_GROUP, "?")
    correlations = []
    for key, value in sorted(run.metrics.items()):
        if (pair := contract.split_pair_metric(key, prefix)) is not None:
            a, b = pair
            if target in (a, b):
                percentile = run.metrics.get(contract.null_metric(key, "percentile"))
                null = f" ({percentile:.0f})" if percentile is not None else ""
                correlations.append(f"{b if a == target else a}={value:+.3f}{null}")
    return " ".join(correlations) or "-"


def _row(run: RunRecord) -> list[str]:
    ratio = run.metrics.get("singular_value_last_over_first")
    stability = run.metrics.get("stability/axis0_cos")
    return [
        run.name,
        run.status,
        _correlations(run, "group_mean_corr"),
        _correlations(run, "group_mean_corr_centered"),
        f"{ratio:.2e}" if ratio is not None else "-",
        f"{stability:.2f}" if stability is not None else "-",
        run.tags.get(Tag.AXIS0_TOP, "-"),
        run.tags.get(Tag.AXIS0_BOTTOM, "-"),
    ]
