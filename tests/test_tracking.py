"""The tracking module against a real sqlite MLflow store."""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from embsvd import tracking
from embsvd.checks.run import ChecksResult
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import analyze
from embsvd.pipeline import cli
from embsvd.tracking.artifacts import PROJECTION_BINS
from embsvd.tracking.contract import Tag
from embsvd.tracking.recovery import keep, process_running, process_start
from embsvd.tracking.runs import indented_json, upload_folder
from tests.conftest import PROJECT_ROOT, token_group, with_ctrl_c
from tests.test_checks import checked, world


def make_store(
    uri: str, name: str, artifact_root: Path | None = None, **options
) -> tracking.TrackingStore:
    return tracking.TrackingStore(uri, name, artifact_root, **options)


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


def test_a_runs_artifacts_go_to_its_artifact_uri_without_reading_the_run_back(
    session_store, monkeypatch, tmp_path
):
    store = make_store(session_store, "artifacts-direct")
    reads = []
    service = store.client._tracking_client  # what MlflowClient.log_artifacts reads the run with
    real_get_run = service.get_run

    def counting_get_run(run_id):  # counts reads of a whole run, then reads it for real
        reads.append(run_id)
        return real_get_run(run_id)

    monkeypatch.setattr(service, "get_run", counting_get_run)
    with tracking.tracked_run(store, "m/g/centered", {"embsvd.model": "m"}) as run:
        run.log_text("a", "a.txt")
        (run.staged_folder("figures") / "b.txt").write_text("b", encoding="utf-8")
    assert reads == []  # create_run said where its artifacts go
    assert read_artifact(store.client, run.run_id, "a.txt") == "a"
    assert read_artifact(store.client, run.run_id, "figures/b.txt") == "b"
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "c.txt").write_text("c", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"  # the URI given is the one written to
    upload_folder(store.client, run.run_id, folder, elsewhere.as_uri())
    assert (elsewhere / "c.txt").read_text(encoding="utf-8") == "c"
    upload_folder(store.client, run.run_id, folder)  # no URI: MLflow reads the run's
    assert reads == [run.run_id]
    assert read_artifact(store.client, run.run_id, "c.txt") == "c"


def test_indented_json_is_json_dumps_text_whatever_it_remembers():
    payload = {"digits": {"kept": [{"word": "0", "token_id": 15}], "closed": True}, "é": None}
    text = indented_json(payload)
    assert text == json.dumps(payload, indent=2, ensure_ascii=False)
    assert indented_json(json.loads(text)) is text  # an equal payload: the text remembered
    for value in (1, True, 1.0, "1", None, [1]):  # equal in Python, written apart
        assert indented_json({"v": value}) == json.dumps({"v": value}, indent=2)


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
        "text",
        "projection",
        "in_group",
        "undertrained",
    ]
    assert len(top) == 2 * 2 * 3
    first = [r for r in top if r["component"] == "0" and r["side"] == "top"]
    assert [r["rank"] for r in first] == ["1", "2", "3"]
    projections = [float(r["projection"]) for r in first]
    assert projections == sorted(projections, reverse=True)
    assert projections[0] == result.projections[:, 0][1:].max()
    assert {r["in_group"] for r in top} <= {"true", "false"}
    assert data.tags["embsvd.axis0.top"] == " ".join(r["token"] for r in first)

    axes = list(csv.reader(io.StringIO(read_artifact(client, run.run_id, "axes.csv"))))
    assert axes[0][:2] == ["component", "dim_0"]
    assert [row[0] for row in axes[1:]] == [str(k) for k in range(result.n_components)]
    np.testing.assert_array_equal(  # repr: exact
        [[float(x) for x in row[1:]] for row in axes[1:]], result.svd.Vt[: result.n_components]
    )
    histogram = read_artifact(client, run.run_id, "projection_histogram.csv").splitlines()[1:]
    for k in range(result.n_components):
        counts, edges = np.histogram(result.projections[:, k], bins=PROJECTION_BINS)
        rows = [line.split(",") for line in histogram if line.split(",")[0] == str(k)]
        assert [int(row[3]) for row in rows] == counts.tolist()
        assert [float(row[1]) for row in rows] == edges[:-1].tolist()
        assert [float(row[2]) for row in rows] == edges[1:].tolist()

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
        "display_name",
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


