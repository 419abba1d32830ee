"""The vocabulary explorer: one self-contained HTML page from the runs' logged
``explorer/vocabulary_projections.csv`` tables (``tracking.artifacts.EXPLORER_TABLE``).

The page (``explorer.html`` beside this module, with ``explorer.js`` inlined) draws every
token of a run on a canvas, on any two of its axes; finds a token by its text or id,
highlights the groups' words, lists a token's nearest neighbours in the space of the
run's axes, and exports exact coordinates (CSV, of the view or of all tokens) and the
view (SVG, PNG). It needs no server and no network: the data is embedded as JSON (the
coordinates as base64 float32, which hold the table's 6 significant digits exactly), so
it opens from disk and from the MLflow UI's artifact view. Built from the tables alone,
a finished run's page can be built again later, and a sweep's page joins several runs.
"""

from __future__ import annotations

import base64
import csv
import html
import itertools
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from embsvd.tracking.artifacts import (
    EXPLORER_COLUMNS,
    EXPLORER_DIGITS,
    EXPLORER_GROUP_SEPARATOR,
    EXPLORER_PAGE,
    EXPLORER_TABLE,
    explorer_memberships,
    header_of,
    write_explorer_table,
)

# A sweep's page embeds runs until their coordinates reach this many values (~5.3 bytes
# each as base64 float32, plus the texts once per vocabulary): about 20 runs of a
# 30k-token model with 3 axes, or 1-2 runs of a 256k-token one, in a page of ~10-40 MB.
# A run's own page is never capped: every token, none sampled.
SWEEP_MAX_VALUES = 3_000_000
DATA_MARK, SCRIPT_MARK, TITLE_MARK = "__EXPLORER_DATA__", "__EXPLORER_JS__", "__EXPLORER_TITLE__"
FIXED_COLUMNS = tuple(c for c in EXPLORER_COLUMNS if "<" not in c)
AXIS_PREFIX = next(c for c in EXPLORER_COLUMNS if "<" in c).split("<")[0]


@dataclass(frozen=True)
class ExplorerTable:
    """A run's ``vocabulary_projections.csv`` as read.

    Attributes:
        token_ids: ``(n,)`` int64, the tokens' ids (the matrix rows).
        texts: The text people read for each token.
        groups: Group name -> the rows (not ids) of its tokens.
        special: ``(n,)`` bool, special tokens.
        projections: ``(n, k)`` float64, the logged numbers.
        axes: The projection columns' names (``projection_0``, ...).
    """

    token_ids: np.ndarray
    texts: tuple[str, ...]
    groups: dict[str, list[int]]
    special: np.ndarray
    projections: np.ndarray
    axes: tuple[str, ...]


@dataclass(frozen=True)
class ExplorerRun:
    """One run for the page: its table and how the page names it.

    ``explained`` is each axis' share of the target's variance (the run's
    ``explained_variance_ratio``), shown beside the axis names where given.
    """

    name: str
    table: Path
    model: str = ""
    target: str | None = None
    explained: tuple[float, ...] = field(default=())
    # the table as reading ``table`` gives it, where the caller has it (``table_as_read``)
    read: ExplorerTable | None = field(default=None, compare=False, repr=False)


PAGE_FOLDER = "page"  # a run's page, under the folder ``write_run_explorer`` writes into


@dataclass(frozen=True)
class RunExplorer:
    """What a run's explorer table (and page) are written from: the numbers the job
    computed, so that writing them in the figure process (``embsvd.figures.drawer``) or
    in the job's gives the same files.

    Attributes:
        name: The run's name, the page's title.
        model, target, explained: How the page names the run (``ExplorerRun``).
        projections: ``(d_vocab, n_components)``, every token on the run's axes.
        texts: The text people read for every row (``Vocabulary.display_texts``).
        members: Group name -> the token ids it kept.
        special_ids: Special tokens.
        page: Write the page too (the run draws its figures), not the table alone.
    """

    name: str
    model: str
    target: str
    explained: tuple[float, ...]
    projections: np.ndarray
    texts: Sequence[str]
    members: dict[str, tuple[int, ...]]
    special_ids: tuple[int, ...]
    page: bool


