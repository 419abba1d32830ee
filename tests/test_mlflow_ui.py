"""The MLflow UI over a store that a real sweep wrote, in a real (headless) browser.

A small sweep (tiny BERT, ``analysis=fast``, 2 targets x centered/raw: one parent run and
four children) writes a fresh sqlite store; ``mlflow server`` serves it on 127.0.0.1 and
Debian's ``chromium`` (see tests/browser.py; ``.ci/run`` installs it) opens the pages a
user would, the sweep's saved view (the page the sweep prints) among them. Every page's
screenshot goes to ``$EMBSVD_TEST_ARTIFACTS`` (default ``test-artifacts/`` in the
project; the saved view's runs table is ``mlflow_runs_table.png``). Without chromium the
module is skipped, unless ``EMBSVD_REQUIRE_BROWSER=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow.tracking import MlflowClient

from embsvd.tracking.contract import Tag
from tests.browser import Chromium
from tests.conftest import PROJECT_ROOT, write_tiny_bert
from tests.test_sweeps import run_sweep, store_uri

pytestmark = pytest.mark.slow

EXPERIMENT = "embsvd"  # conf/tracking: the sweep's experiment
TARGETS = ("digits", "eu_countries")
CHILD_NAMES = [f"{t} · {c} · tiny_bert" for t in TARGETS for c in ("centered", "raw")]
SERVER_START_TIMEOUT = 120  # seconds; the server takes ~11 s to answer /health here
PAGE_TIMEOUT = 60  # seconds; the first page load parses MLflow's large JS bundle
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The +/- button that shows or hides a parent run's children in the runs table.
EXPAND_BUTTONS = "button[data-component-id*='runnamecellrenderer']"


@dataclass
class Sweep:
    """What the sweep wrote: the store, its experiment and the runs by name."""

    store_uri: str
    experiment_id: str
    parent_name: str
    sweep_id: str
    run_ids: dict[str, str]  # run name -> run id, for the four children
    view_page: str  # the sweep's saved view, as the sweep printed it (after the UI's address)


@dataclass
class Ui:
    base_url: str
    sweep: Sweep


@pytest.fixture(scope="module")
def chromium_path() -> str:
    """The browser, or a skip (a failure where ``EMBSVD_REQUIRE_BROWSER=1``)."""
    path = shutil.which("chromium")
    if path is None:
        reason = (
            "the MLflow UI tests need Debian's headless browser: "
            "apt-get install chromium (.ci/run installs it)"
        )
        if os.environ.get("EMBSVD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"EMBSVD_REQUIRE_BROWSER=1 but chromium is not on PATH; {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def sweep(
    chromium_path: str, tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path
) -> Sweep:
    """``experiments/run.py -m`` into a fresh store, as in tests/test_sweeps.py."""
    root = tmp_path_factory.mktemp("ui_sweep")
    (root / "store").mkdir()
    shutil.copyfile(migrated_store_file, root / "store" / "mlflow.db")
    write_tiny_bert(root / "tiny-bert")
    done = run_sweep(
        root,
        "model=local",
        f"model.path={root / 'tiny-bert'}",
        "model.name=tiny_bert",
        "analysis=fast",
        "target=" + ",".join(TARGETS),
        "analysis.center=true,false",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = re.search(r"\n  then http://127\.0\.0\.1:5000/(#/experiments/\S+)\n", done.stdout)
    assert printed, f"the sweep printed no page of its saved view:\n{done.stdout[-3000:]}"

    uri = store_uri(root)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("embsvd.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(CHILD_NAMES)
    return Sweep(
        store_uri=uri,
        experiment_id=experiment.experiment_id,
        parent_name=parent.info.run_name,
        sweep_id=parent.data.tags["embsvd.sweep_id"],
        run_ids={r.info.run_name: r.info.run_id for r in children},
        view_page=printed[1],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(sweep: Sweep, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    """``mlflow server`` over the sweep's store, on a free local port; ended afterwards."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    with mlflow_server(folder, "--backend-store-uri", sweep.store_uri) as base_url:
        yield Ui(base_url, sweep)


# no usage reports; no job runner (its worker processes only slow start and stop)
QUIET_SERVER = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


