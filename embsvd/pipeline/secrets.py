"""Secrets never reach a run, a file or the console: one redaction rule for config keys,
command-line overrides, URIs and log lines.

A run records its whole config (params, the ``config.yaml`` artifact, the overrides tag)
and Hydra writes it into the job folder, so a token or a password given on the command
line would be kept in the store for anyone who can read it. Credentials belong in the
environment: Hugging Face Hub tokens in ``HF_TOKEN`` (read by huggingface_hub), tracking
server credentials in ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (read by
MLflow). Where a secret arrives anyway (``tracking.uri=http://alice:<password>@host``,
``+hydra.job.env_set.HF_TOKEN=...``), everything that records or prints it shows
``***`` instead; the job still connects with the real value.

The rule (``is_secret_key``, ``redact_text``):

- a key whose last dotted component is a secret's name (``SECRET_NAMES``) or ends with
  ``_<name>``: ``token``, ``hf_token``, ``MLFLOW_TRACKING_PASSWORD``, ``api_key``,
  ``aws_secret_access_key``, ``apiKey``. Not ``embedding_key``, ``tensor_key``,
  ``top_k`` or ``n_tokens``: a bare ``key`` names tensors here, not credentials;
- in any text: the password of a URI's userinfo (``scheme://user:***@host``), URI query
  parameters named as secrets, or ``key``, ``sig``, ``signature`` (signed URLs),
  ``key=value`` and ``'key': 'value'`` pairs with a secret's key, and the credentials of
  an ``Authorization:`` header.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

REDACTED = "***"

# a key is a secret's when its last component equals one of these or ends with _<one>
SECRET_NAMES = (
    "token",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "api_key",
    "apikey",
    "access_key",
    "secret_key",
    "private_key",
    "credential",
    "credentials",
    "authorization",
)
# URI query parameters also carry bare API keys (?key=...) and signed URLs' signatures
SECRET_QUERY_NAMES = (*SECRET_NAMES, "key", "sig", "signature")

_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _snake(name: str) -> str:
    """``apiKey`` -> ``api_key``, ``HF-TOKEN`` -> ``hf_token``: one spelling to match."""
    return _CAMEL_HUMP.sub("_", name).lower().replace("-", "_")


def _names_a_secret(name: str, secret_names: tuple[str, ...]) -> bool:
    last = _snake(name.rsplit(".", 1)[-1].lstrip("+~-"))
    return any(last == word or last.endswith("_" + word) for word in secret_names)


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a config key, override key or environment variable names a secret, by its
    last dotted component: ``model.token``, ``hydra.job.env_set.HF_TOKEN`` and
    ``db_password`` do; ``model.embedding_key``, ``analysis.top_k`` do not. Remembered per
    key: a sweep's jobs ask it of the same few hundred config keys."""
    return _names_a_secret(key, SECRET_NAMES)


# scheme://user:password@, also as Hydra escapes it in a sweep's overrides
# (http\://alice\:pw@host): the password runs to the last '@' before the host's '/'
_URI_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*\\?://[^\s/@:'\"]*?\\?:)(?:\\\s|[^\s/'\"])*@"
)
_QUERY_PARAMETER = re.compile(r"(?P<head>[?&;](?P<name>[\w.-]+)=)[^&#\s'\"]*")
_ASSIGNMENT = re.compile(
    r"(?P<head>(?P<key>[+~-]*[\w.-]+)=)(?P<value>\"[^\"]*\"|'[^']*'|(?:\\.|[^\s'\"\])&\\])*)"
)
_QUOTED_PAIR = re.compile(
    r"(?P<head>(?P<q>['\"])(?P<key>[\w.-]+)(?P=q)\s*:\s*)(?P<value>'[^']*'|\"[^\"]*\")"
)
_AUTHORIZATION = re.compile(r"(?P<head>\bauthorization\s*[:=]\s*['\"]?\w+ )[^\s'\",]+", re.I)


