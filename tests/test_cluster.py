"""The scale-out path for real: a sweep submitted to a one-node SLURM cluster, logging to a
PostgreSQL-backed MLflow server with basic auth (``embsvd server``), then figures and the
export read back over that server.

The services come from ``tests/cluster/start_services.sh`` (run as root; ``.ci/run`` runs
it and sets ``EMBSVD_REQUIRE_CLUSTER=1``, so there a missing service fails these tests
instead of skipping them).
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.blocking import RELEASE, wait_for_file
from tests.conftest import PROJECT_ROOT
from tests.test_server_auth import create_user, embsvd_server, request

pytestmark = pytest.mark.slow

# what tests/cluster/start_services.sh wrote: the machine's services, whichever checkout
CLUSTER_ENV = Path(os.environ.get("EMBSVD_CLUSTER_ENV", "/var/lib/embsvd-cluster/env"))
START = (
    "bash tests/cluster/start_services.sh  (as root: installs and starts munge, SLURM, PostgreSQL)"
)
SWEEP_TIMEOUT_S = 900  # the 8 jobs take about a minute here; the limit only ends a hang
STATE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Cluster:
    postgres_uri: str  # the role's URI on the CI database (it may create databases)
    partition: str


@dataclass(frozen=True)
class Server:
    url: str
    backend_uri: str  # this module's own database
    user: str
    password: str

    def credentials(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.user, "MLFLOW_TRACKING_PASSWORD": self.password}


def _unavailable(reason: str) -> None:
    message = f"{reason}; start the services with: {START}"
    if os.environ.get("EMBSVD_REQUIRE_CLUSTER") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    if not CLUSTER_ENV.is_file():
        _unavailable(f"no cluster settings at {CLUSTER_ENV}")
    values = dict(
        line.split("=", 1) for line in CLUSTER_ENV.read_text().splitlines() if "=" in line
    )
    if shutil.which("sbatch") is None:
        _unavailable("SLURM's sbatch is not installed")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True)
    if "UP" not in ping.stdout:
        _unavailable(f"slurmctld does not answer: {ping.stdout.strip()} {ping.stderr.strip()}")
    return Cluster(values["EMBSVD_CLUSTER_PG_URI"], values["EMBSVD_CLUSTER_PARTITION"])


def psql(uri: str, query: str, *params: object) -> list[tuple]:
    import psycopg  # the server's driver: installed with embsvd's test extra

    with psycopg.connect(uri, autocommit=True) as connection:
        rows = connection.execute(query, params)
        return rows.fetchall() if rows.description else []


def drop_database(uri: str, database: str) -> None:
    """Drop ``database`` once the server's connections are gone (not ``WITH (FORCE)``,
    which would have to end an autovacuum worker, as only a superuser may)."""
    import psycopg

    def dropped() -> bool:
        try:
            psql(uri, f'DROP DATABASE IF EXISTS "{database}"')
        except psycopg.errors.ObjectInUse:  # the server's last connections are closing
            return False
        return True

    wait_until(dropped, f"database {database} is still in use")


@pytest.fixture(scope="module")
def server(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``embsvd server`` on a database of this module's own: basic auth, proxied artifacts,
    bound to 127.0.0.1; a user for the jobs created by the admin."""
    database = f"embsvd_test_{secrets.token_hex(4)}"
    psql(cluster.postgres_uri, f'CREATE DATABASE "{database}"')
    backend = cluster.postgres_uri.rsplit("/", 1)[0] + f"/{database}"
    folder = tmp_path_factory.mktemp("server")
    admin_password = secrets.token_urlsafe(18)
    try:
        with embsvd_server(folder, backend, admin_password) as url:
            user = "lab-jobs"
            password = create_user(url, admin_password, user)
            printed = (folder / "server.log").read_text(errors="replace")
            assert admin_password not in printed and backend not in printed  # never shown
            database_password = urlsplit(backend).password
            assert (
                database_password
                not in subprocess.run(  # nor on a command line `ps` shows
                    ["ps", "-eo", "args"], capture_output=True, text=True, check=True
                ).stdout
            )
            yield Server(url, backend, user, password)
    finally:
        drop_database(cluster.postgres_uri, database)


