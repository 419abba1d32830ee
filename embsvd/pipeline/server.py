"""A shared tracking server the way a lab runs one: ``mlflow server`` with a database
backend store (PostgreSQL), proxied artifacts in one folder, and MLflow's basic-auth app.

``embsvd server`` (``make server``) starts it from settings given as options or in the
environment, so that a service file or a job script holds no password on its command
line:

    EMBSVD_SERVER_BACKEND_URI      the backend store (postgresql://user:password@host/db)
    EMBSVD_SERVER_ADMIN_PASSWORD   the basic-auth admin's password (used when the users'
                                   database is created)
    EMBSVD_SERVER_ARTIFACTS        the artifact destination (default: mlruns/server-artifacts)
    EMBSVD_SERVER_STATE            where auth.ini, the users' database and the login-form
                                   key are kept, readable by the owner alone
                                   (default: mlruns/server)
    EMBSVD_SERVER_AUTH_CACHE_S     seconds a verified login is remembered (default 60;
                                   0: every request hashes the password again)
    EMBSVD_SERVER_HOST, _PORT, _WORKERS, _ALLOWED_HOSTS

Workers never touch the artifact folder: the server proxies uploads and downloads
(``--artifacts-destination``), so they need the server's address and a user's
credentials (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``) and nothing
else. Authentication is always on: the basic-auth app is what makes it safe to bind a
network address at all (docs/sweeps.md#a-shared-tracking-server).
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORT = 5000
DEFAULT_WORKERS = 4
# MLflow's basic-auth app checks the password's scrypt hash (about 0.1 s of CPU) once or
# twice per request unless a verified login is remembered (its auth_cache_ttl_seconds, off
# by default): a job's run makes tens of requests, so without it a server spends most of
# its CPU on password hashes (docs/performance.md#a-shared-tracking-server). A changed or
# deleted password stops working on a worker at once or within this many seconds.
DEFAULT_AUTH_CACHE_S = 60
ADMIN_USER = "admin"
# The backend stores a lab's server is run with; sqlite serves one machine only (a file
# on NFS is not safe for writers on several machines), so it is allowed but named as such.
BACKEND_SCHEMES = ("postgresql", "postgresql+psycopg2", "mysql", "mysql+pymysql", "sqlite")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServerSettingsError(ValueError):
    """Settings the server cannot start from; the message names the setting to fix."""


@dataclass(frozen=True)
class ServerSettings:
    backend_store_uri: str
    admin_password: str
    artifacts_destination: Path
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    workers: int = DEFAULT_WORKERS
    allowed_hosts: str | None = None
    auth_cache_s: int = DEFAULT_AUTH_CACHE_S

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def auth_config(self) -> Path:
        return self.state_dir / "auth.ini"

    @property
    def auth_database(self) -> Path:
        return self.state_dir / "auth.db"


def settings_from(
    options: Mapping[str, object], environ: Mapping[str, str], project: Path
) -> ServerSettings:
    """The server's settings: an option given (``options``, e.g. parsed flags; ``None``
    where not given) wins over ``EMBSVD_SERVER_<NAME>`` in ``environ``; then defaults.

    Raises:
        ServerSettingsError: a missing backend store or admin password, a backend scheme
            MLflow cannot serve, a port or worker count out of range.
    """

    def setting(name: str, default: str | None = None) -> str | None:
        given = options.get(name)
        if given is not None:
            return str(given)
        return environ.get(f"EMBSVD_SERVER_{name.upper()}") or default

    backend = setting("backend_uri")
    if not backend:
        raise ServerSettingsError(
            "no backend store: set EMBSVD_SERVER_BACKEND_URI (or --backend-uri) to the "
            "database the server keeps runs in, e.g. "
            "postgresql://mlflow:<password>@db.lab:5432/mlflow"
        )
    scheme = urlsplit(backend).scheme
    if scheme not in BACKEND_SCHEMES:
        raise ServerSettingsError(
            f"backend store {redact_uri(backend)!r}: scheme {scheme!r} is not one MLflow "
            f"serves from a database; use one of {', '.join(BACKEND_SCHEMES)}"
        )
    password = environ.get("EMBSVD_SERVER_ADMIN_PASSWORD", "")
    if len(password) < 12:
        raise ServerSettingsError(
            "EMBSVD_SERVER_ADMIN_PASSWORD: the basic-auth admin's password must be set, at "
            "least 12 characters (e.g. export EMBSVD_SERVER_ADMIN_PASSWORD=$(openssl rand "
            "-base64 24)); it is read from the environment only, never from a command line"
        )
    port = _integer("port", setting("port", str(DEFAULT_PORT)), 1, 65535)
    workers = _integer("workers", setting("workers", str(DEFAULT_WORKERS)), 1, 64)
    auth_cache = _integer(
        "auth_cache_s", setting("auth_cache_s", str(DEFAULT_AUTH_CACHE_S)), 0, 3600
    )
    return ServerSettings(
        backend_store_uri=backend,
        admin_password=password,
        artifacts_destination=Path(
            setting("artifacts", str(project / "mlruns" / "server-artifacts"))
        ).expanduser(),
        state_dir=Path(setting("state", str(project / "mlruns" / "server"))).expanduser(),
        host=setting("host", "127.0.0.1"),
        port=port,
        workers=workers,
        allowed_hosts=setting("allowed_hosts"),
        auth_cache_s=auth_cache,
    )


def _integer(name: str, value: str | None, low: int, high: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise ServerSettingsError(
            f"{name}: {value!r} is not a whole number from {low} to {high} "
            f"(--{name} or EMBSVD_SERVER_{name.upper()})"
        )
    return number


def prepare_state(settings: ServerSettings) -> dict[str, str]:
    """Write the basic-auth app's config (owner-only) and keep the login forms' signing
    key across restarts; return the environment the server process needs (the backend
    store's URI among it)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.state_dir.chmod(0o700)
    settings.artifacts_destination.mkdir(parents=True, exist_ok=True)
    config = (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{settings.auth_database}\n"
        f"admin_username = {ADMIN_USER}\n"
        f"admin_password = {settings.admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        f"auth_cache_ttl_seconds = {settings.auth_cache_s}\n"
    )
    _write_private(settings.auth_config, config)
    key_file = settings.state_dir / "flask_secret_key"
    if not key_file.is_file():
        _write_private(key_file, secrets.token_hex(32))
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(settings.auth_config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": key_file.read_text().strip(),
        # the store's URI holds the database's password: in the environment, which only
        # the owner can read, not on the command line, which `ps` shows everyone
        "MLFLOW_BACKEND_STORE_URI": settings.backend_store_uri,
    }


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)
    path.chmod(0o600)  # a file that existed keeps its mode through O_CREAT