def test_log_result_writes_the_same_tables_buffered_or_not(session_store):
    """A buffered run's tables are written where its artifacts wait (no copy); a logger
    that writes at once uploads the same files; only a buffered logger has a staging
    folder."""
    store = make_store(session_store, "tables either way")
    result, _ = small_result()
    with tracking.tracked_run(store, "buffered", {}) as buffered:
        tracking.log_result(buffered, result, ChecksResult(random_state=0))
    plain = tracking.start_run(store, "at once", {})
    tracking.log_result(plain, result, ChecksResult(random_state=0))
    with pytest.raises(ValueError, match="not buffered; use log_folder"):
        plain.staged_folder()

    def tables(run_id: str) -> dict[str, str]:
        found = {}
        for item in store.client.list_artifacts(run_id):
            if item.path.endswith(".csv"):
                found[item.path] = read_artifact(store.client, run_id, item.path)
        return found

    written = tables(buffered.run_id)
    assert "spectrum.csv" in written and written == tables(plain.run_id)


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


class CountedReads:
    """``store.children``, counting how often the sweep's children are read."""

    def __init__(self, store: tracking.TrackingStore):
        self.read, self.reads = store.children, 0
        store.children = self

    def __call__(self, parent_run_id: str) -> list[tracking.RunRecord]:
        self.reads += 1
        return self.read(parent_run_id)


