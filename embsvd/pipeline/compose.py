"""Every job of a multirun composed once and checked before any job starts: a sweep
with one job that cannot run is refused whole, before its parent run opens."""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Callable
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException, HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from embsvd.pipeline.config import checked_settings
from embsvd.pipeline.secrets import redact_text

log = logging.getLogger(__name__)


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
        self.n_jobs: int | None = None  # the sweep's jobs, where the sweeper tells ahead

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

    Installs a ``ComposeOnce`` as Hydra's config loader (returned, its ``n_jobs`` the
    sweep's count of jobs; ``None`` outside a Hydra app), so these compositions serve the
    sweeper and the launcher too. Only the
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
    jobs = sweep_jobs(config, loader)
    refused: dict[str, list[tuple[int, list[str]]]] = {}
    for num, overrides in enumerate(jobs or []):
        try:
            loader.compose_ahead(config, overrides)
        except (HydraException, OmegaConfBaseException, OSError, ValueError) as error:
            refused.setdefault(_reason(error), []).append((num, overrides))
    if refused:
        raise SweepRefused(_refusal(refused, len(jobs or [])))
    loader.sweep_checked = True
    loader.n_jobs = None if jobs is None else len(jobs)
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
