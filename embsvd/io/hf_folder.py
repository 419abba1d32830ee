"""A Hugging Face folder's tensors: find the input (and output) matrix among the
folder's files, read only that tensor (safetensors, single or sharded; pickle only when
allowed, with ``torch.load(weights_only=True)``), and tell whether the two are tied.

An index (``model.safetensors.index.json``) only names files inside the folder, and a
safetensors index only safetensors files: whatever it says, nothing is unpickled unless
``model.allow_pickle`` is set.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np

from embsvd.io.rows import row_blocks
from embsvd.io.spec import CheckpointSpec, TokenMatrix
from embsvd.io.weights import (
    HUB_BLOB,
    NARROW,
    check_float_dtype,
    read_safetensors,
    safetensors_header,
)

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
# torch's names of dtypes as safetensors names them (a token matrix must be a float)
PICKLE_DTYPES = {"float32": "F32", "float64": "F64", "bfloat16": "BF16", "float16": "F16"}
PICKLE_DTYPES |= {f"{t}{n}": f"{t[0].upper()}{n}" for t in ("int", "uint") for n in (8, 16, 32, 64)}


def read_token_matrix(
    folder: Path, spec: CheckpointSpec, cache_dir: Path | None = None
) -> TokenMatrix:
    """The input or output matrix of a Hugging Face folder, and whether the two are tied
    (memory-mapped; bfloat16 and float16 as ``embsvd.io.rows.BFloat16Rows`` /
    ``Float16Rows``, whose rows widen to float32 where read)."""
    weight_map, index = _weight_map(folder, spec.allow_pickle)
    in_file, in_key = find_embedding(folder, spec.embedding_key, spec.allow_pickle, weight_map)
    out_key = _find_output_key(weight_map, spec.output_key, folder)
    declared = _declared_tie(folder)
    if out_key is None:
        tied = True if _has_lm_head(folder) else None
    elif declared is not None:  # what transformers ties; no need to open the output's shard
        tied = declared
    elif weight_map[out_key].is_file():
        _check_shard(index, in_file, in_key)
        _check_shard(index, weight_map[out_key], out_key)
        tied = _same_tensor(in_file, in_key, weight_map[out_key], out_key, spec.allow_pickle)
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
    _check_shard(index, file, key)
    W, dtype = _read_matrix(file, key, cache_dir, spec.allow_pickle)
    return TokenMatrix(W, file, key, tied, dtype)


def matrix_files(folder: Path, spec: CheckpointSpec) -> list[Path]:
    """The weight files that decide the matrix ``spec.matrix``, found without reading a
    tensor: the input matrix's file, and for ``output`` the output matrix's too (which
    of the two is read depends on their tie), and the index that maps names to files."""
    weight_map, index = _weight_map(folder, spec.allow_pickle)
    in_file, _ = find_embedding(folder, spec.embedding_key, spec.allow_pickle, weight_map)
    files = [in_file] if index is None else [index, in_file]
    out_key = _find_output_key(weight_map, spec.output_key, folder)
    if spec.matrix == "output" and out_key is not None and weight_map[out_key].is_file():
        files.append(weight_map[out_key])
    return sorted(set(files))


def _check_shard(index: Path | None, file: Path, key: str) -> None:
    """A shard that an index names exists and is valid safetensors holding ``key``; the
    error names the index and the shard."""
    if index is None:
        return
    if not file.is_file():
        raise FileNotFoundError(
            f"model: {index} puts tensor {key!r} in {file.name}, which is not in "
            f"{index.parent}; download that shard again (or fix the index)"
        )
    if file.suffix != ".safetensors":
        return
    try:
        _, header = safetensors_header(file)
    except ValueError as error:
        raise ValueError(
            f"model: {index} puts tensor {key!r} in shard {file.name}, which is damaged: {error}"
        ) from error
    if key not in header:
        raise ValueError(
            f"model: {index} puts tensor {key!r} in shard {file.name}, which holds no such "
            "tensor; download the checkpoint again (the index and its shards disagree)"
        )


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


def _same_tensor(
    file_a: Path, key_a: str, file_b: Path, key_b: str, allow_pickle: bool = False
) -> bool:
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
    a = read_tensor(file_a, key_a, allow_pickle=allow_pickle)
    b = read_tensor(file_b, key_b, allow_pickle=allow_pickle)
    if a.shape != b.shape:
        return False
    if a.ndim != 2:
        return bool(np.array_equal(a, b))
    return all(np.array_equal(block, b[rows]) for rows, block in row_blocks(a))


def _raw_bytes(file: Path, key: str) -> tuple[tuple, np.ndarray] | None:
    """``((dtype, shape), bytes)`` of one safetensors tensor, memory-mapped."""
    data_start, header = safetensors_header(file)
    entry = header[key]
    start, end = entry["data_offsets"]
    if end == start:
        return None
    raw = np.memmap(file, dtype=np.uint8, mode="r", offset=data_start + start, shape=(end - start,))
    return (entry["dtype"], tuple(entry["shape"])), raw


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
        weight_map, _ = _weight_map(folder, allow_pickle)
    if key is None:
        key = guess_embedding_key(list(weight_map), folder)
    elif key not in weight_map:
        raise ValueError(
            f"model.embedding_key: {key!r} is not a tensor of the checkpoint in {folder}; "
            f"it has {_describe_keys(list(weight_map))}"
        )
    return weight_map[key], key


def _weight_map(folder: Path, allow_pickle: bool) -> tuple[dict[str, Path], Path | None]:
    """Tensor name -> file for the checkpoint's weights (safetensors preferred), and the
    index file that says so (``None`` for a single file)."""
    if (folder / SAFETENSORS_INDEX).is_file():
        return read_index(folder / SAFETENSORS_INDEX), folder / SAFETENSORS_INDEX
    if (folder / SAFETENSORS_FILE).is_file():
        file = folder / SAFETENSORS_FILE
        return dict.fromkeys(_safetensors_keys(file), file), None
    others = sorted(folder.glob("*.safetensors"))
    if len(others) == 1:
        return dict.fromkeys(_safetensors_keys(others[0]), others[0]), None
    pickles = [folder / name for name in (PICKLE_INDEX, PICKLE_FILE) if (folder / name).is_file()]
    if pickles and not allow_pickle:
        raise ValueError(
            f"model.allow_pickle: {folder} has only a pickle checkpoint ({pickles[0].name}), "
            "and unpickling can run arbitrary code; convert it to safetensors, or set "
            "model.allow_pickle=true to read it with torch.load(weights_only=True)"
        )
    if pickles and pickles[0].name == PICKLE_INDEX:
        return read_index(pickles[0]), pickles[0]
    if pickles:
        return dict.fromkeys(_load_pickle(pickles[0]), pickles[0]), None
    contents = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise FileNotFoundError(
        f"model: no weights in {folder} (looked for {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
        f"{PICKLE_FILE}); the folder holds {contents or 'nothing'}"
    )


def read_index(index_file: Path) -> dict[str, Path]:
    """Tensor name -> shard of an index file, every shard a file inside the index's folder
    (a safetensors index: a ``.safetensors`` file).

    Raises:
        ValueError: the index is not JSON with a ``weight_map`` of names to file names, or
            names a file outside its folder (absolute, ``..``, a link that leaves it) or,
            for a safetensors index, one that is not ``.safetensors``.
    """
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
        valid = isinstance(weight_map, dict) and all(
            isinstance(shard, str) and shard for shard in weight_map.values()
        )
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"model: {index_file} is not a valid index ({error!r}); it needs a weight_map "
            "of tensor names to file names; download the checkpoint again"
        ) from error
    if not valid:
        raise ValueError(
            f"model: {index_file}'s weight_map must map tensor names to file names; "
            "download the checkpoint again"
        )
    return {name: _shard_path(index_file, name, shard) for name, shard in weight_map.items()}


def _shard_path(index_file: Path, key: str, shard: str) -> Path:
    """The file an index names for ``key``, refused unless it lies inside the index's
    folder (a Hub snapshot's links into the repository's blobs are inside)."""
    folder = index_file.parent
    path = folder / shard
    escapes = Path(shard).is_absolute() or ".." in Path(shard).parts
    inside = Path(os.path.normpath(path)).is_relative_to(os.path.normpath(folder))
    real = path.resolve()
    # huggingface_hub links a snapshot's files (and older --local-dir downloads) to blobs
    # named by their hash: such a link stays inside what was downloaded
    linked_blob = real.parent.name == "blobs" and HUB_BLOB.fullmatch(real.name)
    if escapes or not inside or not (real.is_relative_to(folder.resolve()) or linked_blob):
        raise ValueError(
            f"model: {index_file} puts tensor {key!r} in {shard!r}, outside the checkpoint "
            f"folder {folder}; an index may only name files in its folder: fix the index, "
            "or copy the shard into the folder"
        )
    if index_file.name == SAFETENSORS_INDEX and path.suffix != ".safetensors":
        raise ValueError(
            f"model: {index_file} puts tensor {key!r} in {shard!r}, not a .safetensors "
            "file; a safetensors index names only safetensors shards (and a pickle is "
            "never read through it, whatever model.allow_pickle says)"
        )
    return path


def _safetensors_keys(file: Path) -> list[str]:
    return [key for key in safetensors_header(file)[1] if key != "__metadata__"]


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


def read_tensor(
    file: Path, key: str, cache_dir: Path | None = None, *, allow_pickle: bool
) -> np.ndarray:
    """One float tensor of a safetensors or (with ``allow_pickle``) pickle file: a numpy
    array, or for a bfloat16 or float16 matrix a ``BFloat16Rows`` / ``Float16Rows`` whose
    rows widen to float32 exactly where read (``embsvd.io.weights.read_safetensors``).
    """
    return _read_matrix(file, key, cache_dir, allow_pickle)[0]


def _read_matrix(
    file: Path, key: str, cache_dir: Path | None, allow_pickle: bool
) -> tuple[np.ndarray, str]:
    """The tensor and its stored dtype (``F32``, ``BF16``, ...; torch's name for a pickle)."""
    if file.suffix == ".safetensors":
        return read_safetensors(file, key, cache_dir), safetensors_header(file)[1][key]["dtype"]
    if not allow_pickle:
        raise ValueError(
            f"model.allow_pickle: tensor {key!r} is in {file}, a pickle file, and unpickling "
            "can run arbitrary code; convert the checkpoint to safetensors, or set "
            "model.allow_pickle=true to read it with torch.load(weights_only=True)"
        )
    import torch

    tensor = _load_pickle(file)[key]
    torch_name = str(tensor.dtype).removeprefix("torch.")
    dtype = PICKLE_DTYPES.get(torch_name, torch_name)
    check_float_dtype(file, key, dtype)
    # as a safetensors tensor: float32 and float64 as stored, a bfloat16 or float16 matrix
    # kept narrow (torch.load memory-maps the file), anything else widened to float32
    if dtype in ("F32", "F64"):
        return tensor.numpy(), dtype
    if dtype in NARROW and tensor.ndim == 2 and 0 not in tensor.shape:
        bits = tensor.contiguous().view(torch.int16).numpy().view("<u2")
        return NARROW[dtype](bits.view(NARROW[dtype].raw_dtype)), dtype
    return tensor.float().numpy(), dtype


def _load_pickle(file: Path) -> dict:
    import torch

    # weights_only=True refuses anything but tensors and plain containers
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise ValueError(
            f"model: {file} could not be read with torch.load(weights_only=True), which "
            "refuses anything but tensors and plain containers (unpickling other objects "
            f"could run code), or it is damaged: {str(error).splitlines()[0]}"
        ) from error
