"""Config schemas, registered in Hydra's ConfigStore (the Hydra side of the library).

``conf/config.yaml`` lists ``embsvd_schema`` first in its defaults, so every config group
is typed: a misspelt key (``analysis.centre=false``), a wrong type
(``analysis.top_k=many``) or a choice that is not one (``analysis.geometry=whitend``:
choices are ``StrEnum`` fields) fails when the config is composed, before any job starts.
The model and group schemas are the library's own dataclasses, so config keys equal the
argument names they feed.

What composition cannot see is checked by ``typed_settings`` (keys that a ``+`` override
added beside the schema's) and ``validate`` (ranges, the target among the groups, the
device's form); the pipeline runs both on every job before a sweep launches or a run opens.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, Container, DictConfig, OmegaConf

from embsvd.checks.matching import NullMatch
from embsvd.checks.run import ChecksConfig
from embsvd.checks.trajectory import check_steps
from embsvd.figures.style import FigureFormat
from embsvd.groups import (
    FORMS,
    ORDERS,
    Form,
    GroupSpec,
    check_group_name,
    check_group_spec,
)
from embsvd.io.spec import MATRICES, CheckpointSpec
from embsvd.method.concepts import ConceptSpec, check_concepts
from embsvd.method.geometry import Geometry
from embsvd.pipeline.project import project_root
from embsvd.pipeline.secrets import is_secret_key, redact_config, secret_key_message
from embsvd.tracking.journal import Journal


@dataclass
class AnalysisConfig:
    """``conf/analysis/``: how the target group is analysed."""

    center: bool = True  # subtract the group mean before the SVD
    n_components: int = 3  # axes the vocabulary is projected on
    top_k: int = 20  # tokens reported at each end of each axis
    # per-run figures: true (drawn with each run), false (none) or deferred (none now;
    # `embsvd figures` draws them later from the run's tables and logs them to it)
    figures: bool | str = True
    # the vocabulary explorer, with the per-run figures (none where figures=false): every
    # token's projections (explorer/vocabulary_projections.csv) and explorer.html
    explorer: bool = True
    # a single run, or a sweep whose jobs run one after another in this process (embsvd's
    # launcher or Hydra's basic one), draws each run's figures in a process of its own,
    # beside the job's checks, tables and explorer (embsvd.figures.drawer); false: in the
    # job's process
    figure_process: bool = True
    # ... and its explorer there too, from this many tokens up: where the checks are long
    # enough to leave that process idle (a smaller vocabulary's is written after them)
    explorer_process_min_tokens: int = 65536
    # cpu: numpy; cuda, cuda:<n> or mps: torch on that device for the SVDs and the projection
    device: str = "cpu"
    random_state: int = 0  # seeds every random draw of the checks below
    # matched random-group null: random groups per statistic (0: off); raised where Holm
    # over the run's tests needs more draws to reach `alpha`
    n_null: int = 1000
    null_match: NullMatch = NullMatch.norm_frequency  # none | norm | frequency | norm_frequency
    null_neighbours: int = 50  # a member is replaced by one of its nearest pool tokens
    alpha: float = 0.05  # the family-wise error rate Holm's correction must reach
    remove_global: int = 1  # global components removed for the decorrelated group-mean r
    n_resamples: int = 500  # delete-d jackknife subsets at most (all where fewer; 0: off)
    heldout: bool = True  # leave-one-out and held-out-remainder ranks
    precision_k: int = 10  # k of the held-out precision@k
    confounds: bool = True  # Spearman of the axes with token norm, id and length
    confound_threshold: float = 0.3  # |rho| at which an axis is flagged
    geometry: Geometry = Geometry.euclidean  # or whitened: (W - mean) Cov^-1/2, shrunk
    whitening_shrinkage: float | None = None  # None: Ledoit-Wolf
    normalize_rows: bool = False  # unit-norm embeddings before anything else
    n_global: int = 50  # top components of the whole vocabulary to compare with (0: off)
    order: bool = True  # test the declared order of a linear or cyclic target group
    # under-trained tokens (docs/undertrained.md): found once per checkpoint, left out of
    # the null's pools and marked among the extremes
    undertrained: bool = True


@dataclass
class TrackingConfig:
    """``conf/tracking/``: where runs are logged."""

    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<root>/mlruns/mlflow.db
    artifact_root: str | None = None  # None: mlruns/artifacts beside a sqlite store
    experiment: str = "embsvd"
    # skip a job when a FINISHED run of the experiment has its config hash (resume a sweep)
    skip_existing: bool = False
    # a sweep's runs opened and written by a process of their own while the jobs compute
    # (embsvd's launcher or Hydra's basic one; embsvd/tracking/writer.py), in a sweep of at least
    # writer_min_jobs jobs: a shorter one does not pay back the writer's start
    background_writes: bool = True
    writer_min_jobs: int = 16
    # a sqlite store's journal (embsvd.tracking.journal): wal (write-ahead, folded back
    # into mlflow.db when each process ends) or delete (SQLite's rollback journal: for a
    # store on a filesystem shared by several hosts, or read from read-only media)
    sqlite_journal: Journal = Journal.wal


@dataclass
class NumbersConfig:
    """``numbers``: Fourier power of the integer tokens over their order
    (``embsvd.checks.numbers``, docs/numbers.md); rides along with the run's target."""

    enabled: bool = False
    # the integers 0..max_value are tried; N is the run from 0 the tokenizer keeps whole
    max_value: int = 999
    form: Form = Form.auto  # which token an integer maps to, as a group's form
    periods: list[int] = field(default_factory=lambda: [2, 5, 10])
    n_null: int = 1000  # draws of each null (order permuted; frequency-only)


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
    numbers: NumbersConfig = field(default_factory=NumbersConfig)  # number structure
    # concept axes (conf/concepts/, docs/concepts.md): the configured concepts, and the
    # one this run analyses beside its target (None: none, and nothing is computed)
    concepts: dict[str, ConceptSpec] = field(default_factory=dict)
    concept: str | None = None


