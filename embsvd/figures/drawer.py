"""A run's figures and its vocabulary explorer drawn in a process of their own, while the
job runs its checks and writes its tables.

A run's five quick looks cost about 0.2 s of matplotlib, mostly Python, and the first
run of a process also pays matplotlib's import (0.25 s); its explorer table and page,
about 0.1 s at 30k tokens and 0.35 s at 128k, are Python's number formatting: a thread
would wait for the interpreter's lock, a process works on another core. The job hands
over the figures that need no check (and a large vocabulary's explorer) before its
checks run, the other figures after (``submit``), and takes the files
(``PendingFigures.wait``) before its run closes: the run's artifacts are what they would
be without the drawer.

What it promises:

- *the same files*: the drawer calls ``write_run_figures`` on the data the job computed
  (``run_data.run_figure_data``), and ``write_run_explorer`` on its ``RunExplorer``, as
  drawing in place would;
- *answers in order*: drawings are answered in the order they were handed over; a
  job's wait reads the answers up to its own (a drawing whose job failed is settled
  before its folder goes);
- *no silent loss*: a drawing that fails in the drawer, or a drawer that dies or cannot
  start, is drawn again in the job's process, which then raises what drawing raises
  there (the job fails as it would have without the drawer);
- *signals*: the drawer ignores SIGINT, SIGTERM and SIGHUP (the job's process handles
  them) and ends when its stdin closes: when the job's process closes it, exits or dies.

The protocol is pickles: ``(data, folder, names)`` per drawing on the drawer's stdin,
``{"pid", "paths", "error"}`` per drawing on its stdout, in the same order. Both ends
are this package: the drawer only ever unpickles what its own parent wrote.
"""

from __future__ import annotations

import atexit
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any

import numpy as np

from embsvd import figures
from embsvd.figures.explorer import RunExplorer, write_run_explorer
from embsvd.figures.run_data import OrderView, Projection, RunFigureData, Spectrum, Square
from embsvd.io.processes import exit_status, record_busy_time, replies_channel, start_process

# the drawer needs no BLAS threads: it would only contend with the job's for the cores
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# a request larger than this is written by a thread (``FigureDrawer._send``): a pipe's
# buffer on Linux; a write of more waits for the drawer to read it
PIPE_BYTES = 1 << 16


def draw_here(
    data: RunFigureData | RunExplorer, folder: Path, names: Collection[str] | None = None
) -> list[Path]:
    """The figures (``names`` of them, where given) or the explorer written in this
    process (``embsvd.figures`` imports matplotlib then)."""
    if isinstance(data, RunExplorer):
        return write_run_explorer(data, folder)
    return figures.write_run_figures(data, folder, names)


class PendingFigures:
    """A drawing handed over: ``wait`` returns its files once they are written."""

    def __init__(
        self,
        drawer: FigureDrawer | None,
        data: RunFigureData | RunExplorer,
        folder: Path,
        names: Collection[str] | None = None,
    ):
        self._drawer, self.data, self.folder, self.names = drawer, data, folder, names
        self._paths: list[Path] | None = None
        self._error: str | None = None  # why the drawer could not draw it
        self.drawn_by: int | None = None  # the process that drew them (its pid)

    def wait(self) -> list[Path]:
        """The figures' paths, once written (drawn here where the drawer failed)."""
        if self._paths is None:
            if self._drawer is not None:
                self._drawer._collect(self)
            if self._error is not None:
                print(
                    f"the figure process could not draw {self.folder}: {self._error}; "
                    "drawing them here",
                    file=sys.stderr,
                    flush=True,
                )
            if self._paths is None:
                self._paths = draw_here(self.data, self.folder, self.names)
                self.drawn_by = os.getpid()
        return self._paths

    def settle(self) -> None:
        """Let the drawer finish this drawing, its answer read and nothing drawn here: its
        job failed, and its folder is about to go."""
        if self._drawer is not None and self._paths is None:
            self._drawer._collect(self)


