"""Secrets never reach a run, Hydra's files or the console: the redaction rule, the keys it
must leave alone, and real ``experiments/run.py`` runs and sweeps that carry a secret on
the command line.

The secrets are drawn at random for each test: a fixed string in this file would turn up
in a run's ``git_diff.patch`` the day the file is edited, and fail the test for nothing.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from embsvd.groups import GroupSpec
from embsvd.io.spec import CheckpointSpec
from embsvd.pipeline.config import EmbsvdConfig, FiguresConfig, checked_settings
from embsvd.pipeline.report import figures_command, mlflow_ui_command
from embsvd.pipeline.secrets import (
    REDACTED,
    SecretFilter,
    _redacted_patterns,
    install_log_redaction,
    is_secret_key,
    redact_config,
    redact_exception,
    redact_override,
    redact_text,
    redact_yaml_file,
)
from tests.conftest import CONFIG_DIR, PROJECT_ROOT

# --- the rule -------------------------------------------------------------------------------

SECRET_KEYS = [
    "token",
    "model.token",
    "hf_token",
    "HF_TOKEN",
    "hydra.job.env_set.HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "use_auth_token",
    "accessToken",
    "password",
    "db_password",
    "MLFLOW_TRACKING_PASSWORD",
    "passwd",
    "secret",
    "client_secret",
    "api_key",
    "apiKey",
    "x-api-key",
    "OPENAI_API_KEY",
    "aws_secret_access_key",
    "AWS_SESSION_TOKEN",
    "private_key",
    "+model.token",
]
# keys of ours and ordinary names that merely contain a secret's word
HARMLESS_KEYS = [
    "model.embedding_key",
    "model.output_key",
    "tensor_key",
    "key",
    "top_k",
    "analysis.top_k",
    "n_tokens",
    "tokenizer",
    "tokens",
    "token_forms",
    "private_key_path",
    "secretary",
    "keyword",
    "passwords_checked_at",
    "tracking.uri",
    "MLFLOW_TRACKING_USERNAME",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_keys_that_name_a_secret(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", HARMLESS_KEYS)
def test_keys_that_do_not_name_a_secret(key):
    assert not is_secret_key(key)


def tree_keys(tree, prefix=""):
    """Every dotted key of a plain tree of dicts and lists."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield f"{prefix}{key}"
            yield from tree_keys(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for value in tree:
            yield from tree_keys(value, prefix)


def schema_keys(schema, prefix=""):
    """Every field of a schema dataclass and of the dataclasses it nests."""
    for field in dataclasses.fields(schema):
        yield f"{prefix}{field.name}"
        nested = field.default_factory if field.default_factory is not dataclasses.MISSING else None
        kind = field.type if dataclasses.is_dataclass(field.type) else None
        for candidate in (kind, nested):
            if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
                yield from schema_keys(candidate, f"{prefix}{field.name}.")


def test_no_key_of_the_configs_or_their_schemas_is_taken_for_a_secret():
    """The rule must not blank a setting of ours: every key of every file under conf/, of
    the composed configs (Hydra's own settings included) and of the schemas."""
    keys = set()
    for file in CONFIG_DIR.rglob("*.yaml"):
        keys |= set(tree_keys(yaml.safe_load(file.read_text()) or {}))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name in ("config", "figures"):
            composed = compose(name, return_hydra_config=True)
            keys |= set(tree_keys(OmegaConf.to_container(composed, resolve=False)))
    for schema in (EmbsvdConfig, FiguresConfig, CheckpointSpec, GroupSpec):
        keys |= set(schema_keys(schema))
    # the check reaches the keys that come closest
    assert {"model.embedding_key", "model.output_key", "analysis.top_k", "top_k"} <= keys
    assert len(keys) > 200
    assert sorted(k for k in keys if is_secret_key(k)) == []


def test_the_default_configs_pass_through_redaction_unchanged():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for name in ("config", "figures"):
            tree = OmegaConf.to_container(compose(name, return_hydra_config=True), resolve=False)
            assert redact_config(tree) == tree


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (
            "tracking.uri=http://alice:pw@127.0.0.1:5000",
            "tracking.uri=http://alice:***@127.0.0.1:5000",
        ),
        ("https://alice:p@ss:w@host/x", "https://alice:***@host/x"),  # an '@' in the password
        ("postgresql://u:pw@db:5432/mlflow", "postgresql://u:***@db:5432/mlflow"),
        # as Hydra escapes a sweep's overrides (the launcher's '#0 : ...' lines)
        (
            r"tracking.uri=http\://alice\:pw@h\:5000 x=1",
            r"tracking.uri=http\://alice\:***@h\:5000 x=1",
        ),
        (
            "s3://bucket/run?X-Amz-Signature=abc&part=2",
            "s3://bucket/run?X-Amz-Signature=***&part=2",
        ),
        ("https://h/x?key=abc&sig=def&sv=2024", "https://h/x?key=***&sig=***&sv=2024"),
        ("+model.token=hf_abc target=digits", "+model.token=*** target=digits"),
        (
            "['+hydra.job.env_set.HF_TOKEN=hf_abc', 'x=y']",
            "['+hydra.job.env_set.HF_TOKEN=***', 'x=y']",
        ),
        ("--password='two words' next", "--password=*** next"),
        ("{'api_key': 'abc', 'name': 'x'}", "{'api_key': '***', 'name': 'x'}"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        # left alone: no password, not a secret's key, not a userinfo
        ("ssh://git@github.com/org/repo", "ssh://git@github.com/org/repo"),
        ("http://127.0.0.1:5000/#/experiments/1", "http://127.0.0.1:5000/#/experiments/1"),
        ("http://h:5000/runs@x", "http://h:5000/runs@x"),
        ("model.embedding_key=emb top_k=3 key=value", "model.embedding_key=emb top_k=3 key=value"),
        ("sqlite:////data/mlflow.db", "sqlite:////data/mlflow.db"),
        ("model.token=", "model.token="),  # nothing given, nothing to hide
    ],
)
def test_redact_text(text, redacted):
    assert redact_text(text) == redacted
    # a text without ':' and '=' is returned at once: no credential pattern matches it
    plain = text.replace(":", " ").replace("=", " ")
    assert redact_text(plain) == _redacted_patterns(plain) == plain


