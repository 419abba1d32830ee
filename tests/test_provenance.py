"""Provenance from a real git checkout made in tmp_path."""

from __future__ import annotations

import platform
import subprocess

import numpy as np

from embsvd.pipeline.provenance import git_state, library_versions


def git(folder, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_git_state_names_the_commit_and_the_uncommitted_diff(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "analysis.py").write_text("center = True\n")
    git(tmp_path, "add", "analysis.py")
    git(tmp_path, "commit", "-qm", "first")
    clean = git_state(tmp_path)
    assert clean.commit == git(tmp_path, "rev-parse", "HEAD")
    assert not clean.dirty and clean.diff == ""
    (tmp_path / "analysis.py").write_text("center = False\n")
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    dirty = git_state(tmp_path)
    assert dirty.dirty and dirty.commit == clean.commit
    assert "-center = True\n+center = False" in dirty.diff
    assert "untracked" not in dirty.diff


def test_no_git_checkout_means_no_git_state(tmp_path):
    assert git_state(tmp_path) is None


def test_library_versions():
    versions = library_versions()
    assert versions["python"] == platform.python_version()
    assert versions["numpy"] == np.__version__
    assert {"mlflow", "transformers", "hydra-core"} <= set(versions)
