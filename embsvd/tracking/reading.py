"""Reading a sweep back: the runs figures are made from, chosen by parent run, sweep id
or filter, as plain ``contract.LoggedRun`` records; the sweeps of a store listed
(``SweepSummary``) and one found by id; and logging the figures made."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
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
STATUS_ORDER = ("FINISHED", "FAILED", "KILLED", *UNENDED)
RUN_ID = re.compile(r"[0-9a-f]{32}")  # what MLflow's stores give a run as its id
SWEEPS_EXAMINED = 200  # the default selection looks this far back for a sweep to draw
PAGE = 100  # sweep parents read per query
LISTED = 5  # sweeps a message lists


@dataclass(frozen=True)
class SweepSelection:
    """Which runs to read: at most one of ``parent_run_id``, ``sweep_id`` and
    ``filter_string``; none of them means the latest sweep that has a FINISHED run and,
    unless ``include_running``, no run still going (``latest_sweep``). ``experiment`` narrows
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


@dataclass(frozen=True)
class SweepSummary:
    """A sweep as the store holds it now: its parent run, and its runs (the parent's
    children and the runs a resumed sweep reused) counted by status."""

    parent_run_id: str
    sweep_id: str | None  # the parent's id tag, when it is a plain name (what selects it)
    name: str  # the parent run's name
    experiment: str  # the parent run's
    status: str  # the parent run's
    start_time: int | None  # the parent run's, in ms since the epoch
    counts: dict[str, int]  # status -> how many of the sweep's runs have it

    @property
    def label(self) -> str:
        """What names this sweep in a selection: its id, else its parent run's id."""
        return self.sweep_id or self.parent_run_id

    def count(self, status: str) -> int:
        return self.counts.get(status, 0)

    @property
    def n_runs(self) -> int:
        return sum(self.counts.values())

    @property
    def n_unended(self) -> int:
        """Runs that may still log, the parent included."""
        return sum(map(self.count, UNENDED)) + (self.status in UNENDED)

    def describe(self) -> str:
        """``<id> (<parent status>; <n> FINISHED, <n> FAILED, ...)``: a line to copy from."""
        counted = ", ".join(f"{self.counts[s]} {s}" for s in _by_status(self.counts))
        return f"{self.label} ({self.status}; {counted or 'no runs'})"

    def not_drawable(self, include_running: bool = False) -> str | None:
        """Why the default figures selection passes this sweep over; ``None`` if it takes it."""
        if not self.count("FINISHED"):
            return "no FINISHED run"
        if self.n_unended and not include_running:
            return "runs not ended"
        return None


