"""A bfloat16 checkpoint read as memory-mapped rows, widened where used: every reader of
the matrix equals the float32-array path, the per-checkpoint work (global components,
whitening) is cached on disk and in memory, and a whole run never copies W to float32.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from embsvd.io.checkpoint import load_checkpoint
from embsvd.io.rows import (
    BFloat16Rows,
    Float16Rows,
    UnitRows,
    is_streamed,
    matmul_rows,
    row_blocks,
)
from embsvd.io.spec import CheckpointSpec
from embsvd.io.vocabulary import Vocabulary, row_norms
from embsvd.io.weights import check_finite, non_finite_rows
from embsvd.method import geometry
from embsvd.method.analysis import MeanReference, analyze
from embsvd.method.backend import project_on
from tests.conftest import BERT_KEY, PROJECT_ROOT, token_group, write_tiny_bert

TOLERANCE = 1e-10


def bfloat16_pair(d_vocab: int, d_model: int, seed: int = 0) -> tuple[BFloat16Rows, np.ndarray]:
    """A bfloat16 matrix (offset from the origin, with a few dominant directions, as
    embeddings are) and the same values widened to a float32 array."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.2, d_model)
    values = (rng.normal(size=(d_vocab, d_model)) * scales + 0.7).astype(np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2")
    return BFloat16Rows(raw), ((raw.astype(np.uint32)) << 16).view(np.float32)


def assert_close(a, b, tolerance: float = TOLERANCE) -> None:
    np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


def test_a_bf16_checkpoint_loads_as_rows_equal_to_the_exactly_widened_values(tmp_path):
    widened_by_torch = write_tiny_bert(tmp_path / "bf16", layout="bf16")
    spec = CheckpointSpec(name="bf16", path=str(tmp_path / "bf16"))

    checkpoint = load_checkpoint(spec, tmp_path / "cache")

    W = checkpoint.W
    assert isinstance(W, BFloat16Rows) and is_streamed(W)
    assert checkpoint.quantization == "BF16" and W.dtype == np.float32
    np.testing.assert_array_equal(W[: len(W)], widened_by_torch)
    np.testing.assert_array_equal(W[[4, 0, 4]], widened_by_torch[[4, 0, 4]])
    # the stored rows' norms, read a block at a time, as the float32 array's
    norms = np.linalg.norm(widened_by_torch, axis=1)
    np.testing.assert_array_equal(checkpoint.vocabulary.token_norms, norms)
    assert not (tmp_path / "cache" / "matrices").exists()  # no widened copy


@pytest.mark.parametrize("center", [True, False])
def test_the_analysis_of_bf16_rows_equals_the_float32_array_path(center):
    B, W = bfloat16_pair(3000, 24)
    groups = {
        "low": token_group("low", [2, 3, 4, 5, 6, 7]),
        "high": token_group("high", [2000, 2001, 2002, 2003, 2004]),
        "mid": token_group("mid", [100, 900, 1500, 2999]),
    }
    tokens = [f"tok{i}" for i in range(3000)]
    vocab = Vocabulary.from_matrix(B, tokens, special_ids=[0])
    np.testing.assert_array_equal(vocab.token_norms, np.linalg.norm(W, axis=1))
    reference = MeanReference(geometry.row_mean(B), np.eye(24)[:1])

    streamed = analyze(B, groups, "low", vocab, center=center, reference=reference)
    array = analyze(W, groups, "low", vocab, center=center, reference=reference)

    assert_close(streamed.projections, array.projections)
    for name in ("mean", "U", "singular_values", "Vt"):
        assert_close(getattr(streamed.svd, name), getattr(array.svd, name))
    for variant, stat in array.mean_corr.items():
        assert_close(streamed.mean_corr[variant].values, stat.values)
    assert_close(streamed.axis_corr.values, array.axis_corr.values)
    assert_close(streamed.row_cosine, array.row_cosine)
    assert [t.token_id for t in streamed.top_tokens] == [t.token_id for t in array.top_tokens]
    # torch's path (on the CPU here) moves the bfloat16 bits, widened a block at a time
    axes = streamed.svd.Vt[:3].T
    assert_close(project_on(B, streamed.svd.offset, axes, "cpu"), array.projections)


def test_the_row_mean_is_computed_once_per_matrix_and_rows_and_shared_read_only():
    B, W = bfloat16_pair(600, 8, seed=2)
    rows = np.arange(3, 600)
    first = geometry.row_mean(B, rows)
    assert geometry.row_mean(B, rows.copy()) is first  # the same rows, by value
    assert not first.flags.writeable  # shared by the runs that hit it
    assert geometry.row_mean(B) is not first  # other rows: another mean
    assert_close(geometry.row_mean(B), W.astype(np.float64).mean(axis=0))
    changed = W.copy()
    assert_close(geometry.row_mean(changed, rows), first)
    changed *= 2  # changed in place since: computed again
    assert_close(geometry.row_mean(changed, rows), 2 * first)


def test_every_geometry_of_bf16_rows_equals_the_float32_array_path():
    B, W = bfloat16_pair(2500, 16, seed=1)
    rows = np.arange(5, 2500)
    assert_close(geometry.row_mean(B, rows), W[rows].astype(np.float64).mean(axis=0))
    for method in ("exact", "fast"):
        streamed = geometry.global_svd(B, 6, rows=rows, method=method)
        array = geometry.global_svd(W, 6, rows=rows, method=method)
        for name in ("mean", "singular_values", "Vt"):
            assert_close(getattr(streamed, name), getattr(array, name))
        assert streamed.total_variance == pytest.approx(array.total_variance, rel=TOLERANCE)
    whitening = geometry.fit_whitening(B, rows=rows)
    expected = geometry.fit_whitening(W, rows=rows)
    assert whitening.shrinkage == pytest.approx(expected.shrinkage, rel=TOLERANCE)
    assert_close(whitening.transform, expected.transform)
    assert_close(whitening.apply(B), expected.apply(W))
    as_float32 = whitening.apply(B, dtype=np.float32, block_rows=300)
    assert as_float32.dtype == np.float32
    np.testing.assert_array_equal(as_float32, expected.apply(W).astype(np.float32))
    assert geometry.ledoit_wolf_shrinkage(B) == pytest.approx(
        geometry.ledoit_wolf_shrinkage(W), rel=TOLERANCE
    )
    assert_close(matmul_rows(B, np.eye(16)[:, :3]), W[:, :3].astype(np.float64))


def test_unit_rows_are_normalize_rows_computed_where_read():
    B, W = bfloat16_pair(700, 12, seed=2)
    W[5] = 0.0  # an all-zero row stays zero
    B.raw[5] = 0
    unit = geometry.unit_rows(B)
    expected = geometry.normalize_rows(W)
    assert isinstance(unit, UnitRows) and is_streamed(unit) and unit.dtype == np.float64
    assert geometry.unit_rows(unit) is unit
    np.testing.assert_array_equal(unit[: len(unit)], expected)
    np.testing.assert_array_equal(unit[[[5, 3], [699, 0]]], expected[[[5, 3], [699, 0]]])
    np.testing.assert_array_equal(unit[7], expected[7])
    np.testing.assert_array_equal(
        geometry.normalize_rows(B, dtype=np.float32), expected.astype(np.float32)
    )
    groups = {"g": token_group("g", [1, 2, 3, 4]), "h": token_group("h", [10, 11, 12])}
    vocab = Vocabulary.from_matrix(B, [str(i) for i in range(700)])
    assert_close(
        analyze(unit, groups, "g", vocab).projections,
        analyze(expected, groups, "g", vocab).projections,
    )
    assert_close(
        geometry.global_svd(unit, 4, method="fast").Vt,
        geometry.global_svd(expected, 4, method="fast").Vt,
    )


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
def test_narrow_rows_read_into_a_buffer_are_their_rows(kind):
    if kind == "bfloat16":
        W, _ = bfloat16_pair(40, 6)
    else:
        values = np.random.default_rng(4).normal(size=(40, 6)).astype(np.float16)
        W = Float16Rows(values.view("<f2"))
    for key in (slice(3, 17), np.array([39, 0, 5, 5, 12])):
        out = np.full((len(np.arange(40)[key]), 6), np.nan, dtype=np.float32)
        W.read_into(key, out)
        np.testing.assert_array_equal(out, W[key])
    with pytest.raises(ValueError, match=r"out: expected float32 \(4, 6\), got float64 \(4, 6\)"):
        W.read_into(slice(0, 4), np.empty((4, 6)))
    with pytest.raises(ValueError, match=r"out: expected float32 \(4, 6\), got float32 \(5, 6\)"):
        W.read_into(slice(0, 4), np.empty((5, 6), dtype=np.float32))


@pytest.mark.parametrize("rows", ["all", "some"])
def test_the_fast_scatter_of_bf16_rows_is_the_float32_arrays_one(rows, monkeypatch):
    """The float32 scatter widens bfloat16 blocks straight into its buffer: the same
    centered values, so the same products as the float32 array's path, bit for bit, over
    several blocks (the last one short) and through a gather of some of the rows."""
    W, widened = bfloat16_pair(1000, 16, seed=2)
    selected = None
    if rows == "some":
        selected = np.ones(1000, dtype=bool)
        selected[[0, 3, 500, 998]] = False
    monkeypatch.setattr(geometry, "SCATTER_BLOCK_BYTES", 4 * 16 * 300)  # 300 rows a block
    streamed = geometry._Centered(W, selected, 7).scatter_float32()  # gathers of 7 rows
    array = geometry._Centered(widened, selected, 7).scatter_float32()
    np.testing.assert_array_equal(streamed, array)
    X = widened.astype(np.float64)[slice(None) if selected is None else selected]
    X -= X.mean(axis=0)
    np.testing.assert_allclose(streamed, X.T @ X, rtol=1e-5, atol=1e-4 * np.abs(X.T @ X).max())


class CountedRows(BFloat16Rows):
    """A bfloat16 matrix that counts the rows read from it, from any thread, and notes
    the threads and BLAS thread counts its readers ran with."""

    def __init__(self, raw: np.ndarray):
        super().__init__(raw)
        self.rows_read, self.readers, self.blas = 0, set(), set()
        self._lock = threading.Lock()

    def _count(self, rows: int) -> None:
        with self._lock:
            self.rows_read += rows
            self.readers.add(threading.get_ident())
            self.blas.update(
                info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"
            )

    def read_into(self, key, out) -> None:
        self._count(len(out))
        super().read_into(key, out)

    def _rows(self, key):
        found = super()._rows(key)
        self._count(len(found) if found.ndim > 1 else 1)
        return found


def test_the_fast_global_svd_reads_the_rows_twice_and_finds_the_mean_in_the_scatter_pass(
    monkeypatch,
):
    """The fast path's float32 scatter sums the rows it reads: no pass of the mean's own,
    so the rows are read twice (the scatter, the Rayleigh-Ritz pass), and the mean is the
    float64 mean; shifted by the first block's mean, the scatter is the one centered on
    the mean, and the result the exact path's."""
    W, widened = bfloat16_pair(3000, 24, seed=6)
    counted = CountedRows(W.raw)
    rows = np.arange(2, 3000)
    monkeypatch.setattr(geometry, "SCATTER_BLOCK_BYTES", 4 * 24 * 700)  # 700 rows a block
    monkeypatch.setattr(geometry, "FULL_EIGH_MAX_D", 8)  # the Lanczos iteration, as at scale
    fast = geometry.global_svd(counted, 3, rows=rows, method="fast")
    assert counted.rows_read == 2 * len(rows)
    X = widened[rows].astype(np.float64)
    np.testing.assert_allclose(fast.mean, X.mean(axis=0), rtol=1e-13, atol=1e-15)
    A = geometry._Centered(W, rows, None)
    centered = X - X.mean(axis=0)
    np.testing.assert_allclose(
        A.scatter_float32(), centered.T @ centered, rtol=1e-5, atol=1e-6 * len(rows)
    )
    exact = geometry.global_svd(widened, 3, rows=rows, method="exact")
    np.testing.assert_allclose(fast.singular_values, exact.singular_values, rtol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(fast.Vt * exact.Vt, axis=1)), 1.0, atol=1e-10)
    assert fast.total_variance == pytest.approx(exact.total_variance, rel=1e-12)


