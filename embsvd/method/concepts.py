"""Concept axes from word pairs or two word sets, on plain arrays: no Hydra, no MLflow.

A concept (``conf/concepts/*.yaml``, schema ``ConceptSpec``) names two poles, e.g. male
and female, and gives either counterfactual ``pairs`` (``[negative, positive]``: he/she,
king/queen) or two ``negative``/``positive`` word sets. Its axis is a unit vector from
the negative pole to the positive one, estimated by one of:

- ``difference``: the mean of the pair differences ``positive - negative`` (for sets the
  difference of the two sets' means; for pairs the two are the same vector);
- ``pca``: the first principal component of the pair-centred rows (each pair's two rows
  minus the pair's mean, Bolukbasi et al. 2016); for sets, every row minus the midpoint
  of the two set means;
- ``lda``: Fisher's direction ``Sigma_w^-1 (mean_pos - mean_neg)``, with the
  within-pole covariance ``Sigma_w`` shrunk towards ``trace/d I`` by Ledoit-Wolf's
  intensity (as Park, Choe and Veitch estimate concept directions).

Whatever the estimator, the sign is pinned so that the positive pole's mean projects
above the negative pole's: an SVD's sign is arbitrary, and a ``she - he`` axis whose top
end holds ``he`` is the wrong way round.

Two statistics say how much of a concept is one direction, independent of the sign:
``first_pc_share``, the share of the pair-centred rows' variance on their first
principal component (1 when every pair differs along one line), and ``consistency``,
the mean cosine of each pair difference with the axis (for sets, of every
positive-negative difference). ``embsvd.checks.concept_null`` compares both with
random pairs.

Everything here works on batches (``(b, n, d)``: one concept's rows, or ``b`` random
draws of them) with ``b x n x n`` Gram matrices, never a ``d x d`` one per draw.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from embsvd.groups import FORMS, DroppedWord, Form, KeptToken, TokenForms
from embsvd.io.rows import row_blocks

MIN_PAIRS = 2  # pairs (or words per set) a concept keeps at least: one pair is one line
MAX_WORDS = 2000  # words of a concept's lists together: far beyond any real concept
NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*(?:_[A-Za-z0-9-]+)*", re.ASCII)
NAME_MAX = 64


class Estimator(StrEnum):
    """How a concept's axis is estimated (``concepts.<name>.estimator``; see above).
    Members are named as their values: OmegaConf matches an enum by name."""

    difference = "difference"
    pca = "pca"
    lda = "lda"


ESTIMATORS = tuple(Estimator)


@dataclass
class ConceptSpec:
    """A concept: two named poles and the words that set them apart; also the schema of
    ``conf/concepts/*.yaml``.

    Attributes:
        pairs: ``[negative, positive]`` word pairs; the axis points from the first word
            to the second. Give either ``pairs`` or both ``negative`` and ``positive``.
        negative: The negative pole's words (with ``positive``, instead of pairs).
        positive: The positive pole's words.
        negative_pole: What the negative end is called (``male``, ``singular``).
        positive_pole: What the positive end is called (``female``, ``plural``).
        description: What the concept is (documentation only).
        estimator: ``difference`` (default), ``pca`` or ``lda``.
        form: Which token a word maps to, as for groups: ``auto``, ``initial``, ``bare``.
    """

    pairs: list[list[str]] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    positive: list[str] = field(default_factory=list)
    negative_pole: str = "negative"
    positive_pole: str = "positive"
    description: str = ""
    estimator: Estimator = Estimator.difference
    form: Form = Form.auto

    @property
    def paired(self) -> bool:
        return bool(self.pairs)


def check_concept_spec(name: str, spec: ConceptSpec) -> None:
    """Refuse a malformed concept, naming the key: a bad name, pairs and sets both or
    neither, a pair that is not two different words, too few words, an unknown estimator
    or form.

    Raises:
        ValueError: naming ``concepts.<name>.<key>``, what is wrong and what would do.
    """
    if len(str(name)) > NAME_MAX or not NAME.fullmatch(str(name)):
        raise ValueError(
            f"concepts: {str(name)[:80]!r} is not a concept name: ASCII letters, digits, '_' "
            f"and '-', from a letter, at most {NAME_MAX} characters, no '__' and no '_' at "
            "the end (it is part of metric keys and file names)"
        )
    key = f"concepts.{name}"
    sets = bool(spec.negative or spec.positive)
    if spec.pairs and sets:
        raise ValueError(
            f"{key}: gives both pairs and negative/positive sets; give pairs "
            "([[negative, positive], ...]) or the two sets, not both"
        )
    if not spec.pairs and not sets:
        raise ValueError(
            f"{key}: no words; give pairs, e.g. {key}.pairs=[[he,she],[man,woman]], or the "
            f"two sets {key}.negative=[...] and {key}.positive=[...]"
        )
    n_words = 2 * len(spec.pairs) + len(spec.negative) + len(spec.positive)
    if n_words > MAX_WORDS:
        raise ValueError(f"{key}: {n_words} words; at most {MAX_WORDS}: shorten the lists")
    for i, pair in enumerate(spec.pairs):
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(
                f"{key}.pairs[{i}]: {list(pair)!r} is not a pair of two different words "
                "[negative, positive]"
            )
    if spec.pairs and len(spec.pairs) < MIN_PAIRS:
        raise ValueError(f"{key}.pairs: {len(spec.pairs)} pair; give at least {MIN_PAIRS}")
    for side in ("negative", "positive"):
        words = getattr(spec, side)
        if sets and len(words) < MIN_PAIRS:
            raise ValueError(
                f"{key}.{side}: {len(words)} words; each set needs at least {MIN_PAIRS}"
            )
    if spec.estimator not in ESTIMATORS:
        raise ValueError(
            f"{key}.estimator: {spec.estimator!r} is not one of {', '.join(ESTIMATORS)}"
        )
    if spec.form not in FORMS:
        raise ValueError(f"{key}.form: {spec.form!r} is not one of {', '.join(FORMS)}")


def check_concepts(concepts: dict[str, ConceptSpec], concept: str | None) -> None:
    """Every configured concept well formed, and ``concept`` (the one a run analyses)
    one of them, or ``None``.

    Raises:
        ValueError: naming the key, the value and the configured concepts.
    """
    for name, spec in concepts.items():
        check_concept_spec(name, spec)
    if concept is None or concept in concepts:
        return
    close = difflib.get_close_matches(str(concept), list(concepts), n=1)
    advice = f"did you mean {close[0]!r}?" if close else "pick one"
    raise ValueError(
        f"concept: {concept!r} is not one of the configured concepts "
        f"({', '.join(sorted(concepts)) or 'none'}); {advice} Or add it: a file "
        f"conf/concepts/{concept}.yaml and concepts=[{','.join([*concepts, str(concept)])}]"
    )


# --- the single-token rule -------------------------------------------------------------------


@dataclass(frozen=True)
class DroppedPair:
    """A pair (or a set's word: ``positive`` empty) the single-token rule left out."""

    negative: str
    positive: str
    reason: str


@dataclass(frozen=True)
class ConceptTokens:
    """A concept after the single-token rule, for one tokenizer.

    ``negative`` and ``positive`` are the kept tokens; with ``paired`` they are aligned
    (``negative[i]`` and ``positive[i]`` are pair ``i``), else two sets.
    """

    name: str
    negative: tuple[KeptToken, ...]
    positive: tuple[KeptToken, ...]
    paired: bool
    dropped: tuple[DroppedPair, ...] = ()
    negative_pole: str = "negative"
    positive_pole: str = "positive"
    estimator: str = Estimator.difference

    @property
    def negative_ids(self) -> list[int]:
        return [k.token_id for k in self.negative]

    @property
    def positive_ids(self) -> list[int]:
        return [k.token_id for k in self.positive]

    @property
    def token_ids(self) -> list[int]:
        return self.negative_ids + self.positive_ids

    @property
    def units(self) -> list[str]:
        """What leave-one-out leaves out, by name: ``he/she`` per pair, else each word
        as ``negative:he`` or ``positive:she``."""
        if self.paired:
            return [f"{n.word}/{p.word}" for n, p in zip(self.negative, self.positive, strict=True)]
        return [f"negative:{k.word}" for k in self.negative] + [
            f"positive:{k.word}" for k in self.positive
        ]

    def to_dict(self) -> dict[str, Any]:
        """The concept's entry in the run's ``concept.json``."""

        def token(k: KeptToken) -> dict[str, Any]:
            return {"word": k.word, "token": k.token, "token_id": k.token_id, "form": k.form}

        return {
            "paired": self.paired,
            "estimator": str(self.estimator),
            "negative_pole": self.negative_pole,
            "positive_pole": self.positive_pole,
            "negative": [token(k) for k in self.negative],
            "positive": [token(k) for k in self.positive],
            "dropped": [
                {"negative": d.negative, "positive": d.positive, "reason": d.reason}
                for d in self.dropped
            ],
        }


def select_concept_tokens(
    name: str, spec: ConceptSpec, forms: TokenForms, model_name: str
) -> ConceptTokens:
    """Apply the single-token rule (``embsvd.groups``) to a concept's words: a pair is kept
    only if both of its words are single tokens in the concept's ``form``, neither token
    taken by an earlier pair; a set keeps its single-token words. What is left out is
    recorded with the reason.

    Raises:
        ValueError: fewer than ``MIN_PAIRS`` pairs (or words of a set) are kept.
    """
    check_concept_spec(name, spec)
    owner: dict[int, str] = {}
    dropped: list[DroppedPair] = []

    def take(word: str) -> KeptToken | str:
        found = forms.find(word, spec.form)
        if isinstance(found, DroppedWord):
            return f"{word!r}: {found.reason} ({', '.join(found.tokens)})"
        if found.token_id in owner:
            return f"{word!r}: same token id {found.token_id} as {owner[found.token_id]!r}"
        return found

    if spec.pairs:
        negative, positive = [], []
        for neg_word, pos_word in spec.pairs:
            neg, pos = take(neg_word), take(pos_word)
            both = isinstance(neg, KeptToken) and isinstance(pos, KeptToken)
            if both and neg.token_id != pos.token_id:
                owner[neg.token_id], owner[pos.token_id] = neg_word, pos_word
                negative.append(neg)
                positive.append(pos)
                continue
            reasons = [r for r in (neg, pos) if isinstance(r, str)] or ["both words one token"]
            dropped.append(DroppedPair(neg_word, pos_word, "; ".join(reasons)))
        kept = len(negative)
    else:
        sides = {}
        for side in ("negative", "positive"):
            sides[side] = []
            for word in getattr(spec, side):
                found = take(word)
                if isinstance(found, KeptToken):
                    owner[found.token_id] = word
                    sides[side].append(found)
                else:
                    dropped.append(DroppedPair(word if side == "negative" else "", "", found))
        negative, positive = sides["negative"], sides["positive"]
        kept = min(len(negative), len(positive))
    concept = ConceptTokens(
        name,
        tuple(negative),
        tuple(positive),
        bool(spec.pairs),
        tuple(dropped),
        spec.negative_pole,
        spec.positive_pole,
        spec.estimator,
    )
    if kept < MIN_PAIRS:
        unit = "pairs" if spec.pairs else "words in each set"
        raise ValueError(
            f"concepts.{name}: keeps {kept} {unit} whose words are single tokens for model "
            f"{model_name} (at least {MIN_PAIRS} are needed); dropped: "
            f"{describe_dropped_pairs(concept)}; add words the tokenizer keeps whole, or "
            f"another concepts.{name}.form ({', '.join(FORMS)})"
        )
    return concept


def describe_dropped_pairs(concept: ConceptTokens) -> str:
    """``he/she: 'she': 2 tokens (...); ...`` for messages and logs."""
    if not concept.dropped:
        return "none"
    return "; ".join(
        f"{d.negative}/{d.positive}: {d.reason}" if d.positive else d.reason
        for d in concept.dropped
    )


# --- estimators ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConceptAxis:
    """A concept's axis and how well one direction describes it.

    Attributes:
        axis: Unit vector ``(d_model,)`` from the negative pole to the positive one.
        estimator: How it was estimated.
        origin: The midpoint of the two poles' means ``(d_model,)``: projections are
            measured from it, so the positive pole's words project above 0.
        first_pc_share: Share of the pair-centred rows' variance on their first PC.
        consistency: Mean cosine of the pair differences with ``axis``.
        difference_cos: Each pair difference's cosine with ``axis`` (for sets, each
            positive-negative difference's, ``(n_neg * n_pos,)`` row-major).
        separation: Mean projection of the positive pole minus that of the negative
            pole (> 0: the sign rule).
    """

    axis: np.ndarray
    estimator: str
    origin: np.ndarray
    first_pc_share: float
    consistency: float
    difference_cos: np.ndarray
    separation: float


def concept_axis(
    negative: np.ndarray,
    positive: np.ndarray,
    estimator: str = Estimator.difference,
    paired: bool = True,
) -> ConceptAxis:
    """The axis of one concept from its poles' rows.

    Args:
        negative: The negative pole's rows ``(n, d_model)``.
        positive: The positive pole's rows ``(m, d_model)``; ``m == n`` and aligned with
            ``negative`` when ``paired``.
        estimator: ``difference``, ``pca`` or ``lda`` (see the module docstring).
        paired: Rows ``i`` of both are a pair; else two sets.
    """
    neg = np.asarray(negative, dtype=np.float64)[None]
    pos = np.asarray(positive, dtype=np.float64)[None]
    axes, share, consistency = concept_statistics(neg, pos, estimator, paired)
    axis = axes[0]
    cosines = _difference_cosines(neg, pos, axes, paired)[0]
    mean_neg, mean_pos = neg[0].mean(axis=0), pos[0].mean(axis=0)
    return ConceptAxis(
        axis=axis,
        estimator=str(estimator),
        origin=(mean_neg + mean_pos) / 2,
        first_pc_share=float(share[0]),
        consistency=float(consistency[0]),
        difference_cos=cosines,
        separation=float((mean_pos - mean_neg) @ axis),
    )


def concept_statistics(
    negative: np.ndarray, positive: np.ndarray, estimator: str, paired: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axes, first-PC shares and consistencies of a batch of concepts.

    Args:
        negative: ``(b, n, d)`` float64.
        positive: ``(b, m, d)`` float64 (``m == n`` when ``paired``).

    Returns:
        ``axes`` ``(b, d)`` unit rows with the sign rule applied, ``first_pc_share``
        ``(b,)`` and ``consistency`` ``(b,)``.
    """
    if paired and negative.shape != positive.shape:
        raise ValueError(
            f"paired concept: {negative.shape[1]} negative and {positive.shape[1]} positive rows"
        )
    between = positive.mean(axis=1) - negative.mean(axis=1)  # (b, d)
    centred = _pole_centred(negative, positive, paired)
    gram = centred @ centred.transpose(0, 2, 1)
    values, vectors = np.linalg.eigh(gram)  # ascending
    share = values[:, -1] / np.maximum(values.sum(axis=1), np.finfo(float).tiny)
    if estimator == Estimator.difference:
        axes = between
    elif estimator == Estimator.pca:
        axes = np.einsum("bn,bnd->bd", vectors[:, :, -1], centred)
    elif estimator == Estimator.lda:
        axes = _fisher_directions(negative, positive, between)
    else:
        raise ValueError(f"estimator: {estimator!r} is not one of {', '.join(ESTIMATORS)}")
    norms = np.linalg.norm(axes, axis=1, keepdims=True)
    axes = axes / np.where(norms == 0, 1.0, norms)
    # the sign rule: the positive pole's mean projects above the negative pole's
    sign = np.where(np.einsum("bd,bd->b", between, axes) < 0, -1.0, 1.0)
    axes = axes * sign[:, None]
    consistency = _difference_cosines(negative, positive, axes, paired).mean(axis=1)
    return axes, np.clip(share, 0.0, 1.0), consistency


def _pole_centred(negative: np.ndarray, positive: np.ndarray, paired: bool) -> np.ndarray:
    """Pairs: each pair's rows minus the pair's mean; sets: every row minus the midpoint
    of the two poles' means. ``(b, n + m, d)``."""
    if paired:
        mid = (negative + positive) / 2
        return np.concatenate([negative - mid, positive - mid], axis=1)
    mid = (negative.mean(axis=1, keepdims=True) + positive.mean(axis=1, keepdims=True)) / 2
    return np.concatenate([negative - mid, positive - mid], axis=1)


def _difference_cosines(
    negative: np.ndarray, positive: np.ndarray, axes: np.ndarray, paired: bool
) -> np.ndarray:
    """Cosine of every pair difference (sets: every positive-negative difference) with
    its batch's axis, ``(b, k)``; a zero difference counts 0."""
    if paired:
        differences = positive - negative
    else:
        differences = (positive[:, None, :, :] - negative[:, :, None, :]).reshape(
            len(positive), -1, positive.shape[2]
        )
    dots = np.einsum("bkd,bd->bk", differences, axes)
    norms = np.linalg.norm(differences, axis=2)
    return dots / np.where(norms == 0, np.inf, norms)


def ledoit_wolf_from_gram(gram: np.ndarray, d: int) -> np.ndarray:
    """Ledoit-Wolf shrinkage ``(b,)`` of the covariance of rows ``X`` (``(b, n, d)``,
    column-centred) from their Gram matrices ``X X^T`` ``(b, n, n)``: the formula of
    ``embsvd.method.geometry.ledoit_wolf_shrinkage`` (scikit-learn's), whose scatter
    ``X^T X`` has the Gram's trace and squared norm and whose ``sum |x_i|^4`` is the
    Gram diagonal's squares. No ``d x d`` matrix is formed."""
    n = gram.shape[1]
    if d == 1:
        return np.zeros(len(gram))
    trace = np.trace(gram, axis1=1, axis2=2) / n
    mu = trace / d
    delta_ = np.sum(gram**2, axis=(1, 2)) / n**2
    fourth = np.sum(np.diagonal(gram, axis1=1, axis2=2) ** 2, axis=1)
    beta = (fourth / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    beta = np.minimum(beta, delta)
    return np.where(beta == 0, 0.0, beta / np.where(delta == 0, 1.0, delta))


def _fisher_directions(
    negative: np.ndarray, positive: np.ndarray, between: np.ndarray
) -> np.ndarray:
    """``Sigma_w^-1 (mean_pos - mean_neg)`` per batch, with ``Sigma_w = (1 - a) S + a
    trace(S)/d I`` the Ledoit-Wolf shrunk (``a``) covariance ``S = X^T X / N`` of the
    rows minus their pole's mean. Solved in the rows' span (Woodbury's identity):
    ``(lam I + c X^T X)^-1 v = (v - c X^T (lam I + c X X^T)^-1 X v) / lam``."""
    X = np.concatenate(
        [
            negative - negative.mean(axis=1, keepdims=True),
            positive - positive.mean(axis=1, keepdims=True),
        ],
        axis=1,
    )
    b, N, d = X.shape
    gram = X @ X.transpose(0, 2, 1)
    a = ledoit_wolf_from_gram(gram, d)
    trace_S = np.trace(gram, axis1=1, axis2=2) / N
    # a floor on the ridge keeps a within-pole covariance of rank < d invertible where
    # Ledoit-Wolf chose no shrinkage (rows that lie on a line)
    lam = np.maximum(a * trace_S / d, 1e-12 * np.maximum(trace_S / d, np.finfo(float).tiny))
    c = (1.0 - a) / N
    Xv = np.einsum("bnd,bd->bn", X, between)
    inner = lam[:, None, None] * np.eye(N) + c[:, None, None] * gram
    solved = np.linalg.solve(inner, Xv[:, :, None])[:, :, 0]
    return (between - c[:, None] * np.einsum("bnd,bn->bd", X, solved)) / lam[:, None]


def leave_one_out(
    negative: np.ndarray,
    positive: np.ndarray,
    axis: np.ndarray,
    estimator: str = Estimator.difference,
    paired: bool = True,
) -> np.ndarray:
    """``|cos|`` of each leave-one-out axis with the full ``axis``: per pair (a pair left
    out), or per word of the sets (negative words first), ``(k,)``. A set of
    ``MIN_PAIRS`` words has no word to spare: its entries are nan."""
    neg = np.asarray(negative, dtype=np.float64)
    pos = np.asarray(positive, dtype=np.float64)
    found = []
    if paired:
        for i in range(len(neg)):
            keep = np.arange(len(neg)) != i
            found.append(_refit(neg[keep], pos[keep], estimator, True))
    else:
        for i in range(len(neg)):
            keep = np.arange(len(neg)) != i
            found.append(_refit(neg[keep], pos, estimator, False) if keep.sum() else None)
        for i in range(len(pos)):
            keep = np.arange(len(pos)) != i
            found.append(_refit(neg, pos[keep], estimator, False) if keep.sum() else None)
    return np.array([np.nan if a is None else abs(float(a @ axis)) for a in found])


def _refit(neg: np.ndarray, pos: np.ndarray, estimator: str, paired: bool) -> np.ndarray:
    axes, _, _ = concept_statistics(neg[None], pos[None], estimator, paired)
    return axes[0]


def axis_cosines(axes: dict[str, np.ndarray]) -> tuple[tuple[str, ...], np.ndarray]:
    """Cosines between every two of ``axes`` (unit rows), names sorted: ``(names, (c, c))``."""
    names = tuple(sorted(axes))
    if not names:
        return names, np.empty((0, 0))
    stacked = np.stack([axes[n] / np.linalg.norm(axes[n]) for n in names])
    return names, np.clip(stacked @ stacked.T, -1.0, 1.0)


def project_on_axis(W: Any, axis: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """``(W - origin) @ axis`` for the whole vocabulary, ``(d_vocab,)`` float64, a block of
    rows at a time (``row_blocks``): 0 is the midpoint of the two poles, the positive
    pole's words lie above it."""
    shift = float(origin @ axis)
    found = np.empty(W.shape[0])
    for rows, block in row_blocks(W):
        found[rows] = np.asarray(block, dtype=np.float64) @ axis - shift
    return found
