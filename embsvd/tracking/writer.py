"""A sweep's writes in a process of their own: while the store takes one run's results,
the next job computes.

A run's writes (its creation and params, then its tags, metrics and artifacts and its
status: ``close_run``) cost about as much as its analysis and checks, and they are mostly
Python (SQLAlchemy's ORM under MLflow's store), so a thread would wait for the
interpreter's lock; a process runs beside the next job on another core. The writer opens
the runs too (``RunWriter.open``), so that in a sweep one process writes the store: on
sqlite, where one writer holds the database's lock at a time, a job that opened its own
run while the writer wrote the last one's results would wait for the lock (and sqlite's
busy handler sleeps in steps of milliseconds). The job asks for its run's id only when
it needs it, at its end, by when the writer has long opened it. The writer runs
``close_run`` itself, so a write that fails is kept pending and reported exactly as a
run closed in place.

What it promises:

- *order and a bound*: runs are written in the order they were handed over, and at
  most ``MAX_IN_FLIGHT`` wait at a time (a faster job waits for the writer);
- *nothing unwritten at the end*: ``drain`` returns once every run handed over is
  written; a sweep drains before its parent closes, before a failed job closes its
  own run, and at interpreter exit (``atexit``);
- *signals*: the writer ignores SIGINT, SIGTERM and SIGHUP (Ctrl-C reaches the whole
  process group; the job's process handles it and drains), and writes what it was
  given when the job's process is gone, even after SIGKILL: its stdin closes;
- *no silent loss*: when the writer itself dies, the job's process writes the runs it
  had not confirmed.

The protocol is JSON lines: a request per line on the writer's stdin (``open`` a run,
write its ``params``, ``close`` it with its final write), ``{"token", "run_id", "error"}``
per request on its stdout, in order; its stderr is the job's (a failed write prints there
as ``close_run`` prints it).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, RunTag
from mlflow.tracking import MlflowClient

from embsvd.io.processes import exit_status, record_busy_time, replies_channel, start_process
from embsvd.tracking import recovery
from embsvd.tracking.contract import Tag
from embsvd.tracking.journal import checkpoint_all, set_journal
from embsvd.tracking.runs import (
    FinalWriteError,
    RunLogger,
    close_run,
    create_run,
    describe,
    param_items,
)

if TYPE_CHECKING:
    from embsvd.tracking.store import TrackingStore

MAX_IN_FLIGHT = 2  # runs handed over for their final write and not yet written


class _Store:
    """What ``close_run`` needs of a store: its URI and a client."""

    def __init__(self, uri: str):
        self.uri = uri
        set_journal(uri, None)  # a WAL database: folded back when the writer exits
        self.client = MlflowClient(tracking_uri=uri)
        self.artifact_uris: dict[str, str] = {}  # of each run opened here, by its id


def payload(store_uri: str, logger: RunLogger, status: str) -> dict[str, Any]:
    """A run's final write as plain data, taken from ``logger`` (which is left empty:
    the staged artifacts now belong to whoever writes the payload). A run the writer
    could not open raises (``OpenFailedError``) before anything is taken."""
    run_id = logger.run_id
    tags, metrics, staging = logger.unwritten
    logger.hand_over()
    return {
        "op": "close",
        "uri": store_uri,
        "run_id": run_id,
        "run_name": logger.run_name,
        "status": status,
        "tags": [[t.key, t.value] for t in tags],
        "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
        "staging": str(staging) if staging is not None else None,
    }


def write_payload(store: _Store, item: dict[str, Any]) -> str | None:
    """``close_run`` of one payload: ``None`` when written, else why not (``close_run``
    printed it and kept the run's results pending)."""
    logger = RunLogger(
        store.client,
        item["run_id"],
        buffered=True,
        run_name=item["run_name"],
        artifact_uri=store.artifact_uris.pop(item["run_id"], None),
    )
    logger.take_over(
        [RunTag(k, v) for k, v in item["tags"]],
        [Metric(k, v, ts, step) for k, v, ts, step in item["metrics"]],
        Path(item["staging"]) if item["staging"] else None,
    )
    try:
        close_run(store, logger, item["status"])
    except FinalWriteError as error:
        return str(error)
    return None


def handle(
    store: _Store, item: dict[str, Any], opened: dict[str, str], find: bool = False
) -> tuple[str | None, str | None]:
    """Do one request: ``(the run's id, None)`` when done, ``(None, why not)`` else.
    ``opened`` maps the token of each run opened so far to its id; with ``find`` an
    ``open`` first looks for the run (a writer that died may have opened it unsaid)."""
    try:
        if item["op"] == "open":
            run_id = _opened_run(store, item) if find else None
            if run_id is None:
                run_id, artifact_uri = create_run(
                    store.client,
                    item["experiment_id"],
                    item["run_name"],
                    item["tags"],
                    start_time=item["start_time"],
                )
                store.artifact_uris[run_id] = artifact_uri
            opened[item["token"]] = run_id
            return run_id, None
        if item["op"] in ("params", "inputs"):
            run_id = opened.get(item["run"])
            if run_id is None:
                return None, f"run {item['run_name']} was not opened: its {item['op']} are lost"
            logger = RunLogger(store.client, run_id)
            if item["op"] == "params":
                logger.log_params(dict(item["params"]))
            else:
                logger.log_inputs([_dataset_input(entry) for entry in item["datasets"]])
            return run_id, None
        return item["run_id"], write_payload(store, item)
    except Exception as failure:  # noqa: BLE001 (reported to the job's process)
        error = f"run {item.get('run_id') or item['run_name']}: {describe(failure)}"
        print(error, file=sys.stderr, flush=True)
        return None, error


def _opened_run(store: _Store, item: dict[str, Any]) -> str | None:
    """The run ``item`` asked to open, if it is in the store: the same name, start time
    and job process."""
    found = store.client.search_runs(
        [item["experiment_id"]],
        f"attributes.start_time = {item['start_time']} and "
        f"tags.`{Tag.PID}` = '{item['tags'][Tag.PID]}'",
    )
    ids = [run.info.run_id for run in found if run.info.run_name == item["run_name"]]
    return ids[0] if ids else None


def _dataset_input(entry: dict[str, Any]) -> DatasetInput:
    tags = [InputTag(key, value) for key, value in entry["tags"].items()]
    return DatasetInput(Dataset.from_dictionary(entry["dataset"]), tags)


class OpenFailedError(RuntimeError):
    """The store refused to open a run that a ``RunWriter`` was asked to open."""


class WriterRun(RunLogger):
    """A buffered run that a ``RunWriter`` opens: its params and dataset inputs go to the
    writer at once (a run that fails early still shows its configuration), the rest is
    buffered as ``tracked_run``'s logger buffers it, and ``run_id`` waits until the
    writer has opened the run (``OpenFailedError`` when the store refused)."""

    def __init__(self, writer: RunWriter, token: str, store: TrackingStore, run_name: str):
        self._writer, self._token, self._uri = writer, token, store.uri
        super().__init__(store.client, None, buffered=True, run_name=run_name)

    @property
    def run_id(self) -> str:
        return self._writer.run_id_of(self._token)

    @run_id.setter
    def run_id(self, value: str | None) -> None:
        if value is not None:
            raise AttributeError("the writer process opens this run and names it")

    @property
    def known_run_id(self) -> str | None:
        """The run's id if the writer has said it, without waiting."""
        return self._writer.known_run_ids.get(self._token)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._send("params", params=[[p.key, p.value] for p in param_items(params)])

    def log_inputs(self, datasets: Sequence[DatasetInput]) -> None:
        entries = [
            {"dataset": d.dataset.to_dictionary(), "tags": {t.key: t.value for t in d.tags}}
            for d in datasets
        ]
        self._send("inputs", datasets=entries)

    def _send(self, op: str, **fields: Any) -> None:
        request = {"op": op, "uri": self._uri, "run": self._token, "run_name": self.run_name}
        self._writer.send({**request, **fields})


class RunWriter:
    """The job process's end of the writer: opens runs and hands their writes over, in
    order; collects what was written.

    The writer process starts on the first request (again after it ended).
    """

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT, command: list[str] | None = None):
        self.max_in_flight = max_in_flight
        # the writer's command line: this module, run by this interpreter
        self.command = command or [sys.executable, "-m", "embsvd.tracking.writer"]
        self._process: subprocess.Popen | None = None
        self._stores: dict[str, _Store] = {}
        self._in_flight: dict[str, dict[str, Any]] = {}  # token -> request, oldest first
        self._tokens = itertools.count()
        self.known_run_ids: dict[str, str] = {}  # token of each run opened -> its id
        self._open_errors: dict[str, str] = {}  # token of a run the store refused -> why
        self.failures: list[str] = []  # why a run's params or final write failed

    def open(self, store: TrackingStore, run_name: str, tags: Mapping[str, Any]) -> WriterRun:
        """Have the writer open a RUNNING run, tagged as ``runs.start_run`` tags it (with
        this process, which writes it: the writer writes what it was given) and started
        now; return its logger at once."""
        tags = {**recovery.process_tags(), **tags}
        token = self.send(
            {
                "op": "open",
                "uri": store.uri,
                "experiment_id": store.experiment_id,
                "run_name": run_name,
                "tags": {str(k): str(v) for k, v in tags.items()},
                "start_time": int(time.time() * 1000),
            }
        )
        return WriterRun(self, token, store, run_name)

    def run_id_of(self, token: str) -> str:
        """The id of the run opened as ``token``, once the writer has opened it.

        Raises:
            OpenFailedError: the store refused to open it.
        """
        while token not in self.known_run_ids and token not in self._open_errors:
            self._collect()
        if token in self._open_errors:
            raise OpenFailedError(self._open_errors[token])
        return self.known_run_ids[token]

    def submit(self, store_uri: str, logger: RunLogger, status: str) -> None:
        """Hand the run over for ``close_run(store, logger, status)``; waits while
        ``max_in_flight`` runs are unwritten, and until the writer has opened it."""
        item = payload(store_uri, logger, status)
        while self._closes_in_flight() >= self.max_in_flight:
            self._collect()
        self.send(item)

    def send(self, item: dict[str, Any]) -> str:
        """Hand ``item`` (a request) to the writer; its token."""
        token = item["token"] = str(next(self._tokens))
        process = self._started()
        if process is None:  # no writer: write it here
            self._write_here(item)
            return token
        self._in_flight[token] = item
        try:
            process.stdin.write(json.dumps(item) + "\n")
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._writer_died()
        return token

    def _closes_in_flight(self) -> int:
        return sum(item["op"] == "close" for item in self._in_flight.values())

    def start(self) -> None:
        """Start the writer process now (it imports MLflow, about a second and a half),
        so that it is ready when the first run is handed over."""
        self._started()

    def drain(self) -> list[str]:
        """Wait until every request handed over is done; every failure so far (each
        printed already, a final write's results kept pending)."""
        while self._in_flight:
            self._collect()
        return list(self.failures)

    def close(self) -> list[str]:
        """``drain``, then end the writer process."""
        failures = self.drain()
        process, self._process = self._process, None
        if process is not None:
            process.stdin.close()
            process.wait()
        return failures

    def _started(self) -> subprocess.Popen | None:
        if self._process is not None and self._process.poll() is None:
            return self._process
        try:
            self._process = start_process(self.command, text=True)
        except OSError as error:
            print(f"no writer process ({error}): runs are written in place", file=sys.stderr)
            self._process = None
        return self._process

    def _collect(self) -> None:
        """Read one confirmation (or notice the writer's death)."""
        line = self._process.stdout.readline() if self._process is not None else ""
        if not line:
            self._writer_died()
            return
        done = json.loads(line)
        item = self._in_flight.pop(done["token"], None)
        if item is not None:
            self._settled(item, done["run_id"], done["error"])

    def _settled(self, item: dict[str, Any], run_id: str | None, error: str | None) -> None:
        if item["op"] == "open" and error is None:
            self.known_run_ids[item["token"]] = run_id
        elif item["op"] == "open":
            self._open_errors[item["token"]] = error
        elif error:
            self.failures.append(error)

    def _writer_died(self) -> None:
        """The writer is gone: do here what it had not confirmed (writing a run twice is
        harmless: its tags are overwritten, identical metrics stored once; a run it
        opened without saying so is found in the store, not opened twice)."""
        process, self._process = self._process, None
        code = exit_status(process) if process is not None else None
        left = list(self._in_flight.values())
        self._in_flight.clear()
        if left:
            print(
                f"the writer process ended (exit status {code}) with {len(left)} requests "
                "unconfirmed; writing them here",
                file=sys.stderr,
                flush=True,
            )
        for item in left:
            self._write_here(item, find=True)

    def _write_here(self, item: dict[str, Any], find: bool = False) -> None:
        store = self._stores.get(item["uri"]) or self._stores.setdefault(
            item["uri"], _Store(item["uri"])
        )
        run_id, error = handle(store, item, self.known_run_ids, find)
        self._settled(item, run_id, error)


