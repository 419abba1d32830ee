"""Tensors read from safetensors files without reading more than they hold, and once.

A safetensors file is checked before any tensor is read: its header fits in the file,
parses, and gives every tensor a byte range inside the file that its shape and dtype
fill exactly (a header that claims more rows than are stored would otherwise read the
next tensor's bytes). A token matrix must be stored as a float type (``FLOAT_DTYPES``).

Every float matrix is memory-mapped from the file as stored: loading costs a header and
only the pages a computation touches are read. float32 and float64 are numpy arrays; a
bfloat16 or float16 matrix is an ``embsvd.io.rows.BFloat16Rows`` / ``Float16Rows``,
whose rows are widened to float32 (exactly) a block or a gather at a time where they
are used, so no float32 copy of twice the file's size is ever made. (Older versions
widened them once into ``<cache_dir>/matrices/``; such an entry is deleted when its
checkpoint is next read.) A file's SHA-256 is remembered per path, size, modification
time, inode and change time (which no user can set), so a sweep hashes a multi-GB shard
once, not once per job, and a file replaced under the same name and time stamp is hashed
again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.io.cache import replaced_atomically
from embsvd.io.rows import BFloat16Rows, Float16Rows, NarrowRows, row_blocks

log = logging.getLogger(__name__)

BLOCK_ELEMENTS = 1 << 21  # 2 Mi values (4 MB of bf16) per read while widening or scanning
NATIVE = {"F32": "<f4", "F64": "<f8"}  # memory-mapped as numpy arrays
# stored narrower than float32: memory-mapped, rows widened to float32 where read
NARROW: dict[str, type[NarrowRows]] = {"BF16": BFloat16Rows, "F16": Float16Rows}
WIDENED = set(NARROW)  # (the name older code imports)
FLOAT_DTYPES = (*NATIVE, *NARROW)  # what a token matrix may be stored as
LEGACY_WIDENED = "matrices"  # where older versions kept widened copies, under cache_dir
INTEGER_DTYPES = {"I8", "U8", "I16", "U16", "I32", "U32", "I64", "U64"}
# bits per value of every safetensors dtype, to check a tensor's byte range
DTYPE_BITS = {
    "BOOL": 8,
    **{f"{sign}{bits}": bits for sign in "IU" for bits in (8, 16, 32, 64)},
    **{"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8},
    **{"F16": 16, "BF16": 16, "F32": 32, "F64": 64, "C64": 64},
}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
HUB_BLOB = re.compile(r"[0-9a-f]{64}")  # the Hub cache names LFS blobs by their SHA-256
# A file changed this recently may be changed again within the same time stamp tick (file
# systems keep coarse times): its hash is not remembered until the file is older.
RACY_NS = 2_000_000_000


def safetensors_header(file: Path) -> tuple[int, dict]:
    """``(offset of the data, header)`` of a safetensors file (a u64 length, a JSON
    header, then the bytes), checked against the file's size.

    Raises:
        ValueError: the file is too short, its header is longer than the file or not JSON,
            or a tensor's byte range lies outside the file or does not match its shape
            and dtype; the message names the file and the tensor.
    """
    size = os.stat(file).st_size
    with open(file, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if size < 8 or header_len > min(size - 8, MAX_HEADER_BYTES):
            raise _not_safetensors(
                file, f"its header claims {header_len} bytes but the file has {size}"
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise _not_safetensors(file, f"its header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise _not_safetensors(file, "its header is not a JSON object")
    data_bytes = size - 8 - header_len
    tensors = {key: entry for key, entry in header.items() if key != "__metadata__"}
    for key, entry in tensors.items():
        _check_entry(file, key, entry, data_bytes)
    # a tensor whose range runs into the next one would read that tensor's bytes as its own
    ranges = sorted((*tensors[key]["data_offsets"], key) for key in tensors)
    for (_, end, key), (start, _, later) in zip(ranges, ranges[1:], strict=False):
        if start < end:
            raise _not_safetensors(
                file, f"the data_offsets of tensors {key!r} and {later!r} overlap"
            )
    return 8 + header_len, header


def _check_entry(file: Path, key: str, entry: object, data_bytes: int) -> None:
    """A tensor's dtype is known, and its byte range lies in the data and holds its shape."""
    try:
        dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        valid = all(isinstance(n, int) and n >= 0 for n in (*shape, start, end))
    except (TypeError, KeyError, ValueError):
        valid = False
    if not valid:
        raise _not_safetensors(
            file, f"tensor {key!r} has no valid dtype, shape and data_offsets: {entry!r}"
        )
    if dtype not in DTYPE_BITS:
        raise _not_safetensors(file, f"tensor {key!r} has an unknown dtype {dtype!r}")
    if not start <= end <= data_bytes:
        raise _not_safetensors(
            file,
            f"tensor {key!r} has data_offsets [{start}, {end}], outside the {data_bytes} "
            "bytes of data the file holds (truncated?)",
        )
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits != 8 * (end - start):
        raise _not_safetensors(
            file,
            f"tensor {key!r} has shape {list(shape)} of {dtype} ({-(-bits // 8)} bytes) but "
            f"its data_offsets [{start}, {end}] hold {end - start} bytes",
        )