@contextlib.contextmanager
def mlflow_server(folder: Path, *options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """``mlflow server <options>`` on a free 127.0.0.1 port; yields its base URL (with a
    trailing ``/``) once it answers, and ends it afterwards (see ``running_server``)."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server", *options]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with running_server(folder, command, port, env) as base_url:
        yield base_url


@contextlib.contextmanager
def running_server(
    folder: Path, command: list[str], port: int, env: dict[str, str] | None = None
) -> Iterator[str]:
    """``command``, a server listening on 127.0.0.1:``port``; yields its base URL (with a
    trailing ``/``) once it answers /health, and ends it afterwards. It runs in ``folder``
    (what it writes relative to its working directory stays there; its log is
    ``server.log``) and in its own process group, so the uvicorn process it starts is
    ended with it."""
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command,
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**(os.environ if env is None else env), **QUIET_SERVER},
            start_new_session=True,
        )
    try:
        base_url = f"http://127.0.0.1:{port}/"
        wait_for_health(server, base_url, log_path)
        yield base_url
    finally:
        stop_server(server)


def stop_server(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # whatever of its group is left
        os.killpg(server.pid, signal.SIGKILL)


def wait_for_health(server: subprocess.Popen, base_url: str, log_path: Path) -> None:
    started = time.monotonic()
    while True:
        if server.poll() is not None:
            pytest.fail(
                f"mlflow server exited with {server.returncode}; its log ends:\n"
                + log_path.read_text(errors="replace")[-3000:]
            )
        try:
            with urllib.request.urlopen(base_url + "health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() - started > SERVER_START_TIMEOUT:
            pytest.fail(
                f"mlflow server did not answer {base_url}health in {SERVER_START_TIMEOUT} s;"
                " its log ends:\n" + log_path.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.25)


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Chromium]:
    with Chromium(chromium_path) as chromium:
        yield chromium


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = Path(os.environ.get("EMBSVD_TEST_ARTIFACTS") or PROJECT_ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_screenshot(browser: Chromium, folder: Path, name: str) -> None:
    path = browser.screenshot(folder / name)
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path


def scroll_to_text(browser: Chromium, text: str) -> None:
    """Scroll the first element whose own text is ``text`` into view (for the screenshot)."""
    found = browser.evaluate(
        f"""(() => {{
          const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
          for (let node; (node = walker.nextNode()); ) {{
            if (node.nodeValue.trim() === {json.dumps(text)}) {{
              node.parentElement.scrollIntoView({{block: 'center'}});
              return true;
            }}
          }}
          return false;
        }})()"""
    )
    assert found, f"no element shows {text!r}"
    time.sleep(0.3)  # let the scroll settle before a screenshot


def runs_page(ui: Ui, search_filter: str = "") -> str:
    # always name the filter: MLflow restores the experiment's last one otherwise
    return (
        f"{ui.base_url}#/experiments/{ui.sweep.experiment_id}/runs"
        f"?searchFilter={quote(search_filter)}"
    )


def show_runs(
    browser: Chromium, n_matching: int, names: list[str], absent: tuple[str, ...] = ()
) -> str:
    """On a runs page: wait for the table (``n_matching`` runs, the parent included),
    expand the parent rows so that MLflow lists their children, and wait until the page
    shows every one of ``names`` and none of ``absent`` (the table redraws a moment after
    the count changes). Returns the page's text."""
    browser.wait_for_text(f"{n_matching} matching runs", timeout=PAGE_TIMEOUT)
    # The +/- button toggles, a press while the table is still being drawn can be lost,
    # and the expanded state outlives a page change: press it only while the table shows
    # fewer rows than runs matched, and not again before the last press had time to act.
    deadline = time.monotonic() + PAGE_TIMEOUT
    last_press = -float("inf")
    while True:
        page = browser.text()
        missing = [name for name in names if name not in page]
        extra = [name for name in absent if name in page]
        if not missing and not extra:
            return page
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the runs table does not show {missing}, or shows {extra}:\n{page[-3000:]}"
            )
        rows = browser.evaluate(
            "new Set(Array.from(document.querySelectorAll('[role=row][row-id]'))"
            ".map(row => row.getAttribute('row-id'))).size"
        )
        if 0 < rows < n_matching and time.monotonic() - last_press > 3:
            browser.evaluate(
                f"document.querySelectorAll({json.dumps(EXPAND_BUTTONS)})"
                ".forEach(button => button.click())"
            )
            last_press = time.monotonic()
        time.sleep(0.25)


