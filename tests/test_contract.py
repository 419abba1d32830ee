"""The run contract: run names and their parser, docs/contract.md against the code (both
ways), and real runs (a tiny checkpoint, a sqlite store) against both."""

from __future__ import annotations

import csv
import io
import itertools
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from embsvd.pipeline import run_job
from embsvd.tracking.artifacts import COLUMNS, Table, header
from embsvd.tracking.contract import (
    RUN_NAME_FORM,
    RunName,
    Tag,
    parse_run_name,
    run_name,
    sweep_metrics,
)
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
        "",
    ],
)
@pytest.mark.parametrize("target", ["digits", "a/b", "100%/x%2F", "with space+plus"])
@pytest.mark.parametrize(
    ("center", "normalize_rows", "geometry"),
    [
        (True, False, "euclidean"),
        (False, False, "euclidean"),
        (True, True, "whitened"),
        (False, True, "euclidean"),
        (True, False, "odd/geo+metry%"),
    ],
)
def test_run_name_parses_back_to_its_parts(model, target, center, normalize_rows, geometry):
    parts = RunName(model, target, center, normalize_rows, geometry)
    name = run_name(model, target, center, normalize_rows=normalize_rows, geometry=geometry)
    assert parse_run_name(name) == parts
    assert str(parts) == name
    assert name.removeprefix(f"{model}/").count("/") == 1  # the target's slashes escaped


@pytest.mark.parametrize(
    ("name", "parts", "variant", "space"),
    [
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


@pytest.mark.parametrize(
    "name",
    [
        "sweep/seed_replication/2026-11-28 07-57-50",  # a sweep's parent
        "tiny_bert/digits",
        "tiny_bert/digits/centred",
        "m/t/centered+euclidean",  # the euclidean geometry is never written
        "m/t/centered+",
        "m/t/centered+whitened+unit_rows",
        "m/t/raw+unit_rows+whitened+x",
    ],
)
def test_names_of_other_forms_are_refused(name):
    with pytest.raises(ValueError, match=re.escape(f"run name {name!r}: expected {RUN_NAME_FORM}")):
        parse_run_name(name)


@pytest.mark.parametrize("geometry", ["", "unit_rows"])
def test_a_geometry_the_name_could_not_tell_apart_is_refused(geometry):
    with pytest.raises(ValueError, match="geometry: .* cannot be told apart in a run name"):
        run_name("m", "t", True, geometry=geometry)


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
    assert logged == set(Table) - {Table.CHILDREN}
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
