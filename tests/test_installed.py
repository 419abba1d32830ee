"""The library stands alone: installed from a wheel into a fresh environment, outside the
checkout, it runs a project's ``experiments/run.py`` from any working directory, and
writes into the project whose ``conf/`` it ran (not beside the package, not into the
working directory)."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT, bare_environment, write_tiny_bert
from tests.test_cli import CENTER, embsvd, table_rows, tiny_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed_python(tmp_path_factory):
    """A fresh venv holding embsvd as a wheel built from a copy of the sources; its
    dependencies come from the test environment's site-packages through a ``.pth`` line
    (a path added that way is not a site folder, so the checkout's editable-install hook
    there never runs: ``import embsvd`` finds the wheel)."""
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    shutil.copytree(PROJECT_ROOT / "embsvd", source / "embsvd", ignore=_pycache)
    # embsvd's Hydra sweeper (conf/config.yaml's default), where Hydra looks for plugins
    shutil.copytree(PROJECT_ROOT / "hydra_plugins", source / "hydra_plugins", ignore=_pycache)
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
    )
    env = root / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the dependencies (pip too) from this environment; embsvd itself from the wheel,
    # installed by the venv's own pip so that its console script lands in the venv's bin/
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    [wheel] = wheels.glob("embsvd-*.whl")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        env=bare_environment(root),
    )
    return python


def _pycache(folder, names):
    return [n for n in names if n == "__pycache__"]


def test_the_wheel_holds_the_library_and_not_the_checkout(installed_python):
    where = subprocess.run(
        [installed_python, "-c", "import embsvd, embsvd.pipeline; print(embsvd.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
        env=bare_environment(installed_python.parents[1]),
    ).stdout.strip()
    assert str(installed_python.parents[1]) in where
    assert str(PROJECT_ROOT) not in where


def test_an_installed_embsvd_runs_a_project_from_anywhere(installed_python, tmp_path):
    project = tmp_path / "project"  # a project: its configs and entry points, no library
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf")
    shutil.copytree(PROJECT_ROOT / "experiments", project / "experiments", ignore=_pycache)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = [installed_python, str(project / "experiments" / "run.py")]

    shown = subprocess.run(
        [*run, "--cfg", "job"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
        env=bare_environment(tmp_path),
    )
    assert "target: digits" in shown.stdout

    folder = tmp_path / "tiny-bert"
    write_tiny_bert(folder)
    done = subprocess.run(
        [*run, "model=local", f"model.path={folder}", "model.name=tiny_bert", "analysis=fast"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env={**bare_environment(tmp_path), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (project / "mlruns" / "mlflow.db").is_file()  # the project's own store
    assert list((project / "mlruns" / "hydra" / "runs").glob("*/*/run.log"))  # Hydra's job folder
    assert not list(elsewhere.iterdir())  # nothing written where the command started


# --- the console script of the installed wheel ---------------------------------------------


@pytest.mark.slow
def test_the_console_script_of_an_installed_wheel_works_in_a_project_elsewhere(
    installed_python, tmp_path
):
    """pip installs the wheel's `embsvd` script into a fresh environment; with only a
    project's conf/ (no checkout), it sweeps, lists and exports from a subfolder."""
    python = installed_python
    env = python.parent.parent
    script = env / "bin" / "embsvd"
    assert script.read_text().startswith(f"#!{python}")

    project = tmp_path / "project"
    shutil.copytree(PROJECT_ROOT / "conf", project / "conf")
    work = project / "analysis"
    work.mkdir()
    write_tiny_bert(tmp_path / "tiny-bert")
    bare = {**bare_environment(tmp_path), "HF_HUB_OFFLINE": "1"}
    swept = embsvd("run", *tiny_sweep(tmp_path / "tiny-bert"), cwd=work, env=bare, script=script)
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-3000:]
    assert (project / "mlruns" / "mlflow.db").is_file()  # the project's own store

    listed = embsvd("sweeps", cwd=work, env=bare, script=script)
    assert listed.returncode == 0, listed.stderr
    [row] = table_rows(listed.stdout)
    assert row[0] == "*" and row[3] == "FINISHED" and row[6] == str(len(CENTER))
    exported = embsvd("export", row[1], "--format", "parquet", cwd=work, env=bare, script=script)
    assert exported.returncode == 0, exported.stderr
    frame = pd.read_parquet(work / f"{row[1]}.parquet")
    assert len(frame) == len(CENTER) and set(frame["status"]) == {"FINISHED"}
    where = subprocess.run(
        [python, "-c", "import embsvd; print(embsvd.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=work,  # not the checkout: `-c` puts the working directory first on the path
        env=bare,
    ).stdout
    assert where.startswith(str(env)) and str(PROJECT_ROOT) not in where  # the wheel's
