"""Replicates pooled: the mean and its Student-t interval against scipy, which runs are
one configuration's replicates (only those that differ in a declared key; exact repeats
refused), and the pooled paper figures from hand-made runs. A real sweep of three random
states, its figures and its export are in ``test_replicates_sweep.py``."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats

from embsvd.figures import replicates as replicate_data
from embsvd.figures.paper import FigureStyle, _theme, scree_figure, write_figure_set
from embsvd.figures.selection import distinct_runs
from embsvd.tracking.contract import LoggedRun, Sweep
from embsvd.tracking.replicates import check_replicate_keys, pool, replicate_sets
from tests.test_figure_data import drawn_texts, logged_run

SEED = "analysis.random_state"


def read_rows(file) -> list[dict[str, str]]:
    with open(file, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --- the pooled value ------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[1.0, 2.0, 4.0], [0.3, 0.31, 0.29, 0.35, 0.2], [5.0, 5.0]])
def test_pool_is_the_mean_and_a_student_t_interval_over_the_replicates(values):
    pooled = pool(values)
    x = np.asarray(values)
    # independently: scipy's t interval of the mean, n - 1 degrees of freedom
    lo = hi = x.mean()  # values all alike: an interval of width 0
    if stats.sem(x) > 0:
        lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert pooled.n == len(values)
    assert pooled.mean == pytest.approx(x.mean(), rel=1e-12)
    assert (pooled.lo, pooled.hi) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    assert pooled.lo <= pooled.mean <= pooled.hi  # the interval covers its estimate
    assert pooled.describe().endswith(f"(95% t interval, n={len(values)})")


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    draws = rng.normal(1.0, 2.0, size=(4000, 3))
    covered = [(p := pool(row)).lo <= 1.0 <= p.hi for row in draws]
    assert np.mean(covered) == pytest.approx(0.95, abs=0.01)


def test_one_replicate_has_no_interval_and_says_so():
    one = pool([0.5])
    assert (one.mean, one.n) == (0.5, 1)
    assert math.isnan(one.lo) and math.isnan(one.hi)
    assert one.describe() == "0.5 (n=1: no interval)"
    # a replicate that did not measure the value is not counted
    two = pool([1.0, math.nan, 3.0, math.inf])
    assert (two.mean, two.n) == (2.0, 2)
    none = pool([])
    assert none.n == 0 and math.isnan(none.mean) and none.describe() == "no value (n=0)"
    with pytest.raises(ValueError, match=r"confidence=1.5: a coverage between 0 and 1"):
        pool([1.0, 2.0], confidence=1.5)


# --- which runs are replicates ---------------------------------------------------------------


def params(seed: int, **more: str) -> dict[str, str]:
    return {
        "model.name": "m",
        "target": "g",
        "analysis.center": "True",
        "analysis.n_null": "40",
        SEED: str(seed),
        "tracking.uri": f"sqlite:///store{seed}.db",  # where a run is logged sets nothing apart
        "model.display_name": f"M{seed}",
    } | more


def sets_of(runs: list[dict[str, str]], keys: list[str]) -> list[list[int]]:
    found = replicate_sets(list(range(len(runs))), keys, runs.__getitem__, str)
    return [list(s.members) for s in found]


def test_runs_are_pooled_only_where_they_differ_in_a_declared_key():
    runs = [params(0), params(1), params(2), params(0, **{"analysis.n_null": "80"})]
    assert sets_of(runs, [SEED]) == [[0, 1, 2], [3]]
    found = replicate_sets(runs, [SEED], lambda p: p, str)
    assert found[0].describe() == f"{SEED}=0,1,2"
    assert "tracking.uri" not in found[0].shared and SEED not in found[0].shared
    assert found[0].shared["analysis.n_null"] == "40"
    # n_null declared instead: only the two runs of seed 0 differ in it alone
    assert sets_of(runs, ["analysis.n_null"]) == [[0, 3], [1], [2]]
    # both declared: every run is a replicate of one configuration
    assert sets_of(runs, [SEED, "analysis.n_null"]) == [[0, 1, 2, 3]]


def test_a_key_pools_every_param_under_it():
    models = [("a", "x"), ("b", "y")]
    runs = [params(0, **{"model.revision": r, "model.name": n}) for r, n in models]
    assert sets_of(runs, ["model"]) == [[0, 1]]  # model.name and model.revision
    assert sets_of(runs, ["model.revision"]) == [[0], [1]]  # the names differ too
    seeds = [params(seed, **{"model.revision": r}) for seed, r in [(0, "a"), (1, "b")]]
    assert sets_of(seeds, ["model"]) == [[0], [1]]  # they differ in the seed too
    assert sets_of(seeds, ["model", SEED]) == [[0, 1]]


def test_runs_that_agree_on_every_param_are_refused_not_pooled():
    runs = [params(0), params(1), params(1)]
    message = r"runs 1 and 2 agree on every param, the replicate keys included "
    message += r"\(analysis.random_state=1\): one configuration run twice"
    with pytest.raises(ValueError, match=message):
        sets_of(runs, [SEED])


@pytest.mark.parametrize(
    ("keys", "runs", "message"),
    [
        (
            [SEED.replace("random", "rando")],
            [params(0)],
            r"'analysis\.rando_state' is no param "
            r"of the selected runs; did you mean analysis\.random_state\?",
        ),  # fmt: skip
        ([SEED], [params(0), {}], r"run 1 logged no params, so nothing tells which replicate"),
        (["analysis random_state"], [params(0)], r"'analysis random_state' is not a param key"),
        ([SEED, SEED], [params(0)], r"analysis\.random_state given twice"),
    ],
)
def test_keys_that_cannot_pool_are_named(keys, runs, message):
    with pytest.raises(ValueError, match=message):
        sets_of(runs, keys)


def test_check_replicate_keys_names_the_setting():
    assert check_replicate_keys([SEED, "model"]) == (SEED, "model")
    with pytest.raises(ValueError, match=r"^replicates: 3 is not a param key"):
        check_replicate_keys([3])  # type: ignore[list-item]


# --- the paper figures -----------------------------------------------------------------------


def replicate_run(run_id: str, seed: int, S: tuple[float, ...], digest: str, **more) -> LoggedRun:
    """A centered run of model m, group g, at ``analysis.random_state=seed``."""
    overrides = f"model=m target=g analysis.random_state={seed}"
    overrides += "".join(f" {k}={v}" for k, v in more.items())
    run = logged_run(
        "m/g/centered",
        singular_values=S,
        metrics={"s1_share": S[0] ** 2 / sum(s * s for s in S)},
        tags={"embsvd.overrides": overrides, "embsvd.config_hash": digest * 64},
        run_id=run_id,
    )
    return dataclasses.replace(run, params=params(seed, **more))


def replicated_sweep() -> Sweep:
    """Three random states of one configuration (the first run twice, one config hash),
    one of another n_null, and a raw run."""
    raw = dataclasses.replace(
        logged_run("m/g/raw", run_id="raw", tags={"embsvd.overrides": "analysis.center=false"}),
        params=params(0, **{"analysis.center": "False"}),
    )
    return Sweep(
        "s",
        "",
        None,
        (
            replicate_run("r0-first", 0, (3.0, 2.0, 1.0), "a"),
            replicate_run("r0", 0, (3.0, 2.0, 1.0), "a"),
            replicate_run("r1", 1, (3.0, 1.5, 1.0), "b"),
            replicate_run("r2", 2, (4.0, 2.0, 0.5), "c"),
            replicate_run("other", 0, (2.0, 2.0, 2.0), "d", **{"analysis.n_null": "80"}),
            raw,
        ),
    )


@pytest.fixture
def paper_theme():
    with _theme():
        yield
    plt.close("all")


def test_pooled_scree_rows_are_the_mean_share_with_its_interval(paper_theme):
    distinct, _ = distinct_runs(replicated_sweep(), warn=False)
    rows = replicate_data.pooled_scree_rows(distinct, [SEED])
    pooled = [r for r in rows if r["n_replicates"] == 3]
    assert len(pooled) == 3  # components
    shares = np.array([S / np.linalg.norm(S) for S in [(3, 2, 1), (3, 1.5, 1), (4, 2, 0.5)]])
    for row in pooled:
        k = row["component"]
        expected = pool(shares[:, k])
        assert row["mean"] == pytest.approx(shares[:, k].mean(), rel=1e-12)
        assert (row["lo"], row["hi"], row["n"]) == (
            pytest.approx(expected.lo), pytest.approx(expected.hi), 3,
        )  # fmt: skip
        assert row["run_ids"] == "r0 r1 r2"
        assert row["replicates"] == f"{SEED}=0,1,2"
        assert row["setting"] == "n_null default"  # what sets it apart: not the seed
    alone = {(r["setting"], r["variant"], r["n_replicates"]) for r in rows if r not in pooled}
    assert alone == {("n_null=80", "centered", 1), ("", "raw", 1)}
    assert all(math.isnan(r["lo"]) for r in rows if r["n_replicates"] == 1)

    fig, returned = scree_figure(distinct, FigureStyle(), rows)
    assert returned == rows  # the CSV holds the pooled values, as drawn
    texts = drawn_texts(fig)
    assert "centered · n_null default · n=3" in texts
    assert "centered · n_null=80 · n=1" in texts and "raw · n=1" in texts
    assert replicate_data.INTERVAL_LABEL in texts
    assert "95% jackknife interval" not in texts


def test_the_figure_set_pools_replicates_and_still_leaves_out_repeats(tmp_path, caplog):
    style = FigureStyle(formats=("png",), dpi=40, replicates=(SEED,))
    with caplog.at_level(logging.WARNING):
        write_figure_set(replicated_sweep(), tmp_path, style)
    assert "m/g/centered (run r0-first) -> m/g/centered (run r0)" in caplog.text
    folder = tmp_path / "s"
    scree = read_rows(folder / "scree_grid.csv")
    assert {"mean", "lo", "hi", "n", "n_replicates", "values"} <= set(scree[0])
    assert {r["n"] for r in scree if r["run_ids"] == "r0 r1 r2"} == {"3"}
    metrics = read_rows(folder / "replicates.csv")
    (s1,) = [r for r in metrics if r["metric"] == "s1_share" and r["n"] == "3"]
    values = [9 / 14, 9 / 12.25, 16 / 20.25]
    assert float(s1["mean"]) == pytest.approx(np.mean(values))
    assert float(s1["lo"]) < float(s1["mean"]) < float(s1["hi"])
    manifest = json.loads((folder / "sweep.json").read_text())
    assert manifest["style"]["replicates"] == [SEED]
    assert {"replicates": f"{SEED}=0,1,2", "n": 3, "run_ids": ["r0", "r1", "r2"]} in (
        manifest["pooled"]
    )
    assert [r["run_id"] for r in manifest["repeats"]] == ["r0-first"]


def test_a_figure_set_whose_runs_repeat_a_replicate_is_refused(tmp_path):
    runs = replicated_sweep().runs
    # another config hash (its checkpoint changed), yet every param alike: not a replicate
    twin = dataclasses.replace(runs[2], run_id="r1-twin", tags={**runs[2].tags, "x": "1"})
    twin = dataclasses.replace(
        twin, tags={**twin.tags, "embsvd.config_hash": "e" * 64}, name="m/g/centered"
    )
    sweep = dataclasses.replace(replicated_sweep(), runs=(*runs, twin))
    with pytest.raises(ValueError, match=r"runs m/g/centered \(run r1\) and m/g/centered "
                       r"\(run r1-twin\) agree on every param"):  # fmt: skip
        replicate_data.check_replicates(sweep, [SEED])
    assert not (tmp_path / "s").exists()


def test_collapsed_labels_of_replicates():
    assert replicate_data.collapsed(["m", "m"]) == "m"
    assert replicate_data.collapsed(["p@step1", "p@step2"]) == "p@step1|step2"
    assert replicate_data.collapsed(["a", "b@x"]) == "a | b@x"
