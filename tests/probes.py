"""A test-only Hydra callback that records the state of a real ``experiments/run.py``
process at points of its run. Added on the command line, with the project root on
``PYTHONPATH``::

    +hydra.callbacks.collector._target_=tests.probes.CollectorState
    +hydra.callbacks.collector.file=<file>
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CollectorState(Callback):
    """Appends ``<point> on|off`` to ``file``: whether the cyclic collector is on when
    Hydra makes the callbacks (``start``: before any composition), when the sweep starts
    (after the callbacks listed before this one: embsvd's open the parent run) and when
    each job starts and ends."""

    def __init__(self, file: str) -> None:
        self.file = Path(file)
        self._note("start")

    def _note(self, point: str) -> None:
        with open(self.file, "a", encoding="utf-8") as handle:
            handle.write(f"{point} {'on' if gc.isenabled() else 'off'}\n")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._note("multirun_start")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._note("job_start")

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self._note("job_end")
