"""The writer process: a sweep's final writes done beside the next job, nothing lost."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from embsvd.tracking.runs import start_run
from embsvd.tracking.store import TrackingStore
from embsvd.tracking.writer import RunWriter


def open_run(store: TrackingStore, n: int):
    """A buffered run holding a tag, three metrics and an artifact."""
    logger = start_run(store, f"run {n}", {"embsvd.test": "writer"}, buffered=True)
    logger.set_tags({"which": str(n)})
    logger.log_metrics([("m", float(n), 0), ("m", n + 0.5, 1), ("other", -1.0, 0)])
    logger.log_text(f"artifact of run {n}\n", "tables/note.txt")
    return logger


def assert_written(store: TrackingStore, run_id: str, n: int) -> None:
    client = MlflowClient(store.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["which"] == str(n)
    assert [m.value for m in client.get_metric_history(run_id, "m")] == [n, n + 0.5]
    local = client.download_artifacts(run_id, "tables/note.txt")
    assert Path(local).read_text() == f"artifact of run {n}\n"


@pytest.fixture
def store(tmp_path: Path) -> TrackingStore:
    return TrackingStore(f"sqlite:///{tmp_path / 'mlflow.db'}", "writer")


def test_runs_handed_to_the_writer_process_are_written_in_full(store):
    writer = RunWriter()
    loggers = [open_run(store, n) for n in range(3)]
    for logger in loggers:
        writer.submit(store.uri, logger, "FINISHED")
        assert logger.unwritten == ([], [], None)  # handed over, staging included
    writer_pid = writer._process.pid
    assert writer_pid != os.getpid()  # written by another process

    assert writer.drain() == []

    for n, logger in enumerate(loggers):
        assert_written(store, logger.run_id, n)
    assert writer.close() == [] and writer._process is None


class _NoWrites:
    """A client for a job's process that must not write the store: every call fails."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the job's process called MlflowClient.{name}")


def test_a_run_the_writer_opens_is_written_by_it_alone(store):
    """Opened through the writer, a run's every write (its creation with this process's
    tags and start time, params, dataset inputs, tags, metrics, artifacts and status)
    is done by the writer process: the job's process holds a client that fails on any
    call. The run's id is there once asked for."""
    from embsvd.tracking.runs import group_dataset, log_groups
    from tests.conftest import token_group

    writer = RunWriter()
    job_store = TrackingStore(store.uri, "writer")
    job_store.client = _NoWrites()
    before = int(time.time() * 1000)
    run = writer.open(job_store, "opened elsewhere", {"embsvd.test": "writer"})
    run.log_params({"analysis.center": True, "long": "x" * 9000})
    groups = {"digits": token_group("digits", [3, 4, 5]), "other": token_group("other", [6, 7])}
    log_groups(run, groups, "digits")
    run.set_tags({"which": "5"})
    run.log_metrics([("m", 5.0, 0), ("m", 5.5, 1), ("other", -1.0, 0)])
    run.log_text("artifact of run 5\n", "tables/note.txt")
    writer.submit(store.uri, run, "FINISHED")
    assert writer.drain() == []

    run_id = run.run_id
    assert_written(store, run_id, 5)
    written = MlflowClient(store.uri).get_run(run_id)
    assert written.info.run_name == "opened elsewhere"
    assert before <= written.info.start_time <= written.info.end_time
    assert written.data.tags["embsvd.pid"] == str(os.getpid())  # the job's, not the writer's
    assert written.data.params["analysis.center"] == "True"
    assert len(written.data.params["long"]) == 6000  # cut to MLflow's limit, as in place
    inputs = {d.dataset.name: d for d in written.inputs.dataset_inputs}
    assert inputs.keys() == {"digits", "other"}
    expected = group_dataset(groups["digits"], True)
    assert inputs["digits"].dataset.digest == expected.dataset.digest
    assert {t.key: t.value for t in inputs["digits"].tags} == {"mlflow.data.context": "target"}
    writer.close()


