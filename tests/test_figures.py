"""Paper figures from a real sweep: ``experiments/run.py -m`` over two tiny checkpoints (a
WordPiece BERT and a byte-level BPE, so vocabularies differ), then
``experiments/figures.py`` in a subprocess, as a user types them; every figure's CSV is
checked against the tracking store."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from embsvd import tracking
from embsvd.figures import data as figure_data
from embsvd.figures.paper import (
    _by_model_and_group,
    _theme,
    axis_figure,
    correlation_figure,
    scree_figure,
)
from embsvd.figures.selection import Names
from embsvd.figures.style import FigureStyle
from embsvd.figures.tables import latex_escape
from embsvd.pipeline import figure_style
from embsvd.pipeline.config import FiguresConfig
from embsvd.tracking import contract
from embsvd.tracking.reading import SweepSelection, read_sweep
from tests.conftest import PROJECT_ROOT, write_tiny_bert, write_tiny_bpe
from tests.test_figure_data import drawn_texts
from tests.test_sweeps import run_sweep, store_uri

pytestmark = pytest.mark.slow

MODELS = ("tiny_bert", "tiny_bpe")
GROUPS = ("digits", "eu_countries")
DISPLAY = {"tiny_bert": "Tiny-BERT", "tiny_bpe": "tiny_bpe", "eu_countries": "EU countries"}
TOP_K = 3
SWEEP_OVERRIDES = ("analysis.n_null=40", "analysis.n_resamples=20", "analysis.n_global=4")
# the sweep defers its per-run figures: the first figures command draws them into the runs
DEFERRED = "analysis.figures=deferred"
RUN_FIGURES = {"scree.png", "group_mean_corr.png", "row_cosine.png", "projection_component0.png"}


@dataclass(frozen=True)
class Swept:
    root: Path
    uri: str
    parent_run_id: str
    sweep_id: str
    figures: Path  # the figure folder the first figures command wrote
    said: str = ""  # what that command printed

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def children(self):
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        return self.client.search_runs(
            experiments, f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'"
        )


def run_script(script: str, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "experiments" / script), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )


def figures(swept_or_root: Path, uri: str, *overrides: str, out: str = "figures"):
    return run_script(
        "figures.py",
        f"tracking.uri={uri}",
        f"output_dir={swept_or_root / out}",
        f"top_k={TOP_K}",
        *overrides,
        cwd=swept_or_root,
    )


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path) -> Swept:
    """A sweep of 8 runs (2 models x 2 groups x centered/raw), with the checks on, and
    its figures made once with the default selection (the most recent sweep)."""
    root = tmp_path_factory.mktemp("figures")
    (root / "store").mkdir()
    shutil.copyfile(migrated_store_file, root / "store" / "mlflow.db")
    uri = store_uri(root)
    write_tiny_bert(root / "tiny-bert")
    write_tiny_bpe(root / "tiny-bpe", seed=1)
    models = root / "conf" / "model"
    models.mkdir(parents=True)
    for name, folder in zip(MODELS, ("tiny-bert", "tiny-bpe"), strict=True):
        (models / f"{name}.yaml").write_text(f"name: {name}\npath: {root / folder}\n")
    # a display name for one model; the other's is its name (figures read the tags)
    with open(models / "tiny_bert.yaml", "a") as handle:
        handle.write(f"display_name: {DISPLAY['tiny_bert']}\n")
    sweep = run_sweep(
        root,
        f"hydra.searchpath=[file://{root / 'conf'}]",
        f"model={','.join(MODELS)}",
        f"target={','.join(GROUPS)}",
        "analysis.center=true,false",
        *SWEEP_OVERRIDES,
        DEFERRED,
    )
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    parent_run_id = (root / "sweep" / "mlflow_parent_run_id").read_text().strip()
    sweep_id = (root / "sweep" / "embsvd_sweep_id").read_text().strip()
    # the sweep names its id when it starts and ends with the command that draws it
    assert f"Sweep {sweep_id}: parent run {parent_run_id}" in sweep.stdout
    assert f"experiments/figures.py sweep.sweep_id={sweep_id} tracking.uri={uri}" in sweep.stdout
    made = figures(root, uri)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    return Swept(root, uri, parent_run_id, sweep_id, root / "figures" / sweep_id, made.stdout)


def read_rows(file: Path) -> list[dict[str, str]]:
    with open(file, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def logged_rows(client: MlflowClient, run_id: str, artifact: str) -> list[dict[str, str]]:
    return read_rows(Path(client.download_artifacts(run_id, artifact)))


def test_every_figure_and_table_is_written(swept):
    stems = ["scree_grid", "cross_model_spectra", "cross_model_overlap"]
    stems += [f"group_mean_corr__{model}" for model in MODELS]
    stems += [f"axis__{model}__{group}" for model in MODELS for group in GROUPS]
    expected = {f"{stem}.{ext}" for stem in stems for ext in ("pdf", "png", "csv")}
    expected |= {"top_tokens.csv", "top_tokens.md", "top_tokens.tex", "sweep.json"}
    expected |= {"explorer.html"}  # the sweep's vocabulary explorer (figures/explorer.py)
    assert {p.name for p in swept.figures.iterdir()} == expected
    for stem in stems:
        pdf = (swept.figures / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF")
        # fonts embedded as TrueType (Type 42), never as Type 3 bitmaps
        assert b"/FontFile2" in pdf and b"/Type3" not in pdf, stem
        assert (swept.figures / f"{stem}.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert read_rows(swept.figures / f"{stem}.csv"), f"{stem}.csv is empty"
    manifest = (swept.figures / "sweep.json").read_text()
    assert swept.parent_run_id in manifest and swept.sweep_id in manifest


def test_the_default_selection_is_the_latest_sweep_and_names_the_folder(swept):
    assert swept.figures.parent.name == "figures"
    assert swept.sweep_id.startswith("multirun_")  # sweep/<experiment>/<date> <time>
    parent = swept.client.get_run(swept.parent_run_id)
    assert parent.data.tags[contract.Tag.SWEEP_ID] == swept.sweep_id
    assert {r.data.tags[contract.Tag.SWEEP_ID] for r in swept.children()} == {swept.sweep_id}


def test_scree_csv_equals_the_store(swept):
    rows = read_rows(swept.figures / "scree_grid.csv")
    children = swept.children()
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in children}
    client = swept.client
    for child in children:
        run_id = child.info.run_id
        metrics = child.data.metrics
        mine = [r for r in rows if r["run_id"] == run_id]

        def history(key: str, run_id: str = run_id) -> dict[int, float]:
            return {m.step: m.value for m in client.get_metric_history(run_id, key)}

        S = history("singular_value")
        assert [float(r["singular_value"]) for r in mine] == [S[k] for k in sorted(S)]
        # jackknife intervals where the run logged one, no bar (nan) where it did not
        for side in ("lo", "hi"):
            interval = history(f"interval/singular_value_{side}")
            assert interval, f"no interval/singular_value_{side} in {child.info.run_name}"
            for r in mine:
                k = int(r["component"])
                if k in interval:
                    assert float(r[f"interval_{side}"]) == interval[k]
                else:
                    assert r[f"interval_{side}"] == "nan"
                    assert r[f"normalized_interval_{side}"] == "nan"
        shares = {
            int(b["component"]): b
            for b in logged_rows(client, run_id, "null_spectrum.csv")
            if b["statistic"] == "share"
        }
        assert sorted(shares) == [int(r["component"]) for r in mine]
        for r in mine:
            share = shares[int(r["component"])]
            assert float(r["null_share_q2.5"]) == float(share["null_q2.5"])
            assert float(r["null_share_q97.5"]) == float(share["null_q97.5"])
            assert float(r["null_percentile"]) == float(share["percentile"])
            assert float(r["normalized"]) == pytest.approx(float(share["observed"]))
        # the figure places s1's share where the run's null test does
        first = next(r for r in mine if r["component"] == "0")
        assert float(first["null_percentile"]) == pytest.approx(
            metrics["null/s1_share/percentile"], abs=100 / metrics["null/n_null"]
        )
        norm = sum(s * s for s in S.values()) ** 0.5
        assert [float(r["normalized"]) for r in mine] == pytest.approx(
            [S[k] / norm for k in sorted(S)]
        )
        assert {r["model"] for r in mine} == {child.data.tags["embsvd.model"]}
        assert {r["group"] for r in mine} == {child.data.tags["embsvd.target_group"]}


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """q_i = min(1, min over p_j >= p_i of m p_j / #{p <= p_j}): the definition, directly."""
    m = len(p_values)
    return [
        min(1.0, min(m * pj / sum(p <= pj for p in p_values) for pj in p_values if pj >= pi))
        for pi in p_values
    ]


CORRELATION_METRICS = {
    "raw": "group_mean_corr",
    "centered": "group_mean_corr_centered",
    "decorrelated": "group_mean_corr_decorrelated",
}


def test_heatmap_csv_equals_the_store_and_marks_benjamini_hochberg_over_the_sweep(swept):
    rows = []
    for model in MODELS:
        mine = read_rows(swept.figures / f"group_mean_corr__{model}.csv")
        assert {r["model"] for r in mine} == {model}
        # one row per variant and pair; no whitened runs, so decorrelated is there too
        assert sorted((r["variant"], r["group_a"], r["group_b"]) for r in mine) == sorted(
            (variant, "digits", "eu_countries") for variant in CORRELATION_METRICS
        )
        rows += mine
    p_values = []
    for row in rows:
        metrics = swept.client.get_run(row["run_id"]).data.metrics
        key = f"{CORRELATION_METRICS[row['variant']]}/{row['group_a']}__{row['group_b']}"
        assert float(row["r"]) == metrics[key]
        assert float(row["null_mean"]) == metrics[f"null/{key}/mean"]
        assert float(row["percentile"]) == metrics[f"null/{key}/percentile"]
        assert float(row["p_value"]) == metrics[f"null/{key}/p_value"]
        p_values.append(metrics[f"null/{key}/p_value"])
    # one family: every test of the sweep, whatever its model
    for row, q in zip(rows, benjamini_hochberg(p_values), strict=True):
        assert float(row["q_bh"]) == pytest.approx(q, rel=1e-12)
        assert row["significant"] == str(q < 0.05).lower()


def test_axis_csv_equals_the_logged_histogram_and_group_projections(swept):
    client = swept.client
    for child in swept.children():
        tags = child.data.tags
        rows = read_rows(
            swept.figures / f"axis__{tags['embsvd.model']}__{tags['embsvd.target_group']}.csv"
        )
        mine = [r for r in rows if r["run_id"] == child.info.run_id]
        histogram = [
            r
            for r in logged_rows(client, child.info.run_id, "projection_histogram.csv")
            if r["component"] == "0"
        ]
        bins = [r for r in mine if r["kind"] == "bin"]
        assert [int(r["count"]) for r in bins] == [int(h["count"]) for h in histogram]
        assert [float(r["bin_left"]) for r in bins] == [float(h["bin_left"]) for h in histogram]
        words = logged_rows(client, child.info.run_id, "group_projections.csv")
        assert {(r["label"], float(r["projection"])) for r in mine if r["kind"] == "group"} == {
            (w["word"], float(w["projection_0"])) for w in words
        }
        extremes = [r for r in mine if r["kind"] == "extreme"]
        assert extremes and all(r["label"] for r in extremes)


def test_tables_hold_the_top_tokens_of_every_run(swept):
    markdown = (swept.figures / "top_tokens.md").read_text()
    latex = (swept.figures / "top_tokens.tex").read_text()
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex
    table = read_rows(swept.figures / "top_tokens.csv")
    for child in swept.children():
        tags = child.data.tags
        model, group = tags["embsvd.model"], tags["embsvd.target_group"]
        variant = "centered" if tags["embsvd.center"] == "true" else "raw"
        assert f"## {model} · {group} · {variant}" in markdown
        logged = logged_rows(swept.client, child.info.run_id, "top_tokens.csv")
        top = [r for r in logged if int(r["rank"]) <= TOP_K]
        mine = [r for r in table if r["run_id"] == child.info.run_id]
        assert [(r["component"], r["side"], r["token"], float(r["projection"])) for r in mine] == [
            (r["component"], r["side"], r["token"], float(r["projection"])) for r in top
        ]
        for r in top:
            assert f"`{r['text']}`" in markdown  # as people read it: ␣france, ia
            assert f"\\texttt{{{latex_escape(r['text'])}}}" in latex


def test_cross_model_comparison_matches_words_across_vocabularies(swept):
    rows = read_rows(swept.figures / "cross_model_overlap.csv")
    assert {(r["model_a"], r["model_b"]) for r in rows} == {MODELS}
    assert {(r["group"], r["variant"]) for r in rows} == {
        (g, v) for g in GROUPS for v in ("centered", "raw")
    }
    for r in rows:
        shared = r["shared"].split()
        assert int(r["n_shared"]) == len(shared)
        assert all(s == s.lower() and not s.startswith(("Ġ", "##")) for s in shared)
    spectra = read_rows(swept.figures / "cross_model_spectra.csv")
    assert {r["model"] for r in spectra} == set(MODELS)
    for run_id in {r["run_id"] for r in spectra}:
        history = swept.client.get_metric_history(run_id, "singular_value")
        logged = [m.value for m in sorted(history, key=lambda m: m.step)]
        assert [float(r["singular_value"]) for r in spectra if r["run_id"] == run_id] == logged
    first = [r for r in spectra if r["model"] == MODELS[0]]
    assert {float(r["distance_from_first_model"]) for r in first} == {0.0}


def test_the_figure_set_is_logged_to_the_parent_run(swept):
    logged = {a.path for a in swept.client.list_artifacts(swept.parent_run_id, "figures/paper")}
    assert "figures/paper/scree_grid.pdf" in logged
    assert "figures/paper/top_tokens.tex" in logged


def test_the_figures_command_logs_the_per_run_figures_the_runs_deferred(swept):
    """The sweep's runs drew no figures (``analysis.figures=deferred``); the figures
    command drew each run's from the tables it logged and logged them into the run, where
    the MLflow UI shows them, and said so."""
    children = swept.children()
    assert len(children) == 8
    for child in children:
        assert child.data.tags["embsvd.run_figures"] == "drawn later"
        digits = child.data.tags["embsvd.target_group"] == "digits"  # a declared order
        names = {
            Path(a.path).name for a in swept.client.list_artifacts(child.info.run_id, "figures")
        }
        assert names == RUN_FIGURES | ({"order.png"} if digits else set())
        scree = swept.client.download_artifacts(child.info.run_id, "figures/scree.png")
        assert Path(scree).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "per-run figures of 8 runs that deferred them logged to those runs" in swept.said


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_second_run_writes_identical_files(swept):
    first = digests(swept.figures)
    again = figures(swept.root, swept.uri, f"sweep.parent_run_id={swept.parent_run_id}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert digests(swept.figures) == first  # CSVs, tables, and the PDF and PNG bytes too


def test_select_by_sweep_id_and_by_filter(swept):
    by_id = figures(swept.root, swept.uri, f"sweep.sweep_id={swept.sweep_id}", out="by_id")
    assert by_id.returncode == 0, by_id.stderr[-3000:]
    assert digests(swept.root / "by_id" / swept.sweep_id) == digests(swept.figures)
    by_filter = figures(
        swept.root,
        swept.uri,
        # no sweep.experiment: a filter searches tracking.experiment (embsvd)
        # Hydra wants a value with spaces and '=' quoted; MLflow takes "..." strings too
        """sweep.filter='tags.embsvd.center = "true" and tags.embsvd.model = "tiny_bert"'""",
        "sweep.name=bert_centered",
        out="by_filter",
    )
    assert by_filter.returncode == 0, by_filter.stderr[-3000:]
    folder = swept.root / "by_filter" / "bert_centered"
    rows = read_rows(folder / "scree_grid.csv")
    assert {(r["model"], r["variant"]) for r in rows} == {("tiny_bert", "centered")}
    assert not (folder / "cross_model_overlap.csv").exists()  # one model only


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (
            SweepSelection(sweep_id="no_such_sweep"),
            "sweep.sweep_id='no_such_sweep': no sweep with this id in .*; recent sweeps: multirun_",
        ),
        (SweepSelection(parent_run_id="0123abcd"), "sweep.parent_run_id='0123abcd': no such run"),
        (
            SweepSelection(experiment="embsvd", filter_string="tags.embsvd.model = 'gpt9'"),
            "runs of experiment 'embsvd' matching .*gpt9.*: no runs match",
        ),
        (
            SweepSelection(experiment="nope"),
            r"sweep.experiment='nope': no such experiment .* \(it has .*embsvd.*\)",
        ),
        (
            SweepSelection(experiment="embsvd", filter_string="tags.embsvd.model === 'x'"),
            "is not a valid MLflow filter",
        ),
        (
            SweepSelection(filter_string="tags.embsvd.center = 'true'"),
            "sweep.filter=.* needs sweep.experiment, the experiment whose runs it filters",
        ),
        (
            SweepSelection(sweep_id="x", parent_run_id="y"),
            "give one of parent_run_id, sweep_id and filter",
        ),
    ],
)
def test_a_selection_that_matches_nothing_says_so(swept, selection, message):
    with pytest.raises(ValueError, match=message):
        read_sweep(swept.uri, selection)


