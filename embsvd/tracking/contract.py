"""The run contract: what one analysis becomes in the tracking store, as plain data.

Tag keys, the run name and its parser, metric names and a run's tags from its results are
defined here, the CSV tables in the sibling ``artifacts``; tools that read runs back (the
sweep table, figures) use the same names and the records at the end of this module.
``embsvd.tracking`` writes them. No mlflow here: figures import the records.
docs/contract.md describes every name for a researcher reading runs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from embsvd.checks.null import NullComparison
from embsvd.checks.order import CyclicOrder, LinearOrder
from embsvd.checks.run import ChecksResult
from embsvd.method.analysis import AnalysisResult, effective_rank, mean_corr_key

Metric = tuple[str, float, int]  # (key, value, step); step series use step = component
TOP_TOKENS_IN_TAGS = 5  # the first axis' ends, shown as tags in the runs table


class Tag(StrEnum):
    """Every tag key embsvd writes or reads. A value ending in ``.`` is a prefix: the key
    goes on with a variable part (``env_tag``, ``skipped_tag``)."""

    # what the run analysed: known before anything is loaded
    MODEL = "embsvd.model"
    MATRIX = "embsvd.matrix"
    REVISION = "embsvd.revision"
    TARGET_GROUP = "embsvd.target_group"
    # how figures name the model and each configured group (changes no number)
    MODEL_DISPLAY = "embsvd.model_display"
    GROUP_DISPLAY = "embsvd.group_display."
    CENTER = "embsvd.center"
    GEOMETRY = "embsvd.geometry"
    NORMALIZE_ROWS = "embsvd.normalize_rows"
    CONFIG_HASH = "embsvd.config_hash"
    # the code and the command that made it
    VERSION = "embsvd.version"
    ENV = "embsvd.env."
    GIT_COMMIT = "mlflow.source.git.commit"
    GIT_DIRTY = "embsvd.git_dirty"
    OVERRIDES = "embsvd.overrides"
    # the process that writes the run: how `embsvd runs reconcile` tells whether it is gone
    HOST = "embsvd.host"
    PID = "embsvd.pid"
    PROCESS_START = "embsvd.process_start"
    # what was read
    SOURCE = "embsvd.source"
    WEIGHTS_SHA256 = "embsvd.weights_sha256"
    TENSOR_KEY = "embsvd.tensor_key"
    EMBEDDING_KEY = "embsvd.embedding_key"
    TIED_EMBEDDINGS = "embsvd.tied_embeddings"
    QUANTIZATION = "embsvd.quantization"
    D_VOCAB = "embsvd.d_vocab"
    D_MODEL = "embsvd.d_model"
    REVISION_COMMIT = "embsvd.revision_commit"
    # trajectories across training: the analysed tensor's bytes and the revision's step
    EMBEDDING_SHA256 = "embsvd.embedding_sha256"
    STEP = "embsvd.step"
    STEP_ORDER = "embsvd.step_order"
    CHECKPOINT_CACHE = "embsvd.checkpoint_cache"
    TARGET_FORMS = "embsvd.target_forms"
    # groups.<name>.subwords=mean: members read as the mean of their subword rows
    MULTI_TOKEN = "embsvd.multi_token"
    # the results and the checks' settings
    AXIS0_TOP = "embsvd.axis0.top"
    AXIS0_BOTTOM = "embsvd.axis0.bottom"
    RANDOM_STATE = "embsvd.random_state"
    NULL_POOL = "embsvd.null_pool"
    NULL_MATCH = "embsvd.null_match"
    INTERVAL_METHOD = "embsvd.interval_method"
    ORDER = "embsvd.order"
    GLOBAL_VIEW = "embsvd.global_view"
    # under-trained tokens: which matrix, reference set and rule (analysis.undertrained)
    UNDERTRAINED = "embsvd.undertrained"
    # concept axes (`concept` set): which concept, its estimator, its axis' two ends
    CONCEPT = "embsvd.concept"
    CONCEPT_ESTIMATOR = "embsvd.concept_estimator"
    CONCEPT_POSITIVE_END = "embsvd.concept_positive_end"
    CONCEPT_NEGATIVE_END = "embsvd.concept_negative_end"
    CONCEPT_NULL_MATCH = "embsvd.concept_null_match"
    RUN_FIGURES = "embsvd.run_figures"
    """``deferred`` on a run that drew no figures (``analysis.figures=deferred``): the
    figures command draws them later from the run's tables, logs them under ``figures/``
    and sets ``drawn later``. Runs that drew theirs, or none, have no such tag."""
    # what a reader should not miss
    WARNING_INCOMPLETE_GROUPS = "embsvd.warning.incomplete_groups"
    WARNING_SHORT_GROUP = "embsvd.warning.short_group"
    WARNING_DEGENERATE_AXES = "embsvd.warning.degenerate_axes"
    WARNING_CONFOUNDS = "embsvd.warning.confounds"
    WARNING_N_COMPONENTS = "embsvd.warning.n_components"
    WARNING_IDENTICAL_EMBEDDINGS = "embsvd.warning.identical_embeddings"
    WARNING_TRAJECTORY = "embsvd.warning.trajectory"
    ERROR = "embsvd.error"
    RECOVERED = "embsvd.recovered"
    # sweeps: the parent run and its children
    ROLE = "embsvd.role"
    SWEEP_ID = "embsvd.sweep_id"
    SWEEP_DIR = "embsvd.sweep_dir"
    JOB_NUM = "embsvd.job_num"
    LAUNCHER = "embsvd.launcher"
    SKIPPED = "embsvd.skipped."
    PARENT_RUN_ID = "mlflow.parentRunId"
    # MLflow's own: the run name as a tag, the run's description (the UI shows it as
    # Markdown), and on the experiment its kind and the runs table's saved views
    RUN_NAME = "mlflow.runName"
    NOTE = "mlflow.note.content"
    EXPERIMENT_KIND = "mlflow.experimentKind"
    SAVED_VIEW = "mlflow.sharedViewState."

    @property
    def is_prefix(self) -> bool:
        return self.endswith(".")


SWEEP_ROLE = "sweep"  # Tag.ROLE of a sweep's parent run


def env_tag(library: str) -> str:
    """``embsvd.env.<library>``: the version of a library the run used."""
    return f"{Tag.ENV}{library}"


def group_display_tag(group: str) -> str:
    """``embsvd.group_display.<group>``: how figures name a group of the run."""
    return f"{Tag.GROUP_DISPLAY}{group}"


def skipped_tag(job_num: int | str) -> str:
    """``embsvd.skipped.<job_num>``, on a sweep's parent: the run a skipped job reuses."""
    return f"{Tag.SKIPPED}{job_num}"