def redact_text(text: str) -> str:
    """``text`` with every credential the rule recognises replaced by ``***``: a URI's
    password, a secret's query parameter, ``key=value`` and ``'key': 'value'`` with a
    secret's key, and an ``Authorization:`` header's credentials."""
    if ":" not in text and "=" not in text:  # each pattern below needs one of them
        return text
    return _redacted_patterns(text)


def _redacted_patterns(text: str) -> str:
    text = _URI_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    text = _QUERY_PARAMETER.sub(
        lambda m: m["head"] + REDACTED if _names_a_secret(m["name"], SECRET_QUERY_NAMES) else m[0],
        text,
    )
    text = _ASSIGNMENT.sub(
        lambda m: m["head"] + REDACTED if is_secret_key(m["key"]) and m["value"] else m[0], text
    )
    text = _QUOTED_PAIR.sub(
        lambda m: f"{m['head']}{m['q']}{REDACTED}{m['q']}" if is_secret_key(m["key"]) else m[0],
        text,
    )
    return _AUTHORIZATION.sub(lambda m: m["head"] + REDACTED, text)


def redact_override(override: str) -> str:
    """A Hydra command-line override with its value redacted: all of it after the first
    ``=`` when the key names a secret (``+model.token=***``), else the credentials
    ``redact_text`` finds in it (``tracking.uri=http://alice:***@host``)."""
    key, equals, value = override.partition("=")
    if equals and value and is_secret_key(key):
        return f"{key}={REDACTED}"
    return redact_text(override)


def redact_overrides(overrides: Iterable[str]) -> list[str]:
    """``redact_override`` of each override."""
    return [redact_override(str(override)) for override in overrides]


def redact_config(tree: Any) -> Any:
    """A plain config tree (dicts, lists, scalars) with the value of every secret's key
    replaced by ``***`` and every string passed through ``redact_text``; a new tree. An
    unset secret (``None``, ``''``) stays as it is: that none was given is no secret."""
    if isinstance(tree, dict):
        return {
            key: REDACTED
            if is_secret_key(str(key)) and value not in (None, "")
            else redact_config(value)
            for key, value in tree.items()
        }
    if isinstance(tree, list | tuple):
        return [redact_config(value) for value in tree]
    if isinstance(tree, str):
        return redact_text(tree)
    return tree


def secret_key_message(key: str) -> str:
    """Why a secret's key (added with ``+``) is refused, and where the secret goes
    instead; the value given is never shown."""
    if key.startswith("tracking."):
        where = (
            "tracking server credentials are read from the environment only "
            "(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, as MLflow does)"
        )
    elif key.startswith("model."):
        where = (
            "Hub tokens are read from the environment only (HF_TOKEN, as huggingface_hub "
            "does; or a login with its `hf auth login`)"
        )
    else:
        where = "secrets are read from the environment only"
    return (
        f"{key}: secrets are never config values, since every run records its config; "
        f"{where}. Remove the override and set the variable in the job's environment "
        "(the value given is not shown)"
    )


