"""The benchmark in its small mode: every case runs, and the report has every field."""

from __future__ import annotations

import json

import pytest
from benchmark import CASES, SCALE_MODES, SIDES, SMALL_SCALE_SHAPES, run_benchmark

pytestmark = pytest.mark.slow
SIDE_FIELDS = {
    "label",
    "n_runs",
    "seconds",
    "peak_rss_mb",
    "median_s",
    "median_peak_rss_mb",
    "per_run_s",
}
LOAD_MODES = {"raw", "cold", "warm", "memory"}


FLOORS = {
    "import_mlflow_s",
    "mlflow_run_150_metrics_s",
    "svd_10x384_s",
    "project_30522x384_on_3_s",
    "python_start_s",
}
# what every embsvd job times (embsvd.pipeline.phases); the checks' phases only with checks
JOB_PHASES = {"store", "load", "groups", "method", "writes"}
CHECK_PHASES = {"checks.null", "checks.stability", "checks.heldout", "checks.confounds"}


def test_small_benchmark_reports_every_case_and_field(tmp_path, capsys):
    out = tmp_path / "benchmark.json"
    report = run_benchmark(list(CASES), repeats=1, small=True, out=out)
    assert json.loads(out.read_text()) == report
    assert report["small"] is True and report["repeats"] == 1
    assert set(report["cases"]) == set(CASES)
    assert set(report["floors"]) == FLOORS and all(v > 0 for v in report["floors"].values())
    for case in ("seed", "sweep"):
        result = report["cases"][case]
        for side in SIDES:
            fields = SIDE_FIELDS | ({"phases"} if side != "notebook" else set())
            assert set(result[side]) == fields, (case, side)
            assert result[side]["median_s"] > 0 and result[side]["median_peak_rss_mb"] > 0
        assert result["notebook"]["n_runs"] == result["embsvd"]["n_runs"]
        assert result["ratio_notebook_over_embsvd"] > 0
        assert result["ratio_notebook_over_embsvd_checks"] > 0
        fast, checked = result["embsvd"]["phases"], result["embsvd+checks"]["phases"]
        assert JOB_PHASES | {"other"} <= set(fast), sorted(fast)
        assert set(checked) >= JOB_PHASES | CHECK_PHASES, sorted(checked)
        assert not CHECK_PHASES & set(fast)  # analysis=fast runs no check
        for phase in checked.values():
            assert 0 <= phase["share"] <= 1 and phase["total_s"] >= 0
        # the phases account for the wall time, "other" for what no phase covers
        assert abs(sum(p["share"] for p in checked.values()) - 1) < 1e-9
    sweep = report["cases"]["sweep"]
    assert sweep["embsvd"]["n_runs"] > sweep["short"]["embsvd"]["n_runs"]
    assert set(sweep["marginal_per_run_s"]) == set(SIDES)
    large = report["cases"]["large"]
    assert set(large["loads"]) == LOAD_MODES
    for load in large["loads"].values():
        assert set(load) == {"load_s", "load_and_read_s", "peak_rss_mb"}
    assert large["checkpoint_mb"] > large["embedding_bf16_mb"]  # other tensors are there
    assert {"cold_over_raw", "memory_over_raw", "peak_rss_over_float32"} <= set(large)
    scale = report["cases"]["scale"]
    assert set(scale) == {f"{v}x{d}" for v, d in SMALL_SCALE_SHAPES}
    for result in scale.values():
        for mode in SCALE_MODES:
            assert result[mode]["median_s"] > 0
            assert JOB_PHASES | CHECK_PHASES | {"figures"} <= set(result[mode]["phases"])
        assert result["peak_rss_over_bf16"] > 0
        # the whitened run's one-off (the transform, the whitened matrix): its geometry phase
        assert result["whitened"]["phases"]["geometry"]["total_s"] > 0
    assert report["cfg_job_s"] > 0
    table = capsys.readouterr().out
    assert "notebook/embsvd" in table and "marginal cost of a run" in table
    assert "phases:" in table and "floors:" in table and "scale:" in table
