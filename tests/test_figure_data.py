"""What the paper figures plot and how they are drawn, from hand-made runs: no store, no
subprocess. Drawn figures are checked on their artists: the text people read (display
names, n/a cells, captions, legends, components from 1) and the geometry of the token
labels (no label covers a leader line, no two leader lines cross)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.text import Text
from scipy.stats import false_discovery_control

from embsvd.figures import data as figure_data
from embsvd.figures.paper import (
    FigureStyle,
    _theme,
    axis_figure,
    correlation_figure,
    scree_figure,
    write_figure_set,
)
from embsvd.figures.run_figures import spread_apart
from embsvd.figures.selection import (
    Names,
    distinct_runs,
    overrides_of,
    setting_labels,
    variant_slot,
)
from embsvd.figures.tables import latex_tables, markdown_tables
from embsvd.tracking.artifacts import NULL_QUANTILES
from embsvd.tracking.contract import LoggedRun, Sweep


@pytest.fixture(autouse=True)
def paper_theme():
    """The figures' theme, as write_figure_set draws them (and matplotlib without a window)."""
    with _theme():
        yield
    plt.close("all")


def logged_run(
    name: str,
    top: dict[int, tuple[list[str], list[str]]] | None = None,
    singular_values: tuple[float, ...] = (3.0, 2.0, 1.0),
    metrics: dict[str, float] | None = None,
    series: dict[str, tuple[float, ...]] | None = None,
    tags: dict[str, str] | None = None,
    run_id: str | None = None,
    **tables,
) -> LoggedRun:
    """A run named ``<model>/<group>/<variant>`` (tagged alike) whose top_tokens.csv holds,
    per component, the tokens at the top and bottom end (rank order), with ``metrics``,
    ``series`` (beside ``singular_value``) and ``tags`` as logged."""
    rows = []
    for component, (highs, lows) in (top or {}).items():
        for side, tokens in (("top", highs), ("bottom", lows)):
            rows += [
                {
                    "component": str(component),
                    "side": side,
                    "rank": str(rank),
                    "token_id": str(100 + rank),
                    "token": token,
                    "projection": str((1 if side == "top" else -1) / rank),
                    "in_group": "false",
                }
                for rank, token in enumerate(tokens, start=1)
            ]
    model, group, variant = name.split("/")
    model, output, _ = model.partition(":output")
    model, _, revision = model.partition("@")
    described = {
        "embsvd.model": model,
        "embsvd.matrix": "output" if output else "input",
        **({"embsvd.revision": revision} if revision else {}),
        "embsvd.target_group": group,
        "embsvd.center": str(variant.startswith("centered")).lower(),
        "embsvd.geometry": "whitened" if "whitened" in variant else "euclidean",
        "embsvd.normalize_rows": str("unit_rows" in variant).lower(),
    }
    return LoggedRun(
        run_id=run_id or name,
        name=name,
        experiment="embsvd",
        tags=described | (tags or {}),
        metrics=metrics or {},
        series={"singular_value": singular_values, **(series or {})},
        tables={"top_tokens.csv": tuple(rows), **tables},
    )


def drawn_texts(fig) -> list[str]:
    """Every text the figure draws: titles, labels, tick labels, legends, cells, notes."""
    fig.canvas.draw()
    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]


@pytest.mark.parametrize(
    ("token", "word"),
    [
        ("ĠFrance", "france"),
        ("▁France", "france"),
        ("france", "france"),
        ("##ia", "ia"),
        ("Ｆｒａｎｃｅ", "france"),
    ],  # fmt: skip
)
def test_tokens_compare_as_words_across_vocabularies(token, word):
    assert figure_data.normalize_token(token) == word


def test_overlap_matches_axis_ends_in_the_orientation_that_shares_more():
    bert = logged_run("bert/eu/centered", {0: (["france", "spain"], ["greece", "italy"])})
    # the other model's axis points the other way: its top end holds bert's bottom end
    bpe = logged_run("bpe/eu/centered", {0: (["ĠGreece", "ĠRome"], ["ĠFrance", "ĠSpain"])})
    (row,) = figure_data.cross_model_overlap_rows(Sweep("s", "", None, (bert, bpe)), top_k=2)
    assert row["orientation"] == "flipped"
    assert row["shared"] == "france greece spain"
    assert row["overlap"] == pytest.approx(3 / 4)
    same = logged_run("bpe/eu/centered", {0: (["ĠFrance", "ĠRome"], ["ĠGreece", "x"])})
    (row,) = figure_data.cross_model_overlap_rows(Sweep("s", "", None, (bert, same)), top_k=2)
    assert (row["orientation"], row["n_shared"]) == ("same", 2)


def test_spectra_are_normalised_by_their_frobenius_norm_and_compared_by_shape():
    a = logged_run("a/g/centered", singular_values=(3.0, 4.0))
    b = logged_run("b/g/centered", singular_values=(6.0, 8.0))  # the same shape, twice the scale
    c = logged_run("c/g/centered", singular_values=(1.0, 0.0))
    rows = figure_data.cross_model_spectra_rows(Sweep("s", "", None, (a, b, c)))
    normalized = {(r["model"], r["component"]): r["normalized"] for r in rows}
    assert normalized[("a", 0)] == normalized[("b", 0)] == pytest.approx(0.6)
    distance = {r["model"]: r["distance_from_first_model"] for r in rows}
    # explained-variance ratios (0.36, 0.64) against (1, 0): half the L1 distance is 0.64
    assert distance == pytest.approx({"a": 0.0, "b": 0.0, "c": 0.64})


def test_only_groups_that_several_models_have_are_compared():
    runs = (
        logged_run("a/digits/centered", {0: (["1"], ["2"])}),
        logged_run("b/digits/raw", {0: (["1"], ["2"])}),  # another variant: nothing to pair
    )
    assert figure_data.cross_model_overlap_rows(Sweep("s", "", None, runs), top_k=1) == []


def test_variants_put_centered_first():
    runs = tuple(logged_run(f"m/g/{v}") for v in ("raw", "centered+whitened", "centered"))
    assert figure_data.variants(Sweep("s", "", None, runs)) == [
        "centered+whitened",
        "centered",
        "raw",
    ]


