"""Settings that cannot run are refused before anything starts: a choice that is not one
at composition, everything else by ``validate`` on every job of a sweep before its
parent run opens, and before a single run opens."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from embsvd.checks.matching import NULL_MATCHES, NullMatch
from embsvd.figures.style import FigureFormat
from embsvd.groups import FORMS, GROUP_NAME, ORDERS, Form, GroupSpec, Order
from embsvd.io.spec import MATRICES, CheckpointSpec, Matrix
from embsvd.method.geometry import Geometry
from embsvd.pipeline import run_job
from embsvd.pipeline.compose import ComposeOnce, SweepRefused, sweep_jobs
from embsvd.pipeline.config import (
    EmbsvdConfig,
    checked_settings,
    config_hash,
    read_group_file,
    validate,
)
from embsvd.tracking import contract
from tests.conftest import CONFIG_DIR, PROJECT_ROOT
from tests.test_config import OPTIONS, compose_config
from tests.test_pipeline import job_config, runs_of

# --- choices: StrEnum fields, refused when the config is composed ---------------------------


def test_choice_enums_are_named_as_their_values_and_compare_as_strings():
    # OmegaConf matches a config value to a member by name and lists names when it refuses
    for enum in (Geometry, Matrix, Form, Order, NullMatch, FigureFormat):
        assert all(member.name == member.value for member in enum), enum
    assert Geometry.whitened == "whitened" and f"+{Geometry.whitened}" == "+whitened"
    assert (MATRICES, FORMS, ORDERS, NULL_MATCHES) == (
        ("input", "output"),
        ("auto", "initial", "bare"),
        ("none", "linear", "cyclic"),
        ("none", "norm", "frequency", "norm_frequency"),
    )


def test_composed_choices_are_enum_members():
    settings = OmegaConf.to_object(compose_config("groups.digits.form=bare"))
    assert settings.analysis.geometry is Geometry.euclidean
    assert settings.analysis.null_match is NullMatch.norm_frequency
    assert settings.model.matrix is Matrix.input
    assert settings.groups["digits"].form is Form.bare
    assert settings.groups["digits"].order is Order.linear


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        (
            "analysis.geometry=whitend",
            "analysis.geometry",
            "Invalid value 'whitend', expected one of [euclidean, whitened]",
        ),
        ("model.matrix=outptu", "model.matrix", "Invalid value 'outptu', expected one of [input"),
        (
            "groups.digits.form=initail",
            "groups.digits.form",
            "Invalid value 'initail', expected one of [auto, initial, bare]",
        ),
        (
            "groups.digits.order=cyclc",
            "groups.digits.order",
            "Invalid value 'cyclc', expected one of [none, linear, cyclic]",
        ),
        (
            "analysis.null_match=nearest",
            "analysis.null_match",
            "Invalid value 'nearest', expected one of [none, norm, frequency, norm_frequency]",
        ),
    ],
)
def test_a_choice_that_is_not_one_fails_at_composition(override, key, message):
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config(override)
    assert raised.value.__cause__.full_key == key
    assert message in str(raised.value.__cause__)


def test_a_figure_format_that_is_not_one_fails_at_composition():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        assert compose("figures", overrides=["formats=[svg]"]).formats == [FigureFormat.svg]
        with pytest.raises(ConfigCompositionException) as raised:
            compose("figures", overrides=["formats=[pdf,jpg]"])
    assert "Invalid value 'jpg', expected one of [pdf, png, svg]" in str(raised.value.__cause__)


def test_enum_choices_hash_as_their_strings():
    # runs logged before the choices were enums keep matching a resume's config hash
    settings = OmegaConf.to_object(compose_config("analysis.geometry=whitened"))
    as_strings = OmegaConf.to_object(compose_config("analysis.geometry=whitened"))
    as_strings.analysis.geometry = "whitened"
    as_strings.analysis.null_match = "norm_frequency"
    as_strings.model.matrix = "input"
    assert config_hash(settings) == config_hash(as_strings)


# --- validate: ranges, the target, the device ----------------------------------------------


def refusal(*overrides: str) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as raised:
        checked_settings(compose_config(*overrides))
    return str(raised.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "target=digitz",
            "target: 'digitz' is not one of the configured groups (digits, eu_countries); "
            "did you mean 'digits'? Else add it, e.g. groups=[digits,eu_countries,digitz]",
        ),
        (
            "target=planets",
            "target: 'planets' is not one of the configured groups (digits, eu_countries); "
            "pick one, or add it, e.g. groups=[digits,eu_countries,planets]",
        ),
        ("target=extra", "target: 'extra' has no words; give them, e.g. groups.extra.words="),
        ("analysis.n_components=0", "analysis.n_components: must be at least 1, got 0"),
        ("analysis.top_k=0", "analysis.top_k: must be at least 1, got 0"),
        ("analysis.precision_k=-1", "analysis.precision_k: must be at least 1, got -1"),
        ("analysis.null_neighbours=0", "analysis.null_neighbours: must be at least 1, got 0"),
        ("analysis.n_null=1", "analysis.n_null: must be 0 (off) or at least 2, got 1"),
        ("analysis.n_resamples=-5", "analysis.n_resamples: must be 0 (off) or at least 2, got -5"),
        ("analysis.n_global=-1", "analysis.n_global: must be 0 (off) or more, got -1"),
        ("analysis.remove_global=-1", "analysis.remove_global: must be 0 (off) or more, got -1"),
        (
            "analysis.explorer_process_min_tokens=-1",
            "analysis.explorer_process_min_tokens: must be 0 (the figure process writes every "
            "run's explorer) or more, got -1",
        ),
        (
            "tracking.writer_min_jobs=-2",
            "tracking.writer_min_jobs: must be 0 (every sweep whose jobs run in its process has a "
            "writer process) or more, got -2",
        ),
        ("analysis.alpha=1.5", "analysis.alpha: a level between 0 and 1, got 1.5"),
        (
            "analysis.confound_threshold=2",
            "analysis.confound_threshold: a |Spearman rho| between 0 and 1, got 2.0",
        ),
        (
            "analysis.whitening_shrinkage=1.5",
            "analysis.whitening_shrinkage: null (Ledoit-Wolf) or a weight between 0 and 1, got 1.5",
        ),
        (
            "analysis.device=cdua",
            "analysis.device: 'cdua' is not a device; use cpu (numpy), cuda, cuda:<index> "
            "(e.g. cuda:1) or mps",
        ),
        ("analysis.device=cuda:x", "analysis.device: 'cuda:x' is not a device; use cpu"),
        ("analysis.device=cuda:1234", "analysis.device: 'cuda:1234' is not a device; use cpu"),
        ("analysis.device=CPU", "analysis.device: 'CPU' is not a device; use cpu"),
        ("analysis.device=cuda:", "analysis.device: 'cuda:' is not a device; use cpu"),
        (
            "analysis.top_k=1001",
            "analysis.top_k: at most 1000 tokens at each end of an axis, got 1001",
        ),
        (
            "groups.digits.size=1001",
            "groups.digits.size: the group keeps 1001 members; at most 1000",
        ),
        (
            "analysis.n_components=10",
            "analysis.n_components: 10 axes of target 'digits', which keeps at most 10 tokens, "
            "one axis fewer when centered: at most 9; set analysis.n_components=9",
        ),
        ("groups.digits.size=1", "groups.digits.size: 1 for a closed set of 10 words"),
        ("model=local", "model local: set exactly one of model.path (a local folder)"),
        ("group_files=[/no/such/groups.yaml]", "group_files: /no/such/groups.yaml is not a file"),
    ],
)
def test_validate_names_the_key_the_value_and_what_is_allowed(override, message):
    assert message in refusal(override)


@pytest.mark.parametrize(
    "overrides",
    [
        ["+experiment=seed_replication"],
        *[[f"model={name}"] for name in OPTIONS["model"] if name != "local"],
        *[[f"groups=[{name}]", f"target={name}"] for name in OPTIONS["groups"]],
        *[[f"analysis={name}"] for name in OPTIONS["analysis"]],
    ],
)
def test_every_shipped_config_validates(overrides):
    checked_settings(compose_config(*overrides))


@pytest.mark.parametrize("device", ["cpu", "cuda", "cuda:1", "mps"])
def test_devices_of_the_accepted_forms_validate(device):
    assert checked_settings(compose_config(f"analysis.device={device}")).analysis.device == device


def test_a_target_defined_in_a_group_file_validates(tmp_path):
    groups = tmp_path / "groups.yaml"
    groups.write_text("pets:\n  words: [cat, dog]\n")
    settings = checked_settings(
        compose_config(f"group_files=[{groups}]", "target=pets", "analysis.n_components=1")
    )
    assert settings.target == "pets" and "extra" not in settings.groups  # the empty slot


def test_validate_checks_the_choices_of_settings_built_in_code():
    # only a config composed against the schema has its choices checked by OmegaConf
    settings = OmegaConf.to_object(compose_config())
    settings.analysis.geometry = "spherical"
    with pytest.raises(ValueError, match="analysis.geometry: 'spherical' is not one of euclidean"):
        validate(settings)
    built = EmbsvdConfig(
        model=CheckpointSpec(name="m", path="/m", matrix="both"),
        groups={"g": GroupSpec(words=["a", "b"])},
        target="g",
    )
    with pytest.raises(ValueError, match="model.matrix: 'both' is not one of input, output"):
        validate(built)


# --- group names, sizes and group files: what becomes a metric key, a bounded input ------------


def built(groups: dict[str, GroupSpec], target: str, **analysis) -> EmbsvdConfig:
    settings = EmbsvdConfig(model=CheckpointSpec(name="m", path="/m"), groups=groups, target=target)
    for key, value in analysis.items():
        setattr(settings.analysis, key, value)
    return settings


WORDS = ["w1", "w2", "w3", "w4", "w5"]


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("../evil", "evil"),
        ("café", "cafe"),
        ("x" * 300, "x" * 64),
        ("a__b", "a_b"),
        ("pets_", "pets"),
        ("1st", "st"),
        ("_x", "x"),
        ("two words", "two_words"),
        ("", "group"),
    ],
)
def test_a_group_name_that_could_not_be_a_metric_key_is_refused(name, suggestion):
    with pytest.raises(ValueError) as raised:
        validate(built({"ok": GroupSpec(words=WORDS), name: GroupSpec(words=WORDS)}, "ok"))
    message = str(raised.value)
    assert message.startswith(f"groups: {name[:100]!r}")
    assert "ASCII letters, digits, '_' and '-', starting with a letter, at most 64 characters" in (
        message
    )
    assert "no '__'" in message and f"rename it, e.g. to {suggestion!r}" in message


@pytest.mark.parametrize("name", ["digits", "eu_countries", "my-group2", "a", "A" * 64])
def test_group_names_within_the_rule_validate(name):
    validate(built({name: GroupSpec(words=WORDS)}, name))


def test_every_name_the_rule_takes_splits_back_out_of_a_pair_metric():
    # why '__' and a trailing '_' are refused: the pair key must give both names back
    rng = random.Random(0)
    names = [
        "".join(rng.choices("ab_-1", k=rng.randint(0, 8))).join(rng.choices("xyz", k=2))
        for _ in range(400)
    ]
    valid = [n for n in names if GROUP_NAME.fullmatch(n)]
    assert len(valid) > 100
    for a, b in zip(valid, reversed(valid), strict=True):
        a, b = sorted((a, b))
        assert contract.split_pair_metric(contract.pair_metric("p", a, b), "p") == (a, b)


def test_a_group_name_on_the_command_line_is_refused_at_composition():
    message = refusal("+groups={bad__name:{words:[a,b,c,d]}}")
    assert "groups: 'bad__name' is not a group name" in message
    assert "rename it, e.g. to 'bad_name'" in message


def test_groups_beyond_the_caps_are_refused():
    many_words = GroupSpec(words=[f"w{i}" for i in range(10_001)])
    with pytest.raises(ValueError, match=r"groups.big.words: 10001 words and 0 held_out "):
        validate(built({"ok": GroupSpec(words=WORDS), "big": many_words}, "ok"))
    closed = GroupSpec(words=[f"w{i}" for i in range(1001)], closed=True)
    with pytest.raises(ValueError, match=r"groups.big.words: the group keeps 1001 members; at"):
        validate(built({"ok": GroupSpec(words=WORDS), "big": closed}, "ok"))
    groups = {f"g{i}": GroupSpec(words=WORDS) for i in range(101)}
    with pytest.raises(ValueError, match=r"groups: 101 groups; at most 100 \(every pair"):
        validate(built(groups, "g0"))


@pytest.mark.parametrize("device", ["cuda:\u0661", "cuda:\uff11", "cuda:0x1", " cpu", "cpu\n"])
def test_a_device_in_other_digits_or_with_spaces_is_refused(device):
    # \d would take any script's digits; torch takes ASCII ones only
    with pytest.raises(ValueError, match=r"analysis.device: .* is not a device; use cpu"):
        validate(built({"g": GroupSpec(words=WORDS)}, "g", device=device))


@pytest.mark.parametrize(
    ("center", "size", "n_components", "refused"),
    [(True, None, 4, False), (True, None, 5, True), (False, None, 5, False), (True, 3, 3, True)],
)
def test_n_components_beyond_the_targets_rank_is_refused(center, size, n_components, refused):
    spec = GroupSpec(words=WORDS, size=size)  # open: keeps min(size or 10, 5 words) tokens
    settings = built({"g": spec}, "g", center=center, n_components=n_components)
    if not refused:
        validate(settings)
        return
    with pytest.raises(ValueError, match=r"analysis.n_components: \d+ axes of target 'g', which"):
        validate(settings)


def group_file(tmp_path: Path, content: str | bytes) -> Path:
    file = tmp_path / "groups.yaml"
    if isinstance(content, bytes):
        file.write_bytes(content)
    else:
        file.write_text(content, encoding="utf-8")
    return file


BOMB = "".join(  # 9^7 words from ~360 bytes: OmegaConf expands every alias into nodes
    f"{level}: &{level} [{','.join([f'*{previous}'] * 9)}]\n"
    for previous, level in zip("abcdef", "bcdefg", strict=True)
)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + BOMB,
            r"groups.yaml is not valid YAML for a group file: line 2, column 8: an alias \(\*a\)"
            ": write the words out",
        ),
        (
            "g:\n  words: [a, b]\n  words: [c, d]\n",
            r"groups.yaml is not valid YAML for a group file: line 3, column 3: the key 'words' "
            "appears twice",
        ),
        ("g:\n  words: [caf\xe9, b]\n".encode("latin-1"), r"groups.yaml is not UTF-8 text \("),
        ("[" * 50_000, r"groups.yaml nests too deeply to be a group file"),
        (
            "g:\n  words: ['${oc.env:HOME}', b]\n",
            r"group 'g' in .*groups.yaml: '\$\{oc.env:HOME\}' is an OmegaConf interpolation",
        ),
        (
            "../evil:\n  words: [a, b, c]\n",
            r"group_files: .*groups.yaml: groups: '../evil' is not a group name: .* e.g. to 'evil'",
        ),
        ("g:\n  words: [" + "w, " * 400_000 + "]\n", r"groups.yaml is larger than 1,000,000 bytes"),
    ],
)
def test_a_hostile_group_file_is_refused_naming_the_file(tmp_path, content, message):
    file = group_file(tmp_path, content)
    with pytest.raises(ValueError) as raised:
        read_group_file(file)
    assert str(raised.value).startswith(f"group_files: {file}") or f" in {file}: " in str(
        raised.value
    )
    assert re.search(message, str(raised.value)), str(raised.value)


def test_a_group_file_reads_as_conf_groups_does(tmp_path):
    file = group_file(
        tmp_path,
        "\ufeffdates:\n  words: [2020-01-01, 1e3, 7, May]\n  size: 3\n  closed: false\n",
    )
    [(name, spec)] = read_group_file(file).items()  # a BOM is taken, dates stay words
    assert (name, spec.words, spec.size) == ("dates", ["2020-01-01", "1e3", "7", "May"], 3)


# --- keys that `+` added beside the schema's ------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "+analysis.centre=false",
            "analysis.centre: not a key of analysis (given False, added by a '+' override, and "
            "nothing reads it); did you mean analysis.center?",
        ),
        ("+groups.digits.sise=5", "groups.digits.sise: not a key of groups.digits (given 5"),
        ("+groups.digits.sise=5", "did you mean groups.digits.size?"),
        ("+model.weights=x", "model.weights: not a key of model (given 'x'"),
        ("+model.weights=x", "its keys: name, path, hub_id"),
        ("+n_component=2", "n_component: not a key of the config (given 2"),
    ],
)
def test_a_key_the_schema_does_not_define_is_refused(override, message):
    assert message in refusal(override)


def test_the_misspelt_key_without_plus_still_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="append to your config use"):
        compose_config("analysis.centre=false")


# --- where it runs: before a single run opens, before a sweep starts ------------------------


def test_a_single_run_with_a_bad_value_opens_no_run(tmp_path):
    database = tmp_path / "mlflow.db"
    cfg = compose_config(
        "model=local",
        f"model.path={tmp_path / 'absent'}",
        f"tracking.uri=sqlite:///{database}",
        "analysis.n_components=0",
    )
    with pytest.raises(ValueError, match="analysis.n_components: must be at least 1, got 0"):
        run_job(cfg)
    assert not database.exists()  # not even the store was created


def test_the_sweep_jobs_are_expanded_as_the_basic_sweeper_does():
    cfg = compose_config("+experiment=seed_replication", "analysis.top_k=5", hydra=True)
    jobs = sweep_jobs(cfg, loader=None)
    assert jobs == [  # the experiment's sweep params, then the command line's overrides
        [
            f"target={target}",
            f"analysis.center={center}",
            "+experiment=seed_replication",
            "analysis.top_k=5",
        ]
        for target in ("digits", "eu_countries")
        for center in ("True", "False")
    ]
    cfg.hydra.sweeper._target_ = "some.other.Sweeper"  # it may choose its jobs as it goes
    assert sweep_jobs(cfg, loader=None) is None


class RecordingLoader:
    """A stand-in for Hydra's config loader that records what it composes."""

    def __init__(self):
        self.calls = []

    def load_sweep_config(self, master_config, sweep_overrides):
        self.calls.append(list(sweep_overrides))
        return OmegaConf.create({"overrides": list(sweep_overrides)})


