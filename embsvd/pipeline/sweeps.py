"""Sweeps: each job's config composed once, and the parent MLflow run of a multirun."""

from __future__ import annotations

import atexit
import copy
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

import embsvd
from embsvd.pipeline.config import (
    PROJECT_ROOT,
)
from embsvd.pipeline.report import figures_command, mlflow_ui_command
from embsvd.tracking import contract

if TYPE_CHECKING:  # imported where used: mlflow alone takes seconds to import
    from embsvd import tracking

from embsvd.pipeline.job import PARENT_RUN_FILE, SWEEP_ID_FILE, code_state

log = logging.getLogger(__name__)


# --- sweeps: each job's config composed once -----------------------------------------------


class ComposeOnce:
    """A Hydra config loader that hands each job's composed config out twice for one
    composition: a sweeper composes every job to validate the batch, then the launcher
    composes it again, and composing costs 0.2-0.4 s a job here (OmegaConf merges),
    more than a job's own work. Everything else goes to the wrapped loader."""

    MAX_HELD = 512  # configs kept between the two requests (0.3 MB each); beyond, compose again

    def __init__(self, loader: Any):
        self._loader = loader
        self._composed: dict[tuple[str, ...], DictConfig] = {}
        self.requests = self.compositions = 0

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_loader", "_composed"):
            raise AttributeError(name)  # copy and pickle probe instances that have no state
        return getattr(self._loader, name)

    def __getstate__(self) -> dict[str, Any]:
        # launchers copy Hydra's state into every worker: the held configs stay here
        return {**self.__dict__, "_composed": {}}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]):
        self.requests += 1
        key = tuple(sweep_overrides)
        if key in self._composed:  # the second request takes the copy made at the first
            return self._composed.pop(key)
        self.compositions += 1
        config = self._loader.load_sweep_config(master_config, sweep_overrides)
        if len(self._composed) < self.MAX_HELD:
            self._composed[key] = copy.deepcopy(config)
        return config


class ComposeJobsOnce(Callback):
    """Makes the multirun's sweeper and launcher share one composition per job.

    Hydra 1.3 builds the sweeper's context from ``Hydra.config_loader`` right after
    ``on_multirun_start``, so wrapping that loader here reaches both. Were Hydra to read
    it earlier, jobs would be composed twice as before: slower, not different.
    """

    def __init__(self) -> None:
        self.loader: ComposeOnce | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra = GlobalHydra.instance().hydra
        if hydra is not None and not isinstance(hydra.config_loader, ComposeOnce):
            self.loader = hydra.config_loader = ComposeOnce(hydra.config_loader)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.loader is not None:
            log.info(
                "composed %d job configs for %d requests",
                self.loader.compositions,
                self.loader.requests,
            )


class SweepTracking(Callback):
    """One parent MLflow run per multirun, closed with the status its children earned.

    Hydra calls ``on_multirun_end`` only when every job succeeded: a failed job makes
    the sweeper raise, and Ctrl-C aborts the sweep. So the parent is also closed at
    interpreter exit (``atexit``), after a job failure or an interrupt; ``sys.excepthook``
    notes an interrupt, and SIGTERM is turned into one. Closing prints the children's
    table, names the failed jobs and makes the command exit non-zero when any failed.
    """

    def __init__(self) -> None:
        self._store: tracking.TrackingStore | None = None
        self._parent_run_id: str | None = None
        self._interrupted = False
        self._sweep_id = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from embsvd import tracking

        uri = tracking.resolve_tracking_uri(config.tracking.uri, PROJECT_ROOT)
        # creating the store here runs its migrations once, before parallel workers start
        self._store = tracking.TrackingStore(
            uri, config.tracking.experiment, config.tracking.artifact_root
        )
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = list(config.hydra.overrides.task)
        git = code_state()
        name = sweep_run_name(overrides, sweep_dir)
        tags = {
            "embsvd.role": "sweep",
            contract.SWEEP_ID_TAG: contract.sweep_id(name),
            "embsvd.sweep_dir": str(sweep_dir),
            "embsvd.overrides": " ".join(overrides),
            "embsvd.launcher": config.hydra.launcher.get("_target_", ""),
            "embsvd.version": embsvd.__version__,
            **({"mlflow.source.git.commit": git.commit} if git else {}),
        }
        parent = tracking.start_run(self._store, name, tags)
        self._parent_run_id = parent.run_id
        self._sweep_id = tags[contract.SWEEP_ID_TAG]
        (sweep_dir / PARENT_RUN_FILE).write_text(parent.run_id)
        (sweep_dir / SWEEP_ID_FILE).write_text(tags[contract.SWEEP_ID_TAG])
        print(
            f"Sweep {tags[contract.SWEEP_ID_TAG]}: parent run {parent.run_id} in {uri}", flush=True
        )
        atexit.register(self._close_at_exit)
        previous_hook = sys.excepthook

        def note_interrupt(kind, value, traceback):  # noqa: ANN001 (sys.excepthook's)
            self._interrupted = self._interrupted or issubclass(kind, KeyboardInterrupt)
            previous_hook(kind, value, traceback)

        sys.excepthook = note_interrupt
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._interrupt)

    def _interrupt(self, signum: int, frame: Any) -> None:
        """Note the interrupt, then raise it. The note matters: a KeyboardInterrupt raised
        while Python runs a weakref callback or a ``__del__`` is printed and dropped, and
        the sweep would go on and end FINISHED with exit status 0."""
        self._interrupted = True
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self._interrupted:  # the interrupt was dropped where it was raised: stop here
            raise KeyboardInterrupt("the sweep was interrupted")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        outcome = self._close(completed=True)
        if self._interrupted or (outcome is not None and outcome.status != "FINISHED"):
            raise SystemExit(1)

    def _close_at_exit(self) -> None:
        # the sweep raised (a job failed: Hydra exits 1) or was interrupted: the exit
        # status is already non-zero
        self._close(completed=False)

    def _close(self, completed: bool) -> tracking.SweepOutcome | None:
        from embsvd import tracking

        if self._store is None or self._parent_run_id is None:
            return None
        store, parent_run_id = self._store, self._parent_run_id
        self._parent_run_id = None
        atexit.unregister(self._close_at_exit)
        outcome = tracking.finish_sweep(
            store, parent_run_id, interrupted=self._interrupted, completed=completed
        )
        print(f"\n{tracking.format_sweep_table(outcome.children)}", flush=True)
        for job_num, run_id in sorted(outcome.skipped.items(), key=lambda kv: int(kv[0])):
            print(f"job #{job_num}: skipped, run {run_id} has its config", flush=True)
        failed = outcome.with_status("FAILED") + outcome.with_status("KILLED")
        for child in failed:
            print(
                f"job #{child.tags.get('embsvd.job_num', '?')} {child.status}: {child.name} "
                f"({child.tags.get('embsvd.overrides', '')}): {child.tags.get('embsvd.error', '')}",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"\nSweep {outcome.status}: {len(outcome.children)} runs under parent run "
            f"{parent_run_id}, {len(failed)} failed or killed, {len(outcome.skipped)} skipped."
            f"\nOpen the MLflow UI on this store:\n  {mlflow_ui_command(store.uri)}"
            f"\nDraw its paper figures:\n  {figures_command(store.uri, self._sweep_id)}",
            flush=True,
        )
        return outcome


def sweep_run_name(overrides: list[str], sweep_dir: Path) -> str:
    """``sweep/<experiment or 'multirun'>/<sweep folder's date and time>``."""
    experiment = next(
        (o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")),
        "multirun",
    )
    return f"sweep/{experiment}/{sweep_dir.parent.name} {sweep_dir.name}"
