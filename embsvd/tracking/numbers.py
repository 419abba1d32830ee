"""The number-structure check in the run contract: its metrics and CSV tables.

Metrics (``numbers/...``, step 0; docs/numbers.md lists them):

- ``numbers/n_run``, ``numbers/n_used``, ``numbers/n_null``, ``numbers/frequency_r2``;
- per tested period ``T``: ``numbers/T<T>/phi`` (the observed power share),
  ``numbers/T<T>/{perm,freq}_{mean,q95,p}`` (each null's mean, 95th percentile and
  p-value), ``numbers/T<T>/{perm,freq}_p_holm`` (Holm over the tested periods) and
  ``numbers/T<T>/zipf_phi`` (the log-frequency sequence's own share).

Tables: ``artifacts.NumbersTable`` (names and columns), written by ``write_numbers_tables``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from embsvd.checks.null import holm
from embsvd.checks.numbers import NumberStructure
from embsvd.groups import KeptToken
from embsvd.tracking.artifacts import NUMBERS_COLUMNS, NumbersTable, write_csv
from embsvd.tracking.contract import Metric

PREFIX = "numbers"
NULLS = ("perm", "freq")


def period_metric(period: int, statistic: str) -> str:
    """``numbers/T<period>/<statistic>``, e.g. ``numbers/T10/perm_p``."""
    return f"{PREFIX}/T{period}/{statistic}"


def numbers_metrics(structure: NumberStructure) -> list[Metric]:
    """The check's metrics (module docstring), every one at step 0."""
    metrics: list[Metric] = [
        (f"{PREFIX}/n_run", structure.n_run, 0),
        (f"{PREFIX}/n_used", structure.n_used, 0),
        (f"{PREFIX}/n_null", structure.perm.n_draws, 0),
        (f"{PREFIX}/frequency_r2", structure.frequency_r2, 0),
    ]
    where = [structure.index(period) for period in structure.periods]
    for name in NULLS:
        band = getattr(structure, name)
        adjusted = holm(band.p_value[where])
        for period, i, p_holm in zip(structure.periods, where, adjusted, strict=True):
            metrics += [
                (period_metric(period, f"{name}_mean"), band.mean[i], 0),
                (period_metric(period, f"{name}_q95"), band.q95[i], 0),
                (period_metric(period, f"{name}_p"), band.p_value[i], 0),
                (period_metric(period, f"{name}_p_holm"), p_holm, 0),
            ]
    for period, i in zip(structure.periods, where, strict=True):
        metrics += [(period_metric(period, "phi"), structure.share[i], 0)]
        metrics += [(period_metric(period, "zipf_phi"), structure.zipf_share[i], 0)]
    return [(key, float(value), step) for key, value, step in metrics]


def write_numbers_tables(
    structure: NumberStructure,
    members: Sequence[KeptToken],
    zipf: Sequence[float],
    folder: Path,
) -> list[Path]:
    """``numbers_spectrum.csv`` (a row per frequency ``k = 1 .. n_used // 2``) and
    ``numbers_members.csv`` (a row per integer of the run, ``analysed`` for the first
    ``n_used``) into ``folder``; returns their paths."""
    tested = {structure.index(period) for period in structure.periods}
    spectrum = folder / NumbersTable.SPECTRUM
    write_csv(
        spectrum,
        NUMBERS_COLUMNS[NumbersTable.SPECTRUM],
        [
            [k, period, i in tested, structure.share[i]]
            + [structure.perm.mean[i], structure.perm.q95[i], structure.perm.p_value[i]]
            + [structure.freq.mean[i], structure.freq.q95[i], structure.freq.p_value[i]]
            + [structure.zipf_share[i]]
            for i, (k, period) in enumerate(
                zip(structure.frequencies, structure.spectrum_periods, strict=True)
            )
        ],
    )
    table = folder / NumbersTable.MEMBERS
    write_csv(
        table,
        NUMBERS_COLUMNS[NumbersTable.MEMBERS],
        [
            [n, m.token, m.token_id, m.form, float(z), n < structure.n_used]
            for n, (m, z) in enumerate(zip(members, zipf, strict=True))
        ],
    )
    return [spectrum, table]
