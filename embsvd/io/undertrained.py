"""Under-trained tokens: rows that training barely moved, found by their likeness to
tokens known to be unused (after Land and Bartolo 2024, "Fishing for Magikarp").

A token the training data (almost) never holds keeps its row near where initialisation
and weight decay left it, near every other such row: in a projection figure it sits at an
axis' extreme for no reason the axis has, and in a null's pool it is no real word. The
indicator of a token is the cosine of its row with the mean row of *reference* tokens,
tokens known to be unused, after the rows are centred on the ordinary rows' mean and
their first principal component (which every row shares, trained or not) is removed.

Reference tokens (``reference_tokens``), per vocabulary:

- ``reserved``: any token named as a placeholder, ``[unusedN]`` (BERT's WordPiece),
  ``<unusedN>``, ``<|reserved_special_token_N|>``: brackets around ``unused`` or
  ``reserved``;
- ``unused special``: special tokens that the tokenizer names for no role (bos, eos, unk,
  pad, sep, cls, mask) and that its chat template does not use (SmolLM2's ``<gh_stars>``,
  ``<jupyter_code>``: code-data markers an instruct model declares but never saw);
- ``unreachable`` (byte-level BPE only): tokens the tokenizer never produces,
  ``encode(decode([t])) != [t]``; a token that decodes to a partial UTF-8 character
  (U+FFFD) is no text of its own and is not counted. WordPiece and SentencePiece decode a
  lone token to another text than it was cut from (``##ing``, a leading space), so the
  test would call most of their vocabulary unreachable: it is not run there.

The rule (``flag_undertrained``): each reference token's leave-one-out indicator (its
cosine with the mean of the other reference rows) gives the reference set's own spread;
the threshold is its 5th percentile, and an ordinary token whose indicator reaches it is
flagged. Valid when the reference set is a cluster: at least ``MIN_REFERENCE`` tokens and
a threshold of at least ``MIN_COHERENCE`` (unused rows share a direction; rows that were
trained, or a mixed set, do not, and then their mean says nothing). A vocabulary without
reference tokens, or an invalid set, flags nothing, and the rule says why.

Computed once per checkpoint matrix (weights hash, tensor, matrix, vocabulary) and kept
in ``<cache_dir>/undertrained/`` (``embsvd.io.cache``) and in this process's memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embsvd.io.cache import intact, written_with_checksum
from embsvd.io.display import token_decoding
from embsvd.io.rows import row_blocks
from embsvd.io.spec import Checkpoint
from embsvd.io.tokenizer import SPECIAL_KEYS, _named_special_tokens

log = logging.getLogger(__name__)

METHOD_VERSION = 1  # part of the cache key: a change of the rule recomputes
MIN_REFERENCE = 5  # reference tokens a percentile of their spread needs
MIN_COHERENCE = 0.5  # the threshold at which the reference set counts as one cluster
REFERENCE_PERCENTILE = 5.0  # of the reference tokens' leave-one-out indicators
GRAM_MAX_DIM = 1024  # d_model up to which the first component comes from the exact Gram
SUBSPACE_SIZE = 8  # vectors of the subspace iteration above it
SUBSPACE_ITERATIONS = 100  # at most; stops when the top vector settles
SUBSPACE_TOLERANCE = 1e-10
MEMO_SIZE = 4
RESERVED_NAME = re.compile(r"(\[|<\|?)[^\s]*?(unused|reserved)[^\s]*?(\|?>|\])", re.IGNORECASE)
REFERENCE_KINDS = ("reserved", "unused special", "unreachable")


@dataclass(frozen=True)
class ReferenceTokens:
    """Tokens known to be unused: ``ids`` (sorted), and per kind how many were found."""

    ids: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def rule(self) -> str:
        found = ", ".join(f"{n} {kind}" for kind, n in self.counts.items() if n)
        return found or "none"


def reference_tokens(
    tokenizer: Any, token_strings: Sequence[str | None], special_ids: Collection[int]
) -> ReferenceTokens:
    """The reference tokens of a vocabulary (see the module docstring): ``reserved`` by
    name, ``unused special`` tokens, and for byte-level BPE the ``unreachable`` ones."""
    special = {int(i) for i in special_ids}
    reserved = {
        i for i, t in enumerate(token_strings) if t is not None and RESERVED_NAME.fullmatch(t)
    }
    used = _role_tokens(tokenizer)
    template = _chat_template(tokenizer)
    unused_special = {
        i
        for i in special
        if i < len(token_strings)
        and (t := token_strings[i]) is not None
        and t not in used
        and t not in template
    } - reserved
    unreachable: set[int] = set()
    if any(step.kind == "byte_level" for step in token_decoding(tokenizer).steps):
        candidates = [i for i, t in enumerate(token_strings) if t is not None and i not in special]
        unreachable = set(_unreachable(tokenizer, candidates)) - reserved
    kinds = dict(zip(REFERENCE_KINDS, (reserved, unused_special, unreachable), strict=True))
    ids = np.array(sorted(set().union(*kinds.values())), dtype=np.int64)
    return ReferenceTokens(ids, {kind: len(found) for kind, found in kinds.items()})


def _role_tokens(tokenizer: Any) -> set[str]:
    """The special tokens the tokenizer names for a role (bos, eos, unk, pad, ...)."""
    named = getattr(tokenizer, "special_tokens_map", None)
    if isinstance(named, dict):
        return {str(v) for k, v in named.items() if k in SPECIAL_KEYS and isinstance(v, str)}
    folder = _folder(tokenizer)
    return set(_named_special_tokens(folder).values()) if folder else set()


def _chat_template(tokenizer: Any) -> str:
    """The chat template's text (empty without one): from the tokenizer, its
    ``tokenizer_config.json`` or a ``chat_template.jinja`` beside it."""
    texts = [getattr(tokenizer, "chat_template", None)]
    folder = _folder(tokenizer)
    if folder is not None:
        jinja = folder / "chat_template.jinja"
        texts.append(jinja.read_text(encoding="utf-8") if jinja.is_file() else None)
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
            texts.append(config.get("chat_template") if isinstance(config, dict) else None)
        except (OSError, ValueError):
            pass
    flat = []
    for text in texts:  # a template may be a list of named templates
        if isinstance(text, list):
            flat += [t.get("template", "") for t in text if isinstance(t, dict)]
        elif isinstance(text, str):
            flat.append(text)
    return "\n".join(flat)


def _folder(tokenizer: Any) -> Path | None:
    file = getattr(tokenizer, "file", None)  # embsvd.io.tokenizer.FastTokenizer
    if file is not None:
        return Path(file).parent
    name = getattr(tokenizer, "name_or_path", None)
    return Path(name) if name and Path(name).is_dir() else None


def _unreachable(tokenizer: Any, ids: Sequence[int]) -> list[int]:
    """Of ``ids``, those whose decoded text the tokenizer encodes as other tokens (not
    counting decoded texts with U+FFFD: partial UTF-8 characters)."""
    backend = getattr(tokenizer, "backend", None)
    if hasattr(backend, "decode_batch"):  # FastTokenizer: the whole vocabulary at once
        texts = backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
        encoded = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    else:
        texts = [tokenizer.decode([i]) for i in ids]
        encoded = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return [
        i
        for i, text, found in zip(ids, texts, encoded, strict=True)
        if found != [i] and "\ufffd" not in text
    ]


@dataclass(frozen=True)
class UndertrainedTokens:
    """The indicator of every token and the tokens flagged under-trained.

    Attributes:
        indicator: Per row ``(d_vocab,)``: cosine with the reference mean (first component
            removed); a reference token's is leave-one-out; NaN for special tokens and
            rows without a token.
        reference_ids: The reference tokens (sorted).
        flagged_ids: Ordinary tokens (not reference) whose indicator reaches
            ``threshold`` (sorted); empty when the rule is not valid.
        threshold: The reference set's 5th leave-one-out percentile; NaN without one.
        valid: Whether the rule applies (see ``reason``).
        rule: How the reference set was found and what the rule did, for a tag.
    """

    indicator: np.ndarray
    reference_ids: np.ndarray
    flagged_ids: np.ndarray
    threshold: float
    valid: bool
    rule: str

    @property
    def excluded_ids(self) -> frozenset[int]:
        """What a null's pools leave out and the extremes mark: the reference and the
        flagged tokens where the rule is valid, else none."""
        if not self.valid:
            return frozenset()
        return frozenset(int(i) for i in np.union1d(self.reference_ids, self.flagged_ids))


def first_principal_component(
    W: Any, rows: np.ndarray, exact_max_dim: int = GRAM_MAX_DIM
) -> tuple[np.ndarray, np.ndarray]:
    """The mean of ``W[rows]`` and the first principal component of the centred rows
    (unit ``(d_model,)``, sign as ``svd_flip`` would not matter: it is removed), read a
    block at a time. Up to ``exact_max_dim`` columns from the exact Gram matrix; above,
    by subspace iteration (``SUBSPACE_SIZE`` vectors, until the top one settles)."""
    mask = np.zeros(len(W), dtype=bool)
    mask[rows] = True
    total = np.zeros(W.shape[1])
    for where, block in row_blocks(W):
        total += block[mask[where]].astype(np.float64).sum(axis=0)
    mean = total / max(1, int(mask.sum()))

    def gram_times(V: np.ndarray) -> np.ndarray:  # (X - mean).T (X - mean) V, one pass
        out = np.zeros_like(V)
        for where, block in row_blocks(W):
            centred = block[mask[where]].astype(np.float64) - mean
            out += centred.T @ (centred @ V)
        return out

    d_model = W.shape[1]
    if d_model <= exact_max_dim:
        _, vectors = np.linalg.eigh(gram_times(np.eye(d_model)))
        return mean, vectors[:, -1]
    V = np.linalg.qr(np.random.default_rng(0).normal(size=(d_model, SUBSPACE_SIZE)))[0]
    top = V[:, 0]
    for _ in range(SUBSPACE_ITERATIONS):
        V = np.linalg.qr(gram_times(V))[0]
        settled = 1 - abs(float(V[:, 0] @ top)) < SUBSPACE_TOLERANCE
        top = V[:, 0]
        if settled:
            break
    _, ritz = np.linalg.eigh(V.T @ gram_times(V))  # Rayleigh-Ritz: the top of the span
    return mean, V @ ritz[:, -1]


def undertrained_indicator(
    W: Any, reference_ids: np.ndarray, ordinary_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The indicator of every row ``(d_vocab,)`` and the reference tokens' leave-one-out
    indicators ``(len(reference_ids),)``: rows centred on the ordinary rows' mean, their
    first principal component removed, cosine with the mean of the reference rows (of the
    others, for a reference token). NaN where a row is zero after the removal."""
    mean, pc = first_principal_component(W, ordinary_ids)

    def removed(rows: np.ndarray) -> np.ndarray:
        centred = np.asarray(rows, dtype=np.float64) - mean
        return centred - np.outer(centred @ pc, pc)

    R = removed(W[np.asarray(reference_ids, dtype=np.int64)])
    n = len(R)
    m = R.mean(axis=0)
    indicator = np.empty(len(W))
    with np.errstate(invalid="ignore", divide="ignore"):
        for where, block in row_blocks(W):
            Y = removed(block)
            indicator[where] = (Y @ m) / (np.linalg.norm(Y, axis=1) * np.linalg.norm(m))
        others = (n * m - R) / max(1, n - 1)  # each reference row's mean of the others
        loo = np.einsum("ij,ij->i", R, others) / (
            np.linalg.norm(R, axis=1) * np.linalg.norm(others, axis=1)
        )
    return indicator, loo


