"""Which runs a figure set draws, and what it calls them: no plotting.

One line, panel or table per configuration: runs of a selection that repeat one
(``distinct_runs``: the same ``embsvd.config_hash``, or without one the same model, group
and variant) are left out for the latest of them, with a warning naming them. Runs that
share a model, group and variant but differ in their settings stay apart, each labelled
by the settings that differ (``setting_labels``, read off their ``embsvd.overrides``).
Figures show display names (``Names``: the tags ``embsvd.model_display`` and
``embsvd.group_display.<group>``, else readable defaults); rows keep the identifiers
too, so every CSV still joins the store.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embsvd.groups import default_display_name
from embsvd.method.analysis import MEAN_CORR_VARIANTS, mean_corr_key
from embsvd.tracking.contract import LoggedRun, Sweep, Tag, split_pair_metric
from embsvd.tracking.replicates import is_replicate_param

log = logging.getLogger(__name__)
Row = dict[str, Any]


@dataclass(frozen=True)
class Repeat:
    """Runs of a selection that repeat the configuration of a later run, left out for it."""

    kept: LoggedRun
    left_out: tuple[LoggedRun, ...]
    same: str  # what they share: ``config hash <8 hex>`` or the model, group and variant

    def describe(self) -> str:
        runs = ", ".join(f"{r.name} (run {r.run_id})" for r in self.left_out)
        return f"{runs} -> {self.kept.name} (run {self.kept.run_id}), same {self.same}"


def distinct_runs(sweep: Sweep, warn: bool = True) -> tuple[Sweep, tuple[Repeat, ...]]:
    """The sweep with one run per configuration, the latest (the last in the selection's
    order: job order for a sweep, start time for a filter), and the runs left out.

    A configuration is the run's ``embsvd.config_hash``; a run logged without one is the
    same configuration as another of its model, group and variant. Repeats would draw
    one spectrum twice into a line that runs back to component 1, or a panel twice;
    they are named in a warning (logged here unless ``warn`` is false) and in
    ``sweep.json``."""
    latest: dict[Hashable, LoggedRun] = {}
    for run in sweep.runs:
        latest[_configuration(run)] = run
    kept = tuple(run for run in sweep.runs if latest[_configuration(run)] is run)
    repeats = []
    for key, run in latest.items():
        left_out = tuple(r for r in sweep.runs if _configuration(r) == key and r is not run)
        if left_out:
            same = f"config hash {key[1][:8]}" if key[0] == "hash" else "model, group and variant"
            repeats.append(Repeat(run, left_out, same))
    if repeats and warn:
        log.warning(
            "figures: %d runs repeat the configuration of a later run of the selection and "
            "are left out (one line, panel and table per configuration): %s",
            sum(len(r.left_out) for r in repeats),
            "; ".join(r.describe() for r in repeats),
        )
    return dataclasses.replace(sweep, runs=kept), tuple(repeats)


def _configuration(run: LoggedRun) -> tuple[str, ...]:
    digest = run.tags.get(Tag.CONFIG_HASH)
    if digest:
        return ("hash", digest)
    return ("slot", model_of(run), run.target, run.variant)


def model_of(run: LoggedRun) -> str:
    """The run's model label, ``<name>[@<revision>][:output]``: one place that reads it."""
    return run.model_label


# Override keys that never set a run apart: the model, group and variant are named by the
# figure already, and the rest changes no number (where runs are logged, cached, drawn).
SLOT_KEYS = frozenset(
    {"model", "model.name", "model.revision", "model.matrix", "model.display_name", "target"}
    | {"analysis.center", "analysis.geometry", "analysis.normalize_rows"}
    | {"analysis.figures", "analysis.device", "cache_dir"}
)
SLOT_PREFIXES = ("tracking.", "hydra.")
SLOT_SUFFIXES = (".display_name", ".description")


def overrides_of(run: LoggedRun) -> dict[str, str]:
    """The run's command-line overrides (the tag ``embsvd.overrides``) as ``{key: value}``,
    keys without ``+``/``~``; a deleted key's value is ``(deleted)``. Values that held a
    space were joined by it in the tag: a part without ``=`` goes on the value before."""
    found: dict[str, str] = {}
    key = None
    for part in run.tags.get(Tag.OVERRIDES, "").split():
        name, equals, value = part.partition("=")
        if part.startswith("~"):
            key = None
            found[name.lstrip("~")] = "(deleted)"
        elif equals and name:
            key = name.lstrip("+")
            found[key] = value
        elif key is not None:
            found[key] += f" {part}"
    return found


def _settings(run: LoggedRun, ignore: Sequence[str] = ()) -> dict[str, str]:
    return {
        key: value
        for key, value in overrides_of(run).items()
        if key not in SLOT_KEYS
        and not key.startswith(SLOT_PREFIXES)
        and not key.endswith(SLOT_SUFFIXES)
        and not is_replicate_param(key, ignore)
    }


