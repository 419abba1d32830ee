"""A run's record of the under-trained tokens of its checkpoint (``embsvd.io.undertrained``):
two metrics, a tag saying which matrix, reference set and rule, and ``undertrained.csv``
(the reference and the flagged tokens with their indicators, highest first).

The tokens are found once per checkpoint; every run on it records them, so that a run
read alone says which tokens its null left out and its extremes mark.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embsvd.io.undertrained import UndertrainedTokens
from embsvd.io.vocabulary import Vocabulary
from embsvd.tracking.artifacts import Table, header, write_csv
from embsvd.tracking.contract import Metric, Tag

if TYPE_CHECKING:  # runs imports mlflow: not loaded where only the config is read
    from embsvd.tracking.runs import RunLogger

N_FLAGGED = "undertrained/n_flagged"
N_REFERENCE = "undertrained/n_reference"


def undertrained_metrics(found: UndertrainedTokens) -> list[Metric]:
    """``undertrained/n_flagged`` (ordinary tokens the rule flags; 0 where it is not
    valid) and ``undertrained/n_reference`` (the reference set's size)."""
    return [(N_FLAGGED, len(found.flagged_ids), 0), (N_REFERENCE, len(found.reference_ids), 0)]


def undertrained_rows(found: UndertrainedTokens, vocab: Vocabulary) -> list[list]:
    """``undertrained.csv``'s rows: every reference (``kind`` reference) and flagged
    (``flagged``) token, its string, its text as people read it and its indicator (a
    reference token's is leave-one-out), highest indicator first."""
    kinds = {int(i): "reference" for i in found.reference_ids}
    kinds |= {int(i): "flagged" for i in found.flagged_ids}
    ids = sorted(kinds, key=lambda i: (-np.nan_to_num(found.indicator[i], nan=-2.0), i))
    return [
        [i, vocab.token_strings[i], vocab.display_text(i), float(found.indicator[i]), kinds[i]]
        for i in ids
    ]


def log_undertrained(
    run: RunLogger, found: UndertrainedTokens, vocab: Vocabulary, matrix: str
) -> None:
    """Log ``found`` with ``run``: metrics, the ``embsvd.undertrained`` tag (``matrix``:
    which matrix the indicator was computed on, then the rule) and ``undertrained.csv``."""
    run.log_metrics(undertrained_metrics(found))
    run.set_tags({Tag.UNDERTRAINED: f"{matrix}; {found.rule}"})
    run.log_text(_table_text(found, vocab), Table.UNDERTRAINED)


def _table_text(found: UndertrainedTokens, vocab: Vocabulary) -> str:
    """``undertrained.csv``'s text, written once per process for the tokens ``found`` on
    a checkpoint and kept for a sweep's next run on it (``found`` and ``vocab`` are the
    checkpoint's own, remembered per checkpoint: held here, so their ids stay theirs)."""
    if _TABLE and _TABLE[0] is found and _TABLE[1] is vocab:
        return _TABLE[2]
    with tempfile.TemporaryDirectory() as scratch:
        file = Path(scratch) / Table.UNDERTRAINED
        write_csv(file, header(Table.UNDERTRAINED), undertrained_rows(found, vocab))
        text = file.read_bytes().decode("utf-8")  # write_csv's \r\n kept
    _TABLE[:] = [found, vocab, text]
    return text


_TABLE: list = []  # [found, vocab, text] of the last checkpoint's table