@pytest.mark.parametrize("seed", range(5))
def test_spread_labels_keep_their_gap_inside_the_range(seed):
    xs = sorted(np.random.default_rng(seed).uniform(0, 1, 12))
    places = spread_apart(xs, 0.05, 0.0, 1.0)
    assert all(b - a >= 0.05 - 1e-12 for a, b in itertools.pairwise(places))
    assert places[0] >= 0.0 and places[-1] <= 1.0
    crowded = spread_apart([0.5] * 30, 0.05, 0.0, 1.0)  # cannot fit: gaps still hold
    assert all(b - a >= 0.05 - 1e-12 for a, b in itertools.pairwise(crowded))


def axis_runs(variants=("centered", "raw"), words=None, top=None, tags=None) -> list[LoggedRun]:
    """Runs of model m, group g whose axis figure is crowded: ten group words bunched at
    one end of the histogram, ten extremes at the two ends (two of them tied)."""
    edges = np.linspace(-1, 1, 41)
    histogram = tuple(
        {"component": "0", "bin_left": str(lo), "bin_right": str(hi), "count": str(5 + i % 7)}
        for i, (lo, hi) in enumerate(itertools.pairwise(edges))
    )
    words = words or tuple(
        {"word": f"word{i}", "token_id": str(i), "projection_0": str(0.9 + i * 0.001)}
        for i in range(10)
    )
    top = top or {0: ([f"high_{i}" for i in range(5)], [f"low_{i}" for i in range(5)])}
    tables = {"projection_histogram.csv": histogram, "group_projections.csv": words}
    return [logged_run(f"m/g/{v}", top, tags=tags, **tables) for v in variants]


def draw_axis(runs: list[LoggedRun], style: FigureStyle | None = None):
    names = Names.of(Sweep("s", "", None, tuple(runs)))
    fig, rows = axis_figure(runs, names, style or FigureStyle())
    fig.canvas.draw()
    return fig, rows


def by_gid(fig, gid: str) -> list:
    return [a for a in fig.findobj() if a.get_gid() == gid]


def segments(line: Line2D) -> list[tuple[np.ndarray, np.ndarray]]:
    """A drawn line's segments in display coordinates (pixels)."""
    points = line.get_transform().transform(line.get_xydata())
    return list(itertools.pairwise(points))


def _orientation(p, q, r) -> float:
    return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])


def segments_meet(s, t, tolerance: float = 1e-9) -> bool:
    """Whether two segments share a point (crossing, touching or overlapping)."""
    (p1, p2), (q1, q2) = s, t
    d1, d2 = _orientation(q1, q2, p1), _orientation(q1, q2, p2)
    d3, d4 = _orientation(p1, p2, q1), _orientation(p1, p2, q2)
    if ((d1 > tolerance and d2 < -tolerance) or (d1 < -tolerance and d2 > tolerance)) and (
        (d3 > tolerance and d4 < -tolerance) or (d3 < -tolerance and d4 > tolerance)
    ):
        return True

    def on(p, q, r, d):  # r on segment pq, given that it is collinear
        return abs(d) <= tolerance and (
            min(p[0], q[0]) - tolerance <= r[0] <= max(p[0], q[0]) + tolerance
            and min(p[1], q[1]) - tolerance <= r[1] <= max(p[1], q[1]) + tolerance
        )

    return on(q1, q2, p1, d1) or on(q1, q2, p2, d2) or on(p1, p2, q1, d3) or on(p1, p2, q2, d4)


def box_meets_segment(box, segment) -> bool:
    """Whether a text's bounding box and a segment share a point."""
    p, q = segment
    if any(box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1 for x, y in (p, q)):
        return True
    corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1)]
    edges = list(zip(corners, corners[1:] + corners[:1], strict=True))
    return any(segments_meet(segment, (np.array(a), np.array(b))) for a, b in edges)


def check_label_geometry(fig, n_labels: int) -> None:
    """Labels: n_labels of them, none overlapping another, none covering a leader line or
    a mark, none on another panel or title, all inside the figure; leader lines: none
    crossing another (leaders of one point share that point, at the axes' edge)."""
    renderer = fig.canvas.get_renderer()
    labels = by_gid(fig, "token-label")
    leaders = by_gid(fig, "leader-line")
    assert len(labels) == len(leaders) == n_labels
    # the text alone: Annotation's own extent would include an arrow, and there is none
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), f"{labels[i].get_text()} overlaps {labels[j].get_text()}"
    lines = [(line, seg) for line in leaders + by_gid(fig, "token-mark") for seg in segments(line)]
    for label, box in zip(labels, boxes, strict=True):
        for line, seg in lines:
            assert not box_meets_segment(box, seg), (
                f"{label.get_text()!r} covers a {line.get_gid()}"
            )
        assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent()), label.get_text()
        for title in by_gid(fig, "panel-title"):
            assert not box.overlaps(Text.get_window_extent(title, renderer)), label.get_text()
    for a, b in itertools.combinations(leaders, 2):
        sa, sb = segments(a), segments(b)
        start_a, start_b = sa[0][0], sb[0][0]
        if np.allclose(start_a, start_b):  # tied points: one start, then apart
            nudge = lambda s: (s[0] + 1e-3 * (s[1] - s[0]), s[1])  # noqa: E731
            sa, sb = [nudge(sa[0]), *sa[1:]], [nudge(sb[0]), *sb[1:]]
        for s, t in itertools.product(sa, sb):
            assert not segments_meet(s, t), "two leader lines cross"


def test_axis_labels_cover_no_leader_line_and_leader_lines_never_cross():
    """Ten group words bunched at one end, extremes at both ends, two of them tied."""
    top = {0: (["high_a", "high_b", "high_c"], ["low_0", "low_1", "low_2"])}
    runs = axis_runs(top=top)
    # a tie: two extremes at exactly the projection of a group word
    tied = dict(runs[0].tables)
    tied["top_tokens.csv"] = tuple(
        r | {"projection": "0.9"} if r["rank"] == "1" else r for r in tied["top_tokens.csv"]
    )
    runs[0] = dataclasses.replace(runs[0], tables=tied)
    fig, rows = draw_axis(runs)
    check_label_geometry(fig, 2 * (10 + 6))
    assert {r["kind"] for r in rows} == {"bin", "group", "extreme"}


