"""The ``embsvd`` command as a user types it: ``embsvd run -m`` sweeps the tiny checkpoint
into a project's own store (found from a subfolder), and ``sweeps``, ``export``,
``figures`` and ``ui`` read that store back. Newer sweeps planted beside the real one (one
still running, one whose runs all failed) are what the default figures selection must
pass over and name."""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from embsvd.pipeline import app, cli
from embsvd.pipeline.job import run_job
from embsvd.pipeline.report import mlflow_ui_command
from embsvd.tracking.contract import SWEEP_ROLE, Tag
from embsvd.tracking.reading import SweepSelection, latest_sweep, list_sweeps, read_sweep
from tests.conftest import PROJECT_ROOT, write_tiny_bert
from tests.test_mlflow_ui import QUIET_SERVER, free_port, stop_server, wait_for_health

EMBSVD = Path(sys.executable).parent / "embsvd"  # the console script of this environment
CENTER = ("true", "false")


@dataclass(frozen=True)
class Project:
    root: Path  # the project: conf/ and mlruns/
    work: Path  # a subfolder of it, where the commands start
    uri: str  # its default store
    sweep_id: str  # the real sweep's
    parent_run_id: str
    child_run_ids: tuple[str, ...]
    sweep_output: str  # what `embsvd run -m` printed

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)


def embsvd(*args: str, cwd: Path, env: dict[str, str] | None = None, script: Path = EMBSVD):
    """The installed console script, in a subprocess, as a user runs it."""
    return subprocess.run(
        [str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""} if env is None else env,
    )


def tiny_sweep(tiny_bert: Path) -> list[str]:
    return [
        "-m",
        "model=local",
        f"model.path={tiny_bert}",
        "model.name=tiny_bert",
        "analysis=fast",
        "analysis.figures=false",
        f"analysis.center={','.join(CENTER)}",
    ]


def plant_sweep(client: MlflowClient, sweep_id: str, parent: str, children: list[str]) -> str:
    """A sweep parent tagged ``sweep_id`` ending ``parent`` (RUNNING: left open), with a
    child per status in ``children``; started after every sweep before it."""
    experiment_id = client.get_experiment_by_name("embsvd").experiment_id
    started = int(time.time() * 1000)
    run = client.create_run(
        experiment_id,
        start_time=started,
        tags={Tag.ROLE: SWEEP_ROLE, Tag.SWEEP_ID: sweep_id},
        run_name=f"sweep/planted/{sweep_id}",
    )
    for job_num, status in enumerate(children):
        child = client.create_run(
            experiment_id,
            start_time=started + 1 + job_num,
            tags={Tag.PARENT_RUN_ID: run.info.run_id, Tag.JOB_NUM: str(job_num)},
            run_name=f"m/digits/{('centered', 'raw')[job_num]}",  # a name figures can read
        )
        client.log_metric(child.info.run_id, "n_tokens", 10)
        if status != "RUNNING":
            client.set_terminated(child.info.run_id, status)
    if parent != "RUNNING":
        client.set_terminated(run.info.run_id, parent)
    while int(time.time() * 1000) <= started + len(children):
        time.sleep(0.001)  # the next sweep starts later: start times order the sweeps
    return run.info.run_id


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path) -> Project:
    """A project (the checkout's conf/ and a store) swept by `embsvd run -m` from a
    subfolder; then two newer sweeps planted: all FAILED, and one still RUNNING."""
    top = tmp_path_factory.mktemp("cli")
    root = top / "project"
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf")
    (root / "mlruns").mkdir()
    shutil.copyfile(migrated_store_file, root / "mlruns" / "mlflow.db")
    work = root / "notes" / "today"
    work.mkdir(parents=True)
    write_tiny_bert(top / "tiny-bert")

    done = embsvd("run", *tiny_sweep(top / "tiny-bert"), cwd=work)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(uri)
    [parent] = client.search_runs(
        [client.get_experiment_by_name("embsvd").experiment_id], f"tags.`{Tag.ROLE}` = 'sweep'"
    )
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`{Tag.PARENT_RUN_ID}` = '{parent.info.run_id}'"
    )
    plant_sweep(client, "failed_sweep", "FAILED", ["FAILED", "FAILED"])
    plant_sweep(client, "running_sweep", "RUNNING", ["FINISHED", "RUNNING"])
    return Project(
        root=root,
        work=work,
        uri=uri,
        sweep_id=parent.data.tags[Tag.SWEEP_ID],
        parent_run_id=parent.info.run_id,
        child_run_ids=tuple(sorted(c.info.run_id for c in children)),
        sweep_output=done.stdout + done.stderr,
    )


