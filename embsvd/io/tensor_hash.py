"""The SHA-256 of the matrix a run analyses, not of the file that holds it.

A checkpoint suite's step branches are different files (their other tensors trained on)
while the embedding can be byte for byte the same: a step saved before the embedding
moved, or a branch copied from another. The file's hash (``embsvd.io.weights``) cannot
tell; the tensor's can. The hash is of the rows as stored, in row-major order (bfloat16
and float16 in their own two bytes, not widened; a GGUF matrix as dequantized; an output
matrix ``W_U`` as the rows analysed), nothing else: not its shape or dtype.

Computed once per weights file and tensor: remembered in this process, and kept between
processes in ``<cache_dir>/embedding_sha256/<weights sha256>/<tensor>.<matrix>.txt``
(the weights file's hash names the bytes, so a replaced file is a new entry).
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.io.cache import intact, written_with_checksum
from embsvd.io.rows import NarrowRows, release_rows

log = logging.getLogger(__name__)

HASH_BLOCK_BYTES = 1 << 25  # 32 MiB of the matrix per read
CACHE_FOLDER = "embedding_sha256"
_REMEMBERED: dict[tuple[str, str, str], str] = {}  # (weights sha256, tensor, matrix) -> hash


def tensor_sha256(W: Any) -> str:
    """SHA-256 of the rows of ``W`` as stored, read a block of rows at a time: a numpy
    array's bytes in row-major order, a ``NarrowRows``' raw 16-bit values."""
    stored = W.raw if isinstance(W, NarrowRows) else W
    if not isinstance(stored, np.ndarray) or stored.ndim != 2:
        stored = np.asarray(stored)
    digest = hashlib.sha256()
    row_bytes = max(stored.shape[1] * stored.dtype.itemsize, 1)
    step = max(HASH_BLOCK_BYTES // row_bytes, 1)
    for start in range(0, len(stored), step):
        rows = slice(start, min(start + step, len(stored)))
        digest.update(np.ascontiguousarray(stored[rows]).data)
        release_rows(W, rows)
    return digest.hexdigest()


def cache_file(cache_dir: Path, weights_sha256: str, tensor_key: str, matrix: str) -> Path:
    """Where the hash of ``tensor_key`` (read as ``matrix``) of a weights file is kept."""
    name = re.sub(r"[^\w.\-]", "_", f"{tensor_key}.{matrix}")
    return Path(cache_dir) / CACHE_FOLDER / weights_sha256 / f"{name}.txt"


def embedding_sha256(
    W: Any, weights_sha256: str, tensor_key: str, matrix: str, cache_dir: Path | None = None
) -> str:
    """``tensor_sha256(W)``, computed once per weights file (``weights_sha256``), tensor
    and matrix: remembered in this process and kept in ``cache_dir``. Without a weights
    hash (nothing names the bytes) it is computed each time."""
    if not weights_sha256:
        return tensor_sha256(W)
    key = (weights_sha256, tensor_key, matrix)
    if key in _REMEMBERED:
        return _REMEMBERED[key]
    file = cache_file(cache_dir, *key) if cache_dir is not None else None
    digest = _read(file) if file is not None else None
    if digest is None:
        digest = tensor_sha256(W)
        if file is not None:
            try:
                with written_with_checksum(file, "w") as stream:
                    stream.write(digest)
            except OSError as error:  # a read-only cache: computed again next time
                log.warning("could not keep the embedding hash in %s: %s", file, error)
    _REMEMBERED[key] = digest
    return digest


def _read(file: Path) -> str | None:
    """The hash kept in ``file``; ``None`` when absent, damaged or not a hash."""
    if not intact(file):
        return None
    try:
        text = file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if re.fullmatch(r"[0-9a-f]{64}", text) else None