def server_argv(settings: ServerSettings) -> list[str]:
    """``mlflow server`` with the basic-auth app and proxied artifacts; the backend store
    comes from the environment (``prepare_state``), so no password is on its command
    line."""
    script = Path(sys.prefix) / "bin" / "mlflow"
    mlflow = [str(script)] if script.is_file() else [sys.executable, "-m", "mlflow"]
    argv = [
        *mlflow,
        "server",
        "--app-name",
        "basic-auth",
        "--artifacts-destination",
        str(settings.artifacts_destination),
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
    ]
    if settings.allowed_hosts:  # the names clients use: MLflow checks the Host header
        argv += ["--allowed-hosts", settings.allowed_hosts]
    return argv


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user part as ``***``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def describe(settings: ServerSettings) -> list[str]:
    """What the server will be, as lines for the console (no secret in them)."""
    exposed = settings.host not in LOOPBACK
    return [
        f"MLflow server (basic auth, admin user {ADMIN_USER!r}) at {settings.url}"
        + (f", listening on {settings.host}" if exposed else ""),
        f"  backend store: {redact_uri(settings.backend_store_uri)}",
        f"  artifacts:     {settings.artifacts_destination} (proxied: workers need no access)",
        f"  auth state:    {settings.state_dir} (owner-only)",
        "  add a user for the jobs: http://<server>:<port>/signup as admin, or "
        "mlflow.server.auth.client.AuthServiceClient(url).create_user(name, password)",
        "  jobs log with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD and "
        f"tracking.uri={settings.url}",
    ]
