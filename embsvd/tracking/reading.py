"""Reading a sweep back: the runs figures are made from, chosen by parent run, sweep id
or filter, as plain ``contract.LoggedRun`` records; and logging the figures made."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from embsvd.tracking import artifacts, contract
from embsvd.tracking.contract import Tag

log = logging.getLogger(__name__)
MAX_RUNS = 5000  # a sweep larger than this is read in part: search_runs' page
PROGRESS_BAR_VARIABLE = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
SWEEP_PARENTS = f"tags.`{Tag.ROLE}` = '{contract.SWEEP_ROLE}'"
UNENDED = ("RUNNING", "SCHEDULED")  # statuses of runs that may still log


@dataclass(frozen=True)
class SweepSelection:
    """Which runs to read: at most one of ``parent_run_id``, ``sweep_id`` and
    ``filter_string``; none of them means the most recent sweep. ``experiment`` narrows
    the search (a filter needs one). ``name`` names a filter's folder of figures.
    ``include_running``: draw the FINISHED runs of a selection that still has RUNNING ones.

    Raises:
        ValueError: ``sweep_id`` or ``name`` is not a plain name (``contract.PLAIN_NAME_RULE``):
            a name becomes a folder, and an id is matched in a filter string.
    """

    parent_run_id: str | None = None
    sweep_id: str | None = None
    experiment: str | None = None
    filter_string: str | None = None
    name: str | None = None
    include_running: bool = False

    def __post_init__(self) -> None:
        for key in ("sweep_id", "name"):
            if getattr(self, key) is not None:
                contract.check_plain_name(f"sweep.{key}", getattr(self, key))


def read_sweep(tracking_uri: str, selection: SweepSelection) -> contract.Sweep:
    """The FINISHED runs of the selected sweep, with the series and tables figures need.
    The sweep's name (its id tag, or the filter's name) is made ``contract.file_safe``:
    a tag in a shared store is anyone's text, and the name becomes a folder.

    Raises ``ValueError`` naming the selection when it matches no run, no FINISHED run,
    or runs of more than one experiment; and, unless ``selection.include_running``, when
    a run of it (the sweep's parent too) is still RUNNING, naming those runs.
    """
    client = MlflowClient(tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    chosen = [selection.parent_run_id, selection.sweep_id, selection.filter_string]
    if sum(bool(c) for c in chosen) > 1:
        raise ValueError(
            "sweep: give one of parent_run_id, sweep_id and filter, not several "
            f"(got parent_run_id={selection.parent_run_id!r}, sweep_id={selection.sweep_id!r},"
            f" filter={selection.filter_string!r})"
        )
    if selection.filter_string and not selection.experiment:
        raise ValueError(
            f"sweep.filter={selection.filter_string!r} needs sweep.experiment, the experiment "
            "whose runs it filters (e.g. sweep.experiment=embsvd)"
        )
    scope = _scope(experiments, selection.experiment, tracking_uri)
    if selection.filter_string:
        runs = _search(client, scope, selection.filter_string)
        runs = [r for r in runs if r.data.tags.get(Tag.ROLE) != contract.SWEEP_ROLE]
        experiment = experiments[scope[0]]  # the one experiment a filter searches
        digest = hashlib.sha256(selection.filter_string.encode()).hexdigest()[:8]
        name = selection.name or contract.file_safe(f"{experiment}_filter_{digest}")
        described = f"runs of experiment {experiment!r} matching {selection.filter_string!r}"
        parent = None
    else:
        parent = _parent(client, scope, selection, tracking_uri)
        runs = _children(client, list(experiments), parent)
        tagged = parent.data.tags.get(Tag.SWEEP_ID)
        name = contract.file_safe(tagged) if tagged else contract.sweep_id(parent.info.run_name)
        described = f"sweep {name!r} (parent run {parent.info.run_id})"
    if not runs:
        raise ValueError(f"{described} in {tracking_uri}: no runs match; {_hint(client, scope)}")
    _one_experiment(runs, experiments, described)
    if not selection.include_running:
        _refuse_running([parent, *runs] if parent else runs, described)
    finished = [r for r in runs if r.info.status == "FINISHED"]  # the same Run objects
    if not finished:
        statuses = ", ".join(f"{r.info.run_name} {r.info.status}" for r in runs)
        raise ValueError(f"{described}: no FINISHED run to draw ({statuses})")
    with tempfile.TemporaryDirectory() as scratch, _no_progress_bars():
        logged = tuple(_logged_run(client, r, experiments, Path(scratch)) for r in finished)
    return contract.Sweep(
        name=name,
        selection=described,
        parent_run_id=parent.info.run_id if parent else None,
        runs=logged,
        left_out=tuple(
            (r.info.run_name, r.info.status) for r in runs if r.info.status != "FINISHED"
        ),
    )


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar per artifact download: dozens of lines per sweep."""
    previous = os.environ.get(PROGRESS_BAR_VARIABLE)
    os.environ[PROGRESS_BAR_VARIABLE] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[PROGRESS_BAR_VARIABLE]
        else:
            os.environ[PROGRESS_BAR_VARIABLE] = previous


def _refuse_running(runs: list[Run], described: str) -> None:
    """Figures of a selection whose runs still log would leave out, or half-read, what
    they are about to log; a run whose process died stays RUNNING until it is marked."""
    running = [r for r in runs if r.info.status in UNENDED]
    if not running:
        return
    listed = ", ".join(
        f"{r.info.run_name} (run {r.info.run_id}"
        + (", the sweep's parent" if r.data.tags.get(Tag.ROLE) == contract.SWEEP_ROLE else "")
        + f", {r.info.status})"
        for r in running[:10]
    ) + (f" and {len(running) - 10} more" if len(running) > 10 else "")
    raise ValueError(
        f"{described}: {len(running)} of its runs have not ended: {listed}. Wait until they "
        "end; if their processes are gone (killed, a lost node), mark them with "
        "`embsvd runs reconcile`; or set sweep.include_running=true to draw the finished "
        "runs now, leaving those out"
    )


def _scope(experiments: dict[str, str], experiment: str | None, uri: str) -> list[str]:
    if not experiments:
        raise ValueError(
            f"the tracking store {uri} holds no experiment: run a sweep first (make run)"
        )
    if experiment is None:
        return list(experiments)
    ids = [i for i, name in experiments.items() if name == experiment]
    if not ids:
        raise ValueError(
            f"sweep.experiment={experiment!r}: no such experiment in {uri} "
            f"(it has {', '.join(sorted(experiments.values()))})"
        )
    return ids


def _search(client: MlflowClient, scope: list[str], filter_string: str) -> list[Run]:
    try:
        return client.search_runs(
            scope, filter_string, max_results=MAX_RUNS, order_by=["attributes.start_time ASC"]
        )
    except MlflowException as error:
        raise ValueError(
            f"sweep.filter={filter_string!r} is not a valid MLflow filter: {error.message}"
        ) from error


def _parent(client: MlflowClient, scope: list[str], selection: SweepSelection, uri: str) -> Run:
    if selection.parent_run_id:
        try:
            parent = client.get_run(selection.parent_run_id)
        except MlflowException as error:
            raise ValueError(
                f"sweep.parent_run_id={selection.parent_run_id!r}: no such run in {uri}"
            ) from error
        return parent
    filter_string = SWEEP_PARENTS
    if selection.sweep_id:
        filter_string += f" and tags.`{Tag.SWEEP_ID}` = '{selection.sweep_id}'"
    parents = client.search_runs(
        scope, filter_string, max_results=2, order_by=["attributes.start_time DESC"]
    )
    if not parents:
        if selection.sweep_id:
            which = f"sweep.sweep_id={selection.sweep_id!r}: no sweep with this id in {uri}"
        else:
            which = f"no sweep in {uri} (no run is tagged {Tag.ROLE}={contract.SWEEP_ROLE})"
        raise ValueError(f"{which}; {_hint(client, scope)}")
    if len(parents) > 1 and selection.sweep_id:
        log.info("sweep id %s has several parent runs: taking the latest", selection.sweep_id)
    return parents[0]


def _children(client: MlflowClient, experiment_ids: list[str], parent: Run) -> list[Run]:
    """The parent's children in any experiment, and the runs a resumed sweep reused."""
    runs = _search(client, experiment_ids, f"tags.`{Tag.PARENT_RUN_ID}` = '{parent.info.run_id}'")
    reused = contract.skipped_jobs(parent.data.tags)  # job number -> the run with its config
    runs += [client.get_run(run_id) for _, run_id in sorted(reused.items())]
    job = {run_id: job_num for job_num, run_id in reused.items()}
    return sorted(runs, key=lambda r: (_job_num(r, job), r.info.start_time, r.info.run_id))


def _job_num(run: Run, reused: dict[str, int]) -> int:
    if run.info.run_id in reused:
        return reused[run.info.run_id]
    return int(run.data.tags.get(Tag.JOB_NUM, 10**9))


def _one_experiment(runs: list[Run], experiments: dict[str, str], described: str) -> None:
    counts: dict[str, int] = {}
    for run in runs:
        name = experiments.get(run.info.experiment_id, run.info.experiment_id)
        counts[name] = counts.get(name, 0) + 1
    if len(counts) > 1:
        listed = ", ".join(f"{name!r} ({n} runs)" for name, n in sorted(counts.items()))
        first = sorted(counts)[0]
        raise ValueError(
            f"{described} holds runs of several experiments: {listed}. Figures compare runs "
            f"of one experiment: select one with sweep.experiment={first} and a sweep.filter"
        )


def _hint(client: MlflowClient, scope: list[str]) -> str:
    recent = client.search_runs(
        scope,
        SWEEP_PARENTS,
        max_results=5,
        order_by=["attributes.start_time DESC"],
    )
    ids = [r.data.tags.get(Tag.SWEEP_ID) or r.info.run_id for r in recent]
    if not ids:
        return (
            "run a sweep with experiments/run.py -m (make run), or choose runs with "
            "sweep.experiment and sweep.filter"
        )
    return "recent sweeps: " + ", ".join(ids)


def _logged_run(
    client: MlflowClient, run: Run, experiments: dict[str, str], scratch: Path
) -> contract.LoggedRun:
    metrics = dict(run.data.metrics)
    series = {
        key: tuple(
            m.value
            for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        )
        for key in contract.SERIES_READ
        if key in metrics
    }
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    tables = {}
    for file in artifacts.TABLES_READ:
        if file in logged:
            local = client.download_artifacts(run.info.run_id, file, str(scratch))
            text = Path(local).read_text(encoding="utf-8")
            tables[file] = tuple(csv.DictReader(io.StringIO(text)))
    return contract.LoggedRun(
        run_id=run.info.run_id,
        name=run.info.run_name,
        experiment=experiments.get(run.info.experiment_id, run.info.experiment_id),
        tags=dict(run.data.tags),
        metrics=metrics,
        series=series,
        tables=tables,
    )


def log_figures(tracking_uri: str, run_id: str, folder: Path, artifact_path: str) -> None:
    """Log a folder of figures to a run (a sweep's parent), replacing earlier copies."""
    MlflowClient(tracking_uri).log_artifacts(run_id, str(folder), artifact_path)
