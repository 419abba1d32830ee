"""Paths built from names stay inside their root: sweep ids (given, or read from a shared
store's tags), sweep names, and the model and group parts of figure names are made
file-safe or refused, and the figures command replaces nothing but a figure set it wrote.

Each test that writes keeps a sentinel file beside ``output_dir`` and a folder there named
like the hostile input's target, and asserts that nothing outside ``output_dir`` changed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from embsvd import tracking
from embsvd.checks.run import ChecksResult
from embsvd.figures.folder import MARKER_VERSION, set_files
from embsvd.figures.paper import (
    MANIFEST,
    MARKER,
    check_replaceable,
    figure_folder,
    write_figure_set,
)
from embsvd.figures.style import FigureStyle
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import analyze
from embsvd.pipeline import figures_job
from embsvd.tracking import contract
from embsvd.tracking.contract import (
    NAME_MAX,
    LoggedRun,
    Tag,
    check_plain_name,
    file_safe,
    is_plain_name,
)
from embsvd.tracking.reading import SweepSelection, read_sweep
from tests.conftest import CONFIG_DIR, PROJECT_ROOT, token_group

FILTER = """sweep.filter='attributes.status = "FINISHED"'"""  # Hydra wants '=' quoted
HOSTILE_NAMES = [
    "",
    ".",
    "..",
    "...",
    "../x",
    "../../etc",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "a\x00b",
    "\x00",
    " ",
    "___",
    "-",
    ".hidden",
    "café",
    "\u202eevil",
    "x" * 300,
    "sweep/../..",
]


# --- file_safe and plain names ---------------------------------------------------------------


def assert_one_plain_name(name: str) -> None:
    assert name not in ("", ".", "..")
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert len(name) <= NAME_MAX and is_plain_name(name), name


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_file_safe_is_always_one_plain_name_inside_its_root(name, tmp_path):
    safe = file_safe(name)
    assert_one_plain_name(safe)
    assert (tmp_path / safe).resolve().parent == tmp_path.resolve()


def test_file_safe_holds_for_random_text_and_keeps_names_apart():
    alphabet = "ab./\\\x00_- é\u202e"
    rng = random.Random(0)
    for _ in range(2000):
        assert_one_plain_name(file_safe("".join(rng.choices(alphabet, k=rng.randint(0, 12)))))
    # names cut to NAME_MAX keep a hash of the whole name: they stay apart
    assert file_safe("x" * 300 + "a") != file_safe("x" * 300 + "b")
    assert file_safe("..") != file_safe("/")  # nothing left: a hash of what was given


@pytest.mark.parametrize(
    "name",
    ["seed_replication_2026-11-28_07-57-50", "multirun_2026-11-28_07-57-50", "bert_centered"],
)
def test_file_safe_leaves_sweep_ids_as_they_were(name):
    assert file_safe(name) == name
    assert contract.sweep_id("sweep/seed_replication/2026-11-28 07-57-50") == (
        "seed_replication_2026-11-28_07-57-50"
    )


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_given_sweep_name_or_id_that_is_not_plain_is_refused(name):
    with pytest.raises(ValueError, match=r"sweep\.name=.*: not a plain name \(ASCII letters"):
        check_plain_name("sweep.name", name)
    with pytest.raises(ValueError, match=r"sweep\.sweep_id=.*: not a plain name"):
        SweepSelection(sweep_id=name)
    with pytest.raises(ValueError, match=r"sweep\.name=.*: not a plain name"):
        SweepSelection(name=name, experiment="embsvd", filter_string="tags.x = 'y'")


def test_the_refusal_suggests_a_plain_name():
    with pytest.raises(ValueError, match=r"e\.g\. sweep\.name=x$"):
        check_plain_name("sweep.name", "../x")


# --- the figure folder -----------------------------------------------------------------------


def test_the_figure_folder_must_lie_in_output_dir_and_not_be_a_link(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert figure_folder(out, "s") == out.resolve() / "s"
    for name in ("..", ".", "../x", "a/b", "/abs"):
        with pytest.raises(ValueError, match="is not one plain folder name; e.g."):
            figure_folder(out, name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "linked").symlink_to(elsewhere)
    with pytest.raises(ValueError, match=r"linked is a link or leads out of output_dir"):
        figure_folder(out, "linked")


def test_only_an_absent_folder_or_a_figure_set_may_be_replaced(tmp_path):
    check_replaceable(tmp_path / "absent")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / MANIFEST).write_text(json.dumps({MARKER: 1, "sweep": "mine"}))
    check_replaceable(mine)
    earlier = tmp_path / "earlier"  # written before sweep.json carried the marker
    earlier.mkdir()
    keys = ("sweep", "selection", "parent_run_id", "runs", "left_out", "style")
    (earlier / MANIFEST).write_text(json.dumps(dict.fromkeys(keys)))
    check_replaceable(earlier)
    for name, content in (("thesis", None), ("other", '{"sweep": "x"}'), ("junk", "not json")):
        folder = tmp_path / name
        folder.mkdir()
        if content is not None:
            (folder / MANIFEST).write_text(content)
        with pytest.raises(ValueError, match=rf"{name} exists and is not a figure set this"):
            check_replaceable(folder)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="a_file exists and is not a figure set"):
        check_replaceable(tmp_path / "a_file")


def test_a_manifest_removes_only_plain_files_of_the_formats_drawn_again():
    """sweep.json is anyone's text in a shared folder: what it lists is removed only when
    it is a plain name of the folder itself, of a format just drawn, and not drawn again."""
    earlier = {
        "files": ["scree_grid.png", "old.png", "old.csv", "../x.png", "a/b.png", MANIFEST],
        "kept": ["scree_grid.pdf", "..", "/etc/passwd.png", ".hidden.png", 7],
    }
    kept, stale = set_files(earlier, ["scree_grid.png", "scree_grid.csv", MANIFEST])
    assert stale == ["old.png", "old.csv"]
    assert kept == ["scree_grid.pdf"]
    assert set_files({"files": "not a list"}, ["x.png"]) == ([], [])
    assert set_files({}, ["x.png"]) == ([], [])  # a set drawn before manifests listed files


def test_a_planted_manifest_cannot_remove_anything_outside_its_folder(tmp_path):
    folder = tmp_path / "out" / "s"
    folder.mkdir(parents=True)
    sentinel = tmp_path / "out" / "keep.png"
    sentinel.write_text("mine\n")
    listed = ["../keep.png", str(sentinel), "sub/x.png"]
    (folder / MANIFEST).write_text(json.dumps({MARKER: 2, "files": listed, "kept": []}))
    (folder / "sub").mkdir()
    (folder / "sub" / "x.png").write_text("mine too\n")
    run = LoggedRun(
        run_id="r",
        name="m/g/centered",
        experiment="embsvd",
        tags={},
        metrics={},
        series={"singular_value": (2.0, 1.0)},
        tables={},
    )
    write_figure_set(
        contract.Sweep("s", "", None, (run,)),
        tmp_path / "out",
        FigureStyle(formats=("png",), dpi=40),
    )
    assert sentinel.read_text() == "mine\n"
    assert (folder / "sub" / "x.png").read_text() == "mine too\n"
    assert (folder / "scree_grid.png").is_file()


# --- a real store with a planted sweep id ----------------------------------------------------


def log_child(store, parent_run_id: str, job_num: int, center: bool) -> None:
    """A finished child with what the figures read: an analysis of a random matrix."""
    rng = np.random.default_rng(job_num)
    W = rng.normal(size=(40, 6)) + 0.3
    groups = {"a_group": token_group("a_group", [1, 2, 3, 4, 5]), "b": token_group("b", [9, 10])}
    vocab = Vocabulary.from_matrix(W, [f"tok{i}" for i in range(40)], special_ids=[0])
    result = analyze(W, groups, "a_group", vocab, center=center, n_components=2, top_k=3)
    tags = {Tag.PARENT_RUN_ID: parent_run_id, Tag.JOB_NUM: job_num}
    with tracking.tracked_run(store, contract.run_name("m", "a_group", center), tags) as run:
        tracking.log_groups(run, groups, "a_group")
        tracking.log_result(run, result, ChecksResult(random_state=0))


def planted_sweep(store, sweep_id: str, finished: bool = True) -> str:
    """A sweep parent whose sweep-id tag is ``sweep_id`` (anyone can write a tag into a
    shared store), with two finished children; its parent ends FINISHED if ``finished``."""
    parent = tracking.start_run(
        store, "sweep/planted/x", {Tag.ROLE: contract.SWEEP_ROLE, Tag.SWEEP_ID: sweep_id}
    )
    for job_num, center in enumerate((True, False)):
        log_child(store, parent.run_id, job_num, center)
    if finished:
        store.client.set_terminated(parent.run_id, "FINISHED")
    return parent.run_id


@pytest.fixture(scope="module")
def planted(tmp_path_factory, migrated_store_file):
    """A real sqlite store holding a sweep whose id tag is ``../x``."""
    root = tmp_path_factory.mktemp("planted")
    shutil.copyfile(migrated_store_file, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    store = tracking.TrackingStore(uri, "embsvd")
    return uri, store, planted_sweep(store, "../x")


@pytest.fixture
def work(tmp_path):
    """``<tmp>/work`` with ``out/`` (the output_dir), a sentinel file beside it and a
    folder ``x`` beside it, where ``out/../x`` leads."""
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    (work / "sentinel.txt").write_text("keep me\n")
    (work / "x").mkdir()
    (work / "x" / "keep.txt").write_text("mine\n")
    return work


def outside(work: Path) -> dict[str, bytes | None]:
    """Everything under ``work`` but ``out/``: path -> bytes (None for a folder)."""
    return {
        str(p.relative_to(work)): None if p.is_dir() else p.read_bytes()
        for p in sorted(work.rglob("*"))
        if p.relative_to(work).parts[0] != "out"
    }


def draw(uri: str, output_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "figures",
            overrides=[
                f"tracking.uri={uri}",
                f"output_dir={output_dir}",
                "formats=[png]",
                "dpi=40",
                *overrides,
            ],
        )
    return figures_job(cfg)


def test_a_planted_sweep_id_draws_into_a_file_safe_folder_inside_output_dir(planted, work):
    uri, _, parent_run_id = planted
    before = outside(work)
    files = draw(uri, work / "out", f"sweep.parent_run_id={parent_run_id}")
    folder = work / "out" / "x"  # '../x' made file-safe
    assert files and all(f.parent == folder for f in files)
    assert json.loads((folder / MANIFEST).read_text())[MARKER] == MARKER_VERSION
    assert outside(work) == before  # the sentinel and work/x untouched
    assert [p.name for p in (work / "out").iterdir()] == ["x"]  # no scratch folder left
    # drawn again over its own set: replaced, still nothing outside changes
    draw(uri, work / "out", f"sweep.parent_run_id={parent_run_id}")
    assert outside(work) == before and [p.name for p in (work / "out").iterdir()] == ["x"]


def test_read_sweep_makes_a_stored_sweep_id_file_safe(planted):
    uri, _, parent_run_id = planted
    assert read_sweep(uri, SweepSelection(parent_run_id=parent_run_id)).name == "x"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sweep.sweep_id=../x", "figures: sweep.sweep_id='../x': not a plain name"),
        ("sweep.sweep_id=/tmp/x", "figures: sweep.sweep_id='/tmp/x': not a plain name"),
        ("sweep.name=..", "figures: sweep.name='..': not a plain name"),
        ("sweep.name=a/b", "figures: sweep.name='a/b': not a plain name"),
        (f"sweep.name={'n' * 101}", "not a plain name"),
    ],
)
def test_a_given_name_that_is_not_plain_ends_the_command_and_writes_nothing(
    planted, work, capsys, override, message
):
    uri, _, _ = planted
    before = outside(work)
    with pytest.raises(SystemExit) as exit_info:
        draw(uri, work / "out", override, "sweep.experiment=embsvd", FILTER)
    assert exit_info.value.code == 1
    assert message in capsys.readouterr().err
    assert outside(work) == before and not list((work / "out").iterdir())


def test_a_nul_in_a_given_sweep_id_is_refused(planted):
    uri, _, _ = planted
    with pytest.raises(ValueError, match=r"sweep.sweep_id='a\\x00b': not a plain name"):
        read_sweep(uri, SweepSelection(sweep_id="a\x00b"))


def test_a_folder_the_command_did_not_write_is_never_replaced(planted, work, capsys):
    uri, _, parent_run_id = planted
    thesis = work / "out" / "x"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("years of work\n")
    with pytest.raises(SystemExit):
        draw(uri, work / "out", f"sweep.parent_run_id={parent_run_id}")
    err = capsys.readouterr().err
    assert f"figures: {thesis.resolve()} exists and is not a figure set this command wrote" in err
    assert (thesis / "chapter1.tex").read_text() == "years of work\n"
    assert [p.name for p in (work / "out").iterdir()] == ["x"]  # no scratch left behind


def test_a_figure_set_that_fails_to_draw_leaves_the_previous_one_and_no_scratch(
    planted, work, monkeypatch
):
    uri, _, parent_run_id = planted
    sweep = read_sweep(uri, SweepSelection(parent_run_id=parent_run_id))
    style = FigureStyle(formats=("png",), dpi=40)
    files = write_figure_set(sweep, work / "out", style)
    before = {f: f.read_bytes() for f in files}
    no_bins = LoggedRun(
        run_id="r",
        name="m/a_group/centered+unit_rows",
        experiment="embsvd",
        tags={},
        metrics={},
        series={"singular_value": (1.0, 0.5)},
        tables={"projection_histogram.csv": ({"component": "0"},)},
    )
    broken = contract.Sweep(sweep.name, "", None, (*sweep.runs, no_bins))
    with pytest.raises(KeyError):
        write_figure_set(broken, work / "out", style)
    assert {f: f.read_bytes() for f in files} == before
    assert [p.name for p in (work / "out").iterdir()] == ["x"]


# --- runs that have not ended ----------------------------------------------------------------


def test_running_runs_are_refused_unless_include_running(planted, work, capsys):
    uri, store, _ = planted
    parent_run_id = planted_sweep(store, "still_running", finished=False)
    running = tracking.start_run(
        store, "m/a_group/centered+unit_rows", {Tag.PARENT_RUN_ID: parent_run_id}
    )
    with pytest.raises(SystemExit):
        draw(uri, work / "out", "sweep.sweep_id=still_running")
    err = capsys.readouterr().err
    assert "figures: sweep 'still_running'" in err
    assert "2 of its runs have not ended: sweep/planted/x (run" in err
    assert "the sweep's parent, RUNNING)" in err
    assert f"m/a_group/centered+unit_rows (run {running.run_id}, RUNNING)" in err
    assert "Wait until they end" in err and "`embsvd runs reconcile`" in err
    assert "set sweep.include_running=true to draw the finished runs now" in err
    assert not list((work / "out").iterdir())

    files = draw(uri, work / "out", "sweep.sweep_id=still_running", "sweep.include_running=true")
    assert files and (work / "out" / "still_running" / MANIFEST).is_file()
    out = capsys.readouterr().out
    assert "files from 2 runs" in out
    assert "left out: m/a_group/centered+unit_rows (RUNNING)" in out
    manifest = json.loads((work / "out" / "still_running" / MANIFEST).read_text())
    assert manifest["left_out"] == [{"name": "m/a_group/centered+unit_rows", "status": "RUNNING"}]
    MlflowClient(uri).set_terminated(running.run_id, "KILLED")  # other tests see an ended sweep
    MlflowClient(uri).set_terminated(parent_run_id, "KILLED")


# --- the command as a user types it ----------------------------------------------------------


@pytest.mark.slow
def test_figures_py_with_a_dotdot_sweep_name_leaves_the_checkout_alone(planted, work):
    uri, _, _ = planted
    before = outside(work)
    done = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "experiments" / "figures.py"),
            f"tracking.uri={uri}",
            f"output_dir={work / 'out'}",
            "sweep.name=..",
            "sweep.experiment=embsvd",
            FILTER,
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "figures: sweep.name='..': not a plain name" in done.stderr
    assert outside(work) == before and not list((work / "out").iterdir())