@pytest.mark.parametrize("seed", range(3))
def test_random_marks_keep_the_label_geometry(seed):
    rng = np.random.default_rng(seed)
    words = tuple(
        {"word": f"w{i}", "token_id": str(i), "projection_0": repr(float(x))}
        for i, x in enumerate(rng.uniform(-1, 1, 12))
    )
    fig, _ = draw_axis(axis_runs(variants=("centered",), words=words))
    check_label_geometry(fig, 12 + 10)


def test_axis_figure_has_a_colour_legend_titles_and_display_names():
    tags = {
        "embsvd.model_display": "Tiny-BERT",
        "embsvd.group_display.g": "EU countries",
    }
    runs = axis_runs(tags=tags)
    fig, rows = draw_axis(runs)
    (legend,) = fig.legends
    entries = [t.get_text() for t in legend.get_texts()]
    assert entries == ["words of EU countries", "tokens outside the group among the 5 at each end"]
    # each entry's colour is the colour of its labels
    colours = {t.get_text(): t.get_color() for t in by_gid(fig, "token-label")}
    handles = legend.legend_handles
    assert (
        handles[0].get_color() == colours["word0"] and handles[1].get_color() == colours["high_0"]
    )
    texts = drawn_texts(fig)
    assert "Tiny-BERT · EU countries" in texts
    assert [t.get_text() for t in by_gid(fig, "panel-title")] == ["centered", "raw"]
    assert "projection on component 1" in texts  # counted from 1, as people count
    assert not any("component 0" in t for t in texts)
    assert {(r["model_display"], r["group_display"]) for r in rows} == {
        ("Tiny-BERT", "EU countries")
    }


def test_a_column_wide_axis_figure_keeps_its_legend_inside():
    words = tuple(
        {"word": f"w{i}", "token_id": str(i), "projection_0": str(i / 10)} for i in range(4)
    )
    tags = {"embsvd.group_display.g": "EU countries"}
    runs = axis_runs(words=words, top={0: (["a", "b"], ["c", "d"])}, tags=tags)
    fig, _ = draw_axis(runs)
    assert fig.get_size_inches()[0] == FigureStyle().column_width
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    box = legend.get_window_extent(renderer)
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0
    for ax in fig.axes:
        assert not box.overlaps(ax.get_tightbbox(renderer))
    check_label_geometry(fig, 2 * (4 + 4))


def test_axis_labels_read_the_text_column_where_the_run_logged_one():
    runs = axis_runs(variants=("centered",), top={0: (["Ġthe"], ["Ġ$a$"])})
    table = tuple(
        r | {"text": r["token"].replace("Ġ", "␣")} for r in runs[0].tables["top_tokens.csv"]
    )
    runs = [dataclasses.replace(runs[0], tables={**runs[0].tables, "top_tokens.csv": table})]
    fig, rows = draw_axis(runs)
    labels = [t.get_text() for t in by_gid(fig, "token-label")]
    assert "␣the" in labels and "␣$a$" in labels and "Ġthe" not in labels
    # drawn as written: a token's $...$ is not mathematics
    assert all(not t.get_parse_math() for t in by_gid(fig, "token-label"))
    (the,) = [r for r in rows if r["label"] == "␣the"]
    assert the["token"] == "Ġthe"  # the CSV keeps the stored token beside the drawn text
    older = axis_runs(variants=("centered",), top={0: (["Ġthe"], ["x"])})  # no text column
    fig, _ = draw_axis(older)
    assert "Ġthe" in [t.get_text() for t in by_gid(fig, "token-label")]


def test_tables_set_group_tokens_in_bold_and_escape_latex():
    rows = [
        {"model": "m", "group": "g", "variant": "centered", "component": 0, "side": side,
         "rank": 1, "token": token, "in_group": in_group}
        for side, token, in_group in (("top", "##ia_x", True), ("bottom", "a|b", False))
    ]  # fmt: skip
    markdown = markdown_tables(rows, top_k=1)
    assert "| 1 | **`##ia_x`** | `a\\|b` |" in markdown
    latex = latex_tables(rows, top_k=1)
    assert "1 & \\textbf{\\texttt{\\#\\#ia\\_x}} & \\texttt{a|b} \\\\" in latex


def test_a_figure_set_that_fails_leaves_the_previous_one_alone(tmp_path):
    folder = tmp_path / "figures" / "s"
    folder.mkdir(parents=True)
    (folder / "scree_grid.csv").write_text("earlier\n")
    (folder / "sweep.json").write_text('{"embsvd_figure_set": 1}')  # a set drawn before
    broken = logged_run("m/g/centered", **{"projection_histogram.csv": ({"component": "0"},)})
    with pytest.raises(KeyError, match="bin_left"):
        write_figure_set(
            Sweep("s", "", None, (broken,)), tmp_path / "figures", FigureStyle(formats=("png",))
        )
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["s"]  # no scratch left
    assert (folder / "scree_grid.csv").read_text() == "earlier\n"


def two_model_sweep(models=("a", "b")) -> Sweep:
    return Sweep(
        "s", "", None, tuple(logged_run(f"{m}/g/centered", {0: (["x"], ["y"])}) for m in models)
    )


