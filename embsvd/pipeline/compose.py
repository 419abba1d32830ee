"""Every job of a multirun composed once and checked before any job starts: a sweep
with one job that cannot run is refused whole, before its parent run opens.

Under embsvd's sweeper (``hydra/sweeper=embsvd``, the default) a sweep also pays Hydra's
composition once per choice of config groups: the jobs that differ only in plain values
are derived from that composition by Hydra's own override parsing and application
(``ComposeOnce.derive``). Its ``zip`` option pairs swept keys position by position instead
of crossing them (``zipped_jobs``)."""

from __future__ import annotations

import copy
import itertools
import logging
import pickle
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import uuid4

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import CompactHydraException, HydraException
from hydra.experimental.callback import Callback
from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from embsvd.pipeline.config import checked_settings
from embsvd.pipeline.phases import clock
from embsvd.pipeline.secrets import redact_text

log = logging.getLogger(__name__)


class SweepRefused(CompactHydraException):
    """A sweep with a job that cannot run, refused before the job starts. Its message
    names each key, value and what is allowed, and is printed alone: by Hydra, which
    prints a ``CompactHydraException`` without its traceback, or by
    ``validate_sweep_or_exit``."""


# an override key ``derive`` applies itself: dotted names, as in ``analysis.top_k``
PLAIN_KEY = re.compile(r"[A-Za-z_$][\w$\-]*(\.[A-Za-z_$][\w$\-]*)*")


@dataclass(frozen=True)
class _Plan:
    """How a job's config is derived: the composition of its config-group overrides
    (``groups``, under ``key``), then its other overrides (``values``) applied to it."""

    key: tuple[Any, ...]
    groups: list[str]
    values: list[Override]
    overrides: list[Override]  # every override of the job, in its order


class _Base(NamedTuple):
    """A composition of config groups that jobs are derived from: pickled (unpickling
    copies it 6x faster than ``copy.deepcopy``, metadata and all), and whether it holds an
    interpolation outside its ``hydra`` node (``_task_interpolates``)."""

    pickled: bytes
    interpolates: bool


# Compositions a worker process (a launcher's) derives its jobs from, for one sweep: the
# launcher sends each job its own copy of the loader, so those copies share these.
_WORKER_BASES: dict[str, dict[tuple[Any, ...], _Base | None]] = {}


def _worker_bases(sweep: str) -> dict[tuple[Any, ...], _Base | None]:
    if sweep not in _WORKER_BASES:
        _WORKER_BASES.clear()  # a worker serves one sweep at a time
        _WORKER_BASES[sweep] = {}
    return _WORKER_BASES[sweep]


