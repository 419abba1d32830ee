"""Whole jobs: composed configs, a tiny checkpoint on disk, a real sqlite store, and a real
``experiments/run.py -m`` sweep in a subprocess."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from embsvd import tracking
from embsvd.pipeline import SweepTracking, flatten, run_job
from embsvd.pipeline.job import config_yaml, run_params
from tests.conftest import CONFIG_DIR, PROJECT_ROOT, tiny_embeddings, write_tiny_bert
from tests.test_tracking import read_artifact

CONTRACT_ARTIFACTS = {
    "config.yaml",
    "groups.json",
    "group_mean_corr.csv",
    "group_pairs.csv",  # every pair; metrics: the target's pairs
    "row_cosine.csv",
    "spectrum.csv",
    "top_tokens.csv",
    "projection_histogram.csv",  # the paper's axis figures
    "group_projections.csv",
    # the checks
    "null_spectrum.csv",
    "null_group_mean_corr.csv",
    "stability.csv",
    "stability_loo.csv",
    "heldout.csv",
    "confounds.csv",
    "global_spectrum.csv",
    "axes.csv",  # what a revision sweep's parent aligns across steps
    "undertrained.csv",  # the checkpoint's under-trained tokens
}
# with the per-run figures: the vocabulary explorer's table (a folder) and page
EXPLORER = {"explorer", "explorer.html"}
FIGURES = {"scree.png", "group_mean_corr.png", "row_cosine.png", "projection_component0.png"}


def job_config(tiny_bert: Path, uri: str, experiment: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "model=local",
                f"model.path={tiny_bert}",
                "model.name=tiny_bert",
                f"tracking.uri={uri}",
                f"tracking.experiment={experiment}",
                *overrides,
            ],
        )


def runs_of(uri: str, experiment: str):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id], order_by=["start_time ASC"])


def artifact_names(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    return {Path(a.path).name for a in client.list_artifacts(run_id, path)}


def test_job_logs_the_run_contract(tiny_bert, session_store):
    cfg = job_config(tiny_bert, session_store, "contract-job", "target=eu_countries")
    result = run_job(cfg)
    client, [run] = runs_of(session_store, "contract-job")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "eu_countries · centered · tiny_bert"
    tags = run.data.tags
    assert tags["embsvd.model"] == "tiny_bert"
    assert tags["embsvd.target_group"] == "eu_countries"
    assert tags["embsvd.center"] == "true"
    assert tags["embsvd.source"] == str(tiny_bert.resolve())
    assert len(tags["embsvd.weights_sha256"]) == 64
    assert tags["embsvd.version"]
    assert len(tags.get("mlflow.source.git.commit", "x" * 40)) == 40  # absent outside git
    assert tags["embsvd.env.numpy"] == np.__version__
    assert tags["embsvd.embedding_key"] == "bert.embeddings.word_embeddings.weight"
    # params: the resolved config with dotted keys
    assert run.data.params["analysis.center"] == "True"
    assert run.data.params["model.path"] == str(tiny_bert)
    assert run.data.params["groups.digits.size"] == "None"  # a closed set: all its words
    assert run.data.params["groups.eu_countries.size"] == "10"  # an open one
    # the tiny vocabulary has 8 of the 27 EU countries as single tokens
    assert run.data.metrics["n_tokens"] == 8
    assert run.data.metrics["group_mean_corr/digits__eu_countries"] == pytest.approx(
        result.group_mean_corr.values[0, 1]
    )
    assert "axis_corr/digits__eu_countries" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "singular_value")
    assert sorted(m.step for m in history) == list(range(8))
    artifacts = artifact_names(client, run.info.run_id)
    # a run from a checkout with uncommitted changes carries the diff
    assert ("git_diff.patch" in artifacts) == (tags.get("embsvd.git_dirty") == "true")
    assert artifacts - {"git_diff.patch"} == CONTRACT_ARTIFACTS | {"figures"} | EXPLORER
    assert artifact_names(client, run.info.run_id, "figures") == FIGURES


def test_bad_group_fails_the_run_with_the_reason_and_keeps_the_params(tiny_bert, session_store):
    cfg = job_config(
        tiny_bert,
        session_store,
        "bad-group",
        "groups.digits.words=[Mercury,Venus,Mars]",
        "analysis.n_components=2",  # 3 centered words have 2 axes
    )
    with pytest.raises(ValueError, match="groups.digits: only 0 of 3 words are single tokens"):
        run_job(cfg)
    client, [run] = runs_of(session_store, "bad-group")
    assert run.info.status == "FAILED"
    assert run.data.tags["embsvd.error"].startswith("ValueError: groups.digits: only 0 of 3")
    assert "'Mercury' ('[UNK]'): unknown token" in run.data.tags["embsvd.error"]
    assert run.data.params["groups.digits.words"] == "['Mercury', 'Venus', 'Mars']"
    assert "error.txt" in artifact_names(client, run.info.run_id)


def test_unreadable_checkpoint_fails_its_run(tmp_path, session_store):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="model: no weights in"):
        run_job(job_config(empty, session_store, "bad-ckpt"))
    _, [run] = runs_of(session_store, "bad-ckpt")
    assert run.info.status == "FAILED"


def assert_no_run_opened(uri: str, experiment: str) -> None:
    # settings are refused before the store is touched: not even the experiment exists
    assert MlflowClient(uri).get_experiment_by_name(experiment) is None


def test_raw_run_and_analysis_settings_reach_the_analysis(tiny_bert, session_store):
    cfg = job_config(
        tiny_bert,
        session_store,
        "raw-job",
        "analysis.center=false",
        "analysis.n_components=2",
        "analysis.top_k=4",
        "analysis.figures=false",
    )
    result = run_job(cfg)
    assert result.center is False and result.projections.shape[1] == 2
    client, [run] = runs_of(session_store, "raw-job")
    assert run.info.run_name == "digits · raw · tiny_bert"
    assert run.data.tags["embsvd.center"] == "false"
    assert "figures" not in artifact_names(client, run.info.run_id)
    # raw: the spectrum of the uncentered submatrix, no ~0 last value
    assert run.data.metrics["singular_value_last_over_first"] > 1e-3
    top = client.download_artifacts(run.info.run_id, "top_tokens.csv")
    assert len(Path(top).read_text().splitlines()) == 1 + 2 * 2 * 4


def test_flatten_uses_dotted_keys_and_keeps_lists():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": None,
    }


def test_a_runs_params_leave_out_what_it_does_not_use_as_its_config_hash_does():
    config = {
        "target": "digits",
        "concept": None,
        "groups": {"digits": {"words": ["0", "1"]}, "extra": {"words": [], "size": None}},
        "concepts": {"gender": {"pairs": [["he", "she"]]}, "plural": {"pairs": []}},
        "numbers": {"enabled": False, "max_value": 999},
    }
    assert run_params(config) == {
        "target": "digits",
        "concept": None,
        "groups.digits.words": ["0", "1"],
        "numbers.enabled": False,
    }
    assert "concepts" in config and "extra" in config["groups"]  # the config is left whole
    # a concept analysed: every concept definition (the axes' cosines read them all);
    # numbers on: all their settings; the extra slot with words: a group like another
    used = {
        **config,
        "concept": "gender",
        "groups": {"extra": {"words": ["a", "b"]}},
        "numbers": {"enabled": True, "max_value": 999},
    }
    assert run_params(used) == flatten(used)


def test_config_yaml_is_omegaconfs_text_whatever_it_remembers(tmp_path):
    cfg = job_config(tmp_path, "sqlite:///x.db", "e", "groups=[digits,months]", "target=months")
    container = OmegaConf.to_container(cfg, resolve=True)
    assert config_yaml(container) == OmegaConf.to_yaml(cfg, resolve=True)
    assert config_yaml(container) == OmegaConf.to_yaml(cfg, resolve=True)  # remembered
    cfg.groups.months.size = 5  # one section changed: its text is made again
    assert config_yaml(OmegaConf.to_container(cfg, resolve=True)) == OmegaConf.to_yaml(
        cfg, resolve=True
    )
    # values Python calls equal are written apart, and their texts are not mixed up
    for value in (1, True, 1.0, "1", None, [1], {"1": 1}):
        assert config_yaml({"x": {"v": value}}) == yaml.safe_dump(
            {"x": {"v": value}}, sort_keys=False
        )
    assert config_yaml({}) == "{}\n"


def test_summary_table_reads_runs_back(tiny_bert, session_store):
    run_job(job_config(tiny_bert, session_store, "table", "analysis.figures=false"))
    store = tracking.TrackingStore(session_store, "table")
    from embsvd.tracking.sweeps import format_sweep_table

    [run] = store.find_runs()
    table = format_sweep_table([run]).splitlines()
    assert table[0].split()[:2] == ["run", "status"]
    assert "group-mean r raw (null pct)" in table[0] and "r centered (null pct)" in table[0]
    assert "axis 1 stability" in table[0] and "axis 1 top" in table[0]
    assert table[2].startswith("digits · centered · tiny_bert  FINISHED  eu_countries=")
    cells = table[2].split("eu_countries=")
    for cell, key in zip(
        cells[1:], ["group_mean_corr", "group_mean_corr_centered"], strict=True
    ):  # raw, then centered on the vocabulary's mean, each with its null percentile
        r, percentile = cell.split()[:2]
        metric = f"{key}/digits__eu_countries"
        assert float(r) == pytest.approx(run.metrics[metric], abs=5e-4)
        assert percentile == f"({run.metrics[f'null/{metric}/percentile']:.0f})"
    assert f"{run.metrics['stability/axis0_cos']:.2f}" in cells[2].split()[2:]


def test_pairs_without_the_target_are_read_back_from_the_run_tables(tiny_bert, session_store):
    """A run logs the pair metrics of its target's pairs only; the pairs between two other
    groups are in its tables, and reading the run back gives every pair, exactly."""
    from embsvd.tracking import contract
    from embsvd.tracking.reading import SweepSelection, read_sweep

    experiment = "pairs-without-target"
    cfg = job_config(
        tiny_bert,
        session_store,
        experiment,
        "groups.extra.words=[cat,dog,red,paris]",
        "target=extra",
        "analysis.figures=false",
    )
    result = run_job(cfg)
    client, [run] = runs_of(session_store, experiment)
    logged = run.data.metrics
    pairs = contract.pair_statistics(result)
    assert {(a, b) for _, a, b, _ in pairs} == {
        ("digits", "eu_countries"),
        ("digits", "extra"),
        ("eu_countries", "extra"),
    }
    for prefix, a, b, _ in pairs:
        key = contract.pair_metric(prefix, a, b)
        assert (key in logged) == ("extra" in (a, b)), key
        if prefix.startswith("group_mean_corr"):
            holm = contract.null_metric(key, "p_holm")
            assert (holm in logged) == ("extra" in (a, b)), holm
    assert "group_mean_corr/digits__eu_countries" not in logged
    assert "null/group_mean_corr_centered/digits__eu_countries/percentile" not in logged

    [read] = read_sweep(
        session_store,
        SweepSelection(experiment=experiment, filter_string="attributes.status = 'FINISHED'"),
    ).runs
    for prefix, a, b, value in pairs:
        key = contract.pair_metric(prefix, a, b)
        assert read.metrics[key] == value, key  # exact: the table holds the floats' repr
    # the null's numbers of a pair without the target, as its table has them
    null_rows = {
        (r["variant"], r["group_a"], r["group_b"]): r
        for r in csv.DictReader(
            io.StringIO(read_artifact(client, run.info.run_id, "null_group_mean_corr.csv"))
        )
    }
    row = null_rows[("centered", "digits", "eu_countries")]
    key = "null/group_mean_corr_centered/digits__eu_countries"
    assert read.metrics[f"{key}/p_holm"] == float(row["p_holm"])
    assert read.metrics[f"{key}/sd"] == float(row["null_sd"])
    assert 0 <= read.metrics[f"{key}/percentile"] <= 100
    # the target's pairs: the metrics logged and the tables agree to the bit
    for key, value in logged.items():
        assert read.metrics[key] == value, key


# every message of `validate` is tested in test_validation.py; these go through run_job
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("target=planets", "target: 'planets' is not one of the configured groups"),
        ("analysis.n_components=0", "analysis.n_components: must be at least 1, got 0"),
        ("analysis.top_k=0", "analysis.top_k: must be at least 1, got 0"),
        ("analysis.n_null=1", "analysis.n_null: must be 0 (off) or at least 2, got 1"),
        ("analysis.n_resamples=-5", "analysis.n_resamples: must be 0 (off) or at least 2, got -5"),
        ("analysis.null_neighbours=0", "analysis.null_neighbours: must be at least 1, got 0"),
        ("analysis.alpha=1.5", "analysis.alpha: a level between 0 and 1, got 1.5"),
        ("analysis.remove_global=-1", "analysis.remove_global: must be 0 (off) or more, got -1"),
        (
            "analysis.confound_threshold=2",
            "analysis.confound_threshold: a |Spearman rho| between 0 and 1",
        ),
        ("analysis.precision_k=0", "analysis.precision_k: must be at least 1, got 0"),
        ("analysis.whitening_shrinkage=1.5", "analysis.whitening_shrinkage"),
    ],
)
def test_settings_that_cannot_run_are_refused_before_a_run_opens(
    tiny_bert, session_store, override, message
):
    extra = ["analysis.geometry=whitened"] if "shrinkage" in override else []
    cfg = job_config(
        tiny_bert, session_store, "refused-settings", override, *extra, "analysis.figures=false"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        run_job(cfg)
    assert_no_run_opened(session_store, "refused-settings")


def test_whitened_and_unit_row_geometry_change_the_numbers_not_the_contract(
    tiny_bert, session_store
):
    plain = run_job(job_config(tiny_bert, session_store, "geometry", "analysis.figures=false"))
    whitened = run_job(
        job_config(
            tiny_bert,
            session_store,
            "geometry",
            "analysis.geometry=whitened",
            "analysis.normalize_rows=true",
            "analysis.figures=false",
        )
    )
    client, [_, run] = runs_of(session_store, "geometry")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "digits · centered · unit rows · whitened · tiny_bert"
    assert run.data.tags["embsvd.geometry"] == "whitened"
    assert run.data.tags["embsvd.normalize_rows"] == "true"
    assert run.data.params["analysis.geometry"] == "whitened"
    assert 0 < run.data.metrics["geometry/whitening_shrinkage"] <= 1  # Ledoit-Wolf
    assert not np.allclose(plain.svd.singular_values, whitened.svd.singular_values)
    # the whitened spectrum is flat by construction: no global view, no decorrelated r
    assert "global/group_variance_share" not in run.data.metrics
    assert not any(k.startswith("group_mean_corr_decorrelated/") for k in run.data.metrics)
    assert "group_mean_corr_centered/digits__eu_countries" in run.data.metrics
    assert run.data.tags["embsvd.global_view"].startswith("skipped: the whitened geometry")
    expected = CONTRACT_ARTIFACTS - {"config.yaml", "global_spectrum.csv"}
    assert artifact_names(client, run.info.run_id) >= expected


# --- custom groups: the `extra` slot and group files -------------------------------------


def test_extra_group_from_the_command_line_is_analysed(tiny_bert, session_store):
    cfg = job_config(
        tiny_bert,
        session_store,
        "extra-group",
        "groups.extra.words=[cat,dog,red,paris]",
        "target=extra",
        "analysis.figures=false",
    )
    run_job(cfg)
    client, [run] = runs_of(session_store, "extra-group")
    assert run.info.status == "FINISHED" and run.info.run_name == "extra · centered · tiny_bert"
    assert run.data.metrics["n_tokens"] == 4
    assert "group_mean_corr/digits__extra" in run.data.metrics


def test_a_closed_set_that_loses_a_member_is_run_and_flagged(tiny_bert, session_store):
    cfg = job_config(
        tiny_bert,
        session_store,
        "incomplete-group",
        "groups.extra.words=[France,Germany,Czechia,Italy,Spain]",
        "groups.extra.closed=true",
        "groups.extra.order=linear",
        "target=extra",
        "analysis.figures=false",
    )
    run_job(cfg)
    client, [run] = runs_of(session_store, "incomplete-group")
    assert run.info.status == "FINISHED" and run.data.metrics["n_tokens"] == 4
    assert run.data.tags["embsvd.warning.incomplete_groups"] == "extra: Czechia"
    assert run.data.tags["embsvd.order"] == "linear: France Germany Italy Spain"
    assert "order/spearman" in run.data.metrics
    groups = json.loads(read_artifact(client, run.info.run_id, "groups.json"))
    assert groups["extra"]["incomplete"] is True and groups["extra"]["closed"] is True


def test_empty_extra_slot_is_not_a_group(tiny_bert, session_store):
    run_job(job_config(tiny_bert, session_store, "no-extra", "analysis.figures=false"))
    _, [run] = runs_of(session_store, "no-extra")
    assert not [k for k in run.data.metrics if "extra" in k]


def test_group_file_adds_its_groups(tiny_bert, session_store, tmp_path):
    groups = tmp_path / "my_groups.yaml"
    groups.write_text(
        "capitals:\n  words: [Paris, Rome, Athens]\n  size: 3\n"
        "pets:\n  words: [cat, dog]\n  description: two animals\n"
    )
    cfg = job_config(
        tiny_bert,
        session_store,
        "group-file",
        f"group_files=[{groups}]",
        "target=capitals",
        "analysis.n_components=2",  # 3 centered words have 2 axes
        "analysis.figures=false",
    )
    run_job(cfg)
    client, [run] = runs_of(session_store, "group-file")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["n_tokens"] == 3
    assert {"group_mean_corr/capitals__pets", "group_mean_corr/capitals__digits"} <= set(
        run.data.metrics
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"group_files: .*missing\.yaml is not a file"),
        ("- just\n- a list\n", r"group_files: .*bad\.yaml must map group names to specs"),
        ("digits:\n  words: [a, b]\n", r"defines group 'digits', which is already configured"),
        ("g:\n  wrods: [a, b]\n", r"group_files: group 'g' in .*bad\.yaml: Key 'wrods' not in"),
    ],
)
def test_bad_group_file_is_refused_before_a_run_opens(
    tiny_bert, session_store, tmp_path, content, message
):
    name = "missing.yaml" if content is None else "bad.yaml"
    if content is not None:
        (tmp_path / name).write_text(content)
    experiment = f"bad-group-file-{abs(hash(message)) % 10**6}"
    cfg = job_config(tiny_bert, session_store, experiment, f"group_files=[{tmp_path / name}]")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run_job(cfg)
    assert_no_run_opened(session_store, experiment)


def test_run_tags_name_matrix_form_and_config_hash(tiny_bert, session_store):
    run_job(job_config(tiny_bert, session_store, "tags", "analysis.figures=false"))
    _, [run] = runs_of(session_store, "tags")
    tags = run.data.tags
    assert tags["embsvd.matrix"] == "input"
    assert tags["embsvd.target_forms"] == "bare"
    assert tags["embsvd.quantization"] == "F32"
    assert tags["embsvd.tied_embeddings"] == "unknown"  # a BERT encoder without a head
    assert tags["embsvd.tensor_key"] == tags["embsvd.embedding_key"]
    assert len(tags["embsvd.config_hash"]) == 64
    assert "embsvd.revision" not in tags  # not a Hub checkpoint


def test_seeded_runs_are_identical_and_another_seed_moves_only_resampled_numbers(
    tiny_bert, session_store
):
    for seed in (3, 3, 4):
        run_job(
            job_config(
                tiny_bert,
                session_store,
                "seeds",
                f"analysis.random_state={seed}",
                "analysis.figures=false",
            )
        )
    _, (first, again, other) = runs_of(session_store, "seeds")
    assert first.data.metrics == again.data.metrics
    resampled = ("null/", "interval/", "stability/axis", "stability/subspace", "order/")
    moved = {k for k in first.data.metrics if first.data.metrics[k] != other.data.metrics[k]}
    assert moved and all(k.startswith(resampled) for k in moved), moved
    assert "null/s1_share/mean" in moved
    assert other.data.tags["embsvd.random_state"] == "4"


def test_an_interrupt_dropped_where_it_was_raised_still_stops_the_sweep():
    """Python prints and drops a KeyboardInterrupt raised inside a weakref callback; the
    sweep's note of the signal makes the next job stop (and the sweep end KILLED)."""
    callback = SweepTracking()
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        callback._interrupt(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt, match="interrupted"):
        callback.on_job_start(config=None)


