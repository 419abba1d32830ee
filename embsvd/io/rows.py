"""Rows of a token matrix, read where they are used: a bfloat16 or float16 matrix stays
memory-mapped in its own dtype and is widened a block (or a gather) at a time.

numpy has no bfloat16, so a bfloat16 embedding used to become a float32 copy of twice its
size before any work began (2 GB for a 128256 x 4096 embedding, 4x the raw read of its
bytes). ``BFloat16Rows`` keeps the stored bytes mapped instead; indexing it returns the
selected rows widened to float32 (exact: a bfloat16 is the top half of a float32).
``Float16Rows`` does the same for float16, whose arithmetic numpy has but runs slowly and
accumulates in float16. ``UnitRows`` is a matrix's rows scaled to unit length, computed
per block instead of stored.

Code that reads a token matrix ``W`` (an ``np.ndarray``, a ``np.memmap`` or one of the
classes here) goes through three operations, each bounded in memory by a block:

- ``W[ids]`` / ``W[a:b]``: the rows, as float32 (or the stored float dtype; float64 for
  ``UnitRows``);
- ``row_blocks(W)``: ``(rows, block)`` pairs covering every row once;
- ``matmul_rows(W, A)``: ``W @ A`` in float64, block by block;
- ``parallel_row_blocks(W, work)``: ``work`` on every block, from threads.

``np.asarray(W)`` of a streamed matrix (``is_streamed``) materializes the whole of it:
the library never calls it (``tests/test_streaming.py`` checks a run's peak memory).
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.io import openblas

BLOCK_ROWS = 8192  # the most rows widened at a time
# the most bytes a block takes once widened to float64: 2 MiB is 64 rows at d_model =
# 4096. The products a pass makes are with a few axes: widened blocks that stay in cache
# beat BLAS-sized ones (projecting 128256 x 4096 bf16 rows onto 3 axes: 0.5 s with 64-row
# blocks, 1.3 s with 512-row ones, whose products OpenBLAS spreads over threads)
BLOCK_BYTES = 1 << 21
# a pass over a matrix of this many values or more runs in threads (parallel_row_blocks):
# 32768 x 512 and larger; the bundled 30522 x 384 checkpoint's passes take a few ms
PARALLEL_MIN_VALUES = 1 << 24
MAX_WORKERS = 8
SHARE_MIN_ROWS = 256  # a block's rows split between threads (RowShares): at least this many each


def block_rows_for(W: Any, block_rows: int | None = None, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows per block for ``W``: ``block_rows`` when given, else as many as fit
    ``block_bytes`` of float64 (at most ``BLOCK_ROWS``, at least 1)."""
    if block_rows is not None:
        return max(1, int(block_rows))
    width = W.shape[1] if len(W.shape) > 1 else 1
    return max(1, min(BLOCK_ROWS, block_bytes // (8 * max(1, width))))


class StreamedRows:
    """A read-only ``(d_vocab, d_model)`` matrix whose rows are computed when read.

    Subclasses give ``shape`` and ``_rows(key)``; this gives ``len``, ``ndim``, ``nbytes``
    (of what is stored) and ``W[key]`` for a row index, a slice or an integer array of
    any shape (the result has the index's shape plus ``d_model``).
    """

    @property
    def shape(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def dtype(self) -> np.dtype:
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        return self._rows(key)

    def _rows(self, key: Any) -> np.ndarray:
        raise NotImplementedError

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if copy is False:
            raise ValueError(f"{self!r}: its rows are computed when read; there is no array")
        whole = self._rows(slice(None))
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape})"


class NarrowRows(StreamedRows):
    """A matrix stored narrower than float32 (``raw``, memory-mapped), read as float32."""

    stored_dtype = ""  # the safetensors name of what is stored
    raw_dtype = np.dtype("<u2")  # how ``raw`` holds it
    # the exponent bits: a value is NaN or infinite exactly when all of them are set
    exponent_mask = 0

    def __init__(self, raw: np.ndarray, mapping: mmap.mmap | None = None, skip: int = 0):
        if raw.ndim != 2 or raw.dtype != self.raw_dtype:
            raise ValueError(
                f"{type(self).__name__}: expected a 2-D {self.raw_dtype} array, got "
                f"{raw.dtype} {raw.shape}"
            )
        self.raw = raw
        # the file mapping ``raw`` lies in, ``skip`` bytes from its start (``release``)
        self._mapping, self._skip = mapping, skip

    @classmethod
    def mapped(cls, file: Path, offset: int, shape: tuple[int, int]) -> NarrowRows:
        """The ``shape`` values stored at ``offset`` of ``file``, memory-mapped read-only
        (``raw`` is a read-only view of the mapping)."""
        start = offset - offset % mmap.ALLOCATIONGRANULARITY  # where a mapping may begin
        count = int(np.prod(shape))
        with open(file, "rb") as handle:
            mapping = mmap.mmap(
                handle.fileno(),
                offset - start + count * cls.raw_dtype.itemsize,
                offset=start,
                access=mmap.ACCESS_READ,
            )
        raw = np.frombuffer(mapping, dtype=cls.raw_dtype, count=count, offset=offset - start)
        return cls(raw.reshape(shape), mapping, offset - start)

    @property
    def is_mapped(self) -> bool:
        """Whether ``raw`` is a view of a file mapping (not an array in memory)."""
        return self._mapping is not None

    def release(self, rows: slice) -> None:
        """Let this process's memory drop the pages of ``rows`` (a pass over the matrix is
        done with them): the operating system keeps them cached, and a later read maps
        them again. A pass over a mapped matrix would otherwise leave all of it resident,
        counted in the process's memory."""
        if self._mapping is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start, stop, _ = rows.indices(len(self))
        row_bytes = self.raw.shape[1] * self.raw.itemsize
        first = (self._skip + start * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(self._skip + stop * row_bytes, len(self._mapping))
        if end > first:
            self._mapping.madvise(mmap.MADV_DONTNEED, first, end - first)

    @property
    def shape(self) -> tuple[int, int]:
        return self.raw.shape

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def _rows(self, key: Any) -> np.ndarray:
        return self.widen(np.asarray(self.raw[key]))

    def read_into(self, key: Any, out: np.ndarray) -> None:
        """``self[key]`` written into ``out`` (float32, of its shape): a pass that reuses
        one buffer allocates nothing per block."""
        self.widen_into(np.asarray(self.raw[key]), out)

    @staticmethod
    def widen(raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def widen_into(raw: np.ndarray, out: np.ndarray) -> None:
        raise NotImplementedError

    def non_finite(self, raw: np.ndarray) -> np.ndarray:
        """Which stored values of ``raw`` (a block of ``self.raw``) are NaN or infinite,
        read from their bits (no widening)."""
        return (raw.view(np.uint16) & self.exponent_mask) == self.exponent_mask


class BFloat16Rows(NarrowRows):
    """A ``(d_vocab, d_model)`` bfloat16 matrix, stored as little-endian uint16 bit
    patterns (``raw``), read as float32 rows: exact, a bfloat16 is the top half of a
    float32."""

    stored_dtype = "BF16"
    raw_dtype = np.dtype("<u2")
    exponent_mask = 0x7F80

    @staticmethod
    def widen(raw: np.ndarray) -> np.ndarray:
        return widen_bfloat16(raw)

    @staticmethod
    def widen_into(raw: np.ndarray, out: np.ndarray) -> None:
        _check_out(raw, out)
        np.left_shift(raw, 16, out=out.view(np.uint32), dtype=np.uint32)


class Float16Rows(NarrowRows):
    """A ``(d_vocab, d_model)`` float16 matrix (``raw``), read as float32 rows (exact)."""

    stored_dtype = "F16"
    raw_dtype = np.dtype("<f2")
    exponent_mask = 0x7C00

    @staticmethod
    def widen(raw: np.ndarray) -> np.ndarray:
        return raw.astype(np.float32)

    @staticmethod
    def widen_into(raw: np.ndarray, out: np.ndarray) -> None:
        _check_out(raw, out)
        np.copyto(out, raw, casting="safe")


class UnitRows(StreamedRows):
    """The rows of ``W`` scaled to unit L2 norm, as debiaswe normalizes them; all-zero
    rows stay zero. Rows come out float64, equal to those of
    ``embsvd.method.geometry.normalize_rows(W)``, but no such matrix is stored: the norms
    are computed once (a pass over ``W``) and each read divides by them.
    """

    def __init__(self, W: Any):
        self.source = W
        norms = np.empty(len(W))
        for rows, block in row_blocks(W):
            norms[rows] = np.linalg.norm(block.astype(np.float64), axis=1)
        self.norms = np.where(norms == 0, 1.0, norms)  # what each row is divided by
        self.norms.flags.writeable = False

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.source.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float64)

    @property
    def nbytes(self) -> int:
        return getattr(self.source, "nbytes", 0)

    def _rows(self, key: Any) -> np.ndarray:
        rows = np.asarray(self.source[key]).astype(np.float64)
        return rows / self.norms[key][..., None]


def _check_out(raw: np.ndarray, out: np.ndarray) -> None:
    if out.dtype != np.float32 or out.shape != raw.shape:
        raise ValueError(f"out: expected float32 {raw.shape}, got {out.dtype} {out.shape}")


def widen_bfloat16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32 values, exactly; a new array."""
    widened = np.empty(raw.shape, dtype=np.float32)
    np.left_shift(raw, 16, out=widened.view(np.uint32), dtype=np.uint32)
    return widened


def row_blocks(W: Any, block_rows: int | None = None) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, W[rows])`` for consecutive blocks of at most ``block_rows`` rows (default:
    ``block_rows_for(W)``): each block as read (float32 for bfloat16), never more than
    one block widened at once; a mapped bfloat16 or float16 block's pages are released
    once the next block is asked for (``release_rows``)."""
    step = block_rows_for(W, block_rows)
    for start in range(0, len(W), step):
        rows = slice(start, min(start + step, len(W)))
        yield rows, np.asarray(W[rows])
        release_rows(W, rows)


def parallel_row_blocks(
    W: Any,
    work: Callable[[slice, np.ndarray], None],
    block_rows: int | None = None,
    workers: int | None = None,
) -> None:
    """``work(rows, block)`` for every ``(rows, block)`` of ``row_blocks(W, block_rows)``,
    from ``workers`` threads (``RowShares``' default: the cores this process may use; one,
    in this thread, for a matrix of fewer than ``PARALLEL_MIN_VALUES`` values), each over
    a consecutive share of the same blocks, with BLAS one thread per call while they run
    (``embsvd.io.openblas.one_thread_each``). ``work`` must write each block's results
    where no other block's go.

    A pass that widens blocks and multiplies them with a few axes is numpy's
    single-threaded elementwise work and BLAS products far below its speed, and both
    release the interpreter's lock: the span pass over 128256 x 4096 bfloat16 rows
    (widened to float64, 11 axes and the squared norms) measured 1.37 s in one thread and
    0.71 s in two on this machine's two cores (2026-11-30). The blocks are those of the
    one-thread pass, so each block's products are the same calls. The first error a
    thread meets is raised here once every thread has stopped (each stops at its next
    block)."""
    step = block_rows_for(W, block_rows)
    if len(W) * W.shape[1] < PARALLEL_MIN_VALUES:
        workers = 1
    stop = threading.Event()

    def share(blocks: slice) -> None:
        for start in range(blocks.start * step, min(blocks.stop * step, len(W)), step):
            if stop.is_set():
                return
            rows = slice(start, min(start + step, len(W)))
            try:
                work(rows, np.asarray(W[rows]))
            except BaseException:
                stop.set()
                raise
            release_rows(W, rows)

    with RowShares(workers) as shares, shares.one_blas_thread_each():
        shares(-(-len(W) // step), share, minimum=1)


class RowShares:
    """Work on consecutive shares of ``range(count)`` (a block's rows, or a pass's blocks:
    ``parallel_row_blocks``), split between threads: ``shares(count, work)`` calls
    ``work(share)`` for slices covering it. Widening a bfloat16 block and centering it are
    numpy's single-threaded loops over memory, which release the interpreter's lock: the
    global components' passes over 128256 x 4096 bfloat16 rows widen and center 525M
    values twice. One thread (no pool) where ``workers`` or the cores this process may use
    are one. Close it (``with``) to end its threads."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or min(MAX_WORKERS, _cores())
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None

    def __call__(
        self, count: int, work: Callable[[slice], Any], minimum: int = SHARE_MIN_ROWS
    ) -> list[Any]:
        """What ``work`` returned for each share (of at least ``minimum`` of the
        ``count``), in the shares' order (so that a sum of them is the same however the
        threads ran)."""
        shares = min(self.workers, max(1, count // minimum))
        if self._pool is None or shares == 1:
            return [work(slice(0, count))]
        bounds = [count * i // shares for i in range(shares + 1)]
        futures = [self._pool.submit(work, slice(a, b)) for a, b in itertools.pairwise(bounds)]
        wait(futures)
        return [future.result() for future in futures]  # the first error, once all stopped

    def one_blas_thread_each(self) -> contextlib.AbstractContextManager:
        """OpenBLAS one thread per call while inside (``openblas.one_thread_each``), where
        this has threads of its own that make products: theirs would each spread over
        every core. Nothing where it has one."""
        return openblas.one_thread_each() if self.workers > 1 else contextlib.nullcontext()

    def __enter__(self) -> RowShares:
        return self

    def __exit__(self, *_: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def release_rows(W: Any, rows: slice) -> None:
    """Drop the pages of ``W[rows]`` from this process's memory where ``W`` is a mapped
    ``NarrowRows`` (``NarrowRows.release``); nothing otherwise."""
    if isinstance(W, NarrowRows):
        W.release(rows)


def matmul_rows(W: Any, A: np.ndarray, block_rows: int | None = None) -> np.ndarray:
    """``W @ A`` in float64, ``(d_vocab, k)`` for ``A`` of shape ``(d_model, k)``, a block of
    rows at a time (no float64 copy of ``W``)."""
    A = np.asarray(A, dtype=np.float64)
    out = np.empty((len(W), A.shape[1]))

    def multiply(rows: slice, block: np.ndarray) -> None:
        out[rows] = block.astype(np.float64) @ A

    parallel_row_blocks(W, multiply, block_rows)
    return out


def is_streamed(W: Any) -> bool:
    """Whether ``W``'s rows are computed when read (``BFloat16Rows``, ``Float16Rows``,
    ``UnitRows``): ``np.asarray`` would build the whole matrix."""
    return isinstance(W, StreamedRows)