@dataclass
class SweepConfig:
    """``sweep`` in ``conf/figures.yaml``: which runs the figures are made from. At most
    one of ``parent_run_id``, ``sweep_id`` and ``filter``; none: the most recent sweep."""

    parent_run_id: str | None = None  # the sweep's parent run
    sweep_id: str | None = None  # the tag embsvd.sweep_id (the figures folder's name)
    experiment: str | None = None  # None: any (a filter: tracking.experiment)
    filter: str | None = None  # an MLflow filter string over runs of `experiment`
    name: str | None = None  # the folder name for a filter's figures
    # draw the FINISHED runs of a selection that still has RUNNING ones (else refused)
    include_running: bool = False


@dataclass
class FiguresConfig:
    """``conf/figures.yaml``: paper figures and tables of one sweep, from the store."""

    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output_dir: str = MISSING  # figures/<sweep id>/ is written under it
    alpha: float = 0.05  # Benjamini-Hochberg q below which a group pair is marked (*)
    top_k: int = 10  # tokens per end in the tables and the cross-model overlap
    column_width: float = 3.25  # inches: one column of a two-column paper
    text_width: float = 6.75  # inches: the whole text width
    formats: list[FigureFormat] = field(
        default_factory=lambda: [FigureFormat.pdf, FigureFormat.png]
    )
    dpi: int = 300  # of the PNG files
    log_to_parent: bool = True  # also log the figure set to the sweep's parent run
    # param keys whose runs, otherwise alike, are pooled as replicates (mean, 95% t
    # interval, n), e.g. [analysis.random_state]; none: one line per run
    replicates: list[str] = field(default_factory=list)


# --- checks that composition cannot make -----------------------------------------------------

