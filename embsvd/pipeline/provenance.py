"""Where a run's code came from: the git commit (and uncommitted diff) and library versions."""

from __future__ import annotations

import functools
import platform
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# the libraries whose versions can change a run's numbers or its reading of a checkpoint
LIBRARIES = ("numpy", "safetensors", "tokenizers", "transformers", "hydra-core", "mlflow")


@dataclass(frozen=True)
class GitState:
    commit: str
    diff: str  # uncommitted changes to tracked files ('' when clean)

    @property
    def dirty(self) -> bool:
        return bool(self.diff)


def git_state(folder: Path) -> GitState | None:
    """The checkout's HEAD and uncommitted diff; ``None`` outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True
        ).stdout

    try:
        return GitState(commit=git("rev-parse", "HEAD").strip(), diff=git("diff", "HEAD"))
    except (OSError, subprocess.CalledProcessError):
        return None  # not a git checkout (an installed copy) or git missing


@functools.cache
def package_version() -> str:
    """embsvd's installed version (``0+unknown`` from a source tree never installed), read
    once per process (its metadata: 0.3 ms a run)."""
    try:
        return version("embsvd")
    except PackageNotFoundError:
        return "0+unknown"


def library_versions() -> dict[str, str]:
    """``{"python": "3.11.7", "numpy": "2.4.6", ...}``; absent libraries are left out."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
