"""Tensors read from safetensors files without reading more than they hold, and once.

A float32 (or float64) tensor is memory-mapped straight from the file: loading costs
nothing and only the pages a computation touches are read. A bfloat16 or float16
tensor, which numpy cannot compute with (bfloat16) or only slowly (float16), is widened
to float32 once, block by block, into ``<cache_dir>/matrices/<file sha256>/<key>.npy``;
every later load, in this process or a parallel worker, memory-maps that file. A file's
SHA-256 is itself remembered per path, size and modification time, so a sweep hashes a
multi-GB shard once, not once per job.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

BLOCK_ELEMENTS = 1 << 24  # 16 Mi values (32 MB of bf16) per read while widening
NATIVE = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1", "I8": "i1"}
WIDENED = {"BF16", "F16"}  # stored narrower than float32: widened once into the cache
HUB_BLOB = re.compile(r"[0-9a-f]{64}")  # the Hub cache names LFS blobs by their SHA-256


def safetensors_header(file: Path) -> tuple[int, dict]:
    """``(offset of the data, header)``: a u64 length, a JSON header, then the bytes."""
    with open(file, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        return 8 + header_len, json.loads(handle.read(header_len))


def read_safetensors(file: Path, key: str, cache_dir: Path | None = None) -> np.ndarray:
    """One tensor of a safetensors file: memory-mapped when numpy has its dtype, widened
    to float32 otherwise (into the cache when ``cache_dir`` is given, else in memory)."""
    data_start, header = safetensors_header(file)
    entry = header[key]
    dtype, shape = entry["dtype"], tuple(entry["shape"])
    offset = data_start + entry["data_offsets"][0]
    if dtype in NATIVE:
        if not shape or 0 in shape:
            return np.zeros(shape, dtype=NATIVE[dtype])
        return np.memmap(file, dtype=NATIVE[dtype], mode="r", offset=offset, shape=shape)
    if dtype not in WIDENED:
        raise ValueError(f"model: tensor {key!r} in {file} has dtype {dtype}, not a float type")
    if cache_dir is None:
        widened = np.empty(shape, dtype=np.float32)
        _widen(file, offset, dtype, widened.reshape(-1))
        return widened
    target = cache_dir / "matrices" / file_sha256(file, cache_dir) / f"{_safe_name(key)}.npy"
    if not target.is_file():
        _widen_into_cache(file, offset, dtype, shape, target)
    return np.load(target, mmap_mode="r")


def _widened_blocks(file: Path, offset: int, dtype: str, size: int) -> Iterator[np.ndarray]:
    """The ``size`` values of ``dtype`` at ``offset``, widened to float32 a block at a time
    (the yielded buffer is reused: consume it before the next one)."""
    raw = np.empty(min(BLOCK_ELEMENTS, size), dtype="<u2")
    widened = np.empty(len(raw), dtype=np.float32)
    with open(file, "rb") as handle:
        handle.seek(offset)
        for start in range(0, size, len(raw)):
            n = min(len(raw), size - start)
            handle.readinto(memoryview(raw[:n]).cast("B"))
            if dtype == "BF16":  # bfloat16 is the top half of a float32: exact
                np.multiply(raw[:n], np.uint32(1 << 16), out=widened[:n].view(np.uint32))
            else:
                widened[:n] = raw[:n].view("<f2")
            yield widened[:n]


def _widen(file: Path, offset: int, dtype: str, out: np.ndarray) -> None:
    """Read ``out.size`` values of ``dtype`` from ``offset`` into the float32 ``out``."""
    start = 0
    for block in _widened_blocks(file, offset, dtype, out.size):
        out[start : start + len(block)] = block
        start += len(block)


@contextmanager
def replaced_atomically(target: Path, mode: str = "wb") -> Iterator[IO]:
    """A stream whose contents replace ``target`` only when the block ends without an
    error: written to a scratch file beside it and renamed into place, so a reader (or a
    parallel worker) sees the old file or the whole new one, never a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as stream:
            yield stream
        os.replace(scratch, target)
    finally:
        Path(scratch).unlink(missing_ok=True)


def _widen_into_cache(
    file: Path, offset: int, dtype: str, shape: tuple[int, ...], target: Path
) -> None:
    """Write the widened tensor as an ``.npy`` file, block by block (never all of it in
    memory), into a scratch file that is renamed into place when complete."""
    with replaced_atomically(target) as out:
        header = {"descr": "<f4", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(out, header)
        for block in _widened_blocks(file, offset, dtype, int(np.prod(shape))):
            out.write(memoryview(block).cast("B"))


def _safe_name(key: str) -> str:
    return re.sub(r"[^\w.\-]", "_", key)


def file_sha256(file: Path, cache_dir: Path | None = None) -> str:
    """Hex SHA-256 of a file's bytes, hashed once per path, size and mtime.

    A file in the Hugging Face cache whose blob is named by its SHA-256 (every LFS file)
    is not read at all. Others are remembered in ``<cache_dir>/sha256/``.
    """
    resolved = Path(file).resolve()
    if resolved.parent.name == "blobs" and HUB_BLOB.fullmatch(resolved.name):
        return resolved.name
    if cache_dir is None:
        return sha256_of(resolved)
    stat = resolved.stat()
    stamp = {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo = cache_dir / "sha256" / f"{hashlib.sha256(str(resolved).encode()).hexdigest()}.json"
    try:
        known = json.loads(memo.read_text())
        if {k: known.get(k) for k in stamp} == stamp:
            return known["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = sha256_of(resolved)
    with replaced_atomically(memo, "w") as handle:
        json.dump({**stamp, "sha256": digest}, handle)
    return digest


def sha256_of(file: Path) -> str:
    """Hex SHA-256 of a file's bytes, read now."""
    with open(file, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