# an open set (a machine may have several GPUs), so a pattern rather than an enum; ASCII
# digits only (\d takes any script's, which torch does not), an index of up to 3 of them
DEVICE = re.compile(r"cpu|mps|cuda(:[0-9]{1,3})?", re.ASCII)
DEVICES = "cpu (numpy), cuda, cuda:<index> (e.g. cuda:1) or mps"
# Caps no real use comes near, so that a typo or a hostile config fails at once instead of
# running for hours or filling the store: the top tokens are read by eye (tens at an end),
# and every pair of groups is a metric of the run (100 groups: 4950 pairs per statistic).
MAX_TOP_K = 1000
MAX_GROUPS = 100


def typed_settings(cfg: DictConfig) -> EmbsvdConfig:
    """The settings of a composed job config, as the schema's dataclasses.

    ``cfg`` may still hold Hydra's own ``hydra`` node (a sweep's composed job config),
    which is left out.

    Raises:
        ValueError: ``cfg`` has a key the schema does not define (see ``unknown_key_messages``).
    """
    unknown = list(unknown_key_messages(cfg))
    if unknown:
        raise ValueError("\n".join(unknown))
    values = {}
    for schema_field in dataclasses.fields(EmbsvdConfig):
        value = cfg[schema_field.name]
        values[schema_field.name] = (
            OmegaConf.to_object(value) if isinstance(value, Container) else value
        )
    return EmbsvdConfig(**values)


def unknown_key_messages(cfg: DictConfig, prefix: str = "") -> Iterator[str]:
    """A message for every key of ``cfg`` that its schema does not define, naming the key
    it is closest to. Hydra's ``+key=value`` adds a key even to a typed config (its own
    error for a misspelt key suggests it), and nothing would ever read that key: the run
    would silently use the default of the key that was meant."""
    schema = OmegaConf.get_type(cfg)
    # a dataclass node has its fields; a dict node (groups) any keys, each value checked
    known = [f.name for f in dataclasses.fields(schema)] if is_dataclass(schema) else None
    where = prefix.rstrip(".") or "the config"
    for key, value in cfg.items_ex(resolve=False):
        if not prefix and key == "hydra":  # Hydra's own settings: not the job's
            continue
        if known is not None and key not in known and is_secret_key(str(key)):
            yield secret_key_message(f"{prefix}{key}")  # never echoes the secret
        elif known is not None and key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            meant = (
                f"did you mean {prefix}{close[0]}?" if close else "its keys: " + ", ".join(known)
            )
            plain = OmegaConf.to_container(value) if isinstance(value, Container) else value
            yield (
                f"{prefix}{key}: not a key of {where} (given {redact_config(plain)!r}, added "
                f"by a '+' override, and nothing reads it); {meant}"
            )
        elif isinstance(value, DictConfig):
            yield from unknown_key_messages(value, f"{prefix}{key}.")


def validate(settings: EmbsvdConfig) -> None:
    """Refuse settings that would fail a job: ranges, choices, the target among the
    groups and the form of the device. Composition has checked keys and types (and the
    choices of configs composed from ``conf/``); this also covers settings built in code.

    ``settings.groups`` must hold the groups of ``group_files`` already
    (``with_group_files``): the target may be one of them.

    Raises:
        ValueError: naming the key, the value given and what is allowed.
    """
    _check_groups(settings.groups)
    _check_target(settings)
    _check_model(settings.model)
    _check_analysis(settings.analysis)
    _check_rank(settings)
    _check_numbers(settings.numbers)
    check_concepts(settings.concepts, settings.concept)  # concept axes
    if settings.tracking.writer_min_jobs < 0:
        raise ValueError(
            "tracking.writer_min_jobs: must be 0 (every sweep whose jobs run in its process has a "
            f"writer process) or more, got {settings.tracking.writer_min_jobs}"
        )