class ComposeOnce:
    """A Hydra config loader that composes each job's config once for all its requests,
    and checks every composition (``check``, e.g. ``checked_settings``).

    Composing costs 0.15-0.4 s a job here (the defaults list, every YAML file parsed
    again, OmegaConf merges), more than a job's own work, and Hydra asks twice for each
    job under its basic sweeper: the sweeper composes every job to check the batch, then
    the launcher composes it again. A config composed ahead of the sweep
    (``compose_ahead``) serves ``requests_per_job`` requests; one composed on request,
    the next one. Everything else goes to the wrapped loader.

    With ``derive`` (embsvd's sweeper), Hydra composes each job's choice of config groups
    once, without the job's other overrides, and each job's config is that composition
    with the job's overrides applied by Hydra (``_apply_overrides_to_config``) and the
    override-dependent fields of its ``hydra`` node (``overrides.task``,
    ``job.override_dirname``) set as Hydra sets them: the config Hydra would compose,
    for the cost of a copy. Which overrides are config groups' is decided as Hydra's
    defaults list decides it. Hydra composes in full a job it cannot derive that way: one
    with an override of ``hydra.*``, of the ``defaults`` key, of a key that is not a
    plain dotted name (a package, ``@``), a sweep, one whose application would resolve
    an interpolation (OmegaConf resolves along the key's path and compares what it
    deletes, and the ``hydra`` node is complete here, not yet there), and one Hydra's
    application refuses (so the error is Hydra's own)."""

    MAX_HELD = 512  # configs held for later requests (0.3 MB each); beyond, compose again
    REQUESTS = 2  # Hydra's requests for a job's config: the sweeper's, then the launcher's

    def __init__(
        self,
        loader: Any,
        check: Callable[[DictConfig], object] | None = None,
        derive: bool = False,
    ):
        self._loader = loader
        self._check = check
        self.derive = derive
        # configs held ahead serve this many requests each (1: the sweeper asks for none)
        self.requests_per_job = self.REQUESTS
        # overrides -> (config, how many more requests it serves)
        self._composed: dict[tuple[str, ...], tuple[DictConfig, int]] = {}
        # (config name, hydra overrides, config-group overrides) -> Hydra's composition;
        # None where it failed (its jobs are composed in full, for Hydra's error)
        self._bases: dict[tuple[Any, ...], _Base | None] = {}
        self._is_group: dict[tuple[Any, ...], bool] = {}
        self._parsed: dict[str, Override] = {}  # a sweep's jobs share most overrides
        self._repos: dict[tuple[Any, ...], Any] = {}
        self._sweep = uuid4().hex  # names this loader's compositions in worker processes
        self.requests = 0  # Hydra's requests
        self.compositions = 0  # Hydra's own compositions: of config groups, or in full
        self.derived = 0  # job configs derived from a composition of their config groups
        self.jobs_composed = 0  # job configs made, derived or composed in full
        self.sweep_checked = False  # ``validate_sweep`` composed and checked every job
        self.checked: set[tuple[str, ...]] = set()  # the jobs ``validate_sweep`` checked
        self.n_jobs: int | None = None  # the sweep's jobs, where the sweeper tells ahead
        # overrides -> what ``check`` gave for a derived job whose config (but for its
        # ``hydra`` node) holds no interpolation: its job takes it (``settings_checked``)
        self.checked_settings: dict[tuple[str, ...], Any] = {}

    _OWN = ("_loader", "_composed", "_check", "_bases", "_is_group", "_repos", "_sweep", "_parsed")
    _OWN += ("checked_settings",)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in self._OWN:
            raise AttributeError(name)  # copy and pickle probe instances that have no state
        return getattr(self._loader, name)

    def __getstate__(self) -> dict[str, Any]:
        # launchers copy Hydra's state into every worker: the held configs stay here
        dropped = ("_composed", "_bases", "_repos", "_parsed", "checked_settings")
        return {**self.__dict__, **dict.fromkeys(dropped, {})}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._bases = _worker_bases(self._sweep)

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
        Hydra's requests (``requests_per_job``).

        Raises:
            hydra.errors.HydraException: the job's config cannot be composed.
            ValueError, OSError: ``check`` refused it.
        """
        config = self._compose(master_config, sweep_overrides)
        if len(self._composed) < self.MAX_HELD:
            self._composed[tuple(sweep_overrides)] = (config, self.requests_per_job)

    def _compose(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        derived = self._derived(master_config, sweep_overrides) if self.derive else None
        if derived is None:
            self.compositions += 1
            config = self._loader.load_sweep_config(master_config, list(sweep_overrides))
            interpolates = None  # searched only if needed
        else:
            config, interpolates = derived
        self.jobs_composed += 1
        if self._check is not None:
            checked = self._check(config)
            held = len(self.checked_settings) < self.MAX_HELD
            if interpolates is None and held:
                interpolates = _task_interpolates(config)
            if held and not interpolates:
                self.checked_settings[tuple(sweep_overrides)] = checked
        return config

    def _derived(
        self, master: DictConfig, sweep_overrides: list[str]
    ) -> tuple[DictConfig, bool] | None:
        """The job's config derived from the composition of its config groups, and
        whether it holds an interpolation outside its ``hydra`` node (``_task_interpolates``);
        None where Hydra must compose it (see the class). The values applied replace no
        interpolation (``_applies_without_resolving``), so the config holds one where the
        composition does or a value given put one there (``_set_to_interpolation``): the
        composition is searched once, not each job's config (2.8 ms a job, 2026-11-30)."""
        try:
            plan = self._plan(master, sweep_overrides)
        except Exception:  # an override Hydra will refuse, with its own message
            return None
        if plan is None:
            return None
        base = self._base(master, plan)
        if base is None:
            return None
        try:
            config = pickle.loads(base.pickled)
            for override in plan.values:  # one at a time, each checked before it applies
                if not _applies_without_resolving(config, override):
                    return None
                ConfigLoaderImpl._apply_overrides_to_config([override], config)
            hydra = config.hydra
            task = hydra.overrides.task
            task.clear()  # then as Hydra fills it: every override, in the job's order
            for override in plan.overrides:
                task.append(override.input_line)
            dirname = hydra.job.config.override_dirname
            hydra.job.override_dirname = get_overrides_dirname(
                overrides=plan.overrides,
                kv_sep=dirname.kv_sep,
                item_sep=dirname.item_sep,
                exclude_keys=dirname.exclude_keys,
            )
            # as Hydra's load_sweep_config: the sweep's resolved values (timestamps, ...)
            OmegaConf.copy_cache(from_config=master, to_config=config)
        except Exception:  # Hydra's own composition raises its own error
            return None
        self.derived += 1
        given = any(_set_to_interpolation(config, override) for override in plan.values)
        return config, base.interpolates or given

    def _plan(self, master: DictConfig, sweep_overrides: list[str]) -> _Plan | None:
        """Split the job's overrides as Hydra's defaults list does (``Overrides``: a
        config group's override unless its value is a dict or no such group exists)."""
        config_name = master.hydra.job.config_name
        hydra_overrides = tuple(OmegaConf.to_container(master.hydra.overrides.hydra))
        overrides = [self._parse(line) for line in sweep_overrides]
        groups, values = [], []
        for override in overrides:
            key = override.key_or_group
            if override.is_sweep_override() or override.is_hydra_override():
                return None
            value = override.value()
            if not isinstance(value, dict) and self._group_exists(
                config_name, hydra_overrides, key
            ):
                groups.append(override.input_line)
            elif override.package is None and PLAIN_KEY.fullmatch(key) and key != "defaults":
                values.append(override)
            else:
                return None
        return _Plan((config_name, hydra_overrides, tuple(groups)), groups, values, overrides)

    def _parse(self, line: str) -> Override:
        if line not in self._parsed:
            [self._parsed[line]] = OverridesParser.create().parse_overrides([line])
        return self._parsed[line]

    def _group_exists(self, config_name: str, hydra_overrides: tuple[str, ...], key: str) -> bool:
        """Whether ``key`` names a config group in the repository Hydra composes the
        sweep's jobs from (its search path may come from the primary config or a
        ``hydra.searchpath`` override)."""
        where = (config_name, hydra_overrides)
        if (where, key) not in self._is_group:
            if where not in self._repos:
                _, self._repos[where] = self._loader._parse_overrides_and_create_caching_repo(
                    config_name, list(hydra_overrides)
                )
            self._is_group[(where, key)] = self._repos[where].group_exists(key)
        return self._is_group[(where, key)]

    def _base(self, master: DictConfig, plan: _Plan) -> _Base | None:
        if plan.key not in self._bases:
            self.compositions += 1
            try:
                base = self._loader.load_sweep_config(master, list(plan.groups))
                self._bases[plan.key] = _Base(
                    pickle.dumps(base, protocol=pickle.HIGHEST_PROTOCOL), _task_interpolates(base)
                )
            except Exception:  # each job is composed in full: Hydra's error names it
                self._bases[plan.key] = None
        return self._bases[plan.key]


