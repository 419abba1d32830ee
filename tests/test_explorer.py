"""The vocabulary explorer: its table, the page built from it, and the page in a browser.

Unit tests write tables and pages in tmp_path; real runs of a tiny BERT checkpoint into a
sqlite store log the table and the page (figures true, deferred then drawn by the
figures command, false, explorer off); the page is opened from disk (``file://``) in
Debian's headless ``chromium`` (tests/browser.py), searched, and its exports read back.
Without chromium the browser tests are skipped, unless ``EMBSVD_REQUIRE_BROWSER=1``
(CI) makes that a failure. The bundled MiniLM's page is also saved as a screenshot to
``$EMBSVD_TEST_ARTIFACTS`` (default ``test-artifacts/``).
"""

from __future__ import annotations

import base64
import csv
import io
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from embsvd import tracking
from embsvd.figures.explorer import (
    ExplorerRun,
    decoded_coordinates,
    embedded_data,
    read_explorer_table,
    table_as_read,
    write_explorer_page,
)
from embsvd.pipeline import explorer_job, run_job
from embsvd.pipeline.figures_job import draw_deferred_run_figures
from embsvd.tracking import artifacts
from embsvd.tracking.artifacts import EXPLORER_PAGE, EXPLORER_TABLE, write_explorer_table
from embsvd.tracking.contract import Tag
from tests.browser import Chromium
from tests.conftest import CONFIG_DIR, PROJECT_ROOT, write_tiny_bert
from tests.test_pipeline import artifact_names, job_config

EXPERIMENT = "explorer"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE = [
    'a "quoted", token',
    "</script><script>alert(1)</script>",
    "<!-- comment",
    "ünïcödé 🙂 ␣space",
    "back\\slash",
    "",
    "&amp; \u2028 line",
    "line\r\nbreak",
]


def synthetic_table(folder: Path, n: int = 500, k: int = 3, seed: int = 0) -> tuple:
    """A table of ``n`` tokens on ``k`` axes with hostile texts; returns what was written."""
    rng = np.random.default_rng(seed)
    projections = rng.normal(scale=3.0, size=(n, k)) * 10.0 ** rng.integers(-7, 8, size=(n, 1))
    texts = [f"␣tok{i}" for i in range(n)]
    texts[1 : 1 + len(HOSTILE)] = HOSTILE
    groups = {"digits": list(range(20, 30)), "other": [25, 40, 41]}
    file = folder / "vocabulary_projections.csv"
    write_explorer_table(file, projections, texts, groups, special_ids=[0, n - 1])
    return file, projections, texts, groups


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


# --- the table ---------------------------------------------------------------------------


def test_the_table_holds_every_token_to_six_significant_digits(tmp_path):
    file, projections, texts, groups = synthetic_table(tmp_path)
    rows = csv_rows(file.read_bytes().decode("utf-8"))
    assert list(rows[0]) == ["token_id", "text", "group", "special"] + [
        f"projection_{k}" for k in range(3)
    ]
    assert [r["text"] for r in rows] == texts
    assert [int(r["token_id"]) for r in rows] == list(range(len(texts)))
    logged = np.array([[float(r[f"projection_{k}"]) for k in range(3)] for r in rows])
    np.testing.assert_allclose(logged, projections, rtol=5e-6, atol=0)
    assert all(len(re.sub(r"e.*|[-.]", "", r["projection_0"]).lstrip("0")) <= 6 for r in rows)
    assert rows[25]["group"] == "digits;other" and rows[40]["group"] == "other"
    assert rows[3]["group"] == ""
    assert [r["special"] for r in rows].count("true") == 2 and rows[0]["special"] == "true"


