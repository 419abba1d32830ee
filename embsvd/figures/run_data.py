"""What a run's quick-look figures show (``run_figures``), as one record: from an analysis
and its checks, or from what a run logged (its tables, metrics and interval series).

The numbers are computed as the run's tables log them (``embsvd.tracking.artifacts``:
the null's band by the same percentiles, the histogram by the same bins), and the tables
hold floats at full precision: a run whose figures are drawn later from its tables
(``analysis.figures=deferred``) gets the record, and so the pixels, it would have got
with the analysis in hand. No matplotlib here: the pipeline reads which tables to fetch
without importing it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from embsvd.checks.order import CyclicOrder, LinearOrder
from embsvd.checks.run import ChecksResult
from embsvd.io.augmented import multi_token_text
from embsvd.method.analysis import AnalysisResult
from embsvd.tracking.artifacts import NULL_QUANTILES, NULL_SHARE, PROJECTION_BINS, Table
from embsvd.tracking.contract import LoggedRun, Tag, order_metrics

N_EXTREMES_LABELLED = 5  # tokens named at each end of the projection figure
UNDERTRAINED_MARK = " †"  # after the label of a token flagged under-trained
INTERVAL_SERIES = ("interval/singular_value_lo", "interval/singular_value_hi")
# the CSV artifacts a run's figures are drawn from, with its metrics and INTERVAL_SERIES
RUN_FIGURE_TABLES = (
    Table.SPECTRUM,
    Table.NULL_SPECTRUM,
    Table.GROUP_MEAN_CORR,
    Table.ROW_COSINE,
    Table.PROJECTION_HISTOGRAM,
    Table.GROUP_PROJECTIONS,
    Table.TOP_TOKENS,
    Table.ORDER,
)
REQUIRED_TABLES = (
    Table.SPECTRUM,
    Table.GROUP_MEAN_CORR,
    Table.ROW_COSINE,
    Table.PROJECTION_HISTOGRAM,
)


@dataclass(frozen=True)
class Spectrum:
    """The target's singular values ``(k,)``; the null's 95% band of shares (2.5 and 97.5
    percentiles of ``s_k / ||M||_F``, each draw by its own norm, ``(k_null,)``) over
    ``n_null`` draws; the jackknife interval of ``s_k`` ``(k_interval,)``, observed scale."""

    singular_values: np.ndarray
    null_low: np.ndarray | None = None
    null_high: np.ndarray | None = None
    n_null: int = 0
    interval_lo: np.ndarray | None = None
    interval_hi: np.ndarray | None = None


@dataclass(frozen=True)
class Square:
    """A square table of values in [-1, 1] ``(n, n)`` (nan: not measured) and its names."""

    names: tuple[str, ...]
    values: np.ndarray


@dataclass(frozen=True)
class Projection:
    """Component 1's histogram of the vocabulary's projections (``PROJECTION_BINS`` counts
    and their edges), the target's words and the extremes outside it, as ``(x, label)``."""

    counts: np.ndarray
    edges: np.ndarray
    members: tuple[tuple[float, str], ...]
    extremes: tuple[tuple[float, str], ...]


@dataclass(frozen=True)
class OrderView:
    """A declared order: the members in order, their coordinates ``(n, 2)`` on the first
    two centered components, and the statistic as the figure's title says it."""

    cyclic: bool
    words: tuple[str, ...]
    coordinates: np.ndarray
    title: str


# the figures whose numbers need no check (no null band, interval or order test): they
# can be drawn while the checks run; and the others
FIGURES_WITHOUT_CHECKS = ("group_mean_corr.png", "row_cosine.png", "projection_component0.png")
FIGURES_WITH_CHECKS = ("scree.png", "order.png")


@dataclass(frozen=True)
class RunFigureData:
    """Everything a run's figures show."""

    model: str
    target: str
    center: bool
    spectrum: Spectrum
    group_mean_corr: Square
    row_cosine: Square
    projection: Projection
    order: OrderView | None = None

    @property
    def title(self) -> str:
        return f"{self.model} · {self.target} · {'centered' if self.center else 'raw'}"