def flag_undertrained(
    W: Any,
    reference: ReferenceTokens,
    ordinary_ids: np.ndarray,
    percentile: float = REFERENCE_PERCENTILE,
) -> UndertrainedTokens:
    """The indicator and the flagged tokens of ``W`` (``(d_vocab, d_model)``) against the
    ``reference`` tokens; ``ordinary_ids``: the rows that are not special tokens and have a
    token (the mean, the component and the candidates are taken from them)."""
    ordinary_ids = np.asarray(ordinary_ids, dtype=np.int64)
    ref = np.asarray(reference.ids, dtype=np.int64)
    indicator = np.full(len(W), np.nan)
    empty = np.array([], dtype=np.int64)
    if len(ref) < 2:
        why = f"reference tokens: {reference.rule}; fewer than 2, no indicator: nothing flagged"
        return UndertrainedTokens(indicator, ref, empty, float("nan"), False, why)
    found, loo = undertrained_indicator(W, ref, ordinary_ids)
    indicator[ordinary_ids] = found[ordinary_ids]
    indicator[ref] = loo
    threshold = float(np.nanpercentile(loo, percentile))
    what = (
        f"reference tokens: {reference.rule}; threshold {threshold:.4f} = their "
        f"{percentile:g}th leave-one-out percentile (cosine with the reference mean, "
        "first principal component removed)"
    )
    if len(ref) < MIN_REFERENCE or not threshold >= MIN_COHERENCE:
        why = (
            f"fewer than {MIN_REFERENCE} reference tokens"
            if len(ref) < MIN_REFERENCE
            else f"the reference tokens are no cluster (threshold below {MIN_COHERENCE})"
        )
        return UndertrainedTokens(
            indicator, ref, empty, threshold, False, f"{what}; {why}: nothing flagged"
        )
    candidates = np.setdiff1d(ordinary_ids, ref)
    flagged = candidates[indicator[candidates] >= threshold]
    rule = f"{what}; {len(flagged)} of {len(candidates)} ordinary tokens reach it"
    return UndertrainedTokens(indicator, ref, flagged, threshold, True, rule)


