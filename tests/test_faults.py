"""Faults injected into real processes: ``experiments/run.py`` runs and sweeps on a tiny
checkpoint, each into a sqlite store of its own, killed, locked out or starved of disk at
chosen points. ``tests/blocking.py`` stops a process at its point and the test acts when
the process says it is there: nothing waits on timing. After ``embsvd runs reconcile`` no
run may be RUNNING, and no FINISHED run may have lost anything (its metrics, their steps,
its artifacts).

A process takes seconds to start. The module starts the processes of every selected
test at once (the ``scenarios`` fixture), each scenario driven by a thread of its own, and
each test then checks its scenario's outcome: the file takes about as long as its slowest
scenario (a store locked past MLflow's fixed 20 s busy timeout), not the sum.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from embsvd.pipeline import cli
from embsvd.tracking.contract import Tag
from tests.blocking import RELEASE, wait_for_file
from tests.conftest import PROJECT_ROOT, write_tiny_bert

pytestmark = pytest.mark.slow

WAIT_S = 300  # for a step of a scenario on a loaded machine; none takes it unless broken
SLOTS = threading.Semaphore(6)  # scenarios running at once (each a ~300 MB process)
# what a FINISHED run of analysis=fast logs on the tiny checkpoint
FAST_METRICS = {
    "axis_corr/digits__eu_countries",
    "effective_rank",
    "explained_variance_ratio",
    "group_mean_corr/digits__eu_countries",
    "group_mean_corr_centered/digits__eu_countries",
    "group_mean_cos/digits__eu_countries",
    "n_tokens",
    "s1_share",
    "singular_value",
    "singular_value_first_over_second",
    "singular_value_last_over_first",
    *(f"{key}_{k}" for key in ("sv", "evr") for k in (1, 2, 3)),  # the key numbers
}
FAST_ARTIFACTS = {
    "config.yaml",
    "groups.json",
    "group_mean_corr.csv",
    "group_projections.csv",
    "projection_histogram.csv",
    "row_cosine.csv",
    "spectrum.csv",
    "top_tokens.csv",
}
N_SINGULAR_VALUES = 8  # the tiny checkpoint's d_model, all kept by the digits group
SWEEP = ["analysis.center=true,false"]  # job 0 finishes before job 1's faults


# --- a scenario: processes driven by a thread -------------------------------------------------


@dataclass
class Outcome:
    """What a scenario's processes did: each one's exit status and output."""

    returncodes: list[int] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    skipped: str = ""  # why the scenario could not be set up here

    def add(self, process: subprocess.Popen) -> None:
        out, err = process.communicate(timeout=WAIT_S)
        self.returncodes.append(process.returncode)
        self.stdout += out
        self.stderr += err

    @property
    def returncode(self) -> int:
        [code] = self.returncodes
        return code


class Scenario:
    """A test's processes, started with the module's and driven by ``drive`` in a thread,
    in a folder of their own: ``store/mlflow.db`` (a copy of a migrated store), ``block/``
    (where tests/blocking.py pauses them) and Hydra's folders."""

    def __init__(self, root: Path, checkpoint: Path, template: Path, drive: Callable) -> None:
        self.root, self.checkpoint, self.drive = root, checkpoint, drive
        (root / "store").mkdir()
        shutil.copyfile(template, root / "store" / "mlflow.db")
        self.block = root / "block"
        self.processes: list[subprocess.Popen] = []
        self.cleanups: list[Callable[[], None]] = []
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def database(self) -> Path:
        return self.root / "store" / "mlflow.db"

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.database}"

    def _run(self) -> None:
        with SLOTS:
            try:
                self.outcome = self.drive(self)
            except BaseException as error:  # handed to the test
                self.error = error

    def result(self) -> Outcome:
        self.thread.join(4 * WAIT_S)
        assert not self.thread.is_alive(), "the scenario did not end"
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        if self.outcome.skipped:
            pytest.skip(self.outcome.skipped)
        return self.outcome

    def start(
        self,
        *overrides: str,
        multirun: bool = False,
        callbacks: dict[str, dict] | None = None,
        sweep: str = "sweep",
    ) -> subprocess.Popen:
        """``experiments/run.py`` on the tiny checkpoint (analysis=fast), into this store."""
        hydra = [f"hydra.sweep.dir={self.root / sweep}", f"hydra.run.dir={self.root / 'run'}"]
        for name, params in (callbacks or {}).items():
            hydra += [f"+hydra.callbacks.{name}.{key}={value}" for key, value in params.items()]
        command = [
            sys.executable,
            str(PROJECT_ROOT / "experiments" / "run.py"),
            *(["-m"] if multirun else []),
            "model=local",
            f"model.path={self.checkpoint}",
            "model.name=tiny_bert",
            "analysis=fast",
            "analysis.figures=false",
            f"tracking.uri={self.uri}",
            *hydra,
            *overrides,
        ]
        env = {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(PROJECT_ROOT)}
        process = subprocess.Popen(
            command,
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        return process

    def paused_at(self, process: subprocess.Popen, point: str, job: int = 0) -> None:
        """Wait until ``process`` is paused at ``point`` (tests/blocking.py)."""
        wait_for_file(self.block / f"{point}.{job}", WAIT_S, process)

    def release(self) -> None:
        (self.block / RELEASE).write_text("")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for cleanup in reversed(self.cleanups):
            cleanup()


def block(folder: Path, point: str, job: int = 0) -> dict[str, dict]:
    return {
        "block": {
            "_target_": "tests.blocking.BlockUntilReleased",
            "folder": folder,
            "point": point,
            "job": job,
        }
    }


DRIVES: dict[str, Callable[[Scenario], Outcome]] = {}
STARTS_FIRST = {"test_a_store_locked_at_the_final_write_keeps_the_run_pending_until_replayed"}


def driven_by(drive: Callable[[Scenario], Outcome]) -> Callable:
    """Register the test's scenario: the module fixture starts it with the others."""

    def register(test: Callable) -> Callable:
        DRIVES[test.__name__] = drive
        return test

    return register


@pytest.fixture(scope="module")
def scenarios(request, tmp_path_factory, migrated_store_file):
    """Start the scenario of every selected test of this module at once."""
    here = request.module.__name__
    wanted = [
        item.originalname
        for item in request.session.items
        if getattr(item, "module", None) is not None and item.module.__name__ == here
    ]
    checkpoint = tmp_path_factory.mktemp("checkpoint") / "tiny-bert"
    write_tiny_bert(checkpoint)
    started = {}
    # the scenarios that wait longest start first: they end when the others do
    for name in sorted(dict.fromkeys(wanted), key=lambda n: n not in STARTS_FIRST):
        if name in DRIVES:
            root = tmp_path_factory.mktemp(name.removeprefix("test_")[:40])
            started[name] = Scenario(root, checkpoint, migrated_store_file, DRIVES[name])
            started[name].thread.start()
    yield started
    for scenario in started.values():
        scenario.stop()


@pytest.fixture
def scenario(request, scenarios) -> Scenario:
    return scenarios[request.node.originalname]


# --- reading the store back -----------------------------------------------------------------


def reconcile(scenario: Scenario, capsys, *options: str) -> str:
    """``embsvd runs reconcile`` on the scenario's store (in this process); its output."""
    capsys.readouterr()
    assert cli.main(["runs", "reconcile", "--tracking-uri", scenario.uri, *options]) == 0
    return capsys.readouterr().out


def all_runs(uri: str, experiment: str = "embsvd") -> list:
    """Every run of the experiment, oldest first, read with a plain client (no replay)."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], order_by=["start_time ASC"])


def settled_runs(uri: str, experiment: str = "embsvd") -> list:
    """``all_runs``, none of them RUNNING."""
    runs = all_runs(uri, experiment)
    running = [(r.info.run_name, r.info.run_id) for r in runs if r.info.status == "RUNNING"]
    assert not running, f"runs left RUNNING: {running}"
    return runs


def children(runs: list) -> list:
    return [r for r in runs if r.data.tags.get(Tag.ROLE) != "sweep"]


def parents(runs: list) -> list:
    return [r for r in runs if r.data.tags.get(Tag.ROLE) == "sweep"]


def assert_finished_intact(uri: str, runs: list, expected: int) -> None:
    """``expected`` FINISHED analysis runs, each with every metric (all its steps) and
    every table a complete run of analysis=fast logs."""
    client = MlflowClient(uri)
    finished = [r for r in children(runs) if r.info.status == "FINISHED"]
    assert len(finished) == expected, [(r.info.run_name, r.info.status) for r in runs]
    for run in finished:
        assert set(run.data.metrics) == FAST_METRICS, run.info.run_name
        steps = client.get_metric_history(run.info.run_id, "singular_value")
        assert sorted(m.step for m in steps) == list(range(N_SINGULAR_VALUES))
        names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id)}
        assert names >= FAST_ARTIFACTS, run.info.run_name


# --- signals on a sweep ----------------------------------------------------------------------


def sweep_signal(point: str, job: int, signum: int) -> Callable[[Scenario], Outcome]:
    """A 2-job sweep paused at ``point`` of job ``job``, sent ``signum`` there."""

    def drive(scenario: Scenario) -> Outcome:
        process = scenario.start(*SWEEP, multirun=True, callbacks=block(scenario.block, point, job))
        scenario.paused_at(process, point, job)
        process.send_signal(signum)
        scenario.release()  # a signal the process holds (its sweep's close) is then delivered
        outcome = Outcome()
        outcome.add(process)
        return outcome

    return drive


@driven_by(sweep_signal("job_start", 1, signal.SIGHUP))
def test_sighup_between_jobs_ends_the_sweep_killed(scenario, capsys):
    outcome = scenario.result()

    assert outcome.returncode != 0, outcome.stderr[-3000:]
    reconcile(scenario, capsys)
    runs = settled_runs(scenario.uri)
    [parent] = parents(runs)
    assert parent.info.status == "KILLED"
    assert [r.info.status for r in children(runs)] == ["FINISHED"]  # job 1 never opened
    assert_finished_intact(scenario.uri, runs, expected=1)
    assert parent.data.metrics["n_finished"] == 1


@driven_by(sweep_signal("before_close", 1, signal.SIGTERM))
def test_sigterm_inside_a_sweep_job_kills_the_job_and_its_parent(scenario, capsys):
    outcome = scenario.result()

    assert outcome.returncode != 0, outcome.stderr[-3000:]
    reconcile(scenario, capsys)
    runs = settled_runs(scenario.uri)
    [parent] = parents(runs)
    job0, job1 = children(runs)
    assert (parent.info.status, job0.info.status, job1.info.status) == (
        "KILLED",
        "FINISHED",
        "KILLED",
    )
    assert job1.data.tags[Tag.ERROR] == "KeyboardInterrupt: signal SIGTERM"
    assert set(job1.data.metrics) == FAST_METRICS  # what it logged before the signal is kept
    assert_finished_intact(scenario.uri, runs, expected=1)


@driven_by(sweep_signal("before_close", 1, signal.SIGKILL))
def test_sigkill_inside_a_sweep_job_is_closed_by_reconcile(scenario):
    outcome = scenario.result()
    assert outcome.returncode == -signal.SIGKILL
    before = all_runs(scenario.uri)
    assert sorted(r.info.status for r in before) == ["FINISHED", "RUNNING", "RUNNING"]

    # the installed command's module, as a user runs it
    done = subprocess.run(
        [sys.executable, "-m", "embsvd.pipeline.cli", "runs", "reconcile"],
        cwd=scenario.root,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env={**os.environ, "MLFLOW_TRACKING_URI": scenario.uri},
    )

    assert done.returncode == 0, done.stderr
    runs = settled_runs(scenario.uri)
    [parent] = parents(runs)
    job0, job1 = children(runs)
    assert (parent.info.status, job0.info.status, job1.info.status) == (
        "KILLED",
        "FINISHED",
        "KILLED",
    )
    pid = job1.data.tags[Tag.PID]
    assert (
        f"its process (pid {pid} on {job1.data.tags[Tag.HOST]}) is gone"
        in (job1.data.tags[Tag.ERROR])
    )
    assert "closed by embsvd runs reconcile" in parent.data.tags[Tag.ERROR]
    assert f"closed KILLED: run {job1.info.run_id}" in done.stdout
    assert f"closed KILLED: run {parent.info.run_id}" in done.stdout
    # the parent got a normal close's counts and tables
    assert parent.data.metrics["n_finished"] == 1 and parent.data.metrics["n_killed"] == 1
    client = MlflowClient(scenario.uri)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "children.csv",
        "sweep_summary.txt",
    }
    assert_finished_intact(scenario.uri, runs, expected=1)


@driven_by(sweep_signal("sweep_close", 0, signal.SIGTERM))
def test_sigterm_during_the_sweep_close_waits_until_the_parent_is_closed(scenario, capsys):
    outcome = scenario.result()

    assert outcome.returncode != 0  # the signal still ends the command
    assert "Sweep FINISHED: 2 runs" in outcome.stdout  # ... once the close is done
    reconcile(scenario, capsys)
    runs = settled_runs(scenario.uri)
    [parent] = parents(runs)
    assert parent.info.status == "FINISHED"
    assert_finished_intact(scenario.uri, runs, expected=2)


@driven_by(sweep_signal("sweep_close", 0, signal.SIGKILL))
def test_sigkill_during_the_sweep_close_leaves_a_parent_reconcile_closes(scenario, capsys):
    outcome = scenario.result()
    assert outcome.returncode == -signal.SIGKILL

    printed = reconcile(scenario, capsys)

    runs = settled_runs(scenario.uri)
    [parent] = parents(runs)
    assert parent.info.status == "KILLED"
    assert f"closed KILLED: run {parent.info.run_id}" in printed
    assert parent.data.metrics["n_children"] == 2 and parent.data.metrics["n_finished"] == 2
    assert_finished_intact(scenario.uri, runs, expected=2)


def crash_in_close(scenario: Scenario) -> Outcome:
    broken = {"broken": {"_target_": "tests.blocking.BreakSweepTable"}}
    outcome = Outcome()
    outcome.add(scenario.start(*SWEEP, multirun=True, callbacks=broken))
    return outcome


@driven_by(crash_in_close)
def test_a_crash_in_the_sweep_close_still_closes_the_parent(scenario, capsys):
    outcome = scenario.result()

    assert outcome.returncode == 1
    assert "The sweep's close failed:" in outcome.stderr
    assert "the sweep table broke" in outcome.stderr
    assert reconcile(scenario, capsys).endswith("0 runs closed, 0 left RUNNING\n")
    runs = settled_runs(scenario.uri)
    [parent] = parents(runs)
    assert parent.info.status == "FAILED"
    assert parent.data.tags[Tag.ERROR] == (
        "the sweep's close failed: RuntimeError: the sweep table broke (injected by tests.blocking)"
    )
    error = Path(MlflowClient(scenario.uri).download_artifacts(parent.info.run_id, "error.txt"))
    assert "Traceback" in error.read_text()
    assert_finished_intact(scenario.uri, runs, expected=2)


# --- signals on a single run -------------------------------------------------------------------


def single_run_signal(signum: int) -> Callable[[Scenario], Outcome]:
    """A single run (no -m) paused inside its run, after its analysis, sent ``signum``."""

    def drive(scenario: Scenario) -> Outcome:
        process = scenario.start(callbacks=block(scenario.block, "before_close"))
        scenario.paused_at(process, "before_close")
        process.send_signal(signum)
        outcome = Outcome()
        outcome.add(process)
        return outcome

    return drive


@driven_by(single_run_signal(signal.SIGTERM))
def test_sigterm_ends_a_single_run_killed(scenario, capsys):
    outcome = scenario.result()

    assert outcome.returncode == 128 + signal.SIGTERM, outcome.stderr[-3000:]
    reconcile(scenario, capsys)
    [run] = settled_runs(scenario.uri)
    assert run.info.status == "KILLED"
    assert run.data.tags[Tag.ERROR] == "Terminated: SIGTERM"
    assert set(run.data.metrics) == FAST_METRICS  # logged before the signal: kept


# --- a store that refuses the final write ----------------------------------------------------


def locked_store(scenario: Scenario) -> Outcome:
    """Another process's exclusive transaction holds the database while the run makes its
    final write, longer than MLflow's busy timeout (20 s, fixed in MLflow)."""
    process = scenario.start(callbacks=block(scenario.block, "before_close"))
    scenario.paused_at(process, "before_close")
    holder = sqlite3.connect(scenario.database, timeout=WAIT_S, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        scenario.release()
        outcome = Outcome()
        outcome.add(process)  # it waits out the busy timeout, then keeps its results pending
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    return outcome


@driven_by(locked_store)
def test_a_store_locked_at_the_final_write_keeps_the_run_pending_until_replayed(scenario, capsys):
    outcome = scenario.result()

    assert outcome.returncode == 1
    [folder] = (scenario.root / "store" / "pending").iterdir()
    assert f"are kept in {folder}" in outcome.stderr
    assert "database is locked" in outcome.stderr
    [left] = all_runs(scenario.uri)
    assert left.info.status == "RUNNING"  # the database refused even its status

    printed = reconcile(scenario, capsys)

    assert "wrote the results its final write could not store" in printed
    assert not folder.exists()
    [run] = settled_runs(scenario.uri)
    assert run.info.status == "FINISHED"
    assert Tag.ERROR not in run.data.tags
    assert "database is locked" in run.data.tags[Tag.RECOVERED]
    assert_finished_intact(scenario.uri, [run], expected=1)


def full_disk(scenario: Scenario) -> Outcome:
    """The artifact root on a tmpfs that a file fills up before the run starts."""
    mount = scenario.root / "full"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        return Outcome(skipped=f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    scenario.cleanups.append(lambda: subprocess.run(["umount", "-l", str(mount)]))
    with open(mount / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:  # ENOSPC: the disk is full
            pass
    outcome = Outcome()
    outcome.add(scenario.start("tracking.experiment=full", f"tracking.artifact_root={mount}"))
    return outcome


@driven_by(full_disk)
def test_a_full_disk_fails_the_run_with_the_reason_and_keeps_its_results(scenario, capsys):
    outcome = scenario.result()

    assert outcome.returncode == 1
    [folder] = (scenario.root / "store" / "pending").iterdir()
    assert f"are kept in {folder}" in outcome.stderr
    [run] = settled_runs(scenario.uri, "full")
    assert run.info.status == "FAILED"
    assert "No space left on device" in run.data.tags[Tag.ERROR]
    assert f"the run's results kept in {folder}" in run.data.tags[Tag.ERROR]

    still_full = reconcile(scenario, capsys, "--experiment", "full")  # the replay fails again

    assert "failed again" in still_full and folder.is_dir()
    assert settled_runs(scenario.uri, "full")[0].info.status == "FAILED"
    (scenario.root / "full" / "filler").unlink()

    freed = reconcile(scenario, capsys, "--experiment", "full")

    assert "wrote the results its final write could not store" in freed
    [run] = settled_runs(scenario.uri, "full")
    assert run.info.status == "FINISHED" and Tag.ERROR not in run.data.tags
    assert "No space left on device" in run.data.tags[Tag.RECOVERED]
    assert_finished_intact(scenario.uri, [run], expected=1)
    assert not folder.exists()


# --- two sweeps racing on a new store --------------------------------------------------------


def racing_sweeps(scenario: Scenario) -> Outcome:
    """Two sweeps on one store that does not exist yet, held until both are about to open
    it (tests.blocking.Barrier): MLflow's schema setup and the experiment's creation race
    unless serialized."""
    scenario.database.unlink()
    barrier = {
        "barrier": {
            "_target_": "tests.blocking.Barrier",
            "folder": scenario.root / "barrier",
            "parties": 2,
        }
    }
    processes = [
        scenario.start(multirun=True, callbacks=barrier, sweep=f"sweep{n}") for n in range(2)
    ]
    outcome = Outcome()
    for process in processes:
        outcome.add(process)
    return outcome


@driven_by(racing_sweeps)
def test_two_sweeps_starting_together_on_a_new_store_both_get_their_parent(scenario, capsys):
    outcome = scenario.result()

    assert outcome.returncodes == [0, 0], outcome.stderr[-3000:]
    reconcile(scenario, capsys)
    runs = settled_runs(scenario.uri)
    both = parents(runs)
    assert [p.info.status for p in both] == ["FINISHED", "FINISHED"]
    assert sorted(r.data.tags.get(Tag.PARENT_RUN_ID) for r in children(runs)) == sorted(
        p.info.run_id for p in both
    )
    assert_finished_intact(scenario.uri, runs, expected=2)