def skipped_jobs(tags: Mapping[str, str]) -> dict[int, str]:
    """A sweep parent's skipped jobs: job number -> the FINISHED run with its config."""
    return {
        int(key.removeprefix(Tag.SKIPPED)): run_id
        for key, run_id in tags.items()
        if key.startswith(Tag.SKIPPED)
    }


# --- the run name ----------------------------------------------------------------------------

CENTERED, RAW = "centered", "raw"
UNIT_ROWS = "unit_rows"  # in a variant (``centered+unit_rows``) and in older run names
UNIT_ROWS_WORDS = "unit rows"  # in a run name
EUCLIDEAN = "euclidean"  # the geometry a run name leaves out
DEFAULT_REVISION = "main"  # the Hub revision a model label leaves out
SEPARATOR = " · "
RUN_NAME_FORM = "<target group> · <centered|raw>[ · unit rows][ · <geometry>] · <model>"
# how embsvd named runs before: still read (``parse_run_name``), no longer written
OLD_RUN_NAME_FORM = "<model>/<target group>/<centered|raw>[+unit_rows][+<geometry>]"


def model_label(name: str, revision: str | None = None, matrix: str = "input") -> str:
    """The run name's model part: ``<name>[@<revision>][:<matrix>]``, with the revision of
    a Hub checkpoint (not ``main``, the default) and the matrix when it is not the input
    embedding. It may hold any character."""
    label = name
    if revision and revision != DEFAULT_REVISION:
        label += f"@{revision}"
    if matrix != "input":
        label += f":{matrix}"
    return label


def tagged_model_label(tags: Mapping[str, str]) -> str | None:
    """``model_label`` of a run's tags (model, revision, matrix); ``None`` without the
    model's tag."""
    if Tag.MODEL not in tags:
        return None
    return model_label(tags[Tag.MODEL], tags.get(Tag.REVISION), tags.get(Tag.MATRIX, "input"))


