"""embsvd's launcher (``hydra/launcher=embsvd``, the default) runs a sweep's jobs as
Hydra's basic launcher runs them: real multiruns under each, in this process, compared
job by job: the task's config, ``HydraConfig`` during the job, what the callbacks see,
the job's return, its folder and ``.hydra`` files, ``chdir`` and ``env_set``, a failed
job. Only the launcher's own nodes (its settings, its choice) differ."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from embsvd.pipeline.launch import copied
from tests.test_compose_once import QUIET, shape

# what names the launcher that ran a job: its settings, its choice, its override
LAUNCHER_NODES = (
    ".hydra.launcher",
    ".hydra.runtime.choices.hydra/launcher",
    ".hydra.overrides.hydra[0]",
)
SWEEP = ["analysis=default,fast", "target=digits,eu_countries", "analysis.n_components=1,2"]
# what each job saw, in order: appended by the task and by the probe callback
SEEN: list[tuple] = []


class Probe(Callback):
    """Records what a job's callbacks are given (``hydra.callbacks.probe``)."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        SEEN.append(("start", shape(config, skip=LAUNCHER_NODES)))

    def on_job_end(self, config: DictConfig, job_return, **kwargs) -> None:
        failed = job_return._return_value if job_return.status.name == "FAILED" else None
        SEEN.append(("end", shape(config, skip=LAUNCHER_NODES), job_return.status, repr(failed)))


def task(cfg: DictConfig) -> str:
    """Records what the job is given and sees; fails the jobs of ``eu_countries`` where
    ``hydra.job.env_set`` set ``EMBSVD_PROBE``; mutates its config, which is its own."""
    SEEN.append(
        (
            "task",
            shape(cfg),
            shape(HydraConfig.instance().cfg, skip=LAUNCHER_NODES),
            os.getcwd(),
            os.environ.get("EMBSVD_PROBE"),
        )
    )
    if os.environ.get("EMBSVD_PROBE") and cfg.target == "eu_countries":
        raise RuntimeError(f"job {HydraConfig.get().job.num} failed")
    cfg.target = "changed by the task"
    return f"{cfg.analysis.n_components} {HydraConfig.get().job.num}"


def run_sweep(start_app, launcher: str, folder: Path, *overrides: str):
    """A multirun under ``launcher`` with the probe: the jobs' returns (None where a job
    failed: the sweeper re-raises), what each job saw, and the ``.hydra`` files written."""
    SEEN.clear()
    args = [
        f"hydra/launcher={launcher}",
        *QUIET,
        f"+hydra.callbacks.probe._target_={__name__}.Probe",
        f"hydra.sweep.dir={folder}",
        *SWEEP,
        *overrides,
    ]
    cwd = os.getcwd()
    try:
        [returns] = start_app().multirun("config", task, args, False)
    except RuntimeError as error:
        assert "failed" in str(error)
        returns = None
    assert os.getcwd() == cwd  # chdir undone
    files = {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*.yaml"))}
    seen = list(SEEN)
    shutil.rmtree(folder)  # the other launcher's jobs get the same folders
    return returns, seen, files


@pytest.mark.parametrize(
    "options",
    [
        pytest.param((), id="defaults"),
        pytest.param(
            (
                "hydra.job.chdir=true",
                "hydra.output_subdir=.hydra",
                "+hydra.job.env_set.EMBSVD_PROBE=on",  # and eu_countries' jobs fail
            ),
            id="chdir-output_subdir-env_set-failed-jobs",
        ),
    ],
)
def test_embsvds_launcher_runs_the_jobs_hydras_basic_launcher_runs(start_app, tmp_path, options):
    folder = tmp_path / "sweep"
    basic = run_sweep(start_app, "basic", folder, *options)
    embsvd = run_sweep(start_app, "embsvd", folder, *options)
    (basic_returns, basic_seen, basic_files), (returns, seen, files) = basic, embsvd
    assert len(seen) == len(basic_seen) == 3 * 8  # start, task, end of each job
    for ours, hydras in zip(seen, basic_seen, strict=True):
        assert ours == hydras
    assert [entry[2] for entry in seen if entry[0] == "end"] == [
        entry[2] for entry in basic_seen if entry[0] == "end"
    ]
    if options:
        assert basic_returns is returns is None
        statuses = [entry[2].name for entry in seen if entry[0] == "end"]
        assert statuses == ["COMPLETED", "COMPLETED", "FAILED", "FAILED"] * 2
        assert [entry[4] for entry in seen if entry[0] == "task"] == ["on"] * 8  # env_set
        # each job in its own folder, then back
        assert [entry[3] for entry in seen if entry[0] == "task"] == [
            str(folder / str(num)) for num in range(8)
        ]
        assert len(files) == 1 + 3 * 8  # multirun.yaml; each job's config, hydra, overrides
    else:
        assert len(returns) == len(basic_returns) == 8
        for num, (ours, hydras) in enumerate(zip(returns, basic_returns, strict=True)):
            assert shape(ours.cfg) == shape(hydras.cfg)
            assert ours.cfg.target == "changed by the task"  # the task's own copy
            assert shape(ours.hydra_cfg, skip=LAUNCHER_NODES) == shape(
                hydras.hydra_cfg, skip=LAUNCHER_NODES
            )
            assert ours.hydra_cfg.hydra.launcher._target_.endswith("EmbsvdLauncher")
            assert (ours.overrides, ours.working_dir, ours.task_name) == (
                hydras.overrides,
                hydras.working_dir,
                hydras.task_name,
            )
            assert ours.return_value == hydras.return_value == f"{num % 2 + 1} {num}"
            assert ours.hydra_cfg.hydra.runtime.output_dir == str(folder / str(num))
        assert list(files) == ["multirun.yaml"]  # hydra.output_subdir: null
    # the same files, but where they name the launcher
    assert {name: launcher_named(text) for name, text in files.items()} == {
        name: launcher_named(text) for name, text in basic_files.items()
    }


def launcher_named(text: str) -> str:
    """A Hydra file with each mention of the launcher (its target, its choice) as
    ``<launcher>``; it must mention it."""
    named = re.sub(r"_target_: \S+(BasicLauncher|EmbsvdLauncher)", "_target_: <launcher>", text)
    named = re.sub(r"hydra/launcher([:=]) ?(basic|embsvd)", r"hydra/launcher\1<launcher>", named)
    assert named != text or "launcher" not in text
    return named


def test_a_copy_is_the_config_and_shares_nothing_with_it():
    config = OmegaConf.create(
        {"a": {"b": [1, 2.5, "x", None], "c": "${a.b}"}, "d": "???", "e": {"f": True}}
    )
    OmegaConf.set_struct(config, True)
    OmegaConf.set_readonly(config.e, True)
    copy = copied(config)
    assert shape(copy) == shape(config)
    ids = {id(node) for node in _nodes(config)}
    assert not ids & {id(node) for node in _nodes(copy)}
    assert copy.a.c == [1, 2.5, "x", None] and copy._get_flag("struct")

    @dataclasses.dataclass
    class Local:  # a class defined in a function does not pickle: deep-copied
        x: int = 1

    local = OmegaConf.structured(Local)
    assert shape(copied(local)) == shape(local) and OmegaConf.get_type(copied(local)) is Local


def _nodes(node):
    yield node
    if isinstance(node, DictConfig):
        for key in node:
            yield from _nodes(node._get_node(key, validate_access=False))
    elif OmegaConf.is_list(node):
        for index in range(len(node)):
            yield from _nodes(node._get_node(index))
