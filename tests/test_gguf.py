"""GGUF checkpoints: tiny files written with gguf's own writer, and the bundled SmolLM2."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import dequantize, quantize

from embsvd.io.checkpoint import default_cache_dir, load_checkpoint
from embsvd.io.gguf_file import _convert, conversion_lock, convert_once, write_token_matrices
from embsvd.io.spec import CheckpointSpec
from embsvd.io.weights import file_sha256
from tests.conftest import PROJECT_ROOT

D_VOCAB, D_MODEL = 64, 32  # Q8_0 packs rows in blocks of 32


def write_gguf(file: Path, tensors: dict[str, np.ndarray], qtype=GGMLQuantizationType.F32):
    writer = GGUFWriter(file, "llama")
    for name, array in tensors.items():
        if qtype == GGMLQuantizationType.F32:
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def matrix(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(D_VOCAB, D_MODEL)).astype(np.float32)


# A byte-level BPE vocabulary in GGUF metadata: the end-of-text token, the 256 byte
# symbols, and the tokens these words merge into.
GGUF_WORDS = ["ĠFrance", "Ġthe"]


def gguf_vocabulary() -> tuple[list[str], list[str]]:
    """``(tokens, merges)`` of a tiny byte-level BPE, as GGUF stores them."""
    from tokenizers import pre_tokenizers

    tokens = ["<|endoftext|>", *sorted(pre_tokenizers.ByteLevel.alphabet())]
    merges = []
    for word in GGUF_WORDS:
        for end in range(2, len(word) + 1):
            if word[:end] not in tokens:
                tokens.append(word[:end])
                merges.append(f"{word[: end - 1]} {word[end - 1]}")
    return tokens, merges


def write_gguf_lm(file: Path, W_E: np.ndarray | None = None, seed: int = 0) -> np.ndarray:
    """A tiny Llama GGUF file with a tokenizer in its metadata (what transformers converts),
    so that it loads like a real one; returns its W_E (float32, one row per token)."""
    tokens, merges = gguf_vocabulary()
    if W_E is None:
        W_E = np.random.default_rng(seed).normal(size=(len(tokens), D_MODEL)).astype(np.float32)
    writer = GGUFWriter(file, "llama")
    writer.add_context_length(64)
    writer.add_embedding_length(D_MODEL)
    writer.add_block_count(1)
    writer.add_feed_forward_length(64)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([1] * len(tokens))
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    writer.add_tensor("token_embd.weight", W_E)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return W_E


def test_f32_embedding_without_output_is_tied(tmp_path):
    W_E = matrix(0)
    write_gguf(tmp_path / "m.gguf", {"token_embd.weight": W_E, "blk.0.attn_norm.weight": W_E[0]})

    meta = write_token_matrices(tmp_path / "m.gguf", tmp_path)

    assert meta["tied"] is True
    assert meta["tensors"] == {"token_embd.weight": {"type": "F32", "shape": [D_VOCAB, D_MODEL]}}
    np.testing.assert_array_equal(np.load(tmp_path / "token_embd.weight.npy"), W_E)


def test_q8_0_embedding_is_dequantized_and_a_separate_output_is_untied(tmp_path):
    W_E, W_U = matrix(0), matrix(1)
    write_gguf(
        tmp_path / "m.gguf",
        {"token_embd.weight": W_E, "output.weight": W_U},
        GGMLQuantizationType.Q8_0,
    )

    meta = write_token_matrices(tmp_path / "m.gguf", tmp_path)

    assert meta["tied"] is False
    assert meta["tensors"]["token_embd.weight"]["type"] == "Q8_0"
    for name, original in (("token_embd.weight", W_E), ("output.weight", W_U)):
        read = np.load(tmp_path / f"{name}.npy")
        assert read.dtype == np.float32 and read.shape == (D_VOCAB, D_MODEL)
        # exactly gguf's own round trip, and within one quantization step of the original
        expected = dequantize(
            quantize(original, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
        )
        np.testing.assert_array_equal(read, expected)
        step = np.abs(original).max(axis=1, keepdims=True) / 127  # one block per row here
        assert np.all(np.abs(read - original) <= step)


def test_output_with_the_same_bytes_as_the_embedding_is_tied(tmp_path):
    W_E = matrix(0)
    write_gguf(tmp_path / "m.gguf", {"token_embd.weight": W_E, "output.weight": W_E.copy()})
    assert write_token_matrices(tmp_path / "m.gguf", tmp_path)["tied"] is True


def test_file_without_token_embedding_is_not_a_language_model(tmp_path):
    write_gguf(tmp_path / "m.gguf", {"blk.0.ffn_up.weight": matrix(0)})
    with pytest.raises(
        ValueError,
        match=r"model.gguf_file: .*m\.gguf has no tensor "
        r"'token_embd\.weight', so it is not a language model's GGUF file "
        r"\(it has 1 tensors: blk\.0\.ffn_up\.weight\)",
    ):
        write_token_matrices(tmp_path / "m.gguf", tmp_path)


def test_gguf_file_missing_from_the_folder_lists_those_there(tmp_path):
    write_gguf(tmp_path / "a.gguf", {"token_embd.weight": matrix(0)})
    spec = CheckpointSpec(name="g", path=str(tmp_path), gguf_file="b.gguf")
    with pytest.raises(
        FileNotFoundError,
        match=r"model.gguf_file: 'b.gguf' is not in .*; "
        r"GGUF files there: a\.gguf",
    ):
        load_checkpoint(spec, tmp_path / "cache")


@pytest.mark.parametrize("name", ["../a.gguf", "/tmp/a.gguf", "sub/a.gguf", ".."])
def test_gguf_file_must_name_a_file_of_the_folder(tmp_path, name):
    """A name that leads out of the checkpoint folder is refused before anything is read."""
    (tmp_path / "model").mkdir()
    write_gguf(tmp_path / "a.gguf", {"token_embd.weight": matrix(0)})
    spec = CheckpointSpec(name="g", path=str(tmp_path / "model"), gguf_file=name)
    with pytest.raises(ValueError, match=r"model.gguf_file: .* is not a file name; name a file"):
        load_checkpoint(spec, tmp_path / "cache")


def test_folder_with_two_gguf_files_needs_a_name(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        write_gguf(tmp_path / name, {"token_embd.weight": matrix(0)})
    with pytest.raises(ValueError, match=r"holds 2 GGUF files \(a\.gguf, b\.gguf\); name one"):
        load_checkpoint(CheckpointSpec(name="g", path=str(tmp_path)), tmp_path / "cache")


def test_gguf_without_tokenizer_metadata_says_so_and_caches_nothing(tmp_path):
    write_gguf(tmp_path / "m.gguf", {"token_embd.weight": matrix(0)})
    cache = tmp_path / "cache"
    with pytest.raises(
        ValueError,
        match=r"model.gguf_file: no tokenizer could be built from "
        r"the metadata of .*m\.gguf",
    ):
        load_checkpoint(CheckpointSpec(name="g", path=str(tmp_path)), cache)
    # no half-written entry; the conversion's lock file stays (removing it would race)
    assert [p.name for p in (cache / "gguf").iterdir() if p.suffix != ".lock"] == []


def test_a_gguf_file_with_tokenizer_metadata_loads_and_is_cached(tmp_path):
    W_E = write_gguf_lm(tmp_path / "lm.gguf")
    cache = tmp_path / "cache"

    checkpoint = load_checkpoint(CheckpointSpec(name="g", path=str(tmp_path)), cache)

    np.testing.assert_array_equal(checkpoint.W, W_E)
    assert checkpoint.quantization == "F32" and checkpoint.tied is True
    assert len(checkpoint.tokenizer) == len(W_E)
    assert checkpoint.tokenizer.encode(" France") == [checkpoint.tokenizer.get_vocab()["ĠFrance"]]
    entry = cache / "gguf" / checkpoint.weights_sha256
    meta = json.loads((entry / "meta.json").read_text())
    assert "token_embd.weight.npy" in meta["files"] and "tokenizer/tokenizer.json" in meta["files"]
    for name in [*meta["files"], "meta.json"]:  # every file carries its checksum record
        assert (entry / f"{name}.checksum").is_file()


def test_an_integer_gguf_embedding_is_refused(tmp_path):
    write_gguf(tmp_path / "m.gguf", {"token_embd.weight": np.ones((D_VOCAB, D_MODEL), np.int8)})
    with pytest.raises(
        ValueError,
        match=r"model\.gguf_file: tensor 'token_embd\.weight' in .*m\.gguf is stored as I8, "
        r"integer codes without scales, so it cannot be analysed; use a GGUF file with a "
        r"float or a quantized type",
    ):
        write_token_matrices(tmp_path / "m.gguf", tmp_path)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBSVD_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EMBSVD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "embsvd"


@pytest.mark.slow
def test_bundled_smollm2_is_read_from_its_gguf_and_cached(smollm2):
    assert smollm2.W.shape == (49152, 576)
    assert smollm2.quantization == "Q8_0" and smollm2.tied is True
    assert smollm2.tensor_key == "token_embd.weight"
    assert smollm2.weights_file.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(smollm2.tokenizer) == 49152
    assert smollm2.tokenizer.convert_ids_to_tokens([4649]) == ["ĠFrance"]
    # real embeddings: finite, and different words have different rows
    france, germany = np.asarray(smollm2.W[[4649, smollm2.tokenizer.get_vocab()["ĠGermany"]]])
    assert np.isfinite(smollm2.W).all() and not np.array_equal(france, germany)
    # the cache entry: the matrix, the converted tokenizer and what was read
    entry = default_cache_dir() / "gguf" / smollm2.weights_sha256
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["tensors"]["token_embd.weight"] == {"type": "Q8_0", "shape": [49152, 576]}
    assert (entry / "tokenizer" / "tokenizer.json").is_file()
    # a second read uses the entry as it is
    stamp = os.stat(entry / "token_embd.weight.npy").st_mtime_ns
    again = convert_once(smollm2.weights_file, default_cache_dir())
    assert again.folder == entry
    assert os.stat(entry / "token_embd.weight.npy").st_mtime_ns == stamp
    # tied: the output matrix is the embedding itself
    output = again.token_matrix("output")
    assert output.tensor_key == "token_embd.weight" and output.tied is True


# --- one conversion per machine, and what it says -------------------------------------------

# A process that converts lm.gguf into a cache once every process of the barrier has
# imported what a conversion needs: the processes reach the conversion together.
CONVERT_TOGETHER = """
import os, sys, time
from pathlib import Path
import gguf, transformers  # noqa: F401 (imported before the barrier, not inside the race)
from embsvd.io.gguf_file import convert_once
file, cache, barrier = (Path(arg) for arg in sys.argv[1:4])
parties = int(sys.argv[4])
barrier.mkdir(parents=True, exist_ok=True)
(barrier / str(os.getpid())).touch()
deadline = time.monotonic() + 120
while len(list(barrier.iterdir())) < parties:
    if time.monotonic() > deadline:
        sys.exit("the other processes did not reach the barrier")
    time.sleep(0.002)
