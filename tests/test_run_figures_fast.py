"""Per-run figures: drawn with each run, deferred to the figures command, or none.

Real runs of a tiny BERT checkpoint into a sqlite store in tmp_path (``run_job`` on
composed configs, and the notebook API with ``tracking.log_result``), real PNG files read
back from the store, and the figures command (``figures_job``) run in-process on a
selection that holds a run of each kind. No timing here: the benchmark measures speed.
"""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from matplotlib.text import Text
from mlflow.tracking import MlflowClient
from PIL import Image

from embsvd import tracking
from embsvd.checks.run import ChecksConfig, run_checks
from embsvd.figures.fast_axes import clear_caches
from embsvd.figures.run_data import Spectrum, Square, logged_figure_data, run_figure_data
from embsvd.figures.run_figures import (
    RUN_THEME,
    Stamp,
    draw_run_figures,
    heatmap_figure,
    order_view_figure,
    projection_view_figure,
    scree_figure,
)
from embsvd.groups import GroupSpec, select_single_tokens
from embsvd.io.checkpoint import load_checkpoint
from embsvd.io.spec import CheckpointSpec
from embsvd.method.analysis import analyze
from embsvd.pipeline import figures_job, run_job
from embsvd.pipeline.config import EmbsvdConfig, validate
from embsvd.pipeline.figures_job import draw_deferred_run_figures, with_run_tables
from embsvd.tracking.contract import Tag
from tests.conftest import CONFIG_DIR, DIGITS, write_tiny_bert
from tests.test_figure_data import check_label_geometry
from tests.test_pipeline import artifact_names, job_config

EXPERIMENT = "run-figures"
# each figure's file (the artifact figures/<file>) and its size in pixels
SIZES = {
    "scree.png": (650, 260),
    "group_mean_corr.png": (400, 340),
    "row_cosine.png": (500, 425),
    "projection_component0.png": (650, 340),
    "order.png": (340, 340),  # digits declare a linear order
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory, migrated_store_file) -> dict:
    """One run of each kind, identical but for ``analysis.figures``, in a fresh store; then
    the figures command on a filter that selects all three."""
    root = tmp_path_factory.mktemp("run-figures")
    (root / "store").mkdir()
    shutil.copyfile(migrated_store_file, root / "store" / "mlflow.db")
    uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    write_tiny_bert(root / "tiny-bert")
    for figures in ("true", "deferred", "false"):
        run_job(job_config(root / "tiny-bert", uri, EXPERIMENT, f"analysis.figures={figures}"))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], order_by=["start_time ASC"])
    by_setting = {r.data.params["analysis.figures"]: r.info.run_id for r in runs}
    before = {setting: client.get_run(run_id).data.tags for setting, run_id in by_setting.items()}
    artifacts_before = {s: artifact_names(client, r) for s, r in by_setting.items()}
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "figures",
            overrides=[f"tracking.uri={uri}", f"output_dir={root / 'figures'}"],
        )
    cfg.sweep.experiment = EXPERIMENT
    cfg.sweep.filter = f"tags.`{Tag.TARGET_GROUP}` = 'digits'"
    cfg.sweep.name = "three_runs"
    # drawn as by a process of its own: nothing the runs' drawing left in memory reused
    clear_caches()
    figures_job(cfg)
    return {
        "root": root,
        "uri": uri,
        "client": client,
        "runs": by_setting,
        "tags_before": before,
        "artifacts_before": artifacts_before,
    }


def pixels(client: MlflowClient, run_id: str, file: str, scratch: Path) -> np.ndarray:
    local = client.download_artifacts(run_id, f"figures/{file}", str(scratch))
    assert Path(local).read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(local) as image:
        assert image.size == SIZES[file], file
        return np.asarray(image.convert("RGBA"))


def test_a_run_draws_its_figures_under_the_artifact_paths_the_ui_shows(store, tmp_path):
    client, run_id = store["client"], store["runs"]["True"]
    assert artifact_names(client, run_id, "figures") == set(SIZES)
    for file in SIZES:
        image = pixels(client, run_id, file, tmp_path)
        assert (image[..., :3] < 128).any(), f"{file} is blank"  # text and lines drawn
    assert Tag.RUN_FIGURES not in client.get_run(run_id).data.tags


def test_a_run_without_figures_logs_none_and_no_tag(store):
    client, run_id = store["client"], store["runs"]["False"]
    assert "figures" not in artifact_names(client, run_id)
    assert Tag.RUN_FIGURES not in client.get_run(run_id).data.tags