def test_a_job_composed_ahead_serves_both_of_hydras_requests():
    loader, checked = RecordingLoader(), []
    once = ComposeOnce(loader, check=checked.append)
    once.compose_ahead(None, ["target=digits"])  # before the sweep starts
    validated = once.load_sweep_config(None, ["target=digits"])  # the sweeper's check
    launched = once.load_sweep_config(None, ["target=digits"])  # the launcher's
    assert loader.calls == [["target=digits"]] and len(checked) == 1
    assert (once.compositions, once.requests) == (1, 2)
    assert launched == validated and launched is not validated  # each mutates its own


def test_a_job_composed_on_request_that_fails_its_check_refuses_the_sweep():
    def refuse(config):
        raise ValueError("analysis.n_components: must be at least 1, got 0")

    once = ComposeOnce(RecordingLoader(), check=refuse)
    with pytest.raises(SweepRefused, match="job analysis.n_components=0: analysis.n_comp"):
        once.load_sweep_config(None, ["analysis.n_components=0"])


BAD_SWEEPS = [  # (sweep overrides, key, value given, what is allowed)
    (
        ["analysis.geometry=euclidean,whitend"],
        "analysis.geometry",
        "'whitend'",
        "[euclidean, whitened]",
    ),
    (["model.matrix=input,outptu"], "model.matrix", "'outptu'", "[input, output]"),
    (
        ["groups.digits.form=auto,initail"],
        "groups.digits.form",
        "'initail'",
        "[auto, initial, bare]",
    ),
    (["analysis.n_components=2,0"], "analysis.n_components", "got 0", "at least 1"),
    (["analysis.device=cpu,cdua"], "analysis.device", "'cdua'", "cuda:<index>"),
    (["target=digits,digitz"], "target", "'digitz'", "(digits, eu_countries)"),
    (
        ["+analysis.centre=false", "target=digits,eu_countries"],
        "analysis.centre",
        "given False",
        "did you mean analysis.center?",
    ),
]


