"""Plain-text summaries of runs read back from the tracking store."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from embsvd.tracking import RunRecord


def format_sweep_table(runs: list[RunRecord]) -> str:
    """One line per run: status, group-mean r of the target with each other group, raw
    and centered on the vocabulary's mean (each with its percentile in the matched null),
    last/first singular value, the jackknife stability of axis 0 (mean |cos|), and the
    first axis' top 5 tokens at each end."""
    header = [
        "run",
        "status",
        "group-mean r raw (null pct)",
        "r centered (null pct)",
        "s_last/s_first",
        "axis 0 stability",
        "axis 0 top",
        "axis 0 bottom",
    ]
    rows = [header] + [_row(run) for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) if runs else "(no runs)"


def _correlations(run: RunRecord, prefix: str) -> str:
    """``other=+0.016 (15)`` for every metric ``<prefix>/<a>__<b>`` with the target."""
    target = run.tags.get("embsvd.target_group", "?")
    correlations = []
    for key, value in sorted(run.metrics.items()):
        if key.startswith(f"{prefix}/"):
            a, b = key.removeprefix(f"{prefix}/").split("__")
            if target in (a, b):
                percentile = run.metrics.get(f"null/{key}/percentile")
                null = f" ({percentile:.0f})" if percentile is not None else ""
                correlations.append(f"{b if a == target else a}={value:+.3f}{null}")
    return " ".join(correlations) or "-"


def _row(run: RunRecord) -> list[str]:
    ratio = run.metrics.get("singular_value_last_over_first")
    stability = run.metrics.get("stability/axis0_cos")
    return [
        run.name,
        run.status,
        _correlations(run, "group_mean_corr"),
        _correlations(run, "group_mean_corr_centered"),
        f"{ratio:.2e}" if ratio is not None else "-",
        f"{stability:.2f}" if stability is not None else "-",
        run.tags.get("embsvd.axis0.top", "-"),
        run.tags.get("embsvd.axis0.bottom", "-"),
    ]


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


def figures_command(tracking_uri: str, sweep_id: str) -> str:
    """The command that draws a sweep's paper figures (``experiments/figures.py``)."""
    from embsvd.config import PROJECT_ROOT

    script = PROJECT_ROOT / "experiments" / "figures.py"
    overrides = [f"sweep.sweep_id={sweep_id}", f"tracking.uri={tracking_uri}"]
    return shlex.join([str(Path(sys.executable)), str(script), *overrides])
