"""The run contract: run names and their parser, docs/contract.md against the code (both
ways), and real runs (a tiny checkpoint, a sqlite store) against both."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from embsvd.groups import DroppedWord, KeptToken, TokenGroup
from embsvd.pipeline import run_job
from embsvd.pipeline.job import run_params
from embsvd.pipeline.report import mlflow_ui_command
from embsvd.tracking.artifacts import COLUMNS, TRAJECTORY_TABLES, Table, header, write_csv
from embsvd.tracking.contract import (
    KEY_METRICS,
    RUN_NAME_FORM,
    SEPARATOR,
    LoggedRun,
    RunName,
    Tag,
    model_label,
    parse_run_name,
    run_name,
    sweep_metrics,
    tagged_model_label,
)
from embsvd.tracking.runs import group_dataset, log_groups, tracked_run
from embsvd.tracking.store import RunRecord, TrackingStore
from embsvd.tracking.sweeps import VIEWS_KEPT, save_sweep_view, sweep_note, sweep_view_state
from tests.conftest import CONFIG_DIR, PROJECT_ROOT, write_tiny_bert

DOC = PROJECT_ROOT / "docs" / "contract.md"
PLACEHOLDER = re.compile(r"<[^>]+>")

# --- the run name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        "tiny_bert",
        "pythia_70m@step1000",
        "org/model@refs/pr/1:output",  # a Hub id and a revision with slashes
        "we ird+name%2F@v1:output",
        "a · b·c%B7",  # the separator and its escape in the model
        "",
    ],
)
@pytest.mark.parametrize("target", ["digits", "a/b", "100%/x%2F", "with space+plus", "x · y"])
@pytest.mark.parametrize(
    ("center", "normalize_rows", "geometry"),
    [
        (True, False, "euclidean"),
        (False, False, "euclidean"),
        (True, True, "whitened"),
        (False, True, "euclidean"),
        (True, False, "odd/geo+metry%"),
        (True, False, "geo · metry"),
    ],
)
def test_run_name_parses_back_to_its_parts(model, target, center, normalize_rows, geometry):
    parts = RunName(model, target, center, normalize_rows, geometry)
    name = run_name(model, target, center, normalize_rows=normalize_rows, geometry=geometry)
    assert parse_run_name(name) == parts
    assert str(parts) == name
    # a separator per part: those inside the target, geometry and model are escaped
    assert name.count(SEPARATOR) == 2 + normalize_rows + (geometry != "euclidean")
    assert name.startswith(target.replace("%", "%25").replace("·", "%B7") + SEPARATOR)


@pytest.mark.parametrize(
    ("name", "parts", "variant", "space"),
    [
        ("digits · centered · tiny_bert", RunName("tiny_bert", "digits", True), "centered", ""),
        (
            "months · raw · gpt2@step1:output",
            RunName("gpt2@step1:output", "months", False),
            "raw",
            "",
        ),
        (
            "digits · centered · unit rows · whitened · tiny_bert",
            RunName("tiny_bert", "digits", True, True, "whitened"),
            "centered+unit_rows+whitened",
            "+unit_rows+whitened",
        ),
        ("t · raw · unit rows · m", RunName("m", "t", False, True), "raw+unit_rows", "+unit_rows"),
        (
            "t · raw · whitened · m",
            RunName("m", "t", False, False, "whitened"),
            "raw+whitened",
            "+whitened",
        ),
        # older embsvd's names are still read
        ("tiny_bert/digits/centered", RunName("tiny_bert", "digits", True), "centered", ""),
        ("gpt2@step1:output/months/raw", RunName("gpt2@step1:output", "months", False), "raw", ""),
        (
            "tiny_bert/digits/centered+unit_rows+whitened",
            RunName("tiny_bert", "digits", True, True, "whitened"),
            "centered+unit_rows+whitened",
            "+unit_rows+whitened",
        ),
        ("m/t/raw+unit_rows", RunName("m", "t", False, True), "raw+unit_rows", "+unit_rows"),
    ],
)
def test_run_names_as_the_harness_writes_them(name, parts, variant, space):
    assert parse_run_name(name) == parts
    assert (parts.variant, parts.space) == (variant, space)
    if "/" not in name:
        assert str(parts) == name


@pytest.mark.parametrize(
    "name",
    [
        "sweep/seed_replication/2026-11-28 07-57-50",  # a sweep's parent
        "digits · centered",  # no model
        "digits · centred · m",
        "t · centered · euclidean · m",  # the euclidean geometry is never written
        "t · centered ·  · m",
        "t · centered · whitened · unit rows · m",
        "t · raw · unit rows · whitened · x · m",
        "t · raw · unit rows · unit rows · m",
        "tiny_bert/digits",
        "tiny_bert/digits/centred",
        "m/t/centered+euclidean",
        "m/t/centered+",
        "m/t/centered+whitened+unit_rows",
        "m/t/raw+unit_rows+whitened+x",
    ],
)
def test_names_of_other_forms_are_refused(name):
    expected = f"run name {name!r}: expected {RUN_NAME_FORM} (or, as older embsvd wrote it, "
    with pytest.raises(ValueError, match=re.escape(expected)):
        parse_run_name(name)


@pytest.mark.parametrize("geometry", ["", "unit_rows", "unit rows"])
def test_a_geometry_the_name_could_not_tell_apart_is_refused(geometry):
    with pytest.raises(ValueError, match="geometry: .* cannot be told apart in a run name"):
        run_name("m", "t", True, geometry=geometry)


@pytest.mark.parametrize(
    ("revision", "matrix", "label"),
    [
        (None, "input", "pythia"),
        ("main", "input", "pythia"),  # the default revision is left out
        ("step1000", "input", "pythia@step1000"),
        ("step1000", "output", "pythia@step1000:output"),
    ],
)
def test_the_model_label_from_the_settings_and_from_the_tags_agree(revision, matrix, label):
    assert model_label("pythia", revision, matrix) == label
    tags = {Tag.MODEL: "pythia", Tag.MATRIX: matrix}
    if revision is not None:
        tags[Tag.REVISION] = revision
    assert tagged_model_label(tags) == label
    assert tagged_model_label({Tag.MATRIX: matrix}) is None


RUN_TAGS = {
    Tag.MODEL: "pythia",
    Tag.REVISION: "step1",
    Tag.MATRIX: "output",
    Tag.TARGET_GROUP: "months",
    Tag.CENTER: "false",
    Tag.NORMALIZE_ROWS: "true",
    Tag.GEOMETRY: "whitened",
}


def logged(name: str, tags: dict[str, str]) -> LoggedRun:
    return LoggedRun("run1", name, "embsvd", tags, {}, {}, {})


def test_a_logged_run_says_what_it_analysed_from_its_tags_whatever_its_name():
    run = logged("renamed in the UI", RUN_TAGS)
    assert run.parts == RunName("pythia@step1:output", "months", False, True, "whitened")
    assert (run.model_label, run.target) == ("pythia@step1:output", "months")
    assert (run.variant, run.space) == ("raw+unit_rows+whitened", "+unit_rows+whitened")


def test_a_logged_run_without_the_tags_is_read_from_its_name_old_or_new():
    old = logged("gpt2/digits/centered+whitened", {Tag.TARGET_GROUP: "digits"})
    new = logged("digits · centered · whitened · gpt2", {})
    for run in (old, new):
        assert run.parts == RunName("gpt2", "digits", True, False, "whitened")
    # a tag wins over the name where both say
    assert logged("digits · raw · gpt2", {Tag.CENTER: "true"}).variant == "centered"


def test_a_logged_run_whose_tags_and_name_do_not_say_is_refused():
    tags = {k: v for k, v in RUN_TAGS.items() if k not in (Tag.CENTER, Tag.GEOMETRY)}
    with pytest.raises(ValueError) as refused:
        logged("my run", tags)
    message = str(refused.value)
    assert message.startswith(
        "run run1: its tags do not say its center, geometry (tags embsvd.center, "
        "embsvd.geometry) and its name does not either: run name 'my run': expected "
    )


# --- the page against the code ---------------------------------------------------------------


def sections() -> dict[str, str]:
    """docs/contract.md's ``## `` sections by title."""
    parts = re.split(r"^## (.+)$", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in ``text``, header rows left out."""
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines):
        below = lines[i + 1] if i + 1 < len(lines) else ""
        if not line.startswith("|") or line.startswith("|---") or below.startswith("|---"):
            continue
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def first_code(rows: list[list[str]]) -> list[str]:
    """The code span that opens each row: a tag key, a metric pattern or a file name."""
    found = []
    for row in rows:
        match = re.fullmatch(r"`([^`]+)`", row[0])
        assert match, f"docs/contract.md: a row should open with one `name`: {row}"
        found.append(match[1])
    return found


def expand(pattern: str) -> list[str]:
    """``a/{x,y}`` -> ``a/x``, ``a/y``; ``{,_c}`` includes the bare alternative."""
    pieces = re.split(r"\{([^}]*)\}", pattern)
    choices = [[piece] if i % 2 == 0 else piece.split(",") for i, piece in enumerate(pieces)]
    return ["".join(combination) for combination in itertools.product(*choices)]


def as_regex(pattern: str) -> re.Pattern[str]:
    """A documented key as a regular expression: ``<name>`` is any text without ``/``."""
    return re.compile(PLACEHOLDER.sub("[^/]+", re.escape(pattern)))


def documented_tags() -> list[str]:
    return first_code(table_rows(sections()["Tags"]))


def is_contract_tag(key: str) -> bool:
    return key in set(Tag) or any(key.startswith(t) for t in Tag if t.is_prefix)


def test_tags_are_unique_and_namespaced():
    assert len(Tag.__members__) == len(set(Tag)), "two members share a tag key"
    assert all(tag.startswith(("embsvd.", "mlflow.")) for tag in Tag)


def test_every_tag_is_documented_and_every_documented_tag_is_a_tag():
    documented = documented_tags()
    assert len(documented) == len(set(documented)), "a tag is documented twice"
    for tag in Tag:
        if tag.is_prefix:
            assert any(re.fullmatch(re.escape(tag) + "<[^>]+>", d) for d in documented), tag
        else:
            assert tag in documented, f"{tag} is not in docs/contract.md's tag table"
    for key in documented:
        assert is_contract_tag(PLACEHOLDER.sub("x", key)), f"{key} is not a Tag"


def test_a_table_is_what_csv_writer_writes_of_its_cells(tmp_path):
    rows = [
        [0, 0.1, np.float64(1e-05), 3],  # numbers alone: joined directly
        [1, float("nan"), -float("inf"), np.float64(2.5)],
        [np.int64(2), np.float32(0.25), True, np.bool_(False)],  # numpy scalars, booleans
        ["a, b", 'say "x"', "line\nbreak", None, ""],  # what csv quotes
        [],
        [""],
    ]
    write_csv(tmp_path / "t.csv", ["k", "v"], rows)
    expected = io.StringIO(newline="")
    writer = csv.writer(expected)
    writer.writerow(["k", "v"])
    writer.writerows(
        [
            [0, "0.1", "1e-05", 3],
            [1, "nan", "-inf", "2.5"],
            [2, "0.25", "true", "false"],
            ["a, b", 'say "x"', "line\nbreak", None, ""],
            [],
            [""],
        ]
    )
    assert (tmp_path / "t.csv").read_bytes() == expected.getvalue().encode("utf-8")
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as handle:
        assert list(csv.reader(handle))[1] == ["0", "0.1", "1e-05", "3"]


def test_a_histograms_lines_are_its_rows_as_a_table_and_remembered_by_value(tmp_path):
    from embsvd.tracking.artifacts import PROJECTION_BINS, _histogram_lines

    column = np.random.default_rng(3).standard_normal(5000)
    counts, edges = np.histogram(column, bins=PROJECTION_BINS)
    rows = [[2, edges[i], edges[i + 1], int(c)] for i, c in enumerate(counts)]
    write_csv(tmp_path / "rows.csv", ["k"], rows)
    lines = _histogram_lines(2, column)
    write_csv(tmp_path / "lines.csv", ["k"], [], [lines])
    assert (tmp_path / "lines.csv").read_bytes() == (tmp_path / "rows.csv").read_bytes()
    assert _histogram_lines(2, column.copy()) is lines  # the same values: remembered
    assert _histogram_lines(3, column) != lines  # another component's rows
    shifted = column + 1.0  # other values: their own rows
    left = float(np.histogram(shifted, bins=PROJECTION_BINS)[1][0])
    assert _histogram_lines(2, shifted).splitlines()[0].split(",")[1] == repr(left)


def test_tables_and_their_columns_are_documented_as_defined():
    documented = {}
    for text in sections().values():
        for row in table_rows(text):
            if row[0].endswith(".csv`"):
                documented[row[0].strip("`")] = re.findall(r"`([^`]+)`", row[1])
    assert set(documented) == set(Table)
    for table in Table:
        assert tuple(documented[table]) == COLUMNS[table], table


def test_sweep_parent_metrics_are_documented_as_logged():
    rows = table_rows(sections()["Sweep parent runs"])
    documented = {
        key
        for pattern in first_code(rows)
        if not pattern.endswith(".csv")
        for key in expand(pattern)
    }
    assert documented == {key for key, _, _ in sweep_metrics(["FINISHED", "FAILED"], 1)}


def test_links_in_the_page_resolve_inside_the_repository():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", DOC.read_text(encoding="utf-8"))
    assert links
    for link in links:
        assert "://" not in link, f"{link}: link relative to docs/"
        target = (DOC.parent / link).resolve()
        assert target.is_relative_to(PROJECT_ROOT) and target.exists(), link


# --- real runs against the page and the code ---------------------------------------------


def job(store: str, checkpoint: Path, experiment: str, *overrides: str) -> None:
    """One job, composed and run as ``experiments/run.py`` would (no sweep)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "model=local",
                f"model.path={checkpoint}",
                "model.name=tiny_bert",
                f"tracking.uri={store}",
                f"tracking.experiment={experiment}",
                "analysis.n_null=20",
                "analysis.n_resamples=20",
                "analysis.figures=false",
                *overrides,
            ],
        )
        run_job(cfg)


