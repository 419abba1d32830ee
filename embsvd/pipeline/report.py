"""Console output of a sweep: the commands that open its runs and draw its figures."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def mlflow_ui_command(tracking_uri: str, port: int = 5000) -> str:
    """The command that opens the MLflow UI on ``tracking_uri`` (this environment's mlflow)."""
    mlflow = Path(sys.prefix) / "bin" / "mlflow"
    return shlex.join(
        [
            str(mlflow),
            "ui",
            "--backend-store-uri",
            tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    )


def figures_command(project: Path, tracking_uri: str, sweep_id: str) -> str:
    """The command that draws a sweep's paper figures (``experiments/figures.py``)."""
    script = project / "experiments" / "figures.py"
    overrides = [f"sweep.sweep_id={sweep_id}", f"tracking.uri={tracking_uri}"]
    return shlex.join([str(Path(sys.executable)), str(script), *overrides])
