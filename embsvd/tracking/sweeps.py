"""A sweep's parent run: closed with the status its children earned."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
import traceback
from dataclasses import dataclass
from urllib.parse import quote

from mlflow.entities import RunStatus
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

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
    # the sweep's saved view in the MLflow UI, relative to the UI's address
    # (``#/experiments/<id>/runs?viewStateShareKey=<view>``); None where none was saved
    view_page: str | None = None

    def with_status(self, status: str) -> list[RunRecord]:
        return [c for c in self.children if c.status == status]


def finish_sweep(
    store: TrackingStore,
    parent_run_id: str,
    *,
    interrupted: bool,
    completed: bool,
    children: list[RunRecord] | None = None,
) -> SweepOutcome:
    """Close a sweep's parent run with the status its children earned.

    Pending final writes of the store are written first (a child whose last write met a
    locked store gets its status back). Children still RUNNING (a worker that died, a job
    cut off by Ctrl-C) are closed as KILLED, so no run is left RUNNING. The parent is
    KILLED when the sweep was interrupted or any child was killed, FAILED when any child
    failed or the sweep did not complete (it raised before every job reported), else
    FINISHED. It logs ``children.csv``, the children's table as ``sweep_summary.txt`` and
    as its description (``sweep_note``) and counts, and is closed by ``close_run`` (kept
    pending when the store refuses). The experiment gets the sweep's saved view of the
    runs table (``save_sweep_view``; best effort).

    ``children``: the parent's children as the caller read them once its jobs had ended
    (``store.children``; the sweep's close reads them once for its trajectories too),
    used as they are unless a pending write was replayed or a child was still RUNNING,
    which change them: then they are read again. Reading a sweep's children loads every
    param, metric and tag of each: about 0.9 s for 100 runs with the checks.

    Raises:
        FinalWriteError: the parent's final write failed (its results are kept pending).
    """
    if recovery.replay(store.client, store.uri, recovery.report_to_stderr):
        children = None  # a replayed write may have been a child's status
    closed = close_running_children(
        store, parent_run_id, "still RUNNING when its sweep ended", children
    )
    if children is None or closed:
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
    view_page = save_sweep_view(store, parent.data.tags.get(Tag.SWEEP_ID), children)
    outcome = SweepOutcome(status, children, skipped, view_page)
    logger = RunLogger(store.client, parent_run_id, buffered=True, run_name=parent.info.run_name)
    if status == "FAILED" and "FAILED" not in statuses:
        logger.set_tags({Tag.ERROR: "the sweep stopped before its jobs reported"})
    logger.log_metrics(contract.sweep_metrics(statuses, len(skipped)))
    logger.log_text(_children_csv(children), Table.CHILDREN)
    table = format_sweep_table(children)
    logger.log_text(table + "\n", "sweep_summary.txt")
    logger.set_tags({Tag.NOTE: sweep_note(parent.info.run_name, status, table)})
    close_run(store, logger, status)
    return outcome


def sweep_note(name: str, status: str, table: str) -> str:
    """A sweep parent's description (``mlflow.note.content``, Markdown): its name and
    status, and the children's table as a code block; a table longer than a tag holds is
    cut at a line, saying so (``sweep_summary.txt`` keeps it whole)."""
    head = f"**{name}**: {status}\n\n```\n"
    tail = "\n```"
    lines = table.splitlines()
    for kept in range(len(lines), -1, -1):
        cut = (
            "" if kept == len(lines) else f"\n... {len(lines) - kept} more lines: sweep_summary.txt"
        )
        note = head + "\n".join(lines[:kept]) + cut + tail
        if len(note) <= MAX_TAG_VAL_LENGTH:
            return note
    return head + tail


def close_running_children(
    store: TrackingStore,
    parent_run_id: str,
    reason: str,
    children: list[RunRecord] | None = None,
) -> int:
    """Close the parent's children still RUNNING as KILLED, with ``reason`` as their error;
    how many. ``children``: the parent's children as read (``store.children``); ``None``:
    the RUNNING ones are looked up (a search of those alone, not of every child's data)."""
    if children is None:
        children = store.find_runs(
            f"tags.`{Tag.PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'"
        )
    running = [child for child in children if child.status == "RUNNING"]
    for child in running:
        store.client.set_tag(child.run_id, Tag.ERROR, reason)
        store.client.set_terminated(child.run_id, RunStatus.to_string(RunStatus.KILLED))
    return len(running)


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
    last/first singular value, the jackknife stability of the first axis (mean |cos|), and
    its top 5 tokens at each end as people read them (the tags hold their display text).
    Axes are numbered from 1 here, for people: axis 1 is component 0 of the tables."""
    header = [
        "run",
        "status",
        "group-mean r raw (null pct)",
        "r centered (null pct)",
        "s_last/s_first",
        "axis 1 stability",
        "axis 1 top",
        "axis 1 bottom",
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


# --- the sweep's saved view in the MLflow UI ------------------------------------------------

VIEW_PREFIX = "embsvd-"  # the saved views embsvd writes: Tag.SAVED_VIEW + VIEW_PREFIX + sweep id
VIEWS_KEPT = 20  # the most recent sweeps' views kept (the UI saves at most 40 per experiment)
RUN_NAME_WIDTH = 320  # pixels: names such as "eu_countries · centered · all_minilm_l6_v2"
# the runs table's columns (MLflow's canonical keys): what a sweep's runs are compared on
VIEW_PARAMS = ("model.name",)
VIEW_METRICS = (
    contract.S1_SHARE,
    "null/s1_share/percentile",
    "sv_1",
    "sv_2",
    "sv_3",
    "stability/axis_cos_1",
    "confound/spearman_norm",
)
VIEW_PAIR_PREFIXES = ("group_mean_corr_centered",)  # with their null percentile
VIEW_MAX_PAIRS = 3
VIEW_TAGS = (Tag.AXIS0_TOP, Tag.AXIS0_BOTTOM)


def column_key(kind: str, name: str) -> str:
    """A runs-table column as the MLflow UI names it: ``metrics.`s1_share```."""
    return f"{kind}.`{name}`"


RUN_NAME_COLUMN = column_key("attributes", "Run Name")
DATASET_COLUMN = column_key("attributes", "Dataset")


def sweep_view_state(sweep_id: str, children: list[RunRecord]) -> dict:
    """What the MLflow UI shows for the sweep's saved view, in the keys of the UI's own
    view state. The runs table: the sweep's runs (its parent and children, oldest first,
    in one open group), the run name column wide enough for embsvd's names, and columns
    for the groups (Dataset), the model, the key numbers the children logged
    (``VIEW_METRICS``, the centered group-mean r of up to ``VIEW_MAX_PAIRS`` pairs and
    their null percentiles) and the first axis' ends. The chart view (``view_charts``)
    opens on a section of the key numbers: the spectrum with its jackknife interval in
    one chart, a parallel-coordinates chart from the settings that differ to the key
    numbers, and ``s1_share``; MLflow adds a chart for every other metric below it."""
    logged = set().union(*(child.metrics for child in children)) if children else set()
    pairs = sorted(
        key
        for key in logged
        if any(contract.split_pair_metric(key, prefix) for prefix in VIEW_PAIR_PREFIXES)
    )[:VIEW_MAX_PAIRS]
    metrics = [key for key in VIEW_METRICS if key in logged]
    for pair in pairs:
        metrics += [pair, *[k for k in [contract.null_metric(pair, "percentile")] if k in logged]]
    columns = [DATASET_COLUMN]
    columns += [column_key("params", name) for name in VIEW_PARAMS]
    columns += [column_key("metrics", key) for key in metrics]
    columns += [column_key("tags", str(tag)) for tag in VIEW_TAGS]
    return {
        "searchFilter": f"tags.`{Tag.SWEEP_ID}` = '{sweep_id}'",
        "orderByKey": "attributes.start_time",
        "orderByAsc": True,
        "selectedColumns": columns,
        "columnOrder": [RUN_NAME_COLUMN, *columns],
        "columnWidths": {RUN_NAME_COLUMN: RUN_NAME_WIDTH},
        # one group of the sweep's runs, open: a view cannot open the parent's row, and
        # its children would stay folded under it
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": str(Tag.SWEEP_ID)}],
        },
        "useGroupedValuesInCharts": False,  # charts draw each run, not the group's mean
        "runsHiddenMode": "SHOW_ALL",  # every run in the charts, not the first 10
        **view_charts(children, logged, metrics),
    }


KEY_SECTION = "embsvd-key-numbers"
# settings a sweep varies, in the order a parallel-coordinates chart shows them
VARIED_PARAMS = (
    "model.name",
    "model.revision",
    "model.matrix",
    "target",
    "analysis.center",
    "analysis.normalize_rows",
    "analysis.geometry",
)
PARALLEL_METRICS = (
    contract.S1_SHARE,
    "null/s1_share/percentile",
    "sv_1",
    "stability/axis_cos_1",
    "confound/spearman_norm",
)
SPECTRUM_SERIES = ("singular_value", "interval/singular_value_lo", "interval/singular_value_hi")


def view_charts(children: list[RunRecord], logged: set[str], metrics: list[str]) -> dict:
    """The chart view's first section, ``Key numbers (embsvd)``, in the UI's chart state
    (``compareRunSections``, ``compareRunCharts``): the charts of ``logged`` metrics only."""
    shown = len(children) + 1  # every run of the sweep, its parent too
    base = {"runsCountToCompare": max(10, shown), "metricSectionId": KEY_SECTION}
    base |= {"deleted": False, "isGenerated": False}
    charts = []
    series = [key for key in SPECTRUM_SERIES if key in logged]
    if series:
        charts.append(
            {
                **base,
                "uuid": "embsvd-spectrum",
                "type": "LINE",
                "metricKey": series[0],
                "selectedMetricKeys": series,
                "lineSmoothness": 0,
                "xAxisScaleType": "linear",
                "scaleType": "linear",
                "range": {},
                "xAxisKey": "step",  # = component
                "selectedXAxisMetricKey": "",
                "yAxisKey": "metric",
                "yAxisExpressions": [],
                "ignoreOutliers": False,
                "useGlobalXaxisKey": False,
                "useGlobalLineSmoothing": False,
            }
        )
    varied = [
        name for name in VARIED_PARAMS if len({child.params.get(name) for child in children}) > 1
    ] or ["target"]
    scalars = [key for key in PARALLEL_METRICS if key in logged]
    scalars += [key for key in metrics if key.startswith(VIEW_PAIR_PREFIXES)][:1]
    if scalars:
        charts.append(
            {
                **base,
                "uuid": "embsvd-parallel",
                "type": "PARALLEL",
                "selectedParams": varied,
                "selectedMetrics": scalars,
                "showAllRuns": True,
            }
        )
    if contract.S1_SHARE in logged:
        charts.append(
            {**base, "uuid": "embsvd-s1-share", "type": "BAR", "metricKey": contract.S1_SHARE}
        )
    section = {"uuid": KEY_SECTION, "name": "Key numbers (embsvd)", "display": True}
    section |= {"isReordered": False, "deleted": False, "isGenerated": False}
    # reordered: the UI keeps this section first and adds its own sections after it
    return {
        "compareRunSections": [section],
        "compareRunCharts": charts,
        "isAccordionReordered": True,
    }


def save_sweep_view(
    store: TrackingStore, sweep_id: str | None, children: list[RunRecord]
) -> str | None:
    """Save the sweep's view of the runs table (``sweep_view_state``) in its experiment,
    as the UI saves one (the experiment tag ``mlflow.sharedViewState.embsvd-<sweep id>``:
    the runs page's **Views** menu lists it as ``embsvd sweep <sweep id>``), and keep the
    ``VIEWS_KEPT`` most recent of embsvd's views. Returns the page that opens it, relative
    to the UI's address; ``None`` for a sweep without an id, or when the store refused
    (printed: a view is a convenience, the sweep's runs are written all the same)."""
    if not sweep_id or not contract.is_plain_name(sweep_id):
        return None
    view = f"{VIEW_PREFIX}{sweep_id}"
    now = int(time.time() * 1000)
    state = json.dumps(sweep_view_state(sweep_id, children))
    envelope = {"name": f"embsvd sweep {sweep_id}", "createdAt": now, "updatedAt": now}
    try:
        client, experiment = store.client, store.experiment_id
        client.set_experiment_tag(
            experiment, f"{Tag.SAVED_VIEW}{view}", json.dumps({**envelope, "state": state})
        )
        _prune_views(store)
    except Exception as error:  # noqa: BLE001 (the sweep's close goes on)
        print(
            f"could not save the sweep's view in the MLflow UI: {describe(error)}", file=sys.stderr
        )
        return None
    return f"#/experiments/{experiment}/runs?viewStateShareKey={quote(view)}"


def _prune_views(store: TrackingStore) -> None:
    """Delete embsvd's saved views beyond the ``VIEWS_KEPT`` most recent."""
    prefix = f"{Tag.SAVED_VIEW}{VIEW_PREFIX}"
    tags = store.client.get_experiment(store.experiment_id).tags
    created = {}
    for key, value in tags.items():
        if key.startswith(prefix):
            try:
                created[key] = float(json.loads(value)["createdAt"])
            except (ValueError, KeyError, TypeError):
                created[key] = 0.0  # unreadable: the oldest
    for key in sorted(created, key=created.__getitem__, reverse=True)[VIEWS_KEPT:]:
        store.client.delete_experiment_tag(store.experiment_id, key)
