"""The package's helper processes (a sweep's writer, its figure drawer): a command run by
this interpreter with pipes to it and this package importable, and its end awaited
without hanging on one that does not end; inside one, the channel its replies go on
and the line that records its busy time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

PHASES_ENV = "EMBSVD_PHASES"  # embsvd.pipeline.phases' file, where a helper records its time
ENDING_TIMEOUT_S = 30  # a process whose replies ended has this long to exit, then is killed


def start_process(
    command: list[str], env: Mapping[str, str] | None = None, *, text: bool = False
) -> subprocess.Popen:
    """``command`` with its stdin and stdout piped to this process, ``env`` added to this
    process's environment and the package's root first on ``PYTHONPATH`` (a checkout
    that is not installed is importable there too).

    Raises:
        OSError: the command cannot be started.
    """
    package_root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=text,
        env={**os.environ, **(env or {}), "PYTHONPATH": path},
    )


def exit_status(process: subprocess.Popen) -> int:
    """``process``'s exit status, once it ended: killed where it has not within
    ``ENDING_TIMEOUT_S`` (its replies ended: it is exiting, or stuck)."""
    try:
        return process.wait(timeout=ENDING_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


# --- inside a helper process ---------------------------------------------------------------


def replies_channel(mode: str) -> IO:
    """The helper's end of its replies: its stdout, opened in ``mode`` (``"w"``: UTF-8
    text, ``"wb"``: bytes). Whatever else is printed, by Python or by a library's C code,
    goes to stderr, so that nothing corrupts the replies. SIGINT, SIGTERM and SIGHUP are
    ignored: Ctrl-C reaches the whole process group, and the job's process handles it;
    the helper ends when its stdin closes."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    encoding = None if "b" in mode else "utf-8"
    replies = os.fdopen(os.dup(sys.stdout.fileno()), mode, encoding=encoding)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return replies


def record_busy_time(kind: str, seconds: float, **fields: object) -> None:
    """A helper's busy time as a line of ``$EMBSVD_PHASES`` (when set, and it was busy):
    ``{"kind", "pid", **fields, "phases": {"<kind>_process": seconds}}``."""
    target = os.environ.get(PHASES_ENV)
    if target and seconds:
        line = {"kind": kind, "pid": os.getpid(), **fields, "phases": {f"{kind}_process": seconds}}
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
