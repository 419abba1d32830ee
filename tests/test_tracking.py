"""The tracking module against a real sqlite MLflow store."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from embsvd import tracking
from embsvd.checks.run import ChecksResult
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import analyze
from tests.conftest import token_group, with_ctrl_c
from tests.test_checks import checked, world


def make_store(uri: str, name: str, artifact_root: Path | None = None) -> tracking.TrackingStore:
    return tracking.TrackingStore(uri, name, artifact_root)


def read_artifact(client: MlflowClient, run_id: str, path: str) -> str:
    local = client.download_artifacts(run_id, path)
    return Path(local).read_text(encoding="utf-8")


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the default store does not depend on the working directory

    def root() -> Path:
        return Path("/some/project")

    def no_project() -> Path:
        raise AssertionError("the project folder is asked for only when the store is its own")

    assert tracking.resolve_tracking_uri(None, root) == "sqlite:////some/project/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert tracking.resolve_tracking_uri(None, no_project) == "http://127.0.0.1:5001"
    assert tracking.resolve_tracking_uri("sqlite:////x/y.db", no_project) == "sqlite:////x/y.db"


def test_artifacts_go_beside_a_sqlite_store_and_to_the_server_otherwise():
    assert tracking.default_artifact_root("sqlite:////a/b/mlflow.db") == Path("/a/b/artifacts")
    assert tracking.default_artifact_root("http://127.0.0.1:5000") is None


def test_store_creates_the_experiment_once_with_an_absolute_artifact_location(tmp_path):
    uri = f"sqlite:///{tmp_path / 'nested' / 'mlflow.db'}"  # the folder does not exist yet
    store = make_store(uri, "exp-a")
    again = make_store(uri, "exp-a")
    assert store.experiment_id == again.experiment_id
    location = store.client.get_experiment(store.experiment_id).artifact_location
    assert location == (tmp_path / "nested" / "artifacts" / "exp-a").as_uri()


def test_finished_run_with_batched_metrics(session_store, monkeypatch):
    store = make_store(session_store, "finished")
    requests = []
    real_log_batch = store.client.log_batch

    def counting_log_batch(run_id, **kwargs):  # counts requests, then logs for real
        requests.append({k: len(v) for k, v in kwargs.items()})
        return real_log_batch(run_id, **kwargs)

    monkeypatch.setattr(store.client, "log_batch", counting_log_batch)
    with tracking.tracked_run(store, "m/g/centered", {"embsvd.model": "m"}) as run:
        run.log_metrics([("series", float(i), i) for i in range(2500)])
        run.log_params({f"p{i}": i for i in range(150)})
        run.set_tags({f"t{i}": i for i in range(120)})
    # tags ride along with metrics: at most 100 tags and 1000 items a request
    metric_requests = [r for r in requests if r.get("metrics") or r.get("tags")]
    assert [(r["metrics"], r["tags"]) for r in metric_requests] == [(900, 100), (900, 20), (700, 0)]
    assert [r["params"] for r in requests if "params" in r] == [100, 50]
    finished = store.client.get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.info.run_name == "m/g/centered"
    assert finished.data.tags["embsvd.model"] == "m"
    history = store.client.get_metric_history(run.run_id, "series")
    assert sorted(m.step for m in history) == list(range(2500))
    assert finished.data.params["p149"] == "149"
    assert finished.data.tags["t119"] == "119"


def test_failed_run_keeps_what_was_logged_and_records_the_error(session_store):
    store = make_store(session_store, "failed")
    with (
        pytest.raises(RuntimeError, match="checkpoint exploded"),
        tracking.tracked_run(store, "m/g/raw", {}) as run,
    ):
        run.log_params({"analysis.center": False})
        raise RuntimeError("checkpoint exploded")
    failed = store.client.get_run(run.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["embsvd.error"] == "RuntimeError: checkpoint exploded"
    assert failed.data.params["analysis.center"] == "False"
    traceback_text = read_artifact(store.client, run.run_id, "error.txt")
    assert "Traceback" in traceback_text and "checkpoint exploded" in traceback_text


def test_ctrl_c_ends_the_run_killed(session_store):
    store = make_store(session_store, "killed")
    with pytest.raises(KeyboardInterrupt), tracking.tracked_run(store, "m/g/raw", {}) as run:
        raise KeyboardInterrupt
    assert store.client.get_run(run.run_id).info.status == "KILLED"


def test_sigint_to_a_real_process_ends_its_run_killed(tmp_path):
    """Ctrl-C as a user sends it: SIGINT to a process blocked inside a run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = f"""
import os, signal, time
from embsvd import tracking
store = tracking.TrackingStore({uri!r}, "sigint")
with tracking.tracked_run(store, "m/g/raw", {{}}) as run:
    print(run.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(30)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=with_ctrl_c,
    )
    assert done.returncode != 0
    assert "KeyboardInterrupt" in done.stderr
    run_id = done.stdout.split()[0]
    assert MlflowClient(uri).get_run(run_id).info.status == "KILLED"


def small_result():
    rng = np.random.default_rng(0)
    W_E = rng.normal(size=(30, 5)) + 0.3
    groups = {
        "b_group": token_group("b_group", [1, 2, 3, 4]),
        "a_group": token_group("a_group", [10, 11, 12]),
    }
    tokens = [f"tok{i}" for i in range(30)]
    vocab = Vocabulary.from_matrix(W_E, tokens, special_ids=[0])
    result = analyze(W_E, groups, "b_group", vocab, center=True, n_components=2, top_k=3)
    return result, groups


def test_log_result_writes_the_contract(session_store):
    store = make_store(session_store, "contract")
    result, groups = small_result()
    with tracking.tracked_run(store, "m/b_group/centered", {}) as run:
        tracking.log_groups(run, groups, "b_group")
        tracking.log_result(run, result, ChecksResult(random_state=0))
    client = store.client
    data = client.get_run(run.run_id).data
    assert data.metrics["n_tokens"] == 4
    pair = "a_group__b_group"  # names in sorted order
    assert data.metrics[f"group_mean_corr/{pair}"] == pytest.approx(
        result.group_mean_corr.values[0, 1]
    )
    assert data.metrics[f"group_mean_cos/{pair}"] == pytest.approx(
        result.group_mean_cos.values[0, 1]
    )
    assert data.metrics[f"axis_corr/{pair}"] == pytest.approx(result.axis_corr.values[0, 1])
    S = result.svd.singular_values
    assert data.metrics["singular_value_last_over_first"] == pytest.approx(S[-1] / S[0])
    history = sorted(client.get_metric_history(run.run_id, "singular_value"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1, 2, 3]
    np.testing.assert_allclose([m.value for m in history], S)
    ratios = [
        m.value
        for m in sorted(
            client.get_metric_history(run.run_id, "explained_variance_ratio"), key=lambda m: m.step
        )
    ]
    np.testing.assert_allclose(ratios, result.svd.explained_variance_ratio)

    spectrum = list(csv.DictReader(io.StringIO(read_artifact(client, run.run_id, "spectrum.csv"))))
    assert [int(r["component"]) for r in spectrum] == [0, 1, 2, 3]
    np.testing.assert_array_equal([float(r["singular_value"]) for r in spectrum], S)  # repr: exact

    square = list(csv.reader(io.StringIO(read_artifact(client, run.run_id, "group_mean_corr.csv"))))
    assert square[0] == ["group", "a_group", "b_group"]
    assert [row[0] for row in square[1:]] == ["a_group", "b_group"]
    assert float(square[1][1]) == pytest.approx(1.0)

    top = list(csv.DictReader(io.StringIO(read_artifact(client, run.run_id, "top_tokens.csv"))))
    assert list(top[0]) == [
        "component",
        "side",
        "rank",
        "token_id",
        "token",
        "projection",
        "in_group",
    ]
    assert len(top) == 2 * 2 * 3
    first = [r for r in top if r["component"] == "0" and r["side"] == "top"]
    assert [r["rank"] for r in first] == ["1", "2", "3"]
    projections = [float(r["projection"]) for r in first]
    assert projections == sorted(projections, reverse=True)
    assert projections[0] == result.projections[:, 0][1:].max()
    assert {r["in_group"] for r in top} <= {"true", "false"}
    assert data.tags["embsvd.axis0.top"] == " ".join(r["token"] for r in first)

    cosine = list(csv.reader(io.StringIO(read_artifact(client, run.run_id, "row_cosine.csv"))))
    assert cosine[0] == ["word", "b_group1", "b_group2", "b_group3", "b_group4"]
    assert float(cosine[1][1]) == pytest.approx(1.0)

    payload = json.loads(read_artifact(client, run.run_id, "groups.json"))
    assert set(payload) == {"a_group", "b_group"}
    assert payload["b_group"]["kept"][0] == {
        "word": "b_group1",
        "token": "tok1",
        "token_id": 1,
        "form": "bare",
    }
    assert set(payload["b_group"]) == {
        "words",
        "order",
        "closed",
        "incomplete",
        "kept",
        "dropped",
        "held_out",
    }


# the names the checks issue promises to tools that read runs
CHECK_METRICS = [
    "s1_share",
    *(f"null/s1_share/{s}" for s in ("mean", "sd", "percentile", "p_value")),
    *(
        f"null/group_mean_corr/ordered__other/{s}"
        for s in ("mean", "sd", "percentile", "p_value", "p_holm")
    ),
    "null/n_tests",
    "null/p_floor",
    *(f"null/s1_share/{s}" for s in ("p_holm",)),
    *(f"null/global_share/{s}" for s in ("mean", "sd", "percentile", "p_value", "p_holm")),
    "stability/axis_cos",
    "stability/n_resamples",
    "interval/singular_value_lo",
    "interval/singular_value_hi",
    "heldout/subspace_rank_pct_median",
    "heldout/axis_rank_pct_median",
    "heldout/precision_at_k",
    "confound/spearman_norm",
    "confound/spearman_token_id",
    "confound/spearman_length",
    "global/group_variance_share",
]


def test_log_result_writes_the_checks_contract(session_store):
    store = make_store(session_store, "checks-contract")
    W, groups = world(planted=True)
    result, checks = checked(W, groups)
    with tracking.tracked_run(store, "m/ordered/centered", {}) as run:
        tracking.log_result(run, result, checks)
    client = store.client
    data = client.get_run(run.run_id).data
    assert set(CHECK_METRICS) <= set(data.metrics)
    null = checks.null
    assert data.metrics["null/s1_share/percentile"] == null.s1_share.percentile == 100.0
    p_holm = data.metrics["null/group_mean_corr/ordered__other/p_holm"]
    assert p_holm == pytest.approx(null.p_holm["group_mean_corr/ordered__other"])
    assert data.metrics["null/n_tests"] == null.n_tests == len(null.p_holm)

    def series(key):
        history = sorted(client.get_metric_history(run.run_id, key), key=lambda m: m.step)
        return [m.value for m in history]

    np.testing.assert_allclose(series("stability/axis_cos"), checks.stability.axis_cos)
    np.testing.assert_allclose(
        series("interval/singular_value_lo"), checks.stability.singular_value_lo
    )
    assert data.tags["embsvd.interval_method"] == checks.stability.method
    assert data.metrics["stability/axis0_cos"] == pytest.approx(checks.stability.axis_cos[0])
    assert data.metrics["confound/spearman_norm"] == pytest.approx(
        checks.confounds.spearman["norm"][0]
    )
    assert data.tags["embsvd.random_state"] == "0"
    assert "ASCII letters or digits" in data.tags["embsvd.null_pool"]
    assert data.tags["embsvd.null_match"].startswith("none")

    def table(name):
        return list(csv.DictReader(io.StringIO(read_artifact(client, run.run_id, name))))

    band = [r for r in table("null_spectrum.csv") if r["statistic"] == "singular_value"]
    np.testing.assert_array_equal(
        [float(r["null_q2.5"]) for r in band], np.percentile(null.singular_values, 2.5, axis=0)
    )
    # the share s_k / ||M||_F, each draw by its own norm, places s1 where the metric does
    shares = [r for r in table("null_spectrum.csv") if r["statistic"] == "share"]
    assert float(shares[0]["percentile"]) == data.metrics["null/s1_share/percentile"]
    np.testing.assert_allclose(
        [float(r["null_q97.5"]) for r in shares],
        np.percentile(np.sqrt(null.explained_variance_ratio), 97.5, axis=0),
    )
    [pair] = table("null_group_mean_corr.csv")
    assert pair["variant"] == "raw"
    assert float(pair["p_holm"]) == null.p_holm["group_mean_corr/ordered__other"]
    stability = table("stability.csv")
    assert [float(r["axis_cos"]) for r in stability] == list(checks.stability.axis_cos)
    assert {r["degenerate"] for r in stability} <= {"true", "false"}
    heldout = table("heldout.csv")
    assert len(heldout) == len(checks.heldout.words) == 16
    assert float(heldout[0]["subspace_rank_pct"]) == checks.heldout.words[0].subspace_rank_pct
    confounds = table("confounds.csv")
    assert len(confounds) == 3 * 3  # three properties, three components
    assert len(table("stability_loo.csv")) == 10 * 3
    assert len(table("global_spectrum.csv")) == 8


WRITER_SCRIPT = """
import sys, time
from embsvd import tracking

