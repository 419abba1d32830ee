"""Zip sweeps: embsvd's sweeper pairs the keys of a ``hydra.sweeper.zip`` group position
by position instead of crossing them. The jobs are exactly the pairs, each the config
Hydra composes for it one job at a time (and derived once per choice of config groups,
as every job of embsvd's sweeper is); groups that cannot pair are refused before any
job, naming the keys and their numbers of values. A real sweep that zips is in
``test_replicates_sweep.py``."""

from __future__ import annotations

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException

from embsvd.pipeline.compose import ComposeOnce, SweepRefused, sweep_jobs, zipped_jobs
from tests.conftest import CONFIG_DIR
from tests.test_compose_once import QUIET, assert_same_config, multirun, sweep_config


@pytest.fixture
def start_app():
    """Starts Hydra as ``experiments/run.py`` does, a fresh instance each call."""

    def start() -> Hydra:
        GlobalHydra.instance().clear()
        return Hydra.create_main_hydra2("run", create_config_search_path(f"file://{CONFIG_DIR}"))

    yield start
    GlobalHydra.instance().clear()


ZIPPED = [
    "groups=[digits,eu_countries,months]",
    "model=all_minilm_l6_v2,smollm2_135m",
    "analysis.random_state=0,1",
    "target=digits,months",
    "hydra.sweeper.zip=[[model,target]]",
]
# the pairs, crossed with the random states; each job's overrides in the order they came
PAIRED = [
    [
        "groups=[digits,eu_countries,months]",
        f"model={model}",
        f"analysis.random_state={seed}",
        f"target={target}",
    ]
    for model, target in [("all_minilm_l6_v2", "digits"), ("smollm2_135m", "months")]
    for seed in (0, 1)
]


def test_zipped_keys_are_paired_and_each_job_is_the_config_hydra_composes(start_app):
    app = start_app()
    config = sweep_config(app, *ZIPPED)
    jobs = sweep_jobs(config, app.config_loader)
    assert jobs == PAIRED  # 2 pairs x 2 states, not 2 x 2 x 2
    once = ComposeOnce(app.config_loader, derive=True)
    for job in jobs:  # against Hydra composing the job alone
        assert_same_config(
            once.load_sweep_config(config, job), app.config_loader.load_sweep_config(config, job)
        )
    assert (once.compositions, once.derived) == (2, 4)  # one composition per model


def test_a_multirun_runs_exactly_the_paired_jobs(start_app, tmp_path):
    app = start_app()
    returns = multirun(app, *QUIET, f"hydra.sweep.dir={tmp_path}", *ZIPPED)
    assert [list(r.overrides) for r in returns] == PAIRED
    assert [(r.cfg.model.name, r.cfg.target, r.cfg.analysis.random_state) for r in returns] == [
        ("all_minilm_l6_v2", "digits", 0),
        ("all_minilm_l6_v2", "digits", 1),
        ("smollm2_135m", "months", 0),
        ("smollm2_135m", "months", 1),
    ]
    once = app.config_loader
    assert (once.n_jobs, once.compositions, once.derived) == (4, 2, 4)


def test_the_model_revisions_preset_pairs_each_model_with_its_revision(start_app):
    app = start_app()
    config = sweep_config(app, "+experiment=model_revisions")
    jobs = sweep_jobs(config, app.config_loader)
    assert [job[:2] for job in jobs] == [
        ["model=pythia_70m", "model.revision=step1000"],
        ["model=pythia_70m", "model.revision=step143000"],
        ["model=bert_base_uncased", "model.revision=main"],
    ]
    once = ComposeOnce(app.config_loader, derive=True)
    for job in jobs:
        assert_same_config(
            once.load_sweep_config(config, job), app.config_loader.load_sweep_config(config, job)
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model=all_minilm_l6_v2,smollm2_135m", "target=digits,eu_countries,digits"],
            r"^hydra\.sweeper\.zip: \[model, target\] pairs values position by position, but "
            r"model has 2 \(all_minilm_l6_v2,smollm2_135m\), target has 3 "
            r"\(digits,eu_countries,digits\); give every key of the group as many values$",
        ),
        (
            ["model=all_minilm_l6_v2,smollm2_135m"],
            r"hydra\.sweeper\.zip: target is not swept \(neither hydra\.sweeper\.params nor the "
            r"command line sets it\); sweep it alongside, e\.g\. target=a,b",
        ),
    ],
)
def test_groups_that_cannot_pair_are_refused_naming_keys_and_lengths(start_app, overrides, message):
    app = start_app()
    config = sweep_config(app, *overrides, "hydra.sweeper.zip=[[model,target]]")
    with pytest.raises(SweepRefused, match=message):
        sweep_jobs(config, app.config_loader)


def test_a_refused_zip_ends_the_multirun_before_any_job(start_app, tmp_path, capsys):
    app = start_app()
    with pytest.raises(SystemExit) as exited:
        multirun(
            app,
            *QUIET,
            f"hydra.sweep.dir={tmp_path}",
            "analysis.random_state=0,1,2",
            "target=digits,eu_countries",
            "hydra.sweeper.zip=[[analysis.random_state,target]]",
        )
    assert exited.value.code == 1
    said = capsys.readouterr().err
    assert "analysis.random_state has 3 (0,1,2), target has 2 (digits,eu_countries)" in said
    assert not list(tmp_path.glob("[0-9]*"))  # no job folder: no job ran


def parsed(*lines: str):
    return OverridesParser.create().parse_overrides(list(lines))


@pytest.mark.parametrize(
    ("zipped", "message"),
    [
        ([["a"]], r"\['a'\] is not a group of keys; give lists of 2 or more keys"),
        (["ab"], r"'ab' is not a group of keys"),
        ([["a", "b"], ["b", "c"]], r"b is in two groups; name each key once"),
    ],
)
def test_malformed_groups_are_named(zipped, message):
    with pytest.raises(SweepRefused, match=message):
        zipped_jobs(parsed("a=1,2", "b=3,4", "c=5,6"), zipped, None)


def test_zipped_jobs_come_in_batches_and_without_zip_as_hydras():
    overrides = parsed("a=1,2,3", "c=x", "+b=4,5,6", "d=7,8")
    batches = zipped_jobs(overrides, [["b", "a"]], max_batch_size=4)
    assert [len(batch) for batch in batches] == [4, 2]
    assert batches[0][:3] == [["a=1", "c=x", "+b=4", "d=7"], ["a=1", "c=x", "+b=4", "d=8"]] + [
        ["a=2", "c=x", "+b=5", "d=7"]
    ]
    assert zipped_jobs(overrides, None, 4) == BasicSweeper.split_arguments(overrides, 4)


def test_hydras_basic_sweeper_has_no_zip(start_app):
    app = start_app()
    with pytest.raises(ConfigCompositionException) as refused:
        sweep_config(app, "hydra/sweeper=basic", "target=digits", "hydra.sweeper.zip=[[a,b]]")
    assert "zip" in str(refused.value) + str(refused.value.__cause__)