def _path(config: DictConfig, key: str) -> tuple[list[Any], str]:
    """The nodes on ``key``'s dotted path in ``config``, in order, and how the path ended:
    ``found`` (the last node is the key's), ``absent`` (a part is not there), ``blocked``
    (a value, a list, ``None`` or ``???`` before its end) or ``interpolation`` (the last
    node is one: it is not followed, which would resolve it)."""
    nodes: list[Any] = []
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
            return nodes, "blocked"
        node = node._get_node(part, validate_access=False, throw_on_missing_key=False)
        if node is None:
            return nodes, "absent"
        nodes.append(node)
        if node._is_interpolation():
            return nodes, "interpolation"
    return nodes, "found"


def _applies_without_resolving(config: DictConfig, override: Override) -> bool:
    """Whether applying ``override`` to ``config`` resolves no interpolation: no node on
    its key's path is one, nor any node below the key's (merged into, or compared); a key
    whose rest is absent is added, with nothing below it yet."""
    nodes, end = _path(config, override.key_or_group)
    if end != "found":
        return end == "absent"
    return not (isinstance(nodes[-1], Container) and _holds_interpolation(nodes[-1]))


def _set_to_interpolation(config: DictConfig, override: Override) -> bool:
    """Whether the node ``override`` set in ``config`` (after it applied) is an
    interpolation or holds one; False where it deleted it, True where its key cannot be
    followed through dicts (the job's config is then searched whole)."""
    nodes, end = _path(config, override.key_or_group)
    if end != "found":
        return end != "absent"
    return isinstance(nodes[-1], Container) and _holds_interpolation(nodes[-1])


