"""One job: config -> checkpoint -> token groups -> analysis -> MLflow run.

The only module that reads a ``DictConfig``; everything it calls takes typed arguments.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

import embsvd
from embsvd import tracking
from embsvd.analysis import AnalysisResult, analyze
from embsvd.checkpoint import load_checkpoint
from embsvd.config import PROJECT_ROOT, EmbsvdConfig
from embsvd.groups import describe_dropped, select_single_tokens
from embsvd.provenance import GitState, git_state, library_versions
from embsvd.report import format_sweep_table, mlflow_ui_command

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig) -> AnalysisResult:
    """Analyse ``cfg.target`` on ``cfg.model`` and log it as one MLflow run.

    The run is opened before anything is loaded, so a bad checkpoint or group is
    recorded as a FAILED run with its error; the exception is logged here (Hydra keeps
    only the first failure of a sweep, and not in the job's log file) and re-raised.
    """
    settings: EmbsvdConfig = OmegaConf.to_object(cfg)
    store = tracking.TrackingStore(
        tracking.resolve_tracking_uri(settings.tracking.uri, PROJECT_ROOT),
        settings.tracking.experiment,
        settings.tracking.artifact_root,
    )
    git = git_state(PROJECT_ROOT)
    try:
        with tracking.tracked_run(store, run_name(settings), run_tags(settings, git)) as run:
            run.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
            run.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            if git is not None and git.dirty:  # the commit alone would not reproduce the run
                run.log_text(git.diff, "git_diff.patch")
            return _analyse_and_log(settings, run)
    except Exception:
        log.exception("job %s failed", run_name(settings))
        raise


def _analyse_and_log(settings: EmbsvdConfig, run: tracking.RunLogger) -> AnalysisResult:
    _check_settings(settings)
    checkpoint = load_checkpoint(settings.model)
    run.set_tags(
        {
            "embsvd.source": checkpoint.source,
            "embsvd.weights_sha256": checkpoint.weights_sha256,
            "embsvd.embedding_key": checkpoint.embedding_key,
            "embsvd.d_vocab": checkpoint.d_vocab,
            "embsvd.d_model": checkpoint.d_model,
        }
    )
    groups = {
        name: select_single_tokens(name, spec, checkpoint.tokenizer, settings.model.name)
        for name, spec in settings.groups.items()
    }
    tracking.log_groups(run, groups, settings.target)
    for group in groups.values():
        if group.dropped:
            log.info("groups.%s dropped %s", group.name, describe_dropped(group))
    analysis = settings.analysis
    result = analyze(
        checkpoint.W_E,
        groups,
        settings.target,
        center=analysis.center,
        n_components=analysis.n_components,
        top_k=analysis.top_k,
        token_strings=checkpoint.token_strings(),
        excluded_ids=checkpoint.special_ids(),
    )
    tracking.log_result(run, result)
    if analysis.figures:
        from embsvd.plotting import draw_run_figures

        with tempfile.TemporaryDirectory() as scratch:
            draw_run_figures(result, settings.model.name, Path(scratch))
            run.log_folder(Path(scratch), "figures")
    return result


def _check_settings(settings: EmbsvdConfig) -> None:
    if settings.target not in settings.groups:
        raise ValueError(
            f"target: {settings.target!r} is not one of the configured groups "
            f"({', '.join(sorted(settings.groups)) or 'none'}); pick one of them, or add it, "
            f"e.g. groups=[{','.join([*settings.groups, settings.target])}]"
        )
    for key in ("n_components", "top_k"):
        if getattr(settings.analysis, key) < 1:
            raise ValueError(
                f"analysis.{key}: must be at least 1, got {getattr(settings.analysis, key)}"
            )


def run_name(settings: EmbsvdConfig) -> str:
    """``<model>/<target group>/<centered|raw>``."""
    centering = "centered" if settings.analysis.center else "raw"
    return f"{settings.model.name}/{settings.target}/{centering}"


def run_tags(settings: EmbsvdConfig, git: GitState | None) -> dict[str, Any]:
    """Tags known before anything is loaded: what the run is and where its code came from."""
    tags = {
        "embsvd.model": settings.model.name,
        "embsvd.target_group": settings.target,
        "embsvd.center": str(settings.analysis.center).lower(),
        "embsvd.version": embsvd.__version__,
        **{f"embsvd.env.{name}": v for name, v in library_versions().items()},
    }
    if git is not None:
        tags["mlflow.source.git.commit"] = git.commit
        tags["embsvd.git_dirty"] = str(git.dirty).lower()
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        tags["embsvd.overrides"] = " ".join(hydra.overrides.task)
        if hydra.mode.name == "MULTIRUN":
            tags["embsvd.sweep_dir"] = str(Path(hydra.sweep.dir).resolve())
            tags["embsvd.job_num"] = hydra.job.num
    return tags


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"analysis": {"center": True}}`` -> ``{"analysis.center": True}``; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class SweepSummary(Callback):
    """Prints a table of a finished sweep's runs and the command that opens the MLflow UI."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        uri = tracking.resolve_tracking_uri(config.tracking.uri, PROJECT_ROOT)
        store = tracking.TrackingStore(
            uri, config.tracking.experiment, config.tracking.artifact_root
        )
        sweep_dir = str(Path(config.hydra.sweep.dir).resolve())
        runs = store.find_runs(f"tags.`embsvd.sweep_dir` = '{sweep_dir}'")
        print(format_sweep_table(runs), flush=True)
        print(f"\nOpen the MLflow UI on this store:\n  {mlflow_ui_command(uri)}", flush=True)
