"""The README and docs/: links that resolve, a README of the agreed size whose code fits in
100 columns, a notebook example that runs, every docs page reachable from the README, and
no tracker numbers in the tree (code and docs say what the code does, not why a ticket
asked for it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
README = PROJECT_ROOT / "README.md"
DOCS = PROJECT_ROOT / "docs"

README_BYTES = (10_000, 12_500)
CODE_COLUMNS = 100

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def doc_pages() -> list[Path]:
    """The README and every page under docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def split_code(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, lines inside fenced code blocks) of a markdown text."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return prose, code


def links(page: Path) -> list[str]:
    """The targets of the markdown links in the prose of ``page`` (code is not prose)."""
    prose, _ = split_code(page.read_text(encoding="utf-8"))
    return [m.group(1) for line in prose for m in LINK.finditer(INLINE_CODE.sub("", line))]


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text, not its target
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor a link may point at in ``page``: heading slugs (GitHub numbers
    repeats: ``x``, ``x-1``, ...) and explicit ``<a id=...>`` targets."""
    prose, _ = split_code(page.read_text(encoding="utf-8"))
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose:
        found.update(HTML_ID.findall(line))
        heading = HEADING.match(line)
        if heading:
            slug = github_slug(heading.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in doc_pages()
        for target in links(page)
        if not EXTERNAL.match(target)
    ]


def resolve(page: Path, target: str) -> tuple[Path, str]:
    """The file and the anchor (may be empty) a relative link of ``page`` points at."""
    path, _, anchor = target.partition("#")
    return (page.parent / path).resolve() if path else page.resolve(), anchor


@pytest.mark.parametrize(
    ("page", "target"),
    relative_links(),
    ids=lambda value: str(value.relative_to(PROJECT_ROOT)) if isinstance(value, Path) else value,
)
def test_relative_link_resolves_inside_the_repository(page: Path, target: str) -> None:
    path, anchor = resolve(page, target)
    where = f"{page.relative_to(PROJECT_ROOT)}: link {target!r}"
    assert path.is_relative_to(PROJECT_ROOT), f"{where} leaves the repository ({path})"
    assert path.exists(), f"{where}: {path.relative_to(PROJECT_ROOT)} does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in anchors(path), (
            f"{where}: no heading or <a id> {anchor!r} in {path.relative_to(PROJECT_ROOT)}; "
            f"it has {sorted(anchors(path))}"
        )


def test_docs_name_nothing_outside_the_repository() -> None:
    for page in doc_pages():
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text, f"{page.relative_to(PROJECT_ROOT)} points at ../shared"


def test_github_slug_matches_github() -> None:
    assert github_slug("On a SLURM cluster") == "on-a-slurm-cluster"
    assert (
        github_slug("Hub revisions: training checkpoints") == "hub-revisions-training-checkpoints"
    )
    assert github_slug("The `W_U` matrix, again") == "the-w_u-matrix-again"


def test_readme_size() -> None:
    size = len(README.read_bytes())
    low, high = README_BYTES
    assert low <= size <= high, (
        f"README.md is {size} bytes; keep it within {low}..{high} and move reference "
        "material to docs/"
    )


def test_readme_code_fits_in_100_columns() -> None:
    _, code = split_code(README.read_text(encoding="utf-8"))
    wide = [line for line in code if len(line) > CODE_COLUMNS]
    assert not wide, f"README code lines wider than {CODE_COLUMNS} columns: {wide}"


def readme_docs_links() -> set[Path]:
    return {
        resolve(README, target)[0]
        for target in links(README)
        if not EXTERNAL.match(target) and target.startswith("docs/")
    }


def test_every_docs_page_the_readme_links_exists() -> None:
    missing = sorted(
        str(p.relative_to(PROJECT_ROOT)) for p in readme_docs_links() if not p.exists()
    )
    assert not missing, f"README.md links to docs pages that do not exist: {missing}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    pages = {page.resolve() for page in DOCS.glob("*.md")}
    orphans = sorted(p.name for p in pages - readme_docs_links())
    assert not orphans, f"docs pages the README does not link to: {orphans}"


# The word for a tracker's ticket followed by its number (with or without '#') says nothing
# to a reader of the code. Built from pieces so that this file does not match itself.
TRACKER_NUMBER = re.compile(r"\b" + "iss" + r"ues?" + r"\s*#?\s*\d+", re.IGNORECASE)
CHECKED_PATHS = ("embsvd/", "tests/", "docs/", "conf/", "experiments/", "benchmarks/")
CHECKED_FILES = ("README.md", "Makefile")


def repository_files() -> list[Path]:
    """Tracked files, and new ones git does not ignore, under the checked paths."""
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [
        PROJECT_ROOT / name
        for name in listed
        if (name.startswith(CHECKED_PATHS) or name in CHECKED_FILES)
        and (PROJECT_ROOT / name).is_file()
    ]


def test_no_tracker_numbers_in_the_tree() -> None:
    hits = []
    for path in repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # a binary file
        for number, line in enumerate(text.splitlines(), start=1):
            if TRACKER_NUMBER.search(line):
                hits.append(f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}")
    assert not hits, "say what the code does, not which ticket asked for it:\n" + "\n".join(hits)


def test_tracker_number_pattern() -> None:
    word = "Iss" + "ue"
    assert TRACKER_NUMBER.search(f"fixes {word} 13")
    assert TRACKER_NUMBER.search(f"see {word.lower()} #12")
    assert not TRACKER_NUMBER.search("job #3 FAILED")
    assert not TRACKER_NUMBER.search("tissue 3")


def readme_python() -> str:
    """The README's ```python blocks, joined in order."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    return "\n".join(blocks)


@pytest.mark.slow
def test_readme_notebook_example_runs(tmp_path: Path) -> None:
    code = readme_python()
    assert code.strip(), "README.md has no ```python block"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "EMBSVD_CACHE_DIR": os.environ.get("EMBSVD_CACHE_DIR", str(tmp_path / "cache")),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",  # never the project's
    }
    # run from the checkout, so that `import embsvd` is this tree whatever is installed
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"README's python example failed:\n{done.stderr[-4000:]}"


def test_the_module_map_lists_every_module_of_the_package() -> None:
    """docs/README.md's table names each module once; a module added, moved or removed
    without the map changing fails here."""
    package = PROJECT_ROOT / "embsvd"
    modules = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }
    table = (DOCS / "README.md").read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    listed = set()
    for row in rows:
        first_cell = row.split("|")[1]
        names = re.findall(r"`([\w/]+\.py)`", first_cell)
        folder = names[0].rsplit("/", 1)[0] + "/" if "/" in names[0] else ""
        listed |= {name if "/" in name else folder + name for name in names}
    assert listed == modules