_MEMO: OrderedDict[str, UndertrainedTokens] = OrderedDict()


def checkpoint_undertrained(checkpoint: Checkpoint) -> UndertrainedTokens:
    """``flag_undertrained`` of the checkpoint's matrix and vocabulary, computed once per
    weights hash, tensor, matrix and vocabulary: kept in this process and in
    ``<cache_dir>/undertrained/<sha256>/`` (checked and rebuilt when damaged)."""
    strings = checkpoint.token_strings()
    special = sorted(checkpoint.special_ids())
    digest = hashlib.sha256(
        json.dumps([METHOD_VERSION, checkpoint.matrix, strings, special]).encode()
    ).hexdigest()[:24]
    key = f"{checkpoint.weights_sha256}/{_safe(checkpoint.tensor_key)}-{digest}"
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    file = None
    if checkpoint.cache_dir is not None and checkpoint.weights_sha256:
        file = Path(checkpoint.cache_dir) / "undertrained" / f"{key}.npz"
    found = _read(file, checkpoint.d_vocab) if file is not None else None
    if found is None:
        reference = reference_tokens(checkpoint.tokenizer, strings, special)
        named = np.array([t is not None for t in strings], dtype=bool)
        named[special] = False
        ordinary = np.flatnonzero(named)
        found = flag_undertrained(checkpoint.W, reference, ordinary)
        if file is not None:
            _write(file, found)
    _MEMO[key] = found
    while len(_MEMO) > MEMO_SIZE:
        _MEMO.popitem(last=False)
    return found


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\-]", "_", name)


def _write(file: Path, found: UndertrainedTokens) -> None:
    with written_with_checksum(file) as stream:
        np.savez(
            stream,
            indicator=found.indicator,
            reference_ids=found.reference_ids,
            flagged_ids=found.flagged_ids,
            threshold=np.float64(found.threshold),
            valid=np.bool_(found.valid),
            rule=np.str_(found.rule),
        )


def _read(file: Path, d_vocab: int) -> UndertrainedTokens | None:
    """The kept result, or ``None`` when absent, damaged or of another vocabulary size."""
    if not intact(file):
        return None
    try:
        with np.load(file, allow_pickle=False) as data:
            found = UndertrainedTokens(
                data["indicator"],
                data["reference_ids"],
                data["flagged_ids"],
                float(data["threshold"]),
                bool(data["valid"]),
                str(data["rule"]),
            )
    except (OSError, ValueError, KeyError) as error:
        log.warning("%s is unreadable (%r): computing the indicator again", file, error)
        return None
    return found if found.indicator.shape == (d_vocab,) else None


def clear_memo() -> None:
    """Forget the results this process computed or read (the disk cache stays)."""
    _MEMO.clear()
