"""A pass over a large matrix's rows from threads (``embsvd.io.rows.parallel_row_blocks``):
the blocks of the one-thread pass, each once; BLAS one thread per call while it runs and
its own count after; an error raised where the pass was called. A block's rows shared
between threads (``RowShares``): each share's result in the rows' order."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from embsvd.io import openblas
from embsvd.io.rows import (
    PARALLEL_MIN_VALUES,
    SHARE_MIN_ROWS,
    BFloat16Rows,
    RowShares,
    matmul_rows,
    parallel_row_blocks,
    row_blocks,
)
from embsvd.method.analysis import _span_pass


def blas_threads() -> set[int]:
    return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


@pytest.fixture(scope="module")
def large() -> BFloat16Rows:
    """bfloat16 rows just past ``PARALLEL_MIN_VALUES`` values (33 MB stored)."""
    d_model = 512
    values = np.random.default_rng(0).normal(size=(PARALLEL_MIN_VALUES // d_model + 3, d_model))
    return BFloat16Rows((values.astype(np.float32).view(np.uint32) >> 16).astype("<u2"))


def test_every_block_of_the_one_thread_pass_is_read_once_from_the_threads(large):
    seen, threads, lock = [], set(), threading.Lock()
    inside = set()

    def work(rows: slice, block: np.ndarray) -> None:
        with lock:
            seen.append((rows.start, rows.stop))
            threads.add(threading.get_ident())
            inside.update(blas_threads())
        np.testing.assert_array_equal(block, large[rows])

    before = blas_threads()
    parallel_row_blocks(large, work, block_rows=1000, workers=2)
    expected = [(rows.start, rows.stop) for rows, _ in row_blocks(large, 1000)]
    assert sorted(seen) == expected  # each block once, the one-thread pass's blocks
    assert len(threads) == 2 and threading.get_ident() not in threads
    assert inside == {1}  # BLAS one thread per call while the threads ran
    assert blas_threads() == before  # and its own count again after


def test_a_pass_from_threads_computes_what_the_one_thread_pass_computes(large):
    A = np.random.default_rng(1).normal(size=(large.shape[1], 7))
    exact = large[:].astype(np.float64) @ A
    one = np.empty_like(exact)

    def multiply(rows: slice, block: np.ndarray) -> None:
        one[rows] = block.astype(np.float64) @ A

    parallel_row_blocks(large, multiply, workers=1)
    np.testing.assert_allclose(matmul_rows(large, A), one, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(one, exact, rtol=1e-12, atol=1e-12)
    # the analysis' span pass: the rows' coordinates and their squared norms
    basis = np.linalg.qr(A)[0]
    span = _span_pass(large, basis)
    wide = large[:].astype(np.float64)
    np.testing.assert_allclose(span.coordinates, wide @ basis, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(span.norms_sq, np.einsum("ij,ij->i", wide, wide), rtol=1e-13)


def test_a_small_matrix_is_read_in_the_calling_thread():
    W = np.arange(12.0).reshape(4, 3)
    threads = set()
    parallel_row_blocks(W, lambda rows, block: threads.add(threading.get_ident()), workers=2)
    assert threads == {threading.get_ident()}


def test_an_error_in_a_thread_is_raised_by_the_pass_and_stops_the_others(large):
    read = []

    def work(rows: slice, block: np.ndarray) -> None:
        if rows.start == 0:
            raise ValueError("a bad block")
        read.append(rows.start)

    before = blas_threads()
    with pytest.raises(ValueError, match="a bad block"):
        parallel_row_blocks(large, work, block_rows=64, workers=2)
    # the first share stopped at its first block; the second at its next after the error
    assert len(read) < len(large) // 64 // 2
    assert blas_threads() == before


def test_overlapping_passes_share_one_limit_and_the_last_restores_the_counts():
    before = blas_threads()
    first_in, second_done = threading.Event(), threading.Event()
    seen = []

    def first() -> None:
        with openblas.one_thread_each():
            first_in.set()
            second_done.wait()
            seen.append(blas_threads())  # the second left: still one thread

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait()
    with openblas.one_thread_each():
        seen.append(blas_threads())
    second_done.set()
    thread.join()
    assert seen == [{1}, {1}]
    assert blas_threads() == before


def test_row_shares_return_each_share_s_result_in_the_rows_order():
    with RowShares(workers=2) as shares:
        found = shares(1000, lambda rows: (rows.start, rows.stop, threading.get_ident()))
        assert [(a, b) for a, b, _ in found] == [(0, 500), (500, 1000)]
        assert threading.get_ident() not in {ident for _, _, ident in found}
        # too few rows to share: one call, here
        (few,) = shares(2 * SHARE_MIN_ROWS - 1, lambda rows: (rows, threading.get_ident()))
        assert few == (slice(0, 2 * SHARE_MIN_ROWS - 1), threading.get_ident())

        def fail(rows: slice) -> None:
            if rows.start:
                raise ValueError("a bad share")

        with pytest.raises(ValueError, match="a bad share"):
            shares(1000, fail)


def test_the_column_sums_from_shared_blocks_are_the_one_thread_sums(large):
    """The global components' mean: blocks summed by threads, added in the rows' order,
    equal to numpy's float64 mean to rounding, and the same on every call."""
    from embsvd.method.geometry import _Centered

    rows = np.arange(3, len(large))  # consecutive rows, read as slices
    first = _Centered(large, rows, None).mean
    again = _Centered(large, rows, None).mean
    np.testing.assert_array_equal(first, again)
    exact = large[3:].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(first, exact, rtol=1e-12, atol=1e-15)
    gathered = np.setdiff1d(np.arange(len(large)), [7, 5000, 20000])  # around gaps
    np.testing.assert_allclose(
        _Centered(large, gathered, None).mean,
        large[gathered].astype(np.float64).mean(axis=0),
        rtol=1e-12,
        atol=1e-15,
    )