def _holds_interpolation(node: Container) -> bool:
    if node._is_none() or node._is_missing():
        return False
    if isinstance(node, DictConfig):
        children = [node._get_node(key, validate_access=False) for key in node]
    elif isinstance(node, ListConfig):
        children = [node._get_node(index) for index in range(len(node))]
    else:
        return False
    return any(
        child._is_interpolation() or (isinstance(child, Container) and _holds_interpolation(child))
        for child in children
    )


def validate_sweep(config: DictConfig, loader: Any = None) -> ComposeOnce | None:
    """Compose every job of the multirun ``config`` and check it (``checked_settings``)
    before any job starts and before the sweep's parent run opens; refuse the whole
    sweep, naming every reason and its jobs, when one job cannot run. Idempotent: the
    callbacks that need it, and embsvd's sweeper, call it in whatever order Hydra runs
    them.

    Installs a ``ComposeOnce`` as Hydra's config loader (returned, its ``n_jobs`` the
    sweep's count of jobs; ``None`` outside a Hydra app), so these compositions serve the
    sweeper and the launcher too; ``loader`` (a sweeper's) is wrapped instead when given.
    Under embsvd's sweeper the jobs are derived from one composition per choice of
    config groups (``ComposeOnce.derive``), and the sweeper asks for none of them again.
    Only the jobs of the basic sweeper and embsvd's are known ahead; another sweeper's
    are checked as it composes them (``ComposeOnce.check``), after the parent run opened.

    Raises:
        SweepRefused: a job's config cannot be composed or does not validate.
    """
    hydra = GlobalHydra.instance().hydra
    if loader is None:
        if hydra is None:
            return None
        loader = hydra.config_loader
    if not isinstance(loader, ComposeOnce):
        wrapped = ComposeOnce(loader, check=checked_settings)
        if hydra is not None and hydra.config_loader is loader:
            hydra.config_loader = wrapped
        loader = wrapped
    if loader.sweep_checked:
        return loader
    if config.hydra.sweeper.get("_target_") == EMBSVD_SWEEPER:
        loader.derive, loader.requests_per_job = True, 1  # the launcher's request alone
    started = time.perf_counter()
    jobs = sweep_jobs(config, loader)
    refused: dict[str, list[tuple[int, list[str]]]] = {}
    for num, overrides in enumerate(jobs or []):
        try:
            loader.compose_ahead(config, overrides)
        except (HydraException, OmegaConfBaseException, OSError, ValueError) as error:
            refused.setdefault(_reason(error), []).append((num, overrides))
    clock.add("composition", time.perf_counter() - started)
    clock.record("sweep", n_jobs=None if jobs is None else len(jobs))
    if refused:
        raise SweepRefused(_refusal(refused, len(jobs or [])))
    loader.sweep_checked = True
    loader.checked = {tuple(overrides) for overrides in jobs or []}
    loader.n_jobs = None if jobs is None else len(jobs)
    return loader