def slurm_sweep(
    server: Server, cluster: Cluster, sweep_dir: Path, experiment: str, *overrides: str
) -> list[str]:
    """``experiments/run.py -m hydra/launcher=slurm`` with the CI cluster's settings."""
    return [
        sys.executable,
        str(PROJECT_ROOT / "experiments" / "run.py"),
        "-m",
        "hydra/launcher=slurm",
        f"hydra.launcher.partition={cluster.partition}",
        "hydra.launcher.timeout_min=15",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=3",
        f"hydra.sweep.dir={sweep_dir}",
        f"tracking.uri={server.url}",
        f"tracking.experiment={experiment}",
        "analysis.figures=false",
        *overrides,
    ]


def job_environment(server: Server) -> dict[str, str]:
    """The submitting shell's environment, which sbatch passes on to the jobs."""
    return {
        **os.environ,
        **server.credentials(),
        "MLFLOW_TRACKING_URI": "",
        "PYTHONPATH": str(PROJECT_ROOT),
        "HF_HUB_OFFLINE": "1",
    }


def wait_until(condition, what: str, timeout_s: float = STATE_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.5)


def queue() -> list[str]:
    listed = subprocess.run(["squeue", "-h", "-o", "%i %T %j"], capture_output=True, text=True)
    return [line for line in listed.stdout.splitlines() if line.strip()]


@dataclass(frozen=True)
class FinishedSweep:
    experiment: str
    parent_id: str
    child_ids: list[str]
    sweep_id: str


