"""Sweeps: every job's config composed once and checked before any job starts, and the
parent MLflow run of a multirun."""

from __future__ import annotations

import atexit
import copy
import logging
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException, HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from embsvd import tracking
from embsvd.pipeline.config import checked_settings
from embsvd.pipeline.job import PARENT_RUN_FILE, SWEEP_ID_FILE, code_state
from embsvd.pipeline.project import project_root
from embsvd.pipeline.provenance import package_version
from embsvd.pipeline.report import figures_command, mlflow_ui_command
from embsvd.pipeline.secrets import redact_overrides, redact_text
from embsvd.tracking import contract
from embsvd.tracking.contract import Tag

log = logging.getLogger(__name__)


# --- sweeps: every job composed and checked once, before any starts --------------------------


class SweepRefused(CompactHydraException):
    """A sweep with a job that cannot run, refused before the job starts. Its message
    names each key, value and what is allowed, and is printed alone: by Hydra, which
    prints a ``CompactHydraException`` without its traceback, or by
    ``validate_sweep_or_exit``."""


class ComposeOnce:
    """A Hydra config loader that composes each job's config once for all its requests,
    and checks every composition (``check``, e.g. ``checked_settings``).

    Composing costs 0.2-0.4 s a job here (OmegaConf merges), more than a job's own work,
    and Hydra asks twice for each job: the sweeper composes every job to check the batch,
    then the launcher composes it again. A config composed ahead of the sweep
    (``compose_ahead``) serves both requests; one composed on request, the next one.
    Everything else goes to the wrapped loader."""

    MAX_HELD = 512  # configs held for later requests (0.3 MB each); beyond, compose again
    REQUESTS = 2  # Hydra's requests for a job's config: the sweeper's, then the launcher's

    def __init__(self, loader: Any, check: Callable[[DictConfig], object] | None = None):
        self._loader = loader
        self._check = check
        # overrides -> (config, how many more requests it serves)
        self._composed: dict[tuple[str, ...], tuple[DictConfig, int]] = {}
        self.requests = self.compositions = 0  # Hydra's requests; compositions of any kind
        self.sweep_checked = False  # ``validate_sweep`` composed and checked every job

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_loader", "_composed", "_check"):
            raise AttributeError(name)  # copy and pickle probe instances that have no state
        return getattr(self._loader, name)

    def __getstate__(self) -> dict[str, Any]:
        # launchers copy Hydra's state into every worker: the held configs stay here
        return {**self.__dict__, "_composed": {}}

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: list[str]):
        self.requests += 1
        key = tuple(sweep_overrides)
        if key in self._composed:
            config, left = self._composed.pop(key)
            if left == 1:
                return config
            self._composed[key] = (config, left - 1)  # a later request takes the original
            return copy.deepcopy(config)  # requesters mutate theirs (hydra.job.num)
        try:
            config = self._compose(master_config, sweep_overrides)
        except (OSError, ValueError) as error:  # a job no sweep-wide check composed ahead
            raise SweepRefused(f"job {' '.join(sweep_overrides)}: {error}") from error
        if len(self._composed) < self.MAX_HELD:
            self._composed[key] = (copy.deepcopy(config), self.REQUESTS - 1)
        return config

    def compose_ahead(self, master_config: DictConfig, sweep_overrides: list[str]) -> None:
        """Compose and check a job's config before Hydra asks for it, and hold it for
        Hydra's requests.

        Raises:
            hydra.errors.HydraException: the job's config cannot be composed.
            ValueError, OSError: ``check`` refused it.
        """
        config = self._compose(master_config, sweep_overrides)
        if len(self._composed) < self.MAX_HELD:
            self._composed[tuple(sweep_overrides)] = (config, self.REQUESTS)

    def _compose(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        self.compositions += 1
        config = self._loader.load_sweep_config(master_config, list(sweep_overrides))
        if self._check is not None:
            self._check(config)
        return config


def validate_sweep(config: DictConfig) -> ComposeOnce | None:
    """Compose every job of the multirun ``config`` and check it (``checked_settings``)
    before any job starts and before the sweep's parent run opens; refuse the whole
    sweep, naming every reason and its jobs, when one job cannot run. Idempotent: the
    callbacks that need it call it in whatever order Hydra runs them.

    Installs a ``ComposeOnce`` as Hydra's config loader (returned; ``None`` outside a
    Hydra app), so these compositions serve the sweeper and the launcher too. Only the
    basic sweeper's jobs are known ahead; another sweeper's are checked as it composes
    them (``ComposeOnce.check``), after the parent run opened.

    Raises:
        SweepRefused: a job's config cannot be composed or does not validate.
    """
    hydra = GlobalHydra.instance().hydra
    if hydra is None:
        return None
    loader = hydra.config_loader
    if not isinstance(loader, ComposeOnce):
        loader = hydra.config_loader = ComposeOnce(loader, check=checked_settings)
    if loader.sweep_checked:
        return loader
    jobs = sweep_jobs(config, loader) or []
    refused: dict[str, list[tuple[int, list[str]]]] = {}
    for num, overrides in enumerate(jobs):
        try:
            loader.compose_ahead(config, overrides)
        except (HydraException, OmegaConfBaseException, OSError, ValueError) as error:
            refused.setdefault(_reason(error), []).append((num, overrides))
    if refused:
        raise SweepRefused(_refusal(refused, len(jobs)))
    loader.sweep_checked = True
    return loader


def validate_sweep_or_exit(config: DictConfig) -> ComposeOnce | None:
    """``validate_sweep`` for a callback: a refusal is printed and ends the process with
    status 1. Hydra turns an ``Exception`` raised in a callback into a warning and starts
    the sweep anyway; ``SystemExit`` is not one."""
    try:
        return validate_sweep(config)
    except SweepRefused as refusal:
        print(redact_text(str(refusal)), file=sys.stderr, flush=True)  # it lists overrides
        raise SystemExit(1) from refusal


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def sweep_jobs(config: DictConfig, loader: Any) -> list[list[str]] | None:
    """Every job's overrides, expanded as Hydra's basic sweeper expands them (the sweep
    params of the config, then the command line's overrides); ``None`` for another
    sweeper, which may choose its jobs as results come in."""
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    [jobs] = BasicSweeper.split_arguments(overrides, max_batch_size=None)
    return jobs


def _reason(error: Exception) -> str:
    """Why a job cannot run, naming the key: OmegaConf's first line says what is wrong
    and what is allowed (the rest lists its node types), Hydra's names the override."""
    cause = error.__cause__
    if isinstance(error, HydraException) and isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None)
        return f"{key + ': ' if key else ''}{str(cause).splitlines()[0]} ({error})"
    return str(error)


