"""Real multiruns: ``experiments/run.py -m`` in a subprocess, as a user types it, into a
fresh sqlite store; the parent run, failures, resume, interrupts and the launchers."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.tracking import MlflowClient

from embsvd import tracking
from embsvd.pipeline import PARENT_RUN_FILE
from embsvd.pipeline.job import sweep_membership
from embsvd.tracking.contract import Tag
from tests.blocking import wait_for_file
from tests.conftest import PROJECT_ROOT, tiny_embeddings, with_ctrl_c, write_tiny_bert
from tests.test_checkpoint import write_hub_cache
from tests.test_pipeline import CONTRACT_ARTIFACTS, EXPLORER, FIGURES, artifact_names

pytestmark = pytest.mark.slow

CONTRACT_METRICS = {
    "singular_value",
    "explained_variance_ratio",
    "singular_value_last_over_first",
    "singular_value_first_over_second",
    "group_mean_corr/digits__eu_countries",
    "group_mean_cos/digits__eu_countries",
    "axis_corr/digits__eu_countries",
    "n_tokens",
    # the checks, on by default
    "s1_share",
    "null/s1_share/percentile",
    "null/group_mean_corr/digits__eu_countries/p_holm",
    "group_mean_corr_centered/digits__eu_countries",
    "null/group_mean_corr_decorrelated/digits__eu_countries/percentile",
    "null/global_share/percentile",
    "stability/axis_cos",
    "interval/singular_value_lo",
    "heldout/subspace_rank_pct_median",
    "confound/spearman_norm",
    "global/group_variance_share",
}


@pytest.fixture(autouse=True)
def fresh_store(tmp_path: Path, migrated_store_file: Path) -> None:
    """Each sweep writes to a store of its own, created without the migrations' wait."""
    (tmp_path / "store").mkdir()
    shutil.copyfile(migrated_store_file, tmp_path / "store" / "mlflow.db")


