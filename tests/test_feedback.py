"""What the console shows while embsvd works: a single run's report, a sweep's progress
line per job (one process and joblib's workers), a failure's traceback once, Ctrl-C in one
line, a short group's warning once per sweep, and what ``make setup`` says it does.

Jobs run for real: in this process on a tiny checkpoint into a real sqlite store, or as
``experiments/run.py`` in a subprocess, as a user types it."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from embsvd.pipeline import SweepTracking, run_job
from embsvd.pipeline import job as job_module
from embsvd.pipeline.job import SWEEP_STATE, log_to_files, warn_once
from embsvd.pipeline.report import mlflow_ui_command
from embsvd.pipeline.sweeps import duration, progress_line, start_progress
from embsvd.tracking.contract import Tag
from tests.blocking import wait_for_file
from tests.conftest import PROJECT_ROOT, with_ctrl_c
from tests.test_pipeline import job_config, runs_of
from tests.test_sweeps import blocked_at, store_uri, sweep_command, tiny_model

# the tiny BERT's vocabulary has 8 of the 27 EU countries; eu_countries' size is 10
SHORT_EU = "eu_countries: 8 of its 27 words (size 10)"
TRACEBACK = "Traceback (most recent call last)"


# --- a single run's report -------------------------------------------------------------------


def test_a_single_run_reports_its_table_id_store_and_the_ui_command(
    tiny_bert, session_store, capsys
):
    cfg = job_config(tiny_bert, session_store, "report-one", "analysis.figures=false")
    run_job(cfg)
    SweepTracking().on_run_end(config=cfg)

    out = capsys.readouterr().out
    _, [run] = runs_of(session_store, "report-one")
    header, rule, row = out.strip().splitlines()[:3]
    assert header.split()[:2] == ["run", "status"] and set(rule) == {"-", " "}
    assert row.startswith(f"{run.info.run_name}  FINISHED  eu_countries=")
    assert (
        f"Run FINISHED: {run.info.run_name}, run {run.info.run_id} in {session_store}\n"
        f"Open the MLflow UI on this store:\n  {mlflow_ui_command(session_store)}"
    ) in out


def test_a_failed_single_run_points_at_its_error_txt(tiny_bert, session_store, capsys):
    cfg = job_config(tiny_bert, session_store, "report-failed", "model.matrix=output")
    with pytest.raises(ValueError, match="has no output matrix"):
        run_job(cfg)
    SweepTracking().on_run_end(config=cfg)

    out = capsys.readouterr().out
    _, [run] = runs_of(session_store, "report-failed")
    assert f"{run.info.run_name}  FAILED" in out
    assert (
        f"Run FAILED: {run.info.run_name}, run {run.info.run_id} in {session_store}; its "
        "error and traceback are in the run's error.txt"
    ) in out


def test_a_skipped_single_run_names_the_run_with_its_config(tiny_bert, session_store, capsys):
    cfg = job_config(
        tiny_bert, session_store, "report-skip", "analysis=fast", "tracking.skip_existing=true"
    )
    run_job(cfg)
    capsys.readouterr()
    assert run_job(cfg) is None
    SweepTracking().on_run_end(config=cfg)

    _, [run] = runs_of(session_store, "report-skip")
    assert capsys.readouterr().out == (
        f"Skipped {run.info.run_name}: run {run.info.run_id} has its config\n"
    )


def test_a_job_refused_before_its_run_opened_reports_nothing(tiny_bert, session_store, capsys):
    cfg = job_config(tiny_bert, session_store, "report-refused", "target=planets")
    with pytest.raises(ValueError, match="target: 'planets' is not one of"):
        run_job(cfg)
    SweepTracking().on_run_end(config=cfg)
    assert capsys.readouterr().out == ""  # Hydra prints why


# --- a sweep's progress line -------------------------------------------------------------------


def job_end(sweep_dir: Path, num: int, status: JobStatus, value: object = None) -> JobReturn:
    """What Hydra hands ``on_job_end`` for job ``num`` of the sweep in ``sweep_dir``."""
    job_return = JobReturn(overrides=[f"target=t{num}"], status=status)
    job_return.return_value = value
    return job_return


def sweep_job_config(sweep_dir: Path, num: int):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "job": {"num": num}}})


TIMES = r"\(elapsed [\d.]+ s(, ETA [\d.]+ s)?\)"


def test_progress_lines_count_the_jobs_that_ended_and_say_what_each_did(tmp_path):
    start_progress(tmp_path, n_jobs=3)

    job_module.last_run.clear()
    job_module.last_run.update(name="digits · raw · tiny")
    finished = progress_line(
        sweep_job_config(tmp_path, 1), job_end(tmp_path, 1, JobStatus.COMPLETED), 1.25
    )
    job_module.last_run.clear()  # refused before its run opened: named by its overrides
    error = ValueError("model.matrix: no output matrix\nsecond line")
    failed = progress_line(
        sweep_job_config(tmp_path, 0), job_end(tmp_path, 0, JobStatus.FAILED, error), 0.5
    )
    job_module.last_run.update(name="digits · centered · tiny", run_id="abc", skipped=True)
    skipped = progress_line(
        sweep_job_config(tmp_path, 2), job_end(tmp_path, 2, JobStatus.COMPLETED), 75
    )

    assert re.fullmatch(rf"\[1/3\] digits · raw · tiny FINISHED in 1\.2 s {TIMES}", finished)
    assert "ETA" in finished
    assert re.fullmatch(
        rf"\[2/3\] target=t0 FAILED in 0\.5 s {TIMES}: ValueError: model\.matrix: no output "
        "matrix",
        failed,
    )
    assert re.fullmatch(
        rf"\[3/3\] digits · centered · tiny SKIPPED in 1 min 15 s {TIMES}: run abc has its "
        "config",
        skipped,
    )
    assert "ETA" not in skipped  # the last job: nothing left
    job_module.last_run.clear()


def test_a_sweep_the_callback_did_not_open_has_no_progress_line(tmp_path):
    job_return = job_end(tmp_path, 0, JobStatus.COMPLETED)
    assert progress_line(sweep_job_config(tmp_path, 0), job_return, 1.0) is None


def test_a_sweep_folder_used_again_starts_its_count_afresh(tmp_path):
    start_progress(tmp_path, n_jobs=2)
    progress_line(sweep_job_config(tmp_path, 0), job_end(tmp_path, 0, JobStatus.COMPLETED), 1)
    start_progress(tmp_path, n_jobs=2)
    again = progress_line(
        sweep_job_config(tmp_path, 0), job_end(tmp_path, 0, JobStatus.COMPLETED), 1
    )
    assert again.startswith("[1/2] ")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0 s"), (59.94, "59.9 s"), (61, "1 min 01 s"), (3599, "59 min 59 s")]
    + [(3600, "1 h 00 min"), (7 * 3600 + 125, "7 h 02 min")],
)
def test_durations_read_as_seconds_minutes_or_hours(seconds, text):
    assert duration(seconds) == text


# --- a short group: warned once per sweep, tagged, min_size -------------------------------------


@pytest.fixture
def in_a_sweep(tmp_path):
    """The Hydra state of a job of a multirun whose folder is ``tmp_path/sweep``."""
    config = OmegaConf.create(
        {"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path / "sweep")}}}
    )
    HydraConfig.instance().cfg = config
    yield tmp_path / "sweep"
    HydraConfig.instance().cfg = None


def test_a_warning_is_given_once_per_sweep_whichever_job_gives_it(in_a_sweep, caplog):
    with caplog.at_level(logging.WARNING, logger="embsvd.pipeline.job"):
        for _ in range(3):  # three jobs, in one process or several: a marker in the folder
            warn_once("short tiny eu_countries", "groups.eu_countries keeps 8")
        warn_once("short tiny digits", "groups.digits keeps 9")

    assert [r.getMessage() for r in caplog.records] == [
        "groups.eu_countries keeps 8",
        "groups.digits keeps 9",
    ]
    assert len(list((in_a_sweep / SWEEP_STATE / "warned").iterdir())) == 2


def test_a_short_group_is_tagged_and_warned_with_what_it_dropped(tiny_bert, session_store, caplog):
    cfg = job_config(tiny_bert, session_store, "short-group", "analysis=fast")
    with caplog.at_level(logging.WARNING, logger="embsvd.pipeline.job"):
        run_job(cfg)

    _, [run] = runs_of(session_store, "short-group")
    assert run.data.tags[Tag.WARNING_SHORT_GROUP] == SHORT_EU  # digits keeps all ten
    [warning] = [r.getMessage() for r in caplog.records if "eu_countries" in r.getMessage()]
    assert warning.startswith(
        "groups.eu_countries keeps 8 of its 27 words (size 10) for model tiny_bert; dropped: "
        "'Netherlands' ('[UNK]'): unknown token [UNK];"
    )
    assert warning.endswith(
        "Its runs are tagged embsvd.warning.short_group; groups.eu_countries.min_size=<n> "
        "makes fewer than n an error"
    )


def test_min_size_fails_the_run_naming_the_group_kept_and_dropped_words(tiny_bert, session_store):
    cfg = job_config(
        tiny_bert, session_store, "min-size", "analysis=fast", "groups.eu_countries.min_size=9"
    )
    with pytest.raises(ValueError, match="fewer than groups.eu_countries.min_size=9"):
        run_job(cfg)

    _, [run] = runs_of(session_store, "min-size")
    assert run.info.status == "FAILED"
    error = run.data.tags[Tag.ERROR]
    assert error.startswith(
        "ValueError: groups.eu_countries: keeps 8 of its 27 words (size 10) for model "
        "tiny_bert, fewer than groups.eu_countries.min_size=9; kept: France, Germany, Italy, "
        "Spain, Portugal, Greece, Austria, Sweden; dropped: 'Netherlands'"
    )


# --- a failure's traceback: the log file, not the console twice ---------------------------------


def test_a_traceback_goes_to_the_log_files_and_not_the_console(tmp_path):
    root = logging.getLogger()
    log_file = logging.FileHandler(tmp_path / "job.log")
    console = logging.StreamHandler(console_text := _Text())
    root.addHandler(log_file)
    root.addHandler(console)
    try:
        try:
            raise ValueError("groups.digits: only 1 of 3 words")
        except ValueError:
            log_to_files("job digits failed", exc_info=True)
    finally:
        root.removeHandler(log_file)
        root.removeHandler(console)
        log_file.close()

    logged = (tmp_path / "job.log").read_text()
    assert logged.startswith(f"job digits failed\n{TRACEBACK}")
    assert logged.rstrip().endswith("ValueError: groups.digits: only 1 of 3 words")
    assert console_text.getvalue() == ""


class _Text:
    """A text stream for a logging handler."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return "".join(self.parts)