def test_a_deferred_run_logs_none_then_the_figures_command_logs_the_same_figures(store, tmp_path):
    client, deferred, drawn = store["client"], store["runs"]["deferred"], store["runs"]["True"]
    # while the sweep ran: no figures, and a tag that says why
    assert "figures" not in store["artifacts_before"]["deferred"]
    assert store["tags_before"]["deferred"][Tag.RUN_FIGURES] == "deferred"
    # the figures command drew them from the run's tables into the run
    assert client.get_run(deferred).data.tags[Tag.RUN_FIGURES] == "drawn later"
    assert artifact_names(client, deferred, "figures") == artifact_names(client, drawn, "figures")
    for file in SIZES:  # the same analysis, drawn from its tables: the same pixels
        later = pixels(client, deferred, file, tmp_path / "later")
        at_once = pixels(client, drawn, file, tmp_path / "at_once")
        np.testing.assert_array_equal(later, at_once, err_msg=file)


def test_the_figures_command_leaves_the_other_runs_alone(store):
    client = store["client"]
    assert "figures" not in artifact_names(client, store["runs"]["False"])
    assert artifact_names(client, store["runs"]["True"]) == store["artifacts_before"]["True"]


def test_figures_drawn_later_are_not_drawn_again(store):
    sweep = tracking.read_sweep(
        store["uri"],
        tracking.SweepSelection(
            experiment=EXPERIMENT, filter_string=f"tags.`{Tag.TARGET_GROUP}` = 'digits'"
        ),
    )
    assert draw_deferred_run_figures(store["uri"], sweep) == ([], [])


def test_a_deferred_run_without_its_tables_is_named_and_keeps_its_tag(store):
    """A run whose tables are incomplete (an older embsvd, a hand-made run) is not drawn;
    the command says which run and what is missing, and the run stays deferred."""
    store_ = tracking.TrackingStore(store["uri"], EXPERIMENT, create=False)
    with tracking.tracked_run(store_, "digits · centered · tiny_bert", {}) as run:
        run.set_tags(
            {
                Tag.RUN_FIGURES: "deferred",
                Tag.MODEL: "tiny_bert",
                Tag.TARGET_GROUP: "hand_made",
                Tag.CENTER: "true",
                Tag.NORMALIZE_ROWS: "false",
                Tag.GEOMETRY: "euclidean",
            }
        )
        run_id = run.run_id
    sweep = tracking.read_sweep(
        store["uri"],
        tracking.SweepSelection(
            experiment=EXPERIMENT, filter_string=f"tags.`{Tag.TARGET_GROUP}` = 'hand_made'"
        ),
    )
    drawn, failed = draw_deferred_run_figures(store["uri"], sweep)
    assert drawn == []
    [message] = failed
    assert message.startswith(f"run {run_id} (digits · centered · tiny_bert): per-run figures")
    assert "no spectrum.csv, group_mean_corr.csv, row_cosine.csv, projection_histogram.csv" in (
        message
    )
    assert store["client"].get_run(run_id).data.tags[Tag.RUN_FIGURES] == "deferred"


@pytest.mark.parametrize("value", ["sometimes", "True", "defered"])
def test_a_figures_setting_that_is_none_of_the_choices_is_refused(value, tiny_bert):
    settings = EmbsvdConfig(
        model=CheckpointSpec(name="m", path=str(tiny_bert)),
        groups={"digits": GroupSpec(words=list(DIGITS))},
        target="digits",
    )
    settings.analysis.figures = value
    message = (
        rf"analysis.figures: '{value}' is not one of true \(drawn with each run\), false "
        r"\(none\) or deferred \(none while the sweep runs; `embsvd figures` draws them"
    )
    with pytest.raises(ValueError, match=message):
        validate(settings)


def test_a_bad_figures_value_opens_no_run(tiny_bert, session_store):
    cfg = job_config(tiny_bert, session_store, "bad-figures", "analysis.figures=sometimes")
    with pytest.raises(ValueError, match="analysis.figures: 'sometimes' is not one of true"):
        run_job(cfg)
    assert MlflowClient(session_store).get_experiment_by_name("bad-figures") is None


# --- the figures of one analysis, drawn and read back ------------------------------------------