@pytest.fixture(scope="module")
def logged_runs(session_store, tmp_path_factory):
    """Runs that between them log every metric and table the page lists: an open group
    with a remainder and a cyclic order in the euclidean geometry, the digits (a linear
    order) whitened with unit rows, and a run that failed on its checkpoint."""
    folder = tmp_path_factory.mktemp("contract")
    write_tiny_bert(folder / "tiny-bert")
    countries = "[france,germany,italy,spain,portugal,greece,sweden,austria]"
    job(
        session_store,
        folder / "tiny-bert",
        "contract-doc",
        f"groups.extra.words={countries}",
        "groups.extra.size=5",
        "groups.extra.order=cyclic",
        "target=extra",
    )
    job(
        session_store,
        folder / "tiny-bert",
        "contract-doc",
        "analysis.geometry=whitened",
        "analysis.normalize_rows=true",
    )
    (folder / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        job(session_store, folder / "empty", "contract-doc")
    client = MlflowClient(session_store)
    experiment = client.get_experiment_by_name("contract-doc")
    runs = client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED", "FAILED"]
    return client, experiment, runs


def test_real_runs_carry_only_contract_tags(logged_runs):
    client, experiment, runs = logged_runs
    for run in runs:
        unknown = [key for key in run.data.tags if not is_contract_tag(key)]
        assert not unknown, f"{run.info.run_name} has tags that are not in Tag: {unknown}"
    assert set(experiment.tags) <= set(Tag)
    assert runs[-1].data.tags[Tag.ERROR].startswith("FileNotFoundError")


def test_real_run_names_parse_back_to_their_tags(logged_runs):
    _, _, runs = logged_runs
    for run in runs:
        parts, tags = parse_run_name(run.info.run_name), run.data.tags
        assert parts.model == tags[Tag.MODEL] == "tiny_bert"
        assert parts.target == tags[Tag.TARGET_GROUP]
        assert str(parts.center).lower() == tags[Tag.CENTER]
        assert str(parts.normalize_rows).lower() == tags[Tag.NORMALIZE_ROWS]
        assert parts.geometry == tags[Tag.GEOMETRY]
        assert str(parts) == run.info.run_name == tags[Tag.RUN_NAME]
    names = [run.info.run_name for run in runs]
    assert names[1] == "digits · centered · unit rows · whitened · tiny_bert"


def test_real_runs_write_the_key_numbers_first_as_plain_values(logged_runs):
    client, _, runs = logged_runs
    run = runs[1]  # every check on, 10 words: 3 stable axes
    metrics = run.data.metrics
    # MLflow lists metrics as written; its compare page plots the first every run shares
    assert list(metrics)[: len(KEY_METRICS)] == list(KEY_METRICS)
    few = [key for key in KEY_METRICS if key in runs[0].data.metrics]  # 5 words: fewer axes
    assert list(runs[0].data.metrics)[: len(few)] == few
    history = {
        key: [
            m.value
            for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        ]
        for key in ("singular_value", "explained_variance_ratio", "stability/axis_cos")
        + ("interval/singular_value_lo", "interval/singular_value_hi")
    }
    for k in (1, 2, 3):
        assert metrics[f"sv_{k}"] == history["singular_value"][k - 1]
        assert metrics[f"evr_{k}"] == history["explained_variance_ratio"][k - 1]
        assert metrics[f"stability/axis_cos_{k}"] == history["stability/axis_cos"][k - 1]
    assert metrics["sv_1_lo"] == history["interval/singular_value_lo"][0]
    assert metrics["sv_1_hi"] == history["interval/singular_value_hi"][0]
    assert metrics["s1_share"] == metrics["evr_1"]
    assert metrics["stability/axis_cos_1"] == metrics["stability/axis0_cos"]
    assert "sv_4" not in metrics and "evr_4" not in metrics
    for key in KEY_METRICS:  # none is a step series
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0], key