def test_an_empty_store_has_no_sweep_to_draw(tmp_path, migrated_store_file):
    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    with pytest.raises(
        ValueError, match=r"no sweep in .* \(no run is tagged embsvd.role=sweep\); run a sweep with"
    ):
        read_sweep(f"sqlite:///{tmp_path / 'mlflow.db'}", SweepSelection())


def test_runs_of_mixed_experiments_or_none_finished_are_refused(swept):
    """A sweep over tracking.experiment puts its children in several experiments."""
    a = tracking.TrackingStore(swept.uri, "mixed_a")
    b = tracking.TrackingStore(swept.uri, "mixed_b")
    parent = tracking.start_run(a, "sweep/mixed/x", {"embsvd.role": "sweep"})
    for store in (a, b):
        with tracking.tracked_run(
            store, "m/digits/centered", {"mlflow.parentRunId": parent.run_id}
        ):
            pass
    swept.client.set_terminated(parent.run_id)  # a parent still RUNNING would be refused first
    with pytest.raises(
        ValueError,
        match=r"holds runs of several experiments: 'mixed_a' \(1 runs\), 'mixed_b' \(1 runs\)"
        ".*select one with sweep.experiment=mixed_a and a sweep.filter",
    ):
        read_sweep(swept.uri, SweepSelection(parent_run_id=parent.run_id))
    lonely = tracking.start_run(a, "sweep/failed/x", {"embsvd.role": "sweep"})
    with (
        pytest.raises(RuntimeError),
        tracking.tracked_run(a, "m/digits/raw", {"mlflow.parentRunId": lonely.run_id}),
    ):
        raise RuntimeError("boom")
    swept.client.set_terminated(lonely.run_id, "FAILED")
    with pytest.raises(ValueError, match=r"no FINISHED run to draw \(m/digits/raw FAILED\)"):
        read_sweep(swept.uri, SweepSelection(parent_run_id=lonely.run_id))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"alpha": 1.5}, "alpha=1.5: a significance level between 0 and 1"),
        ({"top_k": 0}, "top_k=0: at least 1 token per end"),
        ({"formats": ["pdf", "jpg"]}, r"formats=\['pdf', 'jpg'\]: choose from"),
    ],
)
def test_bad_figure_settings_are_named(setting, message):
    with pytest.raises(ValueError, match=message):
        figure_style(FiguresConfig(output_dir="x", **setting))