@pytest.mark.parametrize("rows", ["all", "consecutive", "some"])
def test_the_rayleigh_ritz_pass_is_the_float64_product_over_every_selected_row(rows, monkeypatch):
    """The fast global SVD's check pass, ``X^T (X V)`` and ``sum(X**2)`` in float64,
    in blocks of many rows (the last one short): consecutive selected rows are read as a
    slice, rows around a gap are gathered; either way every selected row counts once."""
    W, widened = bfloat16_pair(1000, 16, seed=4)
    selected = {
        "all": None,
        "consecutive": np.arange(5, 1000),  # all but the first few (special) tokens
        "some": np.setdiff1d(np.arange(1000), [0, 3, 500, 998]),
    }[rows]
    monkeypatch.setattr(geometry, "PRODUCT_BLOCK_BYTES", 8 * 16 * 300)  # 300 rows a block
    monkeypatch.setattr(geometry, "PRODUCT_BLOCK_SHARE", 1)  # however few the rows
    V = np.random.default_rng(0).normal(size=(16, 3))
    streamed = geometry._Centered(W, selected, 7).scatter_times(V)
    array = geometry._Centered(widened, selected, 7).scatter_times(V)
    X = widened.astype(np.float64)[slice(None) if selected is None else selected]
    X -= X.mean(axis=0)
    for G, total in (streamed, array):
        np.testing.assert_allclose(G, X.T @ (X @ V), rtol=1e-12, atol=1e-12 * np.abs(G).max())
        assert total == pytest.approx(np.sum(X**2), rel=1e-12)