def test_skip_existing_reruns_a_job_whose_weights_were_replaced(tiny_bert, session_store):
    """The config hash holds the checkpoint's content: new weights at the same path are a
    new config, so a resumed sweep does not reuse the run of the old ones."""
    settings = ["tracking.skip_existing=true", "analysis.figures=false"]
    cfg = job_config(tiny_bert, session_store, "replaced-weights", *settings)
    assert run_job(cfg) is not None
    assert run_job(cfg) is None  # the same weights: skipped
    write_tiny_bert(tiny_bert, tiny_embeddings(seed=5))  # same path, same size, new values
    assert run_job(cfg) is not None
    client, runs = runs_of(session_store, "replaced-weights")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    first, second = (r.data.tags for r in runs)
    assert first["embsvd.config_hash"] != second["embsvd.config_hash"]
    assert first["embsvd.weights_sha256"] != second["embsvd.weights_sha256"]


def test_a_failed_run_stores_its_error_without_the_secret_it_quotes(tmp_path, session_store):
    """An exception may quote a URI with its password: the error tag and error.txt keep
    the message, with the secret as ***."""
    missing = tmp_path / "weights?token=hunter2"
    quoted = f"model.path='{missing}'"  # quoted: the value holds '='
    cfg = job_config(tmp_path, session_store, "secret-error", quoted, "analysis.figures=false")
    with pytest.raises(FileNotFoundError, match="hunter2"):  # the caller sees it as raised
        run_job(cfg)
    client, [run] = runs_of(session_store, "secret-error")
    assert run.info.status == "FAILED"
    assert "token=***" in run.data.tags["embsvd.error"]
    assert "hunter2" not in run.data.tags["embsvd.error"]
    error_txt = read_artifact(client, run.info.run_id, "error.txt")
    assert "token=***" in error_txt and "hunter2" not in error_txt


