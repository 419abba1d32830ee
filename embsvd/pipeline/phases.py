"""Where a job's time goes: named phases, timed per job and written as JSON lines to the
file ``$EMBSVD_PHASES`` names (the benchmark sets it and reads them back).

A job's phases are the pipeline's steps (``store``, ``load``, ``groups``, ``method``, each
check, ``writes``, ``figures``); the sweep's composition is timed where it happens. Nothing
is written, and timing costs a ``perf_counter`` call a phase, when the variable is unset.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from embsvd.io.processes import PHASES_ENV


class PhaseClock:
    """Seconds per named phase, accumulated until :meth:`record` writes and resets them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def record(self, kind: str, **fields: object) -> None:
        """Append ``{"kind", "pid", "phases", **fields}`` to ``$EMBSVD_PHASES`` (when set)
        and start over. One ``write`` of one line per record: the lines of processes
        writing at once do not interleave."""
        seconds, self.seconds = self.seconds, {}
        target = os.environ.get(PHASES_ENV)
        if not target:
            return
        line = json.dumps({"kind": kind, "pid": os.getpid(), "phases": seconds, **fields})
        with open(Path(target), "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


# the process's clock: a job's phases, read and reset when the job ends
clock = PhaseClock()


def read_phases(file: Path) -> list[dict]:
    """The records of ``file`` (``[]`` when it does not exist)."""
    if not Path(file).is_file():
        return []
    return [json.loads(line) for line in Path(file).read_text().splitlines() if line.strip()]
