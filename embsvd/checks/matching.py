"""What a null's random groups are matched on, and how they are drawn.

A group's random replacements come from candidate pools: tokens of the member's
tokenizer form (word-initial ``Ġword`` or bare) whose surface is a real word (ASCII
letters, in the frequency list of ``embsvd.io.frequency``) or a numeral; with
``null_match=none``, every token whose surface is ASCII letters or digits (on byte-level
BPE mostly word fragments and identifiers, with larger norms than real words).

- ``none``: uniform draws of the group's size and form mix, independent across groups.
- ``norm``, ``frequency``, ``norm_frequency`` (default): every member is replaced by one
  of its ``n_neighbours`` nearest pool tokens, nearest in the pool's quantiles of token
  norm (in the analysed geometry), of Zipf word frequency (a member the frequency list
  does not know is matched on token id rank, and the rule says so), or of both. A
  numeral draws from the numerals of its form when there are enough of them. No member
  of any of the run's groups is ever drawn, and the random groups of one row share no
  token, as the run's own groups share none.

What a vocabulary and a matrix give the matching is computed once per process: the
pools (``token_pools``, keyed by the vocabulary's strings, special ids, marker and
frequency table, compared by value), the matrix's row norms (``matrix_row_norms``, keyed by
the matrix object, held weakly and checked against a fingerprint of its rows, so that a
new matrix, or one changed in place, is read again) and every group's candidates
(``match_groups``, keyed by the groups, pools, norms and frequencies by value). Each is a
small LRU (``MEMO_SIZE`` entries); ``clear_memos`` empties them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from embsvd.groups import TokenGroup
from embsvd.io.augmented import real_rows, with_virtual_norms
from embsvd.io.frequency import TokenFrequencies, surface
from embsvd.io.memo import MatrixMemo, ValueMemo, value_digest
from embsvd.io.vocabulary import row_norms

WHOLE_WORD = re.compile(r"[A-Za-z]+|[0-9]+")


class NullMatch(StrEnum):
    """What a null's random groups are matched on (``analysis.null_match``; see above).
    Members are named as their values because OmegaConf matches and lists an enum by name."""

    none = "none"
    norm = "norm"
    frequency = "frequency"
    norm_frequency = "norm_frequency"


NULL_MATCHES = tuple(NullMatch)
MAX_REDRAWS = 1000  # rounds of redrawing the picks of a member whose token was taken
KEYS_BLOCK = 1 << 22  # random sort keys held at once when a small pool is drawn from


_POOLS = ValueMemo()
_NORMS = MatrixMemo()
_MEMBERS = ValueMemo()


def clear_memos() -> None:
    """Forget the pools, row norms and matched candidates computed so far."""
    for memo in (_POOLS, _NORMS, _MEMBERS):
        memo.clear()


def matrix_row_norms(W: Any) -> np.ndarray:
    """``np.linalg.norm(W, axis=1)`` of the matrix analysed, ``(d_vocab,)``: the vocabulary's
    ``row_norms`` (a block of rows at a time: a ``BFloat16Rows`` is never widened whole),
    computed once per matrix object (``MatrixMemo``), or given by ``remember_row_norms``."""

    def norms() -> np.ndarray:
        found = row_norms(W)
        found.flags.writeable = False  # shared by every run that hits the memo
        return found

    return _NORMS.get(W, "row norms", norms)


def remember_row_norms(W: Any, norms: np.ndarray) -> np.ndarray:
    """Give ``matrix_row_norms(W)`` norms already computed by the same ``row_norms``: the
    vocabulary's (``Vocabulary.token_norms``, kept between processes in the cache), so
    that the null's norm matching reads no row of ``W`` (a pass over a 128256 x 4096
    bfloat16 matrix takes about 0.3 s). Returns what the memo holds for ``W``.

    Raises:
        ValueError: ``norms`` is not one value per row of ``W``.
    """
    if np.shape(norms) != (len(W),):
        raise ValueError(f"norms: shape {np.shape(norms)} for the {len(W)} rows of W")

    def given() -> np.ndarray:
        found = np.array(norms)  # a copy: the memo's is read-only, the caller's stays as it was
        found.flags.writeable = False
        return found

    return _NORMS.get(W, "row norms", given)


def frequencies_digest(frequencies: TokenFrequencies | None) -> str | None:
    """A frequency table's memo key (its values), ``None`` without one."""
    if frequencies is None:
        return None
    return value_digest(frequencies.zipf, frequencies.kind, frequencies.source)