def test_runs_page_lists_the_sweep_parent_and_its_children(ui, browser, artifacts):
    assert ui.sweep.parent_name.startswith("sweep/")
    browser.open(runs_page(ui))
    show_runs(browser, 5, [ui.sweep.parent_name, *CHILD_NAMES])
    save_screenshot(browser, artifacts, "mlflow_ui_runs.png")


def test_runs_page_filters_a_sweep_by_its_tags(ui, browser, artifacts):
    # MLflow lists a matching child under its parent, and counts the parent as a match
    browser.open(runs_page(ui, f"tags.embsvd.sweep_id = '{ui.sweep.sweep_id}'"))
    show_runs(browser, 5, [ui.sweep.parent_name, *CHILD_NAMES])

    browser.open(runs_page(ui, "tags.embsvd.target_group = 'digits'"))
    digits = [n for n in CHILD_NAMES if n.startswith("digits ")]
    show_runs(browser, 3, [ui.sweep.parent_name, *digits], absent=("eu_countries ·",))

    browser.open(
        runs_page(ui, "tags.embsvd.target_group = 'digits' and tags.embsvd.center = 'true'")
    )
    show_runs(
        browser,
        2,
        [ui.sweep.parent_name, "digits · centered · tiny_bert"],
        absent=("digits · raw · tiny_bert", "eu_countries ·"),
    )
    save_screenshot(browser, artifacts, "mlflow_ui_runs_filtered.png")


def test_run_page_shows_the_singular_value_metric(ui, browser, artifacts):
    run_id = ui.sweep.run_ids["digits · centered · tiny_bert"]
    browser.open(f"{ui.base_url}#/experiments/{ui.sweep.experiment_id}/runs/{run_id}")
    page = browser.wait_for_text(
        "digits · centered · tiny_bert", "Metrics", "singular_value", timeout=PAGE_TIMEOUT
    )
    assert run_id in page
    scroll_to_text(browser, "singular_value")
    save_screenshot(browser, artifacts, "mlflow_ui_run.png")


def test_compare_page_plots_singular_value_for_the_four_runs(ui, browser, artifacts):
    run_ids = list(ui.sweep.run_ids.values())
    browser.open(
        f"{ui.base_url}#/compare-runs?runs={quote(json.dumps(run_ids))}"
        f"&experiments={quote(json.dumps([ui.sweep.experiment_id]))}"
    )
    browser.wait_for_text("Comparing 4 Runs", *CHILD_NAMES, "singular_value", timeout=PAGE_TIMEOUT)
    scroll_to_text(browser, "singular_value")
    save_screenshot(browser, artifacts, "mlflow_ui_compare.png")

    # the metric's name links to its plot against step (= component) for the four runs
    plot = browser.evaluate(
        "Array.from(document.querySelectorAll('a'))"
        ".find(a => a.textContent.trim() === 'singular_value')?.href ?? null"
    )
    assert plot and "metric" in plot, plot
    browser.open(plot)
    browser.wait_for_text(
        "Completed Runs",
        "4/4",
        *(f"{name} (singular_value)" for name in CHILD_NAMES),
        timeout=PAGE_TIMEOUT,
    )
    save_screenshot(browser, artifacts, "mlflow_ui_metric.png")


# A name cell's text nodes, and whether each ends inside its cell: a name cut by the column
# (drawn with an ellipsis) runs past the cell's right edge.
NAMES_SHOWN = """(() => {
  const shown = {};
  for (const cell of document.querySelectorAll('[role=gridcell][col-id="attributes.`Run Name`"]')) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node; (node = walker.nextNode()); ) {
      const range = document.createRange();
      range.selectNodeContents(node);
      const whole = range.getBoundingClientRect().right <= cell.getBoundingClientRect().right;
      shown[node.nodeValue.trim()] = whole;
    }
  }
  return shown;
})()"""
# The text of every run row's cell in one column, by row id (which ends in the run's id).
COLUMN_CELLS = """(column => Object.fromEntries(
  Array.from(document.querySelectorAll('[role=row][row-id]')).flatMap(row => {
    const cell = row.querySelector(`[role=gridcell][col-id="${column}"]`);
    return cell ? [[row.getAttribute('row-id'), cell.innerText.trim()]] : [];
  })))"""
# MLflow's own state: the assistant's side panel would cover the table in screenshots
CLOSED_ASSISTANT = (
    "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"
)


