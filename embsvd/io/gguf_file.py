"""GGUF checkpoints (llama.cpp's format), converted once and cached by the file's SHA-256.

Opening a GGUF file parses all its metadata (about 5 s for SmolLM2's 49k-token
vocabulary), dequantizing is a second pass, and building a ``transformers`` tokenizer
from the metadata takes about 15 s. So the first read of a file writes::

    <cache_dir>/gguf/<sha256>/
        meta.json                 tensor types and shapes, whether input and output are tied
        token_embd.weight.npy     W_E, dequantized to float32
        output.weight.npy         W_U as rows (only when the file stores one)
        tokenizer/                tokenizer.json and tokenizer_config.json

and every later read (another job of the sweep, another worker, another day) memory-maps
the arrays and loads the saved tokenizer. An entry is written into a scratch folder and
renamed into place, so parallel workers never see a half-written entry.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.io.spec import TokenMatrix
from embsvd.io.weights import file_sha256

INPUT_TENSOR = "token_embd.weight"
OUTPUT_TENSOR = "output.weight"  # absent when the model ties it to token_embd.weight
META_FILE = "meta.json"


@dataclass(frozen=True)
class CachedGGUF:
    """A GGUF file's cache entry."""

    file: Path
    sha256: str
    folder: Path
    meta: dict[str, Any]

    @property
    def tokenizer_folder(self) -> Path:
        return self.folder / "tokenizer"

    @property
    def tied(self) -> bool:
        return bool(self.meta["tied"])

    def token_matrix(self, matrix: str) -> TokenMatrix:
        """``input`` (W_E) or ``output`` (W_U as rows; W_E when tied), memory-mapped."""
        name = INPUT_TENSOR if matrix == "input" or self.tied else OUTPUT_TENSOR
        W = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        return TokenMatrix(W, self.file, name, self.tied, self.meta["tensors"][name]["type"])


def convert_once(file: Path, cache_dir: Path) -> CachedGGUF:
    """The cache entry of ``file``, converting it first if there is none."""
    sha256 = file_sha256(file, cache_dir)
    entry = cache_dir / "gguf" / sha256
    if not (entry / META_FILE).is_file():
        _convert(file, entry)
    meta = json.loads((entry / META_FILE).read_text())
    return CachedGGUF(file=file, sha256=sha256, folder=entry, meta=meta)


def _convert(file: Path, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        meta = write_token_matrices(file, scratch)
        _write_tokenizer(file, scratch / "tokenizer")
        (scratch / META_FILE).write_text(json.dumps(meta, indent=2))
        try:
            scratch.rename(entry)
        except OSError:  # another worker renamed its copy first; theirs is as good
            if not (entry / META_FILE).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_token_matrices(file: Path, folder: Path) -> dict[str, Any]:
    """Dequantize ``token_embd.weight`` (and ``output.weight``) of ``file`` into
    ``folder`` as float32 ``.npy`` files; return what ``meta.json`` records of them."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(file)
    tensors = {t.name: t for t in reader.tensors}
    if INPUT_TENSOR not in tensors:
        raise ValueError(
            f"model.gguf_file: {file} has no tensor {INPUT_TENSOR!r}, so it is not a language "
            f"model's GGUF file (it has {len(tensors)} tensors: "
            f"{', '.join(sorted(tensors)[:10])}{', ...' if len(tensors) > 10 else ''})"
        )
    meta: dict[str, Any] = {"file": file.name, "tensors": {}}
    for name in (INPUT_TENSOR, OUTPUT_TENSOR):
        if name in tensors:
            tensor = tensors[name]
            W = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            np.save(folder / f"{name}.npy", W)
            meta["tensors"][name] = {"type": tensor.tensor_type.name, "shape": list(W.shape)}
    output = tensors.get(OUTPUT_TENSOR)
    meta["tied"] = output is None or (
        output.tensor_type == tensors[INPUT_TENSOR].tensor_type
        and np.array_equal(output.data, tensors[INPUT_TENSOR].data)
    )
    return meta


def _write_tokenizer(file: Path, folder: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    except (OSError, ValueError, KeyError, NotImplementedError) as error:
        raise ValueError(
            f"model.gguf_file: no tokenizer could be built from the metadata of {file} "
            f"({type(error).__name__}: {error}); transformers converts the tokenizers of "
            "the GGUF architectures it supports (llama, mistral, qwen2, gpt2, ...)"
        ) from error
    tokenizer.save_pretrained(folder)