@pytest.mark.parametrize(
    ("override", "redacted"),
    [
        ("+model.token=hf_abc", "+model.token=***"),
        ("+model.token='a b, c'", "+model.token=***"),  # quoted, with spaces
        ("+hydra.job.env_set.HF_TOKEN=a,b", "+hydra.job.env_set.HF_TOKEN=***"),  # a sweep
        ("tracking.uri=http://alice:pw@h:5000", "tracking.uri=http://alice:***@h:5000"),
        ("target=digits,eu_countries", "target=digits,eu_countries"),
        ("~model.token", "~model.token"),
    ],
)
def test_redact_override(override, redacted):
    assert redact_override(override) == redacted


def test_redact_config_blanks_secret_keys_and_uri_passwords_and_keeps_the_rest():
    tree = {
        "model": {"name": "m", "embedding_key": "emb", "token": "hf_abc", "revision": None},
        "tracking": {"uri": "http://alice:pw@h:5000", "password": None, "secret": ""},
        "env": {"HF_TOKEN": "hf_abc", "credentials": {"user": "u", "key": "k"}},
        "groups": [{"words": ["a", "b"]}],
        "top_k": 3,
    }
    assert redact_config(tree) == {
        "model": {"name": "m", "embedding_key": "emb", "token": REDACTED, "revision": None},
        "tracking": {"uri": "http://alice:***@h:5000", "password": None, "secret": ""},
        "env": {"HF_TOKEN": REDACTED, "credentials": REDACTED},
        "groups": [{"words": ["a", "b"]}],
        "top_k": 3,
    }
    assert tree["model"]["token"] == "hf_abc"  # a new tree: the job still uses the original