def _not_safetensors(file: Path, problem: str) -> ValueError:
    return ValueError(
        f"model: {file} is not a valid safetensors file: {problem}; download or export it again"
    )


def read_safetensors(file: Path, key: str, cache_dir: Path | None = None) -> np.ndarray:
    """One float tensor of a safetensors file, memory-mapped as stored: float32 and
    float64 as ``np.memmap``, a bfloat16 or float16 matrix as a ``BFloat16Rows`` /
    ``Float16Rows`` (rows widened to float32 where read; a tensor of other than two
    dimensions is widened in memory). ``cache_dir``: where an older version's widened
    copy of the tensor may lie; it is deleted.

    Raises:
        ValueError: the file is not valid safetensors, lacks ``key``, or stores it as
            other than a float type (``FLOAT_DTYPES``).
    """
    data_start, header = safetensors_header(file)
    if key not in header or key == "__metadata__":
        raise ValueError(f"model: {file} holds no tensor {key!r}")
    entry = header[key]
    dtype, shape = entry["dtype"], tuple(entry["shape"])
    check_float_dtype(file, key, dtype)
    offset = data_start + entry["data_offsets"][0]
    if not shape or 0 in shape:
        return np.zeros(shape, dtype=NATIVE.get(dtype, np.float32))
    if dtype in NATIVE:
        return np.memmap(file, dtype=NATIVE[dtype], mode="r", offset=offset, shape=shape)
    if cache_dir is not None:
        drop_widened_copies(file, cache_dir)
    if len(shape) == 2:
        return NARROW[dtype].mapped(file, offset, shape)
    widened = np.empty(shape, dtype=np.float32)
    _widen(file, offset, dtype, widened.reshape(-1))
    return widened


def drop_widened_copies(file: Path, cache_dir: Path) -> None:
    """Delete ``<cache_dir>/matrices/<file sha256>/``, where older versions kept the
    file's bfloat16 and float16 tensors widened to float32 (twice the file's size, and
    never read again); nothing is hashed when no such folder exists."""
    legacy = cache_dir / LEGACY_WIDENED
    if not legacy.is_dir():
        return
    entry = legacy / file_sha256(file, cache_dir)
    if entry.is_dir():
        log.info("deleting %s: widened copies are no longer kept", entry)
        shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):  # the last entry gone: the folder too
        legacy.rmdir()


def check_float_dtype(file: Path, key: str, dtype: str) -> None:
    """Refuse a token matrix stored as anything but ``F32``, ``F64``, ``BF16`` or ``F16``."""
    if dtype in FLOAT_DTYPES:
        return
    if dtype in INTEGER_DTYPES:
        raise ValueError(
            f"model: tensor {key!r} in {file} is stored quantized as {dtype} without scales, "
            "so it cannot be analysed (its values are integer codes, not the embedding); use "
            "a float checkpoint (F32, F64, BF16 or F16), or a GGUF file, whose quantized "
            "types carry their scales and are dequantized"
        )
    raise ValueError(
        f"model: tensor {key!r} in {file} has dtype {dtype}, not a float type embsvd reads "
        f"({', '.join(FLOAT_DTYPES)}); convert the checkpoint to one of them"
    )


def _widened_blocks(file: Path, offset: int, dtype: str, size: int) -> Iterator[np.ndarray]:
    """The ``size`` values of ``dtype`` at ``offset``, widened to float32 a block at a time
    (the yielded buffer is reused: consume it before the next one)."""
    raw = np.empty(min(BLOCK_ELEMENTS, size), dtype="<u2")
    widened = np.empty(len(raw), dtype=np.float32)
    with open(file, "rb") as handle:
        handle.seek(offset)
        for start in range(0, size, len(raw)):
            n = min(len(raw), size - start)
            if handle.readinto(memoryview(raw[:n]).cast("B")) != 2 * n:  # shrank since checked
                raise ValueError(f"model: {file} ended while its tensor was read (truncated?)")
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


