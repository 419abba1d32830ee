"""A concept axis in the run contract: its metrics, tags and CSV tables.

Metrics (``concept/...``, step 0; docs/contract.md lists them):

- ``concept/n_pairs`` (pairs kept; for sets, the smaller set's words), ``concept/n_dropped``;
- ``concept/first_pc_share``, ``concept/consistency``, ``concept/separation``;
- ``concept/loo_abs_cos_min``: the least ``|cos|`` of a leave-one-out axis with the axis;
- with the random-pair null: ``concept/null/n_null`` and
  ``concept/null/{first_pc_share,consistency}/{mean,q95,percentile,p_value}``;
- ``concept/axis_cos/<other>`` and ``concept/axis_cos_whitened/<other>``: the axis'
  cosine with every other configured concept's axis, in each geometry.

Tables: ``artifacts.ConceptTable`` (names and columns), written by
``write_concept_tables``; the kept and dropped pairs as ``concept.json``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embsvd.checks.concept_null import ConceptResult
from embsvd.tracking.artifacts import (
    CONCEPT_COLUMNS,
    CONCEPT_JSON,
    PROJECTION_BINS,
    ConceptTable,
    header_of,
    write_csv,
)
from embsvd.tracking.contract import TOP_TOKENS_IN_TAGS, Metric, Tag

if TYPE_CHECKING:
    from embsvd.tracking.runs import RunLogger

PREFIX = "concept"
STATISTICS = ("first_pc_share", "consistency")
NULL_FIELDS = ("mean", "q95", "percentile", "p_value")
GEOMETRY_PREFIX = {"euclidean": "axis_cos", "whitened": "axis_cos_whitened"}


def concept_metrics(result: ConceptResult) -> list[Metric]:
    """The concept's metrics (module docstring), every one at step 0."""
    concept, axis = result.concept, result.axis
    metrics: list[Metric] = [
        (f"{PREFIX}/n_pairs", min(len(concept.negative), len(concept.positive)), 0),
        (f"{PREFIX}/n_dropped", len(concept.dropped), 0),
        (f"{PREFIX}/first_pc_share", axis.first_pc_share, 0),
        (f"{PREFIX}/consistency", axis.consistency, 0),
        (f"{PREFIX}/separation", axis.separation, 0),
        (f"{PREFIX}/loo_abs_cos_min", result.stability.min_abs_cos, 0),
    ]
    if (null := result.null) is not None:
        metrics += [(f"{PREFIX}/null/n_null", null.n_null, 0)]
        for statistic in STATISTICS:
            summary = getattr(null, statistic)
            metrics += [
                (f"{PREFIX}/null/{statistic}/{field}", getattr(summary, field), 0)
                for field in NULL_FIELDS
            ]
    for geometry, (names, cosines) in result.cosines.items():
        if concept.name not in names:
            continue
        row = names.index(concept.name)
        metrics += [
            (f"{PREFIX}/{GEOMETRY_PREFIX[geometry]}/{other}", cosines[row, j], 0)
            for j, other in enumerate(names)
            if other != concept.name
        ]
    return [(key, float(value), step) for key, value, step in metrics]


def concept_tags(result: ConceptResult) -> dict[str, str]:
    """Which concept, its estimator and its axis' first tokens at each end."""
    ends = {
        side: " ".join(
            t.text for t in result.top_tokens if t.side == side and t.rank <= TOP_TOKENS_IN_TAGS
        )
        for side in ("top", "bottom")
    }
    tags = {
        Tag.CONCEPT: result.concept.name,
        Tag.CONCEPT_ESTIMATOR: str(result.axis.estimator),
        Tag.CONCEPT_POSITIVE_END: ends["top"],
        Tag.CONCEPT_NEGATIVE_END: ends["bottom"],
    }
    if result.null is not None:
        tags[Tag.CONCEPT_NULL_MATCH] = result.null.match
    return tags


def write_concept_tables(result: ConceptResult, folder: Path) -> list[Path]:
    """Every concept CSV (``ConceptTable``) and ``concept.json`` into ``folder``."""
    concept, axis = result.concept, result.axis
    poles = {"top": concept.positive_pole, "bottom": concept.negative_pole}
    members = set(concept.token_ids)
    tables: dict[ConceptTable, list[list]] = {
        ConceptTable.TOP_TOKENS: [
            [t.side, poles[t.side], t.rank, t.token_id, t.token, t.text, t.projection]
            + [t.token_id in members]
            for t in result.top_tokens
        ],
        ConceptTable.PAIRS: _pair_rows(result),
        ConceptTable.LOO: [
            [unit, cos]
            for unit, cos in zip(result.stability.units, result.stability.abs_cos, strict=True)
        ],
        ConceptTable.NULL: [],
        ConceptTable.COSINES: [
            [geometry, a, b, cosines[i, j]]
            for geometry, (names, cosines) in result.cosines.items()
            for i, a in enumerate(names)
            for j, b in enumerate(names)
        ],
    }
    if (null := result.null) is not None:
        tables[ConceptTable.NULL] = [
            [name, s.observed, s.mean, s.q95, s.percentile, s.p_value, null.n_null]
            for name in STATISTICS
            for s in [getattr(null, name)]
        ]
    counts, edges = np.histogram(result.projections, bins=PROJECTION_BINS)
    tables[ConceptTable.PROJECTION_HISTOGRAM] = [
        [edges[i], edges[i + 1], int(c)] for i, c in enumerate(counts)
    ]
    written = []
    for table, rows in tables.items():
        write_csv(folder / table, header_of(CONCEPT_COLUMNS[table]), rows)
        written.append(folder / table)
    payload = {concept.name: {**concept.to_dict(), "axis_estimator": str(axis.estimator)}}
    (folder / CONCEPT_JSON).write_text(json.dumps(payload, indent=2, ensure_ascii=False))
    return [*written, folder / CONCEPT_JSON]


def _pair_rows(result: ConceptResult) -> list[list]:
    """Each pair (sets: each negative-positive cross pair, row-major) on the axis."""
    concept, projections = result.concept, result.projections
    if concept.paired:
        combos = list(zip(concept.negative, concept.positive, strict=True))
    else:
        combos = [(n, p) for n in concept.negative for p in concept.positive]
    return [
        [n.word, n.token_id, p.word, p.token_id, projections[n.token_id]]
        + [projections[p.token_id], cos]
        for (n, p), cos in zip(combos, result.axis.difference_cos, strict=True)
    ]


def log_concept_result(run: RunLogger, result: ConceptResult) -> None:
    """The concept's metrics, tags and tables into ``run``."""
    run.log_metrics(concept_metrics(result))
    run.set_tags(concept_tags(result))
    with tempfile.TemporaryDirectory() as scratch:
        write_concept_tables(result, Path(scratch))
        run.log_folder(Path(scratch))