def sweep_command(tmp_path: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(PROJECT_ROOT / "experiments" / "run.py"),
        "-m",
        f"tracking.uri={store_uri(tmp_path)}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]


def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def run_sweep(tmp_path: Path, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        sweep_command(tmp_path, *overrides),
        cwd=tmp_path,  # not the project: paths must not depend on the working directory
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )


def tiny_model(tiny_bert: Path) -> list[str]:
    return ["model=local", f"model.path={tiny_bert}", "model.name=tiny_bert"]


def parents_and_children(tmp_path: Path):
    store = tracking.TrackingStore(store_uri(tmp_path), "embsvd")
    runs = store.find_runs()
    parents = [r for r in runs if r.tags.get("embsvd.role") == "sweep"]
    children = [r for r in runs if "mlflow.parentRunId" in r.tags]
    return store, parents, children


def read_csv_artifact(client: MlflowClient, run_id: str, path: str) -> list[dict]:
    text = Path(client.download_artifacts(run_id, path)).read_text()
    return list(csv.DictReader(io.StringIO(text)))


def test_a_sweep_starts_with_the_collector_off_and_on_once_its_parent_opened(tiny_bert, tmp_path):
    """``experiments/run.py`` turns the cyclic collector off before its imports and
    Hydra's composition (their full passes cost about 0.4-0.5 s of a run's start); the
    sweep's open settles the heap and turns it on, before any job, wherever the jobs run."""
    probe = tmp_path / "collector.txt"
    done = subprocess.run(
        sweep_command(
            tmp_path,
            *tiny_model(tiny_bert),
            "analysis.figures=false",
            "target=digits,eu_countries",
            "+hydra.callbacks.collector._target_=tests.probes.CollectorState",
            f"+hydra.callbacks.collector.file={probe}",
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(PROJECT_ROOT)},
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert probe.read_text().splitlines() == [
        "start off",
        "multirun_start on",
        *["job_start on", "job_end on"] * 2,
    ]


def test_sweep_jobs_are_children_of_one_parent_run(tiny_bert, tmp_path):
    done = run_sweep(
        tmp_path,
        *tiny_model(tiny_bert),
        "analysis.figures=false",
        "target=digits,eu_countries",
        "analysis.center=true,false",
    )

    assert done.returncode == 0, done.stderr[-3000:]
    store, [parent], children = parents_and_children(tmp_path)
    assert parent.status == "FINISHED"
    assert parent.name == f"sweep/multirun/{tmp_path.name} sweep"
    assert parent.tags["embsvd.sweep_dir"] == str(tmp_path / "sweep")
    assert "target=digits,eu_countries" in parent.tags["embsvd.overrides"]
    assert parent.tags["embsvd.launcher"].endswith("EmbsvdLauncher")  # the default
    assert (tmp_path / "sweep" / PARENT_RUN_FILE).read_text() == parent.run_id
    assert sorted(c.name for c in children) == sorted(
        f"{g} · {c} · tiny_bert" for g in ("digits", "eu_countries") for c in ("centered", "raw")
    )
    # one composition of the config groups, the 4 jobs derived from it, each asked for
    # once (by the launcher: embsvd's sweeper checked them before the sweep)
    assert "composed 4 job configs for 4 requests: Hydra composed 1, 4 derived" in (
        done.stdout + done.stderr
    )
    # the basic launcher runs every job in one process: the checkpoint is read by the first
    by_job = {int(c.tags["embsvd.job_num"]): c for c in children}
    assert [by_job[i].tags["embsvd.checkpoint_cache"] for i in range(4)] == [
        "none",
        "memory",
        "memory",
        "memory",
    ]
    for child in children:
        assert child.status == "FINISHED"
        assert child.tags["mlflow.parentRunId"] == parent.run_id
        assert child.tags["embsvd.sweep_dir"] == str(tmp_path / "sweep")
        assert "model=local" in child.tags["embsvd.overrides"]
        assert f"target={child.tags['embsvd.target_group']}" in child.tags["embsvd.overrides"]
        assert len(child.tags["embsvd.config_hash"]) == 64
        assert child.metrics["n_tokens"] == (10 if "digits" in child.name else 8)
        ordered = {"order.csv"} if "digits" in child.name else set()  # a declared order
        assert artifact_names(store.client, child.run_id) - {"git_diff.patch"} == (
            CONTRACT_ARTIFACTS | ordered
        )
    assert sorted(c.tags["embsvd.job_num"] for c in children) == ["0", "1", "2", "3"]
    assert len({c.tags["embsvd.config_hash"] for c in children}) == 4
    # the parent's summary of its children
    assert parent.metrics["n_children"] == 4 and parent.metrics["n_finished"] == 4
    assert parent.metrics["n_failed"] == 0 and parent.metrics["n_skipped"] == 0
    rows = read_csv_artifact(store.client, parent.run_id, "children.csv")
    assert sorted(r["run_id"] for r in rows) == sorted(c.run_id for c in children)
    assert {r["status"] for r in rows} == {"FINISHED"}
    summary = Path(store.client.download_artifacts(parent.run_id, "sweep_summary.txt"))
    assert "eu_countries · raw · tiny_bert" in summary.read_text()
    # printed at the end: the table, the outcome and the UI command
    assert "eu_countries · raw · tiny_bert" in done.stdout
    assert f"Sweep FINISHED: 4 runs under parent run {parent.run_id}" in done.stdout
    assert f"--backend-store-uri {store_uri(tmp_path)}" in done.stdout
    # artifacts live beside the store, not under the working directory
    assert (tmp_path / "store" / "artifacts" / "embsvd").is_dir()
    assert not (tmp_path / "mlruns").exists()


def test_failing_jobs_are_isolated_and_named(tiny_bert, tmp_path):
    # jobs 1 and 3 read an output matrix the tiny BERT does not have, which only loading
    # it can tell (a setting that cannot run refuses the whole sweep: test_validation.py);
    # 0 and 2 are fine
    done = run_sweep(
        tmp_path,
        *tiny_model(tiny_bert),
        "analysis.figures=false",
        "analysis.center=true,false",
        "model.matrix=input,output",
    )

    assert done.returncode != 0
    store, [parent], children = parents_and_children(tmp_path)
    by_status = {
        s: sorted(c.name for c in children if c.status == s) for s in ("FINISHED", "FAILED")
    }
    assert by_status == {
        "FINISHED": ["digits · centered · tiny_bert", "digits · raw · tiny_bert"],
        "FAILED": ["digits · centered · tiny_bert:output", "digits · raw · tiny_bert:output"],
    }
    assert parent.status == "FAILED"
    assert parent.metrics["n_failed"] == 2 and parent.metrics["n_finished"] == 2
    assert not [r for r in store.find_runs() if r.status == "RUNNING"]
    for child in children:
        if child.status == "FAILED":
            assert child.tags["embsvd.error"].startswith(
                "ValueError: model.matrix: the checkpoint in"
            )
            assert "error.txt" in artifact_names(store.client, child.run_id)
            # the command names each failed job with its overrides and error
            job = child.tags["embsvd.job_num"]
            assert f"job #{job} FAILED: {child.name} (" in done.stderr
    rows = read_csv_artifact(store.client, parent.run_id, "children.csv")
    failed_rows = [r for r in rows if r["status"] == "FAILED"]
    assert len(failed_rows) == 2 and all("has no output matrix" in r["error"] for r in failed_rows)
    assert "Sweep FAILED: 4 runs" in done.stdout


def test_resume_runs_only_what_is_missing(tiny_bert, tmp_path):
    common = [*tiny_model(tiny_bert), "analysis.figures=false", "target=digits,eu_countries"]
    first = run_sweep(tmp_path, *common, "analysis.center=true")
    assert first.returncode == 0, first.stderr[-3000:]

    second = run_sweep(
        tmp_path, *common, "analysis.center=true,false", "tracking.skip_existing=true"
    )

    assert second.returncode == 0, second.stderr[-3000:]
    store, parents, children = parents_and_children(tmp_path)
    assert [p.status for p in parents] == ["FINISHED", "FINISHED"]
    old, new = parents
    old_children = [c for c in children if c.tags["mlflow.parentRunId"] == old.run_id]
    new_children = [c for c in children if c.tags["mlflow.parentRunId"] == new.run_id]
    assert sorted(c.name for c in new_children) == [
        "digits · raw · tiny_bert",
        "eu_countries · raw · tiny_bert",
    ]
    assert new.metrics["n_skipped"] == 2 and new.metrics["n_children"] == 2
    # each skipped job names the FINISHED run that has its config
    skipped = {k: v for k, v in new.tags.items() if k.startswith(Tag.SKIPPED)}
    assert sorted(skipped.values()) == sorted(c.run_id for c in old_children)
    assert "skipped, run" in second.stdout
    # exactly one FINISHED run per configuration
    hashes = [c.tags["embsvd.config_hash"] for c in children]
    assert len(hashes) == len(set(hashes)) == 4


def test_interrupted_sweep_closes_every_run(tiny_bert, tmp_path):
    """Ctrl-C while job 1 of 8 has its run open (tests/blocking.py holds the job there
    until the signal is sent): the job's run and the parent end KILLED, job 0's run is
    kept FINISHED, and no other job starts."""
    folder = tmp_path / "block"
    process = subprocess.Popen(
        sweep_command(
            tmp_path,
            *tiny_model(tiny_bert),
            "analysis.figures=false",
            "target=digits,eu_countries",
            "analysis.top_k=1,2,3,4",
            *blocked_at(folder, "before_close", job=1),
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(PROJECT_ROOT)},
        preexec_fn=with_ctrl_c,
    )
    wait_for_file(folder / "before_close.1", 240, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)

    assert process.returncode != 0, out[-3000:] + err[-3000:]
    store, [parent], children = parents_and_children(tmp_path)
    assert parent.status == "KILLED"
    assert [(c.tags["embsvd.job_num"], c.status) for c in children] == [
        ("0", "FINISHED"),
        ("1", "KILLED"),
    ]
    assert children[1].tags["embsvd.error"] == "KeyboardInterrupt: signal SIGINT"
    assert parent.metrics["n_finished"] == 1 and parent.metrics["n_killed"] == 1
    assert not [r for r in store.find_runs() if r.status == "RUNNING"]


def blocked_at(folder: Path, point: str, job: int = 0) -> list[str]:
    """The overrides that pause the sweep at ``point`` of job ``job`` (tests/blocking.py;
    the subprocess needs the project root on PYTHONPATH)."""
    return [
        "+hydra.callbacks.block._target_=tests.blocking.BlockUntilReleased",
        f"+hydra.callbacks.block.folder={folder}",
        f"+hydra.callbacks.block.point={point}",
        f"+hydra.callbacks.block.job={job}",
    ]


def test_a_sweep_whose_parent_cannot_be_opened_stops_before_any_job(tiny_bert, tmp_path):
    (tmp_path / "a_file").write_text("")
    uri = f"sqlite:///{tmp_path / 'a_file' / 'mlflow.db'}"  # a folder that cannot be made

    done = run_sweep(
        tmp_path, *tiny_model(tiny_bert), "analysis.center=true,false", f"tracking.uri={uri}"
    )

    assert done.returncode == 1
    assert (
        f"The sweep did not start: its parent run could not be opened in {uri}: "
        f"FileExistsError: [Errno 17] File exists: '{tmp_path / 'a_file'}'. No job was run"
    ) in done.stderr
    assert not (tmp_path / "sweep" / PARENT_RUN_FILE).exists()
    assert not (tmp_path / "sweep" / "0").exists()  # no job was launched


@pytest.fixture
def in_multirun(tmp_path):
    """Enter the Hydra state of a job of a multirun whose folder is ``tmp_path/sweep``,
    composed with the given overrides."""

    def enter(*overrides: str) -> None:
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            config = compose("config", overrides=list(overrides), return_hydra_config=True)
        config.hydra.mode = RunMode.MULTIRUN
        config.hydra.sweep.dir = str(tmp_path / "sweep")
        (tmp_path / "sweep").mkdir(exist_ok=True)
        HydraConfig.instance().set_config(config)

    yield enter
    HydraConfig.instance().cfg = None


def test_a_job_of_a_sweep_without_its_parent_run_refuses_to_run(in_multirun, tmp_path):
    in_multirun()
    with pytest.raises(FileNotFoundError, match="mlflow_parent_run_id is missing: this job") as e:
        sweep_membership()
    assert "leave the callback out with ~hydra.callbacks.sweep_tracking" in str(e.value)
    (tmp_path / "sweep" / PARENT_RUN_FILE).write_text("abc")
    assert sweep_membership() == ("abc", None)


def test_a_multirun_without_the_sweep_callback_is_a_plain_one(in_multirun):
    in_multirun("~hydra.callbacks.sweep_tracking")
    assert sweep_membership() == (None, None)


def test_joblib_sweep_over_both_bundled_checkpoints(tmp_path, smollm2):
    """The issue's sweep: 2 checkpoints x 2 groups x centering, 2 parallel workers."""
    done = run_sweep(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "model=all_minilm_l6_v2,smollm2_135m",
        "target=digits,eu_countries",
        "analysis.center=true,false",
        timeout=600,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    store, [parent], children = parents_and_children(tmp_path)
    assert parent.status == "FINISHED"
    assert parent.tags["embsvd.launcher"].endswith("JoblibLauncher")
    assert len(children) == 8
    assert {c.status for c in children} == {"FINISHED"}
    assert {c.tags["mlflow.parentRunId"] for c in children} == {parent.run_id}
    assert (
        len(
            {
                (c.tags["embsvd.model"], c.tags["embsvd.target_group"], c.tags["embsvd.center"])
                for c in children
            }
        )
        == 8
    )
    for child in children:
        assert set(child.metrics) >= CONTRACT_METRICS
        digits = child.tags["embsvd.target_group"] == "digits"  # a declared linear order
        assert ("order/spearman" in child.metrics) == digits
        assert child.metrics["n_tokens"] == 10
        history = store.metric_history(child.run_id, "singular_value")
        assert len(history) == 10
        digits = child.tags["embsvd.target_group"] == "digits"  # a declared linear order
        assert artifact_names(store.client, child.run_id) - {"git_diff.patch"} == (
            CONTRACT_ARTIFACTS | {"figures"} | EXPLORER | ({"order.csv"} if digits else set())
        )
        figures = FIGURES | ({"order.png"} if digits else set())
        assert artifact_names(store.client, child.run_id, "figures") == figures
    smol = [c for c in children if c.tags["embsvd.model"] == "smollm2_135m"]
    assert {c.tags["embsvd.quantization"] for c in smol} == {"Q8_0"}
    assert {c.tags["embsvd.tied_embeddings"] for c in smol} == {"true"}
    forms = {c.tags["embsvd.target_group"]: c.tags["embsvd.target_forms"] for c in smol}
    assert forms == {"digits": "bare", "eu_countries": "initial"}
    # SmolLM2's Euclidean axes track token norm (measured |rho| 0.87-0.88 on axis 0)
    centered = [c for c in smol if c.tags["embsvd.center"] == "true"]
    assert all("norm=" in c.tags["embsvd.warning.confounds"] for c in centered)


def test_submitit_local_runs_a_sweep(tiny_bert, tmp_path):
    done = run_sweep(
        tmp_path,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        *tiny_model(tiny_bert),
        "analysis.figures=false",
        "analysis.center=true,false",
    )

    assert done.returncode == 0, done.stderr[-3000:]
    store, [parent], children = parents_and_children(tmp_path)
    assert parent.status == "FINISHED"
    assert parent.tags["embsvd.launcher"].endswith("LocalLauncher")
    assert sorted(c.name for c in children) == [
        "digits · centered · tiny_bert",
        "digits · raw · tiny_bert",
    ]
    assert {c.status for c in children} == {"FINISHED"}
    assert {c.tags["mlflow.parentRunId"] for c in children} == {parent.run_id}
    # submitit ran each job in its own process, with its logs in the sweep folder
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))


def offline_hub_env(hf_home: Path, cache: Path) -> dict[str, str]:
    """This environment without any Hugging Face setting of its own, offline, reading
    checkpoints from the Hub cache ``cache`` only (and logging where the command says)."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))},
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(cache),
        "MLFLOW_TRACKING_URI": "",
    }


def test_hub_revisions_sweep_offline_from_the_cache(tmp_path):
    """A training-checkpoint suite: one Hub repo, a revision per step, swept offline."""
    cache = tmp_path / "hf" / "hub"
    commits = {}
    for step, seed in (("step1", 11), ("step2", 12)):
        upload = tmp_path / f"upload-{step}"
        write_tiny_bert(upload, tiny_embeddings(seed=seed))
        commits[step] = hashlib.sha1(step.encode()).hexdigest()
        write_hub_cache(cache, "testorg/tiny-suite", commits[step], upload, ref=step)
    env = offline_hub_env(tmp_path / "hf", cache)

    done = subprocess.run(
        sweep_command(
            tmp_path,
            "model=bert_base_uncased",
            "model.hub_id=testorg/tiny-suite",
            "model.name=tiny_suite",
            f"model.revision=step1,step2,{commits['step1']}",
            "analysis.figures=false",
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    _, [parent], children = parents_and_children(tmp_path)
    assert parent.status == "FINISHED"
    by_revision = {c.tags["embsvd.revision"]: c for c in children}
    assert sorted(c.name for c in children) == sorted(
        f"digits · centered · tiny_suite@{r}" for r in ("step1", "step2", commits["step1"])
    )
    for revision, child in by_revision.items():
        step = "step1" if revision == commits["step1"] else revision
        assert child.tags["embsvd.revision_commit"] == commits[step]
        assert child.tags["embsvd.source"].endswith(f"snapshots/{commits[step]}")
    # different steps, different weights; a branch and its commit, the same weights
    shas = {r: c.tags["embsvd.weights_sha256"] for r, c in by_revision.items()}
    assert shas["step1"] != shas["step2"] and shas["step1"] == shas[commits["step1"]]
    assert (
        by_revision["step1"].metrics["singular_value_last_over_first"]
        != (by_revision["step2"].metrics["singular_value_last_over_first"])
    )
