"""Paper figures of a finished sweep, from the tracking store."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from embsvd import figures, tracking
from embsvd.figures.run_data import RUN_FIGURE_TABLES
from embsvd.figures.style import FigureFormat
from embsvd.pipeline import explorer_job
from embsvd.pipeline.config import DEFERRED_FIGURES, FiguresConfig, unknown_key_messages
from embsvd.pipeline.project import project_root
from embsvd.pipeline.secrets import redact_text
from embsvd.tracking.contract import LoggedRun, Sweep, Tag

FIGURES_ARTIFACT_PATH = "figures/paper"  # on the sweep's parent run
FIGURE_FORMATS = tuple(FigureFormat)
RUN_FIGURES_ARTIFACT_PATH = "figures"  # on each run, where a run that draws its own logs them
DRAWN_LATER = "drawn later"  # Tag.RUN_FIGURES once the figures command has logged them


def figures_job(cfg: DictConfig) -> list[Path]:
    """Write the paper figures and tables of the selected sweep (``conf/figures.yaml``)
    into ``<output_dir>/<sweep id>/`` and log them to the sweep's parent run.

    Without a selection it draws the latest sweep with a FINISHED run and no run still
    going (any FINISHED run with ``sweep.include_running``), and says which newer sweeps
    it passed over. A selection that matches nothing, runs of several experiments, runs
    still RUNNING (unless ``sweep.include_running``), a ``sweep.sweep_id`` or ``sweep.name``
    that is not a plain name, or a figure folder that exists and is not a figure set end
    the command with the reason on stderr and exit status 1; nothing is written then.
    """
    unknown = list(unknown_key_messages(cfg))
    if unknown:  # a key added with '+' that nothing reads would be silently ignored
        print("figures: " + "\n".join(unknown), file=sys.stderr, flush=True)
        raise SystemExit(1)
    settings: FiguresConfig = OmegaConf.to_object(cfg)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # it logs every font subset
    uri = tracking.resolve_tracking_uri(settings.tracking.uri, project_root)
    chosen = settings.sweep
    # a filter searches the experiment run.py logs to unless told otherwise
    experiment = chosen.experiment or (settings.tracking.experiment if chosen.filter else None)
    try:
        style = figure_style(settings)
        parent_run_id = chosen.parent_run_id
        if not (chosen.parent_run_id or chosen.sweep_id or chosen.filter):
            # none chosen: the latest sweep that can be drawn; say which, and why not the
            # newer ones (still running, or no run FINISHED), before drawing it
            choice = tracking.latest_sweep(uri, experiment, chosen.include_running)
            print(redact_text(f"figures of {choice.describe()}"), flush=True)
            parent_run_id = choice.taken.parent_run_id
        selection = tracking.SweepSelection(
            parent_run_id=parent_run_id,
            sweep_id=chosen.sweep_id,
            experiment=experiment,
            filter_string=chosen.filter,
            name=chosen.name,
            include_running=chosen.include_running,
        )
        sweep = tracking.read_sweep(uri, selection)
        figures.check_replicates(sweep, style.replicates)  # refused before anything is drawn
        # the sweep's name is file-safe (a stored tag is anyone's text); the folder must
        # still lie in output_dir, and be absent or a figure set this command wrote
        output_dir = Path(settings.output_dir).expanduser().resolve()
        folder = figures.figure_folder(output_dir, sweep.name)
        figures.check_replaceable(folder)
    except ValueError as error:
        # a selection error names the store: a password in its URI stays out of the console
        print(f"figures: {redact_text(str(error))}", file=sys.stderr, flush=True)
        raise SystemExit(1) from error
    files = figures.write_figure_set(sweep, output_dir, style)
    # --- vocabulary explorer: the sweep's page, from its runs' logged tables ---
    explorer = explorer_job.write_sweep_explorer(uri, sweep, folder)
    if explorer is not None:
        files.append(explorer[0])
    # --- end vocabulary explorer ---
    if settings.log_to_parent and sweep.parent_run_id is not None:
        tracking.log_figures(uri, sweep.parent_run_id, folder, FIGURES_ARTIFACT_PATH)
    drawn, failed = draw_deferred_run_figures(uri, sweep)
    left_out = ", ".join(f"{name} ({status})" for name, status in sweep.left_out)
    print(
        redact_text(
            f"{len(files)} files from {len(sweep.runs)} runs of {sweep.selection} in {folder}"
            + (f"\nleft out: {left_out}" if left_out else "")
            + (
                f"\nper-run figures of {len(drawn)} runs that deferred them logged to those "
                f"runs ({RUN_FIGURES_ARTIFACT_PATH}/): {', '.join(drawn)}"
                if drawn
                else ""
            )
        ),
        flush=True,
    )
    if failed:
        print(redact_text("figures: " + "\n".join(failed)), file=sys.stderr, flush=True)
        raise SystemExit(1)
    return files


def draw_deferred_run_figures(uri: str, sweep: Sweep) -> tuple[list[str], list[str]]:
    """Draw the per-run figures of the sweep's runs that deferred them (the tag
    ``embsvd.run_figures`` is ``deferred``) from the tables they logged, with the function
    a run that draws its own uses (``figures.draw_run_figures``), log them to each run
    under ``figures/`` and tag it ``drawn later``: the MLflow UI shows them as it shows
    any run's. Returns the names of the runs drawn, and a message per run that could not
    be (its tables incomplete): that run keeps its tag, for a later command."""
    deferred = [run for run in sweep.runs if run.tags.get(Tag.RUN_FIGURES) == DEFERRED_FIGURES]
    if not deferred:
        return [], []
    store = tracking.TrackingStore(uri, deferred[0].experiment, create=False)
    drawn, failed = [], []
    for run in deferred:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            try:
                logged = with_run_tables(store, run, folder / "tables")
                model = run.tags.get(Tag.MODEL) or run.model_label
                (folder / "figures").mkdir()
                figures.draw_run_figures(logged, model, folder / "figures")
                explorer_job.log_deferred_explorer(store, run, folder)  # its explorer.html
            except ValueError as error:
                failed.append(f"run {run.run_id} ({run.name}): per-run figures not drawn: {error}")
                continue
            logger = tracking.RunLogger(store.client, run.run_id)
            logger.log_folder(folder / "figures", RUN_FIGURES_ARTIFACT_PATH)
            logger.set_tags({Tag.RUN_FIGURES: DRAWN_LATER})
        drawn.append(run.name)
    return drawn, failed


def with_run_tables(store: tracking.TrackingStore, run: LoggedRun, scratch: Path) -> LoggedRun:
    """``run`` with every table its figures are drawn from that it logged, read from the
    store (``read_sweep`` reads only those the paper figures need)."""
    return tracking.with_tables(store.client, run, RUN_FIGURE_TABLES, scratch)


def figure_style(settings: FiguresConfig) -> figures.FigureStyle:
    """The figure settings, checked: ``ValueError`` names the setting and what is allowed."""
    if not 0 < settings.alpha < 1:
        raise ValueError(f"alpha={settings.alpha}: a significance level between 0 and 1")
    if settings.top_k < 1:
        raise ValueError(f"top_k={settings.top_k}: at least 1 token per end")
    if min(settings.column_width, settings.text_width) <= 0 or settings.dpi <= 0:
        raise ValueError("column_width, text_width and dpi must be positive")
    unknown = sorted(set(settings.formats) - set(FIGURE_FORMATS))
    if unknown or not settings.formats:
        raise ValueError(f"formats={settings.formats}: choose from {list(FIGURE_FORMATS)}")
    replicates = tracking.check_replicate_keys(settings.replicates)
    return figures.FigureStyle(
        replicates=replicates,
        column_width=settings.column_width,
        text_width=settings.text_width,
        formats=tuple(settings.formats),
        dpi=settings.dpi,
        alpha=settings.alpha,
        top_k=settings.top_k,
    )