uri, writer, n_runs, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
store = tracking.TrackingStore(uri, "concurrent")
while time.time() < start:  # every writer starts at the same moment
    time.sleep(0.001)
for i in range(n_runs):
    with tracking.tracked_run(store, f"{writer}/{i}", {"writer": writer}) as run:
        run.log_params({f"p{j}": j for j in range(150)})  # two batches
        run.set_tags({f"t{j}": j for j in range(150)})
        run.log_metrics([("singular_value", float(j), j) for j in range(1200)])  # two batches
        run.log_text(f"{writer}/{i}", "who.txt")
"""


@pytest.mark.slow
def test_concurrent_writers_to_one_sqlite_store_lose_and_duplicate_nothing(tmp_path):
    """What parallel launchers (joblib, submitit_local) do: several processes write runs
    to one sqlite store at once, each run in several batches."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    make_store(uri, "concurrent")  # created once, as the sweep callback does
    writers, n_runs = 4, 4
    start = time.time() + 8  # after every process has imported mlflow
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, uri, f"w{w}", str(n_runs), str(start)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * writers, errors

    store = make_store(uri, "concurrent")
    runs = store.find_runs()
    assert sorted(r.name for r in runs) == sorted(
        f"w{w}/{i}" for w in range(writers) for i in range(n_runs)
    )
    for run in runs:
        assert run.status == "FINISHED"
        assert len(run.params) == 150 and run.params["p149"] == "149"
        assert sum(k.startswith("t") for k in run.tags) == 150
        history = store.metric_history(run.run_id, "singular_value")
        assert history == [float(j) for j in range(1200)]  # each step once, none lost
        assert read_artifact(store.client, run.run_id, "who.txt") == run.name


