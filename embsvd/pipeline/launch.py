"""The jobs of a local sweep, run as Hydra's basic launcher runs them, for less than the
job's own work: embsvd's launcher (``hydra/launcher=embsvd``, conf/config.yaml's
default; Hydra's own is ``hydra/launcher=basic``).

``launch_job`` is Hydra's ``hydra.core.utils.run_job`` (1.3), step for step, but for two
copies. Hydra gives a job its own copy of its config (the task's, without the ``hydra``
node) by ``copy.deepcopy``, and puts the ``hydra`` node in ``HydraConfig`` twice, before
and after it sets the job's output folder (each a deep copy of the node). Under
``analysis=fast`` that was the largest part of a 100-job sweep's marginal cost that was
not the job's own: 23 ms and 7.5 ms a job of about 70 (py-spy, 2026-11-30). Here the
task's copy is a pickle round trip of the config (the same nodes, types, flags and
values, 2-3x faster: ``copied``), and the output folder is set in the config and in
``HydraConfig``'s copy of its node, which is the copy a second ``set_config`` would make.
Everything else (callbacks, logging, ``output_subdir``'s files, ``chdir``, ``env_set``, a
failed job's return) is Hydra's, and tests/test_launch.py holds each against Hydra's
basic launcher.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

from hydra._internal.deprecation_warning import deprecation_warning
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _check_hydra_context,
    _flush_loggers,
    _save_config,
    configure_log,
    env_override,
    filter_overrides,
    setup_globals,
)
from hydra.types import HydraContext, TaskFunction
from hydra.version import base_at_least
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


def copied(config: DictConfig) -> DictConfig:
    """A copy of ``config`` that shares nothing with it, as ``copy.deepcopy`` makes, by a
    pickle round trip (OmegaConf's nodes pickle with their metadata and flags); by
    ``copy.deepcopy`` where a value does not pickle (a class defined in a function)."""
    try:
        return pickle.loads(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL))
    except (pickle.PicklingError, AttributeError, TypeError):
        return copy.deepcopy(config)


def launch_jobs(
    config: DictConfig,
    hydra_context: HydraContext,
    task_function: TaskFunction,
    job_overrides: Sequence[Sequence[str]],
    initial_job_idx: int,
) -> list[JobReturn]:
    """Hydra's ``BasicLauncher.launch``: each job's config from the config loader, its
    number set, run in this process one after the other."""
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info(f"Launching {len(job_overrides)} jobs locally")
    runs = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        runs.append(
            launch_job(
                hydra_context=hydra_context,
                task_function=task_function,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
        )
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    return runs


def launch_job(
    task_function: TaskFunction,
    config: DictConfig,
    job_dir_key: str,
    job_subdir_key: str | None,
    hydra_context: HydraContext,
    configure_logging: bool = True,
) -> JobReturn:
    """Hydra's ``run_job`` with the task's config copied by ``copied`` and ``HydraConfig``
    set once (see the module)."""
    _check_hydra_context(hydra_context)
    callbacks = hydra_context.callbacks
    old_cwd = os.getcwd()
    hydra_config = HydraConfig.instance()
    orig_hydra_cfg = hydra_config.cfg

    # as Hydra: HydraConfig set for the output folder's interpolations (${hydra:...})
    hydra_config.set_config(config)
    output_dir = str(OmegaConf.select(config, job_dir_key))
    if job_subdir_key is not None:
        subdir = str(OmegaConf.select(config, job_subdir_key))
        output_dir = os.path.join(output_dir, subdir)
    # Hydra sets it in the config, then sets HydraConfig again from it: a copy of the
    # node that differs from the one above in this value alone
    absolute = os.path.abspath(output_dir)
    for runtime in (config.hydra.runtime, hydra_config.cfg.hydra.runtime):
        with read_write(runtime), open_dict(runtime):
            runtime.output_dir = absolute

    _chdir = None
    try:
        ret = JobReturn()
        task_cfg = copied(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        ret.cfg = task_cfg
        hydra_cfg = copy.deepcopy(hydra_config.cfg)
        assert isinstance(hydra_cfg, DictConfig)
        ret.hydra_cfg = hydra_cfg
        overrides = OmegaConf.to_container(config.hydra.overrides.task)
        assert isinstance(overrides, list)
        ret.overrides = overrides
        Path(str(output_dir)).mkdir(parents=True, exist_ok=True)

        _chdir = hydra_cfg.hydra.job.chdir
        if _chdir is None and base_at_least("1.2"):
            _chdir = False
        if _chdir is None:
            url = "https://hydra.cc/docs/1.2/upgrades/1.1_to_1.2/changes_to_job_working_dir/"
            deprecation_warning(  # Hydra's words
                message="Future Hydra versions will no longer change working directory at job "
                f"runtime by default.\nSee {url} for more information.",
                stacklevel=2,
            )
            _chdir = True
        if _chdir:
            os.chdir(output_dir)
            ret.working_dir = output_dir
        else:
            ret.working_dir = os.getcwd()

        if configure_logging:
            configure_log(config.hydra.job_logging, config.hydra.verbose)

        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / Path(config.hydra.output_subdir)
            _save_config(task_cfg, "config.yaml", hydra_output)
            _save_config(hydra_cfg, "hydra.yaml", hydra_output)
            _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)

        with env_override(hydra_cfg.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as e:
                ret.return_value = e
                ret.status = JobStatus.FAILED

        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        hydra_config.cfg = orig_hydra_cfg
        if _chdir:
            os.chdir(old_cwd)
