"""What a process leaves behind when it cannot finish a run: who wrote the run, and the
final writes the store refused.

- *The process*: every run is opened with the tags ``embsvd.host``, ``embsvd.pid`` and
  ``embsvd.process_start`` (``process_tags``), so that ``embsvd runs reconcile`` can tell
  a run whose process is gone (SIGKILL, out of memory, a lost node) from one still going,
  even after the pid was reused.
- *Pending writes*: when a run's last writes fail (the sqlite store locked past its busy
  timeout, a full disk or a read-only artifact folder, a tracking server that is down),
  what it logged and the status it earned are kept on local disk (``keep``) and written
  by the next command that opens the store (``replay``; ``TrackingStore`` calls it).
  They live in ``pending/`` beside a sqlite database, or under the cache directory
  (``<cache>/pending/<hash of the store>/``) for another store or when the database's
  folder cannot take them: one folder per failed write, ``<run id>.<time>/``, holding
  ``record.json`` (status, tags, metrics, why the write failed) and ``artifacts/``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from embsvd.io.checkpoint import default_cache_dir
from embsvd.tracking.contract import Tag

PENDING_FOLDER = "pending"
RECORD_FILE = "record.json"
ARTIFACTS_FOLDER = "artifacts"
RECONCILE_HINT = "embsvd runs reconcile"

# --- the process that writes a run ---------------------------------------------------------


def process_tags() -> dict[str, str]:
    """The tags that name this process: host, pid and, on Linux, when it started."""
    tags = {Tag.HOST: socket.gethostname(), Tag.PID: str(os.getpid())}
    start = process_start(os.getpid())
    if start is not None:
        tags[Tag.PROCESS_START] = start
    return tags


def process_start(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks>`` of process ``pid`` (Linux ``/proc``): a
    later process that got the same pid, or the same pid after a reboot, has another.
    ``None`` where ``/proc`` does not say (no such process, another system)."""
    fields = _proc_stat(pid)
    if fields is None:
        return None
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}:{fields[19]}"  # field 22 of proc(5), counted from the state (field 3)


