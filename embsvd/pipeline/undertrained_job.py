"""A job's under-trained tokens (``analysis.undertrained``): found on the checkpoint's
output matrix where it has one, once per checkpoint, and logged with the run; the ids go
to the checks (left out of the null's pools) and to the extremes (marked).

Which matrix: the unembedding ``W_U`` is what a token's training signal shapes most
directly (every step pushes all its rows, so a row that never is the target keeps
drifting one way), so it is used where the checkpoint has one: the analysed matrix when
the run reads ``model.matrix=output`` or the two are tied, else ``W_U`` read beside it;
the input embedding when the checkpoint has none (an encoder such as MiniLM).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from embsvd.io.checkpoint import load_checkpoint
from embsvd.io.spec import Checkpoint, CheckpointSpec
from embsvd.io.undertrained import checkpoint_undertrained
from embsvd.tracking.undertrained import log_undertrained

if TYPE_CHECKING:  # runs imports mlflow: not loaded where only the config is read
    from embsvd.tracking.runs import RunLogger

log = logging.getLogger(__name__)

# the output matrix read beside an input one (untied checkpoints), for a sweep's next job
_OUTPUT: dict[str, Checkpoint] = {}


def undertrained_ids(
    spec: CheckpointSpec, checkpoint: Checkpoint, cache_dir: Path | None, run: RunLogger
) -> frozenset[int]:
    """The tokens flagged under-trained (with the reference tokens) of ``checkpoint``,
    logged with ``run`` (``embsvd.tracking.undertrained``)."""
    source, matrix = indicator_matrix(spec, checkpoint, cache_dir)
    found = checkpoint_undertrained(source)
    log_undertrained(run, found, checkpoint.vocabulary, matrix)
    said = f"{spec.name}: {found.rule}"
    if found.valid and said not in _SAID:  # once per process and checkpoint, not per job
        _SAID.add(said)
        log.info("under-trained tokens of %s", said)
    return found.excluded_ids


_SAID: set[str] = set()  # what this process has said of a checkpoint's under-trained tokens


def indicator_matrix(
    spec: CheckpointSpec, checkpoint: Checkpoint, cache_dir: Path | None
) -> tuple[Checkpoint, str]:
    """The checkpoint whose matrix the indicator is computed on, and what it is in words
    (the start of the ``embsvd.undertrained`` tag)."""
    if checkpoint.matrix == "output":
        return checkpoint, f"output matrix {checkpoint.tensor_key}"
    if checkpoint.tied:
        return checkpoint, f"output matrix (tied: {checkpoint.tensor_key})"
    if checkpoint.tied is None:
        return checkpoint, f"input embedding {checkpoint.tensor_key} (no output matrix read)"
    key = json.dumps([dataclasses.asdict(spec), str(cache_dir), checkpoint.weights_sha256])
    if key not in _OUTPUT:
        _OUTPUT.clear()  # one kept: W_U is memory-mapped, but a sweep moves on
        _OUTPUT[key] = load_checkpoint(dataclasses.replace(spec, matrix="output"), cache_dir)
    output = _OUTPUT[key]
    if output.d_vocab != checkpoint.d_vocab:
        return checkpoint, (
            f"input embedding {checkpoint.tensor_key} (the output matrix "
            f"{output.tensor_key} has {output.d_vocab} rows, not {checkpoint.d_vocab})"
        )
    return output, f"output matrix {output.tensor_key}"