def run_name(
    model: str,
    target: str,
    center: bool,
    *,
    normalize_rows: bool = False,
    geometry: str = EUCLIDEAN,
) -> str:
    """``<target group> · <centered|raw>[ · unit rows][ · <geometry>] · <model>``, the
    geometry left out when euclidean (``digits · centered · gpt2``,
    ``digits · raw · unit rows · whitened · gpt2``). What tells a sweep's runs apart comes
    first: the MLflow UI's runs table shows a name's first 15 or so characters, and the
    model has a column of its own (the param ``model.name``, the tag ``embsvd.model``).

    ``%`` and ``·`` in the target, the geometry and the model are percent-escaped
    (``%25``, ``%B7``), so that ``parse_run_name`` gives these arguments back exactly;
    names made of ordinary characters are left as they are.

    Raises:
        ValueError: ``geometry`` is empty or ``unit rows``, which the name could not tell
            apart from another variant.
    """
    if geometry in ("", UNIT_ROWS, UNIT_ROWS_WORDS):
        raise ValueError(f"geometry: {geometry!r} cannot be told apart in a run name")
    parts = [_escape(target, "·"), CENTERED if center else RAW]
    parts += [UNIT_ROWS_WORDS] if normalize_rows else []
    parts += [_escape(geometry, "·")] if geometry != EUCLIDEAN else []
    return SEPARATOR.join([*parts, _escape(model, "·")])


@dataclass(frozen=True)
class RunName:
    """What a run analysed, as its name says it; ``str()`` is the run name."""

    model: str  # the model label, ``<name>[@<revision>][:<matrix>]``
    target: str
    center: bool
    normalize_rows: bool = False
    geometry: str = EUCLIDEAN

    def __str__(self) -> str:
        return run_name(
            self.model,
            self.target,
            self.center,
            normalize_rows=self.normalize_rows,
            geometry=self.geometry,
        )

    @property
    def variant(self) -> str:
        """How the target was decomposed, as figures and their tables name it:
        ``centered`` or ``raw``, with ``+unit_rows`` and ``+<geometry>`` where they apply
        (``centered+unit_rows+whitened``)."""
        return (CENTERED if self.center else RAW) + self.space

    @property
    def space(self) -> str:
        """The geometry group means live in (centering does not move them): the variant
        without ``centered``/``raw``, e.g. ``+whitened``, or ``""``."""
        space = f"+{UNIT_ROWS}" if self.normalize_rows else ""
        return space + (f"+{_escape(self.geometry, '/+')}" if self.geometry != EUCLIDEAN else "")


def parse_run_name(name: str) -> RunName:
    """The inverse of ``run_name``; names of the older form ``OLD_RUN_NAME_FORM``
    (``gpt2/digits/centered+unit_rows``) are read too.

    Raises:
        ValueError: ``name`` is of neither form.
    """
    parsed = _parse_name(name) or _parse_old_name(name)
    if parsed is None:
        raise ValueError(
            f"run name {name!r}: expected {RUN_NAME_FORM} (or, as older embsvd wrote it, "
            f"{OLD_RUN_NAME_FORM})"
        )
    return parsed


def _parse_name(name: str) -> RunName | None:
    parts = name.split(SEPARATOR)
    if len(parts) < 3 or parts[1] not in (CENTERED, RAW):
        return None
    target, centering, *options, model = parts
    normalize_rows = options[:1] == [UNIT_ROWS_WORDS]
    geometry = options[1:] if normalize_rows else options
    if len(geometry) > 1 or geometry in ([""], [EUCLIDEAN], [UNIT_ROWS_WORDS]):
        return None
    return RunName(
        model=_unescape(model),
        target=_unescape(target),
        center=centering == CENTERED,
        normalize_rows=normalize_rows,
        geometry=_unescape(geometry[0]) if geometry else EUCLIDEAN,
    )


def _parse_old_name(name: str) -> RunName | None:
    parts = name.rsplit("/", 2)
    if len(parts) != 3:
        return None
    model, target, variant = parts
    centering, *suffixes = variant.split("+")
    normalize_rows = suffixes[:1] == [UNIT_ROWS]
    geometry = suffixes[1:] if normalize_rows else suffixes
    if centering not in (CENTERED, RAW) or len(geometry) > 1 or geometry in ([""], [EUCLIDEAN]):
        return None
    return RunName(
        model=model,
        target=_unescape(target),
        center=centering == CENTERED,
        normalize_rows=normalize_rows,
        geometry=_unescape(geometry[0]) if geometry else EUCLIDEAN,
    )


