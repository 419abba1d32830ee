"""A sweep pays Hydra's composition once per choice of config groups: embsvd's sweeper
(``hydra/sweeper=embsvd``, the default) derives each job's config from that composition
with Hydra's own override application, and the result is the config Hydra composes for
the job, node by node (types, flags, the ``hydra`` node), under real Hydra composition
and real multiruns. Hydra's basic sweeper stays one override away."""

from __future__ import annotations

import pickle
import shutil

import pytest
from hydra._internal.hydra import Hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import Container, DictConfig, OmegaConf

from embsvd.pipeline.compose import (
    EMBSVD_SWEEPER,
    ComposeOnce,
    SweepRefused,
    settings_checked,
    sweep_jobs,
    validate_sweep,
)

GROUPS = "digits,eu_countries,months,weekdays,colors,planets,number_words,capitals,animals"
GROUPS += ",professions"
# the sweep of the performance goal: 100 jobs that differ only in values
HUNDRED = [
    f"groups=[{GROUPS}]",
    f"target={GROUPS}",
    "analysis.center=true,false",
    "analysis.n_components=1,2,3,4,5",
    "analysis.figures=false",
]
# config-group choices mixed with plain values, added (+), forced (++) and deleted (~)
# keys and interpolations: 2 choices of config groups (the model), 4 jobs
MIXED = [
    "model=all_minilm_l6_v2,smollm2_135m",
    "groups=[digits,eu_countries,months]",
    "analysis=fast",
    "target=digits,months",
    "+new.key=${target}",
    "++analysis.top_k=7",
    "analysis.n_components=${analysis.top_k}",
    "~groups.extra",
    "groups.months.description=months of ${target}",
]


def sweep_config(app: Hydra, *overrides: str) -> DictConfig:
    """The multirun's own config, as Hydra composes it before the sweep starts."""
    return app.compose_config(
        "config", list(overrides), run_mode=RunMode.MULTIRUN, with_log_configuration=False
    )


def shape(node, path: str = "", skip: tuple[str, ...] = ()) -> list[tuple]:
    """Every node of a config, unresolved, in key order: its path, class, OmegaConf
    metadata (types, flags, key) and, for a value, what it holds; less the nodes at
    ``skip`` and below."""
    if path in skip:
        return []
    meta = {k: v for k, v in vars(node._metadata).items() if k != "resolver_cache"}
    rows = [(path, type(node).__name__, meta)]
    if not isinstance(node, Container) or node._is_none() or node._is_missing():
        return [*rows, (path, node._value() if not isinstance(node, Container) else None)]
    if node._is_interpolation():
        return [*rows, (path, node._value())]
    if isinstance(node, DictConfig):
        for key in node:
            rows += shape(node._get_node(key, validate_access=False), f"{path}.{key}", skip)
    else:
        for index in range(len(node)):
            rows += shape(node._get_node(index), f"{path}[{index}]", skip)
    return rows


def assert_same_config(derived: DictConfig, composed: DictConfig) -> None:
    assert shape(derived) == shape(composed)
    assert OmegaConf.to_yaml(derived) == OmegaConf.to_yaml(composed)
    # the fields that depend on every override of the job, named for the reader
    for key in ("hydra.overrides.task", "hydra.overrides.hydra", "hydra.runtime.choices"):
        assert OmegaConf.to_container(OmegaConf.select(derived, key), resolve=False) == (
            OmegaConf.to_container(OmegaConf.select(composed, key), resolve=False)
        )
    assert derived.hydra.job._get_node("override_dirname")._value() == (
        composed.hydra.job._get_node("override_dirname")._value()
    )


def test_derived_jobs_are_the_configs_hydra_composes(start_app):
    app = start_app()
    hydra_loader = app.config_loader
    config = sweep_config(app, *MIXED)
    jobs = sweep_jobs(config, hydra_loader)
    assert len(jobs) == 4
    once = ComposeOnce(hydra_loader, derive=True)
    for job in jobs:
        assert_same_config(
            once.load_sweep_config(config, job), hydra_loader.load_sweep_config(config, job)
        )
    assert (once.compositions, once.derived) == (2, 4)  # one per model
    derived = once.load_sweep_config(config, jobs[-1])  # the launcher's: the one held
    assert (once.compositions, once.derived, once.requests) == (2, 4, 5)
    assert derived.hydra.job.override_dirname.startswith("++analysis.top_k=7,+new.key=")
    assert derived.hydra.runtime.choices.model == "smollm2_135m"
    assert derived.new.key == "months" and "extra" not in derived.groups


