"""Writing one run: batched tags, metrics and artifacts, and the status it earned."""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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

from embsvd.checks.run import ChecksResult
from embsvd.groups import TokenGroup
from embsvd.method.analysis import AnalysisResult
from embsvd.tracking import artifacts, contract
from embsvd.tracking.contract import Tag
from embsvd.tracking.store import TrackingStore


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
        # str(k): a Tag member becomes the plain string MLflow's entities expect
        items = {str(k): RunTag(str(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()}
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
        store.experiment_id, run_name=run_name, tags={str(k): str(v) for k, v in tags.items()}
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
        logger.set_tags({Tag.ERROR: f"{type(error).__name__}: {error}"})
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
    run.log_metrics([(contract.N_TOKENS, len(groups[target].kept), 0)])


def log_result(run: RunLogger, result: AnalysisResult, checks: ChecksResult) -> None:
    """The contract's metrics, tags and CSV tables of one analysis and its checks."""
    run.log_metrics(contract.result_metrics(result) + contract.checks_metrics(checks))
    run.set_tags(contract.result_tags(result, checks))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        artifacts.write_tables(result, checks, folder)
        run.log_folder(folder)