def _escape(text: str, unsafe: str) -> str:
    for char in "%" + unsafe:  # "%" first: the escapes written after it stay escapes
        text = text.replace(char, f"%{ord(char):02X}")
    return text


def _unescape(text: str) -> str:
    return re.sub(r"%([0-9A-F]{2})", lambda m: chr(int(m[1], 16)), text)


def sweep_id(sweep_name: str) -> str:
    """A sweep's id, which also names its folder of figures: the parent run's name
    without ``sweep/``, made ``file_safe``
    (``sweep/seed_replication/2026-11-28 07-57-50`` -> ``seed_replication_2026-11-28_07-57-50``)."""
    return file_safe(sweep_name.removeprefix("sweep/"))


# A name that becomes one file or folder name (a sweep id, a figure's model or group part).
# Figure files join two of them (axis__<model>__<group>.<ext>): 2 x 100 stays within the
# 255 bytes a file name may have.
NAME_MAX = 100
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*", re.ASCII)
PLAIN_NAME_RULE = (
    f"ASCII letters, digits, '.', '_' and '-', starting with a letter or digit, at most "
    f"{NAME_MAX} characters"
)


def file_safe(name: str) -> str:
    """``name`` made one file or folder name (a ``plain_name``): every run of characters
    other than ASCII letters, digits, ``.`` and ``-`` turned into one ``_``, and ``.``,
    ``_`` and ``-`` taken off both ends, so that it is never ``''``, ``.`` or ``..``, never
    hidden, and holds no separator and no NUL. A name with nothing left is
    ``unnamed_<hash>``; one longer than ``NAME_MAX`` is cut and ends in a hash of the whole
    name, so that long names which differ late stay apart."""
    safe = re.sub(r"[^A-Za-z0-9.\-]+", "_", name).strip("._-")
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    if not safe:
        return f"unnamed_{digest}"
    if len(safe) > NAME_MAX:
        return f"{safe[: NAME_MAX - len(digest) - 1].rstrip('._-')}_{digest}"
    return safe


def is_plain_name(name: object) -> bool:
    """Whether ``name`` may name a file or folder as it is (``PLAIN_NAME_RULE``)."""
    return isinstance(name, str) and len(name) <= NAME_MAX and bool(PLAIN_NAME.fullmatch(name))


def check_plain_name(key: str, name: str) -> str:
    """``name``, when it is a plain name; a name given by a user that becomes a folder
    (``sweep.name``) or is matched against a stored one (``sweep.sweep_id``).

    Raises:
        ValueError: naming the key, the value, the rule and a plain name made from it.
    """
    if is_plain_name(name):
        return name
    shown = repr(name) if len(str(name)) <= 120 else f"{str(name)[:120]!r}..."
    raise ValueError(
        f"{key}={shown}: not a plain name ({PLAIN_NAME_RULE}); it names a folder of "
        f"figures, so nothing else is taken: e.g. {key}={file_safe(str(name))}"
    )


# --- metrics -----------------------------------------------------------------------------------

N_TOKENS = "n_tokens"  # the target group's size, logged with groups.json
NULL_COMPARISON_FIELDS = ("mean", "sd", "percentile", "p_value")  # of each null test, beside p_holm
SWEEP_STATUSES = ("FINISHED", "FAILED", "KILLED")  # counted on a sweep's parent
# The key numbers, logged once each (no step series) with axes counted from 1: a runs
# table shows a series' last step (the centered spectrum's ~1e-16), and the MLflow UI's
# compare page plots the first metric every run logged. A run writes these first.
KEY_COMPONENTS = 3  # sv_<k>, evr_<k>, sv_<k>_lo/hi, stability/axis_cos_<k> for k = 1..3
S1_SHARE = "s1_share"
KEY_METRICS = (
    S1_SHARE,
    "null/s1_share/percentile",
    *(f"sv_{k}" for k in range(1, KEY_COMPONENTS + 1)),
    *(f"evr_{k}" for k in range(1, KEY_COMPONENTS + 1)),
    *(f"stability/axis_cos_{k}" for k in range(1, KEY_COMPONENTS + 1)),
    "confound/spearman_norm",
)