def test_a_run_the_store_refuses_to_open_fails_its_job_with_the_reason(store, capsys):
    """An open the store refuses (an experiment that does not exist): asking for the
    run's id raises with the store's reason; its params are not written, said once each;
    the failure path of ``tracked_run`` closes nothing and keeps the block's error."""
    from embsvd.tracking.runs import tracked_run
    from embsvd.tracking.writer import OpenFailedError

    writer = RunWriter()
    wrong = TrackingStore(store.uri, "writer")
    wrong.experiment_id = "999"
    run = writer.open(wrong, "refused", {})
    run.log_params({"a": 1})
    with pytest.raises(OpenFailedError, match="run refused: .*999"):
        run.run_id  # noqa: B018
    assert writer.drain() == ["run refused was not opened: its params are lost"]
    run.log_text("kept\n", "note.txt")
    staged = run.unwritten[2]
    with pytest.raises(OpenFailedError):
        writer.submit(store.uri, run, "FINISHED")  # the job's end: it fails with the reason
    assert run.unwritten[2] == staged and (staged / "note.txt").exists()  # nothing taken
    run.discard_staging()

    with (
        pytest.raises(ValueError, match="the block's"),
        tracked_run(wrong, "refused too", {}, writer=writer),
    ):
        raise ValueError("the block's error")
    assert "run refused too not closed: run refused too: " in capsys.readouterr().err
    writer.close()
    assert MlflowClient(store.uri).search_runs([store.experiment_id]) == []


def test_a_failed_job_under_the_writer_closes_its_run_in_place(store):
    """A block that raises: the run the writer opened ends FAILED with the error and the
    traceback, written once the writer has opened it."""
    from embsvd.tracking.runs import tracked_run

    writer = RunWriter()
    with pytest.raises(KeyError), tracked_run(store, "fails", {}, writer=writer) as run:
        run.log_params({"a": 1})
        raise KeyError("no such group")
    written = MlflowClient(store.uri).get_run(run.run_id)
    assert written.info.status == "FAILED"
    assert written.data.tags["embsvd.error"] == "KeyError: 'no such group'"
    assert written.data.params == {"a": "1"}
    assert "error.txt" in [a.path for a in MlflowClient(store.uri).list_artifacts(run.run_id)]
    writer.close()


def test_a_run_a_dead_writer_opened_unsaid_is_found_not_opened_twice(store, capsys):
    """A writer that opens the run in the store and dies before saying so: the job's
    process finds that run (its name, start time and this process's pid), writes its
    params and final write there, and no second run appears."""
    opens_and_dies = textwrap.dedent(
        """
        import json, sys
        from mlflow.tracking import MlflowClient
        item = json.loads(sys.stdin.readline())
        MlflowClient(item["uri"]).create_run(
            item["experiment_id"], start_time=item["start_time"], tags=item["tags"],
            run_name=item["run_name"],
        )
        sys.exit(5)
        """
    )
    writer = RunWriter(command=[sys.executable, "-c", opens_and_dies])
    run = writer.open(store, "opened unsaid", {"which": "9"})
    run.log_params({"a": 1})
    run.log_metrics([("m", 9.0, 0), ("m", 9.5, 1), ("other", -1.0, 0)])
    run.log_text("artifact of run 9\n", "tables/note.txt")
    writer.submit(store.uri, run, "FINISHED")
    assert writer.drain() == []

    assert "the writer process ended (exit status 5) with" in capsys.readouterr().err
    [found] = MlflowClient(store.uri).search_runs([store.experiment_id])
    assert found.info.run_id == run.run_id
    assert found.data.params == {"a": "1"}
    assert_written(store, run.run_id, 9)


def test_a_failed_write_is_reported_by_drain(store):
    """The writer's reply carries the failure (``close_run`` printed it and kept the run
    pending); here a stand-in writer replies with one."""
    reply = textwrap.dedent(
        """
        import json, sys
        for line in sys.stdin:
            item = json.loads(line)
            reply = {"token": item["token"], "run_id": None, "error": "disk full"}
            print(json.dumps(reply), flush=True)
        """
    )
    writer = RunWriter(command=[sys.executable, "-c", reply])
    writer.submit(store.uri, open_run(store, 0), "FINISHED")

    assert writer.drain() == ["disk full"]
    assert writer.drain() == ["disk full"]  # failures stay: the sweep's exit status needs them
    writer.close()