def test_finish_sweep_closes_running_children_and_earns_the_parent_status(session_store):
    store = make_store(session_store, "finish-sweep")
    parent = tracking.start_run(store, "sweep/x", {"embsvd.role": "sweep"})
    child = {"mlflow.parentRunId": parent.run_id, "embsvd.job_num": 0}
    with tracking.tracked_run(store, "a", child):
        pass
    tracking.start_run(store, "b", {**child, "embsvd.job_num": 1})  # its worker died

    outcome = tracking.finish_sweep(store, parent.run_id, interrupted=False, completed=True)

    assert outcome.status == "KILLED"
    assert sorted((c.name, c.status) for c in outcome.children) == [
        ("a", "FINISHED"),
        ("b", "KILLED"),
    ]
    [b] = store.find_runs("attributes.run_name = 'b'")
    assert b.tags["embsvd.error"] == "still RUNNING when its sweep ended"
    rows = list(
        csv.DictReader(io.StringIO(read_artifact(store.client, parent.run_id, "children.csv")))
    )
    assert [(r["job_num"], r["name"], r["status"]) for r in rows] == [
        ("0", "a", "FINISHED"),
        ("1", "b", "KILLED"),
    ]


def test_sweep_that_stopped_before_its_jobs_reported_fails_its_parent(session_store):
    store = make_store(session_store, "stopped-sweep")
    parent = tracking.start_run(store, "sweep/y", {"embsvd.role": "sweep"})

    outcome = tracking.finish_sweep(store, parent.run_id, interrupted=False, completed=False)

    assert outcome.status == "FAILED" and outcome.children == []
    [run] = store.find_runs("tags.`embsvd.role` = 'sweep'")
    assert run.status == "FAILED" and run.metrics["n_children"] == 0
    assert run.tags["embsvd.error"] == "the sweep stopped before its jobs reported"
