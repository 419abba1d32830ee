"""One job: config -> checkpoint -> token groups -> analysis -> MLflow run."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import gc
import hashlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from embsvd import tracking
from embsvd.checks.matching import remember_row_norms
from embsvd.checks.run import ChecksResult, run_checks
from embsvd.figures.drawer import FigureDrawer, PendingFigures, sweep_drawer
from embsvd.figures.explorer import RunExplorer
from embsvd.figures.run_data import (
    FIGURES_WITH_CHECKS,
    FIGURES_WITHOUT_CHECKS,
    RunFigureData,
    run_figure_data,
)
from embsvd.groups import (
    TokenForms,
    TokenGroup,
    describe_dropped,
    describe_short,
    group_display_name,
    select_single_tokens,
)
from embsvd.io.augmented import VirtualIds
from embsvd.io.checkpoint import content_digest, default_cache_dir, load_checkpoint
from embsvd.io.memo import ValueMemo
from embsvd.io.spec import Checkpoint, CheckpointSpec
from embsvd.method import geometry
from embsvd.method.analysis import AnalysisResult, MeanReference, analyze
from embsvd.method.backend import check_device
from embsvd.pipeline import (
    concept_job,
    explorer_job,
    numbers_job,
    trajectory_job,
    undertrained_job,
)
from embsvd.pipeline.compose import settings_checked, sweep_size
from embsvd.pipeline.config import (
    EXTRA_GROUP,
    AnalysisConfig,
    EmbsvdConfig,
    checked_settings,
    checks_config,
    config_hash,
)
from embsvd.pipeline.multi_token import multi_token_rows
from embsvd.pipeline.phases import clock
from embsvd.pipeline.project import project_root
from embsvd.pipeline.provenance import GitState, git_state, library_versions, package_version
from embsvd.pipeline.secrets import redact_config, redact_overrides, redact_text
from embsvd.tracking import contract
from embsvd.tracking.contract import Tag

log = logging.getLogger(__name__)


def run_job(cfg: DictConfig) -> AnalysisResult | None:
    """Analyse ``cfg.target`` on ``cfg.model`` and log it as one MLflow run.

    Settings that cannot run (``checked_settings``) are refused first, before the store
    is touched: no run records a typo. The run is opened before anything is loaded, so a
    bad checkpoint or group is recorded as a FAILED run with its error; the exception is
    logged with its traceback to the job's log file only (``log_to_files``: Hydra prints
    it on the console, and keeps only the first failure of a sweep) and re-raised. Under
    Hydra, Ctrl-C ends the run KILLED with one line on stderr and exit status 130, not a
    traceback. ``last_run`` holds the run it wrote, for the console's report.
    Inside a multirun the run is a child of the sweep's parent run. With
    ``tracking.skip_existing`` a job whose config hash already has a FINISHED run is
    skipped (returns ``None``).

    Each job's phases (``embsvd.pipeline.phases``) are recorded when it ends, and each
    starts with ``settle_heap``.
    """
    settle_heap()
    try:
        return _run_job(cfg)
    finally:
        logger = last_run.pop("logger", None)
        if logger is not None:  # the run has ended: the writer has said its id by now
            last_run["run_id"] = logger.known_run_id
        clock.record("job", run_name=last_run.get("name"), run_id=last_run.get("run_id"))


def settle_heap() -> None:
    """Collect what earlier jobs left (their garbage cycles), then move every object
    alive now (the imported libraries, the checkpoint and caches a sweep's jobs share) to
    the collector's permanent generation (``gc.freeze``): its full passes, which a job's
    allocations (MLflow's ORM rows, a table's 30k lines) set off, then scan the job's own
    objects, not the ~400k of mlflow, SQLAlchemy and matplotlib. Measured: the seed
    replication 7.6 s -> 6.0 s; the call costs about 1 ms once the first has run.

    The collector is then on, whether or not ``experiments/run.py`` turned it off for the
    process's start (imports, Hydra's composition). Where it was off, this first call
    freezes without collecting: that start makes objects that stay and about 37k of
    garbage (a few MB, once per process), and a pass over the ~310k objects to free them
    took 0.19-0.20 s of a warm 128256 x 4096 run's 5 s (2026-11-30). A call with the
    collector on (every later job's, or a library user's) collects first."""
    if gc.isenabled():
        gc.collect()
    gc.freeze()
    gc.enable()


def _run_job(cfg: DictConfig) -> AnalysisResult | None:
    last_run.clear()
    opened = time.perf_counter()
    try:  # checked by the sweep's validation already, or here
        settings = settings_checked(cfg) or checked_settings(cfg)
    except (OSError, ValueError) as error:  # Hydra prints the traceback; the log keeps why
        log_to_files(f"refused before opening a run: {error}")
        raise
    parent_run_id, sweep_id = sweep_membership()
    store = tracking_store(
        tracking.resolve_tracking_uri(settings.tracking.uri, project_root),
        settings.tracking.experiment,
        settings.tracking.artifact_root,
        settings.tracking.sqlite_journal,
    )
    content = checkpoint_content(settings)
    digest = config_hash(settings, content)
    if settings.tracking.skip_existing:
        done = store.find_runs(
            f"tags.`{Tag.CONFIG_HASH}` = '{digest}' and attributes.status = 'FINISHED'"
        )
        if done:
            log.info("skipping %s: run %s has the same config", run_name(settings), done[0].run_id)
            last_run.update(name=run_name(settings), run_id=done[0].run_id, skipped=True)
            if parent_run_id is not None:
                tracking.RunLogger(store.client, parent_run_id).set_tags(
                    {contract.skipped_tag(HydraConfig.get().job.num): done[0].run_id}
                )
            return None
    git = code_state(project_root())
    tags = {**run_tags(settings, git), Tag.CONFIG_HASH: digest}
    if parent_run_id is not None:
        tags[Tag.PARENT_RUN_ID] = parent_run_id
    if sweep_id is not None:
        tags[Tag.SWEEP_ID] = sweep_id
    try:
        # SIGTERM and SIGHUP end the run KILLED (a sweep's SweepTracking handles its own)
        with (
            tracking.signals_end_runs(),
            tracking.tracked_run(
                store, run_name(settings), tags, redact_text, writer=background_writer(settings)
            ) as run,
        ):
            # the run's id once it is known: a sweep's writer process opens the run
            last_run.update(name=run.run_name, store=store, logger=run)
            # the run records no secret given on the command line (a password in tracking.uri)
            config = redact_config(OmegaConf.to_container(cfg, resolve=True))
            run.log_params(run_params(config))
            run.log_text(config_yaml(config), "config.yaml")
            if git is not None and git.dirty:  # the commit alone would not reproduce the run
                run.log_text(git.diff, "git_diff.patch")
            clock.add("store", time.perf_counter() - opened)
            result = _analyse_and_log(settings, run, content)
            closing = time.perf_counter()
        clock.add("writes", time.perf_counter() - closing)  # the run's close (or hand-over)
        return result
    except Exception:
        log_to_files(f"job {run_name(settings)} failed", exc_info=True)
        raise
    except KeyboardInterrupt:
        if not HydraConfig.initialized():  # a notebook or a test: its own Ctrl-C handling
            raise
        run_id = last_run["logger"].known_run_id if "logger" in last_run else None
        ended = f"run {run_id} ({run_name(settings)}) KILLED" if run_id else "no run opened"
        print(f"interrupted: {ended}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None  # what a shell reports of a process Ctrl-C ended


class _ConfigDumper(yaml.CSafeDumper if hasattr(yaml, "CSafeDumper") else yaml.SafeDumper):
    """YAML as ``OmegaConf.to_yaml`` writes a resolved config (an enum by its name), with
    libyaml's emitter: the same text in a tenth of the time."""


