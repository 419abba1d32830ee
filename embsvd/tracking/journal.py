"""How a sqlite store's database journals its writes: write-ahead (``Journal.wal``, the
default of ``tracking.sqlite_journal``) or SQLite's rollback journal; and the log folded
back into the database when a process that wrote it ends. Plain sqlite3, no mlflow."""

from __future__ import annotations

import atexit
import os
import sqlite3
from contextlib import closing, suppress
from enum import StrEnum


class Journal(StrEnum):
    """How a sqlite store's database journals its writes (``tracking.sqlite_journal``).

    ``wal``: write-ahead (as MLflow's own file-store migration leaves a database). A
    commit appends its pages to ``mlflow.db-wal`` and syncs it once; the rollback
    journal writes every page twice and syncs the journal, its folder and the database
    each time. A sweep's writer spent about 9 of its 61 ms a run on that (2026-11-30), and
    readers (``mlflow ui``) no longer block the writer. Every commit is as durable as
    before (``synchronous`` stays ``FULL``). The log is folded back into ``mlflow.db``
    when each embsvd process that wrote it ends (``checkpoint_at_exit``), so the file
    alone holds every run once the command is done. A database in WAL mode needs its
    processes on one host and a folder they can write (its ``-shm`` file): on a network
    filesystem shared by several hosts, or for a store to be read from read-only media,
    use ``delete``.

    ``delete``: SQLite's default rollback journal. Members are named as their values
    (OmegaConf matches an enum by name)."""

    wal = "wal"
    delete = "delete"


def set_journal(uri: str, journal: Journal | str | None) -> str | None:
    """Put a sqlite store's database in ``journal`` mode (``None``: leave it); the mode it
    is in then, or ``None`` for a store that is not a sqlite file. A database that
    another process is using at that moment keeps its mode (SQLite changes it only with
    the database to itself; a later command's open changes it). A database in WAL mode is
    checkpointed when this process exits (``checkpoint_at_exit``)."""
    path = uri.removeprefix("sqlite:///")
    if path == uri or "?" in path:  # not a sqlite file, or one opened with URI options
        return None
    try:
        with closing(sqlite3.connect(path, timeout=1.0)) as database:
            mode = database.execute("PRAGMA journal_mode").fetchone()[0]
            wanted = Journal(journal).value if journal is not None else mode
            if mode != wanted:
                with suppress(sqlite3.OperationalError):  # in use: it keeps its mode
                    mode = database.execute(f"PRAGMA journal_mode={wanted}").fetchone()[0]
    except sqlite3.Error:  # not a database: MLflow says so when it opens it
        return None
    if mode == Journal.wal.value:
        checkpoint_at_exit(path)
    return mode


_CHECKPOINTED: set[str] = set()  # sqlite databases this process folds back at exit


def checkpoint_at_exit(path: str) -> None:
    """Fold the write-ahead log of the database at ``path`` back into it when this
    process exits (normally: a process that was killed leaves its committed writes in
    the log, where the next process to open the database finds them)."""
    if not _CHECKPOINTED:
        atexit.register(checkpoint_all)
    _CHECKPOINTED.add(os.path.abspath(path))


def checkpoint_all() -> None:
    """``checkpoint`` every database ``checkpoint_at_exit`` was given."""
    for path in sorted(_CHECKPOINTED):
        checkpoint(path)


def checkpoint(path: str) -> bool:
    """Copy every page of a WAL database's log into the database and empty the log
    (``PRAGMA wal_checkpoint(TRUNCATE)``); whether it all went in (not where another
    process was reading or writing it for more than a few seconds: the log keeps the
    rest, as durable, for a later checkpoint)."""
    try:
        with closing(sqlite3.connect(path, timeout=5.0)) as database:
            busy, _, _ = database.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.Error:
        return False
    return busy == 0