def test_real_runs_describe_themselves(logged_runs):
    _, _, runs = logged_runs
    countries, digits, failed = (run.data.tags for run in runs)
    note = countries[Tag.NOTE]
    assert note.startswith(
        "**extra · centered · tiny_bert**: 5 words kept, `france germany italy spain portugal`"
    )
    assert re.search(
        r"\n- s1 share \(axis 1's share of the spectrum\) 0\.\d{3}, null percentile "
        r"[\d.]+ of \d+ matched random groups \(Holm p [\d.e-]+\)\n",
        note,
    )
    assert re.search(r"\n- group-mean r centered: digits [+-]0\.\d{3} \(null pct \d+\)", note)
    assert re.search(
        r"\n- axis 1 stability 0\.\d\d \(mean \|cos\| with the axis of \d+ jackknife", note
    )
    assert f"\n- axis 1 ends: top `{countries[Tag.AXIS0_TOP]}`, bottom `" in note
    assert digits[Tag.NOTE].startswith(
        "**digits · centered · unit rows · whitened · tiny_bert**: 10 words kept, `0 1 2 3"
    )
    assert Tag.NOTE not in failed  # the analysis did not run


def test_real_runs_log_as_params_the_config_they_use(logged_runs, tmp_path):
    """Every key of a run's config.yaml is a param but those of what the run does not use:
    the concept definitions (no run here analyses a concept), the number settings other
    than numbers.enabled, and the extra group slot unless it has words."""
    client, _, runs = logged_runs
    for run in runs:  # the failed run too: its config is logged when it opens
        folder = tmp_path / run.info.run_id
        folder.mkdir()
        config = yaml.safe_load(
            Path(client.download_artifacts(run.info.run_id, "config.yaml", str(folder))).read_text(
                encoding="utf-8"
            )
        )
        assert config["concept"] is None and set(config["concepts"]) >= {"gender", "tense"}
        params = run.data.params
        unused = {"concepts.", "numbers.max_value", "numbers.periods", "numbers.n_null"}
        assert not [key for key in params if key.startswith(tuple(unused))]
        assert params["numbers.enabled"] == "False"
        assert set(params) == set(run_params(config))
        assert params["analysis.n_null"] == str(config["analysis"]["n_null"]) == "20"
    countries, digits, failed = (run.data.params for run in runs)
    assert countries["target"] == "extra" and countries["groups.extra.size"] == "5"
    assert not [key for key in (*digits, *failed) if key.startswith("groups.extra.")]
    assert digits["groups.digits.words"] == str(list("0123456789"))


