"""A run's concept axis (``concept`` set): the concept analysed on the run's matrix, the
configured concepts' axes compared in both geometries, all logged with the run.

Called from ``job._analyse_and_log`` once the target's analysis is logged; with
``concept: null`` it returns at once and the run is what it was without concepts.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np

from embsvd import figures
from embsvd.checks.concept_null import ConceptResult, analyse_concept
from embsvd.groups import TokenForms
from embsvd.io.spec import Checkpoint
from embsvd.method import geometry
from embsvd.method.concepts import (
    ConceptTokens,
    axis_cosines,
    concept_axis,
    describe_dropped_pairs,
    select_concept_tokens,
)
from embsvd.tracking import concepts as concept_tracking

log = logging.getLogger(__name__)


def log_concept(
    settings: Any,
    run: Any,
    checkpoint: Checkpoint,
    forms: TokenForms,
    W: Any,
    undertrained_ids: Collection[int] | None = None,
) -> ConceptResult | None:
    """Analyse ``settings.concept`` on ``W`` (the run's matrix, in the run's geometry) and
    log it into ``run``: metrics ``concept/...``, the tags, the CSV tables and
    ``concept.json``, and with ``analysis.figures=true`` the cosine heatmaps under
    ``figures/``. ``None`` (nothing done) without a concept.

    The cosines between concept axes are measured on the checkpoint's rows (unit rows
    with ``analysis.normalize_rows``) in the Euclidean geometry and whitened with the
    run's whitening settings, whatever the run's own geometry, each concept with its
    own estimator. Tokens flagged under-trained (``undertrained_ids``) are never drawn
    by the random-pair null. A configured concept other than the analysed one that keeps too few
    pairs for this tokenizer is left out of the cosines, with a warning.

    Raises:
        ValueError: the analysed concept keeps too few single-token pairs.
    """
    if settings.concept is None:
        return None
    analysis, model = settings.analysis, settings.model
    kept = _concept_tokens(settings, forms)
    target = kept[settings.concept]
    if target.dropped:
        log.info("concepts.%s dropped %s", target.name, describe_dropped_pairs(target))
    result = analyse_concept(
        W,
        target,
        checkpoint.vocabulary,
        top_k=analysis.top_k,
        n_null=analysis.n_null,
        null_match=str(analysis.null_match),
        null_neighbours=analysis.null_neighbours,
        random_state=analysis.random_state,
        undertrained_ids=undertrained_ids or (),
    )
    result = dataclasses.replace(result, cosines=concept_cosines(checkpoint, analysis, kept))
    concept_tracking.log_concept_result(run, result)
    if analysis.figures is True:  # deferred: the figures command draws the run's own only
        with tempfile.TemporaryDirectory() as scratch:
            figures.draw_concept_figures(result, model.display or model.name, Path(scratch))
            run.log_folder(Path(scratch), "figures")
    return result


def _concept_tokens(settings: Any, forms: TokenForms) -> dict[str, ConceptTokens]:
    """Every configured concept after the single-token rule; the analysed one must pass."""
    kept = {}
    for name, spec in settings.concepts.items():
        try:
            kept[name] = select_concept_tokens(name, spec, forms, settings.model.name)
        except ValueError as error:
            if name == settings.concept:
                raise
            log.warning("concept axes' cosines leave out %s: %s", name, error)
    return kept


def concept_cosines(
    checkpoint: Checkpoint, analysis: Any, kept: dict[str, ConceptTokens]
) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
    """``{"euclidean": (names, cosines), "whitened": (names, cosines)}`` of the concepts'
    axes (see ``log_concept``)."""
    base = geometry.unit_rows(checkpoint.W) if analysis.normalize_rows else checkpoint.W
    whitening = geometry.checkpoint_whitening(
        checkpoint,
        base,
        normalize_rows=analysis.normalize_rows,
        shrinkage=analysis.whitening_shrinkage,
    )
    axes: dict[str, dict[str, np.ndarray]] = {"euclidean": {}, "whitened": {}}
    for name, concept in kept.items():
        negative = np.asarray(base[concept.negative_ids], dtype=np.float64)
        positive = np.asarray(base[concept.positive_ids], dtype=np.float64)
        for space, (neg, pos) in {
            "euclidean": (negative, positive),
            "whitened": (whitening.apply(negative), whitening.apply(positive)),
        }.items():
            axes[space][name] = concept_axis(neg, pos, concept.estimator, concept.paired).axis
    return {space: axis_cosines(found) for space, found in axes.items()}