def test_the_table_is_byte_for_byte_what_csv_writer_writes(tmp_path):
    """The lines are joined by hand for speed; csv.writer's quoting (QUOTE_MINIMAL: a
    field with a comma, a quote or a line break) and line ends are kept exactly, for
    hostile texts, a lone carriage return, a group cell of several names, one axis or
    three."""
    for k in (3, 1):
        file, projections, texts, groups = synthetic_table(tmp_path, n=60, k=k)
        texts = [*texts[:-2], "cr\ronly", '"']
        write_explorer_table(file, projections, texts, groups, special_ids=[0, 59, 99])
        expected = io.StringIO(newline="")
        writer = csv.writer(expected)
        writer.writerow(
            ["token_id", "text", "group", "special"] + [f"projection_{j}" for j in range(k)]
        )
        member_of = {25: "digits;other", 40: "other", 41: "other"}
        member_of.update({i: "digits" for i in range(20, 30) if i != 25})
        for i, (text, row) in enumerate(zip(texts, projections.tolist(), strict=True)):
            special = "true" if i in (0, 59) else "false"
            writer.writerow([i, text, member_of.get(i, ""), special, *(f"{v:.6g}" for v in row)])
        assert file.read_bytes() == expected.getvalue().encode("utf-8")


def test_a_vocabularys_row_cells_are_reused_only_for_the_same_groups_and_specials(tmp_path):
    """A sweep's runs of one vocabulary write the same cells before the numbers; a run
    with other groups or special tokens writes its own, and a list of texts (which could
    change) is never remembered."""
    rng = np.random.default_rng(3)
    texts = tuple(f"t,{i}" if i % 5 == 0 else f"t{i}" for i in range(40))
    projections = rng.normal(size=(40, 2))

    def written(groups, special_ids, texts=texts):
        file = tmp_path / "t.csv"
        write_explorer_table(file, projections, texts, groups, special_ids)
        return [(r["text"], r["group"], r["special"]) for r in csv_rows(file.read_text())]

    first = written({"a": [1, 2]}, [0])
    assert artifacts._LAST_PREFIXES[0] is texts
    assert written({"a": [1, 2]}, [0]) == first
    other = written({"b": [3]}, [4])
    assert other[1] == ("t1", "", "false") and other[3] == ("t3", "b", "false")
    assert other[4][2] == "true" and other[0][2] == "false"
    assert written({"a": [1, 2]}, [0]) == first
    listed = list(texts)
    written({"a": [1, 2]}, [0], texts=listed)
    listed[1] = "changed"
    assert written({"a": [1, 2]}, [0], texts=listed)[1] == ("changed", "a", "false")


def test_the_table_refuses_texts_that_do_not_fit_the_rows(tmp_path):
    with pytest.raises(ValueError, match="texts: 2 texts for 3 rows of projections"):
        write_explorer_table(tmp_path / "t.csv", np.zeros((3, 2)), ["a", "b"], {})


