"""GGUF checkpoints (llama.cpp's format), converted once and cached by the file's SHA-256.

Opening a GGUF file parses all its metadata (about 5 s for SmolLM2's 49k-token
vocabulary), dequantizing is a second pass, and building a ``transformers`` tokenizer
from the metadata takes about 15 s. So the first read of a file writes::

    <cache_dir>/gguf/<sha256>/
        meta.json                 tensor types and shapes, tie, the entry's files
        token_embd.weight.npy     W_E, dequantized to float32
        output.weight.npy         W_U as rows (only when the file stores one)
        tokenizer/                tokenizer.json and tokenizer_config.json

each file with its checksum record (``embsvd.io.cache``), and every later read (another
job of the sweep, another worker, another day) checks and memory-maps the arrays and
loads the saved tokenizer; a damaged entry is converted again. An entry is written into
a scratch folder and renamed into place, so parallel workers never see a half-written
entry. The tokenizer is built from the file's metadata alone: the other files of its
folder are never read, and no code from a checkpoint is ever run.

A conversion takes about a minute for SmolLM2, so it happens once per machine: the
process that converts holds ``<cache_dir>/gguf/<sha256>.lock`` (``io.cache.exclusive``), and
parallel workers that start together wait for it, then read its entry. Each step says on
stderr what it is doing, and the conversion how long each took: a silent minute looks
like a hang.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.io.cache import exclusive, intact, seal
from embsvd.io.spec import TokenMatrix
from embsvd.io.weights import file_sha256

INPUT_TENSOR = "token_embd.weight"
OUTPUT_TENSOR = "output.weight"  # absent when the model ties it to token_embd.weight
META_FILE = "meta.json"
MAGIC = b"GGUF"
# integer GGML types hold codes without scales: not an embedding that can be analysed
INTEGER_TYPES = {"I8", "I16", "I32", "I64"}
# How long a process waits for another one's conversion: minutes for a large vocabulary,
# so only a process that hangs makes a waiter give up.
LOCK_TIMEOUT_S = 1800.0


def report_to_stderr(line: str) -> None:
    """Where a conversion says what it does (stderr: a job's console and its worker's)."""
    print(f"embsvd: {line}", file=sys.stderr, flush=True)


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
        """``input`` (W_E) or ``output`` (W_U as rows; W_E when tied), memory-mapped
        after its checksum is checked (a damaged array is converted again)."""
        name = INPUT_TENSOR if matrix == "input" or self.tied else OUTPUT_TENSOR
        array = self.folder / f"{name}.npy"
        if not intact(array):
            with conversion_lock(self.folder, self.file):
                if not intact(array):  # else another process converted it while we waited
                    _convert(self.file, self.folder, replace=True)
        W = np.load(array, mmap_mode="r")
        return TokenMatrix(W, self.file, name, self.tied, self.meta["tensors"][name]["type"])


def convert_once(
    file: Path,
    cache_dir: Path,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    report: Callable[[str], None] = report_to_stderr,
) -> CachedGGUF:
    """The cache entry of ``file``, converting it first if there is none (or it is
    damaged). One process converts; others that ask meanwhile wait for its entry
    (``conversion_lock``).

    Raises:
        TimeoutError: another process held the conversion for ``lock_timeout_s``.
        ValueError: ``file`` cannot be converted (``write_token_matrices``).
    """
    sha256 = file_sha256(file, cache_dir)
    entry = cache_dir / "gguf" / sha256
    meta = _intact_meta(entry)
    if meta is None:
        with conversion_lock(entry, file, lock_timeout_s, report):
            meta = _intact_meta(entry)  # another process converted it while we waited
            if meta is None:
                _convert(file, entry, replace=entry.exists(), report=report)
                meta = json.loads((entry / META_FILE).read_text())
    return CachedGGUF(file=file, sha256=sha256, folder=entry, meta=meta)


@contextlib.contextmanager
def conversion_lock(
    entry: Path,
    file: Path,
    timeout_s: float = LOCK_TIMEOUT_S,
    report: Callable[[str], None] = report_to_stderr,
) -> Iterator[None]:
    """Hold ``<entry>.lock`` (``embsvd.io.cache.exclusive``) while the block runs, so that
    one process of a machine, or of a cluster sharing the cache over NFS, converts
    ``file`` and the others wait, then reuse its entry.

    Raises:
        TimeoutError: the lock was not free within ``timeout_s``; naming the file, the
            lock and the process that holds it.
    """
    try:
        with exclusive(entry, f"converting {file.name} into {entry}", timeout_s, report):
            yield
    except TimeoutError as error:
        raise TimeoutError(f"model.gguf_file: {error}") from None


def _since(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"


class _Steps:
    """Says on stderr when each slow step of a conversion starts, and at the end how long
    each took."""

    def __init__(self, report: Callable[[str], None]):
        self.report = report
        self.times: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, label: str, doing: str) -> Iterator[None]:
        self.report(f"  {doing} ...")
        started = time.monotonic()
        yield
        self.times.append((label, time.monotonic() - started))

    def summary(self) -> str:
        return ", ".join(f"{label} {seconds:.1f} s" for label, seconds in self.times)


def _intact_meta(entry: Path) -> dict[str, Any] | None:
    """The entry's meta.json when it and the tokenizer files it lists are intact (the
    arrays are checked when read), else ``None``."""
    if not intact(entry / META_FILE):
        return None
    meta = json.loads((entry / META_FILE).read_text())
    tokenizer_files = [name for name in meta["files"] if name.startswith("tokenizer/")]
    if not all(intact(entry / name) for name in tokenizer_files):
        return None
    return meta


def _convert(
    file: Path,
    entry: Path,
    replace: bool = False,
    report: Callable[[str], None] = report_to_stderr,
) -> None:
    """Write the entry of ``file`` into a scratch folder, seal every file, and rename it
    into place; ``replace``: the entry there is damaged, move it aside first. Each step is
    reported as it starts, and the whole with each step's time."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    steps, started = _Steps(report), time.monotonic()
    report(f"converting {file.name} into the cache {entry} (once per machine)")
    try:
        meta = write_token_matrices(file, scratch, steps)
        with steps.step("tokenizer", "building the tokenizer from its metadata"):
            _write_tokenizer(file, scratch / "tokenizer")
        files = sorted(p.relative_to(scratch).as_posix() for p in scratch.rglob("*") if p.is_file())
        for name in files:
            seal(scratch / name)
        (scratch / META_FILE).write_text(json.dumps({**meta, "files": files}, indent=2))
        seal(scratch / META_FILE)
        _rename_into_place(scratch, entry, replace)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(f"converted {file.name} in {_since(started)} ({steps.summary()})")


