"""The figure process (``embsvd.figures.drawer``): a run's quick looks drawn beside the
job, the same files as drawn in place, and drawn in place whenever the process fails."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from embsvd.figures.drawer import FigureDrawer, draw_here
from embsvd.figures.explorer import PAGE_FOLDER, RunExplorer, write_run_explorer
from embsvd.figures.run_data import (
    FIGURES_WITH_CHECKS,
    FIGURES_WITHOUT_CHECKS,
    UNDERTRAINED_MARK,
    run_figure_data,
)
from embsvd.io.display import DisplayTexts, TokenDecoding
from tests.test_run_figures_fast import SIZES, analysis  # noqa: F401 (a fixture)
from tests.test_sweeps import (  # noqa: F401 (fresh_store: a migrated store per test)
    fresh_store,
    parents_and_children,
    run_sweep,
    sweep_command,
    tiny_model,
)


@pytest.fixture(scope="module")
def data(analysis):  # noqa: F811 (the fixture imported above)
    result, checks = analysis
    return run_figure_data(result, "tiny_bert", checks)


@pytest.fixture
def drawer():
    drawer = FigureDrawer()
    yield drawer
    drawer.close()


def folder(path: Path) -> Path:
    path.mkdir()
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_the_figure_process_writes_the_files_drawing_in_place_writes(data, drawer, tmp_path):
    pending = drawer.submit(data, folder(tmp_path / "process"))
    paths = pending.wait()
    assert pending.drawn_by not in (None, os.getpid())  # another process drew them
    assert pending.drawn_by == drawer._process.pid
    assert sorted(p.name for p in paths) == sorted(SIZES)
    draw_here(data, folder(tmp_path / "here"))
    assert files(tmp_path / "process") == files(tmp_path / "here")  # byte for byte
    # the process draws one run after another
    again = drawer.submit(data, folder(tmp_path / "again"))
    again.wait()
    assert again.drawn_by == pending.drawn_by
    assert files(tmp_path / "again") == files(tmp_path / "here")


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its relative path, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def explorer(analysis):  # noqa: F811 (the fixture imported above)
    result, _ = analysis
    n = len(result.projections)
    return RunExplorer(
        name="tiny run",
        model="tiny_bert",
        target=result.target,
        explained=tuple(result.svd.explained_variance_ratio.tolist()),
        projections=result.projections,
        texts=tuple(f"tok,{i}" if i % 7 == 0 else f"t{i}" for i in range(n)),  # some quoted
        members={result.target: tuple(result.target_ids)},
        special_ids=(0, 1),
        page=True,
    )


def test_the_figure_process_writes_the_explorer_writing_in_place_writes(
    explorer, data, drawer, tmp_path
):
    """The explorer's table and page, written by the process between two drawings (the
    answers in order), are the files writing them here makes, byte for byte."""
    early = drawer.submit(data, folder(tmp_path / "early"))
    pending = drawer.submit(explorer, folder(tmp_path / "process"))
    paths = pending.wait()
    assert early._paths is not None  # answered first
    assert pending.drawn_by == drawer._process.pid != os.getpid()
    here = write_run_explorer(explorer, folder(tmp_path / "here"))
    assert [p.relative_to(tmp_path / "process") for p in paths] == [
        p.relative_to(tmp_path / "here") for p in here
    ]
    assert tree(tmp_path / "process") == tree(tmp_path / "here")
    assert set(tree(tmp_path / "here")) == {
        "explorer/vocabulary_projections.csv",
        f"{PAGE_FOLDER}/explorer.html",
    }
    # the table alone where the run draws no page (its figures deferred)
    table_only = dataclasses.replace(explorer, page=False)
    drawer.submit(table_only, folder(tmp_path / "table")).wait()
    assert set(tree(tmp_path / "table")) == {"explorer/vocabulary_projections.csv"}


def test_a_request_larger_than_the_pipe_is_sent_while_the_job_goes_on(explorer, data, tmp_path):
    """A request that does not fit the pipe's buffer (a large vocabulary's explorer) is
    written by a thread: ``submit`` returns while the drawer has not read it (here: a
    drawer held at a gate until the test opens it), and the answers keep their order."""
    from embsvd.figures import drawer as drawer_module

    long_texts = tuple(f"{text}{'x' * 2000}" for text in explorer.texts)
    large = dataclasses.replace(explorer, texts=long_texts)
    assert len(pickle.dumps(large)) > drawer_module.PIPE_BYTES
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    held = [  # opens the gate (blocks until the test opens its other end), then serves
        sys.executable,
        "-c",
        f"open({str(gate)!r}).read(); from embsvd.figures.drawer import _main; _main()",
    ]
    drawer = FigureDrawer(command=held)
    handed: list = []
    submitted = threading.Event()

    def hand_over() -> None:
        handed.append(drawer.submit(large, folder(tmp_path / "process")))  # returns unread
        handed.append(drawer.submit(data, folder(tmp_path / "last")))  # sent after it
        submitted.set()

    handing = threading.Thread(target=hand_over)
    gate_open = False
    try:
        early = drawer.submit(data, folder(tmp_path / "early"))  # fits: written here
        handing.start()
        returned = submitted.wait(timeout=120)  # (a submit that waited for the drawer
        sending = getattr(drawer, "_sending", None)  # would not return before the gate)
        sending = sending is not None and sending.is_alive()
        with open(gate, "w"):
            gate_open = True  # the drawer reads and draws
        handing.join()
        assert returned and sending  # both returned while the drawer had read nothing
        pending, last = handed
        paths = pending.wait()
        assert early._paths is not None and last._paths is None  # answered in order
        last.wait()
    finally:
        if not gate_open:  # never leave the drawer (and close's wait for it) held
            with open(gate, "w"):
                pass
        if handing.is_alive():
            handing.join()
        drawer.close()
    assert drawer._sending is None
    assert early.drawn_by == pending.drawn_by == last.drawn_by != os.getpid()
    here = write_run_explorer(large, folder(tmp_path / "here"))
    assert [p.relative_to(tmp_path / "process") for p in paths] == [
        p.relative_to(tmp_path / "here") for p in here
    ]
    assert tree(tmp_path / "process") == tree(tmp_path / "here")
    assert files(tmp_path / "early") == files(tmp_path / "last")


def test_texts_the_process_computes_give_the_same_explorer(explorer, drawer, tmp_path):
    """A large vocabulary's texts are handed over as its tokens and decoding
    (``DisplayTexts``) and computed in the process: the same files, nothing computed
    here."""
    lazy = DisplayTexts(explorer.texts, TokenDecoding())  # no steps: the texts as given
    pending = drawer.submit(dataclasses.replace(explorer, texts=lazy), folder(tmp_path / "p"))
    pending.wait()
    assert pending.drawn_by == drawer._process.pid and "texts" not in lazy.__dict__
    write_run_explorer(explorer, folder(tmp_path / "here"))
    assert tree(tmp_path / "p") == tree(tmp_path / "here")


def test_an_explorer_the_process_cannot_write_is_written_here_and_fails_as_it_would(
    explorer, drawer, tmp_path, capsys
):
    (tmp_path / "a_file").write_text("")
    pending = drawer.submit(explorer, tmp_path / "a_file")  # a file, not a folder
    with pytest.raises((NotADirectoryError, FileExistsError)):
        pending.wait()
    err = capsys.readouterr().err
    assert f"the figure process could not draw {tmp_path / 'a_file'}" in err


def test_a_drawing_the_process_cannot_make_is_drawn_here_and_fails_as_it_would(
    data, drawer, tmp_path, capsys
):
    (tmp_path / "a_file").write_text("")
    pending = drawer.submit(data, tmp_path / "a_file")  # a file, not a folder
    with pytest.raises(NotADirectoryError):
        pending.wait()
    err = capsys.readouterr().err
    assert f"the figure process could not draw {tmp_path / 'a_file'}" in err
    assert "NotADirectoryError" in err and "drawing them here" in err
    # the process goes on drawing the next run's figures
    pending = drawer.submit(data, folder(tmp_path / "next"))
    pending.wait()
    assert pending.drawn_by == drawer._process.pid
    assert sorted(p.name for p in (tmp_path / "next").iterdir()) == sorted(SIZES)


def test_a_figure_process_that_dies_leaves_the_figures_drawn_here(data, tmp_path, capsys):
    # a drawer that reads a little of its first request, then exits with status 3
    dying = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(1); sys.exit(3)"]
    drawer = FigureDrawer(command=dying)
    try:
        pending = drawer.submit(data, folder(tmp_path / "figures"))
        paths = pending.wait()
    finally:
        drawer.close()
    assert pending.drawn_by == os.getpid()
    assert sorted(p.name for p in paths) == sorted(SIZES)
    err = capsys.readouterr().err
    assert "the figure process ended (exit status 3); drawing the figures here" in err
    draw_here(data, folder(tmp_path / "here"))
    assert files(tmp_path / "figures") == files(tmp_path / "here")


def test_drawings_in_flight_when_the_process_ends_are_drawn_here(data, tmp_path, capsys):
    """The job learns of the end when it hands the next drawing over (the process has
    exited) or when it reads an answer (it has not yet): either way both are drawn here."""
    dying = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(1); sys.exit(3)"]
    drawer = FigureDrawer(command=dying)
    try:
        first = drawer.submit(data, folder(tmp_path / "first"))
        second = drawer.submit(data, folder(tmp_path / "second"))
        second.wait()
        first.wait()
    finally:
        drawer.close()
    assert first.drawn_by == second.drawn_by == os.getpid()
    assert "the figure process ended (exit status 3)" in capsys.readouterr().err
    assert files(tmp_path / "first") == files(tmp_path / "second")
    assert sorted(files(tmp_path / "first")) == sorted(SIZES)


def test_a_drawer_that_cannot_start_draws_here(data, tmp_path, capsys):
    drawer = FigureDrawer(command=[str(tmp_path / "no-such-program")])
    pending = drawer.submit(data, folder(tmp_path / "figures"))
    pending.wait()
    drawer.close()
    assert pending.drawn_by == os.getpid()
    assert "no figure process" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(SIZES)


def test_a_drawing_left_behind_is_collected_before_the_next_is_handed_over(data, drawer, tmp_path):
    """A job that failed after handing its figures over never waits for them: the next
    job's figures are still the next job's (the answers stay in step)."""
    left = drawer.submit(data, folder(tmp_path / "left"))
    nxt = drawer.submit(data, folder(tmp_path / "next"))
    paths = nxt.wait()
    assert {p.parent for p in paths} == {tmp_path / "next"}
    assert nxt.drawn_by == drawer._process.pid
    assert left.drawn_by == drawer._process.pid  # it was drawn, and its answer read
    assert files(tmp_path / "left") == files(tmp_path / "next")


def test_the_figures_drawn_before_the_checks_are_those_drawn_after_them(
    analysis,  # noqa: F811 (the fixture imported above)
    drawer,
    tmp_path,
):
    """A job hands over the figures that need no check before its checks run, from data
    without them, and the rest after: together, byte for byte the figures of the whole
    analysis drawn at once; the extremes marked under-trained either way."""
    result, checks = analysis
    extreme = next(t for t in result.top_tokens if t.component == 0 and not t.in_group)
    flagged = frozenset({extreme.token_id})
    checks = dataclasses.replace(checks, undertrained=flagged)
    whole = run_figure_data(result, "tiny_bert", checks)
    early = run_figure_data(result, "tiny_bert", None, flagged)
    np.testing.assert_array_equal(early.projection.counts, whole.projection.counts)
    np.testing.assert_array_equal(early.projection.edges, whole.projection.edges)
    assert early.projection.members == whole.projection.members
    assert early.projection.extremes == whole.projection.extremes
    assert any(label.endswith(UNDERTRAINED_MARK) for _, label in early.projection.extremes)
    assert early.group_mean_corr.names == whole.group_mean_corr.names
    np.testing.assert_array_equal(early.row_cosine.values, whole.row_cosine.values)
    split = folder(tmp_path / "split")
    before = drawer.submit(early, split, FIGURES_WITHOUT_CHECKS)
    after = drawer.submit(whole, split, FIGURES_WITH_CHECKS)
    after.wait()  # reads both answers, in order
    assert before.drawn_by == after.drawn_by == drawer._process.pid
    assert not drawer._in_flight
    assert sorted(p.name for p in before.wait() + after.wait()) == sorted(SIZES)
    draw_here(whole, folder(tmp_path / "whole"))
    assert files(split) == files(tmp_path / "whole")


def test_settling_a_drawing_lets_the_process_finish_it_before_its_folder_goes(
    data, drawer, tmp_path
):
    """A job that fails after handing its figures over settles them before its scratch
    folder is removed: the drawer is not left writing into a folder being deleted."""
    pending = drawer.submit(data, folder(tmp_path / "settled"))
    pending.settle()
    assert not drawer._in_flight
    assert pending.drawn_by == drawer._process.pid
    assert sorted(p.name for p in (tmp_path / "settled").iterdir()) == sorted(SIZES)
    pending.settle()  # once is enough; a drawing drawn here has nothing to settle
    here = drawer.submit(data, folder(tmp_path / "waited"))
    here.wait()
    here.settle()
    assert sorted(p.name for p in (tmp_path / "waited").iterdir()) == sorted(SIZES)


def test_a_sweep_draws_its_runs_figures_in_the_figure_process(tiny_bert, tmp_path, monkeypatch):
    """Two jobs on the basic launcher: the figure process draws both runs' figures and
    writes their explorers (asked from 0 tokens up: the tiny vocabulary is below the
    default), its own line in the phases file says so, and each run logs all of them."""
    phases = tmp_path / "phases.jsonl"
    monkeypatch.setenv("EMBSVD_PHASES", str(phases))
    done = run_sweep(
        tmp_path,
        *tiny_model(tiny_bert),
        "groups=[digits,eu_countries]",
        "target=digits",
        "analysis.center=true,false",
        "analysis.n_null=40",
        "analysis.explorer_process_min_tokens=0",
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in phases.read_text().splitlines()]
    drawers = [line for line in lines if line["kind"] == "drawer"]
    jobs = [line for line in lines if line["kind"] == "job"]
    assert len(jobs) == 2 and len(drawers) == 1
    # three a run: the figures without the checks and the explorer, while they run, then
    # the rest of the figures
    assert drawers[0]["drawings"] == 6 and drawers[0]["pid"] not in {j["pid"] for j in jobs}
    store, _, children = parents_and_children(tmp_path)
    client = MlflowClient(store.uri)
    assert len(children) == 2
    for child in children:
        names = {a.path for a in client.list_artifacts(child.run_id, "figures")}
        assert names == {f"figures/{name}" for name in SIZES}, child.run_id
        logged = {a.path for a in client.list_artifacts(child.run_id)}
        assert {"explorer", "explorer.html"} <= logged, child.run_id
        table = {a.path for a in client.list_artifacts(child.run_id, "explorer")}
        assert table == {"explorer/vocabulary_projections.csv"}, child.run_id


def test_a_single_run_draws_its_figures_in_the_figure_process(tiny_bert, tmp_path, monkeypatch):
    """A single run's figures drawn by the process; its explorer, of a vocabulary below
    ``analysis.explorer_process_min_tokens``, written in the job's (and logged alike)."""
    phases = tmp_path / "phases.jsonl"
    monkeypatch.setenv("EMBSVD_PHASES", str(phases))
    command = [part for part in sweep_command(tmp_path) if part != "-m"]
    done = subprocess.run(
        [*command, *tiny_model(tiny_bert), "groups=[digits,eu_countries]", "target=digits"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in phases.read_text().splitlines()]
    (job,) = [line for line in lines if line["kind"] == "job"]
    (drawer,) = [line for line in lines if line["kind"] == "drawer"]
    assert drawer["drawings"] == 2 and drawer["pid"] != job["pid"]
    store, _, _ = parents_and_children(tmp_path)
    (run,) = store.find_runs()
    client = MlflowClient(store.uri)
    names = {a.path for a in client.list_artifacts(run.run_id, "figures")}
    assert names == {f"figures/{name}" for name in SIZES}
    assert {"explorer", "explorer.html"} <= {a.path for a in client.list_artifacts(run.run_id)}