def _task_interpolates(config: DictConfig) -> bool:
    """Whether a job's config outside its ``hydra`` node holds an interpolation: its value
    may then depend on when it is resolved (the ``hydra`` node is completed per job)."""
    for key in config:
        node = config._get_node(key)
        if key != "hydra" and (
            node._is_interpolation() or (isinstance(node, Container) and _holds_interpolation(node))
        ):
            return True
    return False


def _running_loader() -> ComposeOnce | None:
    """The running Hydra app's ``ComposeOnce`` (``validate_sweep`` installed it)."""
    hydra = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    loader = getattr(hydra, "config_loader", None)
    return loader if isinstance(loader, ComposeOnce) else None


def sweep_size() -> int | None:
    """The running sweep's count of jobs, where its validation knew them ahead
    (``ComposeOnce.n_jobs``); ``None`` elsewhere."""
    loader = _running_loader()
    return loader.n_jobs if loader is not None else None


def settings_checked(task_config: DictConfig) -> Any:
    """The settings the sweep's validation checked for this job (``ComposeOnce``): the
    job of a derived sweep whose config holds no interpolation takes them instead of
    checking its config again (5 ms a job). ``None`` elsewhere, and for a job asked for
    twice."""
    loader = _running_loader()
    if loader is None or not HydraConfig.initialized():
        return None
    return loader.checked_settings.pop(tuple(HydraConfig.get().overrides.task), None)


def validate_sweep_or_exit(config: DictConfig, loader: Any = None) -> ComposeOnce | None:
    """``validate_sweep`` for a callback or a sweeper: a refusal is printed and ends the
    process with status 1. Hydra turns an ``Exception`` raised in a callback into a
    warning and starts the sweep anyway; ``SystemExit`` is not one."""
    try:
        return validate_sweep(config, loader)
    except SweepRefused as refusal:
        print(redact_text(str(refusal)), file=sys.stderr, flush=True)  # it lists overrides
        raise SystemExit(1) from refusal


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# hydra_plugins/embsvd_sweeper: the basic sweeper's jobs, each derived (ComposeOnce.derive)
EMBSVD_SWEEPER = "hydra_plugins.embsvd_sweeper.embsvd_sweeper.EmbsvdSweeper"


def sweep_jobs(config: DictConfig, loader: Any) -> list[list[str]] | None:
    """Every job's overrides, expanded as Hydra's basic sweeper expands them (the sweep
    params of the config, then the command line's overrides) for it and for embsvd's
    sweeper (whose ``zip`` groups are paired: ``zipped_jobs``); ``None`` for another
    sweeper, which may choose its jobs as results come in.

    Raises:
        SweepRefused: a ``hydra.sweeper.zip`` group that cannot be paired."""
    sweeper = config.hydra.sweeper.get("_target_")
    if sweeper not in (BASIC_SWEEPER, EMBSVD_SWEEPER):
        return None
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(arguments)
    zipped = config.hydra.sweeper.get("zip") if sweeper == EMBSVD_SWEEPER else None
    [jobs] = zipped_jobs(overrides, zipped, max_batch_size=None)
    return jobs