def test_the_command_exits_1_with_the_reason_and_writes_nothing(swept):
    failed = figures(swept.root, swept.uri, "sweep.sweep_id=no_such_sweep", out="bad")
    assert failed.returncode == 1
    assert "figures: sweep.sweep_id='no_such_sweep': no sweep with this id in" in failed.stderr
    assert not (swept.root / "bad").exists()


def test_latex_escape_handles_every_special_character():
    assert latex_escape("##ia_$&%{}~^\\<>") == (
        r"\#\#ia\_\$\&\%\{\}\textasciitilde{}\textasciicircum{}\textbackslash{}"
        r"\textless{}\textgreater{}"
    )


def test_display_names_are_logged_with_the_run_and_drawn(swept):
    client = swept.client
    for child in swept.children():
        tags = child.data.tags
        assert tags["embsvd.model_display"] == DISPLAY[tags["embsvd.model"]]
        assert tags["embsvd.group_display.eu_countries"] == "EU countries"
        assert tags["embsvd.group_display.digits"] == "digits"
        groups = json.loads(
            Path(client.download_artifacts(child.info.run_id, "groups.json")).read_text()
        )
        assert groups["eu_countries"]["display_name"] == "EU countries"
    rows = read_rows(swept.figures / "scree_grid.csv")
    assert {(r["model"], r["model_display"]) for r in rows} == {(m, DISPLAY[m]) for m in MODELS}
    assert {r["group_display"] for r in rows} == {"digits", "EU countries"}
    # the figures as drawn: display names in every text, identifiers in none
    sweep = read_sweep(swept.uri, SweepSelection(parent_run_id=swept.parent_run_id))
    style = FigureStyle()
    with _theme():
        correlations = figure_data.correlation_rows(sweep, style.alpha)
        names = Names.of(sweep)
        figs = [scree_figure(sweep, style)[0]]
        figs += [correlation_figure(rows, 12, style)[0] for rows in correlations.values()]
        figs += [axis_figure(runs, names, style)[0] for runs in _by_model_and_group(sweep).values()]
        texts = [t for fig in figs for t in drawn_texts(fig)]
    assert "EU countries" in texts and any("Tiny-BERT" in t for t in texts)
    assert not any("eu_countries" in t or "tiny_bert" in t for t in texts)


