"""The benchmark in its small mode: every case runs, and the report has every field."""

from __future__ import annotations

import json

import pytest
from benchmark import CASES, run_benchmark

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


def test_small_benchmark_reports_every_case_and_field(tmp_path, capsys):
    out = tmp_path / "benchmark.json"
    report = run_benchmark(list(CASES), repeats=1, small=True, out=out)
    assert json.loads(out.read_text()) == report
    assert report["small"] is True and report["repeats"] == 1
    assert set(report["cases"]) == set(CASES)
    for case in ("seed", "sweep"):
        result = report["cases"][case]
        for side in ("notebook", "embsvd", "embsvd+checks"):
            assert set(result[side]) == SIDE_FIELDS, (case, side)
            assert result[side]["median_s"] > 0 and result[side]["median_peak_rss_mb"] > 0
        assert result["notebook"]["n_runs"] == result["embsvd"]["n_runs"]
        assert result["ratio_notebook_over_embsvd"] > 0
    assert (
        report["cases"]["sweep"]["embsvd"]["n_runs"] > report["cases"]["seed"]["embsvd"]["n_runs"]
    )
    assert set(report["marginal_per_run_s"]) == {"notebook", "embsvd", "embsvd+checks"}
    large = report["cases"]["large"]
    assert set(large["loads"]) == LOAD_MODES
    for load in large["loads"].values():
        assert set(load) == {"load_s", "load_and_read_s", "peak_rss_mb"}
    assert large["checkpoint_mb"] > large["embedding_bf16_mb"]  # other tensors are there
    assert {"cold_over_raw", "memory_over_raw", "peak_rss_over_float32"} <= set(large)
    assert report["cfg_job_s"] > 0
    table = capsys.readouterr().out
    assert "notebook/embsvd" in table and "marginal cost of a run" in table
