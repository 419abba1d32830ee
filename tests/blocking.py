"""Test-only Hydra callbacks that stop a real ``experiments/run.py`` process at a chosen
point, so that a test sends its signal (or locks the store) exactly there, not after a
guess at how long the jobs take.

Added on the command line, with the project root on ``PYTHONPATH``::

    +hydra.callbacks.block._target_=tests.blocking.BlockUntilReleased
    +hydra.callbacks.block.folder=<folder> +hydra.callbacks.block.point=job_start
    +hydra.callbacks.block.job=1

At the point the process writes ``<folder>/<point>.<job>`` (its pid inside; the sweep's
close is ``sweep_close.0``) and waits until ``<folder>/release`` exists. The wait gives up
after ``timeout_s`` (an exception: the test then fails on what it finds), so a broken
test cannot hang the suite.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

import embsvd.pipeline.job as job_module
import embsvd.tracking.sweeps as tracking_sweeps

POINTS = ("job_start", "before_close", "sweep_close")
RELEASE = "release"
POLL_S = 0.02


def wait_for_file(path: Path, timeout_s: float, process: Any = None) -> None:
    """Wait until ``path`` exists; fail after ``timeout_s`` or when ``process`` (a
    ``Popen``) ended first, with what it printed."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(
                f"the process ended ({process.returncode}) before {path.name}:\n{out}\n{err}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(POLL_S)


class BlockUntilReleased(Callback):
    """Pause at ``point`` of job ``job`` until ``<folder>/release`` exists.

    Points:
        job_start: before the job's run opens (Hydra's ``on_job_start``).
        before_close: inside the job's run, after its analysis, before the run's final
            write (its results are logged to the buffer, the run is RUNNING).
        sweep_close: inside the sweep's close, before the parent's final write (where
            SweepTracking holds signals).
    """

    def __init__(self, folder: str, point: str = "job_start", job: int = 0, timeout_s=120.0):
        if point not in POINTS:
            raise ValueError(f"point={point!r}: one of {', '.join(POINTS)}")
        self.folder, self.point, self.job, self.timeout_s = Path(folder), point, job, timeout_s

    def pause(self, job: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{self.point}.{job}").write_text(str(os.getpid()))
        wait_for_file(self.folder / RELEASE, self.timeout_s)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.point == "sweep_close":
            tracking_sweeps.finish_sweep = self._paused_before(tracking_sweeps.finish_sweep)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.point == "job_start" and config.hydra.job.get("num", 0) == self.job:
            self.pause(self.job)
        if self.point == "before_close" and not hasattr(job_module, "_unpaused_analysis"):
            job_module._unpaused_analysis = job_module._analyse_and_log
            job_module._analyse_and_log = self._paused_after(job_module._analyse_and_log)

    def _paused_before(self, function: Callable) -> Callable:
        def paused(*args: Any, **kwargs: Any) -> Any:
            self.pause(0)
            return function(*args, **kwargs)

        return paused

    def _paused_after(self, function: Callable) -> Callable:
        def paused(*args: Any, **kwargs: Any) -> Any:
            result = function(*args, **kwargs)
            if HydraConfig.get().job.get("num", 0) == self.job:
                self.pause(self.job)
            return result

        return paused


class BreakSweepTable(Callback):
    """Make the sweep's summary table raise, as a bug in it would: its close must still
    close the parent (FAILED, with the error) and leave no child RUNNING."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        def broken(runs: Any) -> str:
            raise RuntimeError("the sweep table broke (injected by tests.blocking)")

        tracking_sweeps.format_sweep_table = broken


class Barrier(Callback):
    """Hold every process that builds this callback until ``parties`` of them have: the
    sweeps start their parent runs (and open a new store) at the same moment."""

    def __init__(self, folder: str, parties: int = 2, timeout_s: float = 120.0):
        folder_path = Path(folder)
        folder_path.mkdir(parents=True, exist_ok=True)
        (folder_path / f"arrived.{os.getpid()}").write_text("")
        deadline = time.monotonic() + timeout_s
        while len(list(folder_path.glob("arrived.*"))) < parties:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{parties} processes did not reach {folder} in time")
            time.sleep(POLL_S)