def _check_groups(groups: dict[str, GroupSpec]) -> None:
    """Names that can be metric keys and file names; each spec as the single-token rule
    will check it (``check_group_spec``: words, sizes, choices), before anything loads."""
    if len(groups) > MAX_GROUPS:
        raise ValueError(
            f"groups: {len(groups)} groups; at most {MAX_GROUPS} (every pair of groups is a "
            "metric of the run): split them over several sweeps"
        )
    for name, spec in groups.items():
        check_group_name(name)
        check_display_name(f"groups.{name}.display_name", spec.display_name)
        _check_choice(f"groups.{name}.form", spec.form, FORMS)
        _check_choice(f"groups.{name}.order", spec.order, ORDERS)
        if name != EXTRA_GROUP or spec.words:  # the empty slot: _check_target asks for words
            check_group_spec(name, spec)


def _check_rank(settings: EmbsvdConfig) -> None:
    """``n_components`` within the rank the target's words allow: it keeps at most
    ``min(n_members, len(words))`` tokens, one axis fewer when centered. The single-token
    rule may keep fewer still; the run then projects on what there is and says so
    (the tag ``embsvd.warning.n_components``)."""
    spec, analysis = settings.groups[settings.target], settings.analysis
    n_tokens = min(spec.n_members, len(spec.words))
    rank = n_tokens - int(analysis.center)
    if analysis.n_components > rank:
        centered = ", one axis fewer when centered" if analysis.center else ""
        raise ValueError(
            f"analysis.n_components: {analysis.n_components} axes of target "
            f"{settings.target!r}, which keeps at most {n_tokens} tokens{centered}: at most "
            f"{rank}; set analysis.n_components={max(rank, 1)} or give the group more words"
        )


# Caps no real use comes near: every integer tried is one tokenizer call, every null draw
# a Fourier transform of the N x d_model rows
MAX_NUMBER = 100_000
MAX_NUMBERS_NULL = 100_000


def _check_numbers(numbers: NumbersConfig) -> None:
    """``numbers.*``: the integers tried, the periods (each with a Fourier bin at the
    length ``numbers.max_value + 1``), the draws of the nulls and the token form."""
    if not 1 <= numbers.max_value <= MAX_NUMBER:
        raise ValueError(
            f"numbers.max_value: the integers 0..max_value are tried, so between 1 and "
            f"{MAX_NUMBER}; got {numbers.max_value}"
        )
    periods = list(numbers.periods)
    if not periods or any(p < 2 for p in periods) or len(set(periods)) < len(periods):
        raise ValueError(
            f"numbers.periods: {periods} must be distinct periods of at least 2 (period 1 "
            "is the constant), e.g. [2,5,10]"
        )
    step = math.lcm(*periods)
    if step > numbers.max_value + 1:
        raise ValueError(
            f"numbers.periods: {periods} need at least lcm = {step} integers for every "
            f"period to have a Fourier bin, but numbers.max_value={numbers.max_value} tries "
            f"{numbers.max_value + 1}; raise numbers.max_value to {step - 1} or more, or "
            "drop a period"
        )
    if not 2 <= numbers.n_null <= MAX_NUMBERS_NULL:
        raise ValueError(
            f"numbers.n_null: draws of each null, between 2 and {MAX_NUMBERS_NULL}; got "
            f"{numbers.n_null}"
        )
    _check_choice("numbers.form", numbers.form, FORMS)


def _check_target(settings: EmbsvdConfig) -> None:
    target, groups = settings.target, settings.groups
    if target in groups and not groups[target].words:
        raise ValueError(
            f"target: {target!r} has no words; give them, e.g. groups.{target}.words=[w1,w2,w3]"
        )
    if target not in groups:
        named = [name for name, spec in groups.items() if spec.words]  # not an empty slot
        close = difflib.get_close_matches(target, named, n=1)
        advice = f"did you mean {close[0]!r}? Else add it" if close else "pick one, or add it"
        raise ValueError(
            f"target: {target!r} is not one of the configured groups "
            f"({', '.join(sorted(named)) or 'none'}); {advice}, "
            f"e.g. groups=[{','.join([*named, target])}]"
        )


def _check_model(model: CheckpointSpec) -> None:
    model.check_source()
    check_display_name("model.display_name", model.display_name)
    _check_choice("model.matrix", model.matrix, MATRICES)
    check_steps(model)  # trajectories across training: the declared order of revisions