def test_reading_refuses_a_file_that_is_not_an_explorer_table(tmp_path):
    other = tmp_path / "spectrum.csv"
    other.write_text("component,singular_value\n0,1.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"spectrum.csv: not an explorer table.*write_explorer"):
        read_explorer_table(other)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("token_id,text,group,special,projection_0\n0,a,,false\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 2 has 4 cells, not 5"):
        read_explorer_table(ragged)


# --- the page ----------------------------------------------------------------------------


def test_the_page_embeds_exactly_the_logged_table(tmp_path):
    file, _, texts, groups = synthetic_table(tmp_path)
    page = tmp_path / "explorer.html"
    write_explorer_page([ExplorerRun("run a", file, "tiny", "digits", (0.5, 0.3))], page, "t")
    data = embedded_data(page.read_text(encoding="utf-8"))
    [vocabulary] = data["vocabularies"]
    assert vocabulary["texts"] == texts and vocabulary["ids"] is None  # ids 0..n-1
    [run] = data["runs"]
    assert (run["name"], run["target"], run["explained"]) == ("run a", "digits", [0.5, 0.3])
    assert run["groups"] == groups and run["special"] == [0, len(texts) - 1]
    logged = [
        [r[f"projection_{k}"] for k in range(3)]
        for r in csv_rows(file.read_bytes().decode("utf-8"))
    ]
    # float32 holds 6 significant digits: the page gives back the logged decimal
    coordinates = decoded_coordinates(run, len(texts))
    assert [[f"{v:.6g}" for v in row] for row in coordinates] == logged


def test_a_runs_own_page_from_memory_is_the_page_read_from_its_table(tmp_path):
    """A run builds its page from what it wrote (``table_as_read``), not by parsing the
    table back: the same table to the bit, and the same page byte for byte."""
    rng = np.random.default_rng(3)
    n = 300
    projections = rng.normal(size=(n, 2)) * 10.0 ** rng.integers(-9, 9, size=(n, 1))
    texts = [f"tok{i}" for i in range(n)]
    texts[1 : 1 + len(HOSTILE)] = HOSTILE
    # names out of order, a token in two groups, a virtual id past the vocabulary
    groups = {"zeta": [7, 3, n + 2], "alpha": [3, 250], "mid": []}
    file = tmp_path / "vocabulary_projections.csv"
    written = write_explorer_table(file, projections, texts, groups, special_ids=[0, 5, n + 1])
    from_memory = table_as_read(written, texts, groups, [0, 5, n + 1])
    from_file = read_explorer_table(file)
    np.testing.assert_array_equal(from_memory.projections, from_file.projections)
    np.testing.assert_array_equal(from_memory.token_ids, from_file.token_ids)
    np.testing.assert_array_equal(from_memory.special, from_file.special)
    assert from_memory.texts == from_file.texts
    assert list(from_memory.groups.items()) == list(from_file.groups.items())
    assert from_memory.axes == from_file.axes
    pages = []
    for read in (from_memory, None):
        page = tmp_path / f"{read is None}.html"
        write_explorer_page([ExplorerRun("r", file, "m", "zeta", (0.6, 0.4), read)], page, "t")
        pages.append(page.read_bytes())
    assert pages[0] == pages[1]


def test_the_page_keeps_hostile_tokens_inside_its_data(tmp_path):
    file, _, texts, _ = synthetic_table(tmp_path)
    page = tmp_path / "explorer.html"
    write_explorer_page([ExplorerRun("<b>run</b>", file)], page, 'title "</script>"')
    text = page.read_text(encoding="utf-8")
    # only the page's own two script elements end; no token opens a comment or a tag
    assert text.count("</script>") == 2 and "<!--" not in text
    assert "<title>title &quot;&lt;/script&gt;&quot;</title>" in text
    data = embedded_data(text)
    assert data["vocabularies"][0]["texts"][1 : 1 + len(HOSTILE)] == HOSTILE
    assert data["runs"][0]["name"] == "<b>run</b>"
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # nothing fetched
    assert "https://" not in text


def test_a_page_with_token_ids_of_its_own_embeds_them(tmp_path):
    file = tmp_path / "t.csv"
    file.write_text(
        "token_id,text,group,special,projection_0\n7,a,,false,1.5\n3,b,g,false,-2\n",
        encoding="utf-8",
    )
    write_explorer_page([ExplorerRun("r", file)], tmp_path / "p.html", "t")
    data = embedded_data((tmp_path / "p.html").read_text(encoding="utf-8"))
    ids = np.frombuffer(base64.b64decode(data["vocabularies"][0]["ids"]), dtype="<i4")
    assert ids.tolist() == [7, 3] and data["runs"][0]["groups"] == {"g": [1]}


def test_a_sweep_page_shares_a_vocabulary_and_names_the_runs_it_left_out(tmp_path):
    tables = []
    for i in range(3):
        (tmp_path / str(i)).mkdir()
        tables.append(synthetic_table(tmp_path / str(i), n=200, seed=i)[0])
    runs = [ExplorerRun(f"run {i}", table) for i, table in enumerate(tables)]
    page = tmp_path / "sweep.html"
    kept = write_explorer_page(runs, page, "sweep", max_values=1300, left_out=["x (FAILED)"])
    assert kept == ["run 0", "run 1"]  # 600 coordinates each: the third passes 1300
    data = embedded_data(page.read_text(encoding="utf-8"))
    assert len(data["vocabularies"]) == 1 and [r["vocabulary"] for r in data["runs"]] == [0, 0]
    assert data["left_out"] == ["x (FAILED)", "run 2 (the page holds at most 1,300 coordinates)"]
    assert "Left out of this page (2)" in data["about"][-1]
    # a run's own page is never capped
    assert write_explorer_page(runs[:1], page, "one", max_values=10) == ["run 0"]


# --- real runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory, migrated_store_file) -> dict:
    """Tiny BERT runs that differ in ``analysis.figures`` / ``analysis.explorer``; then the
    deferred run's page and the sweep's page, as the figures command draws them (its
    paper figures are tested in test_figures.py, which also runs this path)."""
    root = tmp_path_factory.mktemp("explorer")
    (root / "store").mkdir()
    shutil.copyfile(migrated_store_file, root / "store" / "mlflow.db")
    uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    write_tiny_bert(root / "tiny-bert")
    kinds = {  # analysis=fast turns the explorer off: each run says what it wants
        "true": ["analysis.figures=true", "analysis.explorer=true"],
        "deferred": ["analysis.figures=deferred", "analysis.explorer=true"],
        "false": ["analysis.figures=false", "analysis.explorer=true"],
        "off": ["analysis.figures=true", "analysis.explorer=false", "analysis.center=false"],
    }
    for overrides in kinds.values():
        run_job(job_config(root / "tiny-bert", uri, EXPERIMENT, "analysis=fast", *overrides))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], order_by=["start_time ASC"])
    by_kind = dict(zip(kinds, (r.info.run_id for r in runs), strict=True))
    before = {kind: artifact_names(client, run_id) for kind, run_id in by_kind.items()}
    # what the figures command does for the explorer (figures_job): the deferred runs'
    # pages, with their per-run figures, and the sweep's page in its figure set's folder
    sweep = tracking.read_sweep(
        uri,
        tracking.SweepSelection(
            experiment=EXPERIMENT, filter_string=f"tags.`{Tag.TARGET_GROUP}` = 'digits'"
        ),
    )
    drawn, failed = draw_deferred_run_figures(uri, sweep)
    assert (len(drawn), failed) == (1, [])
    (root / "fig").mkdir()
    sweep_page = explorer_job.write_sweep_explorer(uri, sweep, root / "fig")
    return {"client": client, "runs": by_kind, "before": before, "sweep_page": sweep_page}


