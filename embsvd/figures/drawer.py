"""A run's figures drawn in a process of their own, while the job writes its tables and
its explorer page.

A run's five quick looks cost about 0.2 s of matplotlib, mostly Python, and the first
run of a process also pays matplotlib's import (0.25 s): a thread would wait for the
interpreter's lock, a process draws on another core. The job hands the figures' data
over (``submit``) before it writes its tables, and takes the files (``PendingFigures.wait``)
before its run closes: the run's artifacts are what they would be without the drawer.

What it promises:

- *the same files*: the drawer calls ``write_run_figures`` on the data the job computed
  (``run_data.run_figure_data``), as drawing in place would;
- *one drawing at a time*: a job waits for its figures before it closes its run, so at
  most one is in flight; a drawing left behind (its job failed) is collected before the
  next is handed over;
- *no silent loss*: a drawing that fails in the drawer, or a drawer that dies or cannot
  start, is drawn again in the job's process, which then raises what drawing raises
  there (the job fails as it would have without the drawer);
- *signals*: the drawer ignores SIGINT, SIGTERM and SIGHUP (the job's process handles
  them) and ends when its stdin closes: when the job's process closes it, exits or dies.

The protocol is pickles: ``(data, folder)`` per drawing on the drawer's stdin, ``{"pid",
"paths", "error"}`` per drawing on its stdout. Both ends are this package: the drawer only ever
unpickles what its own parent wrote.
"""

from __future__ import annotations

import atexit
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from embsvd import figures
from embsvd.figures.run_data import OrderView, Projection, RunFigureData, Spectrum, Square

PHASES_ENV = "EMBSVD_PHASES"  # embsvd.pipeline.phases' file: the drawer records its time
# the drawer needs no BLAS threads: it would only contend with the job's for the cores
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def draw_here(data: RunFigureData, folder: Path) -> list[Path]:
    """The figures drawn in this process (``embsvd.figures`` imports matplotlib then)."""
    return figures.write_run_figures(data, folder)


class PendingFigures:
    """A drawing handed over: ``wait`` returns its files once they are written."""

    def __init__(self, drawer: FigureDrawer | None, data: RunFigureData, folder: Path):
        self._drawer, self.data, self.folder = drawer, data, folder
        self._paths: list[Path] | None = None
        self.drawn_by: int | None = None  # the process that drew them (its pid)

    def wait(self) -> list[Path]:
        """The figures' paths, once written (drawn here where the drawer failed)."""
        if self._paths is None:
            if self._drawer is not None:
                self._paths = self._drawer._reply_for(self)
            if self._paths is None:
                self._paths, self.drawn_by = draw_here(self.data, self.folder), os.getpid()
        return self._paths

    def settle(self) -> None:
        """Let the drawer finish this drawing, its answer read and nothing drawn here: its
        job failed, and its folder is about to go."""
        if self._drawer is not None and self._paths is None:
            self._drawer._discard_in_flight(self)


class FigureDrawer:
    """The job process's end of the drawer. The process starts on ``start`` or the first
    ``submit`` (again after it ended)."""

    def __init__(self, command: list[str] | None = None):
        self.command = command or [sys.executable, "-m", "embsvd.figures.drawer"]
        self._process: subprocess.Popen | None = None
        self._in_flight: PendingFigures | None = None

    def start(self) -> None:
        """Start the drawer now, so that matplotlib is imported when the first figures
        are handed over."""
        self._started()

    def submit(self, data: RunFigureData, folder: Path) -> PendingFigures:
        """Hand a run's figures over, to be drawn into ``folder``."""
        self._discard_in_flight()
        pending = PendingFigures(self, data, folder)
        process = self._started()
        if process is None:
            return PendingFigures(None, data, folder)  # drawn in place on ``wait``
        try:
            pickle.dump((data, str(folder)), process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            process.stdin.flush()
        except (BrokenPipeError, OSError):
            self._drawer_died()
            return PendingFigures(None, data, folder)
        self._in_flight = pending
        return pending

    def close(self) -> None:
        """End the drawer, once it has answered a drawing still in flight."""
        self._discard_in_flight()
        process, self._process = self._process, None
        if process is not None:
            process.stdin.close()
            process.wait()
            process.stdout.close()

    def _discard_in_flight(self, pending: PendingFigures | None = None) -> None:
        """Read the answer to the drawing in flight (``pending``, when given, only if it is
        that one), whose job failed before it waited: nobody takes those figures, and the
        next answer must be the next drawing's."""
        if self._in_flight is not None and pending in (None, self._in_flight):
            self._reply_for(self._in_flight, quiet=True)

    def _reply_for(self, pending: PendingFigures, quiet: bool = False) -> list[Path] | None:
        """The drawer's answer for ``pending``: its paths, or ``None`` where it must be
        drawn here (the drawer failed to draw it, or died)."""
        if pending is not self._in_flight:
            return None
        self._in_flight = None
        try:
            reply = pickle.load(self._process.stdout)
        except (EOFError, OSError, pickle.UnpicklingError):
            self._drawer_died()
            return None
        if reply["error"] is not None and not quiet:
            print(
                f"the figure process could not draw {pending.folder}: {reply['error']}; "
                "drawing them here",
                file=sys.stderr,
                flush=True,
            )
            return None
        pending.drawn_by = reply["pid"]
        return [Path(path) for path in reply["paths"]]

    def _started(self) -> subprocess.Popen | None:
        if self._process is not None and self._process.poll() is None:
            return self._process
        package_root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        try:
            self._process = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, **SINGLE_THREADED, "PYTHONPATH": path},
            )
        except OSError as error:
            print(f"no figure process ({error}): figures are drawn in place", file=sys.stderr)
            self._process = None
        return self._process

    def _drawer_died(self) -> None:
        process, self._process, code = self._process, None, None
        self._in_flight = None
        if process is not None:
            try:
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
        print(
            f"the figure process ended (exit status {code}); drawing the figures here",
            file=sys.stderr,
            flush=True,
        )


