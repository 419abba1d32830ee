"""What a sweep's paper figures plot, as rows: read from runs as the store returned them.

Every function here takes a ``contract.Sweep`` (or one of its runs) and returns plain
rows, so each figure's CSV holds exactly the values drawn, and the values logged.

A spectrum is drawn as each component's *share* of its matrix' Frobenius norm,
``s_k / ||M||_F = s_k / sqrt(sum_j s_j**2)`` (the square root of the explained-variance
ratio): models of different width and embedding scale then share one axis. The null
band is the same statistic under the null: the 2.5 and 97.5 percentiles of the shares of
random matched groups, each draw divided by its *own* norm (the ``share`` rows of
``null_spectrum.csv``), so a point above the band is a share the random groups rarely
reach, and the band agrees with ``null/s1_share/percentile``. (Dividing the null's
singular values by the observed norm instead would put the band of groups with larger
norms above a share that beats them all.) The jackknife interval of ``s_k`` is divided by
the observed norm: an interval of ``s_k`` at the observed scale, drawn on the share axis.

Group-mean correlations are tested against the same random groups; their significance
is Benjamini-Hochberg over every test of the sweep (``benjamini_hochberg``).

Rows name their run by identifiers (joining the store) and display names
(``selection.Names``), with the ``setting`` that sets it apart from other runs of its
model, group and variant; tokens as people read them (top_tokens.csv's ``text`` where
the run logged it). A CSV's ``component`` counts from 0, as the runs' metric steps do;
a figure's from 1.
"""

from __future__ import annotations

import itertools
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embsvd.figures.selection import Names, Row, model_of, setting_labels, space_slot
from embsvd.method.analysis import MEAN_CORR_VARIANTS, mean_corr_key
from embsvd.tracking.artifacts import NULL_SHARE, Table
from embsvd.tracking.contract import LoggedRun, Sweep, null_metric, split_pair_metric

N_EXTREMES = 5  # tokens labelled at each end of an axis figure
WORD_MARKERS = ("Ġ", "▁", "##")  # BPE / SentencePiece word starts, WordPiece continuations
TEXT = "text"  # top_tokens.csv's token as people read it; runs logged before it have none

# correlation variant -> metric prefix; decorrelated is not logged for whitened runs
CORRELATION_VARIANTS = {variant: mean_corr_key(variant) for variant in MEAN_CORR_VARIANTS}
# row column -> the null metric null/<key>/<suffix> it holds
NULL_FIELDS = {"null_mean": "mean", "percentile": "percentile", "p_value": "p_value"}


def token_text(row: Mapping[str, str]) -> str:
    """A top_tokens.csv row's token as people read it (``␣the``), else its raw string."""
    return row.get(TEXT) or row["token"]


def models(sweep: Sweep) -> list[str]:
    """Model labels in the order their runs came."""
    return list(dict.fromkeys(model_of(run) for run in sweep.runs))


def targets(sweep: Sweep) -> list[str]:
    return list(dict.fromkeys(run.target for run in sweep.runs))


def variants(sweep: Sweep) -> list[str]:
    """Run variants, centered ones first (``centered``, ``raw``, ``centered+whitened``, ...)."""
    found = dict.fromkeys(run.variant for run in sweep.runs)
    return sorted(found, key=lambda v: (not v.startswith("centered"), list(found).index(v)))


def series_label(row: Mapping[str, Any]) -> str:
    """A run's line or panel as a figure names it: its variant, and its setting if any."""
    return " · ".join(filter(None, [row["variant"], row["setting"]]))