def _refusal(refused: dict[str, list[tuple[int, list[str]]]], n_jobs: int) -> str:
    n_refused = sum(len(jobs) for jobs in refused.values())
    lines = [
        f"The sweep was refused before it started; no run was opened. "
        f"{n_refused} of {n_jobs} jobs cannot run:"
    ]
    for reason, jobs in refused.items():
        first, overrides = jobs[0]
        if len(jobs) == 1:
            lines += [reason, f"  job #{first}: {' '.join(overrides)}"]
        else:
            numbers = ", ".join(f"#{n}" for n, _ in jobs[:10]) + (", ..." if jobs[10:] else "")
            lines += [reason, f"  jobs {numbers}; #{first}: {' '.join(overrides)}"]
    return "\n".join(lines)


class ComposeJobsOnce(Callback):
    """Composes and checks every job of the multirun before it starts
    (``validate_sweep``), and makes the sweeper and the launcher reuse those
    compositions.

    Hydra 1.3 builds the sweeper's context from ``Hydra.config_loader`` right after
    ``on_multirun_start``, so wrapping that loader here reaches both. Were Hydra to read
    it earlier, jobs would be composed again: slower, not different. ``conf/config.yaml``
    lists this callback first; ``SweepTracking`` validates too (once: it is idempotent),
    so no parent run opens for a refused sweep whatever the order.
    """

    def __init__(self) -> None:
        self.loader: ComposeOnce | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.loader = validate_sweep_or_exit(config)

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
    notes an interrupt, and SIGTERM and SIGHUP are turned into one. Closing prints the
    children's table, names the failed jobs and makes the command exit non-zero when any
    failed. The parent opens only once every job's config validated (``validate_sweep``).

    Nothing here lets a sweep go on unseen: a parent that cannot be opened ends the
    command (status 1) before any job starts, and the close never raises (a crash in it
    closes the parent FAILED with the error, and the command exits 1). Signals that
    arrive while the parent closes are delivered once it is closed.
    """

    def __init__(self) -> None:
        self._store: tracking.TrackingStore | None = None
        self._parent_run_id: str | None = None
        self._interrupted = False
        self._sweep_id = ""
        self._project = Path.cwd()  # replaced by the project's folder when the sweep starts
        self._close_failed = False  # the close raised: the command exits 1
        self._uri = ""  # the store's, once resolved

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Open the parent run, or end the command with status 1 before any job starts:
        Hydra turns an exception raised in a callback into a warning and would launch the
        jobs without a parent."""
        try:
            self._open(config)
        except Exception as error:
            print(
                redact_text(
                    "The sweep did not start: its parent run could not be opened in "
                    f"{self._uri or 'the tracking store'}: {tracking.describe(error)}. No job "
                    "was run: make the store reachable and writable (tracking.uri), then "
                    "start the sweep again."
                ),
                file=sys.stderr,
                flush=True,
            )
            self._abandon(error)
            raise SystemExit(1) from error
        except BaseException as error:  # Ctrl-C while it opened
            self._abandon(error, "KILLED")
            raise

    def _open(self, config: DictConfig) -> None:
        validate_sweep_or_exit(config)  # a sweep that cannot run leaves no parent run behind
        self._project = project_root(config)
        uri = self._uri = tracking.resolve_tracking_uri(config.tracking.uri, lambda: self._project)
        # creating the store here runs its migrations once, before parallel workers start
        self._store = tracking.TrackingStore(
            uri, config.tracking.experiment, config.tracking.artifact_root
        )
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = list(config.hydra.overrides.task)
        git = code_state(self._project)
        name = sweep_run_name(overrides, sweep_dir)
        tags = {
            Tag.ROLE: contract.SWEEP_ROLE,
            Tag.SWEEP_ID: contract.sweep_id(name),
            Tag.SWEEP_DIR: str(sweep_dir),
            Tag.OVERRIDES: " ".join(redact_overrides(overrides)),
            Tag.LAUNCHER: config.hydra.launcher.get("_target_", ""),
            Tag.VERSION: package_version(),
            **({Tag.GIT_COMMIT: git.commit} if git else {}),
        }
        parent = tracking.start_run(self._store, name, tags)
        self._parent_run_id = parent.run_id
        self._sweep_id = tags[Tag.SWEEP_ID]
        (sweep_dir / PARENT_RUN_FILE).write_text(parent.run_id)
        (sweep_dir / SWEEP_ID_FILE).write_text(tags[Tag.SWEEP_ID])
        print(
            f"Sweep {tags[Tag.SWEEP_ID]}: parent run {parent.run_id} in {redact_text(uri)}",
            flush=True,
        )
        atexit.register(self._close_at_exit)
        previous_hook = sys.excepthook

        def note_interrupt(kind, value, traceback):  # noqa: ANN001 (sys.excepthook's)
            self._interrupted = self._interrupted or issubclass(kind, KeyboardInterrupt)
            previous_hook(kind, value, traceback)

        sys.excepthook = note_interrupt
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
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
        failed = outcome is not None and outcome.status != "FINISHED"
        if self._interrupted or self._close_failed or failed:
            raise SystemExit(1)

    def _close_at_exit(self) -> None:
        # the sweep raised (a job failed: Hydra exits 1) or was interrupted: the exit
        # status is already non-zero
        self._close(completed=False)

    def _close(self, completed: bool) -> tracking.SweepOutcome | None:
        """Close the parent (``finish_sweep``) and report; never raises. SIGINT, SIGTERM
        and SIGHUP wait until the parent is closed. When the close raises, the parent is
        closed FAILED with the error instead (``_abandon``) and the command exits 1."""
        if self._store is None or self._parent_run_id is None:
            return None
        store, parent_run_id = self._store, self._parent_run_id
        with tracking.deferred_signals():
            try:
                outcome = tracking.finish_sweep(
                    store, parent_run_id, interrupted=self._interrupted, completed=completed
                )
            except tracking.FinalWriteError:  # printed; kept pending with the status earned
                self._close_failed, self._parent_run_id = True, None
                atexit.unregister(self._close_at_exit)
                return None
            except Exception as error:
                self._close_failed = True
                print(
                    f"The sweep's close failed:\n{redact_text(traceback.format_exc())}",
                    file=sys.stderr,
                    flush=True,
                )
                self._abandon(error)
                return None
            self._parent_run_id = None
            atexit.unregister(self._close_at_exit)
            try:
                self._report(store, parent_run_id, outcome)
            except Exception:
                self._close_failed = True
                print(
                    f"The sweep's report failed:\n{redact_text(traceback.format_exc())}",
                    file=sys.stderr,
                    flush=True,
                )
        return outcome

    def _abandon(self, error: BaseException, status: str = "FAILED") -> None:
        """Close the parent ``status`` with ``error``, its children still RUNNING KILLED:
        the fallback when the sweep could not start or its close raised. Never raises."""
        store, parent_run_id = self._store, self._parent_run_id
        self._parent_run_id = None
        atexit.unregister(self._close_at_exit)
        if store is None or parent_run_id is None:
            return
        try:
            tracking.abandon_sweep(store, parent_run_id, error, status)
        except tracking.FinalWriteError:
            pass  # printed, and kept pending for the next command that opens the store
        except Exception as again:
            print(
                f"Could not close the sweep's parent run {parent_run_id} either "
                f"({redact_text(tracking.describe(again))}); `embsvd runs reconcile` closes "
                "it once this process is gone",
                file=sys.stderr,
                flush=True,
            )

    def _report(
        self, store: tracking.TrackingStore, parent_run_id: str, outcome: tracking.SweepOutcome
    ) -> None:
        """The children's table, the failed jobs, and the commands that show the sweep."""
        print(f"\n{tracking.format_sweep_table(outcome.children)}", flush=True)
        for job_num, run_id in sorted(outcome.skipped.items(), key=lambda kv: int(kv[0])):
            print(f"job #{job_num}: skipped, run {run_id} has its config", flush=True)
        failed = outcome.with_status("FAILED") + outcome.with_status("KILLED")
        for child in failed:
            print(
                f"job #{child.tags.get(Tag.JOB_NUM, '?')} {child.status}: {child.name} "
                f"({child.tags.get(Tag.OVERRIDES, '')}): {child.tags.get(Tag.ERROR, '')}",
                file=sys.stderr,
                flush=True,
            )
        print(
            f"\nSweep {outcome.status}: {len(outcome.children)} runs under parent run "
            f"{parent_run_id}, {len(failed)} failed or killed, {len(outcome.skipped)} skipped."
            f"\nOpen the MLflow UI on this store:\n  {mlflow_ui_command(store.uri)}"
            "\nDraw its paper figures:\n  "
            + figures_command(self._project, store.uri, self._sweep_id),
            flush=True,
        )


def sweep_run_name(overrides: list[str], sweep_dir: Path) -> str:
    """``sweep/<experiment or 'multirun'>/<sweep folder's date and time>``."""
    experiment = next(
        (o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")),
        "multirun",
    )
    return f"sweep/{experiment}/{sweep_dir.parent.name} {sweep_dir.name}"
