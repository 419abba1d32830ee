"""The number-structure check of a run (``numbers.enabled``): the integer tokens'
Fourier power over their order against the two nulls, logged with the run
(docs/numbers.md)."""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embsvd import figures, tracking
from embsvd.checks.numbers import NumberStructure, integer_run, number_structure, usable_length
from embsvd.groups import TokenForms
from embsvd.io.spec import Checkpoint

if TYPE_CHECKING:
    from embsvd.pipeline.config import EmbsvdConfig

log = logging.getLogger(__name__)


def log_numbers(
    settings: EmbsvdConfig,
    run: tracking.RunLogger,
    checkpoint: Checkpoint,
    forms: TokenForms,
    W: Any,
) -> NumberStructure | None:
    """Find the integers ``0 .. N-1`` the tokenizer keeps whole in ``numbers.form``,
    test their rows of ``W`` (the matrix the run analyses, in its geometry) for power at
    ``numbers.periods``, and log metrics, tables and (with ``analysis.figures=true``) the
    figure to ``run``. Where the run of integers is shorter than ``lcm(periods)`` nothing
    can be tested: a warning, and only ``numbers/n_run`` and ``numbers/n_used`` (0)."""
    numbers = settings.numbers
    members = integer_run(forms, numbers.form, numbers.max_value)
    if usable_length(len(members), numbers.periods) == 0:
        log.warning(
            "numbers: %s keeps only the integers 0..%d whole in form %s, fewer than the "
            "lcm(periods) = %d its periods %s need; nothing tested (try numbers.form=bare "
            "or auto, or shorter periods)",
            settings.model.name,
            len(members) - 1,
            numbers.form,
            math.lcm(*numbers.periods),
            list(numbers.periods),
        )
        run.log_metrics([("numbers/n_run", len(members), 0), ("numbers/n_used", 0, 0)])
        return None
    ids = [m.token_id for m in members]
    rows = np.asarray(W[ids], dtype=np.float64)
    zipf = checkpoint.vocabulary.frequencies.zipf[ids]
    structure = number_structure(
        rows, zipf, numbers.periods, numbers.n_null, settings.analysis.random_state
    )
    trends = [period for period in numbers.periods if 2 * period > structure.n_used]
    if trends:  # SmolLM2 keeps only 0..9 whole: period 10 is then the slowest trend
        log.warning(
            "numbers: %s keeps the integers 0..%d; periods %s span fewer than two cycles, so "
            "their share measures a trend over the integers, not a repeated pattern",
            settings.model.name,
            structure.n_used - 1,
            trends,
        )
    run.log_metrics(tracking.numbers_metrics(structure))
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        tracking.write_numbers_tables(structure, members, zipf, folder)
        run.log_folder(folder)
    if settings.analysis.figures is True:  # deferred: not drawn (docs/numbers.md)
        with tempfile.TemporaryDirectory() as scratch:
            title = f"{settings.model.display} · integers in form {numbers.form}"
            figures.draw_numbers_figure(structure, title, Path(scratch))
            run.log_folder(Path(scratch), "figures")
    return structure
