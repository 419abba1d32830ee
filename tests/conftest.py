"""Tiny checkpoints written into tmp_path, and a throw-away tracking store.

Unit tests never download: a "tiny BERT" here is a real Hugging Face folder (vocab.txt,
config.json, tokenizer_config.json, model.safetensors) with a few dozen tokens and
``D_MODEL`` dimensions, read by the same code as the bundled checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from embsvd.groups import KeptToken, TokenGroup

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout the tests run in
CONFIG_DIR = PROJECT_ROOT / "conf"
# Converted checkpoints (SmolLM2's GGUF: ~20 s the first time) are cached by content hash;
# the suite keeps them beside pytest's own cache, so a rerun skips the conversion.
# Set before any test runs, so subprocess sweeps inherit it.
# benchmarks/ holds scripts beside the library (not embsvd.*); the tests import one
sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
os.environ.setdefault("EMBSVD_CACHE_DIR", str(PROJECT_ROOT / ".pytest_cache" / "embsvd"))
D_MODEL = 8
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DIGITS = [str(d) for d in range(10)]
WORDS = [
    *["zero", "one", "two", "three", "eight", "nine"],
    *["france", "germany", "italy", "spain", "portugal", "greece", "sweden", "austria"],
    *["czech", "##ia", "the", "of", "and", "paris", "rome", "athens", "cat", "dog", "red"],
    # common words, so that a matched null has real words to draw from
    *["time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child"],
    *["world", "school", "state", "family", "student", "group", "country", "problem", "hand"],
    *["part", "place", "case", "week", "company", "system", "program", "question", "work"],
    *["government", "number", "night", "point", "home", "water", "room", "mother", "area"],
    *["money", "story", "fact", "month", "lot", "right", "study", "book", "eye", "job"],
]
VOCAB = SPECIAL + DIGITS + WORDS
BERT_KEY = "bert.embeddings.word_embeddings.weight"


def with_ctrl_c() -> None:
    """``preexec_fn`` for a subprocess that a test interrupts with SIGINT: a shell that
    starts the suite in the background (``make test &``, some CI runners) ignores SIGINT,
    the child would inherit that, and Python would then never raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def bare_environment(home: Path) -> dict[str, str]:
    """No PYTHONPATH, no store or cache settings of the calling shell: only the venv's
    own paths decide what ``import embsvd`` finds."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home)}


def tiny_embeddings(seed: int = 0, d_vocab: int = len(VOCAB)) -> np.ndarray:
    """A reproducible (d_vocab, D_MODEL) float32 matrix, offset from the origin like real
    embedding clouds so that raw and centered SVDs differ."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(d_vocab, D_MODEL)) + 0.5).astype(np.float32)


def token_group(name: str, ids: list[int]) -> TokenGroup:
    """A group that kept the tokens ``ids``, named ``tok<id>``, from the words ``<name><id>``."""
    kept = tuple(KeptToken(f"{name}{i}", f"tok{i}", i) for i in ids)
    return TokenGroup(name, tuple(k.word for k in kept), kept, ())


def write_tokenizer(folder: Path, vocab: list[str] = VOCAB) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "config.json").write_text(
        json.dumps({"model_type": "bert", "vocab_size": len(vocab), "hidden_size": D_MODEL})
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True})
    )