def scree_rows(sweep: Sweep) -> list[Row]:
    """Per run and component: the singular value, its Frobenius norm and share
    (``normalized``), its jackknife interval (nan where none was logged) and the null's
    95% band of shares with the observed share's null percentile (nan without a null)."""
    names = Names.of(sweep)
    rows = []
    for run in sweep.runs:
        S = run.series.get("singular_value", ())
        norm = _frobenius(S)
        null = {
            int(r["component"]): r
            for r in run.table(Table.NULL_SPECTRUM)
            if r["statistic"] == NULL_SHARE
        }
        # logged for the components that have an interval: a series shorter than S
        lo = run.series.get("interval/singular_value_lo", ())
        hi = run.series.get("interval/singular_value_hi", ())
        for k, s in enumerate(S):
            interval_lo = lo[k] if k < len(lo) else math.nan
            interval_hi = hi[k] if k < len(hi) else math.nan
            band = null.get(k, {})
            rows.append(
                {
                    **names.where(run),
                    "component": k,
                    "singular_value": s,
                    "frobenius_norm": norm,
                    "normalized": s / norm,
                    "interval_lo": interval_lo,
                    "interval_hi": interval_hi,
                    "normalized_interval_lo": interval_lo / norm,
                    "normalized_interval_hi": interval_hi / norm,
                    "null_share_q2.5": float(band.get("null_q2.5", math.nan)),
                    "null_share_q97.5": float(band.get("null_q97.5", math.nan)),
                    "null_percentile": float(band.get("percentile", math.nan)),
                }
            )
    return rows