def run_figure_data(
    result: AnalysisResult,
    model_name: str,
    checks: ChecksResult | None = None,
    undertrained: frozenset[int] | None = None,
) -> RunFigureData:
    """What the figures of an analysis show; numbers computed as the run's tables log them
    (``embsvd.tracking.artifacts``), so that a run drawn later from them looks the same.

    The extremes are marked where ``checks.undertrained`` flags them, or, without the
    checks, ``undertrained`` (what the checks will flag): the figures that need no check
    (``FIGURES_WITHOUT_CHECKS``) can then be drawn before the checks run, as they would be
    after."""
    flagged = checks.undertrained if checks is not None else undertrained
    spectrum = Spectrum(result.svd.singular_values)
    if checks is not None and (null := checks.null) is not None:
        band = np.percentile(np.sqrt(null.explained_variance_ratio), NULL_QUANTILES, axis=0)
        spectrum = dataclasses.replace(
            spectrum, null_low=band[0], null_high=band[-1], n_null=null.n_null
        )
    if checks is not None and (stability := checks.stability) is not None:
        lo, hi = stability.singular_value_lo, stability.singular_value_hi
        spectrum = dataclasses.replace(spectrum, interval_lo=lo, interval_hi=hi)
    counts, edges = np.histogram(result.projections[:, 0], bins=PROJECTION_BINS)
    projection = Projection(
        counts,
        edges,
        members=tuple(  # a multi-token member's mean row, its word marked (subwords=mean)
            (float(row[0]), multi_token_text(word) if i >= len(result.projections) else word)
            for word, i, row in zip(
                result.target_words, result.target_ids, result.target_projections, strict=True
            )
        ),
        extremes=tuple(
            # as people read it, marked where flagged under-trained (analysis.undertrained)
            (
                float(t.projection),
                (getattr(t, "text", None) or t.token) + _mark(t.token_id, flagged),
            )
            for t in result.top_tokens
            if t.component == 0 and not t.in_group and t.rank <= N_EXTREMES_LABELLED
        ),
    )
    stat = result.group_mean_corr
    return RunFigureData(
        model=model_name,
        target=result.target,
        center=result.center,
        spectrum=spectrum,
        group_mean_corr=Square(tuple(stat.names), np.asarray(stat.values)),
        row_cosine=Square(tuple(result.target_words), np.asarray(result.row_cosine)),
        projection=projection,
        order=None if checks is None or checks.order is None else order_view(checks.order),
    )


def logged_figure_data(run: LoggedRun, model_name: str) -> RunFigureData:
    """What the figures of a logged run show, from its tables (``RUN_FIGURE_TABLES``, as
    rows of strings), its metrics and its interval series: the numbers
    ``run_figure_data`` gives for the analysis it logged.

    Raises:
        ValueError: the run has no ``spectrum.csv``, ``group_mean_corr.csv``,
            ``row_cosine.csv`` or ``projection_histogram.csv`` (it was not logged whole).
    """
    missing = [table for table in REQUIRED_TABLES if not run.table(table)]
    if missing:
        raise ValueError(
            f"run {run.run_id} ({run.name}): no {', '.join(missing)} among its artifacts; "
            "its figures are drawn from them"
        )
    spectrum = Spectrum(_floats(run.table(Table.SPECTRUM), "singular_value"))
    band = [r for r in run.table(Table.NULL_SPECTRUM) if r["statistic"] == NULL_SHARE]
    if band:
        low, high = (f"null_q{q:g}" for q in (NULL_QUANTILES[0], NULL_QUANTILES[-1]))
        n_null = int(run.metrics.get("null/n_null", 0))
        spectrum = dataclasses.replace(
            spectrum, null_low=_floats(band, low), null_high=_floats(band, high), n_null=n_null
        )
    if all(key in run.series for key in INTERVAL_SERIES):
        lo, hi = (np.array(run.series[key]) for key in INTERVAL_SERIES)
        spectrum = dataclasses.replace(spectrum, interval_lo=lo, interval_hi=hi)
    first = [r for r in run.table(Table.PROJECTION_HISTOGRAM) if r["component"] == "0"]
    projection = Projection(
        counts=np.array([int(r["count"]) for r in first]),
        edges=np.append(_floats(first, "bin_left"), float(first[-1]["bin_right"])),
        members=tuple(  # a token id past the vocabulary's: a multi-token word's mean row
            (float(r["projection_0"]), _member_label(r, run.tags.get(Tag.D_VOCAB)))
            for r in run.table(Table.GROUP_PROJECTIONS)
        ),
        extremes=tuple(
            (
                float(r["projection"]),
                (r.get("text") or r["token"])
                + (UNDERTRAINED_MARK if r.get("undertrained") == "true" else ""),
            )
            for r in run.table(Table.TOP_TOKENS)
            if r["component"] == "0"
            and r["in_group"] != "true"
            and int(r["rank"]) <= N_EXTREMES_LABELLED
        ),
    )
    return RunFigureData(
        model=model_name,
        target=run.target,
        center=run.parts.center,
        spectrum=spectrum,
        group_mean_corr=_logged_square(run.table(Table.GROUP_MEAN_CORR), "group"),
        row_cosine=_logged_square(run.table(Table.ROW_COSINE), "word"),
        projection=projection,
        order=_logged_order(run),
    )