def test_runs_a_dead_writer_had_not_confirmed_are_written_in_place(store, capsys):
    """A writer that reads a run and dies without confirming it: the job's process
    writes the run itself (writing twice is harmless)."""
    dies = "import sys; sys.stdin.readline(); sys.exit(3)"
    writer = RunWriter(command=[sys.executable, "-c", dies])
    logger = open_run(store, 7)
    writer.submit(store.uri, logger, "FINISHED")

    assert writer.drain() == []

    assert "the writer process ended (exit status 3) with 1 requests unconfirmed" in (
        capsys.readouterr().err
    )
    assert_written(store, logger.run_id, 7)


def test_at_most_max_in_flight_runs_wait_for_the_writer(store):
    """A writer that confirms nothing until told: the third submit waits for a reply, so
    the job's process never runs ahead of the store by more than two runs."""
    gate = store.uri.removeprefix("sqlite:///") + ".gate"
    held = textwrap.dedent(
        f"""
        import json, os, sys, time
        items = [json.loads(sys.stdin.readline()) for _ in range(2)]
        open({gate!r} + ".read", "w").close()
        for item in items:
            print(json.dumps({{"token": item["token"], "run_id": None, "error": None}}), flush=True)
        for line in sys.stdin:
            reply = {{"token": json.loads(line)["token"], "run_id": None, "error": None}}
            print(json.dumps(reply), flush=True)
        """
    )
    writer = RunWriter(max_in_flight=2, command=[sys.executable, "-c", held])
    for n in range(3):
        writer.submit(store.uri, open_run(store, n), "FINISHED")
        assert len(writer._in_flight) <= 2
    # the third submit could only go on once the writer had read the first two
    assert Path(gate + ".read").exists()
    writer.close()


def test_a_sweep_has_a_writer_process_from_its_minimum_of_jobs():
    """The jobs of embsvd's launcher (the default) and of Hydra's basic launcher share
    this process: their runs go to a writer when ``tracking.background_writes`` is on
    and the sweep has ``tracking.writer_min_jobs`` jobs, or a count not known ahead;
    another launcher's jobs write their own."""
    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from embsvd.pipeline.job import jobs_share_this_process, writes_beside
    from tests.conftest import CONFIG_DIR  # not at the top: a script imports this module

    def launcher(*overrides: str):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", list(overrides), return_hydra_config=True).hydra.launcher

    embsvd, basic, joblib = (
        launcher(),
        launcher("hydra/launcher=basic"),
        launcher("hydra/launcher=joblib"),
    )
    assert embsvd._target_.endswith("EmbsvdLauncher")
    assert jobs_share_this_process(RunMode.MULTIRUN, embsvd)
    assert jobs_share_this_process(RunMode.MULTIRUN, basic)
    assert not jobs_share_this_process(RunMode.MULTIRUN, joblib)
    assert not jobs_share_this_process(RunMode.RUN, embsvd)
    on = OmegaConf.create({"background_writes": True, "writer_min_jobs": 16})
    off = OmegaConf.create({"background_writes": False, "writer_min_jobs": 16})
    assert writes_beside(True, on, 16) and writes_beside(True, on, None)
    assert not writes_beside(True, on, 15)  # the seed replication has 4
    assert not writes_beside(True, off, 100)
    assert not writes_beside(False, on, 100)  # another launcher's jobs


def tiny_sweep(folder: Path, tiny_bert: Path, *overrides: str, env: dict | None = None) -> str:
    """``experiments/run.py -m`` of two jobs (centered and raw) on the tiny BERT, with a
    store in ``folder``: its URI."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "experiments" / "run.py"),
            "-m",
            "model=local",
            f"model.path={tiny_bert}",
            "model.name=tiny_bert",
            f"tracking.uri={uri}",
            *overrides,
            f"hydra.sweep.dir={folder / 'sweep'}",
            "analysis.center=true,false",
            "analysis.figures=false",
            "analysis.n_null=50",
            "analysis.n_resamples=20",
        ],
        check=True,
        capture_output=True,
        cwd=folder,
        env={**os.environ, "EMBSVD_CACHE_DIR": str(folder / "cache"), **(env or {})},
        timeout=600,
    )
    return uri


@pytest.mark.slow
def test_a_short_sweep_writes_its_own_runs(tmp_path, tiny_bert):
    """A sweep of fewer jobs than ``tracking.writer_min_jobs`` starts no writer process:
    its phases record no writer's busy time, and its runs are written all the same."""
    phases = tmp_path / "phases.jsonl"
    uri = tiny_sweep(tmp_path, tiny_bert, env={"EMBSVD_PHASES": str(phases)})
    kinds = [json.loads(line)["kind"] for line in phases.read_text().splitlines()]
    assert kinds.count("job") == 2 and "writer" not in kinds
    assert [run["status"] for run in _contents(uri).values()] == ["FINISHED"] * 2