def _rename_into_place(scratch: Path, entry: Path, replace: bool) -> None:
    """Rename the scratch folder to ``entry``. An entry that appeared meanwhile is another
    worker's, as good as ours; a damaged one (``replace``) is moved aside first."""
    stale = Path(tempfile.mkdtemp(prefix=f".{entry.name}.stale.", dir=entry.parent))
    try:
        if replace:
            with contextlib.suppress(FileNotFoundError):  # another worker moved it aside
                entry.rename(stale / "entry")
        scratch.rename(entry)
    except OSError:
        if not (entry / META_FILE).is_file():  # else another worker's fresh entry won
            raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def write_token_matrices(file: Path, folder: Path, steps: _Steps | None = None) -> dict[str, Any]:
    """Dequantize ``token_embd.weight`` (and ``output.weight``) of ``file`` into
    ``folder`` as float32 ``.npy`` files; return what ``meta.json`` records of them.
    ``steps`` reports each step (silent without).

    Raises:
        ValueError: ``file`` is not a readable GGUF file (bad magic, truncated), has no
            token embedding, or stores it as an integer type without scales.
    """
    from gguf.quants import dequantize

    steps = steps or _Steps(lambda line: None)
    with steps.step("tensors", "reading its tensors"):
        tensors = _read_tensors(file)
    if INPUT_TENSOR not in tensors:
        raise ValueError(
            f"model.gguf_file: {file} has no tensor {INPUT_TENSOR!r}, so it is not a language "
            f"model's GGUF file (it has {len(tensors)} tensors: "
            f"{', '.join(sorted(tensors)[:10])}{', ...' if len(tensors) > 10 else ''})"
        )
    meta: dict[str, Any] = {"file": file.name, "tensors": {}}
    for name in (INPUT_TENSOR, OUTPUT_TENSOR):
        if name in tensors:
            tensor, qtype = tensors[name], tensors[name].tensor_type.name
            if qtype in INTEGER_TYPES:
                raise ValueError(
                    f"model.gguf_file: tensor {name!r} in {file} is stored as {qtype}, integer "
                    "codes without scales, so it cannot be analysed; use a GGUF file with a "
                    "float or a quantized type (Q8_0, Q4_K, ...: those carry their scales)"
                )
            shape = " x ".join(str(n) for n in reversed(tensor.shape.tolist()))
            try:
                with steps.step(name, f"dequantizing {name} ({qtype}, {shape})"):
                    W = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            except NotImplementedError as error:
                raise ValueError(
                    f"model.gguf_file: tensor {name!r} in {file} is stored as {qtype}, which "
                    f"the gguf package cannot dequantize ({error}); use another quantization"
                ) from error
            np.save(folder / f"{name}.npy", W)
            meta["tensors"][name] = {"type": qtype, "shape": list(W.shape)}
    output = tensors.get(OUTPUT_TENSOR)
    meta["tied"] = output is None or (
        output.tensor_type == tensors[INPUT_TENSOR].tensor_type
        and np.array_equal(output.data, tensors[INPUT_TENSOR].data)
    )
    return meta


