"""What a sweep's paper figures plot, as rows: read from runs as the store returned them.

Every function here takes a ``contract.Sweep`` (or one of its runs) and returns plain
rows, so each figure's CSV holds exactly the values drawn, and the values logged. A
spectrum is normalised by its Frobenius norm, ``s_k / sqrt(sum_j s_j**2)`` (the square
root of the explained-variance ratio): models of different width and embedding scale then
share one axis; the null band and the bootstrap interval are divided by the same norm.
"""

from __future__ import annotations

import itertools
import math
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embsvd.contract import LoggedRun, Sweep

N_EXTREMES = 5  # tokens labelled at each end of an axis figure
WORD_MARKERS = ("Ġ", "▁", "##")  # BPE / SentencePiece word starts, WordPiece continuations

Row = dict[str, Any]


def models(sweep: Sweep) -> list[str]:
    """Model labels in the order their runs came."""
    return list(dict.fromkeys(run.model_label for run in sweep.runs))


def targets(sweep: Sweep) -> list[str]:
    return list(dict.fromkeys(run.target for run in sweep.runs))


def variants(sweep: Sweep) -> list[str]:
    """Run variants, centered ones first (``centered``, ``raw``, ``centered+whitened``, ...)."""
    found = dict.fromkeys(run.variant for run in sweep.runs)
    return sorted(found, key=lambda v: (not v.startswith("centered"), list(found).index(v)))


def scree_rows(sweep: Sweep) -> list[Row]:
    """Per run and component: the singular value, its bootstrap interval and the matched
    null's 95% band (as logged), their Frobenius norm and the normalised values drawn."""
    rows = []
    for run in sweep.runs:
        S = run.series.get("singular_value", ())
        norm = _frobenius(S)
        band = {
            int(r["component"]): (float(r["null_q2.5"]), float(r["null_q97.5"]))
            for r in run.table("null_spectrum.csv")
            if r["statistic"] == "singular_value"
        }
        lo = run.series.get("bootstrap/singular_value_lo", ())
        hi = run.series.get("bootstrap/singular_value_hi", ())
        for k, s in enumerate(S):
            null_lo, null_hi = band.get(k, (math.nan, math.nan))
            boot_lo = lo[k] if k < len(lo) else math.nan
            boot_hi = hi[k] if k < len(hi) else math.nan
            rows.append(
                {
                    **_where(run),
                    "component": k,
                    "singular_value": s,
                    "bootstrap_lo": boot_lo,
                    "bootstrap_hi": boot_hi,
                    "null_q2.5": null_lo,
                    "null_q97.5": null_hi,
                    "frobenius_norm": norm,
                    "normalized": s / norm,
                    "normalized_bootstrap_lo": boot_lo / norm,
                    "normalized_bootstrap_hi": boot_hi / norm,
                    "normalized_null_q2.5": null_lo / norm,
                    "normalized_null_q97.5": null_hi / norm,
                }
            )
    return rows


def correlation_rows(sweep: Sweep, alpha: float) -> dict[str, list[Row]]:
    """Group-mean r per model (and geometry: centering does not move group means), each
    pair from the first run that logged it, with its Holm-corrected p-value and whether
    it passes ``alpha`` (empty when the run's null was off). Keyed by model label."""
    spaces: dict[str, list[Row]] = {}
    for run in sweep.runs:
        rows = spaces.setdefault(run.model_label + run.space, [])
        seen = {(r["group_a"], r["group_b"]) for r in rows}
        for key, r in sorted(run.metrics.items()):
            if not key.startswith("group_mean_corr/"):
                continue
            pair = tuple(key.removeprefix("group_mean_corr/").split("__"))
            if pair in seen:
                continue
            p_holm = run.metrics.get(f"null/{key}/p_holm")
            rows.append(
                {
                    "model": run.model_label + run.space,
                    "group_a": pair[0],
                    "group_b": pair[1],
                    "r": r,
                    "p_holm": p_holm if p_holm is not None else "",
                    "significant": (p_holm < alpha) if p_holm is not None else "",
                    "run_id": run.run_id,
                }
            )
    return {model: rows for model, rows in spaces.items() if rows}


def top_token_rows(sweep: Sweep, top_k: int) -> list[Row]:
    """The first ``top_k`` tokens at each end of every logged component, per run."""
    rows = []
    for run in sweep.runs:
        for r in run.table("top_tokens.csv"):
            if int(r["rank"]) <= top_k:
                rows.append(
                    {
                        **_where(run),
                        "component": int(r["component"]),
                        "side": r["side"],
                        "rank": int(r["rank"]),
                        "token": r["token"],
                        "token_id": int(r["token_id"]),
                        "projection": float(r["projection"]),
                        "in_group": r["in_group"] == "true",
                    }
                )
    return rows


