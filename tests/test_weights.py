"""Tensors memory-mapped as stored (bfloat16 and float16 read as float32 rows); file
hashes remembered."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from embsvd.io import weights
from embsvd.io.rows import BFloat16Rows, Float16Rows, is_streamed, matmul_rows, row_blocks
from embsvd.io.weights import file_sha256, read_safetensors


def bf16_file(tmp_path: Path, values: np.ndarray) -> Path:
    """A safetensors file, written by hand, with ``values`` as bfloat16 (truncated) after
    another tensor, so the bf16 data does not start at the data section's start."""
    top_half = (values.astype(np.float32).view(np.uint32) >> 16).astype("<u2")
    other = np.ones(3, dtype="<f4")
    header = {
        "other": {"dtype": "F32", "shape": [3], "data_offsets": [0, other.nbytes]},
        "embed": {
            "dtype": "BF16",
            "shape": list(values.shape),
            "data_offsets": [other.nbytes, other.nbytes + top_half.nbytes],
        },
    }
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    file = tmp_path / "bf16.safetensors"
    file.write_bytes(
        len(encoded).to_bytes(8, "little") + encoded + other.tobytes() + top_half.tobytes()
    )
    return file


def test_float32_tensors_are_memory_mapped_not_copied(tmp_path):
    W = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    save_file({"embed": W}, tmp_path / "w.safetensors")
    read = read_safetensors(tmp_path / "w.safetensors", "embed", tmp_path / "cache")
    assert isinstance(read, np.memmap) and not read.flags.writeable
    np.testing.assert_array_equal(read, W)
    assert not (tmp_path / "cache" / "matrices").exists()  # nothing to convert


def exactly_widened(values: np.ndarray) -> np.ndarray:
    """``values`` truncated to bfloat16, as float32: what a bfloat16 file stores."""
    return ((values.astype(np.float32).view(np.uint32) >> 16) << 16).view(np.float32)


def test_bfloat16_is_memory_mapped_and_read_as_exactly_widened_rows(tmp_path):
    values = np.random.default_rng(1).normal(size=(37, 6)).astype(np.float32)
    file = bf16_file(tmp_path, values)
    expected = exactly_widened(values)
    cache = tmp_path / "cache"

    W = read_safetensors(file, "embed", cache)

    assert isinstance(W, BFloat16Rows) and is_streamed(W)
    assert W.is_mapped and not W.raw.flags.writeable
    assert (W.shape, len(W), W.ndim, W.dtype) == ((37, 6), 37, 2, np.float32)
    assert W.nbytes == 37 * 6 * 2  # what the file stores, not a float32 copy
    np.testing.assert_array_equal(W[3], expected[3])
    np.testing.assert_array_equal(W[5:30], expected[5:30])
    ids = np.array([[0, 36, 2], [7, 7, 1]])
    gathered = W[ids]
    assert gathered.shape == (2, 3, 6) and gathered.dtype == np.float32
    np.testing.assert_array_equal(gathered, expected[ids])
    for block_rows in (1, 5, 37, 100):
        blocks = list(row_blocks(W, block_rows))
        assert [rows.start for rows, _ in blocks] == list(range(0, 37, block_rows))
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), expected)
    np.testing.assert_array_equal(matmul_rows(W, np.eye(6)), expected.astype(np.float64))
    assert not cache.exists()  # nothing widened, nothing written


def test_float16_is_memory_mapped_and_read_as_exact_float32_rows(tmp_path):
    values = np.random.default_rng(2).normal(size=(9, 4)).astype(np.float16)
    save_file({"embed": values}, tmp_path / "h.safetensors")
    read = read_safetensors(tmp_path / "h.safetensors", "embed", tmp_path / "cache")
    assert isinstance(read, Float16Rows) and read.dtype == np.float32
    assert read.raw.dtype == np.float16 and read.is_mapped and not read.raw.flags.writeable
    np.testing.assert_array_equal(read[:], values.astype(np.float32))
    np.testing.assert_array_equal(read[[8, 0]], values[[8, 0]].astype(np.float32))


