"""Writing one run: batched tags, metrics and artifacts, and the status it earned."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri
from mlflow.utils.validation import (
    MAX_DATASET_SOURCE_SIZE,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from embsvd.checks.run import ChecksResult
from embsvd.groups import TokenGroup
from embsvd.io.memo import ValueMemo
from embsvd.method.analysis import AnalysisResult
from embsvd.tracking import artifacts, contract, recovery
from embsvd.tracking.contract import Tag
from embsvd.tracking.store import TrackingStore

if TYPE_CHECKING:
    from embsvd.tracking.writer import RunWriter


class RunLogger:
    """Writes one run within MLflow's batch limits.

    A buffered logger (``tracked_run``'s) keeps tags, metrics and artifacts until
    :meth:`flush`, which the run's end calls whatever the outcome: a run then costs a few
    requests to the store, not one per call. Params are written at once, so a run that
    fails early still shows its configuration.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        buffered: bool = False,
        run_name: str = "",
        artifact_uri: str | None = None,
    ):
        self.client = client
        self.run_id = run_id
        self.run_name = run_name
        self.buffered = buffered
        self.artifact_uri = artifact_uri  # the run's, where known: no lookup to upload
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
        for chunk in recovery.chunks(param_items(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Sequence[tuple[str, float, int]]) -> None:
        """``(key, value, step)`` triples; :meth:`flush` writes the contract's key numbers
        first."""
        now = int(time.time() * 1000)
        self._metrics += [Metric(key, float(value), now, step) for key, value, step in metrics]
        if not self.buffered:
            self.flush()

    def log_inputs(self, datasets: Sequence[DatasetInput]) -> None:
        """Dataset inputs (the UI's Dataset column), written at once as params are.

        The parallel jobs of a sweep log the same groups at the same moment. MLflow's
        database store looks a dataset up, then inserts it when missing, so on a store
        with concurrent writers (PostgreSQL) two jobs may both insert it and the second
        is refused (``dataset_pk``); sqlite's one write lock hides the race. The refused
        job tries again: by then the other job's dataset is there and is reused."""
        for attempt in range(DATASET_ATTEMPTS):
            try:
                self.client.log_inputs(self.run_id, datasets=list(datasets))
                return
            except MlflowException as error:
                if attempt == DATASET_ATTEMPTS - 1 or not lost_insert_race(error):
                    raise

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

    def staged_folder(self, artifact_path: str = "") -> Path:
        """A buffered logger's folder for the artifacts under ``artifact_path``, to write
        them in place (uploaded by :meth:`flush` as ``log_folder``'s copies are)."""
        if not self.buffered:
            raise ValueError("staged_folder: the logger is not buffered; use log_folder")
        folder = self._staged(artifact_path)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _staged(self, relative: str) -> Path:
        if self._staging is None:
            self._staging = Path(tempfile.mkdtemp(prefix="embsvd-artifacts-"))
        return self._staging / relative

    @property
    def known_run_id(self) -> str | None:
        """The run's id, or ``None`` while another process opens it (``WriterRun``)."""
        return self.run_id

    @property
    def unwritten(self) -> tuple[list[RunTag], list[Metric], Path | None]:
        """What :meth:`flush` has not written yet: tags, metrics and the staged artifacts."""
        return list(self._tags.values()), list(self._metrics), self._staging

    def flush(self) -> None:
        """Write what is buffered: tags and metrics in as few batches as the limits allow
        (at most 100 tags and 1000 items a batch), artifacts in one upload. What a failed
        write did not store stays buffered (``unwritten``). The contract's key numbers go
        first (``contract.key_metric_rank``): MLflow lists a run's metrics in the order
        they were written, and its compare page plots the first."""
        tags, metrics, staging = self.unwritten
        metrics.sort(key=lambda m: contract.key_metric_rank(m.key))  # stable
        recovery.write_batches(self.client, self.run_id, tags, metrics)
        self._tags, self._metrics = {}, []
        if staging is not None:
            upload_folder(self.client, self.run_id, staging, self.artifact_uri)
            self.discard_staging()

    def hand_over(self) -> None:
        """Forget what is buffered without writing it: another writer took it
        (``embsvd.tracking.writer``), staged artifacts included."""
        self._tags, self._metrics, self._staging = {}, [], None

    def take_over(
        self, tags: Sequence[RunTag], metrics: Sequence[Metric], staging: Path | None
    ) -> None:
        """Buffer what another logger handed over, for :meth:`flush`."""
        self._tags.update({t.key: t for t in tags})
        self._metrics += list(metrics)
        self._staging = staging

    def discard_staging(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def start_run(
    store: TrackingStore, run_name: str, tags: Mapping[str, Any], buffered: bool = False
) -> RunLogger:
    """Create a RUNNING run (a child when ``tags`` has ``mlflow.parentRunId``), tagged with
    the process that writes it (``recovery.process_tags``: what ``embsvd runs
    reconcile`` checks when the run is left RUNNING)."""
    tags = {**recovery.process_tags(), **tags}
    run_id, artifact_uri = create_run(store.client, store.experiment_id, run_name, tags)
    return RunLogger(store.client, run_id, buffered, run_name, artifact_uri)


def create_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: Mapping[str, Any],
    start_time: int | None = None,
) -> tuple[str, str]:
    """A RUNNING run's id and artifact URI (``start_time`` in ms since the epoch; now when
    ``None``)."""
    tags = {str(k): str(v) for k, v in tags.items()}
    run = client.create_run(experiment_id, start_time=start_time, tags=tags, run_name=run_name)
    return run.info.run_id, run.info.artifact_uri


def upload_folder(
    client: MlflowClient, run_id: str, folder: Path, artifact_uri: str | None = None
) -> None:
    """The files of ``folder`` as the run's artifacts. With the run's ``artifact_uri``
    (``create_run``'s) they go straight to its artifact repository, as
    ``client.log_artifacts`` sends them once it has read the run from the store for that
    URI: that read of a whole run (its params, tags and latest metrics) was 6 of the 8 ms
    an upload took on a sqlite store (2026-11-30)."""
    if artifact_uri is None:
        client.log_artifacts(run_id, str(folder))
        return
    uri = add_databricks_profile_info_to_artifact_uri(artifact_uri, client.tracking_uri)
    get_artifact_repository(uri, tracking_uri=client.tracking_uri).log_artifacts(str(folder))


def param_items(params: Mapping[str, Any]) -> list[Param]:
    """``params`` as MLflow's entities, each value cut to MLflow's limit."""
    return [Param(k, str(v)[:MAX_PARAM_VAL_LENGTH]) for k, v in params.items()]


@contextmanager
def tracked_run(
    store: TrackingStore,
    run_name: str,
    tags: Mapping[str, Any],
    redact: Callable[[str], str] = str,
    writer: RunWriter | None = None,
) -> Iterator[RunLogger]:
    """Open a run and close it with the status it earned.

    FINISHED when the block completes; FAILED on an exception, with the message in the
    tag ``embsvd.error`` and the traceback as the artifact ``error.txt``; KILLED on
    Ctrl-C (``KeyboardInterrupt``), ``SystemExit`` or a termination signal the caller
    turned into one, with the exception in ``embsvd.error``. What the block logged is
    written in every case (the logger is buffered), or kept pending when the store
    refuses it (``close_run``); the exception propagates. ``redact`` is applied to the
    error and the traceback before they are stored (an exception may quote a URI with
    its password).

    With a ``writer`` (``embsvd.tracking.writer``: a sweep's jobs in one process), the
    writer opens the run and takes its params, and a FINISHED run's final write is handed
    to it and done while the caller goes on; a failed or killed run waits for the
    writer's earlier requests, then closes in place.
    """
    if writer is not None:
        logger = writer.open(store, run_name, tags)
    else:
        logger = start_run(store, run_name, tags, buffered=True)
    try:
        yield logger
    except Exception as error:
        logger.set_tags({Tag.ERROR: redact(describe(error))})
        logger.log_text(redact(traceback.format_exc()), "error.txt")
        _close_after(store, logger, RunStatus.FAILED, writer)
        raise
    except BaseException as error:
        logger.set_tags({Tag.ERROR: redact(describe(error))})
        _close_after(store, logger, RunStatus.KILLED, writer)
        raise
    finished = RunStatus.to_string(RunStatus.FINISHED)
    if writer is not None:
        writer.submit(store.uri, logger, finished)
    else:
        close_run(store, logger, finished)


def describe(error: BaseException) -> str:
    """``<ExceptionType>: <message>``, or the type alone when it has no message."""
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _close_after(
    store: TrackingStore, logger: RunLogger, status: int, writer: RunWriter | None = None
) -> None:
    """Close a run whose block raised, after the ``writer``'s earlier runs: the block's
    exception is what the caller sees, so a close that could not write (printed and kept
    pending by ``close_run``) does not replace it."""
    with suppress(FinalWriteError), deferred_signals():
        if writer is not None:
            writer.drain()
            try:
                logger.run_id  # noqa: B018 (the writer opened it, or said why not)
            except RuntimeError as error:  # writer.OpenFailedError: printed
                logger.discard_staging()
                print(f"run {logger.run_name} not closed: {error}", file=sys.stderr, flush=True)
                return
        close_run(store, logger, RunStatus.to_string(status))


class FinalWriteError(RuntimeError):
    """A run's final write failed; its message names where its results wait."""


def close_run(store: TrackingStore, logger: RunLogger, status: str) -> None:
    """Write what ``logger`` holds and end the run with ``status``, with SIGINT, SIGTERM
    and SIGHUP held until it is done (``deferred_signals``): a signal does not cut the
    last writes in half.

    When a write fails, what the run logged and ``status`` are kept pending
    (``recovery.keep``) for the next command that opens the store, the error is printed
    naming that folder, and ``FinalWriteError`` is raised. The run is marked FAILED with the
    reason at once when only its artifacts failed (the database still takes writes); it
    stays RUNNING until the replay when the database refused.

    Raises:
        FinalWriteError: the final write failed (chained from the store's error).
    """
    with deferred_signals():
        tags, metrics, staging = logger.unwritten
        try:
            logger.flush()
            store.client.set_terminated(logger.run_id, status)
            return
        except Exception as error:
            failure = error
        # tags and metrics written but the staged artifacts not: only the artifact store
        # refused, and the database takes the reason now; else the database refused
        left_tags, left_metrics, left_staging = logger.unwritten
        database_failed = bool(left_tags or left_metrics) or left_staging is None
        reason = describe(failure)
        try:
            folder = recovery.keep(
                store.uri, logger.run_id, logger.run_name, status, tags, metrics, staging, reason
            )
            kept, where = True, f"kept in {folder}"
        except OSError as keep_error:
            kept, where = False, f"could not be kept either: {keep_error}"
        finally:
            logger.discard_staging()
        earlier = {t.key: t.value for t in tags}.get(Tag.ERROR)
        note = f"final write failed ({reason}); the run's results {where}"
        if not database_failed:  # the database takes writes: say why at once
            _mark_failed(store, logger.run_id, f"{earlier}; {note}" if earlier else note)
        message = (
            f"run {logger.run_id} ({logger.run_name}): its final write to "
            f"{recovery.display_uri(store.uri)} failed: {reason}. "
            + (
                f"Its results and its status {status} are kept in {folder}: the next command "
                f"that opens this store writes them, or `{recovery.RECONCILE_HINT}`."
                if kept
                else f"Its results {where}; they are lost."
            )
        )
        print(message, file=sys.stderr, flush=True)
        raise FinalWriteError(message) from failure


def _mark_failed(store: TrackingStore, run_id: str, error: str) -> None:
    """FAILED with ``error``, best effort: the pending record keeps the rest."""
    try:
        store.client.set_tag(run_id, Tag.ERROR, error[:MAX_TAG_VAL_LENGTH])
        store.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    except Exception as error_again:  # the record names the run's status for the replay
        print(f"run {run_id}: could not mark it FAILED: {error_again}", file=sys.stderr)


class Terminated(SystemExit):
    """A termination signal as an exception: the run it cuts off ends KILLED with the
    signal's name in ``embsvd.error``, and the process exits with 128 + the signal's
    number, as a shell reports a process the signal ended."""

    def __init__(self, signum: int):
        self.signal = signal.Signals(signum)
        super().__init__(128 + signum)

    def __str__(self) -> str:
        return self.signal.name


TERMINATING_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextmanager
def signals_end_runs() -> Iterator[None]:
    """Turn SIGTERM (``kill``, ``timeout``, ``scancel``) and SIGHUP (the terminal closed)
    into ``Terminated`` while the block runs, so that a ``tracked_run`` inside it ends
    KILLED instead of being left RUNNING by a process that just vanished.

    A signal that already has a handler (a sweep's ``SweepTracking``) or is ignored
    (``nohup``) is left as it is; so is a block outside the main thread. submitit's
    handler on a SLURM node only logs SIGTERM ("Bypassing signal SIGTERM": it waits for
    SIGUSR2 to requeue), and SLURM follows a SIGTERM with SIGKILL, so a job under it
    would vanish with its run left RUNNING: that handler is replaced too. When the
    exception was swallowed where it was raised (inside a ``__del__`` or a weakref
    callback Python prints it and goes on), it is raised again when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def terminate(signum: int, frame: Any) -> None:
        received.append(signum)
        raise Terminated(signum)

    previous = {
        signum: signal.signal(signum, terminate)
        for signum in TERMINATING_SIGNALS
        if signal.getsignal(signum) is signal.SIG_DFL or only_logs(signal.getsignal(signum))
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        raise Terminated(received[0])


def only_logs(handler: Any) -> bool:
    """Whether ``handler`` is submitit's, which logs a signal and does nothing else."""
    function = getattr(handler, "__func__", handler)
    return getattr(function, "__module__", "").startswith("submitit.") and (
        getattr(function, "__name__", "") == "bypass"
    )


# SIGINT is Ctrl-C; SIGTERM what kill, timeout and scancel send; SIGHUP a closed terminal
HELD_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while the block runs, then deliver them to the
    handlers they would have met: closing a run (or a sweep's parent) is a few writes
    that a signal must not cut in half. Only the main thread sets signal handlers; in
    another, and for a signal whose handler Python did not install, the block runs as
    it is. SIGKILL cannot be held: ``embsvd runs reconcile`` closes what it leaves."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = {}
    for signum in HELD_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None:
            previous[signum] = signal.signal(signum, lambda s, frame: noted.append(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)  # runs its handler here, which may raise


DATASET_ATTEMPTS = 3  # a race lost twice in a row needs a third job inserting the same row


def lost_insert_race(error: Exception) -> bool:
    """Whether the store refused a row another writer inserted first: PostgreSQL's
    ``duplicate key value violates unique constraint``, MySQL's ``Duplicate entry``,
    sqlite's ``UNIQUE constraint failed``."""
    text = str(error)
    return any(
        sign in text
        for sign in ("violates unique constraint", "Duplicate entry", "UNIQUE constraint failed")
    )


def log_groups(run: RunLogger, groups: Mapping[str, TokenGroup], target: str) -> None:
    """``groups.json``, the ``n_tokens`` metric (size of the target group), and every group
    as a dataset input (``group_dataset``), the target first."""
    payload = {name: group.to_dict() for name, group in groups.items()}
    run.log_text(indented_json(payload), "groups.json")
    run.log_metrics([(contract.N_TOKENS, len(groups[target].kept), 0)])
    ordered = [groups[target], *(g for name, g in groups.items() if name != target)]
    run.log_inputs([group_dataset(group, group.name == target) for group in ordered])


JSON_TEXTS_KEPT = 8  # texts remembered by ``indented_json``
_JSON_TEXTS = ValueMemo(JSON_TEXTS_KEPT)


def indented_json(payload: Any) -> str:
    """``json.dumps(payload, indent=2, ensure_ascii=False)``, remembered by ``repr(payload)``
    (which tells ``1``, ``1.0`` and ``True`` apart, as the text does): with an indent,
    json encodes in Python, 2.2 ms a run for the ten groups of the benchmark's sweep,
    whose runs all log the same (2026-11-30)."""
    return _JSON_TEXTS.get(repr(payload), lambda: json.dumps(payload, indent=2, ensure_ascii=False))


TARGET_CONTEXT, GROUP_CONTEXT = "target", "group"  # a group input's mlflow.data.context
GROUP_SOURCE_TYPE = "embsvd_group"
# the columns of a group's kept tokens (groups.json), in MLflow's schema format
GROUP_SCHEMA = [
    {"type": "string", "name": "word", "required": True},
    {"type": "string", "name": "token", "required": True},
    {"type": "long", "name": "token_id", "required": True},
    {"type": "string", "name": "form", "required": True},
]


def group_dataset(group: TokenGroup, is_target: bool) -> DatasetInput:
    """A token group as an MLflow dataset input: named by the group, its digest a hash of
    its kept words and their token ids (the same words on another tokenizer, or another
    choice of words, make another digest), its profile the counts and its source the kept
    and dropped words (their counts, for a group too large for MLflow's source field: the
    words are in ``groups.json``); the input's ``mlflow.data.context`` is ``target`` or
    ``group``."""
    kept = [[k.word, k.token_id] for k in group.kept]
    digest = hashlib.sha256(json.dumps([group.name, kept]).encode()).hexdigest()[:8]
    words = {"kept": [k.word for k in group.kept], "dropped": [d.word for d in group.dropped]}
    source = json.dumps({"group": group.name, **words}, ensure_ascii=False)
    if len(source.encode()) > MAX_DATASET_SOURCE_SIZE:
        counts = {key: len(value) for key, value in words.items()}
        source = json.dumps({"group": group.name, **counts, "words": "groups.json"})
    profile = {"num_rows": len(group.kept), "words": len(group.words)}
    profile |= {"dropped": len(group.dropped), "held_out": len(group.held_out)}
    dataset = Dataset(
        name=group.name,
        digest=digest,
        source_type=GROUP_SOURCE_TYPE,
        source=source,
        schema=json.dumps({"mlflow_colspec": GROUP_SCHEMA}),
        profile=json.dumps(profile),
    )
    context = TARGET_CONTEXT if is_target else GROUP_CONTEXT
    return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)])


def log_result(run: RunLogger, result: AnalysisResult, checks: ChecksResult) -> None:
    """The contract's metrics, tags and CSV tables of one analysis and its checks."""
    run.log_metrics(
        contract.result_metrics(result) + contract.checks_metrics(checks, result.target)
    )
    tags = contract.result_tags(result, checks)
    run.set_tags(tags)
    earlier = {tag.key: tag.value for tag in run.unwritten[0]}  # the warnings set before
    note = contract.run_note(run.run_name, result, checks, {**earlier, **tags})
    run.set_tags({Tag.NOTE: note})
    if run.buffered:  # written where the run's artifacts wait: no copy
        artifacts.write_tables(result, checks, run.staged_folder())
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        artifacts.write_tables(result, checks, folder)
        run.log_folder(folder)