def write_run_explorer(explorer: RunExplorer, folder: Path) -> list[Path]:
    """Write a run's table (``folder / EXPLORER_TABLE``) and, where asked, its page
    (``folder / PAGE_FOLDER / EXPLORER_PAGE``), built from what the table holds; return
    their paths."""
    table = folder / EXPLORER_TABLE
    table.parent.mkdir(parents=True, exist_ok=True)
    members, special_ids = explorer.members, explorer.special_ids
    written = write_explorer_table(
        table, explorer.projections, explorer.texts, members, special_ids
    )
    if not explorer.page:
        return [table]
    page = folder / PAGE_FOLDER / EXPLORER_PAGE
    run = ExplorerRun(
        name=explorer.name,
        table=table,
        model=explorer.model,
        target=explorer.target,
        explained=explorer.explained,
        read=table_as_read(written, explorer.texts, members, special_ids),
    )
    write_explorer_page([run], page, title=f"{explorer.name}: vocabulary explorer")
    return [table, page]


def table_as_read(
    written: np.ndarray,
    texts: Sequence[str],
    groups: dict[str, Sequence[int]],
    special_ids: Sequence[int] = (),
) -> ExplorerTable:
    """The table ``write_explorer_table`` wrote, as ``read_explorer_table`` reads it, from
    what the writer was given and returned (``written``: the projections as written):
    a run's own page without parsing its table back (a third of a second at 128k tokens)."""
    n = len(written)
    member_of = explorer_memberships(groups)  # as the writer wrote each row's groups
    rows: dict[str, list[int]] = {}
    for i in sorted(t for t in member_of if 0 <= t < n):  # a virtual id has no row
        for name in member_of[i]:
            rows.setdefault(name, []).append(i)
    special = np.zeros(n, dtype=bool)
    special[[i for i in special_ids if 0 <= i < n]] = True
    return ExplorerTable(
        token_ids=np.arange(n, dtype=np.int64),
        texts=tuple(texts),
        groups=rows,
        special=special,
        projections=written,
        axes=tuple(header_of(EXPLORER_COLUMNS, range(written.shape[1]))[len(FIXED_COLUMNS) :]),
    )