@dataclass(frozen=True)
class TokenPools:
    """Candidate token ids per form (``bare``, ``initial``): ``ids`` the words (or, with
    ``null_match=none``, every whole-word token), ``numerals`` the numerals (empty with
    ``none``, whose ``ids`` hold them); and the rule that chose them."""

    ids: dict[str, np.ndarray]
    numerals: dict[str, np.ndarray]
    rule: str


@dataclass(frozen=True)
class Matching:
    """What random groups are matched on (see the module docstring).

    Attributes:
        match: One of ``NULL_MATCHES``.
        norms: Row norms of the analysed matrix, ``(d_vocab,)`` (for ``norm*``).
        frequencies: The vocabulary's frequency table (for ``*frequency`` and the pools).
        n_neighbours: Nearest pool tokens each member is replaced by one of.
    """

    match: str = "none"
    norms: np.ndarray | None = None
    frequencies: TokenFrequencies | None = None
    n_neighbours: int = 50

    @classmethod
    def of_matrix(
        cls,
        W: Any,
        match: str,
        frequencies: TokenFrequencies | None = None,
        n_neighbours: int = 50,
    ) -> Matching:
        """The matching of a run on ``W``: its row norms (``matrix_row_norms``, computed
        once per matrix) where ``match`` matches on norm; a ``SubwordMeanRows``'s norms
        are its real rows' followed by its virtual rows' (a multi-token member is matched
        on the norm of its mean row)."""
        norms = None
        if match in ("norm", "norm_frequency"):
            norms = with_virtual_norms(W, matrix_row_norms(real_rows(W)))
        return cls(match, norms, frequencies, n_neighbours)

    @property
    def on_norm(self) -> bool:
        return self.match in ("norm", "norm_frequency")

    @property
    def on_frequency(self) -> bool:
        return self.match in ("frequency", "norm_frequency")


def token_pools(
    token_strings: Sequence[str | None],
    excluded_ids: Collection[int],
    marker: str | None,
    frequencies: TokenFrequencies | None = None,
    undertrained_ids: Collection[int] = (),
) -> TokenPools:
    """The candidate pools of a vocabulary, per form.

    ``initial`` tokens are the marker (``Ġ``, ``▁``) followed by the surface; ``bare``
    tokens have no marker. Without a marker (WordPiece) both forms are one pool, without
    continuations (``##ing``). With ``frequencies`` the pools hold real words and
    numerals apart; without, every surface of ASCII letters or digits (``null_match=none``).

    Computed once per process for equal arguments (a sweep's runs share a vocabulary):
    the strings, special ids and marker are compared by value, the frequency table by a
    digest of its values. The pools' arrays are read-only, shared by every caller.

    ``undertrained_ids`` (``embsvd.io.undertrained``: rows training barely moved) are left
    out as ``excluded_ids`` are, and the rule says how many; none: the pools as before.
    """
    strings = tuple(token_strings)
    excluded = frozenset(int(i) for i in excluded_ids)
    undertrained = frozenset(int(i) for i in undertrained_ids) - excluded
    key = (strings, excluded, marker, frequencies_digest(frequencies), undertrained)
    pools = _POOLS.get(
        key, lambda: _token_pools(strings, excluded | undertrained, marker, frequencies)
    )
    if not undertrained:
        return pools
    rule = f"{pools.rule}; {len(undertrained)} tokens flagged under-trained excluded"
    return TokenPools(pools.ids, pools.numerals, rule)


def _token_pools(
    token_strings: Sequence[str | None],
    excluded: Collection[int],
    marker: str | None,
    frequencies: TokenFrequencies | None,
) -> TokenPools:
    form_of = {"bare": [], "initial": []}
    for token_id, token in enumerate(token_strings):
        if token is None or token_id in excluded:
            continue
        marked = marker is not None and token.startswith(marker)
        if WHOLE_WORD.fullmatch(surface(token, marker)):
            form_of["initial" if marked else "bare"].append(token_id)
    ids = {form: np.array(found, dtype=np.int64) for form, found in form_of.items()}
    numerals: dict[str, np.ndarray] = {}
    if frequencies is not None:
        numerals = {f: i[frequencies.of_kind("numeral")[i]] for f, i in ids.items()}
        ids = {f: i[frequencies.of_kind("word")[i]] for f, i in ids.items()}
    if marker is None:
        ids["initial"] = ids["bare"]
        numerals = {**numerals, "initial": numerals["bare"]} if numerals else {}
    for array in (*ids.values(), *numerals.values()):
        array.flags.writeable = False  # shared by every run that hits the memo
    return TokenPools(ids, numerals, _pool_rule(ids, numerals, marker, frequencies))


