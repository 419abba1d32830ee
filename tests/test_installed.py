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

import pytest

from tests.conftest import PROJECT_ROOT, write_tiny_bert

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
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    [wheel] = wheels.glob("embsvd-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", purelib]
        + [str(wheel)],
        check=True,
        capture_output=True,
    )
    return python


def bare_environment(home: Path) -> dict[str, str]:
    """No PYTHONPATH, no store or cache settings of the calling shell: only the venv's
    own paths decide what ``import embsvd`` finds."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home)}


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
    assert list((project / "mlruns" / "hydra" / "runs").glob("*/*/.hydra/config.yaml"))
    assert not list(elsewhere.iterdir())  # nothing written where the command started
