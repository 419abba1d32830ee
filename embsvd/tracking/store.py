"""The tracking store: where runs live, and runs read back as plain records."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from embsvd.tracking import recovery
from embsvd.tracking.contract import Tag
from embsvd.tracking.journal import Journal, checkpoint, set_journal

DEFAULT_EXPERIMENT = "embsvd"
STORE_FOLDER = "mlruns"  # under the project root: mlflow.db and artifacts/
# MLflow 3's UI opens an experiment of this kind on its runs table (with the charts and
# the compare view), not on the GenAI traces overview
EXPERIMENT_KIND = (str(Tag.EXPERIMENT_KIND), "custom_model_development")


def resolve_tracking_uri(configured: str | None, project_root: Callable[[], Path]) -> str:
    """The tracking URI: the config's, else ``MLFLOW_TRACKING_URI``, else the project's
    sqlite store ``<project_root()>/mlruns/mlflow.db`` (whatever the working directory).
    The project folder is asked for only when needed: a job given a URI needs none."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(project_root() / STORE_FOLDER / 'mlflow.db').resolve()}"


def default_artifact_root(tracking_uri: str) -> Path | None:
    """``artifacts/`` beside a sqlite database; ``None`` (the server decides) otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts"
    return None


class TrackingStore:
    """An MLflow tracking store and one experiment in it.

    Opening it also writes what earlier runs could not (``recovery.replay``): their
    pending final writes are reported through ``report`` (stderr by default), written,
    and removed.

    Args:
        uri: The tracking URI (``resolve_tracking_uri``).
        experiment: The experiment's name; created unless ``create`` is false.
        artifact_root: Where a new experiment keeps its artifacts (default
            ``default_artifact_root``).
        create: Create the experiment when the store has none of that name.
        report: Receives one line per pending write replayed.
        journal: A sqlite store's journal mode (``Journal``; ``set_journal``); ``None``:
            the database's own.

    Raises:
        ValueError: ``create`` is false and the store has no such experiment.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        artifact_root: str | Path | None = None,
        *,
        create: bool = True,
        report: Callable[[str], None] = recovery.report_to_stderr,
        journal: Journal | str | None = None,
    ):
        self.uri = uri
        root = Path(artifact_root) if artifact_root else default_artifact_root(uri)
        if uri.startswith("sqlite:///"):
            # sqlite creates the database file, not its folder
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        with schema_lock(uri):  # MLflow creates a new database's tables on first use
            self.journal = set_journal(uri, journal)
            self.client = MlflowClient(tracking_uri=uri)
            self.experiment_id = self._experiment_id(experiment, root, create)
            if self.journal == Journal.wal:  # a new database's schema into the file at once
                checkpoint(uri.removeprefix("sqlite:///"))
        self.replayed = recovery.replay(self.client, uri, report)

    def _experiment_id(self, name: str, artifact_root: Path | None, create: bool) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if Tag.EXPERIMENT_KIND not in found.tags:  # a store made by an earlier embsvd
                self.client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
            return found.experiment_id
        if not create:
            names = sorted(e.name for e in self.client.search_experiments())
            raise ValueError(
                f"experiment {name!r}: the store {recovery.display_uri(self.uri)} has no "
                f"experiment of that name (it has: {', '.join(names) or 'none'}); pass one "
                "of these"
            )
        # MLflow's default artifact location is relative to the working directory
        location = (artifact_root / name).resolve().as_uri() if artifact_root else None
        return self.client.create_experiment(
            name, artifact_location=location, tags=dict([EXPERIMENT_KIND])
        )

    def find_runs(self, filter_string: str = "") -> list[RunRecord]:
        """Runs of the experiment that match an MLflow filter string, oldest first."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string, max_results=5000, order_by=["start_time ASC"]
        )
        return [
            RunRecord(
                run_id=r.info.run_id,
                name=r.info.run_name,
                status=r.info.status,
                tags=dict(r.data.tags),
                params=dict(r.data.params),
                metrics=dict(r.data.metrics),
            )
            for r in runs
        ]

    def children(self, parent_run_id: str) -> list[RunRecord]:
        """The runs whose ``mlflow.parentRunId`` is ``parent_run_id``, oldest first."""
        return self.find_runs(f"tags.`{Tag.PARENT_RUN_ID}` = '{parent_run_id}'")

    def metric_history(self, run_id: str, key: str) -> list[float]:
        """A step series, ordered by step."""
        history = self.client.get_metric_history(run_id, key)
        return [m.value for m in sorted(history, key=lambda m: m.step)]


@contextmanager
def schema_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` beside a sqlite store while the block
    runs: processes that open a new store at once (two sweeps, parallel workers) would
    otherwise race in MLflow's schema setup and experiment creation, and all but one
    fail. Other stores (a server) serialize this themselves: no lock. Where the lock
    file cannot be written (a read-only folder) nobody can set the schema up: no lock."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    try:
        handle = open(uri.removeprefix("sqlite:///") + ".lock", "a")  # noqa: SIM115
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class RunRecord:
    """A finished or failed run as read back from the store (latest metric values)."""

    run_id: str
    name: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
