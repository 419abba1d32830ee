"""Trajectories across training: what each run of a revision sweep records, and what the
sweep's parent makes of them when it closes.

A run tags the hash of the matrix it analysed (``embsvd.io.tensor_hash``) and, for a Hub
revision, its step: ``stepN``'s number and its place in ``model.steps``. When a sweep's
children differ in ``model.revision``, the parent's close aligns each configuration's
axes at every step with the final step's (``embsvd.checks.trajectory``), logs the tables
(``embsvd.tracking.trajectory``) and a figure per configuration
(``embsvd.figures.trajectory``), and warns of revisions whose matrices are identical.
docs/trajectories.md says what it means and when it is valid.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from embsvd import figures, tracking
from embsvd.checks.trajectory import step_number
from embsvd.io.spec import Checkpoint, CheckpointSpec
from embsvd.io.tensor_hash import embedding_sha256
from embsvd.tracking.contract import Tag


def run_tags(model: CheckpointSpec, checkpoint: Checkpoint) -> dict[str, Any]:
    """A run's ``embsvd.embedding_sha256`` (the analysed matrix's bytes, computed once per
    weights file and tensor), and for a Hub revision ``embsvd.step`` (its ``stepN``
    number) and ``embsvd.step_order`` (its place in ``model.steps``, from 0), where known."""
    tags: dict[str, Any] = {
        Tag.EMBEDDING_SHA256: embedding_sha256(
            checkpoint.W,
            checkpoint.weights_sha256,
            checkpoint.tensor_key,
            checkpoint.matrix,
            checkpoint.cache_dir,
        )
    }
    if model.hub_id:
        revision = model.revision or "main"
        if (number := step_number(revision)) is not None:
            tags[Tag.STEP] = number
        if model.steps and revision in model.steps:
            tags[Tag.STEP_ORDER] = list(model.steps).index(revision)
    return tags


def log_sweep_trajectories(
    store: tracking.TrackingStore,
    parent_run_id: str,
    children: list[tracking.RunRecord] | None = None,
) -> None:
    """At a sweep's close, before its parent is closed: when its FINISHED runs differ in
    ``model.revision``, log the trajectory tables and figures to the parent, tag and print
    the revisions with identical matrices, and print (and tag) why a configuration has
    no trajectory. Never raises: a failure is printed, and the sweep closes as it would.
    ``children``: the parent's children as read (``store.children``); ``None``: read here."""
    try:
        runs = tracking.sweep_runs(store, parent_run_id, children)
        if not tracking.is_revision_sweep(runs):
            return
        found = tracking.sweep_trajectories(store, runs)
        identical = {revision for _, revisions, _ in found.identical for revision in revisions}
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            for configuration in found.configurations:  # matplotlib only when one is drawn
                figures.draw_trajectory(configuration, folder, identical)
            tracking.log_trajectories(store, parent_run_id, runs, found, folder)
    except Exception as error:  # noqa: BLE001 (the sweep's close goes on)
        print(
            f"Trajectories across training were not logged: {tracking.describe(error)}",
            file=sys.stderr,
            flush=True,
        )
        return
    for found_identical in found.identical:
        message = tracking.identical_message(*found_identical)
        print(f"warning: {message}", file=sys.stderr, flush=True)
    for problem in found.problems:
        print(f"warning: no trajectory for {problem}", file=sys.stderr, flush=True)
    if found.configurations:
        print(
            f"Trajectories across training: {len(found.configurations)} configuration(s) "
            f"logged to parent run {parent_run_id} ({tracking.TRAJECTORY_FIGURES}/, "
            "trajectory_*.csv)",
            flush=True,
        )
