"""``embsvd server``'s settings: what it refuses, what it writes, what it runs and prints.
The server itself runs in tests/test_server_auth.py (sqlite) and tests/test_cluster.py
(PostgreSQL, under SLURM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embsvd.pipeline import cli, server

PASSWORD = "a-long-admin-password"
BACKEND = "postgresql://mlflow:db-secret@db.lab:5432/mlflow"


def settings(tmp_path: Path, **environ: str) -> server.ServerSettings:
    given = {"EMBSVD_SERVER_BACKEND_URI": BACKEND, "EMBSVD_SERVER_ADMIN_PASSWORD": PASSWORD}
    return server.settings_from({}, {**given, **environ}, tmp_path)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"EMBSVD_SERVER_BACKEND_URI": ""},
            "no backend store: set EMBSVD_SERVER_BACKEND_URI (or --backend-uri)",
        ),
        (
            {"EMBSVD_SERVER_BACKEND_URI": "file:///shared/mlruns"},
            "scheme 'file' is not one MLflow serves from a database",
        ),
        (
            {"EMBSVD_SERVER_ADMIN_PASSWORD": "short"},
            "EMBSVD_SERVER_ADMIN_PASSWORD: the basic-auth admin's password must be set",
        ),
        ({"EMBSVD_SERVER_PORT": "70000"}, "port: '70000' is not a whole number from 1 to 65535"),
        ({"EMBSVD_SERVER_WORKERS": "many"}, "workers: 'many' is not a whole number from 1 to 64"),
        (
            {"EMBSVD_SERVER_AUTH_CACHE_S": "-1"},
            "auth_cache_s: '-1' is not a whole number from 0 to 3600",
        ),
    ],
)
def test_settings_a_server_cannot_start_from_are_refused_by_name(tmp_path, environ, message):
    with pytest.raises(server.ServerSettingsError) as refused:
        settings(tmp_path, **environ)
    assert message in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_a_password_in_the_backend_uri_is_never_shown(tmp_path):
    with pytest.raises(server.ServerSettingsError) as refused:
        settings(tmp_path, EMBSVD_SERVER_BACKEND_URI="oracle://u:db-secret@h/x")
    assert "oracle://u:***@h/x" in str(refused.value) and "db-secret" not in str(refused.value)
    described = "\n".join(server.describe(settings(tmp_path)))
    assert "postgresql://mlflow:***@db.lab:5432/mlflow" in described
    assert "db-secret" not in described and PASSWORD not in described


def test_options_win_over_the_environment_then_the_defaults(tmp_path):
    chosen = server.settings_from(
        {"port": 5077, "host": None},
        {
            "EMBSVD_SERVER_BACKEND_URI": BACKEND,
            "EMBSVD_SERVER_ADMIN_PASSWORD": PASSWORD,
            "EMBSVD_SERVER_PORT": "6000",
            "EMBSVD_SERVER_HOST": "0.0.0.0",
        },
        tmp_path,
    )
    assert (chosen.port, chosen.host, chosen.workers) == (5077, "0.0.0.0", 4)
    assert chosen.artifacts_destination == tmp_path / "mlruns" / "server-artifacts"
    assert chosen.state_dir == tmp_path / "mlruns" / "server"
    assert chosen.url == "http://127.0.0.1:5077"


def test_the_server_runs_the_basic_auth_app_with_proxied_artifacts(tmp_path):
    chosen = settings(tmp_path, EMBSVD_SERVER_ALLOWED_HOSTS="mlflow.lab:*")
    argv = server.server_argv(chosen)
    assert argv[argv.index("--app-name") + 1] == "basic-auth"
    assert "--backend-store-uri" not in argv and "db-secret" not in " ".join(argv)  # ps shows it
    assert argv[argv.index("--artifacts-destination") + 1] == str(chosen.artifacts_destination)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--allowed-hosts") + 1] == "mlflow.lab:*"
    assert PASSWORD not in " ".join(argv)  # the admin's password is in auth.ini only


def test_the_auth_state_is_owner_only_and_its_signing_key_survives_a_restart(tmp_path):
    chosen = settings(tmp_path)
    first = server.prepare_state(chosen)
    assert oct(chosen.state_dir.stat().st_mode & 0o777) == "0o700"
    assert oct(chosen.auth_config.stat().st_mode & 0o777) == "0o600"
    config = chosen.auth_config.read_text()
    assert f"admin_password = {PASSWORD}" in config
    assert f"database_uri = sqlite:///{chosen.auth_database}" in config
    assert "auth_cache_ttl_seconds = 60" in config  # MLflow's cache of verified logins
    assert first["MLFLOW_AUTH_CONFIG_PATH"] == str(chosen.auth_config)
    assert first["MLFLOW_BACKEND_STORE_URI"] == BACKEND  # not on the command line
    again = server.prepare_state(chosen)
    assert again["MLFLOW_FLASK_SERVER_SECRET_KEY"] == first["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert chosen.artifacts_destination.is_dir()


def test_the_command_says_what_to_set_and_starts_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EMBSVD_SERVER_BACKEND_URI", raising=False)
    monkeypatch.setenv("EMBSVD_SERVER_ADMIN_PASSWORD", PASSWORD)
    assert cli.main(["server"]) == 1
    printed = capsys.readouterr().err
    assert printed.startswith("embsvd server: no backend store: set EMBSVD_SERVER_BACKEND_URI")
    assert not (tmp_path / "mlruns").exists()