def test_finish_sweep_reuses_the_children_read_at_the_close_unless_they_changed(tmp_path):
    """The close reads a sweep's children once (for its trajectories and its status); a
    RUNNING child or a replayed write changes them, and they are read again."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = make_store(uri, "children-once")
    parent = tracking.start_run(store, "sweep/z", {"embsvd.role": "sweep"})
    child = {"mlflow.parentRunId": parent.run_id, "embsvd.job_num": 0}
    with tracking.tracked_run(store, "a", child):
        pass
    children = store.children(parent.run_id)
    counted = CountedReads(store)

    outcome = tracking.finish_sweep(
        store, parent.run_id, interrupted=False, completed=True, children=children
    )

    assert counted.reads == 0 and outcome.children == children
    assert outcome.status == "FINISHED"

    # a child RUNNING in the list read: closed KILLED, and the children read again
    parent = tracking.start_run(store, "sweep/w", {"embsvd.role": "sweep"})
    child = {"mlflow.parentRunId": parent.run_id, "embsvd.job_num": 0}
    with tracking.tracked_run(store, "b", child):
        pass
    tracking.start_run(store, "c", {**child, "embsvd.job_num": 1})  # its worker died
    children = store.children(parent.run_id)
    outcome = tracking.finish_sweep(
        store, parent.run_id, interrupted=False, completed=True, children=children
    )
    assert counted.reads == 2  # the test's own read, and the close's after the kill
    assert outcome.status == "KILLED"
    assert sorted((c.name, c.status) for c in outcome.children) == [
        ("b", "FINISHED"),
        ("c", "KILLED"),
    ]

    # a pending final write (a child's status) replayed at the close: read again
    parent = tracking.start_run(store, "sweep/v", {"embsvd.role": "sweep"})
    late = tracking.start_run(store, "d", {"mlflow.parentRunId": parent.run_id})
    children = store.children(parent.run_id)
    keep(uri, late.run_id, "d", "FINISHED", [], [], None, "database is locked")
    reads = counted.reads
    outcome = tracking.finish_sweep(
        store, parent.run_id, interrupted=False, completed=True, children=children
    )
    assert counted.reads == reads + 1
    assert [(c.name, c.status) for c in outcome.children] == [("d", "FINISHED")]
    assert outcome.status == "FINISHED"


def test_close_running_children_finds_the_running_ones_alone(session_store):
    store = make_store(session_store, "running-children")
    parent = tracking.start_run(store, "sweep/u", {"embsvd.role": "sweep"})
    child = {"mlflow.parentRunId": parent.run_id}
    with tracking.tracked_run(store, "done", child):
        pass
    running = tracking.start_run(store, "cut off", child)

    assert tracking.close_running_children(store, parent.run_id, "gone") == 1

    closed = store.client.get_run(running.run_id)
    assert closed.info.status == "KILLED" and closed.data.tags[Tag.ERROR] == "gone"
    assert tracking.close_running_children(store, parent.run_id, "gone") == 0
    assert {c.name: c.status for c in store.children(parent.run_id)} == {
        "done": "FINISHED",
        "cut off": "KILLED",
    }


def test_sweep_that_stopped_before_its_jobs_reported_fails_its_parent(session_store):
    store = make_store(session_store, "stopped-sweep")
    parent = tracking.start_run(store, "sweep/y", {"embsvd.role": "sweep"})

    outcome = tracking.finish_sweep(store, parent.run_id, interrupted=False, completed=False)

    assert outcome.status == "FAILED" and outcome.children == []
    [run] = store.find_runs("tags.`embsvd.role` = 'sweep'")
    assert run.status == "FAILED" and run.metrics["n_children"] == 0
    assert run.tags["embsvd.error"] == "the sweep stopped before its jobs reported"


# --- faults: signals, final writes the store refuses, runs whose process is gone ----------


def test_signals_that_arrive_while_a_run_closes_wait_until_it_is_closed():
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with tracking.deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # a handler that was not held would run here
            assert received == []
        assert received == [signal.SIGTERM]  # delivered to the handler it would have met
        assert signal.getsignal(signal.SIGTERM) is not None and received == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sighup_ends_a_run_killed_and_names_the_signal(session_store):
    store = make_store(session_store, "sighup")
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a fresh process
    try:
        with (
            pytest.raises(tracking.Terminated) as raised,
            tracking.signals_end_runs(),
            tracking.tracked_run(store, "m/g/raw", {}) as run,
        ):
            run.log_metrics([("n_tokens", 3, 0)])
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(30)  # the signal's exception ends the block at once
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # restored
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert raised.value.code == 128 + signal.SIGHUP  # the exit status a shell reports
    ended = store.client.get_run(run.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["embsvd.error"] == "Terminated: SIGHUP"
    assert ended.data.metrics["n_tokens"] == 3  # what it logged is kept


def test_sigterm_ends_a_run_killed_under_submitits_bypass_handler(session_store):
    """On a SLURM node submitit's handler only logs SIGTERM (it waits for SIGUSR2), and
    scancel's SIGKILL follows: the run must end KILLED before that, not stay RUNNING."""
    from submitit.core.job_environment import SignalHandler

    bypass = SignalHandler.__new__(SignalHandler).bypass  # the bound method submitit installs
    assert tracking.runs.only_logs(bypass) and not tracking.runs.only_logs(print)
    store = make_store(session_store, "submitit-sigterm")
    previous = signal.signal(signal.SIGTERM, bypass)
    try:
        with (
            pytest.raises(tracking.Terminated),
            tracking.signals_end_runs(),
            tracking.tracked_run(store, "m/g/raw", {}) as run,
        ):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the signal's exception ends the block at once
        assert signal.getsignal(signal.SIGTERM) == bypass  # submitit's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert store.client.get_run(run.run_id).info.status == "KILLED"


def test_runs_carry_the_process_that_writes_them(session_store):
    store = make_store(session_store, "process-tags")
    with tracking.tracked_run(store, "m/g/raw", {}) as run:
        pass
    tags = store.client.get_run(run.run_id).data.tags
    assert tags[Tag.HOST] == socket.gethostname() and tags[Tag.PID] == str(os.getpid())
    boot, ticks = tags[Tag.PROCESS_START].split(":")
    assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert int(ticks) > 0


def ended_process() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_process_is_running_only_while_its_pid_and_start_match():
    me = os.getpid()
    assert process_running(me, process_start(me))
    assert not process_running(me, "another-boot:1")  # the pid, reused by a later process
    assert not process_running(ended_process(), None)