def test_a_run_logs_its_table_and_a_page_built_from_it(store, tmp_path):
    client, run_id = store["client"], store["runs"]["true"]
    assert {"explorer", EXPLORER_PAGE} <= store["before"]["true"]
    table = Path(client.download_artifacts(run_id, EXPLORER_TABLE, str(tmp_path)))
    rows = csv_rows(table.read_bytes().decode("utf-8"))
    assert len(rows) == int(client.get_run(run_id).data.tags[Tag.D_VOCAB])
    digits = [r["text"] for r in rows if "digits" in r["group"].split(";")]
    assert digits == [f"␣{d}" for d in range(10)]  # as people read them: word-initial
    assert {r["text"] for r in rows if r["special"] == "true"} >= {"[CLS]", "[SEP]"}
    page = Path(client.download_artifacts(run_id, EXPLORER_PAGE, str(tmp_path)))
    data = embedded_data(page.read_text(encoding="utf-8"))
    [run] = data["runs"]
    assert data["vocabularies"][0]["texts"] == [r["text"] for r in rows]
    assert run["target"] == "digits" and run["name"] == "digits · centered · tiny_bert"
    logged = np.array([[float(r[a]) for a in run["axes"]] for r in rows])
    np.testing.assert_array_equal(decoded_coordinates(run, len(rows)), logged.astype(np.float32))


def test_a_deferred_run_gets_its_page_from_the_figures_command(store, tmp_path):
    client, run_id = store["client"], store["runs"]["deferred"]
    assert "explorer" in store["before"]["deferred"]
    assert EXPLORER_PAGE not in store["before"]["deferred"]
    assert EXPLORER_PAGE in artifact_names(client, run_id)
    ours = Path(client.download_artifacts(run_id, EXPLORER_PAGE, str(tmp_path / "later")))
    drawn = store["runs"]["true"]
    theirs = Path(client.download_artifacts(drawn, EXPLORER_PAGE, str(tmp_path / "at_once")))
    later, at_once = (embedded_data(p.read_text(encoding="utf-8")) for p in (ours, theirs))
    assert later["runs"][0]["coords"] == at_once["runs"][0]["coords"]  # the same analysis
    assert later["runs"][0]["explained"] == pytest.approx(at_once["runs"][0]["explained"])


def test_no_table_or_page_without_figures_or_with_the_explorer_off(store):
    for kind in ("false", "off"):
        names = artifact_names(store["client"], store["runs"][kind])
        assert not {"explorer", EXPLORER_PAGE} & names, kind