class FigureDrawer:
    """The job process's end of the drawer. The process starts on ``start`` or the first
    ``submit`` (again after it ended)."""

    def __init__(self, command: list[str] | None = None):
        self.command = command or [sys.executable, "-m", "embsvd.figures.drawer"]
        self._process: subprocess.Popen | None = None
        self._in_flight: deque[PendingFigures] = deque()  # handed over, unanswered, in order
        self._sending: threading.Thread | None = None  # writing a request to the drawer

    def start(self) -> None:
        """Start the drawer now, so that matplotlib is imported when the first figures
        are handed over."""
        self._started()

    def submit(
        self,
        data: RunFigureData | RunExplorer,
        folder: Path,
        names: Collection[str] | None = None,
    ) -> PendingFigures:
        """Hand a run's figures over (those named in ``names``, when given), or its
        explorer, to be written into ``folder``."""
        process = self._started()
        if process is None:
            return PendingFigures(None, data, folder, names)  # drawn in place on ``wait``
        try:
            self._send(process, (data, str(folder), None if names is None else tuple(names)))
        except (BrokenPipeError, OSError):
            self._drawer_died()
            return PendingFigures(None, data, folder, names)
        pending = PendingFigures(self, data, folder, names)
        self._in_flight.append(pending)
        return pending

    def _send(self, process: subprocess.Popen, request: tuple) -> None:
        """Write ``request`` to the drawer: here when it fits the pipe's buffer and nothing
        is being sent, else from a thread, after what is being sent (the drawer reads a
        request only once it has drawn those before it: a 128256-token explorer's 4.9 MB
        kept its job from its checks for 0.15-0.24 s). A thread that finds the drawer gone
        stops: reading its answer finds that, and the drawing is done here."""
        message = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        previous = self._sending
        if len(message) <= PIPE_BYTES and (previous is None or not previous.is_alive()):
            process.stdin.write(message)
            process.stdin.flush()
            return

        def send() -> None:
            if previous is not None:
                previous.join()
            try:
                process.stdin.write(message)
                process.stdin.flush()
            except (OSError, ValueError):  # ValueError: the drawer's stdin was closed
                pass

        self._sending = threading.Thread(target=send, name="embsvd-drawer-send", daemon=True)
        self._sending.start()

    def close(self) -> None:
        """End the drawer, once it has answered every drawing in flight."""
        if self._in_flight:
            self._collect(self._in_flight[-1])
        if self._sending is not None:  # the drawer has read it all, or is gone
            self._sending.join()
            self._sending = None
        process, self._process = self._process, None
        if process is not None:
            process.stdin.close()
            process.wait()
            process.stdout.close()

    def _collect(self, pending: PendingFigures) -> None:
        """Read the drawer's answers, in order, up to ``pending``'s: each drawing answered
        gets its paths, or the drawer's error (then ``wait`` draws it here). Where the
        drawer died, every drawing in flight is left to be drawn here."""
        while any(waiting is pending for waiting in self._in_flight):
            answered = self._in_flight.popleft()
            try:
                reply = pickle.load(self._process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                self._drawer_died()
                return
            answered.drawn_by = reply["pid"]
            if reply["error"] is None:
                answered._paths = [Path(path) for path in reply["paths"]]
            else:
                answered._error = reply["error"]

    def _started(self) -> subprocess.Popen | None:
        if self._process is not None:
            if self._process.poll() is None:
                return self._process
            self._drawer_died()  # it ended: what it had not answered is drawn here
        try:
            self._process = start_process(self.command, SINGLE_THREADED)
        except OSError as error:
            print(f"no figure process ({error}): figures are drawn in place", file=sys.stderr)
            self._process = None
        return self._process

    def _drawer_died(self) -> None:
        process, self._process = self._process, None
        self._in_flight.clear()
        code = exit_status(process) if process is not None else None
        print(
            f"the figure process ended (exit status {code}); drawing the figures here",
            file=sys.stderr,
            flush=True,
        )


_drawer: FigureDrawer | None = None


def sweep_drawer() -> FigureDrawer:
    """This process's drawer (its sweep's jobs', or its single run's), started on first
    use and closed at exit."""
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
            data, folder, names = pickle.load(requests)
        except EOFError:
            break
        started = time.perf_counter()
        reply: dict[str, Any] = {"pid": os.getpid(), "paths": [], "error": None}
        try:
            paths = draw_here(data, Path(folder), names)
            reply["paths"] = [str(path) for path in paths]
        except Exception as failure:  # noqa: BLE001 (the job's process draws it again)
            reply["error"] = f"{type(failure).__name__}: {failure}"
        seconds, drawings = seconds + time.perf_counter() - started, drawings + 1
        try:
            pickle.dump(reply, replies)
            replies.flush()
        except (BrokenPipeError, OSError):
            break  # the job's process is gone
    record_busy_time("drawer", seconds, drawings=drawings)


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


def _main() -> None:
    replies = replies_channel("wb")
    serve(sys.stdin.buffer, replies)
    # every answer is written and every file closed: skip the interpreter's teardown of
    # matplotlib's modules, which the job's process would wait for at its exit
    replies.close()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _main()