def test_real_runs_log_their_groups_as_dataset_inputs(logged_runs):
    client, _, runs = logged_runs
    countries, digits, failed = (client.get_run(r.info.run_id).inputs.dataset_inputs for r in runs)
    assert not failed  # it failed before its groups were built

    def described(inputs):
        return [
            (i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"])
            for i in inputs
        ]

    assert described(countries) == [
        ("extra", "target"),
        ("digits", "group"),
        ("eu_countries", "group"),
    ]
    assert described(digits)[0] == ("digits", "target")
    [extra] = [i.dataset for i in countries if i.dataset.name == "extra"]
    assert json.loads(extra.profile)["num_rows"] == 5
    assert json.loads(extra.source)["kept"] == ["france", "germany", "italy", "spain", "portugal"]
    # the same group on the same checkpoint is the same dataset, in both runs
    digests = {
        name: {i.dataset.digest for i in (*countries, *digits) if i.dataset.name == name}
        for name in ("digits", "eu_countries")
    }
    assert all(len(d) == 1 for d in digests.values()), digests


def test_every_logged_metric_is_documented_and_every_documented_metric_is_logged(logged_runs):
    _, _, runs = logged_runs
    logged = set().union(*(run.data.metrics for run in runs))
    patterns = [p for p in first_code(table_rows(sections()["Metrics"]))]
    keys = {key: as_regex(key) for pattern in patterns for key in expand(pattern)}
    undocumented = sorted(m for m in logged if not any(r.fullmatch(m) for r in keys.values()))
    assert not undocumented, f"metrics missing from docs/contract.md: {undocumented}"
    never_logged = sorted(k for k, r in keys.items() if not any(r.fullmatch(m) for m in logged))
    assert not never_logged, f"documented metrics these runs did not log: {never_logged}"


def test_logged_tables_have_the_contract_columns(logged_runs):
    client, _, runs = logged_runs
    run_id = runs[0].info.run_id  # every check on: every table of a run
    logged = {a.path for a in client.list_artifacts(run_id) if a.path.endswith(".csv")}
    assert logged == set(Table) - {Table.CHILDREN, *TRAJECTORY_TABLES}  # a sweep parent's
    for table in Table:
        if table in logged:
            text = Path(client.download_artifacts(run_id, table)).read_text(encoding="utf-8")
            columns = next(csv.reader(io.StringIO(text)))
            assert columns == header(table, _placeholder_values(table, columns)), table


def _placeholder_values(table: Table, columns: list[str]) -> list[str]:
    """The values a table's ``<...>`` column was repeated for, read off its header."""
    fixed = [c for c in COLUMNS[table] if "<" not in c]
    pattern = next((c for c in COLUMNS[table] if "<" in c), None)
    if pattern is None:
        return []
    prefix = pattern[: pattern.index("<")]
    return [c.removeprefix(prefix) for c in columns if c not in fixed]


# --- a sweep's description and saved view in the MLflow UI ---------------------------------


def child(name: str, params: dict[str, str], metrics: dict[str, float]) -> RunRecord:
    return RunRecord(f"id-{name}", name, "FINISHED", {}, params, metrics)


SWEEP_CHILDREN = [
    child(
        f"{target} · {variant} · tiny_bert",
        {
            "model.name": "tiny_bert",
            "target": target,
            "analysis.center": str(variant == "centered"),
        },
        {"s1_share": 0.4, "sv_1": 3.0, "singular_value": 0.1, "group_mean_corr_centered/a__b": 0.1},
    )
    for target in ("a", "b")
    for variant in ("centered", "raw")
]


def test_a_sweeps_view_shows_its_runs_and_the_key_numbers_they_logged():
    state = sweep_view_state("s_1", SWEEP_CHILDREN)
    assert state["searchFilter"] == "tags.`embsvd.sweep_id` = 's_1'"
    assert state["selectedColumns"] == [
        "attributes.`Dataset`",
        "params.`model.name`",
        "metrics.`s1_share`",
        "metrics.`sv_1`",  # logged; sv_2, the null percentile, stability... not
        "metrics.`group_mean_corr_centered/a__b`",
        "tags.`embsvd.axis0.top`",
        "tags.`embsvd.axis0.bottom`",
    ]
    assert state["columnOrder"][0] == "attributes.`Run Name`"
    assert state["columnWidths"] == {"attributes.`Run Name`": 320}
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "embsvd.sweep_id"}]
    spectrum, parallel, bar = state["compareRunCharts"]
    assert spectrum["selectedMetricKeys"] == ["singular_value"]  # no interval logged
    assert parallel["selectedParams"] == ["target", "analysis.center"]  # what the sweep varied
    assert parallel["selectedMetrics"] == ["s1_share", "sv_1", "group_mean_corr_centered/a__b"]
    assert bar["metricKey"] == "s1_share"
    assert {c["metricSectionId"] for c in state["compareRunCharts"]} == {
        state["compareRunSections"][0]["uuid"]
    }
    json.dumps(state)  # the UI reads it as JSON