def reconcile_fixture(store: tracking.TrackingStore):
    """Runs as processes leave them: RUNNING, with the tags of a process that is gone,
    of this one, of another host, of an older embsvd (none)."""
    gone = {Tag.PID: str(ended_process()), Tag.PROCESS_START: "x:1"}
    runs = {
        "gone": tracking.start_run(store, "gone", gone),
        "alive": tracking.start_run(store, "alive", {}),
        "elsewhere": tracking.start_run(store, "elsewhere", {Tag.HOST: "node042"}),
    }
    untagged = tracking.start_run(store, "untagged", {})
    for tag in (Tag.HOST, Tag.PID, Tag.PROCESS_START):
        store.client.delete_tag(untagged.run_id, tag)
    runs["untagged"] = untagged
    # a sweep killed with its last job: the parent and the job's process are gone
    parent = tracking.start_run(store, "sweep/x", {"embsvd.role": "sweep", **gone})
    child = {"mlflow.parentRunId": parent.run_id, **gone}
    with tracking.tracked_run(store, "job0", {**child, "embsvd.job_num": 0}):
        pass
    runs["job1"] = tracking.start_run(store, "job1", {**child, "embsvd.job_num": 1})
    runs["parent"] = parent
    return runs


def test_reconcile_closes_runs_whose_process_is_gone_and_lists_the_others(tmp_path):
    store = make_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "reconcile")
    runs = reconcile_fixture(store)

    changes = {c.name: c for c in tracking.reconcile_runs(store)}

    status = {name: store.client.get_run(r.run_id).info.status for name, r in runs.items()}
    assert status == {
        "gone": "KILLED",
        "alive": "RUNNING",
        "elsewhere": "RUNNING",
        "untagged": "RUNNING",
        "job1": "KILLED",
        "parent": "KILLED",
    }
    assert list(changes)[-1] == "sweep/x"  # parents after their children
    error = store.client.get_run(runs["gone"].run_id).data.tags["embsvd.error"]
    assert error.startswith("left RUNNING, closed by embsvd runs reconcile: its process (pid")
    assert "is gone" in error
    assert "is still running" in changes["alive"].reason
    assert "ran on node042" in changes["elsewhere"].reason
    assert "--host-gone node042" in changes["elsewhere"].reason
    assert "no process tags" in changes["untagged"].reason
    parent = store.client.get_run(runs["parent"].run_id)
    assert parent.data.metrics["n_finished"] == 1 and parent.data.metrics["n_killed"] == 1
    assert str(changes["sweep/x"]).startswith(f"closed KILLED: run {runs['parent'].run_id}")

    # the host the user says is gone, and '*' for runs without process tags
    again = {c.name: c.status for c in tracking.reconcile_runs(store, ["node042"])}
    assert again == {"alive": "RUNNING", "elsewhere": "KILLED", "untagged": "RUNNING"}
    last = {c.name: c.status for c in tracking.reconcile_runs(store, ["*"])}
    assert last == {"alive": "RUNNING", "untagged": "KILLED"}


def test_reconcile_leaves_a_run_whose_final_write_waits_for_its_replay(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = make_store(uri, "reconcile-pending")
    gone = {Tag.PID: str(ended_process()), Tag.PROCESS_START: "x:1"}
    run = tracking.start_run(store, "locked out", gone)
    folder = keep(uri, run.run_id, "locked out", "FINISHED", [], [], None, "database is locked")

    [change] = tracking.reconcile_runs(store)  # this store replayed when it opened, not since

    assert change.status == "RUNNING"
    assert change.reason == f"its final write waits in {folder} (database is locked)"
    assert store.client.get_run(run.run_id).info.status == "RUNNING"


def test_a_parent_waits_for_its_children_on_another_host(tmp_path):
    store = make_store(f"sqlite:///{tmp_path / 'mlflow.db'}", "reconcile-parent")
    gone = {Tag.PID: str(ended_process()), Tag.PROCESS_START: "x:1"}
    parent = tracking.start_run(store, "sweep/y", {"embsvd.role": "sweep", **gone})
    tracking.start_run(store, "job", {"mlflow.parentRunId": parent.run_id, Tag.HOST: "node7"})

    [child, closing] = tracking.reconcile_runs(store)

    assert (child.status, closing.status) == ("RUNNING", "RUNNING")
    assert "left until its children end (1 RUNNING: job)" in closing.reason


def mount_tmpfs(folder: Path) -> None:
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True)