def _check_analysis(analysis: AnalysisConfig) -> None:
    for key in ("n_components", "top_k"):
        if getattr(analysis, key) < 1:
            raise ValueError(f"analysis.{key}: must be at least 1, got {getattr(analysis, key)}")
    if analysis.top_k > MAX_TOP_K:
        raise ValueError(
            f"analysis.top_k: at most {MAX_TOP_K} tokens at each end of an axis, got "
            f"{analysis.top_k}; the whole projection is logged as a histogram already"
        )
    if analysis.remove_global < 0:
        raise ValueError(
            f"analysis.remove_global: must be 0 (off) or more, got {analysis.remove_global}"
        )
    if analysis.explorer_process_min_tokens < 0:
        raise ValueError(
            "analysis.explorer_process_min_tokens: must be 0 (the figure process writes "
            f"every run's explorer) or more, got {analysis.explorer_process_min_tokens}"
        )
    try:  # the checks' own settings: ChecksConfig holds their ranges
        checks_config(analysis)
    except ValueError as error:
        raise ValueError(f"analysis.{error}") from error
    shrinkage = analysis.whitening_shrinkage
    if shrinkage is not None and not 0 <= shrinkage <= 1:
        raise ValueError(
            f"analysis.whitening_shrinkage: null (Ledoit-Wolf) or a weight between 0 and 1, "
            f"got {shrinkage}"
        )
    _check_choice("analysis.geometry", analysis.geometry, tuple(Geometry))
    if not isinstance(analysis.device, str) or not DEVICE.fullmatch(analysis.device):
        raise ValueError(f"analysis.device: {analysis.device!r} is not a device; use {DEVICES}")
    _check_figures(analysis.figures)


DEFERRED_FIGURES = "deferred"  # analysis.figures: drawn later, by the figures command


def _check_figures(figures: object) -> None:
    """``analysis.figures`` is true, false or ``deferred``: the schema takes any string
    (and settings built in code anything), and a misspelt ``deferred`` must not draw."""
    if figures is True or figures is False or figures == DEFERRED_FIGURES:
        return
    raise ValueError(
        f"analysis.figures: {figures!r} is not one of true (drawn with each run), false "
        f"(none) or {DEFERRED_FIGURES} (none while the sweep runs; `embsvd figures` draws "
        "them later from the run's tables and logs them to the run)"
    )


def checks_config(analysis: AnalysisConfig) -> ChecksConfig:
    """The check settings of ``analysis``: ``ChecksConfig``'s fields are named as the
    ``analysis.*`` keys that set them."""
    fields = dataclasses.fields(ChecksConfig)
    return ChecksConfig(**{field.name: getattr(analysis, field.name) for field in fields})


DISPLAY_NAME_MAX = 60  # characters: a panel title or an axis label, not a caption


def check_display_name(key: str, value: str | None) -> None:
    """Refuse a display name a figure could not show on one line: empty, longer than
    ``DISPLAY_NAME_MAX``, or holding a line break or another invisible character.

    Raises:
        ValueError: naming the key, the value and what is allowed.
    """
    if value is None:
        return
    invisible = [ch for ch in value if not ch.isprintable()]
    if not value.strip() or len(value) > DISPLAY_NAME_MAX or invisible:
        shown = repr(value) if len(value) <= 80 else f"{value[:80]!r}..."
        raise ValueError(
            f"{key}: {shown} is not a display name: one line of 1 to {DISPLAY_NAME_MAX} "
            "visible characters (figures show it as a title); shorten it, or set it to null "
            "for the default"
        )


def _check_choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


