"""A Hugging Face folder's tensors: find the input (and output) matrix among the
folder's files, read only that tensor (safetensors, single or sharded; pickle only when
allowed, with ``torch.load(weights_only=True)``), and tell whether the two are tied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embsvd.io.weights import read_safetensors, safetensors_header

if TYPE_CHECKING:
    pass

from embsvd.io.spec import CheckpointSpec, TokenMatrix

# Tensor names of the input embedding in common architectures, tried in this order.
EMBEDDING_KEYS = (
    "embeddings.word_embeddings.weight",  # BERT family as sentence-transformers exports it
    "bert.embeddings.word_embeddings.weight",
    "roberta.embeddings.word_embeddings.weight",
    "model.embed_tokens.weight",  # Llama, Mistral, Qwen, SmolLM
    "transformer.wte.weight",  # GPT-2
    "gpt_neox.embed_in.weight",  # Pythia
    "model.decoder.embed_tokens.weight",  # OPT
    "transformer.word_embeddings.weight",  # BLOOM
    "shared.weight",  # T5
)
# Suffixes that identify an input embedding under an unknown prefix.
EMBEDDING_SUFFIXES = (
    "word_embeddings.weight",
    "embed_tokens.weight",
    "wte.weight",
    "embed_in.weight",
)
# Tensor names of the output (unembedding) matrix, ``(d_vocab, d_model)`` as stored.
OUTPUT_KEYS = (
    "lm_head.weight",  # Llama, Mistral, Qwen, GPT-2, OPT, BLOOM, T5
    "embed_out.weight",  # Pythia
    "cls.predictions.decoder.weight",  # BERT's masked-LM head
)
# Architectures with a language-model head; without a stored output tensor, such a
# checkpoint reuses W_E as its unembedding (tied weights).
LM_HEAD_SUFFIXES = ("ForCausalLM", "ForMaskedLM", "LMHeadModel", "ForConditionalGeneration")
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def read_token_matrix(
    folder: Path, spec: CheckpointSpec, cache_dir: Path | None = None
) -> TokenMatrix:
    """The input or output matrix of a Hugging Face folder, and whether the two are tied
    (bfloat16 and float16 widened once into ``cache_dir`` when given)."""
    weight_map = _weight_map(folder, spec.allow_pickle)
    in_file, in_key = find_embedding(folder, spec.embedding_key, spec.allow_pickle, weight_map)
    out_key = _find_output_key(weight_map, spec.output_key, folder)
    declared = _declared_tie(folder)
    if out_key is None:
        tied = True if _has_lm_head(folder) else None
    elif declared is not None:  # what transformers ties; no need to open the output's shard
        tied = declared
    elif weight_map[out_key].is_file():
        tied = _same_tensor(in_file, in_key, weight_map[out_key], out_key)
    else:  # a Hub download of an input matrix fetches only the embedding's shard
        tied = None
    if spec.matrix == "input" or tied:
        file, key = in_file, in_key
    elif out_key is not None:
        file, key = weight_map[out_key], out_key
    else:
        raise ValueError(
            f"model.matrix: the checkpoint in {folder} has no output matrix: no tensor named "
            f"{', '.join(OUTPUT_KEYS)}, and config.json names no language-model architecture "
            "that would reuse W_E; set model.output_key, or analyse model.matrix=input"
        )
    W = read_tensor(file, key, cache_dir)
    return TokenMatrix(W, file, key, tied, _stored_dtype(file, key))


def _find_output_key(weight_map: dict[str, Path], key: str | None, folder: Path) -> str | None:
    if key is not None:
        if key not in weight_map:
            raise ValueError(
                f"model.output_key: {key!r} is not a tensor of the checkpoint in {folder}; "
                f"it has {_describe_keys(list(weight_map))}"
            )
        return key
    return next((k for k in OUTPUT_KEYS if k in weight_map), None)


def _declared_tie(folder: Path) -> bool | None:
    """``tie_word_embeddings`` as config.json declares it, ``None`` where it is silent."""
    try:
        declared = json.loads((folder / "config.json").read_text()).get("tie_word_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return declared if isinstance(declared, bool) else None


def _has_lm_head(folder: Path) -> bool:
    """Whether config.json names an architecture with an LM head that ties it to W_E."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    tied = config.get("tie_word_embeddings", True)  # transformers' default
    architectures = config.get("architectures") or []
    return bool(tied) and any(a.endswith(LM_HEAD_SUFFIXES) for a in architectures)


def _same_tensor(file_a: Path, key_a: str, file_b: Path, key_b: str) -> bool:
    """Whether two stored tensors hold the same values (tied weights saved twice)."""
    if file_a.suffix == ".safetensors" and file_b.suffix == ".safetensors":
        a, b = _raw_bytes(file_a, key_a), _raw_bytes(file_b, key_b)
        if a is None or b is None or a[0] != b[0]:
            return False
        chunk = 1 << 24  # compare 16 MB at a time; untied matrices differ in the first
        return all(
            np.array_equal(a[1][i : i + chunk], b[1][i : i + chunk])
            for i in range(0, a[1].size, chunk)
        )
    return bool(np.array_equal(read_tensor(file_a, key_a), read_tensor(file_b, key_b)))