# --- make setup ----------------------------------------------------------------------------------


def test_make_setup_says_each_step_before_it_runs():
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    planned = subprocess.run(
        ["make", "--dry-run", "--always-make", "setup"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()

    steps = [line for line in planned if re.match(r"echo \"setup \d/5: ", line)]
    assert [re.match(r'echo "setup (\d)/5: ', s).group(1) for s in steps] == list("12345")
    commands = [line for line in planned if "pip install" in line or "-m venv" in line]
    # every step's line comes before its command
    for step, command in zip(steps, commands, strict=True):
        assert planned.index(step) < planned.index(command)
    assert "torch==" in steps[2] and "torch==" in commands[2]


# --- whole commands, as a user types them (subprocesses) -----------------------------------------


@pytest.fixture
def fresh_store(tmp_path: Path, migrated_store_file: Path) -> str:
    (tmp_path / "store").mkdir()
    shutil.copyfile(migrated_store_file, tmp_path / "store" / "mlflow.db")
    return store_uri(tmp_path)


def run_command(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        arguments,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )


def single_run_command(tmp_path: Path, *overrides: str) -> list[str]:
    command = sweep_command(tmp_path, *overrides)
    command.remove("-m")
    return [*command, f"hydra.run.dir={tmp_path / 'run'}"]


@pytest.mark.slow
def test_a_failed_single_run_prints_its_traceback_once(tiny_bert, tmp_path, fresh_store):
    done = run_command(
        tmp_path,
        *single_run_command(
            tmp_path, *tiny_model(tiny_bert), "analysis=fast", "model.matrix=output"
        ),
    )

    assert done.returncode == 1
    assert done.stderr.count(TRACEBACK) == 1, done.stderr  # Hydra's
    assert "Run FAILED: " in done.stdout and "error.txt" in done.stdout
    [log_file] = (tmp_path / "run").glob("*.log")  # the job's log keeps it too
    assert TRACEBACK in log_file.read_text() and "has no output matrix" in log_file.read_text()


@pytest.mark.slow
def test_a_sweep_prints_a_line_per_job_and_each_failure_once(tiny_bert, tmp_path, fresh_store):
    done = run_command(
        tmp_path,
        *sweep_command(
            tmp_path,
            *tiny_model(tiny_bert),
            "analysis=fast",
            "analysis.center=true,false",
            "model.matrix=input,output",
        ),
    )

    assert done.returncode == 1
    lines = [line for line in done.stdout.splitlines() if re.match(r"\[\d/4\] ", line)]
    assert [line[:5] for line in lines] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]
    assert [" FAILED in " in line for line in lines] == [False, True, False, True]
    error = f"ValueError: model.matrix: the checkpoint in {tiny_bert} has no output matrix"
    assert all(f"): {error}: no tensor named lm_head.weight" in line for line in lines[1::2])
    assert done.stderr.count(TRACEBACK) == 1, done.stderr  # Hydra's, of the first failure
    for job in ("1", "3"):  # each failed job's log file keeps its traceback
        [log_file] = (tmp_path / "sweep" / job).glob("*.log")
        assert TRACEBACK in log_file.read_text()
    # the short group: one warning for the sweep, a tag on each run that read the checkpoint
    assert done.stdout.count("groups.eu_countries keeps 8 of its 27 words") == 1
    client = MlflowClient(fresh_store)
    runs = client.search_runs([client.get_experiment_by_name("embsvd").experiment_id])
    finished = [r for r in runs if r.info.status == "FINISHED" and Tag.JOB_NUM in r.data.tags]
    assert len(finished) == 2
    assert all(r.data.tags[Tag.WARNING_SHORT_GROUP] == SHORT_EU for r in finished)


@pytest.mark.slow
def test_joblib_workers_print_the_progress_counted_across_them(tiny_bert, tmp_path, fresh_store):
    done = run_command(
        tmp_path,
        *sweep_command(
            tmp_path,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            *tiny_model(tiny_bert),
            "analysis=fast",
            "analysis.center=true,false",
            "target=digits,eu_countries",
        ),
    )

    assert done.returncode == 0, done.stderr[-3000:]
    counts = re.findall(r"^\[(\d)/4\] .* FINISHED in ", done.stdout, flags=re.MULTILINE)
    assert sorted(counts) == ["1", "2", "3", "4"]  # each count once, whichever worker
    assert done.stdout.count("groups.eu_countries keeps 8 of its 27 words") == 1


def interrupted(tmp_path: Path, command: list[str], block: Path, point: str, job: int):
    """Start ``command``, wait until it is paused at ``point`` of job ``job``, press Ctrl-C."""
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(PROJECT_ROOT)},
        preexec_fn=with_ctrl_c,
    )
    wait_for_file(block / f"{point}.{job}", 240, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


@pytest.mark.slow
def test_ctrl_c_in_a_single_run_prints_one_line(tiny_bert, tmp_path, fresh_store):
    block = tmp_path / "block"
    command = single_run_command(
        tmp_path, *tiny_model(tiny_bert), "analysis=fast", *blocked_at(block, "before_close")
    )

    returncode, out, err = interrupted(tmp_path, command, block, "before_close", 0)

    assert returncode == 130
    client = MlflowClient(fresh_store)
    [run] = client.search_runs([client.get_experiment_by_name("embsvd").experiment_id])
    assert run.info.status == "KILLED"
    assert TRACEBACK not in err
    assert (
        err.splitlines()[-1] == f"interrupted: run {run.info.run_id} ({run.info.run_name}) KILLED"
    )


@pytest.mark.slow
def test_ctrl_c_between_the_jobs_of_a_sweep_prints_one_line(tiny_bert, tmp_path, fresh_store):
    block = tmp_path / "block"
    command = sweep_command(
        tmp_path,
        *tiny_model(tiny_bert),
        "analysis=fast",
        "analysis.center=true,false",
        *blocked_at(block, "job_start", job=1),
    )

    returncode, out, err = interrupted(tmp_path, command, block, "job_start", 1)

    assert returncode != 0
    assert TRACEBACK not in err
    assert re.search(r"^interrupted: sweep \S+ KILLED$", err, flags=re.MULTILINE), err
    assert "Sweep KILLED: 1 runs under parent run" in out