def test_the_rayleigh_ritz_pass_shares_each_block_between_threads_a_few_rows_at_a_time(
    monkeypatch,
):
    """Blocks of 700 rows, each split between two threads that widen, center and
    multiply 64 rows at a time with BLAS at one thread (the last chunk of a share and the
    last block short): the float64 product and sum of squares over every row once; one
    thread's pass (other chunks) equal to rounding, and each pass the same when rerun
    (the shares' sums are added in the rows' order, whichever thread ends first)."""
    W, widened = bfloat16_pair(2000, 16, seed=8)
    counted = CountedRows(W.raw)
    selected = np.setdiff1d(np.arange(2000), [0, 1, 900])  # a gathered block among slices
    monkeypatch.setattr(geometry, "PRODUCT_BLOCK_BYTES", 8 * 16 * 700)
    monkeypatch.setattr(geometry, "PRODUCT_BLOCK_SHARE", 1)
    monkeypatch.setattr(geometry, "FUSED_ROWS", 64)
    V = np.random.default_rng(2).normal(size=(16, 3))
    blas_before = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    A = geometry._Centered(counted, selected, 50)
    _ = A.mean  # a pass of its own, before the one counted
    counted = CountedRows(W.raw)
    A.W = counted
    G, total = A.scatter_times(V)
    assert counted.rows_read == len(selected)
    assert len(counted.readers) == 2 and threading.get_ident() not in counted.readers
    assert counted.blas == {1}  # BLAS one thread per call inside the threads
    blas_after = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}
    assert blas_after == blas_before
    X = widened.astype(np.float64)[selected]
    X -= X.mean(axis=0)
    np.testing.assert_allclose(G, X.T @ (X @ V), rtol=1e-12, atol=1e-12 * np.abs(G).max())
    assert total == pytest.approx(np.sum(X**2), rel=1e-12)
    monkeypatch.setattr("embsvd.io.rows.MAX_WORKERS", 1)
    one = CountedRows(W.raw)
    G_one, total_one = geometry._Centered(one, selected, 50).scatter_times(V)
    assert len(one.readers) == 1
    np.testing.assert_allclose(G_one, G, rtol=1e-13, atol=1e-13 * np.abs(G).max())
    assert total_one == pytest.approx(total, rel=1e-14)
    monkeypatch.setattr("embsvd.io.rows.MAX_WORKERS", 8)
    again = geometry._Centered(W, selected, 50).scatter_times(V)
    np.testing.assert_array_equal(again[0], G)
    assert again[1] == total