def _pool_rule(
    ids: Mapping[str, np.ndarray],
    numerals: Mapping[str, np.ndarray],
    marker: str | None,
    frequencies: TokenFrequencies | None,
) -> str:
    forms = ["bare"] if marker is None else ["bare", "initial"]
    sizes = ", ".join(
        f"{form} {len(ids[form])}" + (f" + {len(numerals[form])} numerals" if numerals else "")
        for form in forms
    )
    kind = (
        f"words of {frequencies.source} (ASCII letters) and numerals"
        if frequencies is not None
        else "tokens whose surface is ASCII letters or digits"
    )
    form_rule = (
        "no word-start marker: one pool, no ## continuations"
        if marker is None
        else f"initial = {marker!r} + surface, bare = surface"
    )
    return f"{kind}, of the member's form ({form_rule}); special tokens excluded; sizes {sizes}"


def draw_groups(
    pools: Mapping[str, np.ndarray], forms: Sequence[str], n_draws: int, rng: np.random.Generator
) -> np.ndarray:
    """``n_draws`` random groups for a group whose tokens have ``forms``, unmatched
    (``null_match=none``): for every form, as many distinct tokens of that form's pool
    as the group has, each row a uniform sample without replacement, drawn for all rows
    at once (``_distinct_picks``). Returns token ids, shape ``(n_draws, len(forms))``.

    Raises:
        ValueError: a pool is smaller than the number of tokens needed from it.
    """
    counts = {form: forms.count(form) for form in sorted(set(forms))}
    for form, count in counts.items():
        if len(pools[form]) < count:
            raise ValueError(
                f"analysis.n_null: the {form} candidate pool has {len(pools[form])} tokens, "
                f"fewer than the {count} a matched random group needs; set analysis.n_null=0"
            )
    columns = [
        np.asarray(pools[form])[_distinct_picks(len(pools[form]), count, n_draws, rng)]
        for form, count in counts.items()
    ]
    return np.concatenate(columns, axis=1) if columns else np.empty((n_draws, 0), np.int64)


def _distinct_picks(size: int, count: int, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_draws, count)`` indices into a pool of ``size``, distinct within a row and
    uniform over ordered samples without replacement. Where ``count`` is small next to
    ``size``, position by position, redrawing only the rows whose pick an earlier
    position holds (rarely more than a few rounds); else by sorting random keys, a block
    of rows at a time (``KEYS_BLOCK`` keys)."""
    if 4 * count <= size:
        picks = np.empty((n_draws, count), dtype=np.int64)
        for position in range(count):
            column = rng.integers(0, size, n_draws)
            taken = (column[:, None] == picks[:, :position]).any(axis=1)
            while taken.any():  # each round succeeds with probability >= 3/4 per row
                column[taken] = rng.integers(0, size, int(taken.sum()))
                taken = (column[:, None] == picks[:, :position]).any(axis=1)
            picks[:, position] = column
        return picks
    rows = max(1, KEYS_BLOCK // size)
    blocks = []
    for start in range(0, n_draws, rows):
        keys = rng.random((min(rows, n_draws - start), size))
        blocks.append(np.argsort(keys, axis=1)[:, :count])
    return np.concatenate(blocks) if blocks else np.empty((0, count), dtype=np.int64)


@dataclass(frozen=True)
class MemberMatch:
    """The candidates one member is replaced by, and how they were chosen."""

    token: str  # the member's token, for messages
    candidates: np.ndarray  # token ids, the member's nearest pool tokens
    radius: float  # distance (in pool quantiles) of the farthest candidate
    by_zipf: bool  # matched on Zipf frequency (else on token id rank)
    numeral_pool: bool


def match_members(
    group: TokenGroup,
    pools: TokenPools,
    matching: Matching,
    taken: Collection[int] = (),
    scales: dict | None = None,
) -> tuple[MemberMatch, ...]:
    """Every member's nearest pool tokens under ``matching`` (see the module docstring),
    never the group's own tokens nor those in ``taken`` (the other groups' members).
    ``scales`` caches each pool's quantiles across calls (a run's groups share pools).

    Raises:
        ValueError: the pools cannot give the group distinct replacements.
    """
    own = np.array(group.token_ids)
    never = np.union1d(own, np.asarray(list(taken), dtype=np.int64))
    scales = {} if scales is None else scales
    found = []
    for kept in group.kept:
        pool, numeral = _member_pool(kept.token_id, kept.form, pools, matching, len(own))
        found.append(_nearest(kept.token, kept.token_id, pool, never, matching, numeral, scales))
    union = np.unique(np.concatenate([m.candidates for m in found]))
    if len(union) < len(own):
        raise ValueError(
            f"analysis.null_match={matching.match}: the pools offer {len(union)} distinct "
            f"tokens near the {len(own)} members of {group.name}; raise "
            "analysis.null_neighbours or set analysis.null_match=none"
        )
    return tuple(found)


def _member_pool(
    token_id: int, form: str, pools: TokenPools, matching: Matching, group_size: int
) -> tuple[np.ndarray, bool]:
    """The member's pool: numerals of its form for a numeral when there are enough."""
    kinds = matching.frequencies
    if kinds is not None and kinds.of_kind("numeral")[token_id]:
        numerals = pools.numerals.get(form, np.array([], dtype=np.int64))
        if len(numerals) >= matching.n_neighbours + group_size:
            return numerals, True
    return pools.ids[form], False