# --- embsvd run --------------------------------------------------------------------------------


@pytest.mark.slow
def test_embsvd_run_sweeps_into_the_project_found_above_the_working_directory(project):
    parent = project.client.get_run(project.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert len(project.child_run_ids) == len(CENTER)
    for run_id in project.child_run_ids:
        child = project.client.get_run(run_id)
        assert child.info.status == "FINISHED"
        assert child.data.tags[Tag.SWEEP_ID] == project.sweep_id
    # Hydra's sweep folder in the project's mlruns/, named as experiments/run.py names it:
    # the job is `run` (its log run.log), and each run records its overrides
    [sweep_dir] = (project.root / "mlruns" / "hydra" / "multiruns").glob("*/*")
    assert (sweep_dir / "embsvd_sweep_id").read_text().strip() == project.sweep_id
    assert sorted(p.name for p in sweep_dir.glob("*/run.log")) == ["run.log"] * len(CENTER)
    first = project.client.get_run(project.child_run_ids[0]).data.tags[Tag.OVERRIDES]
    assert "analysis.center=" in first and "model=local" in first
    assert not list(sweep_dir.glob("*/.hydra"))  # no per-job YAML files unless asked
    assert f"Sweep FINISHED: {len(CENTER)} runs under parent run" in project.sweep_output
    assert not list(project.work.iterdir())  # nothing where the command started


@pytest.mark.slow
def test_embsvd_run_shows_the_config_and_hydras_help_as_the_script_does(project):
    shown = embsvd("run", "--cfg", "job", "target=eu_countries", cwd=project.work)
    assert shown.returncode == 0, shown.stderr
    script = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "experiments" / "run.py"), "--cfg", "job"]
        + ["target=eu_countries"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout == script.stdout  # the same conf/, composed the same way
    helped = embsvd("run", "--help", cwd=project.work)
    assert helped.returncode == 0 and "run is powered by Hydra" in helped.stdout
    assert "model: " in helped.stdout  # the config groups of the project's conf/


def test_a_task_keeps_its_scripts_job_name_through_a_launchers_pickle():
    """joblib and submitit send the task to other processes; Hydra names the job after it."""
    task = pickle.loads(pickle.dumps(app.Task("run", run_job)))
    assert task.__module__ == "run" and task.function is run_job
    assert {name: a.config_name for name, a in app.APPS.items()} == {
        "run": "config",
        "figures": "figures",
    }


def test_run_and_the_store_commands_outside_a_project_say_where_they_looked(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for command in (["run", "--cfg", "job"], ["figures"]):
        assert cli.main(command) == 1
        err = capsys.readouterr().err
        assert f"embsvd {command[0]}: no project folder: neither {tmp_path.resolve()} nor a " in err
        assert "holds conf/config.yaml. Run the command inside a project" in err
    assert cli.main(["sweeps"]) == 1
    err = capsys.readouterr().err
    assert "embsvd sweeps: no project folder" in err
    assert "or name the store with --tracking-uri (or MLFLOW_TRACKING_URI)" in err


def test_a_project_without_the_figures_config_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("target: digits\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["figures"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path.resolve() / 'conf' / 'figures'}.yaml: no such file" in err


# --- embsvd sweeps -----------------------------------------------------------------------------


def table_rows(stdout: str) -> list[list[str]]:
    """The listing's rows below its header, split into cells: the marker (``*`` or ``""``),
    id, parent run, status, date, time, FINISHED, FAILED, KILLED, RUNNING, experiment."""
    header, *lines = stdout.splitlines()
    assert header.split()[:4] == ["sweep", "id", "parent", "run"]
    rows = []
    for line in lines:
        if re.match(r"\d+ sweeps? in ", line):  # the line under the table
            return rows
        rows.append([line[:1].strip(), *line[1:].split()])
    raise AssertionError(f"no line ends the table:\n{stdout}")


@pytest.mark.slow
def test_sweeps_lists_newest_first_with_status_start_and_runs_by_status(project):
    done = embsvd("sweeps", cwd=project.work)

    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header == ["sweep", "id", "parent", "run", "status", "started"] + [
        "FINISHED",
        "FAILED",
        "KILLED",
        "RUNNING",
        "experiment",
    ]
    rows = table_rows(done.stdout)
    assert [(r[1], r[3], r[6:10]) for r in rows] == [
        ("running_sweep", "RUNNING", ["1", "0", "0", "1"]),
        ("failed_sweep", "FAILED", ["0", "2", "0", "0"]),
        (project.sweep_id, "FINISHED", [str(len(CENTER)), "0", "0", "0"]),
    ]
    assert [r[0] for r in rows] == ["", "", "*"]  # what `embsvd figures` draws by default
    assert rows[2][2] == project.parent_run_id and rows[2][10] == "embsvd"
    started = time.strptime(f"{rows[2][4]} {rows[2][5]}", "%Y-%m-%d %H:%M:%S")
    assert abs(time.mktime(started) - time.time()) < 3600
    assert f"3 sweeps in {project.uri}, newest first" in done.stdout
    assert f"* what `embsvd figures` draws without a selection: {project.sweep_id}" in done.stdout


@pytest.mark.slow
def test_sweeps_takes_the_store_and_experiment_options(project, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not a project: the store is named
    options = ["--tracking-uri", project.uri]
    assert cli.main(["sweeps", *options, "--experiment", "embsvd", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert [r[1] for r in table_rows(out)] == ["running_sweep"]
    assert "1 sweep in" in out and "(--limit 0 lists all)" in out
    assert cli.main(["sweeps", *options, "--experiment", "nope"]) == 1
    err = capsys.readouterr().err
    assert "embsvd sweeps: --experiment='nope': no such experiment in" in err
    assert "(it has Default, embsvd)" in err
    assert [s.label for s in list_sweeps(project.uri)] == [
        "running_sweep",
        "failed_sweep",
        project.sweep_id,
    ]


def test_sweeps_of_an_empty_store_says_how_to_start_one(tmp_path, migrated_store_file, capsys):
    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli.main(["sweeps", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out == f"no sweep in {uri}: start one with `embsvd run -m ...`\n"


# --- embsvd export -----------------------------------------------------------------------------


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.slow
def test_export_csv_is_one_row_per_run_with_the_stores_latest_values(project):
    exports = project.root / "exports"
    exports.mkdir()
    done = subprocess.run(  # the module, as `python -m` runs it
        [sys.executable, "-m", "embsvd.pipeline.cli", "export", project.sweep_id]
        + ["--output", "runs.csv"],
        cwd=exports,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )

    assert done.returncode == 0, done.stderr
    file = exports / "runs.csv"
    assert f"runs.csv: 2 runs of sweep {project.sweep_id} (FINISHED; 2 FINISHED)" in done.stdout
    assert "step series left out: explained_variance_ratio, singular_value" in done.stdout
    rows = read_csv(file.read_text())
    assert sorted(r["run_id"] for r in rows) == list(project.child_run_ids)
    columns = list(rows[0])
    assert columns[:8] == [
        "sweep_id",
        "run_id",
        "run_name",
        "experiment",
        "status",
        "start_time",
        "end_time",
        "reused",
    ]
    assert {"metrics.n_tokens", "metrics.s1_share", "metrics.effective_rank"} <= set(columns)
    assert "metrics.singular_value" not in columns  # a step series: its last value misleads
    assert {"params.analysis.center", "tags.embsvd.sweep_id", "tags.embsvd.config_hash"} <= set(
        columns
    )
    prefixes = {c.split(".")[0] for c in columns[8:]}
    assert prefixes == {"metrics", "params", "tags"}
    assert columns[8:] == sorted(columns[8:], key=lambda c: (c.split(".")[0] != "metrics", c))
    for row in rows:
        run = project.client.get_run(row["run_id"])
        assert row["sweep_id"] == project.sweep_id and row["status"] == "FINISHED"
        assert row["run_name"] == run.info.run_name and row["experiment"] == "embsvd"
        assert row["reused"] == "False"
        for key, value in run.data.metrics.items():
            if key not in ("singular_value", "explained_variance_ratio"):
                exported = float(row[f"metrics.{key}"] or "nan")  # nan is written as ''
                assert exported == pytest.approx(value, nan_ok=True), key
        assert all(row[f"params.{k}"] == v for k, v in run.data.params.items())
        assert all(row[f"tags.{k}"] == v for k, v in run.data.tags.items())
    assert {r["params.analysis.center"] for r in rows} == {"True", "False"}


@pytest.mark.slow
def test_export_parquet_holds_the_same_table_with_typed_columns(project, tmp_path, capsys):
    out = tmp_path / "runs.parquet"
    options = ["--tracking-uri", project.uri]
    assert cli.main(["export", project.parent_run_id, *options, "--output", str(out)]) == 0
    assert f"{out}: 2 runs of sweep {project.sweep_id}" in capsys.readouterr().out
    frame = pd.read_parquet(out)
    assert cli.main(["export", project.sweep_id, *options, "--output", "-"]) == 0
    from_csv = read_csv(capsys.readouterr().out)
    assert list(frame.columns) == list(from_csv[0])
    assert sorted(frame["run_id"]) == list(project.child_run_ids)
    assert frame["metrics.n_tokens"].dtype == "float64"
    assert isinstance(frame["start_time"].dtype, pd.DatetimeTZDtype)
    assert str(frame["start_time"].dt.tz) == "UTC"
    assert frame["reused"].dtype == bool
    by_run = {r["run_id"]: r for r in from_csv}
    for _, row in frame.iterrows():
        assert row["metrics.s1_share"] == pytest.approx(
            float(by_run[row.run_id]["metrics.s1_share"])
        )
        assert row["params.model.name"] == "tiny_bert"
        started = project.client.get_run(row["run_id"]).info.start_time
        assert row["start_time"] == pd.Timestamp(started, unit="ms", tz="UTC")


@pytest.mark.slow
def test_export_of_a_failed_sweep_keeps_every_run(project, tmp_path, capsys):
    out = tmp_path / "failed.csv"
    options = ["--tracking-uri", project.uri, "--output", str(out)]
    assert cli.main(["export", "failed_sweep", *options]) == 0
    rows = read_csv(out.read_text())
    assert [r["status"] for r in rows] == ["FAILED", "FAILED"]
    assert [r["tags.embsvd.job_num"] for r in rows] == ["0", "1"]  # job order


@pytest.mark.slow
def test_export_of_an_unknown_sweep_lists_the_latest_with_ids_and_statuses(project, capsys):
    assert cli.main(["export", "no_such_sweep", "--tracking-uri", project.uri]) == 1
    err = capsys.readouterr().err
    assert "embsvd export: 'no_such_sweep': no sweep with this id or parent run id in" in err
    assert (
        "recent sweeps: running_sweep (RUNNING; 1 FINISHED, 1 RUNNING), "
        f"failed_sweep (FAILED; 2 FAILED), {project.sweep_id} (FINISHED; 2 FINISHED)"
    ) in err
    child = project.child_run_ids[0]
    assert cli.main(["export", child, "--tracking-uri", project.uri]) == 1
    assert f"run {child} is not a sweep's parent run" in capsys.readouterr().err
    assert cli.main(["export", "x", "--format", "parquet", "--output", "-"]) == 1
    assert "only CSV goes to stdout" in capsys.readouterr().err


# --- the default figures selection --------------------------------------------------------------


@pytest.mark.slow
def test_the_default_selection_passes_over_newer_sweeps_and_names_them(project):
    choice = latest_sweep(project.uri)
    sweep = read_sweep(project.uri, SweepSelection())

    assert choice.taken.label == sweep.name == project.sweep_id
    assert [s.label for s in choice.skipped] == ["running_sweep", "failed_sweep"]
    assert choice.describe() == SKIPPED.format(project=project)
    assert sorted(r.run_id for r in sweep.runs) == list(project.child_run_ids)
    # the same figure set, however the sweep was chosen
    assert sweep.selection == f"sweep {project.sweep_id!r} (parent run {project.parent_run_id})"
    # drawing the finished runs of a sweep in progress: the running sweep is the latest
    running = latest_sweep(project.uri, include_running=True)
    assert running.describe() == (
        f"sweep running_sweep (parent run {running.taken.parent_run_id}): the latest sweep "
        "(it has a FINISHED run)"
    )
    drawn = read_sweep(project.uri, SweepSelection(include_running=True))
    assert drawn.name == "running_sweep"
    assert drawn.left_out == (("m/digits/raw", "RUNNING"),)


SKIPPED = (
    "sweep {project.sweep_id} (parent run {project.parent_run_id}): the latest sweep with a "
    "FINISHED run and every run ended; newer sweeps skipped: running_sweep (RUNNING; "
    "1 FINISHED, 1 RUNNING): runs not ended, failed_sweep (FAILED; 2 FAILED): no FINISHED run"
)


@pytest.mark.slow
def test_embsvd_figures_says_which_sweep_it_took_and_which_it_skipped(project, tmp_path):
    done = embsvd("figures", f"output_dir={tmp_path}", "formats=[png]", "dpi=40", cwd=project.work)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first, *_ = [line for line in done.stdout.splitlines() if not line.startswith("[")]
    assert first == "figures of " + SKIPPED.format(project=project)  # said before drawing
    assert (
        f"files from 2 runs of sweep {project.sweep_id!r} (parent run {project.parent_run_id}) "
        f"in {tmp_path / project.sweep_id}"
    ) in done.stdout
    manifest = json.loads((tmp_path / project.sweep_id / "sweep.json").read_text())
    assert manifest["parent_run_id"] == project.parent_run_id


def test_a_store_with_no_sweep_to_draw_lists_its_sweeps_with_ids_and_statuses(
    tmp_path, migrated_store_file
):
    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("embsvd")
    failed = plant_sweep(client, "all_failed", "FAILED", ["FAILED", "KILLED"])
    plant_sweep(client, "in_progress", "RUNNING", ["FINISHED", "RUNNING"])

    with pytest.raises(ValueError) as refused:
        read_sweep(uri, SweepSelection())

    message = str(refused.value)
    assert message.startswith(
        f"no sweep in {uri} has a FINISHED run and no run still going (looked at the latest "
        "2): in_progress (RUNNING; 1 FINISHED, 1 RUNNING), all_failed (FAILED; 1 FAILED, "
        "1 KILLED). Choose one with sweep.sweep_id=<id> (or sweep.parent_run_id=<run id>)"
    )
    assert "sweep.include_running=true" in message and "`embsvd runs reconcile`" in message
    # a selection by id is not the default: it reads the sweep it names, and says why not
    with pytest.raises(ValueError, match=r"no FINISHED run to draw \(m/digits/centered FAILED"):
        read_sweep(uri, SweepSelection(parent_run_id=failed))


# --- embsvd ui ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_embsvd_ui_serves_the_store_on_127_0_0_1_until_stopped(project, tmp_path):
    port = free_port()
    log_path = tmp_path / "ui.log"
    with open(log_path, "wb") as log:
        ui = subprocess.Popen(
            [str(EMBSVD), "ui", "--port", str(port), "--", "--workers", "1"],
            cwd=project.work,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_TRACKING_URI": "", **QUIET_SERVER},
            start_new_session=True,
        )
    try:
        base_url = f"http://127.0.0.1:{port}/"
        wait_for_health(ui, base_url, log_path)
        query = "api/2.0/mlflow/experiments/get-by-name?experiment_name=embsvd"
        with urllib.request.urlopen(base_url + query, timeout=10) as reply:
            experiment = json.load(reply)["experiment"]
        request = urllib.request.Request(
            base_url + "api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            run_ids = {r["info"]["run_id"] for r in json.load(reply)["runs"]}
        assert {project.parent_run_id, *project.child_run_ids} <= run_ids
    finally:
        stop_server(ui)
    assert ui.returncode is not None  # stopped: the UI was this process (no orphan left)
    printed = log_path.read_text(errors="replace")
    assert f"MLflow UI on {project.uri}: http://127.0.0.1:{port} (Ctrl-C stops it)" in printed
    assert f"$ {mlflow_ui_command(project.uri, port)} --workers 1" in printed


def test_embsvd_ui_of_a_tracking_server_names_the_servers_own_ui(capsys):
    uri = "http://alice:secret@tracking.example:5000"
    assert cli.main(["ui", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "the store is a tracking server: open http://alice:***@tracking.example:5000" in out
    assert "secret" not in out


def test_embsvd_ui_refuses_a_missing_store_and_any_host_but_127_0_0_1(
    tmp_path, migrated_store_file, capsys
):
    missing = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli.main(["ui", "--tracking-uri", missing]) == 1
    assert (
        f"embsvd ui: --tracking-uri {missing}: no such sqlite database" in capsys.readouterr().err
    )
    assert not (tmp_path / "mlflow.db").exists()
    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    assert cli.main(["ui", "--tracking-uri", missing, "--", "--host", "0.0.0.0"]) == 1
    err = capsys.readouterr().err
    assert "embsvd ui: the UI listens on 127.0.0.1 only: it has no login" in err
    assert "ssh -N -L 5000:127.0.0.1:5000 <host>" in err