def test_a_job_collects_earlier_garbage_before_freezing_the_heap():
    """``settle_heap`` (each job's start) moves what is alive to the permanent generation,
    after collecting the cycles earlier jobs left: those would otherwise never be freed."""
    import gc
    import weakref

    from embsvd.pipeline.job import settle_heap

    class Node:
        pass

    left = Node()
    left.self = left  # a cycle: only the cyclic collector frees it
    dead = weakref.ref(left)
    del left
    settle_heap()
    assert dead() is None
    assert gc.get_freeze_count() > 0
    frozen = gc.get_freeze_count()
    settle_heap()  # a second job's: what it froze stays frozen
    assert gc.get_freeze_count() >= frozen


def test_the_first_settle_after_a_start_with_the_collector_off_freezes_without_a_pass():
    """With the collector off since the process's start (``experiments/run.py``), the
    first ``settle_heap`` freezes what is there, its few MB of garbage too, without the
    0.2 s pass over every object; from then on the collector is on and each settle
    collects first."""
    import gc
    import weakref

    from embsvd.pipeline.job import settle_heap

    class Node:
        pass

    gc.disable()
    try:
        left = Node()
        left.self = left
        kept = weakref.ref(left)
        del left
        settle_heap()
        assert gc.isenabled()
        assert kept() is not None  # frozen with the start's objects, not collected
        later = Node()
        later.self = later
        dead = weakref.ref(later)
        del later
        settle_heap()  # the collector is on: this one collects
        assert dead() is None
    finally:
        gc.enable()


def test_a_single_run_starts_with_the_collector_off_until_its_job_settles_the_heap():
    """``experiments/run.py`` turns the cyclic collector off before its imports; the job's
    ``settle_heap`` turns it on (a sweep's open does, see ``test_sweeps``)."""
    import gc
    import runpy

    from embsvd.pipeline.job import settle_heap

    try:
        runpy.run_path(str(PROJECT_ROOT / "experiments" / "run.py"), run_name="run_script")
        assert not gc.isenabled()
        settle_heap()
        assert gc.isenabled()
    finally:
        gc.enable()


def test_embsvd_run_gives_the_collector_back_as_it_found_it(tmp_path, monkeypatch, capsys):
    """``embsvd run`` in a process that goes on (a notebook, a test): the collector is on
    afterwards even when no job ran to settle the heap (``--cfg job`` composes only)."""
    import gc

    from embsvd.pipeline import app

    monkeypatch.chdir(PROJECT_ROOT)
    assert gc.isenabled()
    assert app.run_app("run", ["--cfg", "job", "target=eu_countries"]) == 0
    assert "target: eu_countries" in capsys.readouterr().out
    assert gc.isenabled()