def read_explorer_table(file: Path) -> ExplorerTable:
    """Read a logged explorer table.

    Raises:
        ValueError: the file's header is not the explorer table's (``token_id``, ``text``,
            ``group``, ``special``, then ``projection_0`` ... with at least one axis), or
            a row does not fit it.
    """
    with open(file, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        columns = tuple(next(reader, ()))
        k = len(columns) - len(FIXED_COLUMNS)
        if k < 1 or list(columns) != header_of(EXPLORER_COLUMNS, range(k)):
            raise ValueError(
                f"{file}: not an explorer table; its header is {list(columns)[:6]}, expected "
                f"{header_of(EXPLORER_COLUMNS, range(max(k, 1)))} (written by "
                "embsvd.tracking.artifacts.write_explorer_table)"
            )
        rows = list(reader)
    width = len(columns)
    bad = next((i for i, row in enumerate(rows) if len(row) != width), None)
    if bad is not None:
        raise ValueError(f"{file}: row {bad + 2} has {len(rows[bad])} cells, not {width}")
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row[2]:
            for name in row[2].split(EXPLORER_GROUP_SEPARATOR):
                groups.setdefault(name, []).append(i)
    fixed = len(FIXED_COLUMNS)
    try:
        values = itertools.chain.from_iterable(row[fixed:] for row in rows)
        projections = np.fromiter(map(float, values), np.float64, len(rows) * k).reshape(-1, k)
        token_ids = np.fromiter((int(row[0]) for row in rows), np.int64, len(rows))
    except ValueError as error:
        raise ValueError(f"{file}: a token id or projection is not a number ({error})") from None
    return ExplorerTable(
        token_ids=token_ids,
        texts=tuple(row[1] for row in rows),
        groups=groups,
        special=np.array([row[3] == "true" for row in rows], dtype=bool),
        projections=projections,
        axes=columns[len(FIXED_COLUMNS) :],
    )


def write_explorer_page(
    runs: Sequence[ExplorerRun],
    file: Path,
    title: str,
    *,
    max_values: int | None = None,
    left_out: Sequence[str] = (),
) -> list[str]:
    """Write the explorer page of ``runs`` to ``file`` (atomically) and return the names
    of the runs it embeds.

    Runs are embedded in order while their coordinates stay within ``max_values``
    (``None``: all); the first always is. Those left out, and ``left_out`` (runs the
    caller could not read, with the reason), are listed on the page.
    """
    if not runs:
        raise ValueError("write_explorer_page: no runs to show")
    tables, kept, skipped = [], [], list(left_out)
    total = 0
    for run in runs:
        table = run.read if run.read is not None else read_explorer_table(run.table)
        size = table.projections.size
        if kept and max_values is not None and total + size > max_values:
            skipped.append(f"{run.name} (the page holds at most {max_values:,} coordinates)")
            continue
        total += size
        tables.append(table)
        kept.append(run)
    data = page_data(kept, tables, title, skipped)
    _write_atomically(file, page_html(data))
    return [run.name for run in kept]


def page_data(
    runs: Sequence[ExplorerRun],
    tables: Sequence[ExplorerTable],
    title: str,
    left_out: Sequence[str] = (),
) -> dict:
    """What the page embeds: each distinct vocabulary once (texts, and ids where they
    are not ``0..n-1``), each run's coordinates axis-major as base64 float32, its groups
    (rows) and special tokens (rows)."""
    vocabularies: list[dict] = []
    seen: dict[tuple, int] = {}
    embedded = []
    for run, table in zip(runs, tables, strict=True):
        contiguous = bool(np.array_equal(table.token_ids, np.arange(len(table.token_ids))))
        key = (table.texts, None if contiguous else table.token_ids.tobytes())
        if key not in seen:
            seen[key] = len(vocabularies)
            vocabularies.append(
                {
                    "texts": list(table.texts),
                    "ids": None if contiguous else _b64(table.token_ids, "<i4"),
                }
            )
        embedded.append(
            {
                "name": run.name,
                "model": run.model,
                "target": run.target,
                "explained": [float(s) for s in run.explained[: len(table.axes)]],
                "vocabulary": seen[key],
                "axes": list(table.axes),
                "coords": _b64(table.projections.T, "<f4"),
                "groups": table.groups,
                "special": np.flatnonzero(table.special).tolist(),
            }
        )
    about = [
        "Built by embsvd from each run's logged table explorer/vocabulary_projections.csv "
        f"(one {AXIS_PREFIX}<k> column per axis): every token is drawn, none sampled.",
        f"Coordinates are the logged projections, to {EXPLORER_DIGITS} significant digits; "
        "the exports give them as logged.",
        "Axes count from 1 (the tables' projection_0 is axis 1).",
    ]
    if left_out:
        about.append(f"Left out of this page ({len(left_out)}): " + "; ".join(left_out))
    return {
        "title": title,
        "precision": EXPLORER_DIGITS,
        "separator": EXPLORER_GROUP_SEPARATOR,
        "vocabularies": vocabularies,
        "runs": embedded,
        "left_out": list(left_out),
        "about": about,
    }


def page_html(data: dict) -> str:
    """The page with ``data`` and the script inlined. The JSON is made safe inside a
    ``<script>`` element: ``<``, ``>`` and ``&`` are written as ``\\u003c`` ... (a token
    ``</script>`` cannot end the element), which ``JSON.parse`` reads back unchanged."""
    folder = resources.files("embsvd.figures")
    template = (folder / "explorer.html").read_text(encoding="utf-8")
    script = (folder / "explorer.js").read_text(encoding="utf-8")
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    for ch, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, escaped)
    head, rest = template.split(DATA_MARK)
    before, after = rest.split(SCRIPT_MARK)
    head = head.replace(TITLE_MARK, html.escape(data["title"]))
    return head + text + before + script + after


def embedded_data(page: str) -> dict:
    """The data a page embeds (``page_data``), read back from its HTML."""
    start = page.index('<script id="explorer-data" type="application/json">')
    start = page.index(">", start) + 1
    return json.loads(page[start : page.index("</script>", start)])


def decoded_coordinates(run: dict, n_tokens: int) -> np.ndarray:
    """A page run's coordinates, ``(n_tokens, k)`` float32, decoded from base64."""
    flat = np.frombuffer(base64.b64decode(run["coords"]), dtype="<f4")
    return flat.reshape(len(run["axes"]), n_tokens).T


def _b64(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def _write_atomically(file: Path, text: str) -> None:
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, file)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
