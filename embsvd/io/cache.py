"""Files kept between runs (GGUF conversions, the global SVD, whitening), written
atomically, checked before use, and computed once per cache even when several processes
(a cluster's jobs, on several nodes) ask at the same moment (``exclusive``).

Every entry ``<file>`` has a checksum record ``<file>.checksum`` beside it (its size, the
SHA-256 of its first MiB and of all of it), written before the entry is renamed into
place, so a reader never sees a new entry without its record. Opening an entry checks
the size and the first MiB every time (a millisecond), and the whole file the first time
this process uses it (and again whenever the file changes on disk), so a truncated,
edited or bit-flipped entry is rebuilt, with a warning naming it, instead of analysed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".checksum"
HEAD_BYTES = 1 << 20  # what every open hashes: the .npy header and the first rows
READ_BYTES = 1 << 24

LOCK_SUFFIX = ".lock"
LOCK_POLL_S = 0.2
LOCK_TIMEOUT_S = 3600.0  # a conversion of a 256k-token vocabulary takes minutes, not hours


def lock_file(entry: Path) -> Path:
    """The lock of ``entry``: ``<entry>.lock`` beside it."""
    return entry.with_name(entry.name + LOCK_SUFFIX)


@contextmanager
def exclusive(
    entry: Path,
    doing: str,
    timeout_s: float = LOCK_TIMEOUT_S,
    report: Callable[[str], None] = log.info,
) -> Iterator[bool]:
    """Hold ``<entry>.lock`` while the block runs, so that one process computes ``entry``
    and the others wait for it, then read what it wrote. Yields whether this process had
    to wait (then the entry is likely there: check it again before computing).

    The lock is ``flock`` on the lock file: per open file, so two holders in one process
    exclude each other too (POSIX ``lockf`` locks do not, and closing any descriptor of
    the file drops them). On NFS, Linux clients carry ``flock`` to the server as a byte-
    range lock (NLM or NFSv4), so jobs on several nodes exclude each other. The kernel or
    the NFS server releases it when its holder exits, however it ends, so a crashed
    computation leaves nothing to clean up; the lock file itself stays (tiny, and removing
    it would let two processes lock two different files). The holder writes its pid and
    host into it, for the message of a process that waits.

    Raises:
        TimeoutError: the lock was not free within ``timeout_s``; naming what is being
            done, the lock and the process that holds it.
    """
    lock = lock_file(entry)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        started = time.monotonic()
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _lock_holder(handle)
                if not waited:
                    report(f"waiting for {holder}, which is {doing}")
                    waited = True
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(
                        f"waited {timeout_s:.0f} s for {holder}, which is {doing}; it still "
                        f"holds the lock {lock}. If it is still working (a large vocabulary "
                        "takes minutes), run again later; if it hangs, end it: its lock is "
                        "released when it exits"
                    ) from None
                time.sleep(LOCK_POLL_S)
        try:
            if waited:
                report(f"waited {time.monotonic() - started:.1f} s for {holder}")
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} on {socket.gethostname()}")
            handle.flush()
            yield waited
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_holder(handle: Any) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process"


# entry -> its stat stamp when this process last hashed it whole and found it intact
_verified: dict[str, tuple[int, ...]] = {}


def record_of(entry: Path) -> Path:
    """The checksum record of ``entry``: ``<entry>.checksum`` beside it."""
    return entry.with_name(entry.name + RECORD_SUFFIX)


@contextmanager
def replaced_atomically(target: Path, mode: str = "wb") -> Iterator[IO]:
    """A stream whose contents replace ``target`` only when the block ends without an
    error: written to a scratch file beside it and renamed into place, so a reader (or a
    parallel worker) sees the old file or the whole new one, never a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as stream:
            yield stream
        os.replace(scratch, target)
    finally:
        Path(scratch).unlink(missing_ok=True)


@contextmanager
def written_with_checksum(target: Path, mode: str = "wb") -> Iterator[IO]:
    """:func:`replaced_atomically` for a cache entry: its checksum record is written
    (atomically) before the entry is renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as stream:
            yield stream
        record = _checksum(Path(scratch))
        with replaced_atomically(record_of(target), "w") as handle:
            json.dump(record, handle)
        os.replace(scratch, target)
        _verified[str(target)] = _stamp(target)
    finally:
        Path(scratch).unlink(missing_ok=True)


def seal(entry: Path) -> None:
    """Write the checksum record of a finished file: for files written inside a scratch
    folder that is renamed into place as a whole (a GGUF entry), records and all."""
    with replaced_atomically(record_of(entry), "w") as handle:
        json.dump(_checksum(entry), handle)


def intact(entry: Path) -> bool:
    """Whether the cache entry exists and matches its checksum record.

    An absent entry is ``False`` silently; a damaged one (no record, another size, other
    bytes) is ``False`` with a warning that names it: the caller rebuilds it.
    """
    if not entry.is_file():
        return False
    problem = damage(entry)
    if problem is not None:
        log.warning("cache entry %s is damaged (%s): rebuilding it", entry, problem)
        return False
    return True


def damage(entry: Path) -> str | None:
    """What is wrong with an existing entry, or ``None`` when it matches its record: its
    size and first MiB on every call, all of its bytes once per process and file version."""
    try:
        record = json.loads(record_of(entry).read_text())
        size, head, whole = record["size"], record["head_sha256"], record["sha256"]
    except FileNotFoundError:
        # an entry an older embsvd wrote, or whose record was lost: it cannot be checked
        return f"no checksum record {record_of(entry).name}: written by an older embsvd?"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable checksum record {record_of(entry).name}: {error!r}"
    stamp = _stamp(entry)
    if stamp[0] != size:
        return f"{stamp[0]} bytes, its checksum record says {size}"
    with open(entry, "rb") as handle:
        if hashlib.sha256(handle.read(HEAD_BYTES)).hexdigest() != head:
            return "its first bytes differ from its checksum record"
    if _verified.get(str(entry)) == stamp:
        return None
    if _checksum(entry)["sha256"] != whole:
        return "its bytes differ from its checksum record"
    _verified[str(entry)] = stamp
    return None


def _checksum(file: Path) -> dict[str, int | str]:
    """``size``, ``head_sha256`` (of the first ``HEAD_BYTES``) and ``sha256``: one read."""
    whole, head, size = hashlib.sha256(), hashlib.sha256(), 0
    with open(file, "rb") as handle:
        while block := handle.read(READ_BYTES):
            if size < HEAD_BYTES:
                head.update(block[: HEAD_BYTES - size])
            whole.update(block)
            size += len(block)
    return {"size": size, "head_sha256": head.hexdigest(), "sha256": whole.hexdigest()}


def _stamp(file: Path) -> tuple[int, ...]:
    """What changes when a file is rewritten or replaced: size, mtime, inode, ctime."""
    stat = os.stat(file)
    return (stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