def test_float16_rows_read_as_float32_and_their_non_finite_rows_are_found():
    values = np.random.default_rng(3).normal(size=(50, 6)).astype(np.float16)
    values[[7, 40], [1, 5]] = [np.inf, np.nan]
    F = Float16Rows(values.view("<f2"))
    np.testing.assert_array_equal(F[[7, 8]], values[[7, 8]].astype(np.float32))
    assert non_finite_rows(F).tolist() == [7, 40]
    with pytest.raises(ValueError, match=r"2 of 50 rows of m .*rows 7, 40"):
        check_finite(F, "m", "0" * 64, "key")
    np.testing.assert_array_equal(row_norms(F), np.linalg.norm(values.astype(np.float32), axis=1))


def test_the_whitening_is_cached_reused_by_another_process_and_recomputed_when_damaged(
    tmp_path, monkeypatch, caplog
):
    B, W = bfloat16_pair(1200, 10, seed=4)
    cache_file = tmp_path / "whitening" / "w.npz"
    rows = np.arange(3, 1200)

    first = geometry.cached_whitening(B, cache_file, rows=rows)

    assert sorted(p.name for p in cache_file.parent.iterdir()) == [
        "w.npz",
        "w.npz.checksum",
        "w.npz.lock",  # held while it was computed (embsvd.io.cache.exclusive)
    ]
    expected = geometry.fit_whitening(W, rows=rows)
    assert_close(first.transform, expected.transform)
    assert first.shrinkage == pytest.approx(expected.shrinkage, rel=TOLERANCE)
    # another process reads the file and never fits
    script = textwrap.dedent(
        f"""
        import numpy as np
        from embsvd.method import geometry

        def refuse(*args, **kwargs):
            raise AssertionError("fitted although the cache holds the whitening")

        geometry.fit_whitening = refuse
        W = np.load({str(tmp_path / "W.npy")!r})
        found = geometry.cached_whitening(W, {str(cache_file)!r}, rows=np.arange(3, 1200))
        np.save({str(tmp_path / "transform.npy")!r}, found.transform)
        """
    )
    np.save(tmp_path / "W.npy", W)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=PROJECT_ROOT)
    np.testing.assert_array_equal(np.load(tmp_path / "transform.npy"), first.transform)
    # this process keeps it in memory: the file is not read again while it is unchanged
    monkeypatch.setattr(geometry, "intact", lambda entry: pytest.fail(f"read {entry}"))
    assert geometry.cached_whitening(B, cache_file, rows=rows) is first
    monkeypatch.undo()
    # another shrinkage is another result (and a stale file for this key)
    assert geometry.cached_whitening(B, cache_file, rows=rows, shrinkage=0.5).shrinkage == 0.5
    geometry.cached_whitening(B, cache_file, rows=rows)
    damaged = bytearray(cache_file.read_bytes())
    damaged[-40] ^= 0x10
    cache_file.write_bytes(bytes(damaged))

    with caplog.at_level(logging.WARNING):
        again = geometry.cached_whitening(B, cache_file, rows=rows)

    assert f"cache entry {cache_file} is damaged" in caplog.text
    np.testing.assert_array_equal(again.transform, first.transform)


