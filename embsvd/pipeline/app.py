"""``embsvd run`` and ``embsvd figures``: the Hydra apps of ``experiments/run.py`` and
``experiments/figures.py``, run from the project folder found from the working directory.

The scripts name their config folder relative to themselves (``../conf``); the command
has no such place, so it takes the nearest folder from the working directory up that
holds ``conf/config.yaml`` and hands Hydra that ``conf/`` as an absolute path. Hydra then
records the same config source as for the scripts, and ``project.project_root`` finds the
same project: the store, Hydra's job folders and ``figures/`` land where the scripts put
them, whatever folder of the project the command starts in.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from embsvd.pipeline.figures_job import figures_job
from embsvd.pipeline.job import run_job

CONFIG_FILE = Path("conf") / "config.yaml"  # what marks a project folder


@dataclass(frozen=True)
class App:
    """One Hydra app: the script it stands for (``experiments/<name>.py``, also the job's
    name), its primary config in ``conf/`` and the function each job runs."""

    name: str
    config_name: str
    task: Callable[[DictConfig], object]
    help: str


APPS = {
    "run": App("run", "config", run_job, "one analysis job, or a sweep with -m"),
    "figures": App("figures", "figures", figures_job, "a finished sweep's paper figures"),
}


def find_project(start: Path | None = None) -> Path | None:
    """The nearest folder from ``start`` (default: the working directory) up that holds
    ``conf/config.yaml``; ``None`` when there is none."""
    here = (start or Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if (d / CONFIG_FILE).is_file()), None)


def no_project_message(start: Path | None = None) -> str:
    here = (start or Path.cwd()).resolve()
    return (
        f"no project folder: neither {here} nor a folder above it holds {CONFIG_FILE}. "
        "Run the command inside a project (a folder with conf/config.yaml, such as the "
        "embsvd checkout, or one of its subfolders)"
    )


def run_app(name: str, argv: Sequence[str]) -> int:
    """Run the app ``name`` (``APPS``) with Hydra's command line ``argv`` (overrides,
    ``-m``, ``--cfg job``, ``--help``, ...); return 0, or 1 with the reason on stderr when
    there is no project. Hydra's own errors end the process as they end the scripts."""
    app = APPS[name]
    project = find_project()
    if project is None:
        print(f"embsvd {name}: {no_project_message()}", file=sys.stderr)
        return 1
    config_dir = project / "conf"
    if not (config_dir / f"{app.config_name}.yaml").is_file():
        print(
            f"embsvd {name}: {config_dir / app.config_name}.yaml: no such file; the project's "
            f"conf/ needs it (copy it from the embsvd checkout's conf/)",
            file=sys.stderr,
        )
        return 1
    main = hydra.main(version_base="1.3", config_path=str(config_dir), config_name=app.config_name)
    saved, collecting = sys.argv, gc.isenabled()
    sys.argv = [f"embsvd {name}", *argv]  # what Hydra parses, and shows in its usage line
    if name == "run":  # as experiments/run.py: off until the first job settles the heap
        gc.disable()
    try:
        main(Task(app.name, app.task))()
    finally:
        sys.argv = saved
        if collecting:  # on again, whether or not a job ran (--cfg job, --help, an error)
            gc.enable()
    return 0


class Task:
    """A job's function under the name of the script it stands for.

    Hydra names a job after the module of its task function (``run`` for
    ``experiments/run.py``): the job's log file (``run.log``), its ``--help`` and a SLURM
    job's name come from it. A function of this module would make every job ``app``; a
    task carries its script's name instead, and pickles by reference (its class and its
    function are importable) for the launchers that send it to other processes."""

    def __init__(self, name: str, function: Callable[[DictConfig], object]) -> None:
        self.__module__ = name  # what Hydra reads for the job's name
        self.function = function

    def __call__(self, cfg: DictConfig) -> object:
        return self.function(cfg)
