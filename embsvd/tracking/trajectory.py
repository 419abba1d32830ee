"""A revision sweep's trajectories: its runs read back per configuration, in training
order, and what the parent logs of them (``artifacts.Table.TRAJECTORY_*``, the warnings).

A sweep over ``model.revision`` (a checkpoint suite's steps) holds, for each
configuration (every setting but the revision: target, centering, geometry, ...), one run
per step. Each is read back here (its tags, metrics, ``axes.csv`` and ``spectrum.csv``),
put in training order (``model.steps``, else ``stepN`` names) and aligned with the final
step (``embsvd.checks.trajectory``). Runs that analysed byte-identical matrices (the
same ``embsvd.embedding_sha256``) are named in a warning on the parent and on themselves.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from embsvd.checks.trajectory import (
    AxisTrajectory,
    axis_trajectory,
    identical_embeddings,
    step_number,
    training_order,
)
from embsvd.method.analysis import MEAN_CORR_VARIANTS, mean_corr_key
from embsvd.tracking import contract
from embsvd.tracking.artifacts import TRAJECTORY_TABLES, Table, header, write_csv
from embsvd.tracking.contract import Tag
from embsvd.tracking.reading import read_tables
from embsvd.tracking.store import RunRecord, TrackingStore

REVISION_PARAM = "model.revision"
# settings (params, or their prefixes) that do not make another configuration: the
# revision itself, its declared order, names people read, where or whether figures are
# drawn, where runs are logged and kept (a resumed sweep reuses runs logged without
# tracking.skip_existing)
NOT_CONFIGURATION = (
    *(REVISION_PARAM, "model.steps", "model.display_name"),
    *("analysis.figures", "analysis.device", "tracking.", "cache_dir"),
)
TRAJECTORY_FIGURES = "figures/trajectory"  # the parent's folder of trajectory figures
WHITENED = "whitened"
WHITENED_PROBLEM = (
    "analysis.geometry=whitened whitens each checkpoint by its own covariance, so its "
    "axes are not in one coordinate system across steps; compare the euclidean runs"
)


@dataclass(frozen=True)
class StepRun:
    """One run of a configuration: one checkpoint of the suite.

    Attributes:
        run_id: The run.
        revision: Its ``model.revision`` (``embsvd.revision``).
        step: The step its ``stepN`` name gives; ``None`` for another name.
        embedding_sha256: The analysed matrix's hash; ``""`` for a run without one.
        axes: ``(n_components, d_model)``, from ``axes.csv``.
        singular_values: From ``spectrum.csv``.
        explained_variance_ratio: From ``spectrum.csv``.
        correlations: ``(variant, group_a, group_b) -> r``, the target's group-mean r.
    """

    run_id: str
    revision: str
    step: int | None
    embedding_sha256: str
    axes: np.ndarray
    singular_values: np.ndarray
    explained_variance_ratio: np.ndarray
    correlations: dict[tuple[str, str, str], float] = field(default_factory=dict)


@dataclass(frozen=True)
class ConfigurationTrajectory:
    """A configuration's runs in training order and their axes against the final run's."""

    configuration: str
    steps: list[StepRun]
    alignment: AxisTrajectory

    @property
    def x(self) -> list[int]:
        """Where each step goes on a figure's x axis: its step number when every
        revision's name gives one, else its place in the order."""
        numbers = [s.step for s in self.steps]
        if all(n is not None for n in numbers) and len(set(numbers)) == len(numbers):
            return [int(n) for n in numbers]  # type: ignore[arg-type]
        return list(range(len(self.steps)))


@dataclass(frozen=True)
class SweepTrajectories:
    """What a revision sweep's parent logs: the configurations that could be ordered,
    the revisions with identical matrices (``(model label, [revisions], sha256)``), and
    why a configuration has no trajectory (no training order)."""

    configurations: list[ConfigurationTrajectory]
    identical: list[tuple[str, list[str], str]]
    problems: list[str]


def is_revision_sweep(runs: Iterable[RunRecord]) -> bool:
    """Whether the FINISHED ``runs`` differ in ``model.revision``."""
    return len({run.tags.get(Tag.REVISION) for run in runs if run.status == "FINISHED"}) > 1


def sweep_runs(
    store: TrackingStore, parent_run_id: str, children: list[RunRecord] | None = None
) -> list[RunRecord]:
    """The parent's FINISHED children, and the FINISHED runs its skipped jobs reuse.
    ``children``: the parent's children as read (``store.children``); ``None``: read here."""
    if children is None:
        children = store.children(parent_run_id)
    runs = [c for c in children if c.status == "FINISHED"]
    tags = store.client.get_run(parent_run_id).data.tags
    known = {run.run_id for run in runs}
    for run_id in sorted(set(contract.skipped_jobs(tags).values()) - known):
        runs += store.find_runs(f"attributes.run_id = '{run_id}'")
    return runs