def _mark(token_id: int, flagged: frozenset[int] | None) -> str:
    """``UNDERTRAINED_MARK`` for a token flagged under-trained, else nothing."""
    return UNDERTRAINED_MARK if flagged and token_id in flagged else ""


def _floats(rows: Sequence[Mapping[str, str]], column: str) -> np.ndarray:
    return np.array([float(r[column]) for r in rows])  # repr-written: the logged values


def _logged_square(rows: Sequence[Mapping[str, str]], name_column: str) -> Square:
    names = tuple(r[name_column] for r in rows)
    return Square(names, np.array([[float(r[n]) for n in names] for r in rows]))


def _logged_order(run: LoggedRun) -> OrderView | None:
    rows = sorted(run.table(Table.ORDER), key=lambda r: int(r["position"]))
    if not rows:
        return None
    cyclic = "order/neighbours" in run.metrics
    names = _ORDER_STATISTICS[cyclic]
    stats = {name: run.metrics.get(f"order/{name}", float("nan")) for name in names}
    return OrderView(
        cyclic=cyclic,
        words=tuple(r["word"] for r in rows),
        coordinates=np.array([[float(r["coordinate_1"]), float(r["coordinate_2"])] for r in rows]),
        title=order_title(cyclic, len(rows), stats),
    )


_ORDER_STATISTICS = {
    True: ("neighbours", "neighbours_p", "circular_corr", "circular_corr_p"),
    False: ("spearman", "spearman_p", "partial_spearman", "partial_spearman_p"),
}


def order_view(order: CyclicOrder | LinearOrder) -> OrderView:
    """An order test as its figure shows it; the title from the numbers the run logs."""
    cyclic = isinstance(order, CyclicOrder)
    return OrderView(
        cyclic=cyclic,
        words=tuple(order.words),
        coordinates=np.asarray(order.coordinates),
        title=order_title(cyclic, len(order.words), order_metrics(order)),
    )


def order_title(cyclic: bool, n_members: int, stats: Mapping[str, float]) -> str:
    """``neighbours 12/12, p=0.0001`` and ``Fisher-Lee 0.97, p=...`` for a cyclic group,
    ``Spearman 0.98 (p=0.0001)`` and its partial (or ``no partial``) for a linear one: two
    lines, as a 3.4 in figure holds about 40 characters a line."""
    if cyclic:
        return (
            f"neighbours {int(stats['neighbours'])}/{n_members}, p={stats['neighbours_p']:.2g}\n"
            f"Fisher-Lee {stats['circular_corr']:.2f}, p={stats['circular_corr_p']:.2g}"
        )
    title = f"Spearman {stats['spearman']:.2f} (p={stats['spearman_p']:.2g})"
    if np.isnan(stats["partial_spearman"]):
        return f"{title}\nno partial"
    return (
        f"{title}\npartial given norm, frequency {stats['partial_spearman']:.2f} "
        f"(p={stats['partial_spearman_p']:.2g})"
    )


def _member_label(row: Mapping[str, str], d_vocab: str | None) -> str:
    """A logged member's label: its word, marked where its token id is past the
    vocabulary's ``d_vocab`` rows (a multi-token word's mean row, ``subwords=mean``)."""
    virtual = d_vocab is not None and int(row["token_id"]) >= int(d_vocab)
    return multi_token_text(row["word"]) if virtual else row["word"]
