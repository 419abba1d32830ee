"""Config schemas, registered in Hydra's ConfigStore (the Hydra side of the library).

``conf/config.yaml`` lists ``embsvd_schema`` first in its defaults, so every config group
is typed: a misspelt key (``analysis.centre=false``) or a wrong type
(``analysis.top_k=many``) fails when the config is composed, before any job starts.
The model and group schemas are the library's own dataclasses, so config keys equal the
argument names they feed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from embsvd.groups import GroupSpec
from embsvd.io.checkpoint import CheckpointSpec

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


@dataclass
class AnalysisConfig:
    """``conf/analysis/``: how the target group is analysed."""

    center: bool = True  # subtract the group mean before the SVD
    n_components: int = 3  # axes the vocabulary is projected on
    top_k: int = 20  # tokens reported at each end of each axis
    figures: bool = True  # draw the per-run figures
    device: str = "cpu"  # cpu: numpy; a torch device (cuda) for the SVDs and the projection
    random_state: int = 0  # seeds every random draw of the checks below
    # matched random-group null: random groups per statistic (0: off); raised where Holm
    # over the run's tests needs more draws to reach `alpha`
    n_null: int = 1000
    null_match: str = "norm_frequency"  # none | norm | frequency | norm_frequency
    null_neighbours: int = 50  # a member is replaced by one of its nearest pool tokens
    alpha: float = 0.05  # the family-wise error rate Holm's correction must reach
    remove_global: int = 1  # global components removed for the decorrelated group-mean r
    n_resamples: int = 500  # delete-d jackknife subsets at most (all where fewer; 0: off)
    heldout: bool = True  # leave-one-out and held-out-remainder ranks
    precision_k: int = 10  # k of the held-out precision@k
    confounds: bool = True  # Spearman of the axes with token norm, id and length
    confound_threshold: float = 0.3  # |rho| at which an axis is flagged
    geometry: str = "euclidean"  # or "whitened": (W - mean) Cov^-1/2, shrunk
    whitening_shrinkage: float | None = None  # None: Ledoit-Wolf
    normalize_rows: bool = False  # unit-norm embeddings before anything else
    n_global: int = 50  # top components of the whole vocabulary to compare with (0: off)
    order: bool = True  # test the declared order of a linear or cyclic target group


@dataclass
class TrackingConfig:
    """``conf/tracking/``: where runs are logged."""

    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlruns/mlflow.db
    artifact_root: str | None = None  # None: mlruns/artifacts beside a sqlite store
    experiment: str = "embsvd"
    # skip a job when a FINISHED run of the experiment has its config hash (resume a sweep)
    skip_existing: bool = False


@dataclass
class EmbsvdConfig:
    """The whole config of one job."""

    model: CheckpointSpec = MISSING
    groups: dict[str, GroupSpec] = field(default_factory=dict)
    target: str = MISSING  # the group whose submatrix is decomposed
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # YAML files of more groups, in the format of conf/groups/*.yaml ({name: {words: ...}})
    group_files: list[str] = field(default_factory=list)
    # converted checkpoint data (GGUF); None: $EMBSVD_CACHE_DIR or ~/.cache/embsvd
    cache_dir: str | None = None


@dataclass
class SweepConfig:
    """``sweep`` in ``conf/figures.yaml``: which runs the figures are made from. At most
    one of ``parent_run_id``, ``sweep_id`` and ``filter``; none: the most recent sweep."""

    parent_run_id: str | None = None  # the sweep's parent run
    sweep_id: str | None = None  # the tag embsvd.sweep_id (the figures folder's name)
    experiment: str | None = None  # None: any (a filter: tracking.experiment)
    filter: str | None = None  # an MLflow filter string over runs of `experiment`
    name: str | None = None  # the folder name for a filter's figures


@dataclass
class FiguresConfig:
    """``conf/figures.yaml``: paper figures and tables of one sweep, from the store."""

    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = MISSING  # figures/<sweep id>/ is written under it
    alpha: float = 0.05  # Holm-corrected p-value below which a group pair is marked
    top_k: int = 10  # tokens per end in the tables and the cross-model overlap
    column_width: float = 3.25  # inches: one column of a two-column paper
    text_width: float = 6.75  # inches: the whole text width
    formats: list[str] = field(default_factory=lambda: ["pdf", "png"])
    dpi: int = 300  # of the PNG files
    log_to_parent: bool = True  # also log the figure set to the sweep's parent run


def config_hash(settings: EmbsvdConfig) -> str:
    """SHA-256 of what decides a run's numbers: the checkpoint spec, every group's words,
    size and form (group files included), the target and the analysis settings; not
    where it is logged or cached, nor whether figures are drawn. Jobs with equal hashes
    compute the same analysis (of the same weights when ``model.revision`` pins a commit)."""
    decisive = {
        "model": asdict(settings.model),
        "groups": {name: asdict(spec) for name, spec in sorted(settings.groups.items())},
        "target": settings.target,
        "analysis": asdict(settings.analysis),
    }
    for key in ("figures", "device"):  # where or whether it is drawn changes no number
        decisive["analysis"].pop(key)
    for spec in decisive["groups"].values():
        spec.pop("description")
    encoded = json.dumps(decisive, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


def register_configs() -> None:
    """Register the schema and the ``project_root`` resolver (idempotent)."""
    ConfigStore.instance().store(name="embsvd_schema", node=EmbsvdConfig)
    ConfigStore.instance().store(name="figures_schema", node=FiguresConfig)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


register_configs()