_writer: RunWriter | None = None


def sweep_writer() -> RunWriter:
    """This process's writer, started on first use and drained and closed at exit."""
    global _writer
    if _writer is None:
        _writer = RunWriter()
        atexit.register(close_writer)
    return _writer


def drain_writes() -> list[str]:
    """Wait for this process's writer, if it has one: every failure of its writes."""
    return _writer.drain() if _writer is not None else []


def close_writer() -> list[str]:
    global _writer
    writer, _writer = _writer, None
    return writer.close() if writer is not None else []


# --- the writer process --------------------------------------------------------------------


def serve(requests: IO[str], replies: IO[str]) -> None:
    """Do each request read from ``requests`` and confirm it on ``replies``, until
    ``requests`` ends (the job's process closed it, or is gone)."""
    stores: dict[str, _Store] = {}
    opened: dict[str, str] = {}
    seconds = 0.0
    for line in requests:
        item = json.loads(line)
        started = time.perf_counter()
        try:
            store = stores.get(item["uri"]) or stores.setdefault(item["uri"], _Store(item["uri"]))
            run_id, error = handle(store, item, opened)
        except Exception as failure:  # noqa: BLE001 (reported to the job's process)
            run_id, error = None, f"run {item.get('run_name')}: {describe(failure)}"
            print(error, file=sys.stderr, flush=True)
        seconds += time.perf_counter() - started
        reply = {"token": item["token"], "run_id": run_id, "error": error}
        try:
            replies.write(json.dumps(reply) + "\n")
            replies.flush()
        except (BrokenPipeError, OSError):
            pass  # the job's process is gone: go on writing what it handed over
    record_busy_time("writer", seconds)


def _main() -> None:
    replies = replies_channel("w")
    serve(sys.stdin, replies)
    # every request is written and confirmed: skip the interpreter's teardown of MLflow's
    # and SQLAlchemy's modules (0.4 s), which the job's process waits for at its exit
    replies.close()
    checkpoint_all()  # what it wrote into a WAL database's file: atexit is skipped below
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _main()