@pytest.fixture(scope="module")
def sweep(server: Server, cluster: Cluster, tmp_path_factory, smollm2) -> FinishedSweep:
    """Both bundled models x digits, eu_countries x centering: 8 SLURM jobs. ``smollm2``
    fills the GGUF conversion cache first (the jobs share it through EMBSVD_CACHE_DIR)."""
    folder = tmp_path_factory.mktemp("slurm_sweep")
    command = slurm_sweep(
        server,
        cluster,
        folder / "sweep",
        "cluster",
        "model=all_minilm_l6_v2,smollm2_135m",
        "target=digits,eu_countries",
        "analysis.center=true,false",
    )
    done = subprocess.run(
        command,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
        env=job_environment(server),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert server.password not in done.stdout + done.stderr
    [(experiment_id,)] = psql(
        server.backend_uri, "SELECT experiment_id FROM experiments WHERE name = %s", "cluster"
    )
    parents = psql(
        server.backend_uri,
        "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE r.experiment_id = %s AND t.key = 'embsvd.role' AND t.value = 'sweep'",
        experiment_id,
    )
    assert len(parents) == 1, parents
    [(parent_id,)] = parents
    children = psql(
        server.backend_uri,
        "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'mlflow.parentRunId' AND t.value = %s",
        parent_id,
    )
    [(sweep_id,)] = psql(
        server.backend_uri,
        "SELECT value FROM tags WHERE run_uuid = %s AND key = 'embsvd.sweep_id'",
        parent_id,
    )
    return FinishedSweep("cluster", parent_id, [c for (c,) in children], sweep_id)


def test_a_slurm_sweep_leaves_eight_finished_children_under_one_finished_parent(server, sweep):
    statuses = dict(
        psql(
            server.backend_uri,
            "SELECT run_uuid, status FROM runs WHERE run_uuid = ANY(%s)",
            [sweep.parent_id, *sweep.child_ids],
        )
    )
    assert statuses.pop(sweep.parent_id) == "FINISHED"
    assert sorted(statuses.values()) == ["FINISHED"] * 8
    models = psql(
        server.backend_uri,
        "SELECT value, count(*) FROM params WHERE key = 'model.name' AND run_uuid = ANY(%s) "
        "GROUP BY value ORDER BY value",
        sweep.child_ids,
    )
    assert models == [("all_minilm_l6_v2", 4), ("smollm2_135m", 4)]
    wait_until(lambda: not queue(), "squeue still lists jobs after the sweep")


def test_the_artifacts_are_read_through_the_server(server, sweep, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    for name, value in server.credentials().items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(server.url)
    child = sweep.child_ids[0]
    spectrum = Path(client.download_artifacts(child, "spectrum.csv", str(tmp_path)))
    rows = list(csv.DictReader(spectrum.open()))
    assert rows and float(rows[0]["singular_value"]) > 0
    # proxied: the artifact URI is the server's, not a folder the workers would need
    assert client.get_run(child).info.artifact_uri.startswith("mlflow-artifacts:")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    status, _ = request(f"{server.url}/api/2.0/mlflow/runs/get?run_id={child}")
    assert status == 401  # no credentials, no runs


def test_figures_and_the_export_read_the_sweep_over_the_server(server, sweep, tmp_path):
    env = {**os.environ, **server.credentials(), "MLFLOW_TRACKING_URI": ""}
    figures = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "experiments" / "figures.py"),
            f"tracking.uri={server.url}",
            f"sweep.sweep_id={sweep.sweep_id}",
            f"output_dir={tmp_path / 'figures'}",
            "formats=[png]",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert figures.returncode == 0, figures.stderr[-4000:]
    drawn = list((tmp_path / "figures").rglob("*.png"))
    assert drawn, figures.stdout[-2000:]
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "embsvd.pipeline.cli",
            "export",
            sweep.sweep_id,
            "--tracking-uri",
            server.url,
            "--output",
            "-",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    table = list(csv.DictReader(io.StringIO(export.stdout)))
    assert sorted(row["run_id"] for row in table) == sorted(sweep.child_ids)
    assert {row["status"] for row in table} == {"FINISHED"}
    assert server.password not in figures.stdout + figures.stderr + export.stderr


def test_a_job_cancelled_with_scancel_ends_killed(server, cluster, tmp_path):
    """The job waits inside its open run (tests.blocking, before the run's final write)
    until scancel's SIGTERM reaches it: its run must end KILLED, not stay RUNNING.

    The CI cluster keeps no accounting database (slurmdbd), so ``sacct`` cannot tell
    submitit that the job was cancelled and the submitting process would wait on; as a
    user would, the test then stops it (SIGTERM), and the sweep's parent ends KILLED."""
    blocked = tmp_path / "block"
    command = slurm_sweep(
        server,
        cluster,
        tmp_path / "sweep",
        "cancelled",
        "model=all_minilm_l6_v2",
        "target=digits",
        "analysis=fast",
        "+hydra.callbacks.block._target_=tests.blocking.BlockUntilReleased",
        f"+hydra.callbacks.block.folder={blocked}",
        "+hydra.callbacks.block.point=before_close",
        "+hydra.callbacks.block.timeout_s=600",
    )
    with open(tmp_path / "sweep.log", "w") as log:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=job_environment(server),
            text=True,
        )
    try:
        wait_for_file(blocked / "before_close.0", STATE_TIMEOUT_S * 3, process)
        [job] = [line.split()[0] for line in queue() if " RUNNING " in f" {line} "]
        subprocess.run(["scancel", job.split("_")[0]], check=True)
        statuses = wait_until(
            lambda: [s for (s,) in run_statuses(server, "cancelled", child=True) if s != "RUNNING"],
            "the cancelled job's run did not end",
        )
        assert statuses == ["KILLED"]
        wait_until(lambda: not queue(), "squeue still lists the cancelled job")
        if process.poll() is None:  # submitit cannot see the cancellation without sacct
            process.terminate()
        process.wait(timeout=STATE_TIMEOUT_S)
    finally:
        (blocked / RELEASE).parent.mkdir(parents=True, exist_ok=True)
        (blocked / RELEASE).touch()  # whatever happened, nothing waits on
        if process.poll() is None:
            process.kill()
    printed = (tmp_path / "sweep.log").read_text()
    assert [s for (s,) in run_statuses(server, "cancelled", child=False)] == ["KILLED"], printed[
        -3000:
    ]