def test_the_global_components_are_kept_in_memory_while_their_file_is_unchanged(
    tmp_path, monkeypatch
):
    B, _ = bfloat16_pair(800, 12, seed=5)
    cache_file = tmp_path / "g.npz"
    first = geometry.cached_global_svd(B, 4, cache_file)
    monkeypatch.setattr(geometry, "intact", lambda entry: pytest.fail(f"read {entry}"))
    assert geometry.cached_global_svd(B, 4, cache_file) is first
    monkeypatch.undo()
    cache_file.write_bytes(cache_file.read_bytes())  # rewritten: read (and checked) again
    again = geometry.cached_global_svd(B, 4, cache_file)
    assert again is not first
    np.testing.assert_array_equal(again.Vt, first.Vt)


def test_a_pickled_bf16_matrix_is_kept_narrow_too(tmp_path):
    import torch

    from embsvd.io.hf_folder import read_tensor

    values = torch.from_numpy(np.random.default_rng(6).normal(size=(30, 8)).astype(np.float32))
    torch.save({BERT_KEY: values.to(torch.bfloat16)}, tmp_path / "pytorch_model.bin")
    W = read_tensor(tmp_path / "pytorch_model.bin", BERT_KEY, allow_pickle=True)
    assert isinstance(W, BFloat16Rows)
    np.testing.assert_array_equal(W[:], values.to(torch.bfloat16).float().numpy())