def wait_until(browser: Chromium, check, what: str, timeout: float = PAGE_TIMEOUT):
    """``check(browser)``'s value once it is truthy (the table draws in steps)."""
    deadline = time.monotonic() + timeout
    while not (value := check(browser)):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after {timeout} s, {what}; the page ends:\n{browser.text()[-3000:]}"
            )
        time.sleep(0.25)
    return value


def test_the_page_a_sweep_prints_shows_its_runs_by_name_with_their_key_numbers(
    ui, browser, artifacts
):
    """The sweep's saved view: its runs in one open group (the parent's row cannot be
    unfolded by a view), every run's whole name on screen, and columns for the datasets,
    the model and the key numbers, with the stored values."""
    assert ui.sweep.view_page == (
        f"#/experiments/{ui.sweep.experiment_id}/runs?viewStateShareKey=embsvd-{ui.sweep.sweep_id}"
    )
    browser.open(ui.base_url)
    browser.evaluate(CLOSED_ASSISTANT)
    browser.open(ui.base_url + ui.sweep.view_page)
    browser.wait_for_text(
        f"embsvd sweep {ui.sweep.sweep_id}",  # the view, named in the Views menu
        f"Group by: {Tag.SWEEP_ID}",
        "5 matching runs",
        *CHILD_NAMES,
        "Dataset",
        "model.name",
        "s1_share",
        timeout=PAGE_TIMEOUT,
    )
    # the names differ within what the column shows: it shows each whole
    shown = wait_until(
        browser,
        lambda b: (s := b.evaluate(NAMES_SHOWN)) and all(n in s for n in CHILD_NAMES) and s,
        "the runs table does not show every run's name",
    )
    assert all(shown[name] for name in CHILD_NAMES), shown
    assert len(set(CHILD_NAMES)) == 4

    stored = MlflowClient(ui.sweep.store_uri)
    expected = {
        run_id: stored.get_run(run_id).data.metrics["s1_share"]
        for run_id in ui.sweep.run_ids.values()
    }

    def s1_share_cells(b: Chromium) -> dict[str, str]:
        cells = b.evaluate(f"{COLUMN_CELLS}({json.dumps('metrics.`s1_share`')})")
        found = {row[-32:]: text for row, text in cells.items() if row[-32:] in expected}
        return found if len(found) == len(expected) and all(found.values()) else {}

    cells = wait_until(browser, s1_share_cells, "the s1_share column has no value for a run")
    assert {run_id: float(text) for run_id, text in cells.items()} == expected
    models = browser.evaluate(f"{COLUMN_CELLS}({json.dumps('params.`model.name`')})")
    assert sum(text == "tiny_bert" for text in models.values()) == 4, models
    # the parent's description is the sweep's table
    [parent] = stored.search_runs([ui.sweep.experiment_id], f"tags.`{Tag.ROLE}` = 'sweep'")
    note = parent.data.tags[Tag.NOTE]
    assert note.startswith(f"**{ui.sweep.parent_name}**: FINISHED\n\n```\nrun ")
    assert all(re.search(rf"\n{re.escape(n)} +FINISHED ", note) for n in CHILD_NAMES), note
    datasets = browser.evaluate(f"{COLUMN_CELLS}({json.dumps('attributes.`Dataset`')})")
    targets = sorted(text.split(" (")[0] for text in datasets.values() if "Target" in text)
    assert targets == ["digits", "digits", "eu_countries", "eu_countries"], datasets
    save_screenshot(browser, artifacts, "mlflow_runs_table.png")

    # its chart view opens on the key numbers: the spectrum with its interval in one chart
    browser.open(f"{ui.base_url}{ui.sweep.view_page}&compareRunsMode=CHART")
    browser.wait_for_text("Key numbers (embsvd)", "Parallel Coordinates", timeout=PAGE_TIMEOUT)
    axes = wait_until(  # the parallel coordinates: from what the sweep varied to the numbers
        browser,
        lambda b: b.evaluate(
            "Array.from(document.querySelectorAll('.parcoords text')).map(t => t.textContent)"
        ),
        "the parallel-coordinates chart is not drawn",
    )
    assert {"target", "analysis.center", "s1_share", "sv_1"} <= set(axes), axes
    save_screenshot(browser, artifacts, "mlflow_runs_charts.png")