def test_redact_yaml_file_rewrites_only_a_file_with_a_secret(tmp_path):
    secret = secrets.token_hex(8)
    hydra_yaml = tmp_path / "hydra.yaml"
    OmegaConf.save(
        OmegaConf.create(
            {
                "hydra": {
                    "run": {"dir": "${now:%Y-%m-%d}"},  # interpolations stay as written
                    "job": {"env_set": {"HF_TOKEN": secret}},
                    "overrides": {"task": [f"tracking.uri=http://a:{secret}@h"]},
                }
            }
        ),
        hydra_yaml,
    )
    hydra_yaml.chmod(0o644)
    assert redact_yaml_file(hydra_yaml)
    assert secret not in hydra_yaml.read_text()
    assert OmegaConf.to_container(OmegaConf.load(hydra_yaml)) == {
        "hydra": {
            "run": {"dir": "${now:%Y-%m-%d}"},
            "job": {"env_set": {"HF_TOKEN": REDACTED}},
            "overrides": {"task": ["tracking.uri=http://a:***@h"]},
        }
    }
    assert hydra_yaml.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["hydra.yaml"]  # no temporary file left
    clean = tmp_path / "overrides.yaml"
    clean.write_text("- target=digits\n")
    before = clean.stat().st_mtime_ns
    assert not redact_yaml_file(clean)
    assert clean.stat().st_mtime_ns == before
    assert not redact_yaml_file(tmp_path / "absent.yaml")


@pytest.fixture
def record_factory():
    """The log record factory as it was: ``install_log_redaction`` replaces it."""
    saved = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(saved)


