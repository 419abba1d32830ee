"""One job: config -> checkpoint -> token groups -> analysis -> MLflow run."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import embsvd
from embsvd.checks.matching import NULL_MATCHES
from embsvd.checks.run import RigorResult, assess, needs_frequencies
from embsvd.groups import (
    GroupSpec,
    TokenForms,
    TokenGroup,
    describe_dropped,
    select_single_tokens,
)
from embsvd.io.checkpoint import Checkpoint, CheckpointSpec, default_cache_dir, load_checkpoint
from embsvd.io.frequency import token_frequencies
from embsvd.method import geometry
from embsvd.method.analysis import AnalysisResult, MeanReference, analyze
from embsvd.pipeline.config import (
    PROJECT_ROOT,
    AnalysisConfig,
    EmbsvdConfig,
    config_hash,
)
from embsvd.pipeline.provenance import GitState, git_state, library_versions
from embsvd.tracking import contract

if TYPE_CHECKING:  # imported where used: mlflow alone takes seconds to import
    from embsvd import tracking


log = logging.getLogger(__name__)
GEOMETRIES = ("euclidean", "whitened")
EXTRA_GROUP = "extra"  # conf/config.yaml's slot for a group given on the command line


def run_job(cfg: DictConfig) -> AnalysisResult | None:
    """Analyse ``cfg.target`` on ``cfg.model`` and log it as one MLflow run.

    The run is opened before anything is loaded, so a bad checkpoint or group is
    recorded as a FAILED run with its error; the exception is logged here (Hydra keeps
    only the first failure of a sweep, and not in the job's log file) and re-raised.
    Inside a multirun the run is a child of the sweep's parent run. With
    ``tracking.skip_existing`` a job whose config hash already has a FINISHED run is
    skipped (returns ``None``).
    """
    from embsvd import tracking

    settings: EmbsvdConfig = OmegaConf.to_object(cfg)
    store = tracking_store(
        tracking.resolve_tracking_uri(settings.tracking.uri, PROJECT_ROOT),
        settings.tracking.experiment,
        settings.tracking.artifact_root,
    )
    parent_run_id, sweep_id = sweep_membership()
    try:  # a bad group file fails the run below, once it is open
        settings, setup_error = with_group_files(settings), None
    except (OSError, ValueError) as error:
        setup_error = error
    digest = config_hash(settings)
    if settings.tracking.skip_existing and setup_error is None:
        done = store.find_runs(
            f"tags.`embsvd.config_hash` = '{digest}' and attributes.status = 'FINISHED'"
        )
        if done:
            log.info("skipping %s: run %s has the same config", run_name(settings), done[0].run_id)
            if parent_run_id is not None:
                tracking.RunLogger(store.client, parent_run_id).set_tags(
                    {f"{tracking.SKIPPED_TAG_PREFIX}{HydraConfig.get().job.num}": done[0].run_id}
                )
            return None
    git = code_state()
    tags = {**run_tags(settings, git), "embsvd.config_hash": digest}
    if parent_run_id is not None:
        tags["mlflow.parentRunId"] = parent_run_id
    if sweep_id is not None:
        tags[contract.SWEEP_ID_TAG] = sweep_id
    try:
        with tracking.tracked_run(store, run_name(settings), tags) as run:
            run.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
            run.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            if git is not None and git.dirty:  # the commit alone would not reproduce the run
                run.log_text(git.diff, "git_diff.patch")
            if setup_error is not None:
                raise setup_error
            return _analyse_and_log(settings, run)
    except Exception:
        log.exception("job %s failed", run_name(settings))
        raise


@functools.cache
def tracking_store(uri: str, experiment: str, artifact_root: str | None) -> tracking.TrackingStore:
    """One store (client and experiment) per process and place, shared by its jobs."""
    from embsvd import tracking

    return tracking.TrackingStore(uri, experiment, artifact_root)


@functools.cache
def code_state() -> GitState | None:
    """The checkout's commit and diff, read once per process: the code a process runs
    does not change while it runs."""
    return git_state(PROJECT_ROOT)


versions = functools.cache(library_versions)  # read once per process


def with_group_files(settings: EmbsvdConfig) -> EmbsvdConfig:
    """The settings with the groups of ``group_files`` added and an unused ``extra``
    slot (no words) removed.

    Raises:
        FileNotFoundError: a group file does not exist.
        ValueError: a group file is not a mapping of group specs, or names a group that
            is already configured.
    """
    groups = {
        name: spec
        for name, spec in settings.groups.items()
        if not (name == EXTRA_GROUP and not spec.words)
    }
    for file in settings.group_files:
        for name, spec in read_group_file(Path(file)).items():
            if name in groups:
                raise ValueError(
                    f"group_files: {file} defines group {name!r}, which is already configured; "
                    "rename it in the file"
                )
            groups[name] = spec
    return dataclasses.replace(settings, groups=groups)


def read_group_file(file: Path) -> dict[str, GroupSpec]:
    """``{name: GroupSpec}`` from a YAML file in the format of ``conf/groups/*.yaml``."""
    path = file.expanduser()
    if not path.is_absolute():  # relative to where the command started, not a job folder
        path = Path.cwd() / path
    if not path.is_file():
        raise FileNotFoundError(f"group_files: {file} is not a file (resolved to {path})")
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig) or not node:
        raise ValueError(
            f"group_files: {file} must map group names to specs, e.g. "
            "'animals: {words: [dog, cat, horse], size: 10}'"
        )
    groups = {}
    for name, spec in node.items():
        try:
            typed = OmegaConf.merge(OmegaConf.structured(GroupSpec), spec)
        except Exception as error:  # omegaconf's errors name the key and the bad value
            raise ValueError(f"group_files: group {name!r} in {file}: {error}") from error
        groups[str(name)] = OmegaConf.to_object(typed)
    return groups


def _analyse_and_log(settings: EmbsvdConfig, run: tracking.RunLogger) -> AnalysisResult:
    from embsvd import tracking

    _check_settings(settings)
    cache_dir = Path(settings.cache_dir).expanduser() if settings.cache_dir else None
    (checkpoint, forms), cached = loaded_checkpoint(settings.model, cache_dir)
    run.set_tags({**checkpoint_tags(checkpoint), "embsvd.checkpoint_cache": cached})
    groups = _token_groups(settings, checkpoint, forms, run)
    analysis = settings.analysis
    W, geometry_metrics = analysis_matrix(checkpoint, analysis)
    run.log_metrics(geometry_metrics)
    components = _global_components(W, checkpoint, analysis, cache_dir)
    if components is None and analysis.geometry == "whitened":
        run.set_tags({"embsvd.global_view": WHITENED_GLOBAL_VIEW})
    result = analyze(
        W,
        groups,
        settings.target,
        center=analysis.center,
        n_components=analysis.n_components,
        top_k=analysis.top_k,
        token_strings=checkpoint.token_strings(),
        excluded_ids=checkpoint.special_ids(),
        device=analysis.device,
        reference=_mean_reference(W, checkpoint, components, analysis),
    )
    rigor = _checks(W, groups, result, checkpoint, forms, analysis, cache_dir, components)
    tracking.log_result(run, result, rigor)
    if analysis.figures:
        from embsvd.figures.run_figures import draw_run_figures

        with tempfile.TemporaryDirectory() as scratch:
            draw_run_figures(result, settings.model.name, Path(scratch), rigor)
            run.log_folder(Path(scratch), "figures")
    return result


# The checkpoints this process has read, most recent last: the jobs of a sweep on the
# basic launcher, and those a joblib worker runs in turn, read a checkpoint once.
_LOADED: dict[str, tuple[Checkpoint, TokenForms]] = {}
LOADED_MAX = 2  # checkpoints kept in memory (W is memory-mapped where it can be)


def loaded_checkpoint(
    spec: CheckpointSpec, cache_dir: Path | None
) -> tuple[tuple[Checkpoint, TokenForms], str]:
    """The checkpoint and its token forms, read once per process; and ``"memory"`` when
    this process had read it already, else ``"none"``."""
    key = json.dumps([dataclasses.asdict(spec), str(cache_dir)], sort_keys=True)
    if key in _LOADED:
        _LOADED[key] = _LOADED.pop(key)  # most recently used last
        return _LOADED[key], "memory"
    checkpoint = load_checkpoint(spec, cache_dir)
    while len(_LOADED) >= LOADED_MAX:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = (checkpoint, TokenForms(checkpoint.tokenizer))
    return _LOADED[key], "none"


def _token_groups(
    settings: EmbsvdConfig, checkpoint: Checkpoint, forms: TokenForms, run: tracking.RunLogger
) -> dict[str, TokenGroup]:
    """Every configured group after the single-token rule, logged with the run."""
    from embsvd import tracking

    groups = {
        name: select_single_tokens(
            name, spec, checkpoint.tokenizer, settings.model.name, forms=forms
        )
        for name, spec in settings.groups.items()
    }
    tracking.log_groups(run, groups, settings.target)
    target_forms = sorted({k.form for k in groups[settings.target].kept})  # mixed: a confound
    run.set_tags({"embsvd.target_forms": "+".join(target_forms)})
    incomplete = [g for g in groups.values() if g.incomplete]  # a closed set with a hole
    if incomplete:
        lost = "; ".join(f"{g.name}: {', '.join(g.lost_members)}" for g in incomplete)
        run.set_tags({"embsvd.warning.incomplete_groups": lost})
    for group in groups.values():
        if group.dropped:
            log.info("groups.%s dropped %s", group.name, describe_dropped(group))
    return groups


def _checks(
    W: np.ndarray,
    groups: dict[str, TokenGroup],
    result: AnalysisResult,
    checkpoint: Checkpoint,
    forms: TokenForms,
    analysis: AnalysisConfig,
    cache_dir: Path | None,
    components: geometry.GlobalSVD | None,
) -> RigorResult:
    """The checks ``analysis`` switches on, for the analysis ``result`` of ``W``."""
    frequencies = None  # read here to keep them in the cache folder across processes
    target = groups[result.target]
    if needs_frequencies(target, analysis.n_null, analysis.null_match, analysis.order):
        frequencies = token_frequencies(
            checkpoint.token_strings(),
            forms.marker,
            checkpoint.special_ids(),
            cache_dir or default_cache_dir(),
        )
    return assess(
        W,
        groups,
        result,
        token_strings=checkpoint.token_strings(),
        excluded_ids=checkpoint.special_ids(),
        marker=forms.marker,
        token_norms=np.linalg.norm(checkpoint.W, axis=1) if analysis.confounds else None,
        random_state=analysis.random_state,
        n_null=analysis.n_null,
        null_match=analysis.null_match,
        null_neighbours=analysis.null_neighbours,
        alpha=analysis.alpha,
        frequencies=frequencies,
        n_resamples=analysis.n_resamples,
        heldout=analysis.heldout,
        precision_k=analysis.precision_k,
        confounds=analysis.confounds,
        confound_threshold=analysis.confound_threshold,
        global_svd=components.top(analysis.n_global) if components and analysis.n_global else None,
        order=analysis.order,
    )


def analysis_matrix(
    checkpoint: Checkpoint, analysis: AnalysisConfig
) -> tuple[np.ndarray, list[tuple[str, float, int]]]:
    """The matrix the analysis runs on: the checkpoint's, unit rows with
    ``normalize_rows``, then whitened with ``geometry=whitened`` (the covariance estimated
    over every row but the special tokens); and the transform's metrics."""
    W = checkpoint.W
    if analysis.normalize_rows:
        W = geometry.normalize_rows(W)
    if analysis.geometry == "euclidean":
        return W, []
    whitening = geometry.fit_whitening(
        W, rows=checkpoint.ordinary_rows, shrinkage=analysis.whitening_shrinkage
    )
    return whitening.apply(W), [("geometry/whitening_shrinkage", whitening.shrinkage, 0)]


WHITENED_GLOBAL_VIEW = (
    "skipped: the whitened geometry's spectrum is flat by construction, so it has no top "
    "components (no global view, no decorrelated group-mean r)"
)


def _global_components(
    W: np.ndarray, checkpoint: Checkpoint, analysis: AnalysisConfig, cache_dir: Path | None
) -> geometry.GlobalSVD | None:
    """The whole vocabulary's top components, as many as the global view (``n_global``)
    and the decorrelated group-mean r (``remove_global``) need, at most ``d_model``; exact,
    cached per checkpoint matrix and geometry under ``<cache_dir>/global_svd/``. ``None``
    where none are needed, and in the whitened geometry."""
    wanted = max(analysis.n_global, analysis.remove_global)
    if not wanted or analysis.geometry == "whitened":
        return None
    rows = checkpoint.ordinary_rows
    n_global = min(wanted, W.shape[1], len(rows))
    if n_global < wanted:
        log.warning(
            "analysis.n_global=%d exceeds the %d dimensions of %s; using %d",
            wanted,
            W.shape[1],
            checkpoint.name,
            n_global,
        )
    key = {
        "weights_sha256": checkpoint.weights_sha256,
        "tensor_key": checkpoint.tensor_key,
        "geometry": analysis.geometry,
        "normalize_rows": analysis.normalize_rows,
        "n_global": n_global,
        "method": "covariance eigendecomposition",
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    cache_file = (cache_dir or default_cache_dir()) / "global_svd" / f"{digest}.npz"
    return geometry.cached_global_svd(W, n_global, cache_file, rows=rows)


def _mean_reference(
    W: np.ndarray,
    checkpoint: Checkpoint,
    components: geometry.GlobalSVD | None,
    analysis: AnalysisConfig,
) -> MeanReference:
    """The vocabulary's mean (of its ordinary rows) and the top ``remove_global``
    components for the centered and decorrelated group-mean correlations."""
    if components is None:
        return MeanReference(geometry.row_mean(W, checkpoint.ordinary_rows))
    axes = components.Vt[: analysis.remove_global] if analysis.remove_global else None
    return MeanReference(components.mean, axes)


def checkpoint_tags(checkpoint: Checkpoint) -> dict[str, Any]:
    """Tags of what was read: the weights, the tensor and how it was stored."""
    tags = {
        "embsvd.source": checkpoint.source,
        "embsvd.weights_sha256": checkpoint.weights_sha256,
        "embsvd.tensor_key": checkpoint.tensor_key,
        "embsvd.tied_embeddings": {True: "true", False: "false", None: "unknown"}[checkpoint.tied],
        "embsvd.quantization": checkpoint.quantization,
        "embsvd.d_vocab": checkpoint.d_vocab,
        "embsvd.d_model": checkpoint.d_model,
    }
    if checkpoint.matrix == "input":
        tags["embsvd.embedding_key"] = checkpoint.tensor_key
    if checkpoint.revision_commit:
        tags["embsvd.revision_commit"] = checkpoint.revision_commit
    return tags


def _check_settings(settings: EmbsvdConfig) -> None:
    if settings.target not in settings.groups:
        raise ValueError(
            f"target: {settings.target!r} is not one of the configured groups "
            f"({', '.join(sorted(settings.groups)) or 'none'}); pick one of them, or add it, "
            f"e.g. groups=[{','.join([*settings.groups, settings.target])}]"
        )
    analysis = settings.analysis
    for key in ("n_components", "top_k", "precision_k"):
        if getattr(analysis, key) < 1:
            raise ValueError(f"analysis.{key}: must be at least 1, got {getattr(analysis, key)}")
    for key in ("n_null", "n_resamples"):
        if getattr(analysis, key) < 0 or getattr(analysis, key) == 1:
            raise ValueError(
                f"analysis.{key}: must be 0 (off) or at least 2, got {getattr(analysis, key)}"
            )
    for key in ("n_global", "remove_global"):
        if getattr(analysis, key) < 0:
            raise ValueError(
                f"analysis.{key}: must be 0 (off) or more, got {getattr(analysis, key)}"
            )
    if analysis.null_match not in NULL_MATCHES:
        raise ValueError(
            f"analysis.null_match: {analysis.null_match!r} is not one of {', '.join(NULL_MATCHES)}"
        )
    if analysis.null_neighbours < 1:
        raise ValueError(
            f"analysis.null_neighbours: must be at least 1, got {analysis.null_neighbours}"
        )
    if not 0 < analysis.alpha < 1:
        raise ValueError(f"analysis.alpha: a level between 0 and 1, got {analysis.alpha}")
    if not 0 <= analysis.confound_threshold <= 1:
        raise ValueError(
            f"analysis.confound_threshold: a |Spearman rho| between 0 and 1, "
            f"got {analysis.confound_threshold}"
        )
    if analysis.device != "cpu":
        from embsvd.method.backend import check_device

        check_device(analysis.device)  # fails the run before anything is loaded
    if analysis.geometry not in GEOMETRIES:
        raise ValueError(
            f"analysis.geometry: {analysis.geometry!r} is not one of {', '.join(GEOMETRIES)}"
        )


def run_name(settings: EmbsvdConfig) -> str:
    """``<model>/<target group>/<centered|raw>``; the model part carries ``@<revision>`` for
    a Hub revision and ``:output`` for the unembedding matrix, the last part
    ``+unit_rows`` and ``+whitened`` when the analysis ran in another geometry."""
    analysis = settings.analysis
    centering = "centered" if analysis.center else "raw"
    centering += "+unit_rows" if analysis.normalize_rows else ""
    centering += f"+{analysis.geometry}" if analysis.geometry != "euclidean" else ""
    return f"{model_label(settings.model)}/{settings.target}/{centering}"


def model_label(model: CheckpointSpec) -> str:
    label = model.name
    if model.hub_id and model.revision:
        label += f"@{model.revision}"
    if model.matrix != "input":
        label += f":{model.matrix}"
    return label


def run_tags(settings: EmbsvdConfig, git: GitState | None) -> dict[str, Any]:
    """Tags known before anything is loaded: what the run is and where its code came from."""
    tags = {
        "embsvd.model": settings.model.name,
        "embsvd.matrix": settings.model.matrix,
        "embsvd.target_group": settings.target,
        "embsvd.center": str(settings.analysis.center).lower(),
        "embsvd.geometry": settings.analysis.geometry,
        "embsvd.normalize_rows": str(settings.analysis.normalize_rows).lower(),
        "embsvd.version": embsvd.__version__,
        **{f"embsvd.env.{name}": v for name, v in versions().items()},
    }
    if settings.model.hub_id:
        tags["embsvd.revision"] = settings.model.revision or "main"
    if git is not None:
        tags["mlflow.source.git.commit"] = git.commit
        tags["embsvd.git_dirty"] = str(git.dirty).lower()
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        tags["embsvd.overrides"] = " ".join(hydra.overrides.task)
        if hydra.mode == RunMode.MULTIRUN:
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


# in the sweep folder, written by the launching process and read by every job
PARENT_RUN_FILE = "mlflow_parent_run_id"
SWEEP_ID_FILE = "embsvd_sweep_id"


def sweep_membership() -> tuple[str | None, str | None]:
    """The parent run id and the sweep id of the multirun this job belongs to
    (``None, None`` outside a multirun)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None, None
    sweep_dir = Path(HydraConfig.get().sweep.dir)
    return tuple(  # type: ignore[return-value]
        file.read_text().strip() if file.is_file() else None
        for file in (sweep_dir / PARENT_RUN_FILE, sweep_dir / SWEEP_ID_FILE)
    )