_ConfigDumper.add_multi_representer(enum.Enum, lambda dumper, e: dumper.represent_str(e.name))


def config_yaml(config: dict) -> str:
    """The resolved config ``config`` (plain containers) as the run's ``config.yaml``:
    ``yaml.dump``'s text, made a top-level key at a time (a block mapping's keys are
    emitted one after another, each on its own), each key's text made once per process
    and value (``_section_yaml``): a sweep's jobs share most of theirs (the groups, the
    concepts), 2.3 ms a job of the benchmark's sweep before (2026-11-30)."""
    if not config:
        return _dump(config)
    return "".join(_section_yaml(key, value) for key, value in config.items())


def _dump(tree: Any) -> str:
    return yaml.dump(tree, Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True)


SECTIONS_KEPT = 256  # texts of config sections remembered (``_section_yaml``)
_SECTIONS = ValueMemo(SECTIONS_KEPT)


def _section_yaml(key: str, value: Any) -> str:
    """``_dump({key: value})``, remembered by ``repr(value)``: plain containers, enums
    and scalars, whose ``repr`` tells ``1``, ``1.0``, ``True`` and ``'1'`` apart, as the
    text does."""
    return _SECTIONS.get((key, repr(value)), lambda: _dump({key: value}))


# The run this process's latest job wrote: ``name``, ``run_id``, ``store`` (and
# ``skipped``), read by the console's report of the job (``SweepTracking``)
last_run: dict[str, Any] = {}


BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# hydra/launcher=embsvd (the default): the basic launcher's jobs (embsvd.pipeline.launch)
EMBSVD_LAUNCHER = "hydra_plugins.embsvd_launcher.embsvd_launcher.EmbsvdLauncher"


def background_writer(settings: EmbsvdConfig) -> tracking.RunWriter | None:
    """The writer process that opens and writes this run (``writes_beside``); else
    ``None``: the job writes its run itself."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    shared = jobs_share_this_process(hydra.mode, hydra.launcher)
    if not writes_beside(shared, settings.tracking, sweep_size()):
        return None
    return tracking.sweep_writer()


def writes_beside(shared: bool, tracking_config: Any, n_jobs: int | None) -> bool:
    """Whether a sweep's runs go to a writer process: its jobs share this process
    (``shared``: embsvd's launcher or the basic one), ``tracking.background_writes`` is on
    and the sweep has at least ``tracking.writer_min_jobs`` jobs (or a count not known
    ahead)."""
    if not shared or not tracking_config.background_writes:
        return False
    return n_jobs is None or n_jobs >= tracking_config.writer_min_jobs


def jobs_share_this_process(mode: RunMode | None, launcher: Any) -> bool:
    """Whether a multirun's jobs run one after another in this process (Hydra's basic
    launcher, or embsvd's): then one job's final write can go on beside the next job."""
    in_process = (BASIC_LAUNCHER, EMBSVD_LAUNCHER)
    return mode == RunMode.MULTIRUN and launcher.get("_target_") in in_process


def log_to_files(message: str, exc_info: bool = False) -> None:
    """Log an error (with the traceback being handled) to the log files only: Hydra's job
    log file keeps it, while the console, where Hydra prints the error itself, shows it
    once."""
    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, message, (), sys.exc_info() if exc_info else None
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


@functools.cache
def tracking_store(
    uri: str, experiment: str, artifact_root: str | None, journal: str
) -> tracking.TrackingStore:
    """One store (client and experiment) per process and place, shared by its jobs."""
    return tracking.TrackingStore(uri, experiment, artifact_root, journal=journal)


@functools.cache
def code_state(project: Path) -> GitState | None:
    """The project checkout's commit and diff, read once per process: the code a process
    runs does not change while it runs."""
    return git_state(project)


versions = functools.cache(library_versions)  # read once per process


def _analyse_and_log(
    settings: EmbsvdConfig, run: tracking.RunLogger, content: str | None
) -> AnalysisResult:
    # run_job validated the settings; whether this machine has the device only the machine
    # that runs the job can tell (a sweep may run its jobs elsewhere): a FAILED run says so
    if settings.analysis.device != "cpu":
        check_device(settings.analysis.device)
    cache_dir = job_cache_dir(settings)
    if settings.analysis.figures is True and (drawer := figure_drawer(settings)) is not None:
        drawer.start()  # a single run's: it imports matplotlib while the job loads
    with clock("load"):
        (checkpoint, forms), cached = loaded_checkpoint(settings.model, cache_dir, content)
        vocab = checkpoint.vocabulary  # read once per checkpoint, shared by a sweep's jobs
        # the null's norm matching reads the stored rows' norms from the vocabulary's
        remember_row_norms(checkpoint.W, vocab.token_norms)
    run.set_tags({**checkpoint_tags(checkpoint), Tag.CHECKPOINT_CACHE: cached})
    # --- trajectories across training: the analysed tensor's hash, the revision's step ---
    with clock("embedding_hash"):  # once per weights file and tensor, then remembered
        run.set_tags(trajectory_job.run_tags(settings.model, checkpoint))
    with clock("groups"):
        virtual = VirtualIds(checkpoint.d_vocab)  # multi-token words' rows (subwords=mean)
        groups = _token_groups(settings, checkpoint, forms, run, virtual)
    analysis = settings.analysis
    with clock("geometry"):
        W, geometry_metrics = analysis_matrix(checkpoint, analysis)
    run.log_metrics(geometry_metrics)
    with clock("global_components"):  # once per checkpoint and geometry, then cached
        components = _global_components(W, checkpoint, analysis, cache_dir)
    if components is None and analysis.geometry == "whitened":
        run.set_tags({Tag.GLOBAL_VIEW: WHITENED_GLOBAL_VIEW})
    # --- multi-token words (groups.<name>.subwords=mean): their mean rows, flagged ---
    W = multi_token_rows(W, virtual, groups, run, warn_once, settings.model.name)
    # the confounds read the stored rows' norms (the vocabulary's), whatever the geometry:
    # a token's norm is what training made of it, not what unit rows or whitening did
    config = checks_config(analysis)
    with clock("method"):
        result = analyze(
            W,
            groups,
            settings.target,
            vocab,
            center=analysis.center,
            n_components=analysis.n_components,
            top_k=analysis.top_k,
            device=analysis.device,
            reference=_mean_reference(W, checkpoint, components, analysis),
            vocabulary_span=config.heldout,  # the held-out ranks score the projection's pass
        )
    # --- under-trained tokens (analysis.undertrained; docs/undertrained.md) ---
    undertrained = None
    if analysis.undertrained:
        with clock("undertrained"):  # once per checkpoint, then cached
            undertrained = undertrained_job.undertrained_ids(
                settings.model, checkpoint, cache_dir, run
            )
    # --- end under-trained tokens ---
    flagged = None if undertrained is None else frozenset(int(i) for i in undertrained)
    with contextlib.ExitStack() as cleanup:
        with clock("figures"):  # those that need no check are drawn while the checks run
            folder = _figures_folder(settings, run, cleanup)
            if folder is not None:
                early = _hand_over_figures(
                    settings, result, None, flagged, folder, FIGURES_WITHOUT_CHECKS, cleanup
                )
        # --- vocabulary explorer (analysis.explorer, with the figures; docs/explorer.md):
        # written by the figure process beside the checks, where it draws the figures and
        # the vocabulary is large enough for the checks to leave it idle ---
        explorer = handed_over = None
        if analysis.explorer and analysis.figures is not False:
            drawer = figure_drawer(settings) if folder is not None else None
            elsewhere = drawer is not None and (
                len(result.projections) >= analysis.explorer_process_min_tokens
            )
            explorer = explorer_job.run_explorer(
                settings, result, groups, vocab, run_name(settings), elsewhere
            )
            if elsewhere:
                with clock("explorer"):
                    handed_over = _hand_over(drawer, explorer, _scratch(cleanup), cleanup)
        checks = run_checks(
            W,
            groups,
            result,
            vocab,
            config,
            global_components=components,
            timer=clock,
            undertrained_ids=undertrained,
        )
        with clock("figures"):
            if folder is not None:
                late = _hand_over_figures(
                    settings, result, checks, flagged, folder, FIGURES_WITH_CHECKS, cleanup
                )
        with clock("writes"):
            tracking.log_result(run, result, checks)
        # --- number structure (numbers.enabled; docs/numbers.md) ---
        if settings.numbers.enabled:
            with clock("numbers"):
                numbers_job.log_numbers(settings, run, checkpoint, forms, W)
        # --- end number structure ---
        # --- concept axes (concept set; docs/concepts.md) ---
        if settings.concept is not None:
            with clock("concepts"):
                concept_job.log_concept(settings, run, checkpoint, forms, W, undertrained)
        # --- end concept axes ---
        # --- vocabulary explorer: logged ---
        if explorer is not None:
            with clock("explorer"):
                if handed_over is not None:  # written by the figure process
                    handed_over.wait()
                    explorer_job.log_written_explorer(run, handed_over.folder)
                else:
                    explorer_job.log_run_explorer(run, explorer)
        # --- end vocabulary explorer ---
        if folder is not None:
            with clock("figures"):
                early.wait()
                late.wait()
                run.log_folder(folder, "figures")
    return result


def _figures_folder(
    settings: EmbsvdConfig, run: tracking.RunLogger, cleanup: contextlib.ExitStack
) -> Path | None:
    """A scratch folder for the run's quick looks (it lasts as long as ``cleanup``), or
    ``None`` where none are drawn now (``analysis.figures`` false, or deferred: tagged)."""
    if settings.analysis.figures == "deferred":  # the figures command draws them later
        run.set_tags({Tag.RUN_FIGURES: "deferred"})
        return None
    if not settings.analysis.figures:
        return None
    return _scratch(cleanup)


def _scratch(cleanup: contextlib.ExitStack) -> Path:
    """A scratch folder that lasts as long as ``cleanup``."""
    return Path(cleanup.enter_context(tempfile.TemporaryDirectory()))


def _hand_over_figures(
    settings: EmbsvdConfig,
    result: AnalysisResult,
    checks: ChecksResult | None,
    undertrained: frozenset[int] | None,
    folder: Path,
    names: tuple[str, ...],
    cleanup: contextlib.ExitStack,
) -> PendingFigures:
    """The figures ``names`` handed to the figure process (``figure_drawer``), or left to
    be drawn here when waited for."""
    data = run_figure_data(result, settings.model.name, checks, undertrained)
    drawer = figure_drawer(settings)
    if drawer is None:
        return PendingFigures(None, data, folder, names)
    return _hand_over(drawer, data, folder, cleanup, names)


def _hand_over(
    drawer: FigureDrawer,
    data: RunFigureData | RunExplorer,
    folder: Path,
    cleanup: contextlib.ExitStack,
    names: tuple[str, ...] | None = None,
) -> PendingFigures:
    """``data`` handed to the figure process, to be written into ``folder`` (made by
    ``cleanup`` before this call: a failed job lets the drawer finish before it goes)."""
    drawing = drawer.submit(data, folder, names)
    cleanup.callback(drawing.settle)
    return drawing


def figure_drawer(settings: EmbsvdConfig) -> FigureDrawer | None:
    """The process that draws this run's figures, where ``analysis.figure_process`` is on
    and this process runs the job alone or a sweep's jobs one after another (Hydra's basic
    launcher); else ``None``: they are drawn in the job's process (a notebook's, or a
    launcher's worker, which may run beside others)."""
    if not settings.analysis.figure_process or not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.RUN and not jobs_share_this_process(hydra.mode, hydra.launcher):
        return None
    return sweep_drawer()