def run_statuses(server: Server, experiment: str, child: bool) -> list[tuple]:
    """The statuses of an experiment's child runs (``child``) or sweep parents."""
    key, value = ("mlflow.parentRunId", None) if child else ("embsvd.role", "sweep")
    return psql(
        server.backend_uri,
        "SELECT r.status FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id "
        "JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE e.name = %s AND t.key = %s AND (%s::text IS NULL OR t.value = %s::text)",
        experiment,
        key,
        value,
        value,
    )


def test_the_server_benchmark_reports_the_writer_ramp(cluster):
    """benchmarks/server_benchmark.py in its small mode, as docs/performance.md runs it in
    full: every field it reports, every run written, none lost."""
    sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
    try:
        import server_benchmark
    finally:
        sys.path.remove(str(PROJECT_ROOT / "benchmarks"))

    report = server_benchmark.measure(cluster.postgres_uri, small=True, sweep=False)
    [step] = report["ramp"]
    assert step["writers"] == 2 and step["runs"] == 2
    assert (step["finished"], step["errors"], step["crashed_writers"]) == (2, 0, 0)
    assert 0 < step["latency_median_s"] <= step["latency_p95_s"]
    assert step["runs_per_s"] > 0 and report["auth_cache_s"] == 60


def test_jobs_logging_the_same_group_at_once_both_keep_it(server, monkeypatch):
    """MLflow's database store looks a dataset up, then inserts it: two jobs of a sweep
    logging the same group at the same moment both insert, and PostgreSQL refuses the
    second (``dataset_pk``). Here the other job's insert is held open in a transaction
    until this job's insert waits on it, then committed: the job must keep its input."""
    import psycopg

    from embsvd import tracking
    from embsvd.groups import KeptToken, TokenGroup

    for name, value in server.credentials().items():
        monkeypatch.setenv(name, value)
    store = tracking.TrackingStore(server.url, "dataset-race")
    run = tracking.start_run(store, "race", {})
    group = TokenGroup("digits", words=("1",), kept=(KeptToken("1", "1", 1),), dropped=())
    dataset = tracking.runs.group_dataset(group, is_target=True).dataset
    other_job = psycopg.connect(server.backend_uri)  # a transaction, committed below
    other_job.execute(
        "INSERT INTO datasets (dataset_uuid, experiment_id, name, digest, dataset_source_type,"
        " dataset_source) VALUES (%s, %s, %s, %s, %s, %s)",
        (
            "0" * 32,
            int(store.experiment_id),
            dataset.name,
            dataset.digest,
            dataset.source_type,
            dataset.source,
        ),
    )
    failures: list[BaseException] = []

    def log_inputs() -> None:
        try:
            tracking.RunLogger(store.client, run.run_id).log_inputs(
                [tracking.runs.group_dataset(group, is_target=True)]
            )
        except BaseException as error:  # noqa: BLE001 (reported below)
            failures.append(error)

    job = threading.Thread(target=log_inputs)
    job.start()
    try:
        wait_until(  # this job's insert waits on the other job's uncommitted row
            lambda: psql(
                server.backend_uri,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query ILIKE 'INSERT INTO datasets%%'",
            )[0][0],
            "no insert waited on the held dataset row",
        )
    finally:
        other_job.commit()
        other_job.close()
    job.join(timeout=STATE_TIMEOUT_S)
    assert not job.is_alive() and failures == []
    [logged] = store.client.get_run(run.run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("digits", dataset.digest)