def benjamini_hochberg(p_values: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg q-values (step-up), in the input order.

    With ``m`` p-values and ``p_(i)`` the i-th smallest (from 1), ``q_(i) =
    min_{j >= i} m p_(j) / j``, capped at 1: non-decreasing in p, and ``q < alpha``
    marks the tests a false-discovery rate of ``alpha`` keeps.

    Args:
        p_values: shape (m,), each in [0, 1].

    Returns:
        q-values, shape (m,).
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"p_values: a sequence of values in [0, 1]; got {p_values!r}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = m * p[order] / np.arange(1, m + 1)
    # step-up: each q is the smallest scaled value at its rank or above
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    q_values = np.empty(m)
    q_values[order] = np.minimum(stepped, 1.0)
    return q_values


HeatmapKey = tuple[str, str]  # (model label + space, setting)


def correlation_rows(sweep: Sweep, alpha: float) -> dict[HeatmapKey, list[Row]]:
    """Group-mean r per heatmap: model and geometry (``model`` + ``space``: centering
    does not move group means) and ``setting`` (what sets the heatmap's runs apart from
    other runs of that model and geometry, ``""`` where nothing does); per correlation
    ``variant`` (``raw``, ``centered``: the vocabulary's mean subtracted,
    ``decorrelated``: also its top global components removed) and pair, each from the
    first run that logged it, with its null mean and percentile, its permutation
    p-value, the Benjamini-Hochberg ``q_bh`` over every row of the sweep with a p-value,
    and whether ``q_bh < alpha`` (``""`` for all four where the run's null was off).
    Keyed by (model + space, setting), in run order; pairs no run logged have no row."""
    names = Names.of(sweep)
    settings = setting_labels(sweep.runs, space_slot, by_hash=False)
    rows: list[Row] = []
    seen: set[tuple[str, ...]] = set()
    for run in sweep.runs:
        model, setting = model_of(run) + run.space, settings[run.run_id]
        for variant, prefix in CORRELATION_VARIANTS.items():
            for key, r in sorted(run.metrics.items()):
                if (pair := split_pair_metric(key, prefix)) is None:
                    continue
                if (model, setting, variant, *pair) in seen:
                    continue
                seen.add((model, setting, variant, *pair))
                null = {
                    column: run.metrics.get(null_metric(key, suffix), "")
                    for column, suffix in NULL_FIELDS.items()
                }
                rows.append(
                    {
                        "model": model,
                        "model_display": " · ".join(
                            [names.models[model_of(run)], *filter(None, run.space.split("+"))]
                        ),
                        "setting": setting,
                        "variant": variant,
                        "group_a": pair[0],
                        "group_b": pair[1],
                        "group_a_display": names.group(pair[0]),
                        "group_b_display": names.group(pair[1]),
                        "r": r,
                        **null,
                        "q_bh": "",
                        "significant": "",
                        "run_id": run.run_id,
                    }
                )
    _mark_significance(rows, alpha)
    heatmaps: dict[HeatmapKey, list[Row]] = {}
    for row in rows:
        heatmaps.setdefault((row["model"], row["setting"]), []).append(row)
    return heatmaps


def _mark_significance(rows: list[Row], alpha: float) -> None:
    """Fill ``q_bh`` and ``significant`` of the rows with a finite p-value: one family."""
    tested = [r for r in rows if r["p_value"] != "" and math.isfinite(r["p_value"])]
    q_values = benjamini_hochberg([r["p_value"] for r in tested])
    for row, q in zip(tested, q_values, strict=True):
        row["q_bh"], row["significant"] = float(q), bool(q < alpha)


def n_tests(correlations: Mapping[Any, Sequence[Row]]) -> int:
    """How many group-mean correlations the sweep tested: the m of Benjamini-Hochberg."""
    return sum(r["q_bh"] != "" for rows in correlations.values() for r in rows)


def is_marked(row: Mapping[str, Any]) -> bool:
    """Whether a heatmap cell gets ``*``: significant, and its null mean and percentile
    known, so that the cell shows what r was tested against."""
    return row["significant"] is True and row["null_mean"] != "" and row["percentile"] != ""


def top_token_rows(sweep: Sweep, top_k: int) -> list[Row]:
    """The first ``top_k`` tokens at each end of every logged component, per run:
    ``token`` as stored, ``text`` as people read it."""
    names = Names.of(sweep)
    rows = []
    for run in sweep.runs:
        for r in run.table(Table.TOP_TOKENS):
            if int(r["rank"]) <= top_k:
                rows.append(
                    {
                        **names.where(run),
                        "component": int(r["component"]),
                        "side": r["side"],
                        "rank": int(r["rank"]),
                        "token": r["token"],
                        "text": token_text(r),
                        "token_id": int(r["token_id"]),
                        "projection": float(r["projection"]),
                        "in_group": r["in_group"] == "true",
                        # flagged under-trained (analysis.undertrained); older runs: never
                        "undertrained": r.get("undertrained") == "true",
                    }
                )
    return rows


def axis_rows(run: LoggedRun, names: Names) -> list[Row]:
    """Component 0 (axis 1) of one run: the histogram of the vocabulary's projections
    (``bin``), the group's words (``group``) and the extremes outside the group
    (``extreme``); ``label`` is the text drawn, ``token`` the stored token."""
    where = names.where(run)
    empty_bin = {"bin_left": "", "bin_right": "", "count": ""}
    rows = [
        {**where, "kind": "bin", "label": "", "token": "", "projection": "", **_bin(r)}
        for r in run.table(Table.PROJECTION_HISTOGRAM)
        if r["component"] == "0"
    ]
    rows += [
        {**where, "kind": "group", "label": r["word"], "token": r["word"]}
        | {"projection": float(r["projection_0"])}
        | empty_bin
        for r in run.table(Table.GROUP_PROJECTIONS)
    ]
    rows += [
        {**where, "kind": "extreme", "label": token_text(r), "token": r["token"]}
        | {"projection": float(r["projection"])}
        | empty_bin
        for r in run.table(Table.TOP_TOKENS)
        if r["component"] == "0" and r["in_group"] != "true" and int(r["rank"]) <= N_EXTREMES
    ]
    return rows


def _bin(r: Mapping[str, str]) -> Row:
    return {
        "bin_left": float(r["bin_left"]),
        "bin_right": float(r["bin_right"]),
        "count": int(r["count"]),
    }


def normalize_token(token: str) -> str:
    """A token as a word, comparable across vocabularies: NFKC, without a word-start or
    continuation marker, lower case (``ĠFrance``, ``▁France``, ``france`` -> ``france``)."""
    text = unicodedata.normalize("NFKC", token)
    for marker in WORD_MARKERS:
        text = text.removeprefix(marker)
    return text.strip().lower()


@dataclass(frozen=True)
class _Ends:
    top: frozenset[str]
    bottom: frozenset[str]


def _ends(run: LoggedRun, component: int, top_k: int) -> _Ends:
    sides: dict[str, set[str]] = {"top": set(), "bottom": set()}
    for r in run.table(Table.TOP_TOKENS):
        if int(r["component"]) == component and int(r["rank"]) <= top_k:
            sides[r["side"]].add(normalize_token(r["token"]))
    return _Ends(frozenset(sides["top"]), frozenset(sides["bottom"]))


def _comparable(sweep: Sweep, names: Names) -> dict[tuple[str, str, str], dict[str, LoggedRun]]:
    """(group, variant, setting) -> {model: run} where more than one model has the run."""
    cells: dict[tuple[str, str, str], dict[str, LoggedRun]] = {}
    for run in sweep.runs:
        cell = (run.target, run.variant, names.settings.get(run.run_id, ""))
        cells.setdefault(cell, {}).setdefault(model_of(run), run)
    return {cell: runs for cell, runs in cells.items() if len(runs) > 1}


def cross_model_overlap_rows(sweep: Sweep, top_k: int) -> list[Row]:
    """Per (group, variant, setting, component, pair of models): the share of the two
    axes' top-``top_k`` tokens (both ends, as normalised strings) that they share. An
    axis' sign is arbitrary, so the ends are matched in the orientation that shares more."""
    names = Names.of(sweep)
    rows = []
    for (group, variant, setting), runs in _comparable(sweep, names).items():
        for (model_a, run_a), (model_b, run_b) in itertools.combinations(runs.items(), 2):
            n_components = min(_n_components(run_a), _n_components(run_b))
            for k in range(n_components):
                a, b = _ends(run_a, k, top_k), _ends(run_b, k, top_k)
                same = (a.top & b.top) | (a.bottom & b.bottom)
                flipped = (a.top & b.bottom) | (a.bottom & b.top)
                shared, orientation = (
                    (same, "same") if len(same) >= len(flipped) else (flipped, "flipped")
                )
                size = min(len(a.top) + len(a.bottom), len(b.top) + len(b.bottom))
                rows.append(
                    {
                        "group": group,
                        "group_display": names.group(group),
                        "variant": variant,
                        "setting": setting,
                        "component": k,
                        "model_a": model_a,
                        "model_b": model_b,
                        "model_a_display": names.models[model_a],
                        "model_b_display": names.models[model_b],
                        "k": top_k,
                        "n_shared": len(shared),
                        "overlap": len(shared) / size if size else math.nan,
                        "orientation": orientation,
                        "shared": " ".join(sorted(shared)),
                    }
                )
    return rows


def _n_components(run: LoggedRun) -> int:
    return len({r["component"] for r in run.table(Table.TOP_TOKENS)})


def cross_model_spectra_rows(sweep: Sweep) -> list[Row]:
    """The normalised spectra of every (group, variant, setting) that several models
    have, and each model's distance from the first model's: half the L1 distance
    between their explained-variance ratios (0: the same shape, 1: disjoint)."""
    names = Names.of(sweep)
    rows = []
    for _, runs in _comparable(sweep, names).items():
        reference = _ratios(next(iter(runs.values())).series.get("singular_value", ()))
        for run in runs.values():
            S = run.series.get("singular_value", ())
            ratios = _ratios(S)
            n = min(len(ratios), len(reference))
            distance = 0.5 * sum(abs(ratios[i] - reference[i]) for i in range(n))
            norm = _frobenius(S)
            for k, s in enumerate(S):
                rows.append(
                    {
                        **names.where(run),
                        "component": k,
                        "singular_value": s,
                        "normalized": s / norm,
                        "distance_from_first_model": distance,
                    }
                )
    return rows


def _frobenius(S: Sequence[float]) -> float:
    """The norm of the matrix whose singular values are ``S``."""
    return math.sqrt(sum(s * s for s in S))


def _ratios(S: Sequence[float]) -> list[float]:
    """Explained-variance ratios ``s_k**2 / sum_j s_j**2``."""
    norm = _frobenius(S)
    return [(s / norm) ** 2 for s in S]