def test_the_fast_analysis_turns_the_explorer_off():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        fast = compose("config", overrides=["analysis=fast"])
        default = compose("config")
    assert fast.analysis.explorer is False and default.analysis.explorer is True


def test_the_sweep_page_selects_among_the_runs_that_logged_a_table(store):
    page, kept = store["sweep_page"]
    assert page.name == "explorer.html"
    data = embedded_data(page.read_text(encoding="utf-8"))
    assert kept == [r["name"] for r in data["runs"]]
    # one run per configuration among those that logged a table: the run without figures
    # repeats the configuration of the two that did, the raw run had the explorer off
    assert [r["name"] for r in data["runs"]] == ["digits · centered · tiny_bert"]
    assert data["left_out"] == []


# --- in a browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Chromium:
    path = shutil.which("chromium")
    if path is None:
        reason = "the explorer's browser tests need chromium: apt-get install chromium"
        if os.environ.get("EMBSVD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"EMBSVD_REQUIRE_BROWSER=1 but chromium is not on PATH; {reason}")
        pytest.skip(reason)
    with Chromium(path) as chromium:
        yield chromium


def open_page(browser: Chromium, page: Path, timeout: float = 60.0) -> None:
    """Open ``page`` from disk and wait until its script has drawn (``explorer.ready``)."""
    browser.open(page.resolve().as_uri())
    deadline = time.monotonic() + timeout
    while not browser.evaluate("!!(window.explorer && window.explorer.ready)"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{page} did not become ready; its text: {browser.text()[:2000]}")
        time.sleep(0.05)


def wait_for_file(folder: Path, name: str, timeout: float = 30.0) -> Path:
    """A download, once the browser has finished writing it."""
    path = folder / name
    deadline = time.monotonic() + timeout
    while not path.is_file() or list(folder.glob("*.crdownload")):
        assert time.monotonic() < deadline, f"{name} not downloaded; {list(folder.iterdir())}"
        time.sleep(0.05)
    return path


def test_the_page_finds_a_token_and_exports_what_was_logged(browser, tmp_path):
    file, projections, texts, _ = synthetic_table(tmp_path)
    page = tmp_path / "explorer.html"
    write_explorer_page([ExplorerRun("run a", file, "tiny", "digits")], page, "test page")
    open_page(browser, page)
    rows = csv_rows(file.read_bytes().decode("utf-8"))
    assert browser.evaluate("explorer.run.n") == len(texts)  # every token, none sampled
    found = browser.evaluate("explorer.search('tok123')")
    assert found[0] == 123  # ␣tok123: a leading ␣ need not be typed
    token = browser.evaluate("explorer.token(explorer.state.selected)")
    assert token["token_id"] == 123 and token["text"] == "␣tok123"
    assert token["coordinates"] == [float(rows[123][f"projection_{k}"]) for k in range(3)]
    # centred on it, and the side panel shows it with its neighbours
    width, height = browser.evaluate("[explorer.state.width, explorer.state.height]")
    assert token["screen"] == pytest.approx([width / 2, height / 2], abs=0.5)
    assert "␣tok123" in browser.evaluate("document.getElementById('selected').innerText")
    neighbours = browser.evaluate("explorer.state.neighbours")
    expected = np.argsort(np.linalg.norm(logged_of(rows) - logged_of(rows)[123], axis=1))[1:16]
    assert [n["row"] for n in neighbours] == expected.tolist()
    # a hostile token is found by its text and shown as text
    assert browser.evaluate(f"explorer.search({HOSTILE[1]!r})")[0] == 2
    assert HOSTILE[1] in browser.evaluate("document.getElementById('selected').innerText")
    # the CSV export of all tokens is the logged table
    exported = csv_rows(browser.evaluate("explorer.csvText('all')"))
    assert [list(r) for r in exported[:1]] == [list(rows[0])]
    assert [(r["token_id"], r["text"], r["group"], r["special"]) for r in exported] == [
        (r["token_id"], r["text"], r["group"], r["special"]) for r in rows
    ]
    np.testing.assert_array_equal(logged_of(exported), logged_of(rows))
    assert browser.evaluate("explorer.csvText('all')") == file.read_bytes().decode("utf-8")
    # the view's export holds the tokens in view, the selected one among them
    in_view = csv_rows(browser.evaluate("explorer.csvText('view')"))
    assert 0 < len(in_view) <= len(rows) and "123" in {r["token_id"] for r in in_view}
    svg = browser.evaluate("explorer.svgText()")
    assert svg.startswith("<svg") and svg.count("<circle") >= 10
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in svg and "<script" not in svg
    png = browser.evaluate("explorer.pngDataUrl()")
    assert base64.b64decode(png.split(",", 1)[1])[:8] == PNG_SIGNATURE


def logged_of(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(r[f"projection_{k}"]) for k in range(3)] for r in rows])