def setting_labels(
    runs: Sequence[LoggedRun],
    slot: Callable[[LoggedRun], Hashable],
    by_hash: bool = True,
    ignore: Sequence[str] = (),
) -> dict[str, str]:
    """Run id -> what sets the run apart from the other runs of its ``slot`` (the runs one
    line, panel or heatmap would otherwise mix): the overrides whose values differ
    between them, e.g. ``random_state=1`` (``analysis.`` left out of the key) or
    ``n_null default`` where a run did not set it; ``""`` for a run alone in its slot.
    With ``by_hash``, runs whose overrides agree are told apart by their config hash
    (``config 1a2b3c4d``): a slot of one model, group and variant holds one configuration
    per run (``distinct_runs``), whatever the overrides show; a heatmap's slot holds runs
    of many targets and centerings, which share a heatmap where their overrides agree.
    Overrides of the replicate keys ``ignore`` (and under them) never set runs apart:
    pooled replicates are one configuration (``figures.replicates``)."""
    labels: dict[str, str] = {}
    slots: dict[Hashable, list[LoggedRun]] = {}
    for run in runs:
        slots.setdefault(slot(run), []).append(run)
    for members in slots.values():
        settings = {run.run_id: _settings(run, ignore) for run in members}
        keys = dict.fromkeys(k for s in settings.values() for k in sorted(s))
        differ = [k for k in keys if len({s.get(k) for s in settings.values()}) > 1]
        for run in members:
            mine = settings[run.run_id]
            labels[run.run_id] = ", ".join(
                f"{_short(k)}={mine[k]}" if k in mine else f"{_short(k)} default" for k in differ
            )
        alike = Counter(labels[run.run_id] for run in members)
        for run in members:
            if by_hash and alike[labels[run.run_id]] > 1:
                digest = run.tags.get(Tag.CONFIG_HASH)
                mark = f"config {digest[:8]}" if digest else f"run {run.run_id[:8]}"
                labels[run.run_id] = ", ".join(filter(None, [labels[run.run_id], mark]))
    return labels


def _short(key: str) -> str:
    return key.removeprefix("analysis.")


def variant_slot(run: LoggedRun) -> tuple[str, str, str]:
    """A spectrum's, axis panel's or table's slot: model, group and variant."""
    return (model_of(run), run.target, run.variant)


def space_slot(run: LoggedRun) -> tuple[str, str]:
    """A heatmap's slot: the model and the geometry group means live in (centering and
    the target change no group mean)."""
    return (model_of(run), run.space)


@dataclass(frozen=True)
class Names:
    """What the figures call the runs of a sweep.

    ``models``: model label -> display name (``embsvd.model_display``, with the label's
    ``@<revision>`` and `` (W_U)`` for the output matrix; the label itself for runs
    logged without one); ``groups``: group -> display name (``embsvd.group_display.<g>``,
    else ``_`` as spaces); two labels that would read alike keep their identifier in
    brackets. ``settings``: run id -> its ``setting_labels`` among the runs of its
    model, group and variant."""

    models: Mapping[str, str]
    groups: Mapping[str, str]
    settings: Mapping[str, str]

    @classmethod
    def of(cls, sweep: Sweep) -> Names:
        models = {model_of(run): _model_display(run) for run in sweep.runs}
        groups: dict[str, str] = {}
        for run in sweep.runs:
            for key, value in run.tags.items():
                if key.startswith(Tag.GROUP_DISPLAY) and value:
                    groups.setdefault(key.removeprefix(Tag.GROUP_DISPLAY), value)
        for name in _group_names(sweep):
            groups.setdefault(name, default_display_name(name))
        return cls(
            _told_apart(models), _told_apart(groups), setting_labels(sweep.runs, variant_slot)
        )

    def group(self, name: str) -> str:
        return self.groups.get(name) or default_display_name(name)

    def where(self, run: LoggedRun) -> Row:
        """The columns that say which run a row is of: identifiers and display names."""
        model = model_of(run)
        return {
            "model": model,
            "model_display": self.models[model],
            "group": run.target,
            "group_display": self.group(run.target),
            "variant": run.variant,
            "setting": self.settings.get(run.run_id, ""),
            "run_id": run.run_id,
        }


def _model_display(run: LoggedRun) -> str:
    label, name = model_of(run), run.tags.get(Tag.MODEL, "")
    display = run.tags.get(Tag.MODEL_DISPLAY)
    if not display or not name or not label.startswith(name):
        return label
    rest = label.removeprefix(name)
    output = rest.endswith(":output")
    return display + rest.removesuffix(":output") + (" (W_U)" if output else "")


def _group_names(sweep: Sweep) -> list[str]:
    names = [run.target for run in sweep.runs]
    for run in sweep.runs:
        for prefix in map(mean_corr_key, MEAN_CORR_VARIANTS):
            names += [g for key in run.metrics if (p := split_pair_metric(key, prefix)) for g in p]
    return list(dict.fromkeys(names))


def _told_apart(displays: dict[str, str]) -> dict[str, str]:
    """Display names, each one that two identifiers share followed by its identifier."""
    shared = Counter(displays.values())
    return {
        key: f"{value} ({key})" if shared[value] > 1 and value != key else value
        for key, value in displays.items()
    }