def pair_metric(prefix: str, group_a: str, group_b: str) -> str:
    """``<prefix>/<a>__<b>``: a statistic between two groups, names in sorted order."""
    return f"{prefix}/{group_a}__{group_b}"


def split_pair_metric(key: str, prefix: str) -> tuple[str, str] | None:
    """The two groups of a ``pair_metric`` key with this prefix; ``None`` for another key."""
    if not key.startswith(f"{prefix}/"):
        return None
    group_a, found, group_b = key.removeprefix(f"{prefix}/").partition("__")
    return (group_a, group_b) if found else None


def null_metric(test: str, field: str) -> str:
    """``null/<test>/<field>``: a statistic against the null, e.g. ``null/s1_share/p_value``."""
    return f"null/{test}/{field}"


def key_metric_rank(key: str) -> int:
    """Where a metric goes in the order a run writes them: the ``KEY_METRICS`` in their
    order, then every other (``len(KEY_METRICS)``; a stable sort keeps their order)."""
    return KEY_METRICS.index(key) if key in KEY_METRICS else len(KEY_METRICS)


def result_metrics(result: AnalysisResult) -> list[Metric]:
    """The analysis' own metrics (all of the contract's but ``n_tokens`` and the checks')."""
    svd = result.svd
    metrics = _numbered("sv", svd.singular_values)
    metrics += _numbered("evr", svd.explained_variance_ratio)
    metrics += _series("singular_value", svd.singular_values)
    metrics += _series("explained_variance_ratio", svd.explained_variance_ratio)
    S = svd.singular_values
    # the spectrum's shape in numbers: ~0 last value when centered, a towering first when raw
    metrics += [("singular_value_last_over_first", S[-1] / S[0], 0)]
    metrics += [("singular_value_first_over_second", S[0] / S[1], 0)]
    metrics += [(S1_SHARE, svd.explained_variance_ratio[0], 0)]
    metrics += [("effective_rank", effective_rank(S), 0)]
    metrics += [
        (key, value, 0)
        for prefix, a, b, value in pair_statistics(result)
        if with_target(key := pair_metric(prefix, a, b), result.target)
    ]
    return metrics


def pair_statistics(result: AnalysisResult) -> list[tuple[str, str, str, float]]:
    """Every statistic between two groups, ``(prefix, a, b, value)``: the group-mean r in
    each variant, the group-mean cosine and the first axes' correlation, for every
    unordered pair. A run logs as metrics only the pairs with its target
    (``result_metrics``); all of them go to its table ``group_pairs.csv``, which
    ``pair_metrics`` reads back."""
    pairwise = {mean_corr_key(variant): stat for variant, stat in result.mean_corr.items()}
    pairwise |= {"group_mean_cos": result.group_mean_cos, "axis_corr": result.axis_corr}
    return [
        (prefix, a, b, value) for prefix, stat in pairwise.items() for a, b, value in stat.pairs()
    ]


def with_target(key: str, target: str) -> bool:
    """Whether a run of ``target`` logs ``key`` as a metric: every key but those of a pair
    statistic between two other groups (``<prefix>/<a>__<b>``, with its null test's
    ``null/<prefix>/<a>__<b>/<field>``). Those repeat from run to run of a sweep (the same
    on one model, geometry and centering, but for the Holm p); a run keeps them in its
    tables (``group_pairs.csv``, ``null_group_mean_corr.csv``) rather than as about 20
    metrics a pair: with 10 groups, 720 of a run's ~1000 metrics and most of its write to
    the store."""
    pair = next((part for part in key.split("/") if "__" in part), None)
    if pair is None:
        return True
    group_a, _, group_b = pair.partition("__")
    return target in (group_a, group_b)