def logger_into(stream: io.StringIO, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers = [logging.StreamHandler(stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_log_redaction_reaches_handlers_created_after_it(record_factory):
    """Hydra's launcher replaces the handlers before it logs each job's overrides: the
    redaction must not live on the handlers present when it was installed."""
    secret = secrets.token_hex(8)
    install_log_redaction()
    install_log_redaction()  # idempotent: one factory, not a chain
    stream = io.StringIO()
    logger = logger_into(stream, "tests.test_secrets.after")
    logger.info("\t#%d : %s", 0, f"tracking.uri=http\\://alice\\:{secret}@h target=digits")
    try:
        raise RuntimeError(f"API request to http://alice:{secret}@h/api failed")
    except RuntimeError:
        logger.exception("job failed")
    output = stream.getvalue()
    assert secret not in output
    assert "#0 : tracking.uri=http\\://alice\\:***@h target=digits" in output
    assert "RuntimeError: API request to http://alice:***@h/api failed" in output


def test_secret_filter_on_a_handler(record_factory):
    secret = secrets.token_hex(8)
    stream = io.StringIO()
    logger = logger_into(stream, "tests.test_secrets.filter")
    logger.handlers[0].addFilter(SecretFilter())
    logger.info("given %r", {"token": secret})
    logger.info("100%% of %s", "nothing secret")
    assert stream.getvalue().splitlines() == ["given {'token': '***'}", "100% of nothing secret"]


def test_redact_exception_redacts_the_chain_hydra_prints():
    secret = secrets.token_hex(8)
    try:
        try:
            raise ConnectionError(f"http://alice:{secret}@h refused")
        except ConnectionError as cause:
            raise ValueError(f"API request to http://alice:{secret}@h/x failed") from cause
    except ValueError as error:
        redact_exception(error)
        assert str(error) == "API request to http://alice:***@h/x failed"
        assert str(error.__cause__) == "http://alice:***@h refused"


def test_hub_token_in_the_config_is_refused_without_echoing_it():
    secret = secrets.token_hex(8)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"+model.token=hf_{secret}"])
        with pytest.raises(ValueError, match=r"Hub tokens are read from the environment") as info:
            checked_settings(cfg)
        message = str(info.value)
        assert secret not in message
        assert message.startswith("model.token: secrets are never config values")
        assert "HF_TOKEN" in message and "the value given is not shown" in message
        cfg = compose("config", overrides=[f"+tracking.password={secret}"])
        with pytest.raises(ValueError, match="MLFLOW_TRACKING_PASSWORD") as info:
            checked_settings(cfg)
        assert secret not in str(info.value)
        # an unknown key that is no secret's still shows its value, with a URI's password hidden
        cfg = compose("config", overrides=[f"+tracking.url=http://alice:{secret}@h"])
        with pytest.raises(ValueError, match=r"given 'http://alice:\*\*\*@h'") as info:
            checked_settings(cfg)
        assert secret not in str(info.value)


def test_printed_commands_show_no_server_password(tmp_path):
    secret = secrets.token_hex(8)
    uri = f"http://alice:{secret}@127.0.0.1:5000"
    assert mlflow_ui_command(uri) == "http://alice:***@127.0.0.1:5000"  # the server's own UI
    command = figures_command(tmp_path, uri, "sweep_1")
    assert secret not in command and "tracking.uri=http://alice:***@127.0.0.1:5000" in command
    assert "--backend-store-uri sqlite:////data/mlflow.db" in mlflow_ui_command(
        "sqlite:////data/mlflow.db"
    )


# --- real runs and sweeps -------------------------------------------------------------------

FAST = ["analysis=fast", "analysis.figures=false"]


@pytest.fixture
def store(tmp_path: Path, migrated_store_file: Path) -> str:
    """A fresh sqlite store of the test's own, created without the migrations' wait."""
    (tmp_path / "store").mkdir()
    shutil.copyfile(migrated_store_file, tmp_path / "store" / "mlflow.db")
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def run_script(tmp_path: Path, *arguments: str, env: dict | None = None):
    """``experiments/run.py`` as a user types it, from outside the project."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "experiments" / "run.py"), *arguments],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": "", **(env or {})},
    )


def tiny_model(tiny_bert: Path) -> list[str]:
    return ["model=local", f"model.path={tiny_bert}", "model.name=tiny_bert"]


def stored_bytes(client: MlflowClient, run_id: str, downloads: Path) -> dict[str, bytes]:
    """Everything the store keeps of a run: params, tags and every artifact's bytes."""
    run = client.get_run(run_id)
    kept = {f"param {k}": v.encode() for k, v in run.data.params.items()}
    kept |= {f"tag {k}": v.encode() for k, v in run.data.tags.items()}
    folder = Path(client.download_artifacts(run_id, "", str(downloads / run_id)))
    kept |= {
        f"artifact {path.relative_to(folder)}": path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }
    return kept


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file Hydra and the job wrote under ``folder`` (hidden ones too)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_nowhere(secret: str, kept: dict[str, bytes]) -> None:
    found = [where for where, data in kept.items() if secret.encode() in data]
    assert not found, f"the secret is in: {found}"


def secret_carriers() -> tuple[list[str], list[str]]:
    """Two secrets and the overrides that carry them: a Hub token into the job's
    environment (Hydra's ``env_set``, kept in hydra.yaml), and a URL with a password in
    a setting the run records (a group's description)."""
    token, password = f"hf_{secrets.token_hex(12)}", secrets.token_hex(12)
    overrides = [
        f"+hydra.job.env_set.HF_TOKEN={token}",
        f"groups.digits.description=list from https://alice:{password}@example.org/digits",
    ]
    return [token, password], overrides


@pytest.mark.slow
def test_a_run_keeps_no_secret_given_on_the_command_line(tiny_bert, tmp_path, store):
    secret_values, carriers = secret_carriers()
    job_dir = tmp_path / "job"
    done = run_script(
        tmp_path,
        *tiny_model(tiny_bert),
        *FAST,
        f"tracking.uri={store}",
        f"hydra.run.dir={job_dir}",
        "hydra.output_subdir=.hydra",  # Hydra's files of the job (off by default), redacted
        *carriers,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("embsvd").experiment_id])
    assert run.info.status == "FINISHED"
    kept = stored_bytes(client, run.info.run_id, tmp_path / "downloads")
    kept |= {f"job folder {k}": v for k, v in files_under(job_dir).items()}
    kept |= {"stdout": done.stdout.encode(), "stderr": done.stderr.encode()}
    for secret in secret_values:
        assert_nowhere(secret, kept)
    # the carriers were carried, redacted: the test did reach the places it checks
    described = "list from https://alice:***@example.org/digits"
    assert run.data.params["groups.digits.description"] == described
    assert described in run.data.tags["embsvd.overrides"]
    assert described.encode() in kept["artifact config.yaml"]
    assert described.encode() in kept["job folder .hydra/overrides.yaml"]
    assert b"HF_TOKEN: '***'" in kept["job folder .hydra/hydra.yaml"]
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", "run.log"} <= set(files_under(job_dir))


