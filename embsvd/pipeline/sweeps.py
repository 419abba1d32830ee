"""The parent MLflow run of a multirun: opened once every job validated
(``embsvd.pipeline.compose``), closed with the status its children earned; and what the
console shows while jobs run: a progress line per job, a single run's report."""

from __future__ import annotations

import atexit
import json
import shutil
import signal
import sys
import time
import traceback
from contextlib import suppress
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from embsvd import tracking
from embsvd.figures.drawer import sweep_drawer
from embsvd.pipeline import trajectory_job
from embsvd.pipeline.compose import validate_sweep_or_exit
from embsvd.pipeline.job import (
    PARENT_RUN_FILE,
    SWEEP_ID_FILE,
    SWEEP_STATE,
    code_state,
    jobs_share_this_process,
    last_run,
    settle_heap,
    writes_beside,
)
from embsvd.pipeline.project import project_root
from embsvd.pipeline.provenance import package_version
from embsvd.pipeline.report import figures_command, mlflow_ui_command
from embsvd.pipeline.secrets import redact_overrides, redact_text
from embsvd.tracking import contract
from embsvd.tracking.contract import Tag


class SweepTracking(Callback):
    """One parent MLflow run per multirun, closed with the status its children earned.

    Hydra calls ``on_multirun_end`` only when every job succeeded: a failed job makes
    the sweeper raise, and Ctrl-C aborts the sweep. So the parent is also closed at
    interpreter exit (``atexit``), after a job failure or an interrupt; ``sys.excepthook``
    notes an interrupt, and SIGTERM and SIGHUP are turned into one. Closing prints the
    children's table, names the failed jobs and makes the command exit non-zero when any
    failed. The parent opens only once every job's config validated (``validate_sweep``).

    Nothing here lets a sweep go on unseen: a parent that cannot be opened ends the
    command (status 1) before any job starts, and the close never raises (a crash in it
    closes the parent FAILED with the error, and the command exits 1). Signals that
    arrive while the parent closes are delivered once it is closed.

    While the sweep runs, each job's end prints a progress line (``progress_line``) from
    the process that ran it; an interrupt prints one line, not a traceback. A single run
    (no -m) prints its report at its end (``report_run``).
    """

    def __init__(self) -> None:
        self._store: tracking.TrackingStore | None = None
        self._parent_run_id: str | None = None
        self._interrupted = False
        self._sweep_id = ""
        self._project = Path.cwd()  # replaced by the project's folder when the sweep starts
        self._close_failed = False  # the close raised: the command exits 1
        self._uri = ""  # the store's, once resolved
        self._job_started = time.monotonic()  # in the process that runs the job

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open the parent run, or end the command with status 1 before any job starts:
        Hydra turns an exception raised in a callback into a warning and would launch the
        jobs without a parent."""
        try:
            self._open(config)
        except Exception as error:
            print(
                redact_text(
                    "The sweep did not start: its parent run could not be opened in "
                    f"{self._uri or 'the tracking store'}: {tracking.describe(error)}. No job "
                    "was run: make the store reachable and writable (tracking.uri), then "
                    "start the sweep again."
                ),
                file=sys.stderr,
                flush=True,
            )
            self._abandon(error)
            raise SystemExit(1) from error
        except BaseException as error:  # Ctrl-C while it opened
            self._abandon(error, "KILLED")
            raise

    def _open(self, config: DictConfig) -> None:
        # a sweep that cannot run leaves no parent run behind
        loader = validate_sweep_or_exit(config)
        # the processes beside the jobs start first: they import MLflow or matplotlib on
        # the other core while this one imports MLflow and opens the store (about 1.4 s)
        analysis = config.get("analysis") or {}
        shared = jobs_share_this_process(RunMode.MULTIRUN, config.hydra.launcher)
        if shared and analysis.get("figures") is True and analysis.get("figure_process", True):
            sweep_drawer().start()
        n_jobs = loader.n_jobs if loader is not None else None
        if writes_beside(shared, config.tracking, n_jobs):
            tracking.sweep_writer().start()
        self._project = project_root(config)
        uri = self._uri = tracking.resolve_tracking_uri(config.tracking.uri, lambda: self._project)
        # creating the store here runs its migrations once, before parallel workers start
        self._store = tracking.TrackingStore(
            uri,
            config.tracking.experiment,
            config.tracking.artifact_root,
            journal=config.tracking.sqlite_journal,
        )
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        start_progress(sweep_dir, loader.n_jobs if loader is not None else None)
        overrides = list(config.hydra.overrides.task)
        git = code_state(self._project)
        name = sweep_run_name(overrides, sweep_dir)
        tags = {
            Tag.ROLE: contract.SWEEP_ROLE,
            Tag.SWEEP_ID: contract.sweep_id(name),
            Tag.SWEEP_DIR: str(sweep_dir),
            Tag.OVERRIDES: " ".join(redact_overrides(overrides)),
            Tag.LAUNCHER: config.hydra.launcher.get("_target_", ""),
            Tag.VERSION: package_version(),
            **({Tag.GIT_COMMIT: git.commit} if git else {}),
        }
        parent = tracking.start_run(self._store, name, tags)
        self._parent_run_id = parent.run_id
        self._sweep_id = tags[Tag.SWEEP_ID]
        (sweep_dir / PARENT_RUN_FILE).write_text(parent.run_id)
        (sweep_dir / SWEEP_ID_FILE).write_text(tags[Tag.SWEEP_ID])
        print(
            f"Sweep {tags[Tag.SWEEP_ID]}: parent run {parent.run_id} in {redact_text(uri)}",
            flush=True,
        )
        atexit.register(self._close_at_exit)
        # the libraries (MLflow's now), Hydra's and the jobs' configs stay: frozen, and the
        # collector on, for this process's jobs or its wait for a launcher's
        settle_heap()
        previous_hook = sys.excepthook

        def note_interrupt(kind, value, traceback):  # noqa: ANN001 (sys.excepthook's)
            if issubclass(kind, KeyboardInterrupt):  # one line, not every frame it cut
                self._interrupted = True
                print(f"interrupted: sweep {self._sweep_id} KILLED", file=sys.stderr, flush=True)
                return
            previous_hook(kind, value, traceback)

        sys.excepthook = note_interrupt
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._interrupt)

    def _interrupt(self, signum: int, frame: Any) -> None:
        """Note the interrupt, then raise it. The note matters: a KeyboardInterrupt raised
        while Python runs a weakref callback or a ``__del__`` is printed and dropped, and
        the sweep would go on and end FINISHED with exit status 0."""
        self._interrupted = True
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self._interrupted:  # the interrupt was dropped where it was raised: stop here
            raise KeyboardInterrupt("the sweep was interrupted")
        self._job_started = time.monotonic()

    def on_job_end(
        self, config: DictConfig, job_return: JobReturn | None = None, **kwargs: Any
    ) -> None:
        """A sweep job's progress line, printed by the process that ran it."""
        if job_return is None or config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            line = progress_line(config, job_return, time.monotonic() - self._job_started)
        except Exception as error:  # the console's line never fails a job
            line = f"(no progress line: {tracking.describe(error)})"
        if line is not None:
            print(redact_text(line), flush=True)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        """A single run's report (``report_run``); never raises."""
        try:
            report_run(last_run)
        except Exception as error:
            print(
                f"Could not read run {last_run.get('run_id')} back for its report: "
                f"{redact_text(tracking.describe(error))}",
                file=sys.stderr,
                flush=True,
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        outcome = self._close(completed=True)
        failed = outcome is not None and outcome.status != "FINISHED"
        if self._interrupted or self._close_failed or failed:
            raise SystemExit(1)

    def _close_at_exit(self) -> None:
        # the sweep raised (a job failed: Hydra exits 1) or was interrupted: the exit
        # status is already non-zero
        self._close(completed=False)

    def _close(self, completed: bool) -> tracking.SweepOutcome | None:
        """Close the parent (``finish_sweep``) and report; never raises. SIGINT, SIGTERM
        and SIGHUP wait until the parent is closed. When the close raises, the parent is
        closed FAILED with the error instead (``_abandon``) and the command exits 1."""
        if self._store is None or self._parent_run_id is None:
            return None
        store, parent_run_id = self._store, self._parent_run_id
        with tracking.deferred_signals():
            self._drain_writes()
            # the children, read once for the trajectories and the close (a read loads
            # every run's params, metrics and tags: 0.9 s for 100 runs with the checks)
            children = None
            if not self._interrupted:  # a revision sweep's trajectories, on the parent
                with suppress(Exception):  # else each reads them, and reports its failure
                    children = store.children(parent_run_id)
                trajectory_job.log_sweep_trajectories(store, parent_run_id, children)
            try:
                outcome = tracking.finish_sweep(
                    store,
                    parent_run_id,
                    interrupted=self._interrupted,
                    completed=completed,
                    children=children,
                )
            except tracking.FinalWriteError:  # printed; kept pending with the status earned
                self._close_failed, self._parent_run_id = True, None
                atexit.unregister(self._close_at_exit)
                return None
            except Exception as error:
                self._close_failed = True
                print(
                    f"The sweep's close failed:\n{redact_text(traceback.format_exc())}",
                    file=sys.stderr,
                    flush=True,
                )
                self._abandon(error)
                return None
            self._parent_run_id = None
            atexit.unregister(self._close_at_exit)
            try:
                self._report(store, parent_run_id, outcome)
            except Exception:
                self._close_failed = True
                print(
                    f"The sweep's report failed:\n{redact_text(traceback.format_exc())}",
                    file=sys.stderr,
                    flush=True,
                )
        return outcome

    def _drain_writes(self) -> None:
        """Wait until the writer process has written every finished run; a run whose write
        failed (printed, kept pending) makes the command exit 1. Never raises."""
        try:
            failures = tracking.drain_writes()
        except Exception as error:
            failures = [tracking.describe(error)]
            print(f"Waiting for the runs' writes failed: {failures[0]}", file=sys.stderr)
        if failures:
            self._close_failed = True

    def _abandon(self, error: BaseException, status: str = "FAILED") -> None:
        """Close the parent ``status`` with ``error``, its children still RUNNING KILLED:
        the fallback when the sweep could not start or its close raised. Never raises."""
        store, parent_run_id = self._store, self._parent_run_id
        self._parent_run_id = None
        atexit.unregister(self._close_at_exit)
        if store is None or parent_run_id is None:
            return
        with tracking.deferred_signals():
            self._drain_writes()  # a run still being written is not one the sweep cut off
        try:
            tracking.abandon_sweep(store, parent_run_id, error, status)
        except tracking.FinalWriteError:
            pass  # printed, and kept pending for the next command that opens the store
        except Exception as again:
            print(
                f"Could not close the sweep's parent run {parent_run_id} either "
                f"({redact_text(tracking.describe(again))}); `embsvd runs reconcile` closes "
                "it once this process is gone",
                file=sys.stderr,
                flush=True,
            )

    def _report(
        self, store: tracking.TrackingStore, parent_run_id: str, outcome: tracking.SweepOutcome
    ) -> None:
        """The children's table, the failed jobs, and the commands that show the sweep."""
        print(f"\n{tracking.format_sweep_table(outcome.children)}", flush=True)
        for job_num, run_id in sorted(outcome.skipped.items(), key=lambda kv: int(kv[0])):
            print(f"job #{job_num}: skipped, run {run_id} has its config", flush=True)
        failed = outcome.with_status("FAILED") + outcome.with_status("KILLED")
        for child in failed:
            print(
                f"job #{child.tags.get(Tag.JOB_NUM, '?')} {child.status}: {child.name} "
                f"({child.tags.get(Tag.OVERRIDES, '')}): {child.tags.get(Tag.ERROR, '')}",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"\nSweep {outcome.status}: {len(outcome.children)} runs under parent run "
            f"{parent_run_id}, {len(failed)} failed or killed, {len(outcome.skipped)} skipped."
            f"\nOpen the MLflow UI on this store:\n  "
            f"{mlflow_ui_command(store.uri, page=outcome.view_page)}"
            "\nDraw its paper figures:\n  "
            + figures_command(self._project, store.uri, self._sweep_id),
            flush=True,
        )


def report_run(record: dict[str, Any]) -> None:
    """The report of a single run (no -m), from ``job.last_run``: the sweep's summary
    table of this one run, its status, id and store, and the command that opens the MLflow
    UI on it. Nothing for a job refused before its run opened: Hydra prints why."""
    run_id, store = record.get("run_id"), record.get("store")
    if record.get("skipped"):
        print(f"Skipped {record['name']}: run {run_id} has its config", flush=True)
        return
    if run_id is None or store is None:
        return
    [run] = store.find_runs(f"attributes.run_id = '{run_id}'")
    where = (
        "; its error and traceback are in the run's error.txt" if run.status != "FINISHED" else ""
    )
    print(
        f"\n{tracking.format_sweep_table([run])}\n\nRun {run.status}: {run.name}, run "
        f"{run_id} in {redact_text(store.uri)}{where}\nOpen the MLflow UI on this store:\n  "
        + mlflow_ui_command(store.uri),
        flush=True,
    )


# the sweep's progress, in ``<sweep folder>/<SWEEP_STATE>/``: shared by the processes that
# run its jobs (joblib workers; SLURM nodes on a shared file system)
PROGRESS_FILE = "progress.json"  # the sweep's count of jobs and its start
DONE_FOLDER = "done"  # one empty file per job that ended, named by its number


def start_progress(sweep_dir: Path, n_jobs: int | None) -> None:
    """Start the sweep's progress afresh (a sweep folder given twice is a new sweep)."""
    state = sweep_dir / SWEEP_STATE
    shutil.rmtree(state, ignore_errors=True)
    (state / DONE_FOLDER).mkdir(parents=True)
    (state / PROGRESS_FILE).write_text(json.dumps({"n_jobs": n_jobs, "started": time.time()}))


def progress_line(config: DictConfig, job_return: JobReturn, seconds: float) -> str | None:
    """``[3/8] <run name> FINISHED in 1.2 s (elapsed 10.4 s, ETA 17.3 s)``: jobs ended so
    far, of all (counted across processes in the sweep folder), what this one did, how
    long the sweep has run and, at its pace so far, how long it has left; a FAILED job
    adds its error. ``None`` for a sweep ``SweepTracking`` did not open."""
    state = Path(config.hydra.sweep.dir) / SWEEP_STATE
    try:
        progress = json.loads((state / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    (state / DONE_FOLDER / str(config.hydra.job.num)).touch()
    done = sum(1 for _ in (state / DONE_FOLDER).iterdir())
    n_jobs = progress["n_jobs"]
    elapsed = time.time() - progress["started"]
    timing = f"elapsed {duration(elapsed)}"
    if n_jobs and done < n_jobs:
        timing += f", ETA {duration(elapsed / done * (n_jobs - done))}"
    name = last_run.get("name") or " ".join(job_return.overrides or [])
    status, note = "FINISHED", ""
    if job_return.status == JobStatus.FAILED:  # not .return_value: it prints and raises
        status = "FAILED"
        note = ": " + tracking.describe(job_return._return_value).splitlines()[0][:300]
    elif last_run.get("skipped"):
        status, note = "SKIPPED", f": run {last_run['run_id']} has its config"
    count = f"[{done}/{n_jobs}]" if n_jobs else f"[{done}]"
    return f"{count} {name} {status} in {duration(seconds)} ({timing}){note}"


def duration(seconds: float) -> str:
    """``4.2 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def sweep_run_name(overrides: list[str], sweep_dir: Path) -> str:
    """``sweep/<experiment or 'multirun'>/<sweep folder's date and time>``."""
    experiment = next(
        (o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")),
        "multirun",
    )
    return f"sweep/{experiment}/{sweep_dir.parent.name} {sweep_dir.name}"