def _safe_name(key: str) -> str:
    return re.sub(r"[^\w.\-]", "_", key)


def non_finite_rows(W: Any) -> np.ndarray:
    """Row numbers of ``W`` (``(d_vocab, d_model)``) that hold a NaN or an infinity,
    scanned a block of rows at a time (a memory-mapped matrix is never copied whole; a
    bfloat16 or float16 one is judged by its stored bits, without widening)."""
    step = max(1, BLOCK_ELEMENTS // max(1, W.shape[1]))
    found = []
    if isinstance(W, NarrowRows):
        for start in range(0, len(W), step):
            rows = slice(start, start + step)
            bad = W.non_finite(np.asarray(W.raw[rows])).any(axis=1)
            found.append(start + np.flatnonzero(bad))
            W.release(rows)
    else:
        for rows, block in row_blocks(W, step):
            found.append(rows.start + np.flatnonzero(~np.isfinite(block).all(axis=1)))
    return np.concatenate(found) if found else np.zeros(0, dtype=np.intp)


def check_finite(W: Any, where: str, sha256: str, key: str, cache_dir: Path | None = None) -> None:
    """Refuse a matrix with non-finite rows; a finite one is remembered per file hash and
    tensor in ``<cache_dir>/finite/`` so that later jobs do not scan it again.

    Args:
        W: The token matrix, ``(d_vocab, d_model)``.
        where: The file and tensor, as the error names them.
        sha256: SHA-256 of the file ``W`` is read from.
        key: The tensor's name.
        cache_dir: Where the result is remembered; ``None``: scan every time.
    """
    memo = None if cache_dir is None else cache_dir / "finite" / sha256 / f"{_safe_name(key)}.json"
    expected = {"sha256": sha256, "tensor_key": key, "shape": list(W.shape)}
    if memo is not None:
        try:
            if json.loads(memo.read_text()) == expected:
                return
        except (OSError, ValueError):
            pass
    bad = non_finite_rows(W)
    if len(bad):
        shown = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise ValueError(
            f"model: {len(bad)} of {len(W)} rows of {where} hold NaN or infinite values "
            f"(rows {shown}); every statistic over the vocabulary would be NaN. Use a "
            "checkpoint whose embedding is finite (re-export it, or repair those rows)"
        )
    if memo is not None:
        with replaced_atomically(memo, "w") as handle:
            json.dump(expected, handle)


def file_sha256(file: Path, cache_dir: Path | None = None) -> str:
    """Hex SHA-256 of a file's bytes, hashed once per path, size, mtime, inode and ctime.

    A file in the Hugging Face cache whose blob is named by its SHA-256 (every LFS file)
    is not read at all. Others are remembered in ``<cache_dir>/sha256/``, unless changed
    in the last ``RACY_NS`` (a change within the same time stamp tick would go unseen).
    """
    resolved = Path(file).resolve()
    if resolved.parent.name == "blobs" and HUB_BLOB.fullmatch(resolved.name):
        return resolved.name
    if cache_dir is None:
        return sha256_of(resolved)
    stamp = _stamp(resolved)
    memo = cache_dir / "sha256" / f"{hashlib.sha256(str(resolved).encode()).hexdigest()}.json"
    try:
        known = json.loads(memo.read_text())
        if {k: known.get(k) for k in stamp} == stamp:
            return known["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    started = _now_ns()
    digest = sha256_of(resolved)
    if _stamp(resolved) != stamp:
        raise ValueError(
            f"model: {resolved} changed while it was hashed; wait until it is written "
            "completely, then run again"
        )
    if stamp["ctime_ns"] < started - RACY_NS:
        with replaced_atomically(memo, "w") as handle:
            json.dump({**stamp, "sha256": digest}, handle)
    return digest


def _stamp(file: Path) -> dict[str, str | int]:
    stat = file.stat()
    return {
        "path": str(file),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
        "ctime_ns": stat.st_ctime_ns,
    }


def _now_ns() -> int:
    return time.time_ns()


def sha256_of(file: Path) -> str:
    """Hex SHA-256 of a file's bytes, read now."""
    with open(file, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
