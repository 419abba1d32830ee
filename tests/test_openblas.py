"""The entry points let OpenBLAS's idle threads sleep at once (``embsvd.io.openblas``): the
variable is set before numpy loads, so the library that loads reads it, and a value the
user set is kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from embsvd.io import openblas

PROJECT = Path(__file__).resolve().parents[1]

# run in a subprocess: at exit, print the thread timeout the loaded OpenBLAS read
REPORT = """
import atexit, ctypes, os, sys

def report():
    from threadpoolctl import threadpool_info
    (blas,) = [i for i in threadpool_info() if i["internal_api"] == "openblas"]
    timeout = ctypes.CDLL(blas["filepath"]).openblas_thread_timeout()
    print(f"OPENBLAS_THREAD_TIMEOUT read: {timeout}", file=sys.stderr, flush=True)

atexit.register(report)
"""


def timeout_read(entry: str, env: dict[str, str] | None = None) -> str:
    """The timeout the OpenBLAS of a process running ``entry`` read when it loaded."""
    import os

    environment = {k: v for k, v in os.environ.items() if k != openblas.THREAD_TIMEOUT_ENV}
    done = subprocess.run(
        [sys.executable, "-c", REPORT + entry],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**environment, **(env or {})},
    )
    lines = [line for line in done.stderr.splitlines() if "THREAD_TIMEOUT read" in line]
    assert lines, done.stderr[-2000:]
    return lines[-1].split(": ")[1]


def test_prepare_sets_the_timeout_unless_the_environment_does(monkeypatch):
    monkeypatch.delenv(openblas.THREAD_TIMEOUT_ENV, raising=False)
    openblas.prepare()
    import os

    assert os.environ[openblas.THREAD_TIMEOUT_ENV] == openblas.THREAD_TIMEOUT
    monkeypatch.setenv(openblas.THREAD_TIMEOUT_ENV, "20")
    openblas.prepare()
    assert os.environ[openblas.THREAD_TIMEOUT_ENV] == "20"


def test_the_entry_points_set_it_before_numpy_loads():
    """``experiments/run.py``, ``experiments/figures.py`` and the ``embsvd`` command
    (``--cfg job``: composed, printed, no job run); without them numpy's OpenBLAS keeps
    its default (0: unset); a user's value wins."""
    run_py = (
        "import runpy; sys.argv = ['experiments/run.py', '--cfg', 'job']\n"
        "runpy.run_path('experiments/run.py', run_name='__main__')"
    )
    assert timeout_read(run_py) == openblas.THREAD_TIMEOUT
    figures_py = (
        "import runpy; sys.argv = ['experiments/figures.py', '--cfg', 'job']\n"
        "runpy.run_path('experiments/figures.py', run_name='__main__')"
    )
    assert timeout_read(figures_py) == openblas.THREAD_TIMEOUT
    command = (
        "sys.argv = ['embsvd', 'run', '--cfg', 'job']\n"
        "from embsvd.__main__ import main\n"
        "sys.exit(main())"
    )
    assert timeout_read(command) == openblas.THREAD_TIMEOUT
    assert timeout_read("import numpy") == "0"
    assert timeout_read(run_py, {openblas.THREAD_TIMEOUT_ENV: "12"}) == "12"
