"""The folder of a figure set: where it lies, whether it may be written into, and how a
freshly drawn set joins it. No plotting.

A figure set is drawn whole in a scratch folder beside its own, then merged in: each
file it wrote takes the place of the file of that name, files of the formats it did not
draw stay (drawing PDFs alone keeps the PNGs drawn before), and files an earlier drawing
wrote in a format this one writes, but which this one did not write again (the figure of
a run no longer selected), are removed. Only a folder that is a figure set, marked by
its ``sweep.json``, is ever written into, and only files its manifest names are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from embsvd.tracking.contract import file_safe, is_plain_name

MANIFEST = "sweep.json"
# sweep.json's key that marks a folder this module wrote: the only kind it writes into
MARKER = "embsvd_figure_set"
MARKER_VERSION = 2  # 2: sweep.json lists the files of the drawing ("files")
# the keys of sweep.json as written before it carried the marker: those folders are ours too
UNMARKED_MANIFEST = frozenset({"sweep", "selection", "parent_run_id", "runs", "left_out", "style"})
MANIFEST_MAX_BYTES = 50_000_000  # a manifest of 5000 runs is ~0.5 MB; larger is not ours


def figure_folder(output_dir: Path, sweep_name: str) -> Path:
    """The folder of a sweep's figure set: ``<output_dir>/<sweep_name>``, resolved.

    Raises:
        ValueError: ``sweep_name`` is not one plain name (``contract.file_safe`` makes
            one), or the folder is a link or does not lie directly in ``output_dir``.
    """
    root = Path(output_dir).expanduser().resolve()
    if not is_plain_name(sweep_name):
        raise ValueError(
            f"the sweep name {sweep_name!r} is not one plain folder name; "
            f"e.g. {file_safe(sweep_name)!r}"
        )
    folder = root / sweep_name
    if folder.is_symlink() or folder.resolve().parent != root:
        raise ValueError(
            f"{folder} is a link or leads out of output_dir {root}; figures are "
            "written only into a folder of output_dir itself: remove the link or choose "
            "another output_dir"
        )
    return folder


def check_replaceable(folder: Path) -> None:
    """Refuse to write a figure set into ``folder`` unless it is absent or a figure set
    (its ``sweep.json`` has ``MARKER``, or the keys it had before the marker).

    Raises:
        ValueError: naming the folder and what to do.
    """
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_dir() and not folder.is_symlink() and _manifest(folder) is not None:
        return
    raise ValueError(
        f"{folder} exists and is not a figure set this command wrote (no "
        f"{MANIFEST} with {MARKER!r}); it is left as it is: move it away, or choose "
        "another output_dir (or sweep.name for a filter)"
    )


def _manifest(folder: Path) -> dict | None:
    """The folder's ``sweep.json`` where it marks a figure set, else ``None``."""
    manifest = folder / MANIFEST
    try:
        if not manifest.is_file() or manifest.stat().st_size > MANIFEST_MAX_BYTES:
            return None
        found = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(found, dict) and (MARKER in found or set(found) == UNMARKED_MANIFEST):
        return found
    return None


def draw_into(folder: Path, draw: Callable[[Path], None]) -> list[Path]:
    """Call ``draw`` on a scratch folder made beside ``folder``, then merge what it wrote
    into ``folder`` (made if absent; else it must be a figure set, ``check_replaceable``)
    and return the files it wrote there, sorted. A ``draw`` that fails leaves ``folder``
    as it was and no scratch behind."""
    check_replaceable(folder)  # before drawing: a refusal costs nothing
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent)
    )
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would keep the figures from whoever shares them
        draw(staging)
        drawn = sorted(p.name for p in staging.iterdir())
        _merge(folder, staging, drawn)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [folder / name for name in drawn]


def _merge(folder: Path, staging: Path, drawn: list[str]) -> None:
    """Move the files of ``staging`` into ``folder``, ``sweep.json`` last (a merge cut
    short leaves the earlier manifest, which names what it wrote), and remove the stale
    files (``set_files``); the new manifest lists the earlier files it keeps (``kept``)."""
    check_replaceable(folder)  # again: something may have appeared while drawing
    if not folder.exists():
        staging.rename(folder)  # fails, removing nothing, if a folder appeared since
        return
    kept, stale = set_files(_manifest(folder) or {}, drawn)
    kept = [name for name in kept if (folder / name).is_file()]
    manifest = json.loads((staging / MANIFEST).read_text(encoding="utf-8"))
    (staging / MANIFEST).write_text(
        json.dumps({**manifest, "kept": kept}, indent=2) + "\n", encoding="utf-8"
    )
    for name in sorted(drawn, key=lambda n: n == MANIFEST):
        os.replace(staging / name, folder / name)
    staging.rmdir()
    for name in stale:
        path = folder / name
        if path.is_file() or path.is_symlink():
            path.unlink()


def set_files(earlier: dict, drawn: list[str]) -> tuple[list[str], list[str]]:
    """The files of an earlier drawing (its manifest's ``files`` and ``kept``) that a new
    drawing of the files ``drawn`` keeps, being of formats it did not draw, and those it
    removes as stale: of a format it drew, but not drawn again. Plain names only, and
    never ``sweep.json``: a manifest in a shared folder is anyone's text. A set drawn
    before manifests listed their files lists none: nothing of it is removed."""
    listed = [
        name
        for key in ("files", "kept")
        if isinstance(earlier.get(key), list)
        for name in earlier[key]
        if is_plain_name(name) and name != MANIFEST and name not in drawn
    ]
    formats = {Path(name).suffix for name in drawn}
    kept = [name for name in dict.fromkeys(listed) if Path(name).suffix not in formats]
    stale = [name for name in dict.fromkeys(listed) if Path(name).suffix in formats]
    return kept, stale