def _raw_bytes(file: Path, key: str) -> tuple[tuple, np.ndarray] | None:
    """``((dtype, shape), bytes)`` of one safetensors tensor, memory-mapped."""
    data_start, header = safetensors_header(file)
    entry = header[key]
    start, end = entry["data_offsets"]
    if end == start:
        return None
    raw = np.memmap(file, dtype=np.uint8, mode="r", offset=data_start + start, shape=(end - start,))
    return (entry["dtype"], tuple(entry["shape"])), raw


def _stored_dtype(file: Path, key: str) -> str:
    """``F32``, ``BF16``, ... as safetensors names it (torch's name for a pickle)."""
    if file.suffix == ".safetensors":
        return safetensors_header(file)[1][key]["dtype"]
    return str(_load_pickle(file)[key].dtype).removeprefix("torch.")


def find_embedding(
    folder: Path,
    key: str | None,
    allow_pickle: bool,
    weight_map: dict[str, Path] | None = None,
) -> tuple[Path, str]:
    """The file that holds the input embedding and the tensor's name.

    Raises:
        FileNotFoundError: no weights in ``folder``.
        ValueError: a pickle checkpoint without ``allow_pickle``, or no embedding tensor
            (the message lists the tensors that exist).
    """
    if weight_map is None:
        weight_map = _weight_map(folder, allow_pickle)
    if key is None:
        key = guess_embedding_key(list(weight_map), folder)
    elif key not in weight_map:
        raise ValueError(
            f"model.embedding_key: {key!r} is not a tensor of the checkpoint in {folder}; "
            f"it has {_describe_keys(list(weight_map))}"
        )
    return weight_map[key], key


def _weight_map(folder: Path, allow_pickle: bool) -> dict[str, Path]:
    """Tensor name -> file for the checkpoint's weights (safetensors preferred)."""
    if (folder / SAFETENSORS_INDEX).is_file():
        return read_index(folder / SAFETENSORS_INDEX)
    if (folder / SAFETENSORS_FILE).is_file():
        return dict.fromkeys(
            _safetensors_keys(folder / SAFETENSORS_FILE), folder / SAFETENSORS_FILE
        )
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:
        return dict.fromkeys(_safetensors_keys(others[0]), others[0])
    pickles = [folder / name for name in (PICKLE_INDEX, PICKLE_FILE) if (folder / name).is_file()]
    if pickles and not allow_pickle:
        raise ValueError(
            f"model.allow_pickle: {folder} has only a pickle checkpoint ({pickles[0].name}), "
            "and unpickling can run arbitrary code; convert it to safetensors, or set "
            "model.allow_pickle=true to read it with torch.load(weights_only=True)"
        )
    if pickles and pickles[0].name == PICKLE_INDEX:
        return read_index(pickles[0])
    if pickles:
        return dict.fromkeys(_load_pickle(pickles[0]), pickles[0])
    contents = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise FileNotFoundError(
        f"model: no weights in {folder} (looked for {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
        f"{PICKLE_FILE}); the folder holds {contents or 'nothing'}"
    )


def read_index(index_file: Path) -> dict[str, Path]:
    weight_map = json.loads(index_file.read_text())["weight_map"]
    return {name: index_file.parent / shard for name, shard in weight_map.items()}


def _safetensors_keys(file: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(file, framework="numpy") as handle:
        return list(handle.keys())


def guess_embedding_key(keys: list[str], folder: Path) -> str:
    for candidate in EMBEDDING_KEYS:
        if candidate in keys:
            return candidate
    by_suffix = [k for k in keys if k.endswith(EMBEDDING_SUFFIXES)]
    if len(by_suffix) == 1:
        return by_suffix[0]
    raise ValueError(
        f"model.embedding_key: no input-embedding tensor found in {folder} "
        f"(tried {', '.join(EMBEDDING_KEYS)} and names ending in "
        f"{', '.join(EMBEDDING_SUFFIXES)}); it has {_describe_keys(keys)}; "
        "set model.embedding_key to one of them"
    )


def _describe_keys(keys: list[str], limit: int = 40) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{len(keys)} tensors: {shown}{more}"


def read_tensor(file: Path, key: str, cache_dir: Path | None = None) -> np.ndarray:
    """One tensor of a safetensors or (opt-in) pickle file as a numpy array.

    safetensors: memory-mapped when numpy has the dtype; bfloat16 and float16 are widened
    to float32 exactly, once into ``cache_dir`` when given (``embsvd.io.weights``).
    """
    if file.suffix != ".safetensors":
        tensor = _load_pickle(file)[key]
        return tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    return read_safetensors(file, key, cache_dir)


def _load_pickle(file: Path) -> dict:
    import torch

    # weights_only=True refuses anything but tensors and plain containers
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