def job_cache_dir(settings: EmbsvdConfig) -> Path | None:
    return Path(settings.cache_dir).expanduser() if settings.cache_dir else None


def checkpoint_content(settings: EmbsvdConfig) -> str | None:
    """The checkpoint's content digest (its weights and tokenizer files, hashed once and
    remembered), part of the config hash: weights replaced at the same path make a new
    config, so ``skip_existing`` never reuses a run of the old ones. ``None`` where the
    checkpoint cannot be read: the run then opens and records why."""
    try:
        return content_digest(settings.model, job_cache_dir(settings))
    except Exception:  # noqa: BLE001 (loading it inside the run reports the error)
        return None


# The checkpoints this process has read, most recent last: the jobs of a sweep in this
# process (launcher embsvd or basic), and those a joblib worker runs in turn, read a
# checkpoint once.
_LOADED: dict[str, tuple[Checkpoint, TokenForms]] = {}
LOADED_MAX = 2  # checkpoints kept in memory (W is memory-mapped where it can be)


def loaded_checkpoint(
    spec: CheckpointSpec, cache_dir: Path | None, content: str | None = None
) -> tuple[tuple[Checkpoint, TokenForms], str]:
    """The checkpoint and its token forms, read once per process and content
    (``checkpoint_content``: files replaced since are read again); and ``"memory"`` when
    this process had read it already, else ``"none"``."""
    key = json.dumps([dataclasses.asdict(spec), str(cache_dir), content], sort_keys=True)
    if key in _LOADED:
        _LOADED[key] = _LOADED.pop(key)  # most recently used last
        return _LOADED[key], "memory"
    checkpoint = load_checkpoint(spec, cache_dir)
    while len(_LOADED) >= LOADED_MAX:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = (checkpoint, TokenForms(checkpoint.tokenizer))
    return _LOADED[key], "none"


