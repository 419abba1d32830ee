"""The vocabulary explorer in the pipeline: a run's table and page, the page of a run that
deferred its figures, and a sweep's page (docs/explorer.md).

A run logs every token's projections (``explorer/vocabulary_projections.csv``) wherever
its per-run figures are not off, and the page (``explorer.html``) with its figures; a
run that deferred them gets its page from the figures command, built from the logged
table, as is the sweep's page with a run selector. The page is always built from the
table, so what it shows is what the run logged.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path

from embsvd import tracking
from embsvd.figures.explorer import (
    PAGE_FOLDER,
    SWEEP_MAX_VALUES,
    ExplorerRun,
    RunExplorer,
    write_explorer_page,
    write_run_explorer,
)
from embsvd.figures.selection import distinct_runs
from embsvd.groups import TokenGroup
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import AnalysisResult
from embsvd.pipeline.config import EmbsvdConfig
from embsvd.tracking.artifacts import (
    EXPLORER_FOLDER,
    EXPLORER_PAGE,
    EXPLORER_TABLE,
)
from embsvd.tracking.contract import LoggedRun, Sweep, Tag

SWEEP_PAGE = "explorer.html"  # in the sweep's figure set, beside the paper figures


def run_explorer(
    settings: EmbsvdConfig,
    result: AnalysisResult,
    groups: Mapping[str, TokenGroup],
    vocab: Vocabulary,
    name: str,
    elsewhere: bool = False,
) -> RunExplorer:
    """What the run's explorer is written from: its table, and its page where the run
    draws its own figures (``analysis.figures=true``; ``deferred``: the figures command
    builds it). ``elsewhere``: written by another process (the figure process), which
    computes the tokens' display texts where this one has not."""
    texts = vocab.display_texts_to_hand_over() if elsewhere else vocab.display_texts
    return RunExplorer(
        name=name,
        model=settings.model.name,
        target=settings.target,
        explained=tuple(result.svd.explained_variance_ratio.tolist()),
        projections=result.projections,
        texts=texts,
        members={group_name: tuple(group.token_ids) for group_name, group in groups.items()},
        special_ids=tuple(sorted(vocab.special_ids)),
        page=settings.analysis.figures is True,
    )


def log_run_explorer(run: tracking.RunLogger, explorer: RunExplorer) -> None:
    """Write the run's explorer here and log it."""
    with tempfile.TemporaryDirectory() as scratch:
        write_run_explorer(explorer, Path(scratch))
        log_written_explorer(run, Path(scratch))


def log_written_explorer(run: tracking.RunLogger, folder: Path) -> None:
    """Log what ``write_run_explorer`` wrote into ``folder``: the table under
    ``EXPLORER_FOLDER``, the page (where written) at the run's root."""
    run.log_folder(folder / EXPLORER_FOLDER, EXPLORER_FOLDER)
    if (folder / PAGE_FOLDER).is_dir():
        run.log_folder(folder / PAGE_FOLDER)


def has_table(client, run_id: str) -> bool:
    """Whether the run logged an explorer table (not where the explorer or its figures
    were off, nor in a run older than the explorer)."""
    return EXPLORER_TABLE in {a.path for a in client.list_artifacts(run_id, EXPLORER_FOLDER)}


def logged_table(client, run_id: str, scratch: Path) -> Path | None:
    """The run's explorer table, downloaded into ``scratch``; ``None`` where it logged
    none."""
    if not has_table(client, run_id):
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    with tracking.no_progress_bars():  # a bar per run in the figures command's output
        return Path(client.download_artifacts(run_id, EXPLORER_TABLE, str(scratch)))


def explorer_run(run: LoggedRun, table: Path) -> ExplorerRun:
    """How a logged run appears on a page."""
    return ExplorerRun(
        name=run.name,
        table=table,
        model=run.tags.get(Tag.MODEL_DISPLAY) or run.model_label,
        target=run.target,
        explained=tuple(run.series.get("explained_variance_ratio", ())),
    )


def log_deferred_explorer(store: tracking.TrackingStore, run: LoggedRun, scratch: Path) -> bool:
    """Build and log the page of a run that deferred its figures, from its logged table;
    ``False`` where it logged none."""
    table = logged_table(store.client, run.run_id, scratch / "explorer_table")
    if table is None:
        return False
    page = scratch / "explorer_page" / EXPLORER_PAGE
    write_explorer_page([explorer_run(run, table)], page, title=f"{run.name}: vocabulary explorer")
    tracking.RunLogger(store.client, run.run_id).log_folder(page.parent)
    return True


def write_sweep_explorer(uri: str, sweep: Sweep, folder: Path) -> tuple[Path, list[str]] | None:
    """Write the sweep's page (``explorer.html``, a run selector over its runs that
    logged a table, one per configuration) into its figure set ``folder``; return the
    page and the runs it embeds, or ``None`` where no run logged a table.

    The page holds at most ``SWEEP_MAX_VALUES`` coordinates; the runs left out are
    named on it. Runs whose ``embsvd.d_vocab`` alone passes that are not downloaded."""
    if not sweep.runs:
        return None
    store = tracking.TrackingStore(uri, sweep.runs[0].experiment, create=False)
    # one run per configuration among those that logged a table (a later repeat without
    # one, figures off, must not hide it)
    logged = [run for run in sweep.runs if has_table(store.client, run.run_id)]
    distinct, _ = distinct_runs(dataclasses.replace(sweep, runs=tuple(logged)), warn=False)
    runs, left_out = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for i, run in enumerate(distinct.runs):
            d_vocab = int(run.tags.get(Tag.D_VOCAB) or 0)
            if runs and d_vocab > SWEEP_MAX_VALUES:
                left_out.append(f"{run.name} ({d_vocab:,} tokens: too many for a sweep's page)")
                continue
            table = logged_table(store.client, run.run_id, Path(scratch) / str(i))
            if table is not None:
                runs.append(explorer_run(run, table))
        if not runs:
            return None
        page = folder / SWEEP_PAGE
        title = f"{sweep.name}: vocabulary explorer"
        kept = write_explorer_page(
            runs, page, title, max_values=SWEEP_MAX_VALUES, left_out=left_out
        )
    return page, kept