@pytest.fixture
def read_only_artifacts(tmp_path):
    """A store whose artifact folder is a tmpfs mounted read-only (root ignores file
    permissions, not a read-only mount)."""
    folder = tmp_path / "artifacts"
    mount_tmpfs(folder)
    remount(folder, "ro")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_read_only_artifact_folder_fails_runs_with_the_reason_until_replayed(
    tmp_path, read_only_artifacts, capsys
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = make_store(uri, "read-only", read_only_artifacts)
    with (
        pytest.raises(tracking.FinalWriteError, match="its final write to sqlite:///") as raised,
        tracking.tracked_run(store, "m/g/finished", {}) as finished,
    ):
        finished.log_metrics([("singular_value", 2.0, 0), ("singular_value", 1.0, 1)])
        finished.log_text("a table", "spectrum.csv")
    with (
        pytest.raises(RuntimeError, match="checkpoint exploded"),  # its own error, not the write's
        tracking.tracked_run(store, "m/g/failed", {}) as failed,
    ):
        raise RuntimeError("checkpoint exploded")

    # one folder per failed write, named <run id>.<time>: in the order they were kept
    folders = sorted((tmp_path / "pending").iterdir(), key=lambda f: int(f.suffix[1:]))
    assert len(folders) == 2
    assert f"are kept in {folders[0]}" in str(raised.value)
    assert "Read-only file system" in str(raised.value)
    assert f"are kept in {folders[1]}" in capsys.readouterr().err  # printed, for both
    first = store.client.get_run(finished.run_id)
    assert first.info.status == "FAILED"  # the database took the status and the reason
    assert first.data.tags["embsvd.error"].startswith("final write failed (OSError: [Errno 30]")
    second = store.client.get_run(failed.run_id)
    assert second.data.tags["embsvd.error"].startswith(
        "RuntimeError: checkpoint exploded; final write failed"
    )
    assert (folders[1] / "artifacts" / "error.txt").is_file()  # the traceback waits too

    remount(read_only_artifacts, "rw")
    replayed = []
    make_store(uri, "read-only", report=replayed.append)  # the next command's store

    assert len(replayed) == 2 and all("wrote the results" in line for line in replayed)
    assert [f.name for f in (tmp_path / "pending").iterdir()] == [".lock"]
    first = store.client.get_run(finished.run_id)
    assert first.info.status == "FINISHED" and "embsvd.error" not in first.data.tags
    assert "Read-only file system" in first.data.tags[Tag.RECOVERED]
    assert store.metric_history(finished.run_id, "singular_value") == [2.0, 1.0]
    assert read_artifact(store.client, finished.run_id, "spectrum.csv") == "a table"
    second = store.client.get_run(failed.run_id)
    assert second.info.status == "FAILED"
    assert second.data.tags["embsvd.error"] == "RuntimeError: checkpoint exploded"
    assert "checkpoint exploded" in read_artifact(store.client, failed.run_id, "error.txt")


def test_a_pending_write_of_a_deleted_run_is_dropped_with_a_note(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = make_store(uri, "deleted")
    logger = tracking.start_run(store, "gone", {})
    folder = keep(uri, "0" * 32, "gone", "FINISHED", [], [], None, "a test")
    messages = []

    make_store(uri, "deleted", report=messages.append)

    assert messages == [
        f"run {'0' * 32} (gone) no longer exists in the store; removed its pending results {folder}"
    ]
    assert not folder.exists()
    assert store.client.get_run(logger.run_id).info.status == "RUNNING"


def test_reconcile_command_refuses_a_missing_store_or_experiment(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert cli.main(["runs", "reconcile", "--tracking-uri", missing]) == 1
    assert "no such sqlite database" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # nothing created
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    make_store(uri, "present")
    assert cli.main(["runs", "reconcile", "--tracking-uri", uri, "--experiment", "nope"]) == 1
    err = capsys.readouterr().err
    assert "--experiment nope: experiment 'nope': the store" in err
    assert "it has: Default, present" in err


def test_the_embsvd_command_is_the_reconcile_cli():
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["embsvd"].split(":")
    assert getattr(importlib.import_module(module), function) is cli.main