def redact_yaml_file(path: Path) -> bool:
    """Rewrite a YAML file (a Hydra config dump) with ``redact_config``, in place and
    atomically; ``True`` when it held a secret. A missing file is left missing."""
    if not path.is_file():
        return False
    tree = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    redacted = redact_config(tree)
    if redacted == tree:
        return False
    # a temporary file beside it, then a rename: no reader ever sees half a file
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        os.chmod(temporary, path.stat().st_mode)  # mkstemp's file is private; keep the original's
        OmegaConf.save(OmegaConf.create(redacted), temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


class SecretFilter(logging.Filter):
    """Redacts a log record in place (its message, traceback and stack text) and lets
    it through. Usable in a logging config (``(): embsvd.pipeline.secrets.SecretFilter``);
    ``install_log_redaction`` applies it to every record of the process."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed %-format: logging reports it when it emits the record
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def install_log_redaction() -> None:
    """Redact every log record this process creates from now on (idempotent).

    A record factory rather than a filter on the root logger's handlers: Hydra's
    launchers reconfigure logging (new handlers) right before they log each job's
    overrides (``#0 : ...``), after any callback could have added a filter. The factory
    outlives every reconfiguration and reaches every handler, the job's log file too.
    """
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts_secrets", False):
        return
    secret_filter = SecretFilter()

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        secret_filter.filter(record)
        return record

    redacting_factory.redacts_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)


def redact_exception(error: BaseException) -> None:
    """Redact, in place, the messages of ``error`` and of the exceptions it was raised
    from or while handling: what Hydra prints of a failed job. MLflow names the whole
    server URL, credentials included, when it cannot reach the server."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(redact_text(a) if isinstance(a, str) else a for a in current.args)
        if isinstance(getattr(current, "message", None), str):  # MlflowException's text
            current.message = redact_text(current.message)  # type: ignore[attr-defined]
        current = current.__cause__ or current.__context__


# MLflow prints each run's URL (the tracking URI's, credentials included) unless told not to
MLFLOW_QUIET_LINKS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def quiet_links_with_credentials(config: DictConfig) -> None:
    """Stop MLflow printing run links when the tracking URI (``tracking.uri`` or
    ``MLFLOW_TRACKING_URI``) holds credentials; the links of a URI without them stay."""
    uris = (
        OmegaConf.select(config, "tracking.uri", throw_on_resolution_failure=False),
        os.environ.get("MLFLOW_TRACKING_URI"),
    )
    if any(isinstance(uri, str) and redact_text(uri) != uri for uri in uris):
        os.environ[MLFLOW_QUIET_LINKS] = "true"


# the files Hydra writes into a job's output_subdir before it calls on_job_start
HYDRA_JOB_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
MULTIRUN_FILE = "multirun.yaml"  # the sweep's config, written before its first job starts


class RedactSecrets(Callback):
    """Keeps secrets given on the command line out of Hydra's own files and output.

    - ``on_run_start``, ``on_multirun_start`` and ``on_job_start`` (a launcher's worker
      process too) install ``install_log_redaction``: Hydra's launcher lines, our logs
      and the job's log file are redacted;
    - ``on_job_start`` rewrites the job's ``.hydra/config.yaml``, ``hydra.yaml`` and
      ``overrides.yaml`` (``run_job`` writes them just before it) and the sweep's
      ``multirun.yaml`` (the sweeper writes it before launching the first job);
    - ``on_job_end`` redacts what Hydra prints of a failed job: its overrides
      (``Error executing job with overrides: [...]``) and its exception;
    - MLflow prints no run links that would show a tracking URI's credentials
      (``quiet_links_with_credentials``).
    """

    def __init__(self) -> None:
        self._sweep_files_done: set[Path] = set()

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_redaction()
        quiet_links_with_credentials(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_redaction()
        quiet_links_with_credentials(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        install_log_redaction()
        quiet_links_with_credentials(config)
        hydra = config.hydra
        if hydra.output_subdir is not None:
            folder = Path(hydra.runtime.output_dir) / str(hydra.output_subdir)
            for name in HYDRA_JOB_FILES:
                redact_yaml_file(folder / name)
        if hydra.mode == RunMode.MULTIRUN:
            sweep_file = Path(hydra.sweep.dir).resolve() / MULTIRUN_FILE
            if sweep_file not in self._sweep_files_done:  # written once per sweep
                redact_yaml_file(sweep_file)
                self._sweep_files_done.add(sweep_file)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if job_return is None:
            return
        if job_return.overrides:
            job_return.overrides = redact_overrides(job_return.overrides)
        if job_return.status == JobStatus.FAILED:
            redact_exception(job_return._return_value)  # the getter would raise it