def write_tiny_bert(
    folder: Path,
    W_E: np.ndarray | None = None,
    key: str = BERT_KEY,
    layout: str = "single",
) -> np.ndarray:
    """Write a tiny BERT-style checkpoint; return its W_E.

    layout: ``single`` (model.safetensors), ``sharded`` (two shards + index json, the
    embedding in the second), ``pickle`` (pytorch_model.bin only) or ``bf16`` (the
    embedding stored as bfloat16).
    """
    write_tokenizer(folder)
    W_E = tiny_embeddings() if W_E is None else W_E
    others = {
        "bert.embeddings.position_embeddings.weight": np.ones((4, D_MODEL), np.float32),
        "bert.pooler.dense.weight": np.eye(D_MODEL, dtype=np.float32),
    }
    if layout == "single":
        save_file({key: W_E, **others}, folder / "model.safetensors")
    elif layout == "sharded":
        save_file(others, folder / "model-00001-of-00002.safetensors")
        save_file({key: W_E}, folder / "model-00002-of-00002.safetensors")
        weight_map = dict.fromkeys(others, "model-00001-of-00002.safetensors")
        weight_map[key] = "model-00002-of-00002.safetensors"
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
    elif layout == "pickle":
        import torch

        state = {k: torch.from_numpy(v) for k, v in {key: W_E, **others}.items()}
        torch.save(state, folder / "pytorch_model.bin")
    elif layout == "bf16":
        import torch
        from safetensors.torch import save_file as save_torch

        as_bf16 = torch.from_numpy(W_E).to(torch.bfloat16)
        save_torch({key: as_bf16}, folder / "model.safetensors")
        return as_bf16.float().numpy()
    else:
        raise ValueError(layout)
    return W_E


# A tiny byte-level BPE (GPT-2 / Llama 3 style): single bytes, plus these tokens built by
# merges. `Netherlands` exists only in its word-initial form; digits only bare.
BPE_TOKENS = ["ĠFrance", "France", "ĠGermany", "Germany", "ĠItaly", "ĠNetherlands", "Ġthe"]
BPE_EOS = "<|endoftext|>"


def byte_level_bpe(tokens: list[str]):
    """A byte-level BPE ``tokenizers.Tokenizer`` (GPT-2 / Llama / SmolLM2 style): id 0 the
    end-of-text token, then the 256 byte characters, then ``tokens`` built from them by
    merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {BPE_EOS: 0}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    merges = []
    for token in tokens:
        for end in range(2, len(token) + 1):
            if token[:end] not in vocab:
                vocab[token[:end]] = len(vocab)
                merges.append((token[: end - 1], token[end - 1]))
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return bpe


def write_tiny_bpe(folder: Path, seed: int = 0) -> np.ndarray:
    """A tiny Llama-style folder: tokenizer.json (byte-level BPE) and model.safetensors."""
    from transformers import PreTrainedTokenizerFast

    bpe = byte_level_bpe(BPE_TOKENS)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=BPE_EOS).save_pretrained(folder)
    (folder / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    W_E = tiny_embeddings(seed, d_vocab=bpe.get_vocab_size())
    save_file({"model.embed_tokens.weight": W_E}, folder / "model.safetensors")
    return W_E


@pytest.fixture
def tiny_bert(tmp_path: Path) -> Path:
    """A tiny BERT folder with a single model.safetensors."""
    write_tiny_bert(tmp_path / "tiny-bert")
    return tmp_path / "tiny-bert"


@pytest.fixture(scope="session")
def migrated_store_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite store with MLflow's migrations applied (they take seconds): tests
    that need a fresh store of their own copy this file."""
    from mlflow.tracking import MlflowClient

    file = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{file}").search_experiments()
    return file


@pytest.fixture(scope="session")
def session_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite tracking store for the session (creating one runs migrations: seconds).
    Tests that share it use their own experiment names."""
    folder = tmp_path_factory.mktemp("mlruns")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M GGUF checkpoint, as conf/model/smollm2_135m.yaml reads it.
    Loading it once here fills the conversion cache before parallel sweeps use it."""
    from omegaconf import OmegaConf

    from embsvd.io.checkpoint import load_checkpoint
    from embsvd.io.spec import CheckpointSpec

    spec = OmegaConf.to_object(
        OmegaConf.merge(
            OmegaConf.structured(CheckpointSpec),
            OmegaConf.load(PROJECT_ROOT / "conf" / "model" / "smollm2_135m.yaml"),
        )
    )
    return load_checkpoint(spec)


@pytest.fixture
def start_app():
    """Starts Hydra as ``experiments/run.py`` does (job name ``run``, the project's
    ``conf/``), a fresh instance each call; cleared after the test."""

    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra

    def start() -> Hydra:
        GlobalHydra.instance().clear()
        return Hydra.create_main_hydra2("run", create_config_search_path(f"file://{CONFIG_DIR}"))

    yield start
    GlobalHydra.instance().clear()
