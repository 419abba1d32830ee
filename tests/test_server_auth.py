"""The shared-server recipe (README, docs/sweeps.md), for real: ``embsvd server`` (MLflow's
basic-auth app) on 127.0.0.1 with its admin password from the environment, a user for the
jobs, and ``experiments/run.py`` logging to it with credentials from the environment, or
(a sweep) in the tracking URI, where they must not be kept or shown."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tests.test_mlflow_ui import free_port, running_server
from tests.test_secrets import (
    FAST,
    assert_nowhere,
    files_under,
    run_script,
    stored_bytes,
    tiny_model,
)

pytestmark = pytest.mark.slow

CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@contextlib.contextmanager
def embsvd_server(folder: Path, backend: str, admin_password: str) -> Iterator[str]:
    """``embsvd server`` on ``backend`` (settings from the environment, as the docs start
    it: no credential from this process's environment) on a free 127.0.0.1 port; yields
    its URL (no trailing ``/``) once it answers, and ends it afterwards (its log:
    ``folder/server.log``; its state and artifacts in ``folder``)."""
    port = free_port()
    command = [sys.executable, "-m", "embsvd.pipeline.cli", "server", "--port", str(port)]
    command += ["--workers", "2", "--state", str(folder / "state")]
    command += ["--artifacts", str(folder / "artifacts")]
    env = {
        **{k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARIABLES},
        "EMBSVD_SERVER_BACKEND_URI": backend,
        "EMBSVD_SERVER_ADMIN_PASSWORD": admin_password,
    }
    with running_server(folder, command, port, env) as base_url:
        yield base_url.rstrip("/")


def create_user(url: str, admin_password: str, user: str) -> str:
    """A user of the server at ``url``, created by its admin; returns its password."""
    password = secrets.token_urlsafe(18)
    status, body = request(
        url + "/api/2.0/mlflow/users/create",
        auth=("admin", admin_password),
        payload={"username": user, "password": password},
    )
    assert status == 200, body
    return password


@dataclass(frozen=True)
class AuthServer:
    url: str  # http://127.0.0.1:<port>, no credentials
    user: str
    password: str  # the jobs' user's, created by the admin


def request(url: str, *, auth: tuple[str, str] | None = None, payload: dict | None = None):
    """An HTTP request to the server: (status, body)."""
    data = json.dumps(payload).encode() if payload is not None else None
    sent = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    sent.add_header("Content-Type", "application/json")
    if auth is not None:
        sent.add_header(
            "Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode()
        )
    try:
        with urllib.request.urlopen(sent, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """The recipe's server, started as the docs say (``embsvd server``): basic auth,
    bound to 127.0.0.1, proxied artifacts, the admin's password from the environment (a
    sqlite store here; tests/test_cluster.py runs it on PostgreSQL); and a user for the
    jobs."""
    folder = tmp_path_factory.mktemp("auth_server")
    admin_password = secrets.token_urlsafe(18)
    with embsvd_server(folder, f"sqlite:///{folder / 'mlflow.db'}", admin_password) as url:
        printed = (folder / "server.log").read_text(errors="replace")
        assert "basic auth" in printed and admin_password not in printed
        assert oct((folder / "state" / "auth.ini").stat().st_mode & 0o777) == "0o600"
        user = "alice"
        password = create_user(url, admin_password, user)
        yield AuthServer(url, user, password)


@pytest.fixture
def as_user(auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> MlflowClient:
    """A client of this process, with the jobs' user's credentials from the environment."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    return MlflowClient(auth_server.url)


def test_an_unauthenticated_client_is_refused(auth_server, monkeypatch):
    search = auth_server.url + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert request(search)[0] == 401
    assert request(search, auth=(auth_server.user, "not-the-password"))[0] == 401
    assert request(search, auth=(auth_server.user, auth_server.password))[0] == 200
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MlflowException, match="401"):
        MlflowClient(auth_server.url).search_experiments()


def test_a_job_logs_with_credentials_from_the_environment(
    auth_server, as_user, tiny_bert, tmp_path
):
    job_dir = tmp_path / "job"
    done = run_script(
        tmp_path,
        *tiny_model(tiny_bert),
        *FAST,
        f"tracking.uri={auth_server.url}",
        "tracking.experiment=env_credentials",
        f"hydra.run.dir={job_dir}",
        env={
            "MLFLOW_TRACKING_USERNAME": auth_server.user,
            "MLFLOW_TRACKING_PASSWORD": auth_server.password,
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = as_user.get_experiment_by_name("env_credentials")
    [run] = as_user.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == auth_server.url
    kept = stored_bytes(as_user, run.info.run_id, tmp_path / "downloads")
    assert "artifact config.yaml" in kept and "artifact spectrum.csv" in kept
    kept |= {f"job folder {k}": v for k, v in files_under(job_dir).items()}
    kept |= {"stdout": done.stdout.encode(), "stderr": done.stderr.encode()}
    assert_nowhere(auth_server.password, kept)


def test_a_sweep_with_the_password_in_the_uri_keeps_and_shows_none(
    auth_server, as_user, tiny_bert, tmp_path, monkeypatch
):
    address = auth_server.url.removeprefix("http://")
    uri = f"http://{auth_server.user}:{auth_server.password}@{address}"
    sweep_dir = tmp_path / "sweep"
    # the subprocess has no credentials in its environment: the URI's are the ones used
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name)
    done = run_script(
        tmp_path,
        "-m",
        *tiny_model(tiny_bert),
        *FAST,
        f"tracking.uri={uri}",
        "tracking.experiment=uri_credentials",
        f"hydra.sweep.dir={sweep_dir}",
        "target=digits,eu_countries",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    experiment = as_user.get_experiment_by_name("uri_credentials")
    runs = as_user.search_runs([experiment.experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    kept = {"stdout": done.stdout.encode(), "stderr": done.stderr.encode()}
    for run in runs:  # the parent (children.csv, sweep_summary.txt) and its children
        kept |= stored_bytes(as_user, run.info.run_id, tmp_path / "downloads")
    kept |= {f"sweep folder {k}": v for k, v in files_under(sweep_dir).items()}
    assert_nowhere(auth_server.password, kept)
    redacted = f"{auth_server.user}:***@127.0.0.1"
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    assert redacted in child.data.params["tracking.uri"]
    # a sweep's job overrides are as Hydra escapes them: http\://alice\:***@...
    assert f"{auth_server.user}\\:***@127.0.0.1" in child.data.tags["embsvd.overrides"]
    assert f"in http://{redacted}" in done.stdout  # the sweep's first line
    assert "View run" not in done.stdout  # MLflow's run links would show the password