def process_running(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` of this host runs and, when ``start`` is known, is the
    process that started then (not a later one with the pid). A zombie does not run."""
    fields = _proc_stat(pid)
    if fields is not None:
        return fields[0] != "Z" and (start is None or process_start(pid) == start)
    if Path("/proc/self/stat").exists():  # /proc works: no entry, no process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (which may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return stat[stat.rindex(")") + 2 :].split()


# --- pending writes --------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingWrite:
    """A run's final write that failed, as kept on disk."""

    folder: Path
    run_id: str
    run_name: str
    status: str  # the status the run earned
    tags: dict[str, str]
    metrics: list[tuple[str, float, int, int]]  # (key, value, timestamp, step)
    reason: str  # why the write failed

    @property
    def artifacts(self) -> Path:
        return self.folder / ARTIFACTS_FOLDER


def display_uri(uri: str) -> str:
    """The store's URI without a user name or password, for messages and records."""
    parts = urlsplit(uri)
    if not parts.username and not parts.password:
        return uri
    return urlunsplit(parts._replace(netloc=parts.hostname or ""))


def pending_roots(uri: str) -> list[Path]:
    """Where the pending writes of store ``uri`` are kept, first choice first:
    ``pending/`` beside a sqlite database, then the cache directory's folder for it."""
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        key = str(database)
        roots = [database.parent / PENDING_FOLDER]
    else:
        key, roots = uri, []
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return [*roots, default_cache_dir() / PENDING_FOLDER / digest]


def keep(
    uri: str,
    run_id: str,
    run_name: str,
    status: str,
    tags: Sequence[RunTag],
    metrics: Sequence[Metric],
    staging: Path | None,
    reason: str,
) -> Path:
    """Keep what a run could not write, and the status it earned; return the folder.

    Raises:
        OSError: no pending folder could take it (each place and its error named).
    """
    record = {
        "run_id": run_id,
        "run_name": run_name,
        "status": status,
        "store": display_uri(uri),
        "tags": {t.key: t.value for t in tags},
        "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics],
        "reason": reason,
        "kept_by": f"pid {os.getpid()} on {socket.gethostname()}",
        "kept_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    failures = []
    for root in pending_roots(uri):
        folder = root / f"{run_id}.{time.time_ns()}"
        partial = root / f".{folder.name}.partial"  # a reader never sees half a record
        try:
            partial.mkdir(parents=True)
            if staging is not None and staging.is_dir():
                shutil.copytree(staging, partial / ARTIFACTS_FOLDER)
            (partial / RECORD_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
            partial.rename(folder)
            return folder
        except OSError as error:
            failures.append(f"{root}: {error}")
            shutil.rmtree(partial, ignore_errors=True)
    raise OSError(f"no pending folder could keep run {run_id}: " + "; ".join(failures))


def pending_writes(uri: str) -> list[PendingWrite]:
    """The pending writes of store ``uri``, oldest first (unreadable records are left
    out: ``replay`` reports them)."""
    found = []
    for folder in _pending_folders(uri):
        try:
            found.append(_read(folder))
        except (OSError, ValueError, KeyError):
            continue
    return found


def replay(client: MlflowClient, uri: str, report: Callable[[str], None]) -> list[str]:
    """Write every pending write of store ``uri``: the tags, metrics and artifacts a run
    could not store, then the status it earned; remove each folder once written. Each
    outcome is passed to ``report`` and returned. A write that fails again stays for
    the next try; a process that finds another replaying leaves it to that one."""
    messages = []
    for root in pending_roots(uri):
        with _claimed(root) as claimed:
            if not claimed:
                continue
            for folder in _pending_folders(uri, [root]):
                message = _replay_one(client, folder)
                report(message)
                messages.append(message)
    return messages


def _replay_one(client: MlflowClient, folder: Path) -> str:
    try:
        pending = _read(folder)
    except (OSError, ValueError, KeyError) as error:
        return f"pending write {folder} is unreadable ({error}); left where it is"
    name = f"run {pending.run_id} ({pending.run_name})"
    try:
        _write(client, pending)
    except MlflowException as error:
        if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return f"{name}: writing its pending results from {folder} failed again: {error}"
        shutil.rmtree(folder, ignore_errors=True)
        return f"{name} no longer exists in the store; removed its pending results {folder}"
    except Exception as error:
        return (
            f"{name}: writing its pending results from {folder} failed again "
            f"({type(error).__name__}: {error}); they stay there for the next command"
        )
    shutil.rmtree(folder, ignore_errors=True)
    return (
        f"{name}: wrote the results its final write could not store ({pending.reason}) "
        f"from {folder}; the run is {pending.status}"
    )


def _write(client: MlflowClient, pending: PendingWrite) -> None:
    # the artifacts first: where they fail again (a disk still full) the run is unchanged
    if pending.artifacts.is_dir() and any(pending.artifacts.iterdir()):
        client.log_artifacts(pending.run_id, str(pending.artifacts))
    note = f"its final write failed ({pending.reason}); written later from {pending.folder}"
    tags = {**pending.tags, str(Tag.RECOVERED): note[:MAX_TAG_VAL_LENGTH]}
    write_batches(
        client,
        pending.run_id,
        [RunTag(k, v) for k, v in tags.items()],
        [Metric(k, v, ts, step) for k, v, ts, step in pending.metrics],
    )
    stored = client.get_run(pending.run_id).data.tags
    if Tag.ERROR not in pending.tags and Tag.ERROR in stored:  # the note of the failed write
        client.delete_tag(pending.run_id, Tag.ERROR)
    client.set_terminated(pending.run_id, pending.status)


def write_batches(
    client: MlflowClient, run_id: str, tags: Sequence[RunTag], metrics: Sequence[Metric]
) -> None:
    """Tags and metrics in as few requests as MLflow's limits allow (at most 100 tags and
    1000 items a request). Writing the same again is harmless: identical metrics are
    stored once, a tag is overwritten."""
    metric_chunk = MAX_METRICS_PER_BATCH - MAX_PARAMS_TAGS_PER_BATCH
    tag_chunks = list(chunks(list(tags), MAX_PARAMS_TAGS_PER_BATCH))
    metric_chunks = list(chunks(list(metrics), metric_chunk))
    for i in range(max(len(tag_chunks), len(metric_chunks))):
        client.log_batch(
            run_id,
            metrics=metric_chunks[i] if i < len(metric_chunks) else [],
            tags=tag_chunks[i] if i < len(tag_chunks) else [],
        )


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _read(folder: Path) -> PendingWrite:
    record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
    return PendingWrite(
        folder=folder,
        run_id=record["run_id"],
        run_name=record["run_name"],
        status=record["status"],
        tags=dict(record["tags"]),
        metrics=[tuple(m) for m in record["metrics"]],
        reason=record["reason"],
    )


def _pending_folders(uri: str, roots: list[Path] | None = None) -> list[Path]:
    """Pending folders, oldest write first (the name ends with the time it was kept)."""
    folders = [
        folder
        for root in (roots if roots is not None else pending_roots(uri))
        if root.is_dir()
        for folder in root.iterdir()
        if folder.is_dir() and not folder.name.startswith(".")
    ]
    return sorted(folders, key=lambda f: (f.name.rsplit(".", 1)[-1], f.name))


@contextmanager
def _claimed(root: Path) -> Iterator[bool]:
    """Hold ``root``'s replay lock, without waiting: ``False`` when another process holds
    it (it replays these writes), or when there is nothing to replay."""
    if not root.is_dir():
        yield False
        return
    try:
        handle = open(root / ".lock", "a")  # noqa: SIM115 (held across the yield)
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def report_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
