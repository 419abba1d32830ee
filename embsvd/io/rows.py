"""Rows of a token matrix, read where they are used: a bfloat16 matrix stays memory-mapped
in its own dtype and is widened a block (or a gather) at a time.

numpy has no bfloat16, so a bfloat16 embedding used to become a float32 copy of twice its
size before any work began (2 GB for a 128256 x 4096 embedding, 4x the raw read of its
bytes). ``BFloat16Rows`` keeps the stored bytes mapped instead; indexing it returns the
selected rows widened to float32 (exact: a bfloat16 is the top half of a float32).

Code that reads a token matrix ``W`` (an ``np.ndarray``, a ``np.memmap`` or a
``BFloat16Rows``) goes through three operations, each bounded in memory by a block:

- ``W[ids]`` / ``W[a:b]``: the rows, as float32 (or the stored float dtype);
- ``row_blocks(W)``: ``(rows, block)`` pairs covering every row once;
- ``matmul_rows(W, A)``: ``W @ A`` in float64, block by block.

``np.asarray(W)`` of a ``BFloat16Rows`` materializes the whole float32 matrix: the
library never calls it (``tests/test_streaming.py`` checks a run's peak memory).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

BLOCK_ROWS = 8192  # rows widened at a time: 128 MB of float64 at d_model = 2048


class BFloat16Rows:
    """A ``(d_vocab, d_model)`` bfloat16 matrix memory-mapped from ``file`` at ``offset``.

    Behaves as a read-only float32 matrix for row access: ``shape``, ``len``, ``ndim``,
    ``dtype`` (float32, what rows come out as) and ``W[key]`` for a row index, a slice or
    an integer array of any shape (the result has the index's shape plus ``d_model``).
    """

    stored_dtype = "BF16"

    def __init__(self, raw: np.ndarray):
        if raw.ndim != 2 or raw.dtype != np.dtype("<u2"):
            raise ValueError(
                f"BFloat16Rows: expected a 2-D little-endian uint16 array, got {raw.dtype} "
                f"{raw.shape}"
            )
        self.raw = raw

    @classmethod
    def mapped(cls, file: Path, offset: int, shape: tuple[int, int]) -> BFloat16Rows:
        return cls(np.memmap(file, dtype="<u2", mode="r", offset=offset, shape=shape))

    @property
    def shape(self) -> tuple[int, int]:
        return self.raw.shape

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.raw.nbytes

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, key: Any) -> np.ndarray:
        return widen_bfloat16(np.asarray(self.raw[key]))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        widened = widen_bfloat16(np.asarray(self.raw))
        return widened if dtype is None else widened.astype(dtype)

    def __repr__(self) -> str:
        return f"BFloat16Rows(shape={self.shape})"


def widen_bfloat16(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32 values, exactly; a new array."""
    widened = np.empty(raw.shape, dtype=np.float32)
    np.left_shift(raw, 16, out=widened.view(np.uint32), dtype=np.uint32)
    return widened


def row_blocks(W: Any, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[slice, np.ndarray]]:
    """``(rows, W[rows])`` for consecutive blocks of at most ``block_rows`` rows: each
    block as stored (float32 for bfloat16), never more than one block widened at once."""
    for start in range(0, len(W), block_rows):
        rows = slice(start, min(start + block_rows, len(W)))
        yield rows, np.asarray(W[rows])


def matmul_rows(W: Any, A: np.ndarray, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """``W @ A`` in float64, ``(d_vocab, k)`` for ``A`` of shape ``(d_model, k)``, a block of
    rows at a time (no float64 copy of ``W``)."""
    A = np.asarray(A, dtype=np.float64)
    out = np.empty((len(W), A.shape[1]))
    for rows, block in row_blocks(W, block_rows):
        out[rows] = block.astype(np.float64) @ A
    return out


def is_streamed(W: Any) -> bool:
    """Whether ``W`` is read lazily (a ``BFloat16Rows``): ``np.asarray`` would copy it whole."""
    return isinstance(W, BFloat16Rows)