def test_a_figure_set_keeps_the_formats_it_does_not_draw(tmp_path):
    """formats=[pdf] over a set drawn as PNG: the PNGs stay; a format drawn again loses
    the figures that are no longer part of the set; files it did not write stay."""
    folder = tmp_path / "s"
    png = FigureStyle(formats=("png",), dpi=40)
    written = write_figure_set(two_model_sweep(), tmp_path, png)
    assert {"scree_grid.png", "cross_model_overlap.png", "sweep.json"} <= {f.name for f in written}
    pngs = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    (folder / "notes.txt").write_text("mine\n")  # not the command's: never touched
    written = write_figure_set(two_model_sweep(), tmp_path, FigureStyle(formats=("pdf",), dpi=40))
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == pngs
    assert (folder / "scree_grid.pdf").is_file() and (folder / "notes.txt").read_text() == "mine\n"
    assert not any(f.suffix == ".png" for f in written)
    manifest = json.loads((folder / "sweep.json").read_text())
    assert manifest["embsvd_figure_set"] == 2
    assert sorted(manifest["kept"]) == sorted(pngs)
    assert set(manifest["files"]) == {f.name for f in written}
    # one model now: the cross-model PNG and CSV are stale and go; its PDF, kept above
    # as another format's file, goes only when PDFs are drawn again
    write_figure_set(two_model_sweep(("a",)), tmp_path, png)
    names = {p.name for p in folder.iterdir()}
    assert "cross_model_overlap.png" not in names and "cross_model_overlap.csv" not in names
    assert {"cross_model_overlap.pdf", "notes.txt", "scree_grid.png"} <= names
    write_figure_set(two_model_sweep(("a",)), tmp_path, FigureStyle(formats=("pdf",), dpi=40))
    assert not (folder / "cross_model_overlap.pdf").exists()
    assert (folder / "scree_grid.png").is_file()


def test_a_figure_set_writes_into_its_own_folder_only(tmp_path):
    runs = (logged_run("m/g/centered", top={0: (["a"], ["b"])}),)
    style = FigureStyle(formats=("png",), dpi=40)
    files = write_figure_set(Sweep("s", "", None, runs), tmp_path, style)
    assert {f.name for f in files} >= {"scree_grid.png", "sweep.json", "top_tokens.md"}
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine\n")
    with pytest.raises(ValueError, match=r"notes exists and is not a figure set this command"):
        write_figure_set(Sweep("notes", "", None, runs), tmp_path, style)
    assert (notes / "todo.txt").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "s"]


def test_scree_panels_share_one_axis_that_shows_every_value():
    """A later panel's larger spectrum must not be cut at the first panel's limit."""
    flat = logged_run("a/g/centered", singular_values=(1.0, 1.0, 1.0, 1.0))
    towering = logged_run("b/g/raw", singular_values=(10.0, 0.1, 0.1, 0.1))
    fig, rows = scree_figure(Sweep("s", "", None, (flat, towering)), FigureStyle())
    tops = {ax.get_ylim() for ax in fig.axes}
    assert len(tops) == 1
    ((low, high),) = tops
    assert low == 0 and high >= max(r["normalized"] for r in rows) == pytest.approx(1.0, abs=1e-3)
    assert {(r["model"], r["variant"]) for r in rows} == {("a", "centered"), ("b", "raw")}


# --- scree: the null band of shares and the jackknife intervals ------------------------------


def null_spectrum_table(observed: np.ndarray, draws: np.ndarray) -> tuple[dict[str, str], ...]:
    """null_spectrum.csv as the run contract defines it, from the observed spectrum (k,)
    and the null draws' spectra (n_null, k): ``share`` divides each draw by its own norm."""

    def rows(statistic: str, obs: np.ndarray, null: np.ndarray) -> list[dict[str, str]]:
        quantiles = np.percentile(null, NULL_QUANTILES, axis=0)
        return [
            {
                "component": str(k),
                "statistic": statistic,
                "observed": repr(float(obs[k])),
                "null_mean": repr(float(null[:, k].mean())),
                "null_sd": repr(float(null[:, k].std(ddof=1))),
                **{
                    f"null_q{q:g}": repr(float(quantiles[i, k]))
                    for i, q in enumerate(NULL_QUANTILES)
                },
                "percentile": repr(
                    float(100.0 * np.count_nonzero(null[:, k] < obs[k]) / len(null))
                ),
            }
            for k in range(len(obs))
        ]

    def shares(S: np.ndarray) -> np.ndarray:
        return S / np.linalg.norm(S, axis=-1, keepdims=True)

    return tuple(
        rows("singular_value", observed, draws)
        + rows("explained_variance_ratio", shares(observed) ** 2, shares(draws) ** 2)
        + rows("share", shares(observed), shares(draws))
    )


def test_scree_band_is_the_null_of_shares_each_draw_by_its_own_norm():
    """Random groups ten times the norm of the group, with flatter spectra: the group's s1
    share beats every draw, and the band drawn must say so, as the metric does."""
    rng = np.random.default_rng(0)
    observed = np.array([3.0, 1.0, 0.5])
    draws = 10 * np.sort(rng.uniform(0.5, 1.0, (200, 3)), axis=1)[:, ::-1]
    ratios = (draws / np.linalg.norm(draws, axis=1, keepdims=True)) ** 2
    s1_ratio = observed[0] ** 2 / (observed**2).sum()
    # the run's metric: percentile of the explained-variance ratio, not of the share
    s1_percentile = 100.0 * np.count_nonzero(ratios[:, 0] < s1_ratio) / len(ratios)
    table = null_spectrum_table(observed, draws)
    run = logged_run(
        "m/g/centered",
        singular_values=tuple(observed),
        metrics={"null/s1_share/percentile": s1_percentile},
        **{"null_spectrum.csv": table},
    )
    rows = figure_data.scree_rows(Sweep("s", "", None, (run,)))
    shares = {int(r["component"]): r for r in table if r["statistic"] == "share"}
    for row in rows:
        k = row["component"]
        assert row["null_share_q2.5"] == float(shares[k]["null_q2.5"])
        assert row["null_share_q97.5"] == float(shares[k]["null_q97.5"])
        assert row["null_percentile"] == float(shares[k]["percentile"])
        assert row["normalized"] == pytest.approx(float(shares[k]["observed"]))
    first = rows[0]
    assert first["null_percentile"] == s1_percentile == 100.0
    assert first["normalized"] > first["null_share_q97.5"]
    # the old band, the null's singular values over the observed norm, sat above s1 share
    old = next(r for r in table if r["statistic"] == "singular_value" and r["component"] == "0")
    assert float(old["null_q2.5"]) / first["frobenius_norm"] > first["normalized"]


