"""Replicates: runs that differ only in declared params, pooled as one configuration.

A replicate key is a param as runs log it (``analysis.random_state``, ``model.revision``,
``groups.sample.words``) or a prefix of params (``model``: every ``model.*`` param). Runs
whose params agree on everything else (``replicate_sets``) are the replicates of one
configuration; each value they logged is pooled (``pool``) as the mean, a 95% Student-t
interval over the replicates (``n - 1`` degrees of freedom) and their number ``n``.

Params that change no number never set runs apart (``UNDECIDING``: where runs are
logged or cached, whether figures are drawn, display names), as the config hash leaves
them out. Two runs that agree on every param, the replicate keys included, are one
configuration run twice, not two replicates: they are refused, never pooled, so that no
value counts twice. No plotting and no mlflow here: the figures and the export
(``embsvd.tracking.export.pooled_table``) call it.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

log = logging.getLogger(__name__)

CONFIDENCE = 0.95  # the pooled interval's coverage
# a replicate key: a dotted param name, as the runs' params and Hydra's overrides spell it
REPLICATE_KEY = re.compile(r"[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*")
# params that change no number: where a run is logged or cached, whether and where its
# figures are drawn, the names people read (config_hash leaves them out too)
UNDECIDING = frozenset({"cache_dir", "analysis.figures", "analysis.device"})
UNDECIDING_PREFIXES = ("tracking.", "hydra.")
UNDECIDING_SUFFIXES = (".display_name", ".description")

R = TypeVar("R")


@dataclass(frozen=True)
class Pooled:
    """Replicates' values pooled: their mean, the 95% Student-t interval of the mean
    ``mean -+ t_{0.975, n-1} * sd / sqrt(n)`` (``lo <= mean <= hi``), and ``n``, the
    number of finite values pooled. With ``n == 1`` there is no interval: ``lo`` and
    ``hi`` are nan, and ``describe`` says so; with ``n == 0`` everything is nan."""

    mean: float
    lo: float
    hi: float
    n: int

    def describe(self, digits: int = 3) -> str:
        """``0.512 [0.401, 0.623] (95% t interval, n=3)``; ``0.512 (n=1: no interval)``."""
        if self.n == 0:
            return "no value (n=0)"
        if self.n == 1:
            return f"{self.mean:.{digits}g} (n=1: no interval)"
        return f"{self.mean:.{digits}g} [{self.lo:.{digits}g}, {self.hi:.{digits}g}] " + (
            f"({CONFIDENCE:.0%} t interval, n={self.n})"
        )


def pool(values: Iterable[float], confidence: float = CONFIDENCE) -> Pooled:
    """The mean of ``values`` with its Student-t interval over them (see ``Pooled``).

    Values that are nan or infinite (a replicate that did not measure it) are left out
    and not counted in ``n``. The interval assumes the replicates independent draws of
    one distribution, near normal for small ``n``: seeds of a suite, random states.

    Args:
        values: shape (n,), one value per replicate.
        confidence: the interval's coverage, in (0, 1).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: a coverage between 0 and 1")
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return Pooled(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return Pooled(mean, math.nan, math.nan, 1)
    from scipy.stats import t as student_t  # here: 0.5-1 s of every job's start-up

    half = float(student_t.ppf((1 + confidence) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Pooled(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class ReplicateSet(Generic[R]):
    """The replicates of one configuration, in the order the runs came: each member's
    values of the replicate keys (``values``), and the params they all share
    (``shared``: the replicate keys and ``UNDECIDING`` params left out)."""

    members: tuple[R, ...]
    values: tuple[Mapping[str, str], ...]
    shared: Mapping[str, str]

    @property
    def n(self) -> int:
        return len(self.members)

    def describe(self) -> str:
        """What varies between the replicates: ``analysis.random_state=0,1,2``."""
        keys = dict.fromkeys(k for v in self.values for k in v)
        return " ".join(
            f"{key}={','.join(v.get(key, '(unset)') for v in self.values)}" for key in keys
        )


def is_replicate_param(param: str, keys: Sequence[str]) -> bool:
    """Whether ``param`` is a replicate key or lies under one (``model`` -> ``model.*``)."""
    return any(param == key or param.startswith(f"{key}.") for key in keys)


def is_deciding(param: str) -> bool:
    """Whether a param can change a run's numbers (see ``UNDECIDING``)."""
    return not (
        param in UNDECIDING
        or param.startswith(UNDECIDING_PREFIXES)
        or param.endswith(UNDECIDING_SUFFIXES)
    )


def check_replicate_keys(keys: Sequence[str], where: str = "replicates") -> tuple[str, ...]:
    """The keys as a tuple, once each, each a dotted param name; ``ValueError`` naming
    ``where`` and the key otherwise."""
    for key in keys:
        if not isinstance(key, str) or not REPLICATE_KEY.fullmatch(key):
            raise ValueError(
                f"{where}: {key!r} is not a param key; give dotted names as runs log them, "
                "e.g. [analysis.random_state] or [model.revision]"
            )
    repeated = sorted({k for k in keys if list(keys).count(k) > 1})
    if repeated:
        raise ValueError(f"{where}: {', '.join(repeated)} given twice; name each key once")
    return tuple(keys)


def replicate_sets(
    runs: Sequence[R],
    keys: Sequence[str],
    params_of: Callable[[R], Mapping[str, str]],
    name_of: Callable[[R], str],
    where: str = "replicates",
) -> list[ReplicateSet[R]]:
    """The runs grouped into replicate sets: runs whose deciding params (``is_deciding``)
    agree once the replicate ``keys`` are left out are one configuration's replicates.
    Sets come in the order of their first run; a run alone is a set of one.

    Raises:
        ValueError: a key that no run logged as a param (naming the closest params), a
            run that logged no params (what it varies is unknown), or two runs of a set
            with the same replicate values: one configuration run twice, which pooling
            would count twice (naming both runs).
    """
    keys = check_replicate_keys(keys, where)
    params = [dict(params_of(run)) for run in runs]
    for run, logged in zip(runs, params, strict=True):
        if not logged:
            raise ValueError(
                f"{where}: run {name_of(run)} logged no params, so nothing tells which "
                "replicate it is; leave it out of the selection, or draw without replicates"
            )
    logged_keys = {p for logged in params for p in logged}
    for key in keys:
        if not any(is_replicate_param(p, [key]) for p in logged_keys):
            close = difflib.get_close_matches(key, sorted(logged_keys), n=3, cutoff=0.85)
            raise ValueError(
                f"{where}: {key!r} is no param of the selected runs"
                + (f"; did you mean {' or '.join(close)}?" if close else "")
            )
    sets: dict[Hashable, list[int]] = {}
    for index, logged in enumerate(params):
        rest = tuple(
            sorted(
                (p, v)
                for p, v in logged.items()
                if is_deciding(p) and not is_replicate_param(p, keys)
            )
        )
        sets.setdefault(rest, []).append(index)
    found = [
        _replicate_set(runs, params, indices, keys, name_of, where) for indices in sets.values()
    ]
    if runs and all(s.n == 1 for s in found) and len(runs) > 1:
        log.warning(
            "%s %s: no two of the %d runs differ only in them; each is a configuration of "
            "its own (n=1, no interval)",
            where,
            ", ".join(keys),
            len(runs),
        )
    return found


def _replicate_set(
    runs: Sequence[R],
    params: list[dict[str, str]],
    indices: list[int],
    keys: tuple[str, ...],
    name_of: Callable[[R], str],
    where: str,
) -> ReplicateSet[R]:
    values = [
        {p: v for p, v in sorted(params[i].items()) if is_replicate_param(p, keys)} for i in indices
    ]
    seen: dict[tuple, int] = {}
    for index, value in zip(indices, values, strict=True):
        other = seen.setdefault(tuple(value.items()), index)
        if other != index:
            same = " ".join(f"{k}={v}" for k, v in value.items()) or "(none logged)"
            raise ValueError(
                f"{where}: runs {name_of(runs[other])} and {name_of(runs[index])} agree on "
                f"every param, the replicate keys included ({same}): one configuration run "
                "twice, not two replicates, and pooling would count it twice; select one "
                "of them (a filter), or declare the key that sets them apart"
            )
    first = params[indices[0]]
    shared = {
        p: v
        for p, v in sorted(first.items())
        if is_deciding(p)
        and not is_replicate_param(p, keys)
        and all(params[i].get(p) == v for i in indices)
    }
    return ReplicateSet(tuple(runs[i] for i in indices), tuple(values), shared)