@pytest.mark.slow
def test_runs_handed_over_are_written_after_the_job_process_is_killed(tmp_path):
    """SIGKILL of the job's process right after it handed two runs over: the writer
    reads them from its stdin, writes them, folds the store's write-ahead log into its
    database file and exits."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from embsvd.tracking.store import TrackingStore
        from embsvd.tracking.writer import RunWriter
        from test_writer import open_run
        store = TrackingStore({uri!r}, "writer", journal="wal")
        writer = RunWriter()
        ids = []
        for n in range(2):
            logger = open_run(store, n)
            ids.append(logger.run_id)
            writer.submit(store.uri, logger, "FINISHED")
        print(writer._process.pid, *ids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    job = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert job.returncode == -9, job.stderr
    writer_pid, *run_ids = job.stdout.split()
    deadline = time.monotonic() + 120
    while _alive(int(writer_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)  # the writer ends once it has written what its stdin held
    assert not _alive(int(writer_pid))
    assert_in_the_database_file(tmp_path / "mlflow.db", tmp_path / "copy")
    store = TrackingStore(uri, "writer")
    for n, run_id in enumerate(run_ids):
        assert_written(store, run_id, n)


def assert_in_the_database_file(database: Path, copy: Path) -> None:
    """The store is in WAL mode (``tracking.sqlite_journal``'s default) with its log
    empty: a copy of the database file alone holds what the store holds."""
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    log = Path(f"{database}-wal")
    assert not log.exists() or log.stat().st_size == 0
    copy.mkdir()
    shutil.copyfile(database, copy / "mlflow.db")
    assert _contents(f"sqlite:///{copy / 'mlflow.db'}") == _contents(f"sqlite:///{database}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended
        return stat.read().split(") ")[1][0] != "Z"


@pytest.mark.slow
def test_a_sweep_writes_the_same_runs_with_and_without_the_writer(tmp_path, tiny_bert):
    """The same sweep with ``tracking.background_writes`` on and off: the same runs,
    metrics, tags and artifacts."""
    stores = {}
    for background in ("true", "false"):
        (tmp_path / background).mkdir()
        uri = tiny_sweep(
            tmp_path / background,
            tiny_bert,
            f"tracking.background_writes={background}",
            "tracking.writer_min_jobs=0",  # two jobs: fewer than a writer pays back
            env={"EMBSVD_CACHE_DIR": str(tmp_path / "cache")},  # converted once for both
        )
        stores[background] = _contents(uri)
        assert_in_the_database_file(
            tmp_path / background / "mlflow.db", tmp_path / background / "copy"
        )
    assert len(stores["true"]) == 2
    for name, run in stores["true"].items():
        other = stores["false"][name]
        assert run["status"] == other["status"] == "FINISHED"
        assert run["metrics"] == other["metrics"]
        assert run["artifacts"] == other["artifacts"]
        differ = {
            k
            for k in run["tags"].keys() | other["tags"].keys()
            if run["tags"].get(k) != other["tags"].get(k)
        }
        # the overrides name background_writes; the sweep id names its folder
        assert differ == {"embsvd.overrides", "embsvd.sweep_id"}, differ


def _contents(uri: str) -> dict[str, dict]:
    """Each child run by name: its status, metrics, artifacts and the tags that do not
    name a process, a time or a run id."""
    client = MlflowClient(uri)
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    found = {}
    for run in client.search_runs([experiment.experiment_id]):
        if run.data.tags.get("embsvd.role") == "sweep":
            continue
        varying = ("embsvd.pid", "embsvd.process_start", "mlflow.parentRunId", "embsvd.host")
        tags = {k: v for k, v in run.data.tags.items() if k not in varying}
        tags.pop("embsvd.sweep_dir", None)
        tags.pop("embsvd.note", None)  # names the run id
        artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id))
        found[run.info.run_name] = json.loads(
            json.dumps(
                {
                    "status": run.info.status,
                    "metrics": run.data.metrics,
                    "tags": tags,
                    "artifacts": artifacts,
                },
                sort_keys=True,
            )
        )
    return found