def test_intervals_shorter_than_the_spectrum_draw_no_bars():
    """The centered spectrum's last value (~0) has no jackknife interval: nan, never 0."""
    run = logged_run(
        "m/g/centered",
        singular_values=(4.0, 2.0, 1.0, 1e-9),
        series={
            "interval/singular_value_lo": (3.5, 1.5, 0.8),
            "interval/singular_value_hi": (4.5, 2.5, 1.2),
        },
    )
    fig, rows = scree_figure(Sweep("s", "", None, (run,)), FigureStyle())
    norm = math.sqrt(16 + 4 + 1 + 1e-18)
    assert [r["interval_lo"] for r in rows[:3]] == [3.5, 1.5, 0.8]
    assert [r["normalized_interval_hi"] for r in rows[:3]] == pytest.approx(
        [4.5 / norm, 2.5 / norm, 1.2 / norm]
    )
    last = rows[3]
    assert all(math.isnan(last[c]) for c in ("interval_lo", "normalized_interval_hi"))
    (ax,) = fig.axes
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars.get_segments()) == 3
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["centered", "95% jackknife interval"]  # no null ran: no band named


def test_scree_legend_names_the_share_band_where_a_null_ran():
    observed = np.array([3.0, 1.0, 0.5])
    draws = np.random.default_rng(1).uniform(0.5, 3.0, (50, 3))
    run = logged_run(
        "m/g/centered",
        singular_values=tuple(observed),
        **{"null_spectrum.csv": null_spectrum_table(observed, draws)},
    )
    fig, rows = scree_figure(Sweep("s", "", None, (run,)), FigureStyle())
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["centered", "random matched groups, 95% of shares"]
    assert all(math.isnan(r["interval_lo"]) for r in rows)


# --- group-mean correlations: Benjamini-Hochberg over the sweep -------------------------------


def test_benjamini_hochberg_by_hand():
    # sorted 0.005 0.01 0.03 0.04 (ranks 1-4, m=4): 4p/i = 0.02 0.02 0.04 0.04
    assert figure_data.benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx(
        [0.02, 0.04, 0.04, 0.02]
    )
    # step-up: 4p/i = 0.04 0.04 0.028 0.5; the third rank lowers the two before it
    assert figure_data.benjamini_hochberg([0.01, 0.02, 0.021, 0.5]) == pytest.approx(
        [0.028, 0.028, 0.028, 0.5]
    )
    assert figure_data.benjamini_hochberg([]).shape == (0,)
    with pytest.raises(ValueError, match=r"p_values: a sequence of values in \[0, 1\]; got"):
        figure_data.benjamini_hochberg([0.1, 1.5])


@pytest.mark.parametrize("seed", range(5))
def test_benjamini_hochberg_equals_its_definition(seed):
    """q_i = min(1, min over p_j >= p_i of m p_j / #{p <= p_j}), ties included."""
    rng = np.random.default_rng(seed)
    p = np.round(rng.uniform(0, 1, 30) ** 3, 2)  # rounded: ties, and small values
    m = len(p)
    direct = [min(1.0, min(m * pj / np.count_nonzero(p <= pj) for pj in p if pj >= pi)) for pi in p]
    q = figure_data.benjamini_hochberg(p)
    assert q == pytest.approx(direct, abs=1e-12)
    assert q == pytest.approx(false_discovery_control(p, method="bh"), abs=1e-12)
    order = np.argsort(p)
    assert np.all(np.diff(q[order]) >= 0) and np.all(q <= 1)


def correlation_metrics(
    pair: str, r: tuple[float, ...], p: tuple[float, ...] | None, percentile: float = 15.0
) -> dict[str, float]:
    """A run's group-mean r of one pair per variant (raw, centered, decorrelated: as many
    as ``r`` has), and their null metrics where ``p`` is given."""
    metrics = {}
    for i, prefix in enumerate(list(figure_data.CORRELATION_VARIANTS.values())[: len(r)]):
        metrics[f"{prefix}/{pair}"] = r[i]
        if p is not None:
            null = f"null/{prefix}/{pair}"
            metrics |= {f"{null}/mean": 0.01, f"{null}/sd": 0.1, f"{null}/p_value": p[i]}
            metrics |= {f"{null}/percentile": percentile, f"{null}/p_holm": 1.0}
    return metrics


def correlation_sweep() -> Sweep:
    return Sweep(
        "s",
        "",
        None,
        (
            logged_run(
                "a/digits/centered",
                metrics=correlation_metrics("digits__eu", (0.02, -0.1, 0.3), (0.001, 0.04, 0.5)),
            ),
            # the same model and geometry: its pairs are the first run's, and are left out
            logged_run(
                "a/eu/raw",
                metrics=correlation_metrics("digits__eu", (0.9, 0.9, 0.9), (0.9, 0.9, 0.9))
                | correlation_metrics("eu__months", (0.5, 0.4, 0.2), (0.002, 0.2, 0.6)),
            ),
            # whitened: another geometry, and no decorrelated variant
            logged_run(
                "a/digits/centered+whitened",
                metrics=correlation_metrics("digits__eu", (0.05, 0.06), (0.03, 0.01)),
            ),
            logged_run(
                "b/digits/centered",
                metrics=correlation_metrics("digits__eu", (0.1, 0.2, 0.3), (0.02, 0.005, 0.3)),
            ),
        ),
    )


