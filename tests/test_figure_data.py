"""What the paper figures plot, from hand-made runs: no store, no subprocess."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.text import Text
from scipy.stats import false_discovery_control

from embsvd.figures import data as figure_data
from embsvd.figures.paper import (
    FigureStyle,
    axis_figure,
    correlation_figure,
    scree_figure,
    write_figure_set,
)
from embsvd.figures.run_figures import spread_apart
from embsvd.figures.tables import latex_tables, markdown_tables
from embsvd.tracking.artifacts import NULL_QUANTILES
from embsvd.tracking.contract import LoggedRun, Sweep


def logged_run(
    name: str,
    top: dict[int, tuple[list[str], list[str]]] | None = None,
    singular_values: tuple[float, ...] = (3.0, 2.0, 1.0),
    metrics: dict[str, float] | None = None,
    series: dict[str, tuple[float, ...]] | None = None,
    **tables,
) -> LoggedRun:
    """A run named ``<model>/<group>/<variant>`` whose top_tokens.csv holds, per component,
    the tokens at the top and bottom end (rank order), with ``metrics`` and ``series``
    (beside ``singular_value``) as logged."""
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
        metrics=metrics or {},
        series={"singular_value": singular_values, **(series or {})},
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
    (folder / "sweep.json").write_text('{"embsvd_figure_set": 1}')  # a set drawn before
    broken = logged_run("m/g/centered", **{"projection_histogram.csv": ({"component": "0"},)})
    with pytest.raises(KeyError, match="bin_left"):
        write_figure_set(
            Sweep("s", "", None, (broken,)), tmp_path / "figures", FigureStyle(formats=("png",))
        )
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["s"]  # no scratch left
    assert (folder / "scree_grid.csv").read_text() == "earlier\n"


def test_a_figure_set_replaces_its_own_folder_and_refuses_another(tmp_path):
    runs = (logged_run("m/g/centered", top={0: (["a"], ["b"])}),)
    style = FigureStyle(formats=("png",), dpi=40)
    files = write_figure_set(Sweep("s", "", None, runs), tmp_path, style)
    folder = tmp_path / "s"
    assert {f.name for f in files} >= {"scree_grid.png", "sweep.json", "top_tokens.md"}
    assert json.loads((folder / "sweep.json").read_text())["embsvd_figure_set"] == 1
    (folder / "stale.csv").write_text("from an older set\n")
    write_figure_set(Sweep("s", "", None, runs), tmp_path, style)  # its own: replaced
    assert not (folder / "stale.csv").exists() and (folder / "scree_grid.png").is_file()
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
    assert list(correlations) == ["a", "a+whitened", "b"]
    a = correlations["a"]
    assert [(r["variant"], r["group_a"], r["group_b"]) for r in a] == [
        (v, *pair)
        for pair in (("digits", "eu"), ("eu", "months"))
        for v in ("raw", "centered", "decorrelated")
    ]
    assert {r["run_id"] for r in a[:3]} == {"a/digits/centered"}
    assert [r["r"] for r in a[:3]] == [0.02, -0.1, 0.3]
    assert [v for v in (r["variant"] for r in correlations["a+whitened"])] == ["raw", "centered"]
    rows = [r for model in correlations.values() for r in model]
    p_values = [r["p_value"] for r in rows]
    assert len(p_values) == figure_data.n_tests(correlations) == 11
    q_values = false_discovery_control(p_values, method="bh")
    assert [r["q_bh"] for r in rows] == pytest.approx(q_values)
    assert [r["significant"] for r in rows] == [bool(q < 0.05) for q in q_values]
    # one family: model b alone would give its centered r (p 0.005) q = 3 * 0.005 / 1
    (b_centered,) = [r for r in correlations["b"] if r["variant"] == "centered"]
    assert b_centered["q_bh"] > 3 * 0.005
    assert {(r["null_mean"], r["percentile"]) for r in rows} == {(0.01, 15.0)}


def test_correlation_figure_shows_raw_centered_and_decorrelated_side_by_side():
    correlations = figure_data.correlation_rows(correlation_sweep(), alpha=0.05)
    fig, rows = correlation_figure("a", correlations["a"], 11, FigureStyle())
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["raw", "centered", "decorrelated"]
    raw_cells = [t.get_text() for t in panels[0].texts]
    # digits-eu raw: p 0.001 is the smallest of 11 tests, q = 11 * 0.001 = 0.011
    assert raw_cells.count("+0.02*\n15%") == 2  # both triangles
    assert "+0.30\n15%" in [t.get_text() for t in panels[2].texts]  # q 0.6: no star
    note = fig.get_supxlabel().replace("\n", " ")
    assert (
        "* Benjamini-Hochberg q < 0.05 over the sweep's 11 tests of group-mean r "
        "against matched random groups; % = null percentile" in note
    )
    whitened, _ = correlation_figure("a+whitened", correlations["a+whitened"], 11, FigureStyle())
    assert [ax.get_title() for ax in whitened.axes if ax.get_title()] == ["raw", "centered"]


def test_without_a_null_no_star_and_no_note_claims_one():
    run = logged_run(
        "m/digits/centered", metrics=correlation_metrics("digits__eu", (0.02, 0.01), None)
    )
    correlations = figure_data.correlation_rows(Sweep("s", "", None, (run,)), alpha=0.05)
    (rows,) = correlations.values()
    assert {(r["p_value"], r["q_bh"], r["significant"], r["percentile"]) for r in rows} == {
        ("", "", "", "")
    }
    fig, _ = correlation_figure("m", rows, figure_data.n_tests(correlations), FigureStyle())
    cells = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "+0.02" in cells and not any("*" in c or "%" in c for c in cells)
    assert "Benjamini" not in fig.get_supxlabel()