RUN_SCRIPT = """
import json, resource, sys, tracemalloc
from hydra import compose, initialize_config_dir
from embsvd.pipeline import run_job
import mlflow, matplotlib  # noqa: F401 (imported before tracing starts)

folder, uri, out, conf = sys.argv[1:5]
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    cfg = compose("config", overrides=[
        "model=local", f"model.path={folder}", "model.name=synthetic",
        "groups=[digits,eu_countries]", "target=digits", f"tracking.uri={uri}",
        *sys.argv[5:],
    ])
tracemalloc.start()  # numpy's allocations are traced too
start = tracemalloc.get_traced_memory()[0]
run_job(cfg)
peak = tracemalloc.get_traced_memory()[1]
usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with open(out, "w") as handle:
    json.dump({"peak_over_start": peak - start, "max_rss": usage}, handle)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [[], ["analysis.normalize_rows=true"]],
    ids=["default", "unit-rows"],
)
def test_a_whole_run_on_a_bf16_checkpoint_never_copies_w_to_float32(
    tmp_path, migrated_store_file, overrides
):
    """A default run (every check, per-run figures, the global components) in a process
    of its own: the most memory numpy and Python held at once stays below the size of one
    float32 copy of W, which a copy alone would reach (traced allocations: the
    memory-mapped file itself is not one; the run's own, blocks and per-token arrays,
    take about half of it here)."""
    from benchmark import library_group, write_synthetic_checkpoint

    d_vocab, d_model = 65536, 1024
    words = [w for name in ("digits", "eu_countries") for w in library_group(name)[0]]
    folder = write_synthetic_checkpoint(tmp_path / "model", d_vocab, d_model, words)
    store = tmp_path / "mlflow.db"
    store.write_bytes(migrated_store_file.read_bytes())
    out = tmp_path / "memory.json"
    command = [sys.executable, "-c", RUN_SCRIPT, str(folder), f"sqlite:///{store}", str(out)]
    command += [str(PROJECT_ROOT / "conf"), *overrides]
    env = {**os.environ, "EMBSVD_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run(command, check=True, cwd=tmp_path, env=env, timeout=900)

    found = json.loads(out.read_text())
    float32_bytes = d_vocab * d_model * 4
    assert found["peak_over_start"] < float32_bytes, found


def resident_file_pages() -> int:
    """Bytes of file-backed pages this process holds in memory (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("/proc/self/status has no RssFile")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
def test_a_pass_over_a_mapped_bf16_matrix_leaves_its_pages_out_of_the_process(tmp_path):
    """``row_blocks`` releases each block's pages once read: a pass over a large matrix
    does not leave all of it counted in the process's memory (the page cache keeps it)."""
    from embsvd.io.weights import read_safetensors

    d_vocab, d_model = 4096, 4096  # 32 MB of bfloat16
    values = np.random.default_rng(7).normal(size=(d_vocab, d_model)).astype(np.float32)
    header = {
        "embed": {
            "dtype": "BF16",
            "shape": [d_vocab, d_model],
            "data_offsets": [0, 2 * values.size],
        }
    }
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    file = tmp_path / "bf16.safetensors"
    with open(file, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little") + encoded)
        handle.write((values.view(np.uint32) >> 16).astype("<u2").tobytes())
    size = 2 * values.size
    W = read_safetensors(file, "embed")

    before = resident_file_pages()
    total = sum(float(block.sum()) for _, block in row_blocks(W))
    released = resident_file_pages() - before
    widened = ((values.view(np.uint32) >> 16) << 16).view(np.float32)
    assert total == pytest.approx(float(widened.sum(dtype=np.float64)), rel=1e-6)
    # read without releasing (the raw mapping itself): the whole matrix stays resident
    before = resident_file_pages()
    int(W.raw.sum(dtype=np.uint64))
    kept = resident_file_pages() - before
    assert kept > 0.9 * size
    assert released < 0.25 * size


def test_the_pipeline_keeps_a_whitened_matrix_as_float32_and_its_transform_on_disk(tmp_path):
    from embsvd.pipeline import job
    from embsvd.pipeline.config import AnalysisConfig

    widened = write_tiny_bert(tmp_path / "bf16", layout="bf16")
    checkpoint = load_checkpoint(CheckpointSpec(name="b", path=str(tmp_path / "bf16")), tmp_path)
    analysis = AnalysisConfig(geometry="whitened", normalize_rows=True, whitening_shrinkage=0.3)

    W, metrics = job.analysis_matrix(checkpoint, analysis)

    [entry] = (tmp_path / "whitening").glob("*.npz")
    assert (tmp_path / "whitening" / f"{entry.name}.checksum").is_file()
    unit = geometry.normalize_rows(widened)
    whitening = geometry.fit_whitening(unit, rows=checkpoint.ordinary_rows, shrinkage=0.3)
    assert W.dtype == np.float32
    np.testing.assert_array_equal(W, whitening.apply(unit).astype(np.float32))
    assert metrics == [("geometry/whitening_shrinkage", 0.3, 0)]
    assert job.analysis_matrix(checkpoint, analysis)[0] is W  # kept for the next job
    euclidean = AnalysisConfig(normalize_rows=True)
    unit_rows = job.analysis_matrix(checkpoint, euclidean)[0]
    assert isinstance(unit_rows, UnitRows)
    np.testing.assert_array_equal(unit_rows[:], unit)
    assert job.analysis_matrix(checkpoint, AnalysisConfig())[0] is checkpoint.W


def test_row_norms_are_kept_per_matrix_between_processes(tmp_path, caplog):
    """The norms file serves the next process; a damaged or mis-sized one is recomputed."""
    from embsvd.io.vocabulary import Vocabulary, cached_row_norms, row_norms

    rng = np.random.default_rng(5)
    W = rng.normal(size=(50, 8)).astype(np.float32)
    norms_file = tmp_path / "norms" / "abc" / "emb.npy"
    strings = [f"t{i}" for i in range(50)]
    first = Vocabulary.from_matrix(W, strings, norms_file=norms_file)
    assert np.array_equal(first.token_norms, row_norms(W)) and norms_file.is_file()
    # a file that names this matrix is read, not recomputed: other rows of the same
    # length get the kept norms (the file name is what says which matrix they belong to)
    other = rng.normal(size=(50, 8)).astype(np.float32)
    assert np.array_equal(cached_row_norms(other, norms_file), row_norms(W))
    norms_file.write_bytes(b"damaged")  # the checksum record no longer matches
    with caplog.at_level("WARNING"):
        assert np.array_equal(cached_row_norms(other, norms_file), row_norms(other))
    assert str(norms_file) in caplog.text
    longer = rng.normal(size=(60, 8)).astype(np.float32)
    assert np.array_equal(cached_row_norms(longer, norms_file), row_norms(longer))