def test_an_experiment_preset_and_its_sweep_are_derived_as_hydra_composes_them(start_app):
    app = start_app()
    config = sweep_config(app, "+experiment=seed_replication", "analysis.top_k=5")
    jobs = sweep_jobs(config, app.config_loader)
    assert len(jobs) == 4  # its sweep params: target x analysis.center
    once = ComposeOnce(app.config_loader, derive=True)
    for job in jobs:
        composed = app.config_loader.load_sweep_config(config, job)
        assert_same_config(once.load_sweep_config(config, job), composed)
    assert (once.compositions, once.derived) == (1, 4)


def test_a_hundred_jobs_that_differ_in_values_cost_one_composition(start_app):
    app = start_app()
    config = sweep_config(app, *HUNDRED)
    assert config.hydra.sweeper._target_ == EMBSVD_SWEEPER  # conf/config.yaml's default
    hydra_loader = app.config_loader
    once = validate_sweep(config)  # every job composed and checked, before the sweep
    assert once is app.config_loader and once.sweep_checked
    assert (once.n_jobs, once.compositions, once.derived) == (100, 1, 100)
    jobs = sweep_jobs(config, hydra_loader)
    assert once.checked == {tuple(job) for job in jobs}
    for num in (0, 99):
        launched = once.load_sweep_config(config, jobs[num])  # the launcher's request
        assert_same_config(launched, hydra_loader.load_sweep_config(config, jobs[num]))
    assert (once.requests, once.compositions) == (2, 1)  # held: no composition


# jobs in the order they are asked for, and what each costs: (Hydra's compositions,
# configs derived); what derivation leaves to Hydra is composed in full, as Hydra does
FULL = [
    # the composition of no config group (then kept), then the job in full: a.b is an
    # interpolation when a.b=5 applies, which resolves it
    (["+a.b=${target}", "a.b=5"], (2, 0)),
    (["+hydra.job.env_set.EMBSVD_TEST=1", "target=months"], (1, 0)),  # hydra.*: Hydra's
    (["analysis.top_k=${oc.env:EMBSVD_TOP_K,4}"], (0, 1)),  # a value, unresolved: derived
]


def test_what_cannot_be_derived_is_composed_by_hydra_and_still_equal(start_app):
    app = start_app()
    config = sweep_config(app, "target=digits,months")
    once = ComposeOnce(app.config_loader, derive=True)
    for job, cost in FULL:
        before = (once.compositions, once.derived)
        assert_same_config(
            once.load_sweep_config(config, job), app.config_loader.load_sweep_config(config, job)
        )
        assert (once.compositions - before[0], once.derived - before[1]) == cost


@pytest.mark.parametrize(
    "job",
    [
        ["analysis.nokey=1"],  # no such key: Hydra's error, not the derivation's
        ["~analysis.order"],  # a schema field cannot be deleted
        ["+analysis.top_k=3"],  # + where the key exists
        ["analysis.top_k=1,2"],  # a sweep inside one job
    ],
)
def test_a_job_hydra_refuses_is_refused_with_hydras_own_error(start_app, job):
    app = start_app()
    config = sweep_config(app, "target=digits,months")
    with pytest.raises(Exception) as by_hydra:
        app.config_loader.load_sweep_config(config, job)
    with pytest.raises(type(by_hydra.value)) as derived:
        ComposeOnce(app.config_loader, derive=True).load_sweep_config(config, job)
    assert str(derived.value) == str(by_hydra.value)
    assert repr(derived.value.__cause__) == repr(by_hydra.value.__cause__)


BAD_SWEEPS = [
    ["analysis.n_components=2,0"],  # the check's
    ["+analysis.centre=false", "target=digits,eu_countries"],  # composition's: a typo
    ["target=digits,digitz"],
    ["analysis.geometry=euclidean,whitend", "model=all_minilm_l6_v2,smollm2_135m"],
]


@pytest.mark.parametrize("sweep", BAD_SWEEPS)
def test_a_refused_sweep_is_refused_alike_under_either_sweeper(start_app, sweep):
    refusals = {}
    for sweeper in ("basic", "embsvd"):
        app = start_app()
        config = sweep_config(app, f"hydra/sweeper={sweeper}", *sweep)
        with pytest.raises(SweepRefused) as refused:
            validate_sweep(config, app.config_loader)
        refusals[sweeper] = str(refused.value)
        assert not app.config_loader.sweep_checked
    assert refusals["embsvd"] == refusals["basic"]
    assert refusals["basic"].startswith("The sweep was refused before it started")