def checks_metrics(checks: ChecksResult, target: str) -> list[Metric]:
    """The checks' metrics (the null's pair tests only those with ``target``); a check
    that did not run logs none."""
    metrics: list[Metric] = []
    if (null := checks.null) is not None:
        metrics += [("null/n_null", null.n_null, 0), ("null/n_tests", null.n_tests, 0)]
        metrics += [("null/p_floor", null.p_floor, 0)]
        for name, comparison in null.tests().items():
            if not with_target(name, target):
                continue  # in null_group_mean_corr.csv, with its Holm p
            metrics += _comparison(name, comparison)
            metrics += [(null_metric(name, "p_holm"), null.p_holm[name], 0)]
        metrics += [(f"null/{name}", value, 0) for name, value in null.diagnostics.items()]
    if (stability := checks.stability) is not None:
        metrics += _series("stability/axis_cos", stability.axis_cos)
        metrics += [("stability/axis0_cos", stability.axis_cos[0], 0)]
        metrics += _numbered("stability/axis_cos", stability.axis_cos)
        metrics += _series("stability/loo_axis_cos_min", stability.loo_axis_cos_min)
        metrics += _series("stability/eigengap_ratio", stability.eigengap_ratio)
        metrics += [("stability/n_degenerate", int(stability.degenerate.sum()), 0)]
        metrics += [("stability/subspace_angle_deg", stability.subspace_angle_deg, 0)]
        metrics += [("stability/n_resamples", stability.n_resamples, 0)]
        metrics += _series("interval/singular_value_lo", stability.singular_value_lo)
        metrics += _series("interval/singular_value_hi", stability.singular_value_hi)
        metrics += _numbered("sv", stability.singular_value_lo, "_lo")
        metrics += _numbered("sv", stability.singular_value_hi, "_hi")
    if (heldout := checks.heldout) is not None:
        for variant, prefix in (("leave_one_out", "heldout/"), ("remainder", "heldout/remainder_")):
            median = heldout.subspace_rank_pct_median(variant)
            if median is not None:
                metrics += [(f"{prefix}subspace_rank_pct_median", median, 0)]
                metrics += _series(
                    f"{prefix}axis_rank_pct_median", heldout.axis_rank_pct_median(variant)
                )
        metrics += [("heldout/n_remainder", len(heldout.of("remainder")), 0)]
        if heldout.precision_at_k is not None:
            metrics += [("heldout/precision_at_k", heldout.precision_at_k, 0)]
            metrics += [("heldout/k", heldout.precision_k, 0)]
        if heldout.pool_rank_pct_median is not None:
            metrics += [("heldout/pool_rank_pct_median", heldout.pool_rank_pct_median, 0)]
    if (confounds := checks.confounds) is not None:
        # component 1 only: a step series would show its last component in run tables
        metrics += [
            (f"confound/spearman_{name}", rho[0], 0) for name, rho in confounds.spearman.items()
        ]
        metrics += [("confound/n_flagged", len(confounds.flagged()), 0)]
    if (view := checks.global_view) is not None:
        metrics += [("global/n_global", view.n_global, 0)]
        metrics += [("global/group_variance_share", view.group_variance_share, 0)]
        metrics += _series("global/axis_max_cos", view.axis_max_cos)
        metrics += _series("global/axis_share", view.axis_share)
    if (order := checks.order) is not None:
        metrics += [(f"order/{name}", value, 0) for name, value in order_metrics(order).items()]
    # nan (a constant property, a zero spectrum) is logged as nan: the name is always there
    return [(key, float(value), step) for key, value, step in metrics]


def order_metrics(order: CyclicOrder | LinearOrder) -> dict[str, float]:
    """The order test's numbers: for a cyclic group the angular neighbours and the
    Fisher-Lee circular correlation, for a linear one the (partial) Spearman, each with
    its permutation p."""
    names = (
        ("neighbours", "neighbours_p", "circular_corr", "circular_corr_p")
        if isinstance(order, CyclicOrder)
        else ("spearman", "spearman_p", "partial_spearman", "partial_spearman_p")
    )
    found = {name: float(getattr(order, name)) for name in names}
    found |= {"n_members": len(order.words), "n_permutations": order.n_permutations}
    return found | {"exact": float(order.exact)}


def sweep_metrics(statuses: Sequence[str], n_skipped: int) -> list[Metric]:
    """A sweep parent's counts: its children, those of each status, the jobs skipped."""
    metrics: list[Metric] = [("n_children", len(statuses), 0)]
    metrics += [(f"n_{s.lower()}", statuses.count(s), 0) for s in SWEEP_STATUSES]
    return [*metrics, ("n_skipped", n_skipped, 0)]


def _series(key: str, values: Sequence[float]) -> list[Metric]:
    return [(key, float(v), step) for step, v in enumerate(values)]