def test_a_narrow_tensor_of_other_than_two_dimensions_is_widened_in_memory(tmp_path):
    values = np.random.default_rng(3).normal(size=(2, 3, 4)).astype(np.float16)
    save_file({"conv": values, "bias": values[0, 0]}, tmp_path / "c.safetensors")
    conv = read_safetensors(tmp_path / "c.safetensors", "conv")
    assert isinstance(conv, np.ndarray) and conv.dtype == np.float32
    np.testing.assert_array_equal(conv, values.astype(np.float32))
    np.testing.assert_array_equal(
        read_safetensors(tmp_path / "c.safetensors", "bias"), values[0, 0].astype(np.float32)
    )


@pytest.mark.parametrize("stored", ["BF16", "F16", "F32"])
def test_non_finite_rows_are_found_from_the_stored_bits(tmp_path, stored):
    values = np.random.default_rng(5).normal(size=(300, 7)).astype(np.float32)
    values[[3, 150, 299], [0, 6, 2]] = [np.nan, np.inf, -np.inf]
    values[77, 1] = 3e38  # finite in float32 and bfloat16 (float16: infinite)
    if stored == "BF16":
        W = read_safetensors(bf16_file(tmp_path, values), "embed")
    else:
        dtype = np.float16 if stored == "F16" else np.float32
        with np.errstate(over="ignore"):
            save_file({"embed": values.astype(dtype)}, tmp_path / "w.safetensors")
        W = read_safetensors(tmp_path / "w.safetensors", "embed")
    expected = [3, 77, 150, 299] if stored == "F16" else [3, 150, 299]
    assert np.isfinite(W[0]).all()
    for block in (weights.BLOCK_ELEMENTS, 7 * 4, 7):  # several blocks, a short last one
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(weights, "BLOCK_ELEMENTS", block)
            assert weights.non_finite_rows(W).tolist() == expected


def test_a_non_float_tensor_is_refused(tmp_path):
    save_file({"mask": np.ones(4, dtype=bool)}, tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="model: tensor 'mask' in .* has dtype BOOL, not a float"):
        read_safetensors(tmp_path / "b.safetensors", "mask")


def settled(monkeypatch) -> None:
    """Hash as if files were written long ago (as real checkpoints are), so that their
    hashes are remembered; a file changed in the last ``RACY_NS`` is hashed every time."""
    monkeypatch.setattr(weights, "_now_ns", lambda: time.time_ns() + 2 * weights.RACY_NS)


def counted_hashes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = weights.sha256_of
    monkeypatch.setattr(weights, "sha256_of", lambda f: calls.append(f) or real(f))
    return calls


def same_size_and_mtime(file: Path, content: bytes, *, in_place: bool) -> None:
    """Replace ``file``'s bytes by ``content`` (of the same size) and give it its old
    mtime: in place (same inode), or by renaming a new file over it (a new inode). Only
    the change time, which no user can set, tells it apart; wait (on the clock, not a
    sleep) until it has moved past the old one, which a coarse file-system tick may delay."""
    before = file.stat()
    if in_place:
        with open(file, "r+b") as handle:
            handle.write(content)
    else:
        new = file.with_name(file.name + ".new")
        new.write_bytes(content)
        os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(new, file)
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    while file.stat().st_ctime_ns == before.st_ctime_ns:
        os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = file.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert (after.st_ino == before.st_ino) is in_place


def test_a_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    settled(monkeypatch)
    file = tmp_path / "weights.bin"
    file.write_bytes(b"abc" * 1000)
    calls = counted_hashes(monkeypatch)
    cache = tmp_path / "cache"
    digest = file_sha256(file, cache)
    assert digest == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert file_sha256(file, cache) == digest and len(calls) == 1
    file.write_bytes(b"abd" * 1000)  # same size, new mtime
    os.utime(file, ns=(1, 1))
    assert file_sha256(file, cache) == hashlib.sha256(b"abd" * 1000).hexdigest()
    assert len(calls) == 2