@pytest.mark.slow
def test_a_sweep_keeps_no_secret_given_on_the_command_line(tiny_bert, tmp_path, store):
    secret_values, carriers = secret_carriers()
    sweep_dir = tmp_path / "sweep"
    done = run_script(
        tmp_path,
        "-m",
        *tiny_model(tiny_bert),
        *FAST,
        f"tracking.uri={store}",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.output_subdir=.hydra",  # Hydra's files of each job (off by default), redacted
        "target=digits,eu_countries",
        *carriers,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("embsvd").experiment_id])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    kept = {"stdout": done.stdout.encode(), "stderr": done.stderr.encode()}
    for run in runs:  # the parent (children.csv, sweep_summary.txt) and its children
        kept |= stored_bytes(client, run.info.run_id, tmp_path / "downloads")
    kept |= {f"sweep folder {k}": v for k, v in files_under(sweep_dir).items()}
    for secret in secret_values:
        assert_nowhere(secret, kept)
    assert "#0 : " in done.stdout  # Hydra's launcher line of each job, redacted
    assert "alice\\:***@example.org" in done.stdout
    assert b"HF_TOKEN: '***'" in kept["sweep folder multirun.yaml"]
    assert {"multirun.yaml", "0/.hydra/hydra.yaml", "1/.hydra/overrides.yaml"} <= set(
        files_under(sweep_dir)
    )
    parent = next(r for r in runs if r.data.tags.get("embsvd.role") == "sweep")
    assert "https://alice:***@example.org/digits" in parent.data.tags["embsvd.overrides"]


@pytest.mark.slow
def test_a_hub_token_on_the_command_line_is_refused_and_not_shown(tiny_bert, tmp_path, store):
    token = f"hf_{secrets.token_hex(12)}"
    job_dir = tmp_path / "job"
    done = run_script(
        tmp_path,
        *tiny_model(tiny_bert),
        f"tracking.uri={store}",
        f"hydra.run.dir={job_dir}",
        f"+model.token={token}",
    )
    assert done.returncode != 0
    assert "model.token: secrets are never config values" in done.stderr + done.stdout
    assert "Hub tokens are read from the environment only (HF_TOKEN" in done.stderr
    assert "+model.token=***" in done.stderr  # Hydra's 'Error executing job with overrides'
    kept = {"stdout": done.stdout.encode(), "stderr": done.stderr.encode()}
    assert_nowhere(token, kept | files_under(job_dir))
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("embsvd")
    assert experiment is None or not client.search_runs([experiment.experiment_id])
    # a sweep is refused before it starts, its refusal naming the job without the token
    sweep = run_script(
        tmp_path,
        "-m",
        *tiny_model(tiny_bert),
        f"tracking.uri={store}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "target=digits,eu_countries",
        f"+model.token={token}",
    )
    assert sweep.returncode == 1
    assert "The sweep was refused before it started" in sweep.stderr
    assert "Hub tokens are read from the environment only" in sweep.stderr
    assert "+model.token=***" in sweep.stderr
    assert token not in sweep.stdout + sweep.stderr
