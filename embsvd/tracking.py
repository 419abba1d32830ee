"""MLflow tracking: the only module that imports mlflow. It writes the run contract.

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

A multirun adds a parent run (tag ``embsvd.role=sweep``) whose children carry
``mlflow.parentRunId``; when the sweep ends the parent gets ``children.csv`` and
``sweep_summary.txt``, the metrics ``n_children``, ``n_finished``, ``n_failed``,
``n_killed``, ``n_skipped``, and the status its children earned.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from embsvd import contract
from embsvd.analysis import AnalysisResult
from embsvd.groups import TokenGroup
from embsvd.report import format_sweep_table
from embsvd.rigor import RigorResult

DEFAULT_EXPERIMENT = "embsvd"
STORE_FOLDER = "mlruns"  # under the project root: mlflow.db and artifacts/


def resolve_tracking_uri(configured: str | None, project_root: Path) -> str:
    """The tracking URI: the config's, else ``MLFLOW_TRACKING_URI``, else the project's
    sqlite store ``<project_root>/mlruns/mlflow.db`` (whatever the working directory)."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(project_root / STORE_FOLDER / 'mlflow.db').resolve()}"


def default_artifact_root(tracking_uri: str) -> Path | None:
    """``artifacts/`` beside a sqlite database; ``None`` (the server decides) otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
    return None


class TrackingStore:
    """An MLflow tracking store and one experiment in it."""

    def __init__(self, uri: str, experiment: str, artifact_root: str | Path | None = None):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        root = Path(artifact_root) if artifact_root else default_artifact_root(uri)
        if uri.startswith("sqlite:///"):
            # sqlite creates the database file, not its folder
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.experiment_id = self._experiment_id(experiment, root)

    def _experiment_id(self, name: str, artifact_root: Path | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # MLflow's default artifact location is relative to the working directory
        location = (artifact_root / name).resolve().as_uri() if artifact_root else None
        return self.client.create_experiment(name, artifact_location=location)

    def find_runs(self, filter_string: str = "") -> list[RunRecord]:
        """Runs of the experiment that match an MLflow filter string, oldest first."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string, max_results=5000, order_by=["start_time ASC"]
        )
        return [
            RunRecord(
                run_id=r.info.run_id,
                name=r.info.run_name,
                status=r.info.status,
                tags=dict(r.data.tags),
                params=dict(r.data.params),
                metrics=dict(r.data.metrics),
            )
            for r in runs
        ]

    def children(self, parent_run_id: str) -> list[RunRecord]:
        """The runs whose ``mlflow.parentRunId`` is ``parent_run_id``, oldest first."""
        return self.find_runs(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")

    def metric_history(self, run_id: str, key: str) -> list[float]:
        """A step series, ordered by step."""
        history = self.client.get_metric_history(run_id, key)
        return [m.value for m in sorted(history, key=lambda m: m.step)]


@dataclass(frozen=True)
class RunRecord:
    """A finished or failed run as read back from the store (latest metric values)."""

    run_id: str
    name: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


class RunLogger:
    """Writes one run within MLflow's batch limits.

    A buffered logger (``tracked_run``'s) keeps tags, metrics and artifacts until
    :meth:`flush`, which the run's end calls whatever the outcome: a run then costs a few
    requests to the store, not one per call. Params are written at once, so a run that
    fails early still shows its configuration.
    """

    def __init__(self, client: MlflowClient, run_id: str, buffered: bool = False):
        self.client = client
        self.run_id = run_id
        self.buffered = buffered
        self._tags: dict[str, RunTag] = {}
        self._metrics: list[Metric] = []
        self._staging: Path | None = None  # artifacts waiting for flush()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = {k: RunTag(k, str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()}
        self._tags.update(items)
        if not self.buffered:
            self.flush()

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Sequence[tuple[str, float, int]]) -> None:
        """``(key, value, step)`` triples."""
        now = int(time.time() * 1000)
        self._metrics += [Metric(key, float(value), now, step) for key, value, step in metrics]
        if not self.buffered:
            self.flush()

    def log_folder(self, folder: Path, artifact_path: str | None = None) -> None:
        if not self.buffered:
            self.client.log_artifacts(self.run_id, str(folder), artifact_path)
            return
        shutil.copytree(folder, self._staged(artifact_path or ""), dirs_exist_ok=True)

    def log_text(self, text: str, artifact_file: str) -> None:
        if not self.buffered:
            self.client.log_text(self.run_id, text, artifact_file)
            return
        target = self._staged(artifact_file)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def _staged(self, relative: str) -> Path:
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="embsvd-artifacts-"))
        return self._staging / relative

    def flush(self) -> None:
        """Write what is buffered: tags and metrics in as few batches as the limits allow
        (at most 100 tags and 1000 items a batch), artifacts in one upload."""
        tags, metrics = list(self._tags.values()), self._metrics
        self._tags, self._metrics = {}, []
        metric_chunk = MAX_METRICS_PER_BATCH - MAX_PARAMS_TAGS_PER_BATCH
        tag_chunks = list(_chunks(tags, MAX_PARAMS_TAGS_PER_BATCH))
        metric_chunks = list(_chunks(metrics, metric_chunk))
        for tag_chunk, metric_chunk_ in itertools.zip_longest(tag_chunks, metric_chunks):
            self.client.log_batch(self.run_id, metrics=metric_chunk_ or [], tags=tag_chunk or [])
        if self._staging is not None:
            staging, self._staging = self._staging, None
            try:
                self.client.log_artifacts(self.run_id, str(staging))
            finally:
                shutil.rmtree(staging, ignore_errors=True)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def start_run(
    store: TrackingStore, run_name: str, tags: Mapping[str, Any], buffered: bool = False
) -> RunLogger:
    """Create a RUNNING run (a child when ``tags`` has ``mlflow.parentRunId``)."""
    run = store.client.create_run(
        store.experiment_id, run_name=run_name, tags={k: str(v) for k, v in tags.items()}
    )
    return RunLogger(store.client, run.info.run_id, buffered)