def config_hash(settings: EmbsvdConfig, content: str | None = None) -> str:
    """SHA-256 of what decides a run's numbers: the checkpoint spec and ``content``, the
    checkpoint's content digest (``embsvd.io.checkpoint.content_digest``: the weights
    and tokenizer files, so a file replaced at the same path is a new config), every
    group's words, size and form (group files included), the target and the analysis
    settings; not where it is logged or cached, whether figures are drawn, nor the
    display names figures use. Jobs with equal hashes compute the same analysis."""
    decisive = {
        "model": asdict(settings.model),
        "content": content,
        "groups": {name: asdict(spec) for name, spec in sorted(settings.groups.items())},
        "target": settings.target,
        "analysis": asdict(settings.analysis),
    }
    # where or whether drawn
    for key in ("figures", "figure_process", "explorer_process_min_tokens", "device", "explorer"):
        decisive["analysis"].pop(key)
    if settings.numbers.enabled:  # only then: runs without it keep their hashes
        decisive["numbers"] = asdict(settings.numbers)
    if settings.concept is not None:  # concept axes; runs without one keep their hashes
        decisive["concept"] = settings.concept
        decisive["concepts"] = {  # all of them: the axes' cosines are logged too
            name: {k: v for k, v in asdict(spec).items() if k != "description"}
            for name, spec in sorted(settings.concepts.items())
        }
    # names people read change no number either; popped, so that runs logged before
    # display names existed keep their hashes
    decisive["model"].pop("display_name")
    decisive["model"].pop("steps")  # the training order a sweep's parent reads, no number
    for spec in decisive["groups"].values():
        spec.pop("description")
        spec.pop("display_name")
        # variants and subwords enter only where used: runs logged before they
        # existed keep their hashes
        if not spec["variants"]:
            spec.pop("variants")
        if spec["subwords"] == "skip":
            spec.pop("subwords")
    encoded = json.dumps(decisive, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(encoded).hexdigest()


EXTRA_GROUP = "extra"  # conf/config.yaml's slot for a group given on the command line


def checked_settings(cfg: DictConfig) -> EmbsvdConfig:
    """A composed job config as typed settings, its group files read, validated: what a
    job would fail on before loading anything. A sweep runs this on every job before
    it launches (``embsvd.pipeline.compose``), ``run_job`` before it opens a run.

    Raises:
        ValueError: a key the schema does not define, a setting out of range or not one
            of its choices, a target that is not a group, a malformed group file.
        FileNotFoundError: a group file does not exist.
    """
    configured = typed_settings(cfg)
    settings = with_group_files(configured)
    # validated with the empty `extra` slot kept, so that target=extra asks for its words
    validate(dataclasses.replace(settings, groups={**configured.groups, **settings.groups}))
    return settings


def with_group_files(settings: EmbsvdConfig) -> EmbsvdConfig:
    """The settings with the groups of ``group_files`` added and an unused ``extra``
    slot (no words) removed.

    Raises:
        FileNotFoundError: a group file does not exist.
        ValueError: a group file is not a mapping of group specs, or names a group that
            is already configured.
    """
    groups = {
        name: spec
        for name, spec in settings.groups.items()
        if not (name == EXTRA_GROUP and not spec.words)
    }
    for file in settings.group_files:
        for name, spec in read_group_file(Path(file)).items():
            if name in groups:
                raise ValueError(
                    f"group_files: {file} defines group {name!r}, which is already configured; "
                    "rename it in the file"
                )
            groups[name] = spec
    return dataclasses.replace(settings, groups=groups)


GROUP_FILE_MAX_BYTES = 1_000_000  # 1 MB: ~100,000 words, far more than any set of groups


class GroupFileLoader(yaml.SafeLoader):
    """YAML as ``conf/groups/`` is read (no timestamps, no duplicate keys), without
    aliases: a group file lists words and needs none, and an alias expands into a copy
    of what it names, so a few hundred bytes of nested aliases become billions of nodes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"an alias (*{event.anchor}): write the words out", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key.value!r} appears twice", key.start_mark
                )
            seen.add(key.value if isinstance(key, yaml.ScalarNode) else None)
        return super().construct_mapping(node, deep=deep)


GroupFileLoader.yaml_implicit_resolvers = {  # dates stay strings, as in OmegaConf's loader
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_group_file(file: Path) -> dict[str, GroupSpec]:
    """``{name: GroupSpec}`` from a YAML file in the format of ``conf/groups/*.yaml``.

    The file is data: at most ``GROUP_FILE_MAX_BYTES``, UTF-8, YAML without aliases,
    no OmegaConf interpolations (``${...}`` would read the environment into the words),
    group names that ``check_group_name`` takes.

    Raises:
        FileNotFoundError: ``file`` is not a file.
        ValueError: naming the file and what is wrong with it.
    """
    path = file.expanduser()
    if not path.is_absolute():  # relative to where the command started, not a job folder
        path = Path.cwd() / path
    if not path.is_file():
        raise FileNotFoundError(f"group_files: {file} is not a file (resolved to {path})")
    node = _load_group_yaml(file, path)
    if not isinstance(node, dict) or not node:
        raise ValueError(
            f"group_files: {file} must map group names to specs, e.g. "
            "'animals: {words: [dog, cat, horse], size: 10}'"
        )
    groups = {}
    for name, spec in node.items():
        try:
            check_group_name(name)
        except ValueError as error:
            raise ValueError(f"group_files: {file}: {error}") from error
        _refuse_interpolations(file, str(name), spec)
        try:
            typed = OmegaConf.merge(OmegaConf.structured(GroupSpec), spec)
        except Exception as error:  # omegaconf's errors name the key and the bad value
            raise ValueError(f"group_files: group {name!r} in {file}: {error}") from error
        groups[str(name)] = OmegaConf.to_object(typed)
    return groups


def _load_group_yaml(file: Path, path: Path) -> object:
    """The YAML of a group file, read within the bounds ``read_group_file`` names."""
    with path.open("rb") as handle:  # read no more than the cap, whatever the file claims
        data = handle.read(GROUP_FILE_MAX_BYTES + 1)
    if len(data) > GROUP_FILE_MAX_BYTES:
        raise ValueError(
            f"group_files: {file} is larger than {GROUP_FILE_MAX_BYTES:,} bytes, the most "
            "a group file may hold; split it, or keep only the words the groups need"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"group_files: {file} is not UTF-8 text (byte {data[error.start]:#04x} at offset "
            f"{error.start}); save it as UTF-8"
        ) from error
    try:
        return yaml.load(text, Loader=GroupFileLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise ValueError(
            f"group_files: {file} is not valid YAML for a group file: {_yaml_problem(error)}"
        ) from error
    except RecursionError as error:
        raise ValueError(f"group_files: {file} nests too deeply to be a group file") from error


def _yaml_problem(error: yaml.YAMLError) -> str:
    """``line 2, column 8: <problem>``: where in the file, and what."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + problem


def _refuse_interpolations(file: Path, group: str, spec: object) -> None:
    """OmegaConf would resolve ``${...}`` in a word (``${oc.env:HOME}`` reads the
    environment): a group file's words are taken as written, so none may hold one."""
    pending = [spec]
    while pending:  # iterative: the nesting is the file's, however deep
        value = pending.pop()
        if isinstance(value, dict):
            pending += value.values()
        elif isinstance(value, list):
            pending += value
        elif isinstance(value, str) and "${" in value:
            raise ValueError(
                f"group_files: group {group!r} in {file}: {value[:80]!r} is an OmegaConf "
                "interpolation; a group file holds words as they are written: write the "
                "word itself"
            )


def register_configs() -> None:
    """Register the schema and the ``project_root`` resolver (idempotent)."""
    ConfigStore.instance().store(name="embsvd_schema", node=EmbsvdConfig)
    ConfigStore.instance().store(name="figures_schema", node=FiguresConfig)
    if not OmegaConf.has_resolver("project_root"):
        # the root a resolver sees still has the hydra node where Hydra resolves its own
        # folders (before a sweep's HydraConfig is set); a job's config does not
        OmegaConf.register_new_resolver("project_root", lambda *, _root_: str(project_root(_root_)))


register_configs()