print(convert_once(file, cache, lock_timeout_s=120).folder)
"""


def convert_in_a_process(file: Path, cache: Path, barrier: Path, parties: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CONVERT_TOGETHER, str(file), str(cache), str(barrier), str(parties)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )


def gguf_entry(file: Path, cache: Path) -> Path:
    return cache / "gguf" / file_sha256(file, cache)


def test_a_conversion_says_each_step_and_its_time_once(tmp_path):
    write_gguf_lm(tmp_path / "lm.gguf")
    cache, lines = tmp_path / "cache", []

    convert_once(tmp_path / "lm.gguf", cache, report=lines.append)
    convert_once(tmp_path / "lm.gguf", cache, report=lines.append)  # the entry: silent

    entry = gguf_entry(tmp_path / "lm.gguf", cache)
    assert lines[:4] == [
        f"converting lm.gguf into the cache {entry} (once per machine)",
        "  reading its tensors ...",
        f"  dequantizing token_embd.weight (F32, {len(gguf_vocabulary()[0])} x {D_MODEL}) ...",
        "  building the tokenizer from its metadata ...",
    ]
    assert re.fullmatch(
        r"converted lm\.gguf in [\d.]+ s \(tensors [\d.]+ s, token_embd\.weight [\d.]+ s, "
        r"tokenizer [\d.]+ s\)",
        lines[4],
    )
    assert len(lines) == 5


def test_a_conversion_held_too_long_by_another_process_fails_naming_its_lock(tmp_path):
    write_gguf_lm(tmp_path / "lm.gguf")
    cache, lines = tmp_path / "cache", []
    entry = gguf_entry(tmp_path / "lm.gguf", cache)
    holder = f"process {os.getpid()} on {socket.gethostname()}"

    # a lock's second open file is another holder, in this process as in another
    with (
        conversion_lock(entry, tmp_path / "lm.gguf", report=lines.append),
        pytest.raises(TimeoutError) as refused,
    ):
        convert_once(tmp_path / "lm.gguf", cache, lock_timeout_s=0.2, report=lines.append)

    assert str(refused.value) == (
        f"model.gguf_file: waited 0 s for {holder}, which is converting lm.gguf into "
        f"{entry}; it still holds the lock {entry}.lock. If it is still working (a large "
        "vocabulary takes minutes), run again later; if it hangs, end it: its lock is "
        "released when it exits"
    )
    assert lines == [f"waiting for {holder}, which is converting lm.gguf into {entry}"]
    assert not entry.exists()


@pytest.mark.slow
def test_a_process_waits_for_a_conversion_in_progress_and_reuses_its_entry(tmp_path):
    """This test holds the lock as a converting process would: the other process says it
    waits, and once the entry is there it reads it without converting."""
    file, cache = tmp_path / "lm.gguf", tmp_path / "cache"
    write_gguf_lm(file)
    entry = gguf_entry(file, cache)
    with conversion_lock(entry, file):
        other = convert_in_a_process(file, cache, tmp_path / "barrier", parties=1)
        first_lines = []
        while not any("waiting for" in line for line in first_lines):
            line = other.stderr.readline()
            assert line, f"it ended without waiting: {''.join(first_lines)}"
            first_lines.append(line)
        assert f"waiting for process {os.getpid()} on " in first_lines[-1]
        _convert(file, entry, report=lambda line: None)
    out, err = other.communicate(timeout=120)

    assert other.returncode == 0, err
    assert out.strip() == str(entry)
    assert "converting" not in err and "waited " in err


@pytest.mark.slow
def test_parallel_workers_starting_together_convert_a_gguf_file_once(tmp_path):
    file, cache = tmp_path / "lm.gguf", tmp_path / "cache"
    write_gguf_lm(file)

    workers = [convert_in_a_process(file, cache, tmp_path / "barrier", 2) for _ in range(2)]
    outcomes = [worker.communicate(timeout=240) for worker in workers]

    assert [w.returncode for w in workers] == [0, 0], outcomes
    stderr = "".join(err for _, err in outcomes)
    assert stderr.count("embsvd: converting lm.gguf") == 1, stderr
    assert stderr.count("embsvd: converted lm.gguf") == 1, stderr
    entry = gguf_entry(file, cache)
    assert [out.strip() for out, _ in outcomes] == [str(entry), str(entry)]
    assert json.loads((entry / "meta.json").read_text())["files"]
