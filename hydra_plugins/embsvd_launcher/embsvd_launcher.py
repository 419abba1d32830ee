"""``hydra/launcher=embsvd``: Hydra's basic launcher (the jobs one after the other, in
this process), each job's config copied for less (``embsvd.pipeline.launch``).
``hydra/launcher=basic`` is Hydra's own; ``joblib``, ``submitit_*`` and ``slurm`` run
Hydra's own job steps in their workers.

The module imports embsvd only when a sweep launches: Hydra imports every plugin module
of ``hydra_plugins`` whenever it starts an app.
"""

# no `from __future__ import annotations`: Hydra runs this module before it is in
# sys.modules, where dataclasses look string annotations up
from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn


@dataclass
class EmbsvdLauncherConf:
    _target_: str = "hydra_plugins.embsvd_launcher.embsvd_launcher.EmbsvdLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="embsvd", node=EmbsvdLauncherConf, provider="embsvd"
)


class EmbsvdLauncher(BasicLauncher):
    """The basic launcher whose jobs run through ``embsvd.pipeline.launch.launch_job``."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from embsvd.pipeline.launch import launch_jobs

        assert self.config is not None
        assert self.hydra_context is not None
        assert self.task_function is not None
        return launch_jobs(
            self.config, self.hydra_context, self.task_function, job_overrides, initial_job_idx
        )