def configurations(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    """``runs`` grouped by configuration (params but ``NOT_CONFIGURATION``'s), each named by
    its run name without ``@<revision>`` (and the settings that set it apart from a
    configuration of the same name)."""
    groups: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        key = tuple(
            sorted((k, v) for k, v in run.params.items() if not k.startswith(NOT_CONFIGURATION))
        )
        groups.setdefault(key, []).append(run)
    named: dict[str, list[RunRecord]] = {}
    for key, members in groups.items():
        base = _without_revision(members[0])
        same_name = [k for k, m in groups.items() if _without_revision(m[0]) == base]
        if len(same_name) > 1:
            shared = set.intersection(*(set(k) for k in same_name))
            base += " · " + " ".join(f"{k}={v}" for k, v in key if (k, v) not in shared)
        named[base] = members
    return named


def _without_revision(run: RunRecord) -> str:
    revision = run.tags.get(Tag.REVISION, "")
    return run.name.replace(f"@{revision}", "") if revision else run.name


def ordered(runs: list[RunRecord]) -> list[RunRecord]:
    """``runs`` in training order: by ``embsvd.step_order`` (``model.steps``) when every
    run has it, else by the step their revisions' ``stepN`` names give.

    Raises:
        ValueError: no order (``training_order``'s message, naming ``model.steps``).
    """
    if all(Tag.STEP_ORDER in run.tags for run in runs):
        return sorted(runs, key=lambda run: int(run.tags[Tag.STEP_ORDER]))
    by_revision = {run.tags.get(Tag.REVISION, ""): run for run in runs}
    if len(by_revision) < len(runs):
        raise ValueError(
            "two runs of one configuration have the same model.revision; a trajectory "
            "takes one run per revision"
        )
    return [by_revision[r] for r in training_order(list(by_revision))]


def read_step(store: TrackingStore, run: RunRecord, scratch: Path) -> StepRun:
    """One run's axes, spectrum and the target's group-mean r, read back.

    Raises:
        ValueError: the run logged no ``axes.csv`` (a run of an older embsvd).
    """
    tables = read_tables(store.client, run.run_id, [Table.AXES, Table.SPECTRUM], scratch)
    if Table.AXES not in tables:
        raise ValueError(
            f"run {run.run_id} ({run.name}) logged no {Table.AXES}: it was made by an older "
            "embsvd; run its job again to compare it across steps"
        )
    axes = np.array(
        [[float(v) for k, v in row.items() if k.startswith("dim_")] for row in tables[Table.AXES]]
    )
    spectrum = tables.get(Table.SPECTRUM, ())
    target = run.tags.get(Tag.TARGET_GROUP, "")
    correlations = {}
    for variant in MEAN_CORR_VARIANTS:
        for key, value in run.metrics.items():
            pair = contract.split_pair_metric(key, mean_corr_key(variant))
            if pair is not None and target in pair:
                correlations[(variant, *pair)] = value
    revision = run.tags.get(Tag.REVISION, "")
    return StepRun(
        run_id=run.run_id,
        revision=revision,
        step=step_number(revision),
        embedding_sha256=run.tags.get(Tag.EMBEDDING_SHA256, ""),
        axes=axes,
        singular_values=np.array([float(r["singular_value"]) for r in spectrum]),
        explained_variance_ratio=np.array([float(r["explained_variance_ratio"]) for r in spectrum]),
        correlations=correlations,
    )


def sweep_trajectories(store: TrackingStore, runs: list[RunRecord]) -> SweepTrajectories:
    """Every configuration's trajectory and the identical matrices, from a revision
    sweep's FINISHED ``runs``. A configuration without a training order is left out,
    with why in ``problems``."""
    found, problems = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for i, (name, members) in enumerate(sorted(configurations(runs).items())):
            if any(run.tags.get(Tag.GEOMETRY) == WHITENED for run in members):
                problems.append(f"{name}: {WHITENED_PROBLEM}")
                continue
            try:
                in_order = ordered(members)
            except ValueError as error:
                problems.append(f"{name}: {error}")
                continue
            steps = [
                read_step(store, run, Path(scratch) / f"{i}-{j}") for j, run in enumerate(in_order)
            ]
            trajectory = axis_trajectory([step.axes for step in steps])
            found.append(ConfigurationTrajectory(name, steps, trajectory))
    return SweepTrajectories(found, identical_revisions(runs), problems)


def identical_revisions(runs: list[RunRecord]) -> list[tuple[str, list[str], str]]:
    """Per model (label without revision, and matrix): the revisions whose analysed
    matrices share a hash, ``(model, [revisions], sha256)``."""
    by_model: dict[str, dict[str, str]] = {}
    for run in runs:
        model = f"{run.tags.get(Tag.MODEL, '?')}:{run.tags.get(Tag.MATRIX, 'input')}"
        revision = run.tags.get(Tag.REVISION)
        if revision and run.tags.get(Tag.EMBEDDING_SHA256):
            by_model.setdefault(model, {})[revision] = run.tags[Tag.EMBEDDING_SHA256]
    found = []
    for model, hashes in sorted(by_model.items()):
        ordered_hashes = dict(sorted(hashes.items(), key=lambda kv: _order_key(kv[0])))
        for revisions in identical_embeddings(ordered_hashes):
            found.append((model.removesuffix(":input"), revisions, hashes[revisions[0]]))
    return found


def _order_key(revision: str) -> tuple[int, str]:
    number = step_number(revision)
    return (number if number is not None else -1, revision)


def identical_message(model: str, revisions: list[str], sha256: str) -> str:
    """``model tiny_suite: revisions step0, step1000 analysed byte-identical matrices
    (embedding sha256 1a2b3c4d5e6f)``."""
    return (
        f"model {model}: revisions {', '.join(revisions)} analysed byte-identical matrices "
        f"(embedding sha256 {sha256[:12]}); their runs are one analysis, not steps of training"
    )


def write_tables(trajectories: SweepTrajectories, folder: Path) -> None:
    """The parent's trajectory tables (``Table.TRAJECTORY_*``) into ``folder``."""
    steps_rows, alignment, angles, spectrum, correlations = [], [], [], [], []
    identical = {
        revision: [r for r in revisions if r != revision]
        for _, revisions, _ in trajectories.identical
        for revision in revisions
    }
    for found in trajectories.configurations:
        for position, (step, x) in enumerate(zip(found.steps, found.x, strict=True)):
            where = [found.configuration, position, x, step.revision, step.run_id]
            others = identical.get(step.revision, [])
            steps_rows.append([*where, step.embedding_sha256, " ".join(others)])
            for k, cos in enumerate(found.alignment.abs_cos[position]):
                alignment.append([*where, k, cos, int(found.alignment.signs[position][k])])
            for k, angle in enumerate(found.alignment.angles[position]):
                angles.append([*where, k, float(np.degrees(angle))])
            for k, (s, r) in enumerate(
                zip(step.singular_values, step.explained_variance_ratio, strict=True)
            ):
                spectrum.append([*where, k, s, r])
            for (variant, a, b), r in sorted(step.correlations.items()):
                correlations.append([*where, variant, a, b, r])
    tables = (steps_rows, alignment, angles, spectrum, correlations)
    for table, rows in zip(TRAJECTORY_TABLES, tables, strict=True):
        write_csv(folder / table, header(table), rows)


def log_trajectories(
    store: TrackingStore,
    parent_run_id: str,
    runs: list[RunRecord],
    trajectories: SweepTrajectories,
    figures: Path | None = None,
) -> None:
    """Log the trajectory tables (and the folder ``figures``, under
    ``TRAJECTORY_FIGURES``) to the parent, and the warnings as tags: on the parent,
    every identical set and every configuration without an order; on each run whose
    matrix another revision shares, which one."""
    client = store.client
    with tempfile.TemporaryDirectory() as scratch:
        if trajectories.configurations:
            write_tables(trajectories, Path(scratch))
            client.log_artifacts(parent_run_id, scratch)
        if figures is not None and any(figures.iterdir()):
            client.log_artifacts(parent_run_id, str(figures), TRAJECTORY_FIGURES)
    if trajectories.identical:
        messages = [identical_message(*found) for found in trajectories.identical]
        client.set_tag(parent_run_id, Tag.WARNING_IDENTICAL_EMBEDDINGS, _tag("; ".join(messages)))
        by_revision = {
            (model, revision): message
            for (model, revisions, _), message in zip(trajectories.identical, messages, strict=True)
            for revision in revisions
        }
        for run in runs:
            model = run.tags.get(Tag.MODEL, "?")
            if run.tags.get(Tag.MATRIX, "input") != "input":
                model += f":{run.tags[Tag.MATRIX]}"
            message = by_revision.get((model, run.tags.get(Tag.REVISION, "")))
            if message is not None:
                client.set_tag(run.run_id, Tag.WARNING_IDENTICAL_EMBEDDINGS, _tag(message))
    if trajectories.problems:
        client.set_tag(
            parent_run_id, Tag.WARNING_TRAJECTORY, _tag("; ".join(trajectories.problems))
        )


def _tag(text: str) -> str:
    return text if len(text) <= MAX_TAG_VAL_LENGTH else text[: MAX_TAG_VAL_LENGTH - 3] + "..."


def figure_name(configuration: str) -> str:
    """A configuration's figure file name: its name, file-safe."""
    return re.sub(r"[^\w.\-]+", "_", configuration).strip("_") + ".png"
