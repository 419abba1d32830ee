"""Console output of a sweep: the commands that open its runs and draw its figures.

Both show the tracking URI with its credentials redacted (``embsvd.pipeline.secrets``):
what a sweep prints ends up in terminals, job logs and shared screens.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from embsvd.pipeline.secrets import redact_text

SERVER_SCHEMES = ("http://", "https://")


def mlflow_ui_command(tracking_uri: str, port: int = 5000, page: str | None = None) -> str:
    """The command that opens the MLflow UI on ``tracking_uri`` (this environment's mlflow),
    or, for a tracking server, the server's address: it serves its own UI.

    With ``page`` (a page of the UI relative to its address, such as a sweep's saved view
    ``#/experiments/1/runs?viewStateShareKey=embsvd-<sweep id>``): the server's address of
    that page, or the command and, on the next line, ``then <the page's address>``."""
    if tracking_uri.startswith(SERVER_SCHEMES):
        address = redact_text(tracking_uri)
        return f"{address.rstrip('/')}/{page}" if page else address
    mlflow = Path(sys.prefix) / "bin" / "mlflow"
    command = shlex.join(
        [
            str(mlflow),
            "ui",
            "--backend-store-uri",
            redact_text(tracking_uri),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    )
    return f"{command}\n  then http://127.0.0.1:{port}/{page}" if page else command


def figures_command(project: Path, tracking_uri: str, sweep_id: str) -> str:
    """The command that draws a sweep's paper figures (``experiments/figures.py``). A
    password in the URI shows as ``***``: a server's credentials belong in the
    environment (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD)."""
    script = project / "experiments" / "figures.py"
    overrides = [f"sweep.sweep_id={sweep_id}", f"tracking.uri={redact_text(tracking_uri)}"]
    return shlex.join([str(Path(sys.executable)), str(script), *overrides])