def run_refused_sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``experiments/run.py -m`` on a checkpoint folder that does not exist (no job may get
    to read it), into a store in ``tmp_path``; asserts that it opened no run."""
    database = tmp_path / "store" / "mlflow.db"
    done = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "experiments" / "run.py"),
            "-m",
            f"tracking.uri=sqlite:///{database}",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "model=local",
            f"model.path={tmp_path / 'absent'}",
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    assert done.returncode != 0
    assert "The sweep was refused before it started; no run was opened." in done.stderr
    if database.exists():  # the store is created with the parent run: it should not be
        client = MlflowClient(f"sqlite:///{database}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
    return done


@pytest.mark.slow
@pytest.mark.parametrize(("sweep", "key", "value", "allowed"), BAD_SWEEPS)
def test_a_sweep_with_one_bad_value_is_refused_before_any_run(tmp_path, sweep, key, value, allowed):
    done = run_refused_sweep(tmp_path, *sweep)
    for expected in (key, value, allowed):
        assert expected in done.stderr, done.stderr[-2000:]


@pytest.mark.slow
def test_the_parent_run_waits_for_validation_whatever_the_callback_order(tmp_path):
    # without ComposeJobsOnce, SweepTracking validates the sweep itself before it opens
    done = run_refused_sweep(tmp_path, "~hydra.callbacks.compose_once", "analysis.n_components=2,0")
    assert "analysis.n_components: must be at least 1, got 0" in done.stderr
    assert "job #1: " in done.stderr


def test_the_figures_command_refuses_a_key_added_with_plus(tmp_path, capsys):
    from embsvd.pipeline import figures_job

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "figures", overrides=[f"output_dir={tmp_path}", "+sweep.sweepid=abc", "+dpi2=3"]
        )
    with pytest.raises(SystemExit) as exit_info:
        figures_job(cfg)
    assert exit_info.value.code == 1
    message = capsys.readouterr().err
    assert "sweep.sweepid: not a key of sweep" in message and "sweep.sweep_id" in message
    assert "dpi2" in message
    assert not list(tmp_path.iterdir())  # nothing drawn


@pytest.mark.slow
def test_a_sweep_with_a_bad_group_name_in_a_group_file_is_refused_before_any_run(tmp_path):
    file = group_file(tmp_path, "../evil:\n  words: [cat, dog, horse]\n")
    done = run_refused_sweep(tmp_path, f"group_files=[{file}]", "target=digits,eu_countries")
    assert f"group_files: {file}: groups: '../evil' is not a group name" in done.stderr
    assert "rename it, e.g. to 'evil'" in done.stderr
    assert "jobs #0, #1" in done.stderr  # every job names the same reason once


# --- where the rank is known only once the single-token rule ran: flagged in the run ---------


def test_a_run_whose_target_lost_words_below_n_components_is_flagged(
    tiny_bert, session_store, caplog
):
    # 4 words allow 3 centered axes at composition; the tiny vocabulary has no 'Mercury'
    cfg = job_config(
        tiny_bert,
        session_store,
        "clamped-components",
        "groups.extra.words=[cat,dog,red,Mercury]",
        "target=extra",
        "analysis=fast",
        "analysis.n_components=3",
        "analysis.figures=false",
    )
    with caplog.at_level("WARNING", logger="embsvd.method.analysis"):
        result = run_job(cfg)
    assert result.n_components == 2 and result.components_clamped
    assert "analysis.n_components=3 exceeds the 2 axes of extra; projecting on 2" in caplog.text
    _, [run] = runs_of(session_store, "clamped-components")
    assert run.info.status == "FINISHED"
    assert run.data.tags["embsvd.warning.n_components"] == (
        "n_components=3 but extra has 3 tokens (centered): projected on 2"
    )