class _Quantiles:
    """Mid-rank quantiles (0-1) of a pool's values, and of any value among them."""

    def __init__(self, values: np.ndarray):
        self.sorted = np.sort(values)
        self.of_pool = self.of(values)

    def of(self, value: np.ndarray | float) -> np.ndarray:
        ahead = np.searchsorted(self.sorted, value, "left")
        return (ahead + np.searchsorted(self.sorted, value, "right")) / (2 * len(self.sorted))


def _nearest(
    token: str,
    token_id: int,
    pool: np.ndarray,
    never: np.ndarray,
    matching: Matching,
    numeral: bool,
    scales: dict,
) -> MemberMatch:
    """The ``n_neighbours`` pool tokens nearest ``token_id`` in the pool's quantiles of
    each matched property, leaving out ``never``."""
    frequencies = matching.frequencies
    by_zipf = frequencies is not None and frequencies.zipf[token_id] > 0
    properties = []
    if matching.on_norm:
        properties.append(("norm", matching.norms))
    if matching.on_frequency:
        # a member the frequency list does not know is matched on id rank (merge order)
        ranks = np.arange(len(frequencies.zipf), dtype=float)
        properties.append(("zipf", frequencies.zipf) if by_zipf else ("id", ranks))
    squared = np.zeros(len(pool))
    for name, values in properties:
        key = (id(pool), name)
        if key not in scales:
            scales[key] = _Quantiles(values[pool])
        squared += (scales[key].of_pool - scales[key].of(values[token_id])) ** 2
    squared[np.isin(pool, never)] = np.inf
    k = min(matching.n_neighbours, int(np.isfinite(squared).sum()))
    nearest = np.argpartition(squared, k - 1)[:k] if k < len(pool) else np.arange(len(pool))
    nearest = nearest[np.argsort(squared[nearest], kind="stable")]  # the farthest last
    radius = float(np.sqrt(squared[nearest[-1]])) if k else math.inf
    return MemberMatch(token, pool[nearest], radius, by_zipf, numeral)


