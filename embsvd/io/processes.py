"""The package's helper processes (a sweep's writer, its figure drawer): a command run by
this interpreter with pipes to it and this package importable, and its end awaited
without hanging on one that does not end."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

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
