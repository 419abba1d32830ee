"""Multi-token words in a run (``groups.<name>.subwords=mean``): the matrix that reads
their mean rows, and the flags that say they are there.

A mean of subword rows is not a token embedding (``docs/checkpoints.md``, "Multi-token
words"), so a run that uses one says so wherever a reader could miss it: the run's tag
``embsvd.multi_token``, each member's entry in ``groups.json`` (``multi_token: true``,
its subword tokens), a console warning once per sweep, and the member's label in the
per-run figures (``Czechia (mean)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from embsvd import tracking
from embsvd.groups import TokenGroup
from embsvd.io.augmented import VirtualIds, subword_mean_rows
from embsvd.tracking.contract import Tag

MULTI_TOKEN_NOTE = "mean of subword rows (not token embeddings)"


def multi_token_rows(
    W: Any,
    virtual: VirtualIds,
    groups: Mapping[str, TokenGroup],
    run: tracking.RunLogger,
    warn: Callable[[str, str], None],
    model_name: str,
) -> Any:
    """``W`` with the run's multi-token members readable by their virtual ids
    (``embsvd.io.augmented.subword_mean_rows``; ``W`` itself when there are none), the
    run tagged ``embsvd.multi_token`` and ``warn(key, message)`` called once per set of
    members (``embsvd.pipeline.job.warn_once``)."""
    rows = subword_mean_rows(W, virtual)
    described = describe_multi_token(groups)
    if described:
        run.set_tags({Tag.MULTI_TOKEN: f"{MULTI_TOKEN_NOTE}: {described}"})
        warn(
            f"multi_token {model_name} {described}",
            f"subwords=mean for model {model_name}: {described} are each read as the "
            f"{MULTI_TOKEN_NOTE}; the run is tagged {Tag.MULTI_TOKEN} and groups.json "
            "marks them",
        )
    return rows


def describe_multi_token(groups: Mapping[str, TokenGroup]) -> str:
    """``countries: Czechia (czech+##ia); ...``: every group's multi-token members, or
    ``""`` where there are none."""
    return "; ".join(
        f"{group.name}: {', '.join(f'{k.word} ({k.token})' for k in members)}"
        for group in groups.values()
        if (members := group.multi_token_members)
    )