def _read_tensors(file: Path) -> dict[str, Any]:
    """The tensors of a GGUF file by name; a file that is not GGUF, or is damaged or
    truncated, is a ``ValueError`` that names it (not the reader's traceback)."""
    from gguf import GGUFReader

    with open(file, "rb") as handle:
        magic = handle.read(len(MAGIC))
    if magic != MAGIC:
        raise ValueError(
            f"model.gguf_file: {file} is not a GGUF file (it starts with {magic!r}, not "
            f"{MAGIC!r}); download it again"
        )
    try:
        reader = GGUFReader(file)
        return {t.name: t for t in reader.tensors}
    except (ValueError, IndexError, KeyError, OSError, OverflowError) as error:
        raise ValueError(
            f"model.gguf_file: {file} is damaged or truncated ({type(error).__name__}: "
            f"{error}); download it again"
        ) from error


def _write_tokenizer(file: Path, folder: Path) -> None:
    """Build the tokenizer from the GGUF file's metadata and save it into ``folder``.

    transformers reads ``tokenizer_config.json`` (whose ``auto_map`` names code to run)
    and other tokenizer files from the folder it is given, so it is given a scratch
    folder that holds only a link to the GGUF file; remote code is refused as well.
    """
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="embsvd-gguf-") as alone:
        (Path(alone) / file.name).symlink_to(file.resolve())
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                alone, gguf_file=file.name, trust_remote_code=False, local_files_only=True
            )
        except (OSError, ValueError, KeyError, NotImplementedError) as error:
            raise ValueError(
                f"model.gguf_file: no tokenizer could be built from the metadata of {file} "
                f"({type(error).__name__}: {error}); transformers converts the tokenizers of "
                "the GGUF architectures it supports (llama, mistral, qwen2, gpt2, ...)"
            ) from error
    tokenizer.save_pretrained(folder)