def list_sweeps(
    tracking_uri: str, experiment: str | None = None, limit: int | None = None
) -> list[SweepSummary]:
    """The sweeps of the store (of ``experiment`` only, if given), newest first; at most
    ``limit`` of them (``None``: every one). An empty store has none.

    Raises:
        ValueError: The store has no experiment named ``experiment``.
    """
    client = MlflowClient(tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    scope = _scope(experiments, experiment, tracking_uri, key="--experiment")
    return [
        _summary(parent, _children(client, list(experiments), parent), experiments)
        for parent in _sweep_parents(client, scope, limit)
    ]


@dataclass(frozen=True)
class SweepChoice:
    """The sweep a selection without parent run, id or filter takes, and the newer sweeps
    it passed over (``SweepSummary.not_drawable`` says why)."""

    parent: Run
    taken: SweepSummary
    skipped: tuple[SweepSummary, ...]
    include_running: bool

    def describe(self) -> str:
        wanted = "a FINISHED run" + ("" if self.include_running else " and every run ended")
        taken = f"sweep {self.taken.label} (parent run {self.taken.parent_run_id})"
        if not self.skipped:
            return f"{taken}: the latest sweep (it has {wanted})"
        passed = ", ".join(
            f"{s.describe()}: {s.not_drawable(self.include_running)}" for s in self.skipped[:LISTED]
        ) + (f" and {len(self.skipped) - LISTED} more" if len(self.skipped) > LISTED else "")
        return f"{taken}: the latest sweep with {wanted}; newer sweeps skipped: {passed}"


def latest_sweep(
    tracking_uri: str, experiment: str | None = None, include_running: bool = False
) -> SweepChoice:
    """The sweep ``read_sweep`` takes when the selection names none: the latest with a
    FINISHED run and, unless ``include_running``, no run still going.

    Raises:
        ValueError: The store has no sweep, or none to draw; the message lists the latest
            sweeps with their ids and statuses.
    """
    client = MlflowClient(tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    scope = _scope(experiments, experiment, tracking_uri)
    return _latest_drawable(client, scope, experiments, include_running, tracking_uri)


def find_sweep(
    tracking_uri: str, sweep: str, experiment: str | None = None
) -> tuple[SweepSummary, list[Run]]:
    """The sweep named ``sweep`` (its id, or its parent run's id) and all its runs in job
    order, whatever their status (the parent left out).

    Raises:
        ValueError: No such sweep (the message lists the latest sweeps, with their ids and
            statuses), or no such experiment.
    """
    client = MlflowClient(tracking_uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    scope = _scope(experiments, experiment, tracking_uri, key="--experiment")
    parents = []
    if contract.is_plain_name(sweep):
        parents = client.search_runs(
            scope,
            f"{SWEEP_PARENTS} and tags.`{Tag.SWEEP_ID}` = '{sweep}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
    if not parents and RUN_ID.fullmatch(sweep):
        try:
            parents = [client.get_run(sweep)]
        except MlflowException:
            parents = []
        if parents and parents[0].data.tags.get(Tag.ROLE) != contract.SWEEP_ROLE:
            raise ValueError(
                f"run {sweep} is not a sweep's parent run (it has no tag "
                f"{Tag.ROLE}={contract.SWEEP_ROLE}); {_hint(client, scope, experiments)}"
            )
    if not parents:
        raise ValueError(
            f"{sweep!r}: no sweep with this id or parent run id in {tracking_uri}; "
            + _hint(client, scope, experiments)
        )
    [parent] = parents
    runs = _children(client, list(experiments), parent)
    return _summary(parent, runs, experiments), runs


def read_sweep(tracking_uri: str, selection: SweepSelection) -> contract.Sweep:
    """The FINISHED runs of the selected sweep, with the series and tables figures need.
    The sweep's name (its id tag, or the filter's name) is made ``contract.file_safe``:
    a tag in a shared store is anyone's text, and the name becomes a folder.

    Raises ``ValueError`` naming the selection when it matches no run, no FINISHED run,
    or runs of more than one experiment; and, unless ``selection.include_running``, when
    a run of it (the sweep's parent too) is still RUNNING, naming those runs. A message
    that finds no sweep lists the latest ones, each with its id and status.
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
        parent = _parent(client, scope, experiments, selection, tracking_uri)
        runs = _children(client, list(experiments), parent)
        tagged = parent.data.tags.get(Tag.SWEEP_ID)
        name = contract.file_safe(tagged) if tagged else contract.sweep_id(parent.info.run_name)
        described = f"sweep {name!r} (parent run {parent.info.run_id})"
    if not runs:
        raise ValueError(
            f"{described} in {tracking_uri}: no runs match; {_hint(client, scope, experiments)}"
        )
    _one_experiment(runs, experiments, described)
    if not selection.include_running:
        _refuse_running([parent, *runs] if parent else runs, described)
    finished = [r for r in runs if r.info.status == "FINISHED"]  # the same Run objects
    if not finished:
        statuses = ", ".join(f"{r.info.run_name} {r.info.status}" for r in runs)
        raise ValueError(f"{described}: no FINISHED run to draw ({statuses})")
    with tempfile.TemporaryDirectory() as scratch:
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
def no_progress_bars() -> Iterator[None]:
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


def _scope(
    experiments: dict[str, str], experiment: str | None, uri: str, key: str = "sweep.experiment"
) -> list[str]:
    """The ids of the experiments searched; ``key`` names the setting in a message."""
    if not experiments:
        raise ValueError(
            f"the tracking store {uri} holds no experiment: run a sweep first (make run)"
        )
    if experiment is None:
        return list(experiments)
    ids = [i for i, name in experiments.items() if name == experiment]
    if not ids:
        raise ValueError(
            f"{key}={experiment!r}: no such experiment in {uri} "
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


def _parent(
    client: MlflowClient,
    scope: list[str],
    experiments: dict[str, str],
    selection: SweepSelection,
    uri: str,
) -> Run:
    if selection.parent_run_id:
        try:
            parent = client.get_run(selection.parent_run_id)
        except MlflowException as error:
            raise ValueError(
                f"sweep.parent_run_id={selection.parent_run_id!r}: no such run in {uri}"
            ) from error
        return parent
    if not selection.sweep_id:
        choice = _latest_drawable(client, scope, experiments, selection.include_running, uri)
        log.info("%s", choice.describe())
        return choice.parent
    parents = client.search_runs(
        scope,
        f"{SWEEP_PARENTS} and tags.`{Tag.SWEEP_ID}` = '{selection.sweep_id}'",
        max_results=2,
        order_by=["attributes.start_time DESC"],
    )
    if not parents:
        raise ValueError(
            f"sweep.sweep_id={selection.sweep_id!r}: no sweep with this id in {uri}; "
            + _hint(client, scope, experiments)
        )
    if len(parents) > 1:
        log.info("sweep id %s has several parent runs: taking the latest", selection.sweep_id)
    return parents[0]


def _latest_drawable(
    client: MlflowClient,
    scope: list[str],
    experiments: dict[str, str],
    include_running: bool,
    uri: str,
) -> SweepChoice:
    """The latest sweep with a FINISHED run (and, unless ``include_running``, none still
    running): a sweep in progress, or one whose jobs all failed, has nothing to draw yet,
    and the sweep before it has."""
    skipped: list[SweepSummary] = []
    for parent in _sweep_parents(client, scope, SWEEPS_EXAMINED):
        summary = _summary(parent, _children(client, list(experiments), parent), experiments)
        if summary.not_drawable(include_running) is None:
            return SweepChoice(parent, summary, tuple(skipped), include_running)
        skipped.append(summary)
    if not skipped:
        raise ValueError(
            f"no sweep in {uri} (no run is tagged {Tag.ROLE}={contract.SWEEP_ROLE}); "
            + _hint(client, scope, experiments)
        )
    wanted = "a FINISHED run" + ("" if include_running else " and no run still going")
    raise ValueError(
        f"no sweep in {uri} has {wanted} (looked at the latest {len(skipped)}): "
        f"{_listed(skipped)}. Choose one with sweep.sweep_id=<id> (or "
        "sweep.parent_run_id=<run id>); a sweep still RUNNING is drawn with "
        "sweep.include_running=true, and runs whose process is gone are closed by "
        "`embsvd runs reconcile`"
    )


def _sweep_parents(client: MlflowClient, scope: list[str], limit: int | None) -> Iterator[Run]:
    """Sweep parent runs, newest first, read a page at a time; at most ``limit``."""
    left = limit
    token = None
    while left is None or left > 0:
        page = client.search_runs(
            scope,
            SWEEP_PARENTS,
            max_results=PAGE if left is None else min(left, PAGE),
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        yield from page
        left = None if left is None else left - len(page)
        token = page.token
        if not token or not page:
            return


def _summary(parent: Run, runs: list[Run], experiments: dict[str, str]) -> SweepSummary:
    tagged = parent.data.tags.get(Tag.SWEEP_ID)
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.info.status] = counts.get(run.info.status, 0) + 1
    return SweepSummary(
        parent_run_id=parent.info.run_id,
        sweep_id=tagged if contract.is_plain_name(tagged) else None,
        name=parent.info.run_name,
        experiment=experiments.get(parent.info.experiment_id, parent.info.experiment_id),
        status=parent.info.status,
        start_time=parent.info.start_time,
        counts=counts,
    )


def _by_status(counts: dict[str, int]) -> list[str]:
    """The statuses counted, in the order a sweep's life goes through them."""
    return sorted(counts, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else 99, s))


def _listed(summaries: list[SweepSummary]) -> str:
    return ", ".join(s.describe() for s in summaries[:LISTED]) + (
        f" and {len(summaries) - LISTED} more" if len(summaries) > LISTED else ""
    )


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


def _hint(client: MlflowClient, scope: list[str], experiments: dict[str, str]) -> str:
    """The latest sweeps, each with its id and status, for a message to copy one from."""
    recent = [
        _summary(parent, _children(client, list(experiments), parent), experiments)
        for parent in _sweep_parents(client, scope, LISTED)
    ]
    if not recent:
        return (
            "run a sweep with `embsvd run -m ...` (or experiments/run.py -m; make run), or "
            "choose runs with sweep.experiment and sweep.filter"
        )
    return "recent sweeps: " + _listed(recent)


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
    tables = read_tables(client, run.info.run_id, artifacts.TABLES_READ, scratch)
    # the pairs without the run's target: in its tables, not its metrics
    metrics = {**artifacts.pair_metrics(tables), **metrics}
    return contract.LoggedRun(
        run_id=run.info.run_id,
        name=run.info.run_name,
        experiment=experiments.get(run.info.experiment_id, run.info.experiment_id),
        tags=dict(run.data.tags),
        metrics=metrics,
        series=series,
        tables=tables,
        params=dict(run.data.params),
    )


def read_tables(
    client: MlflowClient, run_id: str, files: Iterable[str], scratch: Path
) -> dict[str, tuple[dict[str, str], ...]]:
    """The CSV artifacts ``files`` of a run, as rows; a file the run did not log is left
    out. Downloaded into ``scratch``."""
    logged = {a.path for a in client.list_artifacts(run_id)}
    tables = {}
    for file in files:
        if file in logged:
            with no_progress_bars():  # MLflow's bar per file: a line per run and table
                local = client.download_artifacts(run_id, file, str(scratch))
            text = Path(local).read_text(encoding="utf-8")
            tables[file] = tuple(csv.DictReader(io.StringIO(text)))
    return tables


def with_tables(
    client: MlflowClient, run: contract.LoggedRun, files: Iterable[str], scratch: Path
) -> contract.LoggedRun:
    """``run`` with the tables ``files`` it logged added (``read_sweep`` reads only those
    the paper figures need, ``artifacts.TABLES_READ``); ``scratch`` is created."""
    scratch.mkdir()
    wanted = [file for file in files if file not in run.tables]
    tables = read_tables(client, run.run_id, wanted, scratch)
    return dataclasses.replace(run, tables={**run.tables, **tables})


def log_figures(tracking_uri: str, run_id: str, folder: Path, artifact_path: str) -> None:
    """Log a folder of figures to a run (a sweep's parent), replacing earlier copies."""
    MlflowClient(tracking_uri).log_artifacts(run_id, str(folder), artifact_path)
