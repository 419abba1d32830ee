"""What a checkpoint is to the rest of the library: the spec that names one (also the
``model`` config schema), the matrix read from it, and the loaded checkpoint with its
tokenizer and vocabulary. A leaf module: the readers of each format import it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embsvd.io.display import token_decoding
from embsvd.io.tokenizer import FastTokenizer, word_start_marker
from embsvd.io.vocabulary import Vocabulary

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Matrix(StrEnum):
    """Which token matrix of a checkpoint is read (``model.matrix``): ``input``, the
    embedding ``W_E``; ``output``, the unembedding ``W_U`` as rows. Members are named as
    their values because OmegaConf matches and lists an enum by name."""

    input = "input"
    output = "output"


MATRICES = tuple(Matrix)


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
        display_name: How figures and tables name the model (``all-MiniLM-L6-v2``);
            ``None``: the Hub repository's name for a ``hub_id``, else ``name``. Changes
            no number, so it is not part of the config hash.
        steps: The training order of the revisions a sweep over ``model.revision``
            compares (``[step0, step1000, step143000]``); ``None``: the order their
            ``stepN`` names give. Changes no number, so it is not part of the config hash.
    """

    name: str
    path: str | None = None
    hub_id: str | None = None
    revision: str | None = None
    package: str | None = None
    package_subdir: str = "model"
    gguf_file: str | None = None
    matrix: Matrix = Matrix.input
    embedding_key: str | None = None
    output_key: str | None = None
    allow_pickle: bool = False
    display_name: str | None = None
    steps: list[str] | None = None

    @property
    def display(self) -> str:
        """The name people read: ``display_name``, else the Hub repository's name
        (``google-bert/bert-base-uncased`` -> ``bert-base-uncased``), else ``name``."""
        if self.display_name:
            return self.display_name
        if self.hub_id:
            return self.hub_id.rstrip("/").rsplit("/", 1)[-1] or self.name
        return self.name

    def check_source(self) -> None:
        """Refuse a spec that names no place, or more than one, to read the checkpoint from."""
        given = [key for key in ("path", "hub_id", "package") if getattr(self, key)]
        if len(given) != 1:
            raise ValueError(
                f"model {self.name}: set exactly one of model.path (a local folder), "
                "model.hub_id (a Hugging Face Hub id) or model.package (an installed package "
                f"that ships the weights); got {', '.join(given) if given else 'none'}"
            )


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
        cache_dir: Where data derived from the checkpoint is kept between runs (the
            vocabulary's word frequencies); ``None``: nowhere.
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
    cache_dir: Path | None = None

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

    @cached_property
    def vocabulary(self) -> Vocabulary:
        """The tokens of ``W`` as the analysis and the checks read them, built once:
        strings, special ids, word-start marker and row norms (word frequencies on
        first use, kept in ``cache_dir``)."""
        return Vocabulary.from_matrix(
            self.W,
            self.token_strings(),
            self.special_ids(),
            # the same marker the token forms of the groups found (embsvd.groups.TokenForms)
            marker=word_start_marker(self.tokenizer.get_vocab()),
            cache_dir=self.cache_dir,
            decoding=token_decoding(self.tokenizer),  # how its tokens read as text
            norms_file=self.norms_file,
        )

    @property
    def norms_file(self) -> Path | None:
        """Where the row norms are kept between processes: per weights file hash and
        tensor (``<cache_dir>/norms/<sha256>/<tensor key>.npy``); ``None`` without a cache."""
        if self.cache_dir is None or not self.weights_sha256:
            return None
        key = re.sub(r"[^\w.\-]", "_", self.tensor_key)
        return Path(self.cache_dir) / "norms" / self.weights_sha256 / f"{key}.npy"


@dataclass(frozen=True)
class TokenMatrix:
    """What a weights reader returns: the matrix and how it was stored."""

    W: np.ndarray
    weights_file: Path
    tensor_key: str
    tied: bool | None
    quantization: str