def test_correlations_are_corrected_over_the_whole_sweep():
    correlations = figure_data.correlation_rows(correlation_sweep(), alpha=0.05)
    assert list(correlations) == [("a", ""), ("a+whitened", ""), ("b", "")]
    a = correlations[("a", "")]
    assert [(r["variant"], r["group_a"], r["group_b"]) for r in a] == [
        (v, *pair)
        for pair in (("digits", "eu"), ("eu", "months"))
        for v in ("raw", "centered", "decorrelated")
    ]
    assert {r["run_id"] for r in a[:3]} == {"a/digits/centered"}
    assert [r["r"] for r in a[:3]] == [0.02, -0.1, 0.3]
    whitened = correlations[("a+whitened", "")]
    assert [r["variant"] for r in whitened] == ["raw", "centered"]
    rows = [r for model in correlations.values() for r in model]
    p_values = [r["p_value"] for r in rows]
    assert len(p_values) == figure_data.n_tests(correlations) == 11
    q_values = false_discovery_control(p_values, method="bh")
    assert [r["q_bh"] for r in rows] == pytest.approx(q_values)
    assert [r["significant"] for r in rows] == [bool(q < 0.05) for q in q_values]
    # one family: model b alone would give its centered r (p 0.005) q = 3 * 0.005 / 1
    (b_centered,) = [r for r in correlations[("b", "")] if r["variant"] == "centered"]
    assert b_centered["q_bh"] > 3 * 0.005
    assert {(r["null_mean"], r["percentile"]) for r in rows} == {(0.01, 15.0)}


def cell_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_correlation_cells_show_the_null_mean_and_percentile_beside_each_star():
    correlations = figure_data.correlation_rows(correlation_sweep(), alpha=0.05)
    fig, rows = correlation_figure(correlations[("a", "")], 11, FigureStyle())
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["raw", "centered", "decorrelated"]
    # digits-eu raw: p 0.001 is the smallest of 11 tests, q = 11 * 0.001 = 0.011
    assert cell_texts(panels[0]).count("+0.02*\nnull +0.01\npct 15") == 2  # both triangles
    assert "+0.30\nnull +0.01\npct 15" in cell_texts(panels[2])  # q 0.6: no star
    note = fig.get_supxlabel().replace("\n", " ")
    assert "null: the mean r of random groups matched on token norm and frequency" in note
    assert "pct: r's percentile among them" in note
    assert (
        "*: Benjamini-Hochberg q < 0.05 over the sweep's 11 tests, r against the matched "
        "null (two-sided permutation p)" in note
    )
    assert [r["marked"] for r in rows if r["variant"] == "raw"] == [True, True]
    whitened, _ = correlation_figure(correlations[("a+whitened", "")], 11, FigureStyle())
    assert [ax.get_title() for ax in whitened.axes if ax.get_title()] == ["raw", "centered"]
    assert whitened.get_suptitle() == "a · whitened"


def test_a_significant_r_below_its_null_reads_against_the_null_mean():
    """SmolLM2's raw digits-EU countries r: -0.04, significant only because random groups
    correlate at +0.71 there; the cell must say so, not read as a negative correlation."""
    metrics = {
        "group_mean_corr/digits__eu_countries": -0.038,
        "null/group_mean_corr/digits__eu_countries/mean": 0.707,
        "null/group_mean_corr/digits__eu_countries/percentile": 0.0,
        "null/group_mean_corr/digits__eu_countries/p_value": 0.002,
    }
    tags = {"embsvd.model_display": "SmolLM2-135M-Instruct"}
    tags |= {"embsvd.group_display.eu_countries": "EU countries"}
    run = logged_run("smollm2_135m/digits/centered", metrics=metrics, tags=tags)
    correlations = figure_data.correlation_rows(Sweep("s", "", None, (run,)), alpha=0.05)
    fig, _ = correlation_figure(correlations[("smollm2_135m", "")], 1, FigureStyle())
    texts = drawn_texts(fig)
    assert texts.count("-0.04*\nnull +0.71\npct 0") == 2
    assert "SmolLM2-135M-Instruct" in texts and "EU countries" in texts
    assert not any("smollm2_135m" in t or "eu_countries" in t for t in texts)


def test_a_star_needs_the_null_mean_and_percentile_beside_it():
    metrics = {
        "group_mean_corr/digits__eu": 0.5,
        "null/group_mean_corr/digits__eu/p_value": 0.001,  # no mean, no percentile logged
    }
    run = logged_run("m/digits/centered", metrics=metrics)
    correlations = figure_data.correlation_rows(Sweep("s", "", None, (run,)), alpha=0.05)
    (rows,) = correlations.values()
    assert rows[0]["significant"] is True
    fig, drawn = correlation_figure(rows, 1, FigureStyle())
    assert not any("*" in t for t in drawn_texts(fig))
    assert drawn[0]["marked"] is False


def test_no_star_promised_where_none_is_drawn():
    run = logged_run(
        "m/digits/centered",
        metrics=correlation_metrics("digits__eu", (0.02, 0.01, 0.0), (0.5, 0.6, 0.9)),
    )
    correlations = figure_data.correlation_rows(Sweep("s", "", None, (run,)), alpha=0.05)
    (rows,) = correlations.values()
    fig, _ = correlation_figure(rows, 3, FigureStyle())
    texts = drawn_texts(fig)
    assert not any("*" in t for t in texts)
    note = fig.get_supxlabel().replace("\n", " ")
    assert (
        "no pair reaches Benjamini-Hochberg q < 0.05 over the sweep's 3 tests: none marked" in note
    )


def test_without_a_null_no_star_and_no_note_claims_one():
    run = logged_run(
        "m/digits/centered", metrics=correlation_metrics("digits__eu", (0.02, 0.01), None)
    )
    correlations = figure_data.correlation_rows(Sweep("s", "", None, (run,)), alpha=0.05)
    (rows,) = correlations.values()
    assert {(r["p_value"], r["q_bh"], r["significant"], r["percentile"]) for r in rows} == {
        ("", "", "", "")
    }
    fig, _ = correlation_figure(rows, figure_data.n_tests(correlations), FigureStyle())
    cells = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "+0.02" in cells and not any("*" in c or "null" in c for c in cells)
    note = fig.get_supxlabel()
    assert "Benjamini" not in note and "no null test ran: none marked" in note.replace("\n", " ")