def test_the_export_buttons_download_the_files(browser, tmp_path):
    file, _, _, _ = synthetic_table(tmp_path)
    page = tmp_path / "explorer.html"
    write_explorer_page([ExplorerRun("run a", file)], page, "downloads")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.send("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
    open_page(browser, page)
    for button, name in [
        ("export-all", "run_a__axes_1_2__all.csv"),
        ("export-svg", "run_a__axes_1_2.svg"),
        ("export-png", "run_a__axes_1_2.png"),
    ]:
        browser.evaluate(f"document.getElementById('{button}').click()")
        path = wait_for_file(downloads, name)
        if name.endswith(".csv"):
            exported = path.read_bytes().decode("utf-8")
            assert exported == browser.evaluate("explorer.csvText('all')")
            assert exported == file.read_bytes().decode("utf-8")  # the logged table, exactly
        elif name.endswith(".png"):
            assert path.read_bytes()[:8] == PNG_SIGNATURE
        else:
            assert path.read_text(encoding="utf-8").startswith("<svg")


@pytest.mark.slow
def test_the_bundled_minilm_page_in_a_browser(browser, tmp_path):
    """The bundled MiniLM (30522 tokens), target digits: the run's own page, every token
    drawn; a search for ``7`` highlights the digit; a screenshot for people to look at."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                f"tracking.uri={uri}",
                "tracking.experiment=explorer-minilm",
                "analysis=fast",
                "analysis.explorer=true",
                "analysis.figures=true",
            ],
        )
    run_job(cfg)
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("explorer-minilm").experiment_id])
    page = Path(client.download_artifacts(run.info.run_id, EXPLORER_PAGE, str(tmp_path)))
    open_page(browser, page)
    assert browser.evaluate("explorer.run.n") == 30522
    # a leading space stands for the word start: ' 7' finds ␣7 (the digit group's), while
    # '7' finds the continuation ##7 first, whose text is 7
    assert browser.evaluate("explorer.search(' 7')")[0] == browser.evaluate(
        "explorer.run.vocab.texts.indexOf('␣7')"
    )
    token = browser.evaluate("explorer.token(explorer.state.selected)")
    assert token["text"] == "␣7" and token["group"] == "digits"
    folder = Path(os.environ.get("EMBSVD_TEST_ARTIFACTS") or PROJECT_ROOT / "test-artifacts")
    shot = browser.screenshot(folder / "explorer_minilm_digits.png")
    assert shot.read_bytes()[:8] == PNG_SIGNATURE


def test_reading_a_runs_tables_draws_no_progress_bar(store, tmp_path, capfd):
    """The figures command reads each run's tables and explorer table: MLflow would draw
    a progress bar per download, a line per run and file in the command's output."""
    from embsvd.tracking.reading import PROGRESS_BAR_VARIABLE

    client, run_id = store["client"], store["runs"]["true"]
    os.environ[PROGRESS_BAR_VARIABLE] = "true"  # MLflow's default: bars on
    try:
        table = explorer_job.logged_table(client, run_id, tmp_path / "explorer")
        assert table is not None and table.is_file()
        (tmp_path / "tables").mkdir()
        tables = tracking.read_tables(client, run_id, ["spectrum.csv"], tmp_path / "tables")
        assert tables["spectrum.csv"]  # read, rows and all
        assert "Downloading artifacts" not in capfd.readouterr().err
        assert os.environ[PROGRESS_BAR_VARIABLE] == "true"  # as it was
    finally:
        del os.environ[PROGRESS_BAR_VARIABLE]
