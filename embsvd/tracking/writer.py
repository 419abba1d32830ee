"""A sweep's final writes in a process of their own: while one run's results go to the
store, the next job computes.

A run's final write (its tags, metrics and artifacts, then its status: ``close_run``)
costs about as much as its analysis and checks, and it is mostly Python (SQLAlchemy's
ORM under MLflow's store), so a thread would wait for the interpreter's lock; a process
runs beside the next job on another core. The writer runs ``close_run`` itself, so a
write that fails is kept pending and reported exactly as a run closed in place.

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

The protocol is JSON lines: a run per line on the writer's stdin, ``{"run_id",
"error"}`` per written run on its stdout; its stderr is the job's (a failed write prints
there as ``close_run`` prints it).
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from embsvd.io.processes import exit_status, record_busy_time, replies_channel, start_process
from embsvd.tracking.runs import FinalWriteError, RunLogger, close_run, describe

MAX_IN_FLIGHT = 2  # runs handed over and not yet written


class _Store:
    """What ``close_run`` needs of a store: its URI and a client."""

    def __init__(self, uri: str):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)


def payload(store_uri: str, logger: RunLogger, status: str) -> dict[str, Any]:
    """A run's final write as plain data, taken from ``logger`` (which is left empty:
    the staged artifacts now belong to whoever writes the payload)."""
    tags, metrics, staging = logger.unwritten
    logger.hand_over()
    return {
        "uri": store_uri,
        "run_id": logger.run_id,
        "run_name": logger.run_name,
        "status": status,
        "tags": [[t.key, t.value] for t in tags],
        "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
        "staging": str(staging) if staging is not None else None,
    }


def write_payload(store: _Store, item: dict[str, Any]) -> str | None:
    """``close_run`` of one payload: ``None`` when written, else why not (``close_run``
    printed it and kept the run's results pending)."""
    logger = RunLogger(store.client, item["run_id"], buffered=True, run_name=item["run_name"])
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


class RunWriter:
    """The job process's end of the writer: hands runs over, collects what was written.

    The writer process starts on the first ``submit`` (again after it ended).
    """

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT, command: list[str] | None = None):
        self.max_in_flight = max_in_flight
        # the writer's command line: this module, run by this interpreter
        self.command = command or [sys.executable, "-m", "embsvd.tracking.writer"]
        self._process: subprocess.Popen | None = None
        self._stores: dict[str, _Store] = {}
        self._in_flight: dict[str, dict[str, Any]] = {}  # run id -> payload, oldest first
        self.failures: list[str] = []  # why a run's final write failed

    def submit(self, store_uri: str, logger: RunLogger, status: str) -> None:
        """Hand the run over for ``close_run(store, logger, status)``; waits while
        ``max_in_flight`` runs are unwritten."""
        item = payload(store_uri, logger, status)
        while len(self._in_flight) >= self.max_in_flight:
            self._collect()
        process = self._started()
        if process is None:  # no writer: write it here
            self._write_here(item)
            return
        self._in_flight[item["run_id"]] = item
        try:
            process.stdin.write(json.dumps(item) + "\n")
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._writer_died()

    def start(self) -> None:
        """Start the writer process now (it imports MLflow, about a second and a half),
        so that it is ready when the first run is handed over."""
        self._started()

    def drain(self) -> list[str]:
        """Wait until every run handed over is written; every failure so far (each
        printed already, its results kept pending)."""
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
        self._in_flight.pop(done["run_id"], None)
        if done["error"]:
            self.failures.append(done["error"])

    def _writer_died(self) -> None:
        """The writer is gone: write what it had not confirmed here (writing a run twice
        is harmless: its tags are overwritten, identical metrics stored once)."""
        process, self._process = self._process, None
        code = exit_status(process) if process is not None else None
        left = list(self._in_flight.values())
        self._in_flight.clear()
        if left:
            print(
                f"the writer process ended (exit status {code}) with {len(left)} runs "
                "unconfirmed; writing them here",
                file=sys.stderr,
                flush=True,
            )
        for item in left:
            self._write_here(item)

    def _write_here(self, item: dict[str, Any]) -> None:
        store = self._stores.get(item["uri"]) or self._stores.setdefault(
            item["uri"], _Store(item["uri"])
        )
        error = write_payload(store, item)
        if error:
            self.failures.append(error)


_writer: RunWriter | None = None


def sweep_writer() -> RunWriter:
    """This process's writer, started on first use and drained and closed at exit."""
    global _writer
    if _writer is None:
        _writer = RunWriter()
        atexit.register(close_writer)
    return _writer


def drain_writes() -> list[str]:
    """Wait for this process's writer, if it has one: every failure of its final writes."""
    return _writer.drain() if _writer is not None else []


def close_writer() -> list[str]:
    global _writer
    writer, _writer = _writer, None
    return writer.close() if writer is not None else []


# --- the writer process --------------------------------------------------------------------


def serve(requests: IO[str], replies: IO[str]) -> None:
    """Write each run read from ``requests`` and confirm it on ``replies``, until
    ``requests`` ends (the job's process closed it, or is gone)."""
    stores: dict[str, _Store] = {}
    seconds = 0.0
    for line in requests:
        item = json.loads(line)
        started = time.perf_counter()
        try:
            store = stores.get(item["uri"]) or stores.setdefault(item["uri"], _Store(item["uri"]))
            error = write_payload(store, item)
        except Exception as failure:  # noqa: BLE001 (reported to the job's process)
            error = f"run {item['run_id']}: {describe(failure)}"
            print(error, file=sys.stderr, flush=True)
        seconds += time.perf_counter() - started
        try:
            replies.write(json.dumps({"run_id": item["run_id"], "error": error}) + "\n")
            replies.flush()
        except (BrokenPipeError, OSError):
            pass  # the job's process is gone: go on writing what it handed over
    record_busy_time("writer", seconds)


def _main() -> None:
    serve(sys.stdin, replies_channel("w"))


if __name__ == "__main__":
    _main()
