"""A real sweep with replicates, as a user types it: ``experiments/run.py -m`` over two
tiny checkpoints, each paired with its own target group (``hydra.sweeper.zip``), at three
random states; then ``embsvd figures replicates=[analysis.random_state]`` and
``embsvd export --replicates analysis.random_state``, whose pooled rows (n=3) are checked
against the values in the store."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from embsvd.pipeline import cli
from embsvd.pipeline.figures_job import figures_job
from embsvd.tracking.replicates import pool
from tests.conftest import CONFIG_DIR, tiny_embeddings, write_tiny_bert
from tests.test_sweeps import run_sweep, store_uri

pytestmark = pytest.mark.slow

SEED = "analysis.random_state"
PAIRS = {"tiny_a": "digits", "tiny_b": "eu_countries"}  # model -> its target, zipped
METRIC = "null/s1_share/percentile"  # a value that moves with the random state


@dataclass(frozen=True)
class Replicated:
    root: Path
    uri: str
    sweep_id: str
    runs: list  # the sweep's runs, as MLflow returns them


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory, migrated_store_file: Path) -> Replicated:
    root = tmp_path_factory.mktemp("replicates")
    (root / "store").mkdir()
    shutil.copyfile(migrated_store_file, root / "store" / "mlflow.db")
    models = root / "conf" / "model"
    models.mkdir(parents=True)
    for seed, name in enumerate(PAIRS):
        write_tiny_bert(root / name, W_E=tiny_embeddings(seed))
        (models / f"{name}.yaml").write_text(f"name: {name}\npath: {root / name}\n")
    sweep = run_sweep(
        root,
        f"hydra.searchpath=[file://{root / 'conf'}]",
        f"model={','.join(PAIRS)}",
        f"target={','.join(PAIRS.values())}",
        "hydra.sweeper.zip=[[model,target]]",
        f"{SEED}=0,1,2",
        "analysis.n_null=40",
        "analysis.n_resamples=20",
        "analysis.n_global=4",
        "analysis.figures=false",
    )
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    sweep_id = (root / "sweep" / "embsvd_sweep_id").read_text().strip()
    client = MlflowClient(store_uri(root))
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`embsvd.sweep_id` = '{sweep_id}'")
    [parent] = [r for r in runs if r.data.tags.get("embsvd.role") == "sweep"]
    assert parent.info.status == "FINISHED", sweep.stderr[-3000:]
    runs = [r for r in runs if r.data.tags.get("embsvd.role") != "sweep"]
    assert len(runs) == 6, [r.info.run_name for r in runs]
    return Replicated(root, store_uri(root), sweep_id, runs)


def read_rows(file: Path) -> list[dict[str, str]]:
    with open(file, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def store_values(replicated: Replicated, model: str, metric: str) -> list[float]:
    return [
        r.data.metrics[metric]
        for r in sorted(replicated.runs, key=lambda r: r.data.params[SEED])
        if r.data.params["model.name"] == model and r.data.params["analysis.center"] == "True"
    ]


def test_the_zipped_sweep_ran_each_model_with_its_own_group(replicated):
    jobs = sorted(
        (r.data.params["model.name"], r.data.params["target"], r.data.params[SEED])
        for r in replicated.runs
    )
    assert jobs == sorted((m, t, s) for m, t in PAIRS.items() for s in "012")


def figures_command(replicated: Replicated, *overrides: str, out: str = "figures") -> None:
    """``embsvd figures`` in this process: the figures config composed, the job run."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "figures",
            [
                f"tracking.uri={replicated.uri}",
                f"output_dir={replicated.root / out}",
                "top_k=3",
                "formats=[png]",
                "dpi=50",
                "log_to_parent=false",
                *overrides,
            ],
        )
    figures_job(cfg)


def test_figures_pool_the_three_random_states(replicated, capsys):
    figures_command(replicated, f"sweep.sweep_id={replicated.sweep_id}", f"replicates=[{SEED}]")
    folder = replicated.root / "figures" / replicated.sweep_id
    scree = read_rows(folder / "scree_grid.csv")
    assert {r["model"] for r in scree} == set(PAIRS)
    assert {(r["n_replicates"], r["n"], r["replicates"]) for r in scree} == {
        ("3", "3", f"{SEED}=0,1,2")
    }
    pooled = read_rows(folder / "replicates.csv")
    for model in PAIRS:
        (row,) = [r for r in pooled if r["model"] == model and r["metric"] == METRIC]
        values = store_values(replicated, model, METRIC)
        expected = pool(values)
        assert row["n"] == "3" and float(row["mean"]) == pytest.approx(np.mean(values))
        assert float(row["lo"]) == pytest.approx(expected.lo)
        assert float(row["hi"]) == pytest.approx(expected.hi)
        assert float(row["lo"]) <= float(row["mean"]) <= float(row["hi"])
    manifest = json.loads((folder / "sweep.json").read_text())
    assert [entry["n"] for entry in manifest["pooled"]] == [3, 3]
    # a key no run logged is refused, naming the param meant, and nothing is drawn
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        figures_command(replicated, "replicates=[analysis.random_sate]", out="typo")
    assert refused.value.code == 1
    assert "did you mean analysis.random_state?" in capsys.readouterr().err
    assert not (replicated.root / "typo").exists()


def test_the_export_pools_one_row_per_configuration(replicated, tmp_path, capsys):
    out = tmp_path / "pooled.csv"
    options = ["--tracking-uri", replicated.uri, "--output", str(out)]
    assert cli.main(["export", replicated.sweep_id, *options, "--replicates", SEED]) == 0
    said = capsys.readouterr().out
    assert f"2 configurations of sweep {replicated.sweep_id}" in said
    assert f"6 FINISHED runs pooled over {SEED} (n=3)" in said
    rows = read_rows(out)
    assert [row["n"] for row in rows] == ["3", "3"]
    assert f"params.{SEED}" not in rows[0] and "params.target" in rows[0]
    for row in rows:
        values = store_values(replicated, row["params.model.name"], METRIC)
        assert row["params.target"] == PAIRS[row["params.model.name"]]
        assert float(row[f"metrics.{METRIC}.mean"]) == pytest.approx(np.mean(values))
        assert float(row[f"metrics.{METRIC}.lo"]) == pytest.approx(pool(values).lo)
        assert row[f"metrics.{METRIC}.n"] == "3"
    assert cli.main(["export", replicated.sweep_id, *options, "--replicates", "model.nam"]) == 1
    assert "'model.nam' is no param of the selected runs; did you mean model.name?" in (
        capsys.readouterr().err
    )