def test_pairs_no_run_measured_read_n_a_never_a_number():
    runs = (
        logged_run("a/digits/centered", metrics=correlation_metrics("digits__eu", (0.5,), None)),
        logged_run(
            "a/months/centered", metrics=correlation_metrics("months__planets", (0.4,), None)
        ),
    )
    correlations = figure_data.correlation_rows(Sweep("s", "", None, runs), alpha=0.05)
    (rows,) = correlations.values()
    fig, _ = correlation_figure(rows, 0, FigureStyle())
    (panel,) = [ax for ax in fig.axes if ax.get_title()]
    cells = [c for c in cell_texts(panel) if c]  # the diagonal has no text
    # 4 groups, 2 of 6 pairs measured: 4 pairs unmeasured, each in both triangles
    assert cells.count("n/a") == 8
    assert sorted(c for c in cells if c != "n/a") == ["+0.40", "+0.40", "+0.50", "+0.50"]
    assert not any(c.startswith(("0.00", "+0.00", "-0.00", "nan")) for c in cells)
    note = fig.get_supxlabel().replace("\n", " ")
    assert "grey, n/a: no run of the selection measured the pair" in note


@pytest.mark.parametrize("n_groups", [2, 3, 5])
def test_every_cell_text_fits_its_cell_and_the_caption_fits_the_figure(n_groups):
    names = [f"group{i}" for i in range(n_groups)]
    metrics = {}
    for a, b in itertools.combinations(names, 2):
        metrics |= correlation_metrics(f"{a}__{b}", (-0.71, 0.66, 0.05), (0.001, 0.2, 0.9), 100.0)
    run = logged_run("m/group0/centered", metrics=metrics)
    correlations = figure_data.correlation_rows(Sweep("s", "", None, (run,)), alpha=0.05)
    (rows,) = correlations.values()
    fig, _ = correlation_figure(rows, figure_data.n_tests(correlations), FigureStyle())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 3
    for ax in panels:
        cells = [t for t in ax.texts if t.get_text()]
        assert len(cells) == n_groups * (n_groups - 1)
        width = ax.transData.transform((1, 0))[0] - ax.transData.transform((0, 0))[0]
        for cell in cells:
            box = cell.get_window_extent(renderer)
            assert box.width < width and box.height < width, cell.get_text()
    for text in fig.findobj(Text):
        if text.get_text():
            box = text.get_window_extent(renderer)
            assert fig.bbox.x0 - 1 <= box.x0 and box.x1 <= fig.bbox.x1 + 1, text.get_text()[:40]
    assert fig.get_size_inches()[0] <= FigureStyle().text_width + 1e-9


def test_cells_too_small_for_their_values_are_left_empty_and_unmarked():
    names = [f"g{i}" for i in range(14)]
    metrics = {}
    for a, b in itertools.combinations(names, 2):
        metrics |= correlation_metrics(f"{a}__{b}", (0.5,), (0.001,))
    run = logged_run("m/g0/centered", metrics=metrics)
    correlations = figure_data.correlation_rows(Sweep("s", "", None, (run,)), alpha=0.05)
    (rows,) = correlations.values()
    fig, drawn = correlation_figure(rows, figure_data.n_tests(correlations), FigureStyle())
    assert not any("*" in t for t in drawn_texts(fig))
    assert not any(r["marked"] for r in drawn)
    assert "cells too small for their values" in fig.get_supxlabel().replace("\n", " ")


# --- one line, panel and table per configuration --------------------------------------------


def configured(name: str, digest: str | None, overrides: str, run_id: str, **kwargs) -> LoggedRun:
    tags = {"embsvd.overrides": overrides} | ({"embsvd.config_hash": digest} if digest else {})
    return logged_run(name, tags=tags, run_id=run_id, **kwargs)


def repeated_sweep() -> Sweep:
    """A filter's selection: a configuration run twice, the same model, group and variant
    with another random_state, and a raw run; the checks' tables as the axis figure needs."""
    _, tables = axis_tables()
    base = "model=m target=g analysis.center=true tracking.uri=sqlite:///x.db"
    return Sweep(
        "s",
        "",
        None,
        (
            configured("m/g/centered", "a" * 64, f"{base} analysis.random_state=0", "r1", **tables),
            configured("m/g/centered", "a" * 64, f"{base} analysis.random_state=0", "r2", **tables),
            configured("m/g/centered", "b" * 64, f"{base} analysis.random_state=1", "r3", **tables),
            configured(
                "m/g/raw", "c" * 64, "model=m target=g analysis.center=false", "r4", **tables
            ),
        ),
    )


def axis_tables():
    runs = axis_runs(variants=("centered",))
    tables = {k: v for k, v in runs[0].tables.items() if k != "top_tokens.csv"}
    return runs[0], tables


def test_a_repeated_configuration_draws_once_the_latest_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="embsvd.figures.selection"):
        distinct, repeats = distinct_runs(repeated_sweep())
    assert [r.run_id for r in distinct.runs] == ["r2", "r3", "r4"]
    (repeat,) = repeats
    assert (repeat.kept.run_id, [r.run_id for r in repeat.left_out]) == ("r2", ["r1"])
    assert "1 runs repeat the configuration of a later run" in caplog.text
    assert (
        "m/g/centered (run r1) -> m/g/centered (run r2), same config hash aaaaaaaa" in caplog.text
    )
    # without a config hash: the same model, group and variant is the same configuration
    old = Sweep(
        "s", "", None, (logged_run("m/g/raw", run_id="x"), logged_run("m/g/raw", run_id="y"))
    )
    distinct, (repeat,) = distinct_runs(old)
    assert [r.run_id for r in distinct.runs] == ["y"]
    assert repeat.same == "model, group and variant"


def test_runs_of_one_slot_are_labelled_by_what_differs():
    distinct, _ = distinct_runs(repeated_sweep())
    names = Names.of(distinct)
    assert dict(names.settings) == {"r2": "random_state=0", "r3": "random_state=1", "r4": ""}
    fig, rows = scree_figure(distinct, FigureStyle())
    (ax,) = fig.axes
    for line in ax.get_lines():
        if line.get_label().startswith("_"):
            continue
        x = line.get_xdata()
        assert list(x) == sorted(set(x)), "a line runs back to component 1"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "centered · random_state=0",
        "centered · random_state=1",
        "raw",
    ]
    fig, _ = draw_axis(list(distinct.runs))
    titles = [t.get_text() for t in by_gid(fig, "panel-title")]
    assert titles == ["centered · random_state=0", "centered · random_state=1", "raw"]