def _numbered(prefix: str, values: Sequence[float], suffix: str = "") -> list[Metric]:
    """``<prefix>_<k><suffix>`` for the first ``KEY_COMPONENTS`` values, k from 1."""
    return [
        (f"{prefix}_{k}{suffix}", float(v), 0)
        for k, v in enumerate(values[:KEY_COMPONENTS], start=1)
    ]


def _comparison(test: str, comparison: NullComparison) -> list[Metric]:
    return [
        (null_metric(test, field), getattr(comparison, field), 0)
        for field in NULL_COMPARISON_FIELDS
    ]


def result_tags(result: AnalysisResult, checks: ChecksResult) -> dict[str, str]:
    """Tags a runs table shows: the first axis' ends, and the checks' warnings."""
    first_axis = [t for t in result.top_tokens if t.component == 0]
    tags = {
        key: " ".join(t.text for t in first_axis if t.side == side and t.rank <= TOP_TOKENS_IN_TAGS)
        for key, side in ((Tag.AXIS0_TOP, "top"), (Tag.AXIS0_BOTTOM, "bottom"))
    }
    tags[Tag.RANDOM_STATE] = str(checks.random_state)
    if checks.null is not None:
        tags[Tag.NULL_POOL] = checks.null.pool_rule
        tags[Tag.NULL_MATCH] = checks.null.match
    if checks.stability is not None:
        tags[Tag.INTERVAL_METHOD] = checks.stability.method
    if checks.order is not None:
        kind = "cyclic" if isinstance(checks.order, CyclicOrder) else "linear"
        tags[Tag.ORDER] = f"{kind}: {' '.join(checks.order.words)}"
    if checks.stability is not None and checks.stability.degenerate.any():
        tags[Tag.WARNING_DEGENERATE_AXES] = ",".join(
            str(k) for k in np.flatnonzero(checks.stability.degenerate)
        )
    if result.components_clamped:  # the run projected on fewer axes than it was asked
        tags[Tag.WARNING_N_COMPONENTS] = (
            f"n_components={result.n_components_requested} but {result.target} has "
            f"{len(result.target_ids)} tokens{' (centered)' if result.center else ''}: "
            f"projected on {result.n_components}"
        )
    if checks.confounds is not None and checks.confounds.flagged():
        tags[Tag.WARNING_CONFOUNDS] = " ".join(
            f"axis{k}:{name}={rho:+.2f}" for k, name, rho in checks.confounds.flagged()
        )
    return tags


def run_note(
    name: str, result: AnalysisResult, checks: ChecksResult, tags: Mapping[str, str]
) -> str:
    """The run's description (``mlflow.note.content``: Markdown on the run's page, and the
    runs table's Description column): the target and its kept words, then one line each
    for the first axis' share with its null percentile, the group-mean r with the other
    groups, the first axis' stability and ends, and the warnings among ``tags``."""
    words = result.target_words
    lines = [f"**{name}**: {len(words)} words kept, `{' '.join(words)}`", ""]
    share = (
        f"- s1 share (axis 1's share of the spectrum) {result.svd.explained_variance_ratio[0]:.3f}"
    )
    if (null := checks.null) is not None:
        share += (
            f", null percentile {null.s1_share.percentile:.1f} of {null.n_null} matched random "
            f"groups (Holm p {null.p_holm['s1_share']:.3g})"
        )
    lines.append(share)
    tests = checks.null.tests() if checks.null is not None else {}
    for variant, stat in result.mean_corr.items():
        found = []
        for a, b, value in stat.pairs():
            if result.target in (a, b):
                comparison = tests.get(pair_metric(mean_corr_key(variant), a, b))
                pct = f" (null pct {comparison.percentile:.0f})" if comparison else ""
                found.append(f"{b if a == result.target else a} {value:+.3f}{pct}")
        if found:
            lines.append(f"- group-mean r {variant}: {', '.join(found)}")
    if (stability := checks.stability) is not None:
        lines.append(
            f"- axis 1 stability {stability.axis_cos[0]:.2f} (mean |cos| with the axis of "
            f"{stability.n_resamples} jackknife subsets)"
        )
    if Tag.AXIS0_TOP in tags:
        lines.append(
            f"- axis 1 ends: top `{tags[Tag.AXIS0_TOP]}`, bottom `{tags.get(Tag.AXIS0_BOTTOM, '')}`"
        )
    warning = "embsvd.warning."
    lines += [
        f"- warning {key.removeprefix(warning)}: {value}"
        for key, value in sorted(tags.items())
        if key.startswith(warning)
    ]
    return "\n".join(lines)