def test_a_sweeps_view_is_saved_as_the_ui_saves_one_and_the_oldest_are_pruned(
    migrated_store_file, tmp_path
):
    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    store = TrackingStore(f"sqlite:///{tmp_path / 'mlflow.db'}", "embsvd")
    client, experiment = store.client, store.experiment_id
    for n in range(1, VIEWS_KEPT + 2):  # older sweeps' views, and one a person saved
        envelope = {"name": f"old {n}", "createdAt": n, "updatedAt": n, "state": "{}"}
        client.set_experiment_tag(
            experiment, f"{Tag.SAVED_VIEW}embsvd-old_{n}", json.dumps(envelope)
        )
    mine = {"name": "mine", "createdAt": 0, "updatedAt": 0, "state": "{}"}
    client.set_experiment_tag(experiment, f"{Tag.SAVED_VIEW}abc", json.dumps(mine))

    page = save_sweep_view(store, "s_1", SWEEP_CHILDREN)
    assert page == f"#/experiments/{experiment}/runs?viewStateShareKey=embsvd-s_1"
    tags = client.get_experiment(experiment).tags
    envelope = json.loads(tags[f"{Tag.SAVED_VIEW}embsvd-s_1"])
    assert envelope["name"] == "embsvd sweep s_1"
    assert envelope["createdAt"] == envelope["updatedAt"] > VIEWS_KEPT
    assert json.loads(envelope["state"]) == sweep_view_state("s_1", SWEEP_CHILDREN)
    views = sorted(
        key.removeprefix(Tag.SAVED_VIEW) for key in tags if key.startswith(Tag.SAVED_VIEW)
    )
    kept_old = [f"embsvd-old_{n}" for n in range(3, VIEWS_KEPT + 2)]  # the 19 newest
    assert views == sorted(["abc", "embsvd-s_1", *kept_old])
    assert save_sweep_view(store, None, SWEEP_CHILDREN) is None  # a sweep without an id