def _token_groups(
    settings: EmbsvdConfig,
    checkpoint: Checkpoint,
    forms: TokenForms,
    run: tracking.RunLogger,
    virtual: VirtualIds | None = None,
) -> dict[str, TokenGroup]:
    """Every configured group after the single-token rule, logged with the run;
    multi-token members (``subwords=mean``) take their ids from ``virtual``."""
    groups = {
        name: select_single_tokens(
            name, spec, checkpoint.tokenizer, settings.model.name, forms=forms, virtual=virtual
        )
        for name, spec in settings.groups.items()
    }
    tracking.log_groups(run, groups, settings.target)
    target_forms = sorted({k.form for k in groups[settings.target].kept})  # mixed: a confound
    run.set_tags({Tag.TARGET_FORMS: "+".join(target_forms)})
    incomplete = [g for g in groups.values() if g.incomplete]  # a closed set with a hole
    if incomplete:
        lost = "; ".join(f"{g.name}: {', '.join(g.lost_members)}" for g in incomplete)
        run.set_tags({Tag.WARNING_INCOMPLETE_GROUPS: lost})
    short = [g for g in groups.values() if g.short]
    if short:
        described = "; ".join(f"{g.name}: {describe_short(g)}" for g in short)
        run.set_tags({Tag.WARNING_SHORT_GROUP: described})
    for group in groups.values():
        if group.short and not group.incomplete:  # a closed set warns of its own
            warn_once(
                f"short {settings.model.name} {group.name} {group.kept_words}",
                f"groups.{group.name} keeps {describe_short(group)} for model "
                f"{settings.model.name}; dropped: {describe_dropped(group)}. Its runs are "
                f"tagged {Tag.WARNING_SHORT_GROUP}; groups.{group.name}.min_size=<n> makes "
                "fewer than n an error",
            )
        elif group.dropped:
            log.info("groups.%s dropped %s", group.name, describe_dropped(group))
    return groups