# --- reading runs back: what figures and tables are drawn from ------------------------------

# step series that tools reading a sweep back use (the tables: artifacts.TABLES_READ)
SERIES_READ = (
    "singular_value",
    "explained_variance_ratio",
    "interval/singular_value_lo",
    "interval/singular_value_hi",
)


_BOOLEANS = {"true": True, "false": False}
_PART_TAGS = {
    "model": Tag.MODEL,
    "target": Tag.TARGET_GROUP,
    "center": Tag.CENTER,
    "normalize_rows": Tag.NORMALIZE_ROWS,
    "geometry": Tag.GEOMETRY,
}


@dataclass(frozen=True)
class LoggedRun:
    """A FINISHED run as read back from a tracking store.

    ``series`` holds the step series of ``SERIES_READ`` that the run logged (ordered by
    step), ``tables`` the CSV artifacts of ``artifacts.TABLES_READ`` it logged, as rows
    of strings. What the run analysed (``parts``) is read from its tags; a run that lacks
    one of them (older embsvd, a hand-made record) is read from its name instead, and a
    run whose tags and name do not say is refused here, when it is read, rather than
    drawn under a wrong label. ``params``: its config as logged (``analysis.random_state``:
    text), what tells replicates apart (``embsvd.tracking.replicates``).
    """

    run_id: str
    name: str
    experiment: str
    tags: Mapping[str, str]
    metrics: Mapping[str, float]
    series: Mapping[str, tuple[float, ...]]
    tables: Mapping[str, tuple[Mapping[str, str], ...]]
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.parts  # noqa: B018 (refused now, not when a figure first asks)

    @functools.cached_property
    def parts(self) -> RunName:
        """The model label, target, centering, unit rows and geometry: from the tags
        (``embsvd.model``, ``.revision``, ``.matrix``, ``.target_group``, ``.center``,
        ``.normalize_rows``, ``.geometry``), each one missing from the run name.

        Raises:
            ValueError: a part is neither tagged nor in a name ``parse_run_name`` reads.
        """
        tags = self.tags
        tagged = {
            "model": tagged_model_label(tags),
            "target": tags.get(Tag.TARGET_GROUP),
            "center": _BOOLEANS.get(tags.get(Tag.CENTER, "")),
            "normalize_rows": _BOOLEANS.get(tags.get(Tag.NORMALIZE_ROWS, "")),
            "geometry": tags.get(Tag.GEOMETRY) or None,
        }
        missing = [part for part, value in tagged.items() if value is None]
        if not missing:
            return RunName(**tagged)
        try:
            named = parse_run_name(self.name)
        except ValueError as error:
            raise ValueError(
                f"run {self.run_id}: its tags do not say its {', '.join(missing)} "
                f"(tags {', '.join(_PART_TAGS[p] for p in missing)}) and its name does not "
                f"either: {error}"
            ) from None
        return dataclasses.replace(named, **{p: v for p, v in tagged.items() if v is not None})

    @property
    def model_label(self) -> str:
        """The model label: ``<model>[@<revision>][:output]``."""
        return self.parts.model

    @property
    def target(self) -> str:
        return self.parts.target

    @property
    def variant(self) -> str:
        """``centered`` or ``raw``, with ``+unit_rows`` and ``+whitened`` where they
        apply."""
        return self.parts.variant

    @property
    def space(self) -> str:
        """The geometry the group means live in (centering does not change them): the
        variant without ``centered``/``raw``, e.g. ``+whitened``, or ``""``."""
        return self.parts.space

    def table(self, file: str) -> tuple[Mapping[str, str], ...]:
        """The rows of a CSV artifact; empty when the run did not log it."""
        return self.tables.get(file, ())


@dataclass(frozen=True)
class Sweep:
    """The runs of one sweep (or of one filter) that figures are made from."""

    name: str  # names the folder of figures
    selection: str  # how the runs were chosen, in words
    parent_run_id: str | None
    runs: tuple[LoggedRun, ...]  # FINISHED runs, in job order
    left_out: tuple[tuple[str, str], ...] = ()  # (run name, status) of runs not FINISHED
