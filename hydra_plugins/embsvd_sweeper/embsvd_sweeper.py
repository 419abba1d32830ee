"""``hydra/sweeper=embsvd``: Hydra's basic sweeper (the same jobs, params and batches),
whose jobs pay Hydra's composition once per choice of config groups.

Every job is composed and checked before the sweep starts (``validate_sweep``: by the
``compose_once`` callback before the parent run opens, or here when the callbacks are
left out), each derived from Hydra's composition of its config groups with its other
overrides applied by Hydra (``embsvd.pipeline.compose.ComposeOnce``); the launcher takes
those configs, and the sweeper composes no job again. ``hydra/sweeper=basic`` is Hydra's
own, every job composed in full (still once for the sweeper's check and the launcher).

``zip`` pairs swept keys instead of crossing them: ``hydra.sweeper.zip=[[model,
model.revision]]`` with ``model=a,b model.revision=x,y`` runs a@x and b@y, not the 4
pairs (``embsvd.pipeline.compose.zipped_jobs``; a group's keys need as many values).

The module imports embsvd only when a sweep starts: Hydra imports every plugin module of
``hydra_plugins`` whenever it starts an app.
"""

# no `from __future__ import annotations`: Hydra runs this module before it is in
# sys.modules, where dataclasses look string annotations up
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class EmbsvdSweeperConf:
    """The basic sweeper's settings (``params``: sweeps a config may set, as
    conf/experiment/seed_replication.yaml does), and ``zip``: groups of keys whose values
    are paired position by position (conf/experiment/model_revisions.yaml)."""

    _target_: str = "hydra_plugins.embsvd_sweeper.embsvd_sweeper.EmbsvdSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    zip: list[list[str]] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="embsvd", node=EmbsvdSweeperConf, provider="embsvd"
)


class EmbsvdSweeper(BasicSweeper):
    """The basic sweeper over configs derived from one composition per choice of config
    groups, its ``zip`` groups paired (see the module)."""

    def __init__(
        self,
        max_batch_size: int | None,
        params: dict[str, str] | None = None,
        zip: list[list[str]] | None = None,  # noqa: A002 (the option's name)
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.zip = [list(group) for group in zip] if zip else None

    def split_arguments(self, overrides: Any, max_batch_size: int | None) -> Any:  # type: ignore[override]
        # the jobs validate_sweep composed and checked: the same expansion, zip included
        from embsvd.pipeline.compose import zipped_jobs

        return zipped_jobs(overrides, self.zip, max_batch_size)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from embsvd.pipeline.compose import validate_sweep_or_exit

        # idempotent: after the compose_once callback, its loader; without it, the
        # launcher gets the loader that composed and checked the jobs here
        loader = validate_sweep_or_exit(config, hydra_context.config_loader)
        if loader is not None:
            hydra_context = HydraContext(config_loader=loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def validate_batch_is_legal(self, batch: Any) -> None:
        # the jobs validate_sweep composed and checked are held for the launcher: asking
        # for them here would compose them again
        assert self.hydra_context is not None
        checked = getattr(self.hydra_context.config_loader, "checked", set())
        super().validate_batch_is_legal([job for job in batch if tuple(job) not in checked])
