"""What the paper figures plot, from hand-made runs: no store, no subprocess."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from matplotlib.text import Text

from embsvd import figure_data
from embsvd.contract import LoggedRun, Sweep
from embsvd.paper import FigureStyle, axis_figure, scree_figure, write_figure_set
from embsvd.paper_tables import latex_tables, markdown_tables
from embsvd.plotting import spread_apart


def logged_run(
    name: str,
    top: dict[int, tuple[list[str], list[str]]] | None = None,
    singular_values: tuple[float, ...] = (3.0, 2.0, 1.0),
    **tables,
) -> LoggedRun:
    """A run named ``<model>/<group>/<variant>`` whose top_tokens.csv holds, per component,
    the tokens at the top and bottom end (rank order)."""
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
    return LoggedRun(
        run_id=name,
        name=name,
        experiment="embsvd",
        tags={"embsvd.target_group": group},
        metrics={},
        series={"singular_value": singular_values},
        tables={"top_tokens.csv": tuple(rows), **tables},
    )


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


def test_axis_figure_labels_never_overlap():
    """Ten group words and ten extremes bunched at both ends of the histogram."""
    edges = np.linspace(-1, 1, 41)
    histogram = tuple(
        {"component": "0", "bin_left": str(lo), "bin_right": str(hi), "count": str(5 + i % 7)}
        for i, (lo, hi) in enumerate(itertools.pairwise(edges))
    )
    words = tuple(
        {"word": f"word{i}", "token_id": str(i), "projection_0": str(0.9 + i * 0.001)}
        for i in range(10)
    )
    extremes = {0: ([f"high_{i}" for i in range(5)], [f"low_{i}" for i in range(5)])}
    runs = [
        logged_run(
            f"m/g/{variant}",
            extremes,
            **{"projection_histogram.csv": histogram, "group_projections.csv": words},
        )
        for variant in ("centered", "raw")
    ]
    fig, rows = axis_figure("m", "g", runs, FigureStyle())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    labels = [t for t in fig.findobj() if t.get_gid() == "token-label"]
    assert len(labels) == 2 * (10 + 10)
    # the text alone: an annotation's own extent includes its leader line
    boxes = [Text.get_window_extent(t, renderer) for t in labels]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), f"{labels[i].get_text()} overlaps {labels[j].get_text()}"
    figure_box = fig.bbox
    for box in boxes:  # every label inside the figure, none cut off
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1 and box.y1 <= figure_box.y1
    assert {r["kind"] for r in rows} == {"bin", "group", "extreme"}


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
    broken = logged_run("m/g/centered", **{"projection_histogram.csv": ({"component": "0"},)})
    with pytest.raises(KeyError, match="bin_left"):
        write_figure_set(Sweep("s", "", None, (broken,)), folder, FigureStyle(formats=("png",)))
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["s"]  # no .partial left
    assert (folder / "scree_grid.csv").read_text() == "earlier\n"


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
