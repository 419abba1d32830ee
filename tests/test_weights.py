"""Tensors memory-mapped or widened once into the cache; file hashes remembered."""

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


def test_bfloat16_is_widened_once_into_the_cache_block_by_block(tmp_path, monkeypatch):
    values = np.random.default_rng(1).normal(size=(37, 6)).astype(np.float32)
    file = bf16_file(tmp_path, values)
    expected = ((values.view(np.uint32) >> 16) << 16).view(np.float32)
    monkeypatch.setattr(weights, "BLOCK_ELEMENTS", 50)  # several blocks, a short last one
    cache = tmp_path / "cache"
    first = read_safetensors(file, "embed", cache)
    np.testing.assert_array_equal(first, expected)
    [entry] = (cache / "matrices").glob("*/embed.npy")
    assert entry.parent.name == hashlib.sha256(file.read_bytes()).hexdigest()

    def no_second_conversion(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(weights, "_widen_into_cache", no_second_conversion)
    again = read_safetensors(file, "embed", cache)
    assert isinstance(again, np.memmap)
    np.testing.assert_array_equal(again, expected)
    np.testing.assert_array_equal(read_safetensors(file, "embed"), expected)  # in memory


def test_float16_is_widened_exactly(tmp_path):
    values = np.random.default_rng(2).normal(size=(9, 4)).astype(np.float16)
    save_file({"embed": values}, tmp_path / "h.safetensors")
    read = read_safetensors(tmp_path / "h.safetensors", "embed", tmp_path / "cache")
    assert read.dtype == np.float32
    np.testing.assert_array_equal(read, values.astype(np.float32))


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


@pytest.mark.parametrize(
    "damage",
    ["edited", "truncated", "flipped", "no-record"],
)
def test_a_damaged_widened_matrix_is_rebuilt_with_a_warning(tmp_path, damage, caplog):
    values = np.random.default_rng(4).normal(size=(37, 6)).astype(np.float32)
    file = bf16_file(tmp_path, values)
    expected = ((values.view(np.uint32) >> 16) << 16).view(np.float32)
    cache = tmp_path / "cache"
    read_safetensors(file, "embed", cache)
    [entry] = (cache / "matrices").glob("*/embed.npy")
    if damage == "edited":  # a valid .npy with other values
        np.save(entry, np.zeros_like(expected))
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:-24])
    elif damage == "flipped":
        raw = bytearray(entry.read_bytes())
        raw[-5] ^= 0x40
        entry.write_bytes(bytes(raw))
    else:
        Path(f"{entry}.checksum").unlink()

    with caplog.at_level(logging.WARNING):
        again = read_safetensors(file, "embed", cache)

    np.testing.assert_array_equal(again, expected)
    assert f"cache entry {entry} is damaged" in caplog.text
    assert "rebuilding it" in caplog.text


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
        read.W.sum()
    finally:
        opened, OPENED[:] = {Path(p).name for p in OPENED[1:]}, []
    assert read.tensor_key == EMBEDDING_KEY and read.W.shape == (512, 32)
    assert read.tied is False  # declared in config.json: lm_head's shard stays closed
    assert opened & set(shards) == {"model-00001.safetensors"}