def test_worker_copies_of_the_loader_share_one_composition_per_sweep(start_app):
    app = start_app()
    config = sweep_config(app, "target=digits,eu_countries", "analysis.center=true,false")
    once = validate_sweep(config)
    jobs = sweep_jobs(config, app.config_loader)
    # a launcher pickles the loader into each job's worker: no held config goes along
    workers = [pickle.loads(pickle.dumps(once)) for _ in jobs]
    assert all(worker._composed == {} for worker in workers)
    configs = [
        worker.load_sweep_config(config, job) for worker, job in zip(workers, jobs, strict=True)
    ]
    assert sum(w.compositions - once.compositions for w in workers) == 1  # the first's
    for job, derived in zip(jobs, configs, strict=True):
        assert_same_config(derived, app.config_loader._loader.load_sweep_config(config, job))


# --- real multiruns, in this process: Hydra's sweeper, launcher and run_job ---------------

QUIET = [  # no parent run, no log files: only what composition decides
    "~hydra.callbacks.sweep_tracking",
    "~hydra.callbacks.redact_secrets",
    "hydra/job_logging=none",
    "hydra/hydra_logging=none",
]
SWEEP = [
    "analysis=default,fast",
    "target=digits,eu_countries",
    "analysis.center=true,false",
    "++analysis.top_k=7",
    "analysis.n_components=${analysis.top_k}",
]


def multirun(app: Hydra, *overrides: str) -> list:
    [returns] = app.multirun("config", lambda cfg: None, list(overrides), False)
    return returns


# what names the sweeper that ran a job: its settings, its choice, its override (first)
SWEEPER_NODES = (
    ".hydra.sweeper",
    ".hydra.runtime.choices.hydra/sweeper",
    ".hydra.overrides.hydra[0]",
)


def test_a_multirun_runs_the_jobs_hydras_basic_sweeper_runs(start_app, tmp_path):
    args = [*QUIET, f"hydra.sweep.dir={tmp_path}", *SWEEP]
    runs = {}
    for sweeper in ("basic", "embsvd"):
        app = start_app()
        runs[sweeper] = multirun(app, f"hydra/sweeper={sweeper}", *args)
        runs[sweeper + " loader"] = app.config_loader
    assert len(runs["basic"]) == len(runs["embsvd"]) == 8
    for num, (basic, embsvd) in enumerate(zip(runs["basic"], runs["embsvd"], strict=True)):
        assert shape(embsvd.cfg) == shape(basic.cfg)
        assert embsvd.overrides == basic.overrides
        assert shape(embsvd.hydra_cfg, skip=SWEEPER_NODES) == shape(
            basic.hydra_cfg, skip=SWEEPER_NODES
        )
        assert embsvd.hydra_cfg.hydra.overrides.hydra[0] == "hydra/sweeper=embsvd"
        # what the launcher sets, and what run_job does
        assert (embsvd.hydra_cfg.hydra.job.num, embsvd.hydra_cfg.hydra.job.id) == (num, str(num))
        assert embsvd.hydra_cfg.hydra.runtime.output_dir == str(tmp_path / str(num))
    basic, embsvd = runs["basic loader"], runs["embsvd loader"]
    # Hydra's: every job composed (once for the sweeper's check and the launcher)
    assert (basic.compositions, basic.derived, basic.requests) == (8, 0, 16)
    # embsvd's: one composition per analysis config, the launcher's request alone
    assert (embsvd.compositions, embsvd.derived, embsvd.requests) == (2, 8, 8)
    assert not list(tmp_path.glob("*/.hydra"))  # hydra.output_subdir: null


def test_the_sweeper_composes_once_and_checks_without_the_callbacks(start_app, tmp_path, capsys):
    args = ["~hydra.callbacks.compose_once", *QUIET, f"hydra.sweep.dir={tmp_path}"]
    app = start_app()
    returns = multirun(app, *args, *SWEEP)
    assert len(returns) == 8
    once = app.config_loader  # installed by the sweeper: the launcher's loader
    assert isinstance(once, ComposeOnce) and once.sweep_checked
    assert (once.compositions, once.derived, once.requests) == (2, 8, 8)
    # and refuses a sweep with a job that cannot run, before any job
    app = start_app()
    with pytest.raises(SystemExit) as exited:
        multirun(app, *args, "analysis.n_components=2,0")
    assert exited.value.code == 1
    refusal = capsys.readouterr().err
    assert "The sweep was refused before it started; no run was opened. 1 of 2 jobs" in refusal
    assert "analysis.n_components: must be at least 1, got 0" in refusal