@contextmanager
def tracked_run(
    store: TrackingStore, run_name: str, tags: Mapping[str, Any]
) -> Iterator[RunLogger]:
    """Open a run and close it with the status it earned.

    FINISHED when the block completes; FAILED on an exception, with the message in the
    tag ``embsvd.error`` and the traceback as the artifact ``error.txt``; KILLED on
    Ctrl-C (``KeyboardInterrupt``) or ``SystemExit``. What the block logged is written
    in every case (the logger is buffered); the exception propagates.
    """
    logger = start_run(store, run_name, tags, buffered=True)
    try:
        yield logger
    except Exception as error:
        logger.set_tags({"embsvd.error": f"{type(error).__name__}: {error}"})
        logger.log_text(traceback.format_exc(), "error.txt")
        _end(store, logger, RunStatus.FAILED)
        raise
    except BaseException:
        _end(store, logger, RunStatus.KILLED)
        raise
    _end(store, logger, RunStatus.FINISHED)


def _end(store: TrackingStore, logger: RunLogger, status: int) -> None:
    try:
        logger.flush()
    except Exception:  # a run whose last writes failed is closed FAILED, not left RUNNING
        store.client.set_terminated(logger.run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    store.client.set_terminated(logger.run_id, RunStatus.to_string(status))


def log_groups(run: RunLogger, groups: Mapping[str, TokenGroup], target: str) -> None:
    """``groups.json`` and the ``n_tokens`` metric (size of the target group)."""
    payload = {name: group.to_dict() for name, group in groups.items()}
    run.log_text(json.dumps(payload, indent=2, ensure_ascii=False), "groups.json")
    run.log_metrics([("n_tokens", len(groups[target].kept), 0)])


def log_result(run: RunLogger, result: AnalysisResult, rigor: RigorResult) -> None:
    """The contract's metrics, tags and CSV tables of one analysis and its checks."""
    run.log_metrics(contract.result_metrics(result) + contract.rigor_metrics(rigor))
    run.set_tags(contract.result_tags(result, rigor))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        contract.write_tables(result, rigor, folder)
        run.log_folder(folder)


# --- sweeps: a parent run and its children ------------------------------------------------

SKIPPED_TAG_PREFIX = "embsvd.skipped."  # + job number, on the parent: the run it reuses
CHILD_COLUMNS = ["job_num", "run_id", "name", "status", "overrides", "error"]


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

    Children still RUNNING (a worker that died, a job cut off by Ctrl-C) are closed as
    KILLED first, so no run is left RUNNING. The parent is KILLED when the sweep was
    interrupted or any child was killed, FAILED when any child failed or the sweep did
    not complete (it raised before every job reported), else FINISHED.
    It logs ``children.csv``, the children's table as ``sweep_summary.txt`` and counts.
    """
    for child in store.children(parent_run_id):
        if child.status == "RUNNING":
            logger = RunLogger(store.client, child.run_id)
            logger.set_tags({"embsvd.error": "still RUNNING when its sweep ended"})
            store.client.set_terminated(child.run_id, RunStatus.to_string(RunStatus.KILLED))
    children = store.children(parent_run_id)
    parent = store.client.get_run(parent_run_id)
    skipped = {
        key.removeprefix(SKIPPED_TAG_PREFIX): value
        for key, value in parent.data.tags.items()
        if key.startswith(SKIPPED_TAG_PREFIX)
    }
    statuses = [c.status for c in children]
    if interrupted or "KILLED" in statuses:
        status = "KILLED"
    elif "FAILED" in statuses or not completed:
        status = "FAILED"
    else:
        status = "FINISHED"
    outcome = SweepOutcome(status, children, skipped)
    logger = RunLogger(store.client, parent_run_id)
    if status == "FAILED" and "FAILED" not in statuses:
        logger.set_tags({"embsvd.error": "the sweep stopped before its jobs reported"})
    logger.log_metrics(
        [
            ("n_children", len(children), 0),
            *((f"n_{s.lower()}", statuses.count(s), 0) for s in ("FINISHED", "FAILED", "KILLED")),
            ("n_skipped", len(skipped), 0),
        ]
    )
    logger.log_text(_children_csv(children), "children.csv")
    logger.log_text(format_sweep_table(children) + "\n", "sweep_summary.txt")
    store.client.set_terminated(parent_run_id, status)
    return outcome


def _children_csv(children: list[RunRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CHILD_COLUMNS)
    for child in children:
        writer.writerow(
            [
                child.tags.get("embsvd.job_num", ""),
                child.run_id,
                child.name,
                child.status,
                child.tags.get("embsvd.overrides", ""),
                child.tags.get("embsvd.error", ""),
            ]
        )
    return buffer.getvalue()