def test_settings_that_overrides_do_not_show_are_told_apart_by_config_hash():
    runs = [configured("m/g/centered", d * 64, "model=m target=g", d) for d in "ab"]
    labels = setting_labels(runs, variant_slot)
    assert labels == {"a": "config aaaaaaaa", "b": "config bbbbbbbb"}
    one = configured("m/g/centered", "a" * 64, "analysis.n_null=40 groups=[g,h]", "one")
    other = configured("m/g/centered", "b" * 64, "+analysis.x=1 a b", "other")
    assert overrides_of(other) == {"analysis.x": "1 a b"}
    assert setting_labels([one, other], variant_slot) == {
        "one": "n_null=40, groups=[g,h], x default",
        "other": "n_null default, groups default, x=1 a b",
    }


def test_the_manifest_names_the_runs_left_out_as_repeats(tmp_path, caplog):
    style = FigureStyle(formats=("png",), dpi=40)
    with caplog.at_level(logging.WARNING):
        write_figure_set(repeated_sweep(), tmp_path, style)
    manifest = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [r["run_id"] for r in manifest["runs"]] == ["r2", "r3", "r4"]
    assert manifest["repeats"] == [
        {"run_id": "r1", "name": "m/g/centered", "kept": "r2", "same": "config hash aaaaaaaa"}
    ]
    assert "repeat the configuration" in caplog.text


# --- display names and counting from 1 ------------------------------------------------------


def test_figures_name_models_and_groups_by_their_display_names():
    tags = {
        "embsvd.model_display": "all-MiniLM-L6-v2",
        "embsvd.group_display.eu_countries": "EU countries",
        "embsvd.group_display.digits": "digits",
    }
    runs = (
        logged_run("all_minilm_l6_v2/eu_countries/centered", tags=tags),
        logged_run(
            "pythia_70m@step1000:output/eu_countries/centered",
            tags={"embsvd.model_display": "Pythia-70M"},
        ),  # fmt: skip
        logged_run("old_model/first_names/raw"),  # logged before display names
    )
    names = Names.of(Sweep("s", "", None, runs))
    assert dict(names.models) == {
        "all_minilm_l6_v2": "all-MiniLM-L6-v2",
        "pythia_70m@step1000:output": "Pythia-70M@step1000 (W_U)",
        "old_model": "old_model",
    }
    assert names.group("eu_countries") == "EU countries"
    assert names.group("first_names") == "first names"  # '_' as spaces by default
    fig, rows = scree_figure(Sweep("s", "", None, runs), FigureStyle())
    texts = drawn_texts(fig)
    assert {"EU countries", "first names"} <= set(texts)
    assert any(t.startswith("all-MiniLM-L6-v2\n") for t in texts)
    assert not any("eu_countries" in t or "all_minilm" in t for t in texts)
    assert {r["model"] for r in rows} == {
        "all_minilm_l6_v2",
        "pythia_70m@step1000:output",
        "old_model",
    }


def test_two_models_that_would_read_alike_keep_their_identifiers():
    tags = {"embsvd.model_display": "BERT"}
    runs = (logged_run("bert_a/g/centered", tags=tags), logged_run("bert_b/g/centered", tags=tags))
    names = Names.of(Sweep("s", "", None, runs))
    assert dict(names.models) == {"bert_a": "BERT (bert_a)", "bert_b": "BERT (bert_b)"}


def test_scree_counts_components_from_1():
    fig, rows = scree_figure(Sweep("s", "", None, (logged_run("m/g/centered"),)), FigureStyle())
    fig.canvas.draw()
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    assert [r["component"] for r in rows] == [0, 1, 2]  # the CSV: metric steps, from 0
    assert ax.get_xlabel() == "component $k$"


def test_the_per_run_projection_figure_has_the_same_label_rules():
    from embsvd.figures.run_figures import projection_figure
    from embsvd.io.vocabulary import Vocabulary
    from embsvd.method.analysis import analyze
    from tests.conftest import token_group

    rng = np.random.default_rng(3)
    W = rng.normal(size=(60, 8))
    groups = {"g": token_group("g", [2, 3, 4, 5, 6]), "h": token_group("h", [20, 21, 22])}
    vocab = Vocabulary.from_matrix(W, [f"Ġtok{i}" for i in range(60)], marker="Ġ")
    result = analyze(W, groups, "g", vocab, n_components=2, top_k=5)
    fig = projection_figure(result, plt)
    fig.canvas.draw()  # a fixed layout: no layout pass
    extremes = [t for t in result.top_tokens if t.component == 0 and not t.in_group and t.rank <= 5]
    check_label_geometry(fig, 5 + len(extremes))
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "words of g",
        "tokens outside the group among the 5 at each end",
    ]
    assert fig.axes[0].get_xlabel() == "projection on component 1"
    labels = [t.get_text() for t in by_gid(fig, "token-label")]
    assert not any(label.startswith("Ġ") for label in labels)  # the text people read
    plt.close(fig)


def test_display_names_change_no_config_hash():
    from embsvd.groups import GroupSpec
    from embsvd.io.spec import CheckpointSpec
    from embsvd.pipeline.config import EmbsvdConfig, config_hash

    def settings(model_display, group_display):
        return EmbsvdConfig(
            model=CheckpointSpec(name="m", path="/x", display_name=model_display),
            groups={"g": GroupSpec(words=["a", "b"], display_name=group_display)},
            target="g",
        )

    assert config_hash(settings(None, None)) == config_hash(settings("M-1", "Group G"))
    assert CheckpointSpec(name="m", hub_id="org/Model-7B").display == "Model-7B"
    assert CheckpointSpec(name="m", path="/x").display == "m"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.display_name", ""),
        ("model.display_name", "two\nlines"),
        ("model.display_name", "x" * 61),
    ],
)
def test_a_display_name_a_figure_cannot_show_is_refused(key, value):
    from embsvd.pipeline.config import check_display_name

    with pytest.raises(ValueError, match=rf"{key}: .* is not a display name: one line of 1 to 60"):
        check_display_name(key, value)