# In a sweep's folder: what its jobs share across processes (warnings given, progress)
SWEEP_STATE = ".embsvd"


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning once per sweep, whichever process runs the job: every
    job of a sweep finds the same short group, and a warning repeated per job is skimmed.
    The first job to warn leaves a marker named by ``key`` in the sweep's folder."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is not None and hydra.mode == RunMode.MULTIRUN:
        marker = Path(hydra.sweep.dir) / SWEEP_STATE / "warned"
        marker.mkdir(parents=True, exist_ok=True)
        try:
            (marker / hashlib.sha256(key.encode()).hexdigest()[:16]).touch(exist_ok=False)
        except FileExistsError:
            return
    log.warning(message)


def analysis_matrix(
    checkpoint: Checkpoint, analysis: AnalysisConfig
) -> tuple[np.ndarray, list[tuple[str, float, int]]]:
    """The matrix the analysis runs on: the checkpoint's, unit rows with
    ``normalize_rows``, then whitened with ``geometry=whitened`` (the covariance estimated
    over every row but the special tokens); and the transform's metrics.

    Unit rows are computed where read (``geometry.unit_rows``), not stored; a whitened
    matrix is a new one, stored as float32 (half a float64 copy; each value computed in
    float64 and rounded once). The whitening transform is cached per checkpoint content
    and settings (``geometry.cached_whitening``), and this process keeps the last matrix
    made, so a sweep's jobs on one checkpoint transform it once."""
    W = checkpoint.W
    if not analysis.normalize_rows and analysis.geometry == "euclidean":
        return W, []
    rows = checkpoint.ordinary_rows
    key = json.dumps(
        [
            str(checkpoint.cache_dir),
            checkpoint.weights_sha256,
            checkpoint.tensor_key,
            _rows_digest(rows),
            analysis.normalize_rows,
            str(analysis.geometry),
            analysis.whitening_shrinkage,
        ]
    )
    if _ANALYSIS_MATRIX.get("key") == key:
        return _ANALYSIS_MATRIX["matrix"], _ANALYSIS_MATRIX["metrics"]
    _ANALYSIS_MATRIX.clear()  # the previous matrix goes before a new one is made
    if analysis.normalize_rows:
        W = geometry.unit_rows(W)
    metrics: list[tuple[str, float, int]] = []
    if analysis.geometry != "euclidean":
        whitening = geometry.checkpoint_whitening(
            checkpoint,
            W,
            normalize_rows=analysis.normalize_rows,
            shrinkage=analysis.whitening_shrinkage,
        )
        W = whitening.apply(W, dtype=np.float32)
        metrics = [("geometry/whitening_shrinkage", whitening.shrinkage, 0)]
    _ANALYSIS_MATRIX.update(key=key, matrix=W, metrics=metrics)
    return W, metrics