ZIP = "hydra.sweeper.zip"  # embsvd's sweeper: groups of keys swept in step


def zipped_jobs(
    overrides: list[Override], zipped: Sequence[Sequence[str]] | None, max_batch_size: int | None
) -> list[list[list[str]]]:
    """The jobs of ``overrides`` in batches, as ``BasicSweeper.split_arguments`` makes
    them (the Cartesian product of every key's values, each job's overrides in the order
    their keys came), except that the keys of each group of ``zipped`` take their values
    position by position: ``model=a,b model.revision=x,y`` zipped are 2 jobs (a with x,
    b with y), not 4. A group counts once in the product, where the first of its keys came.

    Raises:
        SweepRefused: a group with fewer than 2 keys, a key in two groups or in none of
            the overrides, or keys of one group with different numbers of values (naming
            the keys, their numbers and values).
    """
    if not zipped:
        return BasicSweeper.split_arguments(overrides, max_batch_size)
    lines: dict[str, list[str]] = {}  # each key's overrides, one per value, as Hydra's
    names: dict[str, str] = {}  # key as a zip group names it (no +, ~, @package) -> key
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():  # Hydra's own refusal: its message
                return BasicSweeper.split_arguments(overrides, max_batch_size)
            lines[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            lines[key] = [f"{key}={override.get_value_element_as_str()}"]
        names.setdefault(override.key_or_group, key)
        names.setdefault(key, key)
    groups = _zip_groups(zipped, names, lines)
    group_of = {key: group for group in groups for key in group}
    placed: set[tuple[str, ...]] = set()
    factors = []  # each a list of choices, a choice {key: override}
    for key in lines:
        if key not in group_of:
            factors.append([{key: line} for line in lines[key]])
        elif group_of[key] not in placed:
            group = group_of[key]
            placed.add(group)
            paired = zip(*(lines[k] for k in group), strict=True)
            factors.append([dict(zip(group, row, strict=True)) for row in paired])
    jobs = []
    for choices in itertools.product(*factors):
        chosen = {k: line for choice in choices for k, line in choice.items()}
        jobs.append([chosen[key] for key in lines])
    if max_batch_size is None:
        return [jobs]
    return [jobs[i : i + max_batch_size] for i in range(0, len(jobs), max_batch_size)]


def _zip_groups(
    zipped: Sequence[Sequence[str]], names: dict[str, str], lines: dict[str, list[str]]
) -> list[tuple[str, ...]]:
    """The zip groups as the overrides' keys, checked (see ``zipped_jobs``)."""
    groups, seen = [], set()
    for given in zipped:
        if isinstance(given, str) or len(given) < 2:
            raise SweepRefused(
                f"{ZIP}: {given!r} is not a group of keys; give lists of 2 or more keys "
                f"swept in step, e.g. {ZIP}=[[model,model.revision]]"
            )
        group = []
        for name in given:
            if name not in names:
                raise SweepRefused(
                    f"{ZIP}: {name} is not swept (neither hydra.sweeper.params nor the "
                    f"command line sets it); sweep it alongside, e.g. {name}=a,b"
                )
            if names[name] in seen:
                raise SweepRefused(f"{ZIP}: {name} is in two groups; name each key once")
            seen.add(names[name])
            group.append(names[name])
        counts = {key: len(lines[key]) for key in group}
        if len(set(counts.values())) > 1:
            each = ", ".join(
                f"{key} has {n} ({','.join(v.partition('=')[2] for v in lines[key])})"
                for key, n in counts.items()
            )
            raise SweepRefused(
                f"{ZIP}: [{', '.join(given)}] pairs values position by position, but {each}; "
                "give every key of the group as many values"
            )
        groups.append(tuple(group))
    return groups


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
                "composed %d job configs for %d requests: Hydra composed %d, %d derived",
                self.loader.jobs_composed,
                self.loader.requests,
                self.loader.compositions,
                self.loader.derived,
            )