def draw_matched(
    members: Sequence[MemberMatch],
    n_draws: int,
    rng: np.random.Generator,
    avoid: np.ndarray | None = None,
) -> np.ndarray:
    """``n_draws`` groups, member ``i`` replaced by a uniform pick of its candidates that
    its row has not used yet: no token twice in a draw, nor in the same row of ``avoid``
    (``(n_draws, m)``: the draws of the groups it will be paired with, as the real
    groups share no token either). Members are placed in turn, each redrawing only the
    rows where its pick was taken. Returns ``(n_draws, n_members)`` token ids."""
    used = np.empty((n_draws, 0), dtype=np.int64) if avoid is None else avoid
    columns = []
    for member in members:
        column = member.candidates[rng.integers(0, len(member.candidates), n_draws)]
        for _ in range(MAX_REDRAWS):
            taken = (column[:, None] == used).any(axis=1)
            if not taken.any():
                break
            picks = rng.integers(0, len(member.candidates), int(taken.sum()))
            column[taken] = member.candidates[picks]
        else:
            raise ValueError(
                f"analysis.null_neighbours: after {MAX_REDRAWS} rounds some draws still find "
                f"every candidate of {member.token!r} taken by other members; raise "
                "analysis.null_neighbours"
            )
        columns.append(column)
        used = np.concatenate([used, column[:, None]], axis=1)
    return np.stack(columns, axis=1)


def describe_match(matching: Matching, members: Sequence[MemberMatch]) -> str:
    """What the target's random groups were matched on, in words, for a tag."""
    if matching.match == "none":
        return "none: uniform draws from the pool of the member's form"
    on = {
        "norm": "token norm",
        "frequency": "word frequency",
        "norm_frequency": "token norm and word frequency",
    }[matching.match]
    radii = [m.radius for m in members]
    text = (
        f"{matching.match}: each member replaced by one of its {matching.n_neighbours} nearest "
        f"pool tokens in pool quantiles of {on}; radius median {np.median(radii):.3f}, "
        f"max {max(radii):.3f}"
    )
    if matching.on_frequency:
        by_zipf = sum(m.by_zipf for m in members)
        text += (
            f"; frequency: {matching.frequencies.source} for {by_zipf} of {len(members)} "
            f"members, token id rank for {len(members) - by_zipf}"
        )
    numerals = sum(m.numeral_pool for m in members)
    if numerals:
        text += f"; {numerals} numeral members drawn from numerals"
    return text


def match_groups(
    groups: Mapping[str, TokenGroup], pools: TokenPools, matching: Matching
) -> dict[str, tuple[MemberMatch, ...]]:
    """Every group's members' candidates (none for ``none``), never a member of any of
    the run's groups: ``{name: (MemberMatch, ...)}``.

    Raises:
        ValueError: the pools cannot give every group distinct replacements in one draw
            (a tiny vocabulary, or ``null_neighbours`` too small).
    """
    if matching.match == "none":
        return {name: () for name in groups}
    # a sweep's runs share groups, pools and matching: their candidates are found once
    key = (
        tuple(
            (name, tuple((k.token, k.token_id, k.form) for k in group.kept))
            for name, group in groups.items()
        ),
        value_digest(pools.ids, pools.numerals),
        matching.match,
        matching.n_neighbours,
        value_digest(matching.norms) if matching.on_norm else None,
        frequencies_digest(matching.frequencies),
    )
    return dict(_MEMBERS.get(key, lambda: _match_groups(groups, pools, matching)))


def _match_groups(
    groups: Mapping[str, TokenGroup], pools: TokenPools, matching: Matching
) -> dict[str, tuple[MemberMatch, ...]]:
    taken = sorted({i for group in groups.values() for i in group.token_ids})
    scales: dict = {}  # every pool's quantiles, computed once for all groups
    members = {name: match_members(g, pools, matching, taken, scales) for name, g in groups.items()}
    candidates = [m.candidates for found in members.values() for m in found]
    room = len(np.unique(np.concatenate(candidates)))
    if room < len(taken):
        raise ValueError(
            f"analysis.null_match={matching.match}: the pools offer {room} distinct tokens near "
            f"the members of the run's {len(groups)} groups, which need {len(taken)} distinct "
            "ones per draw; raise analysis.null_neighbours, or set analysis.null_match=none"
        )
    return members


def draw_random_groups(
    group: TokenGroup,
    members: Sequence[MemberMatch],
    pools: TokenPools,
    matching: Matching,
    n_null: int,
    rng: np.random.Generator,
    paired: np.ndarray | None = None,
) -> np.ndarray:
    """A group's random replacements: uniform and independent with ``none`` (the
    unmatched null, kept as it was for comparison), else picks of its ``members``'
    candidates sharing no token with the same row of ``paired``."""
    if matching.match == "none":
        return draw_groups(pools.ids, [k.form for k in group.kept], n_null, rng)
    return draw_matched(members, n_null, rng, paired)