@pytest.fixture(scope="module")
def analysis(tmp_path_factory):
    """The tiny BERT's digits (a linear order) against EU countries, with every check."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    write_tiny_bert(folder)
    checkpoint = load_checkpoint(CheckpointSpec(name="tiny_bert", path=str(folder)))
    specs = {
        "digits": GroupSpec(words=list(DIGITS), order="linear"),
        "eu_countries": GroupSpec(words=["france", "germany", "italy", "spain", "greece"]),
    }
    groups = {
        name: select_single_tokens(name, spec, checkpoint.tokenizer, checkpoint.name)
        for name, spec in specs.items()
    }
    result = analyze(checkpoint.W, groups, "digits", checkpoint.vocabulary, n_components=2)
    config = ChecksConfig(n_null=40, n_resamples=20, n_global=0)
    checks = run_checks(checkpoint.W, groups, result, checkpoint.vocabulary, config)
    return result, checks


def test_figures_read_back_from_a_run_show_exactly_what_the_analysis_holds(
    analysis, tmp_path, migrated_store_file
):
    """Every number a figure draws survives the store: CSVs at full precision and metrics
    as doubles, so a run drawn later is drawn from the same floats."""
    result, checks = analysis
    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = tracking.TrackingStore(uri, "notebook")
    tags = {
        Tag.MODEL: "tiny_bert",
        Tag.TARGET_GROUP: "digits",
        Tag.CENTER: "true",
        Tag.NORMALIZE_ROWS: "false",
        Tag.GEOMETRY: "euclidean",
    }
    with tracking.tracked_run(store, "digits · centered · tiny_bert", tags) as run:
        tracking.log_result(run, result, checks)
    sweep = tracking.read_sweep(
        uri,
        tracking.SweepSelection(
            experiment="notebook", filter_string=f"tags.`{Tag.TARGET_GROUP}` = 'digits'"
        ),
    )
    logged = with_run_tables(store, sweep.runs[0], tmp_path / "tables")
    expected = run_figure_data(result, "tiny_bert", checks)
    found = logged_figure_data(logged, "tiny_bert")
    assert expected.order is not None and expected.spectrum.null_low is not None
    assert expected.spectrum.interval_lo is not None
    for field in ("model", "target", "center"):
        assert getattr(found, field) == getattr(expected, field)
    for name, value in vars(expected.spectrum).items():
        np.testing.assert_array_equal(getattr(found.spectrum, name), value, err_msg=name)
    for name in ("group_mean_corr", "row_cosine"):
        assert getattr(found, name).names == getattr(expected, name).names
        np.testing.assert_array_equal(getattr(found, name).values, getattr(expected, name).values)
    np.testing.assert_array_equal(found.projection.counts, expected.projection.counts)
    np.testing.assert_array_equal(found.projection.edges, expected.projection.edges)
    assert found.projection.members == expected.projection.members
    assert found.projection.extremes == expected.projection.extremes
    assert (found.order.cyclic, found.order.words) == (expected.order.cyclic, expected.order.words)
    np.testing.assert_array_equal(found.order.coordinates, expected.order.coordinates)
    assert found.order.title == expected.order.title
    # and so the same files, byte for byte
    (tmp_path / "now").mkdir()
    (tmp_path / "later").mkdir()
    now = draw_run_figures(result, "tiny_bert", tmp_path / "now", checks)
    later = draw_run_figures(logged, "tiny_bert", tmp_path / "later")
    assert [p.name for p in now] == [p.name for p in later] == list(SIZES)
    for a, b in zip(now, later, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def drawn(analysis) -> dict:
    result, checks = analysis
    data = run_figure_data(result, "tiny_bert", checks)
    with matplotlib.rc_context(RUN_THEME):
        return {
            "scree": scree_figure(data.spectrum, data.target),
            "group_mean_corr": heatmap_figure(data.group_mean_corr, "r", (4.0, 3.4)),
            "row_cosine": heatmap_figure(data.row_cosine, "cosine", (5.0, 4.25)),
            "projection": projection_view_figure(data.projection, data.target),
            "order": order_view_figure(data.order),
        }


def texts_of(fig) -> list[Text | Stamp]:
    """Every text the figure draws: matplotlib's, and those drawn from bitmaps."""
    fig.canvas.draw()
    found = fig.findobj(lambda a: isinstance(a, Text | Stamp))
    return [t for t in found if t.get_visible() and t.get_text()]


