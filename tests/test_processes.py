"""The package's helper processes (``embsvd.io.processes``): started with the package
importable, and ended without hanging on one that does not end."""

from __future__ import annotations

import json
import os
import signal
import sys

import embsvd
from embsvd.io import processes
from embsvd.io.processes import exit_status, start_process


def test_a_helper_process_imports_this_checkout_of_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: the package comes from PYTHONPATH
    monkeypatch.delenv("PYTHONPATH", raising=False)
    command = [sys.executable, "-c", "import embsvd, os; print(embsvd.__file__, os.environ['X'])"]
    process = start_process(command, {"X": "given"}, text=True)
    out, _ = process.communicate()
    assert process.returncode == 0
    assert out.split() == [embsvd.__file__, "given"]


def test_a_helper_that_does_not_end_is_killed(monkeypatch):
    monkeypatch.setattr(processes, "ENDING_TIMEOUT_S", 0.2)
    stuck = start_process([sys.executable, "-c", "import time; time.sleep(600)"])
    stuck.stdin.close()  # what ends a helper that reads its requests: this one sleeps
    assert exit_status(stuck) == -signal.SIGKILL
    done = start_process([sys.executable, "-c", "raise SystemExit(4)"])
    assert exit_status(done) == 4


def test_a_helper_records_its_busy_time_where_the_phases_file_is_named(tmp_path, monkeypatch):
    phases = tmp_path / "phases.jsonl"
    monkeypatch.delenv(processes.PHASES_ENV, raising=False)
    processes.record_busy_time("drawer", 1.5, drawings=3)  # no file named: nothing
    monkeypatch.setenv(processes.PHASES_ENV, str(phases))
    processes.record_busy_time("writer", 0.0)  # never busy: no line
    processes.record_busy_time("drawer", 1.5, drawings=3)
    (line,) = [json.loads(text) for text in phases.read_text().splitlines()]
    assert line == {
        "kind": "drawer",
        "pid": os.getpid(),
        "drawings": 3,
        "phases": {"drawer_process": 1.5},
    }