def test_a_sweeps_description_holds_its_table_within_a_tags_length():
    assert sweep_note("sweep/x/1", "FINISHED", "run  status\n---  ------\na    FINISHED") == (
        "**sweep/x/1**: FINISHED\n\n```\nrun  status\n---  ------\na    FINISHED\n```"
    )
    table = "\n".join(f"run {n:05d} " + "x" * 90 for n in range(200))
    note = sweep_note("sweep/x/1", "FAILED", table)
    assert len(note) <= MAX_TAG_VAL_LENGTH
    assert note.endswith(" more lines: sweep_summary.txt\n```")
    shown = note.split("```\n", 1)[1].splitlines()[:-2]
    assert shown == table.splitlines()[: len(shown)] and len(shown) > 50


def test_a_group_too_large_for_a_dataset_source_is_logged_with_its_counts(session_store):
    words = [f"word{n:06d}" for n in range(8000)]  # 8000 x ~13 characters: over 64 KB
    kept = tuple(KeptToken(word, word, n) for n, word in enumerate(words))
    group = TokenGroup("large", tuple(words), kept, (DroppedWord("x y", ("x", "y"), "2 tokens"),))
    dataset = group_dataset(group, True).dataset
    assert json.loads(dataset.source) == {
        "group": "large",
        "kept": 8000,
        "dropped": 1,
        "words": "groups.json",
    }
    assert json.loads(dataset.profile) == {
        "num_rows": 8000,
        "words": 8000,
        "dropped": 1,
        "held_out": 0,
    }
    store = TrackingStore(session_store, "contract-large-group")
    with tracked_run(store, "large · centered · m", {}) as run:
        log_groups(run, {"large": group}, "large")
    [logged] = store.client.get_run(run.run_id).inputs.dataset_inputs
    assert (logged.dataset.name, logged.dataset.digest) == ("large", dataset.digest)
    small = TokenGroup("small", ("a",), (KeptToken("a", "a", 1),), ())
    assert json.loads(group_dataset(small, False).dataset.source) == {
        "group": "small",
        "kept": ["a"],
        "dropped": [],
    }