def test_every_text_lies_inside_its_figure_and_none_overlaps_another(analysis):
    """The fixed layouts leave room for what they hold: no label cut at an edge, no
    two texts on top of each other (the token labels have their own rules, below)."""
    for name, fig in drawn(analysis).items():
        renderer = fig.canvas.get_renderer()
        boxes = [
            (t.get_text(), extent(t, renderer))
            for t in texts_of(fig)
            if t.get_gid() != "token-label"
        ]
        for text, box in boxes:
            inside = fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1
            assert inside and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1, (name, text)
        members = {t.get_text() for t in fig.axes[0].texts}
        for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
            if name == "order" and {a, b} <= members:
                continue  # member labels sit where the members are
            assert not box_a.overlaps(box_b), f"{name}: {a!r} overlaps {b!r}"


def extent(text: Text | Stamp, renderer):
    """The text's box alone (an annotation's would include its arrow)."""
    return (Text if isinstance(text, Text) else Stamp).get_window_extent(text, renderer)


def assert_apart(fig) -> None:
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), extent(t, renderer)) for t in texts_of(fig)]
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        assert not box_a.overlaps(box_b), f"{a!r} overlaps {b!r}"


@pytest.mark.parametrize(
    ("singular_values", "labels"),
    [
        # a centered spectrum ends in ~0: powers of ten, the exponent raised beside a 10
        # (every second decade of ten: at most six labels)
        ((3.0, 2.0, 1.0, 1e-9), ["10"] * 5 + ["0", "−2", "−4", "−6", "−8"]),
        # within one power of ten: round numbers
        ((3.0, 2.0, 1.5), ["0.4", "0.5", "0.6", "0.7"]),
    ],
)
def test_a_log_axis_is_labelled_as_its_range_allows(singular_values, labels):
    with matplotlib.rc_context(RUN_THEME):
        fig = scree_figure(Spectrum(np.array(singular_values)), "g")
    log_panel = fig.axes[1].get_window_extent()
    drawn = [
        t.get_text()
        for t in texts_of(fig)
        if t.get_window_extent().x1 < log_panel.x0  # left of the log panel: its y labels
        and t.get_window_extent().x0 > fig.axes[0].get_window_extent().x1
        and t.get_rotation() == 0
    ]
    assert sorted(drawn) == sorted(labels)
    assert_apart(fig)


def test_the_projection_figure_keeps_the_token_label_rules_without_a_layout_pass(analysis):
    result, _ = analysis
    fig = drawn(analysis)["projection"]
    fig.canvas.draw()
    n_marks = len(result.target_words) + len(
        [t for t in result.top_tokens if t.component == 0 and not t.in_group and t.rank <= 5]
    )
    check_label_geometry(fig, n_marks)


def test_figures_say_what_they_show(analysis):
    result, checks = analysis
    figures = drawn(analysis)
    said = {name: [t.get_text() for t in texts_of(fig)] for name, fig in figures.items()}
    scree = said["scree"]
    assert "s_k / ‖M‖_F (linear)" in scree and "s_k / ‖M‖_F (log)" in scree
    assert f"{checks.null.n_null} matched random groups, 95%" in scree
    assert "jackknife 95%" in scree and "digits" in scree
    n = len(result.svd.singular_values)
    assert scree.count("component") == 2
    assert all(scree.count(str(k)) >= 2 for k in range(1, n + 1))  # both panels, from 1
    row_cosine = said["row_cosine"]
    assert "cosine" in row_cosine
    words = list(result.target_words)
    assert all(row_cosine.count(word) == 2 for word in words)  # both axes
    below = [f"{v:.2f}" for (i, j), v in np.ndenumerate(result.row_cosine) if i > j]
    assert sorted(t for t in row_cosine if re.fullmatch(r"-?\d\.\d\d", t)) == sorted(below)
    assert {"−1.0", "−0.5", "0.0", "0.5", "1.0"} <= set(row_cosine)  # the colour bar
    assert "projection on component 1" in said["projection"]
    assert "tokens outside the group among the 5 at each end" in said["projection"]
    assert any(t.startswith("Spearman") for t in said["order"])
    assert [t.get_text().strip() for t in figures["order"].axes[0].texts] == words


def test_a_heatmap_writes_n_a_for_a_value_never_measured():
    values = np.array([[1.0, np.nan], [np.nan, 1.0]])
    with matplotlib.rc_context(RUN_THEME):
        fig = heatmap_figure(Square(("a", "b"), values), "r", (4.0, 3.4))
    cells = [t.get_text() for t in texts_of(fig) if "." in t.get_text() or "/" in t.get_text()]
    assert sorted(cells) == sorted(["n/a", "−1.0", "−0.5", "0.0", "0.5", "1.0"])  # and the bar