# The last transformed matrix this process made (unit rows, whitened), for the next job
# of a sweep on the same checkpoint and settings: whitening a large vocabulary costs
# d_vocab x d_model^2 multiply-adds.
_ANALYSIS_MATRIX: dict[str, Any] = {}


@functools.cache
def _rows_digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _rows_digest(rows: np.ndarray) -> str:
    """A short hash of the row numbers a whole-vocabulary statistic is estimated from (the
    ordinary rows: a tokenizer with other special tokens selects other rows)."""
    return _rows_digest_of(np.asarray(rows, dtype=np.int64).tobytes())


WHITENED_GLOBAL_VIEW = (
    "skipped: the whitened geometry's spectrum is flat by construction, so it has no top "
    "components (no global view, no decorrelated group-mean r)"
)


def _global_components(
    W: np.ndarray, checkpoint: Checkpoint, analysis: AnalysisConfig, cache_dir: Path | None
) -> geometry.GlobalSVD | None:
    """The whole vocabulary's top components, as many as the global view (``n_global``)
    and the decorrelated group-mean r (``remove_global``) need, at most ``d_model``
    (``geometry.global_svd``: exact, or for a large vocabulary to its stated accuracy),
    cached per checkpoint matrix, rows and geometry under ``<cache_dir>/global_svd/`` and
    kept in memory by this process. ``None`` where none are needed, and in the whitened
    geometry."""
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
        "rows": _rows_digest(rows),
        "method": geometry.GLOBAL_SVD_METHOD,
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
        Tag.SOURCE: checkpoint.source,
        Tag.WEIGHTS_SHA256: checkpoint.weights_sha256,
        Tag.TENSOR_KEY: checkpoint.tensor_key,
        Tag.TIED_EMBEDDINGS: {True: "true", False: "false", None: "unknown"}[checkpoint.tied],
        Tag.QUANTIZATION: checkpoint.quantization,
        Tag.D_VOCAB: checkpoint.d_vocab,
        Tag.D_MODEL: checkpoint.d_model,
    }
    if checkpoint.matrix == "input":
        tags[Tag.EMBEDDING_KEY] = checkpoint.tensor_key
    if checkpoint.revision_commit:
        tags[Tag.REVISION_COMMIT] = checkpoint.revision_commit
    return tags


def run_name(settings: EmbsvdConfig) -> str:
    """The run name of ``settings`` (``contract.run_name``, ``digits · centered · gpt2``):
    the model part carries ``@<revision>`` for a Hub revision other than ``main`` and
    ``:output`` for the unembedding matrix, as ``contract.tagged_model_label`` reads it
    back from the run's tags."""
    model, analysis = settings.model, settings.analysis
    return contract.run_name(
        contract.model_label(model.name, model.revision if model.hub_id else None, model.matrix),
        settings.target,
        analysis.center,
        normalize_rows=analysis.normalize_rows,
        geometry=analysis.geometry,
    )