def test_the_printed_ui_command_opens_the_sweeps_view():
    page = "#/experiments/3/runs?viewStateShareKey=embsvd-s_1"
    command = mlflow_ui_command("sqlite:////data/mlflow.db", 5001, page=page)
    first, then = command.split("\n")
    assert first == mlflow_ui_command("sqlite:////data/mlflow.db", 5001)
    assert then == f"  then http://127.0.0.1:5001/{page}"
    server = mlflow_ui_command("http://alice:secret@host:5000/", page=page)
    assert server == f"http://alice:***@host:5000/{page}"


def test_a_run_logs_the_pair_statistics_of_its_target_only():
    """``with_target``: every key a run logs, but a pair between two other groups, as a
    statistic or its null test; the pairs go to the run's tables instead."""
    from embsvd.tracking.contract import with_target

    assert with_target("group_mean_corr/digits__months", "digits")
    assert with_target("group_mean_corr_centered/colors__digits", "digits")
    assert with_target("null/group_mean_corr/colors__digits/p_holm", "digits")
    assert not with_target("group_mean_corr/colors__months", "digits")
    assert not with_target("axis_corr/colors__months", "digits")
    assert not with_target("null/group_mean_corr_decorrelated/colors__months/sd", "digits")
    for key in ("s1_share", "null/s1_share/p_value", "sv_1_lo", "confound/spearman_norm"):
        assert with_target(key, "digits")