def test_a_job_takes_the_settings_the_sweeps_validation_checked(start_app, tmp_path):
    """Under embsvd's sweeper each job takes the settings its config was checked into
    before the sweep (equal to checking its config again), once; a job whose config
    holds an interpolation outside ``hydra`` checks its own, as does a job asked for
    again, and a config outside a Hydra app."""
    from embsvd.pipeline.config import checked_settings

    def taken(cfg):
        return settings_checked(cfg), settings_checked(cfg), checked_settings(cfg)

    plain = ["analysis=fast", "target=digits,eu_countries", "analysis.center=true,false"]
    app = start_app()
    [returns] = app.multirun(
        "config", taken, [*QUIET, f"hydra.sweep.dir={tmp_path / 'a'}", *plain], False
    )
    assert len(returns) == 4
    for job in returns:
        first, again, checked = job.return_value
        assert first == checked and first is not None and again is None
    assert app.config_loader.checked_settings == {}  # every job took its own

    app = start_app()
    [returns] = app.multirun(
        "config", taken, [*QUIET, f"hydra.sweep.dir={tmp_path / 'b'}", *SWEEP], False
    )
    assert [job.return_value[0] for job in returns] == [None] * 8  # n_components=${...}

    # a config group's file with an interpolation: every job derived from it holds one
    extra = tmp_path / "conf" / "experiment"
    extra.mkdir(parents=True)
    (extra / "linked.yaml").write_text(
        "# @package _global_\nanalysis:\n  top_k: ${analysis.precision_k}\n", encoding="utf-8"
    )
    app = start_app()
    linked = [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "+experiment=linked", *plain]
    [returns] = app.multirun(
        "config", taken, [*QUIET, f"hydra.sweep.dir={tmp_path / 'c'}", *linked], False
    )
    assert [job.return_value[0] for job in returns] == [None] * 4
    assert [job.return_value[2].analysis.top_k for job in returns] == [10] * 4
    assert app.config_loader.derived == 4  # derived from the composition, not composed
    GlobalHydra.instance().clear()
    assert settings_checked(returns[0].cfg) is None  # no Hydra app


# --- experiments/run.py -m, as a user types it ---------------------------------------------


@pytest.mark.slow
def test_hydras_basic_sweeper_is_one_override_away(tiny_bert, tmp_path, migrated_store_file):
    from tests.test_sweeps import parents_and_children, run_sweep, tiny_model

    (tmp_path / "store").mkdir()
    shutil.copyfile(migrated_store_file, tmp_path / "store" / "mlflow.db")
    done = run_sweep(
        tmp_path,
        "hydra/sweeper=basic",
        *tiny_model(tiny_bert),
        "analysis=fast",
        "analysis.figures=false",
        "target=digits,eu_countries",
        "analysis.center=true,false",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _, [parent], children = parents_and_children(tmp_path)
    assert parent.status == "FINISHED" and parent.tags["embsvd.role"] == "sweep"
    assert sorted(c.tags["embsvd.job_num"] for c in children) == ["0", "1", "2", "3"]
    assert {c.status for c in children} == {"FINISHED"}
    # Hydra composed every job, once for its sweeper's check and the launcher
    assert "composed 4 job configs for 8 requests: Hydra composed 4, 0 derived" in (
        done.stdout + done.stderr
    )
    assert not list((tmp_path / "sweep").glob("*/.hydra"))  # hydra.output_subdir: null
    assert sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/run.log")) == [
        "0",
        "1",
        "2",
        "3",
    ]


@pytest.mark.slow
def test_a_refused_sweep_opens_no_run_under_either_sweeper(tmp_path):
    from tests.test_validation import run_refused_sweep

    refusals = []
    for sweeper in ("basic", "embsvd"):
        (tmp_path / sweeper).mkdir()
        done = run_refused_sweep(
            tmp_path / sweeper, f"hydra/sweeper={sweeper}", "analysis.n_components=2,0"
        )
        refusal = done.stderr[done.stderr.index("The sweep was refused") :]
        refusals.append(refusal.replace(str(tmp_path / sweeper), "<folder>"))
    assert refusals[0] == refusals[1]
    assert "analysis.n_components: must be at least 1, got 0" in refusals[0]