def axis_rows(run: LoggedRun) -> list[Row]:
    """Component 1 of one run: the histogram of the vocabulary's projections (``bin``),
    the group's words (``group``) and the extremes outside the group (``extreme``)."""
    rows = [
        {**_where(run), "kind": "bin", "label": "", "projection": "", **_bin(r)}
        for r in run.table("projection_histogram.csv")
        if r["component"] == "0"
    ]
    empty_bin = {"bin_left": "", "bin_right": "", "count": ""}
    rows += [
        {**_where(run), "kind": "group", "label": r["word"], "projection": float(r["projection_0"])}
        | empty_bin
        for r in run.table("group_projections.csv")
    ]
    rows += [
        {
            **_where(run),
            "kind": "extreme",
            "label": r["token"],
            "projection": float(r["projection"]),
        }
        | empty_bin
        for r in run.table("top_tokens.csv")
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
    for r in run.table("top_tokens.csv"):
        if int(r["component"]) == component and int(r["rank"]) <= top_k:
            sides[r["side"]].add(normalize_token(r["token"]))
    return _Ends(frozenset(sides["top"]), frozenset(sides["bottom"]))


def _comparable(sweep: Sweep) -> dict[tuple[str, str], dict[str, LoggedRun]]:
    """(group, variant) -> {model: run} where more than one model has the run."""
    cells: dict[tuple[str, str], dict[str, LoggedRun]] = {}
    for run in sweep.runs:
        cells.setdefault((run.target, run.variant), {}).setdefault(run.model_label, run)
    return {cell: runs for cell, runs in cells.items() if len(runs) > 1}


def cross_model_overlap_rows(sweep: Sweep, top_k: int) -> list[Row]:
    """Per (group, variant, component, pair of models): the share of the two axes'
    top-``top_k`` tokens (both ends, as normalised strings) that they share. An axis'
    sign is arbitrary, so the ends are matched in the orientation that shares more."""
    rows = []
    for (group, variant), runs in _comparable(sweep).items():
        for (model_a, run_a), (model_b, run_b) in itertools.combinations(runs.items(), 2):
            n_components = min(_n_components(run_a), _n_components(run_b))
            for k in range(n_components):
                a, b = _ends(run_a, k, top_k), _ends(run_b, k, top_k)
                same = (a.top & b.top) | (a.bottom & b.bottom)
                flipped = (a.top & b.bottom) | (a.bottom & b.top)
                shared, orientation = (
                    (same, "same")
                    if len(same) >= len(flipped)
                    else (
                        flipped,
                        "flipped",
                    )
                )
                size = min(len(a.top) + len(a.bottom), len(b.top) + len(b.bottom))
                rows.append(
                    {
                        "group": group,
                        "variant": variant,
                        "component": k,
                        "model_a": model_a,
                        "model_b": model_b,
                        "k": top_k,
                        "n_shared": len(shared),
                        "overlap": len(shared) / size if size else math.nan,
                        "orientation": orientation,
                        "shared": " ".join(sorted(shared)),
                    }
                )
    return rows


def _n_components(run: LoggedRun) -> int:
    return len({r["component"] for r in run.table("top_tokens.csv")})


def cross_model_spectra_rows(sweep: Sweep) -> list[Row]:
    """The normalised spectra of every (group, variant) that several models have, and
    each model's distance from the first model's: half the L1 distance between their
    explained-variance ratios (0: the same shape, 1: disjoint)."""
    rows = []
    for (group, variant), runs in _comparable(sweep).items():
        reference = _ratios(next(iter(runs.values())).series.get("singular_value", ()))
        for model, run in runs.items():
            S = run.series.get("singular_value", ())
            ratios = _ratios(S)
            n = min(len(ratios), len(reference))
            distance = 0.5 * sum(abs(ratios[i] - reference[i]) for i in range(n))
            norm = _frobenius(S)
            for k, s in enumerate(S):
                rows.append(
                    {
                        "group": group,
                        "variant": variant,
                        "model": model,
                        "run_id": run.run_id,
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


def _where(run: LoggedRun) -> Row:
    return {
        "model": run.model_label,
        "group": run.target,
        "variant": run.variant,
        "run_id": run.run_id,
    }