def run_tags(settings: EmbsvdConfig, git: GitState | None) -> dict[str, Any]:
    """Tags known before anything is loaded: what the run is and where its code came from."""
    tags = {
        Tag.MODEL: settings.model.name,
        Tag.MATRIX: settings.model.matrix,
        Tag.TARGET_GROUP: settings.target,
        Tag.CENTER: str(settings.analysis.center).lower(),
        Tag.GEOMETRY: settings.analysis.geometry,
        Tag.NORMALIZE_ROWS: str(settings.analysis.normalize_rows).lower(),
        Tag.VERSION: package_version(),
        **{contract.env_tag(name): v for name, v in versions().items()},
        # how figures name the model and the groups: figures read runs, not configs
        Tag.MODEL_DISPLAY: settings.model.display,
        **{
            contract.group_display_tag(name): group_display_name(name, spec)
            for name, spec in settings.groups.items()
        },
    }
    if settings.model.hub_id:
        tags[Tag.REVISION] = settings.model.revision or "main"
    if git is not None:
        tags[Tag.GIT_COMMIT] = git.commit
        tags[Tag.GIT_DIRTY] = str(git.dirty).lower()
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        tags[Tag.OVERRIDES] = " ".join(redact_overrides(hydra.overrides.task))
        if hydra.mode == RunMode.MULTIRUN:
            tags[Tag.SWEEP_DIR] = str(Path(hydra.sweep.dir).resolve())
            tags[Tag.JOB_NUM] = hydra.job.num
    return tags


def run_params(config: dict) -> dict[str, Any]:
    """A run's params: its resolved config ``flatten``-ed, less what the run does not use,
    as ``config_hash`` leaves it out: the concept definitions where no ``concept`` is
    analysed, the number settings but ``numbers.enabled`` where that is off, and the
    ``extra`` group slot while it has no words (``with_group_files`` drops it). The
    run's ``config.yaml`` keeps every key. The benchmark's sweep logs 170 params a run
    instead of 218: two of MLflow's batches of 100 instead of three (a batch is about 9
    ms of the writer's time a run, 2026-11-30)."""
    used = dict(config)
    if used.get("concept") is None:
        used.pop("concepts", None)
    numbers = used.get("numbers")
    if isinstance(numbers, dict) and not numbers.get("enabled"):
        used["numbers"] = {"enabled": numbers.get("enabled")}
    extra = (used.get("groups") or {}).get(EXTRA_GROUP)
    if isinstance(extra, dict) and not extra.get("words"):
        used["groups"] = {name: spec for name, spec in used["groups"].items() if spec is not extra}
    return flatten(used)


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
    (``None, None`` outside a multirun).

    A multirun without the ``SweepTracking`` callback (``~hydra.callbacks.sweep_tracking``)
    is a plain one: its jobs are runs without a parent.

    Raises:
        FileNotFoundError: the sweep has the callback but its folder has no parent-run
            file (the parent was never opened): its runs would be orphans.
    """
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is None or hydra.mode != RunMode.MULTIRUN:
        return None, None
    sweep_dir = Path(hydra.sweep.dir)
    parent_file = sweep_dir / PARENT_RUN_FILE
    tracked = any(
        str(callback.get("_target_", "")).rsplit(".", 1)[-1] == "SweepTracking"
        for callback in (hydra.callbacks or {}).values()
    )
    if tracked and not parent_file.is_file():
        raise FileNotFoundError(
            f"{parent_file} is missing: this job's sweep has no parent run (the sweep's "
            "SweepTracking callback did not open one, or the sweep folder was moved), so "
            "no run was opened for it. Start the sweep again; for a multirun without a "
            "parent run, leave the callback out with ~hydra.callbacks.sweep_tracking"
        )
    return tuple(  # type: ignore[return-value]
        file.read_text().strip() if file.is_file() else None
        for file in (parent_file, sweep_dir / SWEEP_ID_FILE)
    )