_drawer: FigureDrawer | None = None


def sweep_drawer() -> FigureDrawer:
    """This process's drawer, started on first use and closed at exit."""
    global _drawer
    if _drawer is None:
        _drawer = FigureDrawer()
        atexit.register(close_drawer)
    return _drawer


def close_drawer() -> None:
    global _drawer
    drawer, _drawer = _drawer, None
    if drawer is not None:
        drawer.close()


# --- the drawer process --------------------------------------------------------------------


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Draw each ``(data, folder)`` read from ``requests`` and answer on ``replies``, until
    ``requests`` ends."""
    _warm_up()
    seconds, drawings = 0.0, 0
    while True:
        try:
            data, folder = pickle.load(requests)
        except EOFError:
            break
        started = time.perf_counter()
        reply: dict[str, Any] = {"pid": os.getpid(), "paths": [], "error": None}
        try:
            paths = draw_here(data, Path(folder))
            reply["paths"] = [str(path) for path in paths]
        except Exception as failure:  # noqa: BLE001 (the job's process draws it again)
            reply["error"] = f"{type(failure).__name__}: {failure}"
        seconds, drawings = seconds + time.perf_counter() - started, drawings + 1
        try:
            pickle.dump(reply, replies)
            replies.flush()
        except (BrokenPipeError, OSError):
            break  # the job's process is gone
    _record(seconds, drawings)


def _warm_up() -> None:
    """Draw a made-up run's figures once, before any request, while the job's process is
    still starting: matplotlib's import, its fonts and a renderer of each figure's size
    are then ready for the first run (about 0.4 s of its drawing, measured)."""
    rng = np.random.default_rng(0)
    words = tuple(f"word{i}" for i in range(6))
    square = Square(words, np.corrcoef(rng.normal(size=(6, 12))))
    data = RunFigureData(
        model="warm-up",
        target="words",
        center=True,
        spectrum=Spectrum(np.linspace(3.0, 0.5, 5), *np.full((2, 5), 0.3), 100),
        group_mean_corr=square,
        row_cosine=square,
        projection=Projection(
            np.arange(1, 41),
            np.linspace(-1.0, 1.0, 41),
            tuple((x, w) for x, w in zip(np.linspace(-0.5, 0.5, 6), words, strict=True)),
            ((0.9, "high"), (-0.9, "low")),
        ),
        order=OrderView(False, words, rng.normal(size=(6, 2)), "Spearman 0.50 (p=0.3)\nno partial"),
    )
    with tempfile.TemporaryDirectory() as folder:
        draw_here(data, Path(folder))


def _record(seconds: float, drawings: int) -> None:
    """The drawer's time, as a line of ``$EMBSVD_PHASES`` (``embsvd.pipeline.phases``)."""
    target = os.environ.get(PHASES_ENV)
    if target and drawings:
        line = {
            "kind": "drawer",
            "pid": os.getpid(),
            "drawings": drawings,
            "phases": {"drawer_process": seconds},
        }
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


def _main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nothing printed may corrupt replies
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    _main()
