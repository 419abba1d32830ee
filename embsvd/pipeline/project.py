"""The project folder: the parent of the ``conf/`` folder Hydra composed the job from.

The library is installable (``pip install .``) and knows nothing of a source checkout.
The entry points in ``experiments/`` name their config folder relative to themselves
(``config_path="../conf"``), Hydra records that folder as its primary config source, and
everything a job keeps in the project (the local store ``mlruns/``, Hydra's job folders,
``figures/``, the git provenance, the figures command it prints) is found from it here.
So a command started from any working directory, with embsvd installed anywhere, writes
into the project whose ``conf/`` it ran.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf


def project_root(config: DictConfig | None = None) -> Path:
    """The folder holding the ``conf/`` this job was composed from.

    Args:
        config: A composed config that still has its ``hydra`` node (a callback's, or the
            root a resolver sees); ``None`` looks at the running job (``HydraConfig``) and
            then at an initialised compose API (``initialize_config_dir``).

    Outside any Hydra context (a job function called from a notebook or a test with a
    config composed earlier) there is no config folder to go by: the working directory
    stands in, as it does for MLflow's own default store.

    Raises:
        ValueError: When the config came from a package (``pkg://``) rather than a folder:
            there is no project folder to write into, so ``tracking.uri`` must say where.
    """
    sources = list(_config_sources(config))
    if not sources:
        return Path.cwd()
    for provider, schema, path in sources:
        if provider == "main" and schema == "file" and path:
            return Path(path).resolve().parent
    raise ValueError(
        "no project folder: it is the parent of the conf/ folder Hydra composes from, and "
        "this config was not composed from a folder; set tracking.uri (and "
        "hydra.run.dir / hydra.sweep.dir) explicitly"
    )


def _config_sources(config: DictConfig | None) -> Iterator[tuple[str, str, str]]:
    """``(provider, schema, path)`` of each config source Hydra knows of, first found."""
    listed = OmegaConf.select(config, "hydra.runtime.config_sources") if config else None
    if listed:
        yield from _triples(listed)
    elif HydraConfig.initialized():
        yield from _triples(HydraConfig.get().runtime.config_sources)
    elif GlobalHydra.instance().is_initialized():
        for source in GlobalHydra.instance().config_loader().get_sources():
            yield source.provider, source.scheme(), source.path


def _triples(sources: Iterable[Any]) -> Iterator[tuple[str, str, str]]:
    for source in sources:
        yield source.provider, source.schema, source.path
