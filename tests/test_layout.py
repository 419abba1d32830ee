"""The package's layout, checked from its imports (read with ``ast``, nothing imported).

The stages, lowest first; a module may import its own stage and the stages below it:

    io       checkpoint -> token matrix, tokenizer, Vocabulary
    groups   words -> single-token groups (a tokenizer is all it needs)
    method   the analysis of method.md on arrays: SVD, projections, geometry, backend
    checks   null, stability, held-out, confounds, global view, order
    tracking the run contract and MLflow (the only mlflow importer)
    figures  per-run and paper figures, tables (the only matplotlib/seaborn importer)
    pipeline Hydra configs, validation, jobs, sweeps (the only Hydra/OmegaConf reader)

``embsvd/__init__.py`` re-exports the public API from the stages; no module imports it.
Heavy libraries are imported at the top of the modules that use them, except at two
kinds of edge: the loaders of optional checkpoint formats and backends (torch,
transformers, ...) inside the functions that need them, and the lazy package
``__init__`` of ``tracking`` and ``figures`` (so ``pipeline`` imports them at its top and
pays for mlflow or matplotlib only when it logs or draws).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "embsvd"
STAGES = ["io", "groups", "method", "checks", "tracking", "figures", "pipeline"]
# third-party libraries a stage may import; the rest of the package must not
OWNERS = {
    "mlflow": {"tracking"},
    "matplotlib": {"figures"},
    "seaborn": {"figures"},
    "hydra": {"pipeline"},
    "omegaconf": {"pipeline"},
    "torch": {"io", "method"},
    "transformers": {"io"},
    "huggingface_hub": {"io"},
    "tokenizers": {"io"},
    "gguf": {"io"},
    "safetensors": {"io"},
    "wordfreq": {"io"},
}
# imported inside the function that needs it: an optional format or backend, whose import
# alone costs seconds (torch, transformers) or that most runs never use; a dotted name is
# that module only (scipy.stats: the pooled replicate interval, 0.5-1 s of a job's start)
LAZY = {"torch", "transformers", "huggingface_hub", "tokenizers", "gguf", "safetensors", "wordfreq"}
LAZY |= {"scipy.stats"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. embsvd.method.analysis
    target: str  # what it imports, resolved to a module path, e.g. embsvd.method.backend
    lazy: bool  # inside a function (not at module level, not under TYPE_CHECKING)
    line: int

    @property
    def stage(self) -> str:
        return stage_of(self.module)

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}{' (in a function)' * self.lazy}"


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = module_name(path)
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        lazy = id(node) not in top_level
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif node.module == "embsvd":  # from embsvd import tracking: the subpackage
            targets = [f"embsvd.{alias.name}" for alias in node.names]
        else:
            targets = [node.module]
        found += [Import(module, target, lazy, node.lineno) for target in targets]
    return found


def package_imports() -> list[Import]:
    return [found for path in sorted(PACKAGE.rglob("*.py")) for found in imports_of(path)]


def test_the_package_is_one_level_of_stage_folders():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert folders == set(STAGES) - {"groups"}
    assert modules == {"__init__", "__main__", "groups"}  # __main__: the `embsvd` command
    for folder in folders:
        assert not [
            p for p in (PACKAGE / folder).iterdir() if p.is_dir() and p.name != "__pycache__"
        ]


def test_each_stage_imports_only_itself_and_the_stages_below():
    upward = [
        str(found)
        for found in package_imports()
        if found.target.startswith("embsvd.")
        and found.stage in STAGES  # not __main__: the command sits above every stage
        and stage_of(found.target) in STAGES
        and STAGES.index(stage_of(found.target)) > STAGES.index(found.stage)
    ]
    assert upward == []


def test_no_module_imports_the_package_root():
    """``embsvd/__init__`` imports every stage: importing it back would be a cycle."""
    rooted = [
        str(found)
        for found in package_imports()
        if found.module != "embsvd" and (found.target == "embsvd" or found.target == "embsvd.")
    ]
    assert rooted == []


def test_heavy_libraries_are_imported_only_by_their_stage():
    strays = [
        str(found)
        for found in package_imports()
        if (library := found.target.split(".")[0]) in OWNERS and found.stage not in OWNERS[library]
    ]
    assert strays == []


def test_imports_inside_functions_are_only_the_optional_heavy_libraries():
    """An import inside a function hides a dependency (and, between our own modules,
    a cycle): only the optional formats and backends are imported there."""
    hidden = [
        str(found)
        for found in package_imports()
        if found.lazy
        and not any(found.target == m or found.target.startswith(f"{m}.") for m in LAZY)
    ]
    assert hidden == []


def test_the_import_rules_see_real_imports():
    """The checks above would pass on an empty list: make sure they read the package."""
    found = package_imports()
    assert len(found) > 100
    assert any(f.module == "embsvd.tracking.runs" and f.target.startswith("mlflow") for f in found)
    assert any(f.lazy and f.target == "torch" for f in found)
    assert {f.stage for f in found} >= set(STAGES)