@pytest.mark.parametrize("in_place", [True, False], ids=["same-inode", "renamed-over"])
def test_a_file_replaced_with_the_same_size_and_mtime_is_hashed_again(
    tmp_path, monkeypatch, in_place
):
    settled(monkeypatch)
    file, cache = tmp_path / "weights.bin", tmp_path / "cache"
    file.write_bytes(b"abc" * 1000)
    assert file_sha256(file, cache) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert list((cache / "sha256").glob("*.json"))  # remembered: the test reads the memo

    same_size_and_mtime(file, b"xyz" * 1000, in_place=in_place)

    assert file_sha256(file, cache) == hashlib.sha256(b"xyz" * 1000).hexdigest()


def test_a_file_changed_moments_ago_is_not_remembered(tmp_path, monkeypatch):
    """Two writes within one time stamp tick leave size, mtime and ctime alike: a hash
    taken right after a write is not trusted for the next call."""
    file = tmp_path / "weights.bin"
    file.write_bytes(b"abc" * 1000)
    calls = counted_hashes(monkeypatch)
    for _ in range(2):
        assert file_sha256(file, tmp_path / "cache") == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert len(calls) == 2 and not (tmp_path / "cache" / "sha256").exists()


def test_a_widened_copy_an_older_version_cached_is_deleted_not_read(tmp_path, caplog):
    """Older versions widened bfloat16 into ``<cache_dir>/matrices/<sha256>/``: such an
    entry, even a valid one with other values, is never read, and reading its file
    deletes it (twice the file's size on disk); other files' entries stay until theirs
    are read."""
    values = np.random.default_rng(4).normal(size=(37, 6)).astype(np.float32)
    file = bf16_file(tmp_path, values)
    cache = tmp_path / "cache"
    legacy = cache / "matrices" / hashlib.sha256(file.read_bytes()).hexdigest()
    legacy.mkdir(parents=True)
    np.save(legacy / "embed.npy", np.zeros((37, 6), dtype=np.float32))
    (legacy / "embed.npy.checksum").write_text("{}")
    other = cache / "matrices" / ("0" * 64)
    other.mkdir()
    (other / "embed.npy").write_bytes(b"of another file")

    with caplog.at_level(logging.INFO):
        W = read_safetensors(file, "embed", cache)

    np.testing.assert_array_equal(W[:], exactly_widened(values))
    assert not legacy.exists() and other.is_dir()
    assert f"deleting {legacy}: widened copies are no longer kept" in caplog.text
    (other / "embed.npy").unlink()
    other.rmdir()
    read_safetensors(file, "embed", cache)
    assert not (cache / "matrices").exists()  # the last entry gone, the folder too


def test_a_hub_blob_is_named_by_its_hash_and_not_read(tmp_path, monkeypatch):
    content = b"weights"
    blob = tmp_path / "blobs" / hashlib.sha256(content).hexdigest()
    blob.parent.mkdir()
    blob.write_bytes(content)
    link = tmp_path / "snapshots" / "abc" / "model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    monkeypatch.setattr(weights, "sha256_of", lambda f: pytest.fail("read the blob"))
    assert file_sha256(link, tmp_path / "cache") == blob.name


OPENED: list[str] = []


def _record_opens(event: str, args: tuple) -> None:
    if event == "open" and OPENED and isinstance(args[0], str | Path):
        OPENED.append(str(args[0]))


sys.addaudithook(_record_opens)  # audit hooks stay for the process: it records when armed


def test_a_sharded_checkpoint_is_read_from_the_embedding_shard_alone(tmp_path):
    from benchmark import EMBEDDING_KEY, write_large_checkpoint

    from embsvd.io.hf_folder import read_token_matrix
    from embsvd.io.spec import CheckpointSpec

    folder = write_large_checkpoint(tmp_path / "ckpt", 512, 32, other_bytes=1 << 22)
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(shards) == 5  # the embedding's and four of other tensors (lm_head among them)
    OPENED[:] = ["armed"]
    try:
        read = read_token_matrix(
            folder, CheckpointSpec(name="big", path=str(folder)), tmp_path / "c"
        )
        sum(block.sum() for _, block in row_blocks(read.W))  # every value read
    finally:
        opened, OPENED[:] = {Path(p).name for p in OPENED[1:]}, []
    assert read.tensor_key == EMBEDDING_KEY and read.W.shape == (512, 32)
    assert read.tied is False  # declared in config.json: lm_head's shard stays closed
    assert opened & set(shards) == {"model-00001.safetensors"}
