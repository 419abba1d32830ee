"""What the paper figures plot when runs are replicates: pooled rows, no plotting.

With replicate keys declared (``replicates`` in ``conf/figures.yaml``, e.g.
``[analysis.random_state]``), the runs of a figure set that differ only in those params
(``embsvd.tracking.replicates.replicate_sets``) are one configuration: the scree grid
draws one line per configuration, each point the mean share over its replicates with
the 95% Student-t interval of that mean as its bar (``n - 1`` degrees of freedom; no bar
where ``n == 1``) and ``n=<replicates>`` in its legend label; ``replicates.csv`` pools
every scalar metric the runs logged. Every pooled row has ``mean``, ``lo``, ``hi`` and
``n`` (values pooled), ``n_replicates``, what varies (``replicates``), the pooled
``values`` themselves and the ``run_ids``, so a row joins the store.

Runs that repeat one configuration (one config hash) are left out before pooling, for
the latest of them, with a warning (``selection.distinct_runs``), and runs that agree on
every param, replicate keys included, are refused: a replicate is never counted twice.
Figures drawn per run (axis panels, tables, heatmaps) keep one per run, each labelled
by its replicate value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from embsvd.figures import data as figure_data
from embsvd.figures.selection import Names, Row, distinct_runs, model_of, setting_labels
from embsvd.tracking.contract import LoggedRun, Sweep
from embsvd.tracking.replicates import CONFIDENCE, ReplicateSet, pool, replicate_sets

POOLED = ("mean", "lo", "hi", "n")  # a pooled value's columns
INTERVAL_LABEL = f"{CONFIDENCE:.0%} t interval over replicates (n-1 df)"
WHERE = "replicates"  # the setting a refusal names


def run_name(run: LoggedRun) -> str:
    return f"{run.name} (run {run.run_id})"


def pooled_sets(sweep: Sweep, keys: Sequence[str]) -> list[ReplicateSet[LoggedRun]]:
    """The sweep's runs as replicate sets over ``keys`` (see the module).

    Raises:
        ValueError: a key no run logged, a run without params, or two runs that agree
            on every param (``replicates.replicate_sets``)."""
    return replicate_sets(sweep.runs, keys, lambda run: run.params, run_name, where=WHERE)


def check_replicates(sweep: Sweep, keys: Sequence[str]) -> None:
    """Refuse, before anything is drawn, a selection whose runs cannot be pooled over
    ``keys``: the check ``write_figure_set`` would fail on, on the runs it would draw."""
    if keys:
        distinct, _ = distinct_runs(sweep, warn=False)
        pooled_sets(distinct, keys)


def collapsed(labels: Sequence[str]) -> str:
    """One label for the replicates' labels: the label they share; else, where they
    differ only after ``@`` (revisions), ``name@a|b|c``; else ``a | b | c``."""
    unique = list(dict.fromkeys(labels))
    if len(unique) == 1:
        return unique[0]
    heads = {label.partition("@")[0] for label in unique}
    if len(heads) == 1 and all("@" in label for label in unique):
        return f"{heads.pop()}@" + "|".join(label.partition("@")[2] for label in unique)
    return " | ".join(unique)


def pooled_where(sweep: Sweep, keys: Sequence[str]) -> list[tuple[ReplicateSet, Row]]:
    """Each replicate set with the columns that name it: model and group (collapsed over
    the replicates where a replicate key changes them), variant, ``setting`` (what sets
    it apart from the other sets of its panel, replicate keys left out), ``replicates``
    (what varies between its runs), ``n_replicates`` and ``run_ids``."""
    sets = pooled_sets(sweep, keys)
    names = Names.of(sweep)
    slots: dict[str, tuple[str, str, str]] = {}
    for found in sets:
        slot = (
            collapsed([model_of(r) for r in found.members]),
            collapsed([r.target for r in found.members]),
            found.members[0].variant,
        )
        slots[found.members[0].run_id] = slot
    first = [found.members[0] for found in sets]
    settings = setting_labels(first, lambda run: slots[run.run_id], ignore=tuple(keys))
    pooled = []
    for found in sets:
        run = found.members[0]
        model, group, variant = slots[run.run_id]
        where = {
            "model": model,
            "model_display": collapsed([names.models[model_of(r)] for r in found.members]),
            "group": group,
            "group_display": collapsed([names.group(r.target) for r in found.members]),
            "variant": variant,
            "setting": settings[run.run_id],
            "replicates": found.describe(),
            "n_replicates": found.n,
            "run_ids": " ".join(r.run_id for r in found.members),
        }
        pooled.append((found, where))
    return pooled


def _pooled(values: Sequence[float]) -> Row:
    found = pool(values)
    return {
        **{column: getattr(found, column) for column in POOLED},
        "values": " ".join(repr(float(v)) for v in values),
    }


def pooled_scree_rows(sweep: Sweep, keys: Sequence[str]) -> list[Row]:
    """Per replicate set and component: the share ``s_k / ||M||_F`` pooled over the
    replicates (``mean``, ``lo``, ``hi``, ``n``; ``statistic`` says which), and the
    means of their null bands (``null_share_q2.5``, ``null_share_q97.5``: nan where no
    replicate ran the null). A component some replicates lack is pooled over the rest."""
    by_run: dict[str, list[Row]] = {}
    for row in figure_data.scree_rows(sweep):
        by_run.setdefault(row["run_id"], []).append(row)
    rows = []
    for found, where in pooled_where(sweep, keys):
        spectra = [by_run.get(run.run_id, []) for run in found.members]
        for k in range(max(map(len, spectra), default=0)):
            at_k = [spectrum[k] for spectrum in spectra if k < len(spectrum)]
            rows.append(
                {
                    **where,
                    "component": k,
                    "statistic": "share",
                    **_pooled([r["normalized"] for r in at_k]),
                    "null_share_q2.5": _mean([r["null_share_q2.5"] for r in at_k]),
                    "null_share_q97.5": _mean([r["null_share_q97.5"] for r in at_k]),
                }
            )
    return rows


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def pooled_metric_rows(sweep: Sweep, keys: Sequence[str]) -> list[Row]:
    """``replicates.csv``: per replicate set and scalar metric its runs logged (sorted),
    the metric pooled over the replicates that logged it."""
    rows = []
    for found, where in pooled_where(sweep, keys):
        metrics = sorted({key for run in found.members for key in run.metrics})
        for metric in metrics:
            values = [run.metrics.get(metric, math.nan) for run in found.members]
            rows.append({**where, "metric": metric, **_pooled(values)})
    return rows


def as_drawn(row: Mapping[str, object]) -> Row:
    """A pooled scree row as ``paper.scree_figure`` draws a run's: the mean as the point,
    the t interval as its bar, ``n=<replicates>`` in the line's label."""
    setting = " · ".join(filter(None, [str(row["setting"]), f"n={row['n_replicates']}"]))
    return {
        **row,
        "run_id": row["run_ids"],
        "setting": setting,
        "normalized": row["mean"],
        "normalized_interval_lo": row["lo"],
        "normalized_interval_hi": row["hi"],
    }


def manifest(sweep: Sweep, keys: Sequence[str]) -> list[dict[str, object]]:
    """``sweep.json``'s ``pooled``: each replicate set's runs and what varies."""
    return [
        {"replicates": where["replicates"], "n": found.n, "run_ids": where["run_ids"].split()}
        for found, where in pooled_where(sweep, keys)
    ]