def test_a_configuration_run_again_is_drawn_once_with_a_warning(swept):
    """A filter that picks a run and its rerun (same config hash) draws the rerun alone."""
    rerun = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "experiments" / "run.py"),
            f"hydra.searchpath=[file://{swept.root / 'conf'}]",
            f"tracking.uri={swept.uri}",
            f"hydra.run.dir={swept.root / 'rerun'}",
            "model=tiny_bert",
            "target=digits",
            "analysis.center=true",
            *SWEEP_OVERRIDES,
        ],
        cwd=swept.root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    runs = swept.client.search_runs(
        [e.experiment_id for e in swept.client.search_experiments()],
        "tags.`embsvd.model` = 'tiny_bert' and tags.`embsvd.target_group` = 'digits' "
        "and tags.`embsvd.center` = 'true'",
        order_by=["attributes.start_time ASC"],
    )
    first, latest = runs[0], runs[-1]
    assert len(runs) == 2
    assert first.data.tags["embsvd.config_hash"] == latest.data.tags["embsvd.config_hash"]
    made = figures(
        swept.root,
        swept.uri,
        'sweep.filter=\'tags.embsvd.model = "tiny_bert" and tags.embsvd.target_group = "digits"\'',
        "sweep.name=digits_again",
        out="again",
    )
    assert made.returncode == 0, made.stderr[-3000:]
    said = made.stdout + made.stderr
    assert "1 runs repeat the configuration of a later run" in said
    assert f"(run {first.info.run_id}) -> " in said and f"(run {latest.info.run_id})" in said
    folder = swept.root / "again" / "digits_again"
    rows = read_rows(folder / "scree_grid.csv")
    centered = {r["run_id"] for r in rows if r["variant"] == "centered"}
    assert centered == {latest.info.run_id}
    manifest = json.loads((folder / "sweep.json").read_text())
    assert [r["run_id"] for r in manifest["repeats"]] == [first.info.run_id]


def test_drawing_other_formats_keeps_the_files_drawn_before(swept):
    first = figures(swept.root, swept.uri, f"sweep.sweep_id={swept.sweep_id}", out="formats")
    assert first.returncode == 0, first.stderr[-3000:]
    folder = swept.root / "formats" / swept.sweep_id
    pngs = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    assert "scree_grid.png" in pngs
    again = figures(
        swept.root, swept.uri, f"sweep.sweep_id={swept.sweep_id}", "formats=[pdf]", out="formats"
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in folder.glob("*.png")} == pngs
    assert sorted(json.loads((folder / "sweep.json").read_text())["kept"]) == sorted(pngs)
