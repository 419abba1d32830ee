"""Token groups: words that share a property, each kept only if it is one token.

The single-token rule ("1 word = 1 token"): a word is kept when one of its token forms is
exactly one id that is not the unknown token and not already in the group. A group keeps
the first ``size`` such words in its configured order; words that fail the rule are
dropped, with the reason, and single-token words beyond ``size`` are held out (later
analyses can validate the group's axes on them).

Open and closed sets. An open group (colors, animals) samples a larger class: any ten
members will do, and the rest are its held-out remainder. A closed group (months,
weekdays, planets, digits) is a whole set whose structure is the point (the calendar's
cycle, the order of the planets): every listed word is a member, none is held out, and
padding it with neighbours (seasons after the months, "today" after the weekdays) would
give them an axis of their own. A closed group keeps what the tokenizer allows, warns
about the members it loses and is marked incomplete. Either kind can list ``held_out``
alternates (abbreviations: Jan, Mon) that are only ever part of the remainder, flag
``polysemous`` members (May, Mars: the token has another common sense) and declare the
``order`` of its words.

Token forms. Byte-level BPE (GPT-2, Llama 3, SmolLM) and SentencePiece vocabularies keep
a word-initial form, the token a word gets in running text after a space (``ĠFrance``,
``▁France``), beside the bare string (``France``, as at the start of a text or inside a
word); the two are different rows of the embedding matrix, and a word may exist in only
one form (SmolLM2 has ``ĠNetherlands`` but splits ``Netherlands``). WordPiece (BERT)
marks continuations (``##ia``) instead, so its word-initial form is the bare one. A
group's ``form`` chooses:

- ``bare``: the bare string;
- ``initial``: the word-initial form (the bare one where the tokenizer has no marker);
- ``auto`` (default): the word-initial form where it is a single token, else the bare
  one; what a word in running text uses, and digits, which BPE vocabularies split off
  from the space, still count.

Each kept token records the form it was found in.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from embsvd.io.tokenizer import word_start_marker

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

MIN_GROUP_SIZE = 2  # an SVD of fewer rows has nothing to compare
DEFAULT_SIZE = 10  # members of an open group whose size is not given
# Caps far above any real group (the shipped ones have at most 27 words; every country is
# ~200), so that a mistyped or hostile config fails at once instead of running for hours:
# each member is one more refit of the leave-one-out check, and every draw of the null an
# SVD of a random group of `size` rows.
MAX_SIZE = 1000  # members a group keeps (`size`)
MAX_WORDS = 10_000  # candidate words of a group, `words` and `held_out` together

# A group name is a key of the run's metrics (``group_mean_corr/<a>__<b>``), of its CSV
# tables and of figure file names. ``__`` separates the two groups of a pair metric (and a
# name ending in ``_`` would make a third ``_`` beside it), so neither may occur in a name;
# ASCII letters, digits and ``-`` are what every metric store and file system takes.
GROUP_NAME_MAX = 64
GROUP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]*(?:_[A-Za-z0-9-]+)*", re.ASCII)
GROUP_NAME_RULE = (
    f"ASCII letters, digits, '_' and '-', starting with a letter, at most {GROUP_NAME_MAX} "
    "characters, no '__' and no '_' at the end ('__' separates the two groups of a pair "
    "metric, group_mean_corr/<a>__<b>)"
)


# Members of the choice enums are named as their values: OmegaConf matches a config value
# to an enum member by name, and names the members when it refuses one.
class Form(StrEnum):
    """Which token a group's words map to (``groups.<name>.form``; see above)."""

    auto = "auto"
    initial = "initial"
    bare = "bare"


class Order(StrEnum):
    """The declared order of a group's words (``groups.<name>.order``): ``none``,
    ``linear`` (a sequence) or ``cyclic`` (one whose last word leads back to the first)."""

    none = "none"
    linear = "linear"
    cyclic = "cyclic"


FORMS = tuple(Form)
ORDERS = tuple(Order)


@dataclass
class GroupSpec:
    """A token group's candidate words; also the schema of ``conf/groups/*.yaml``.

    Attributes:
        words: Candidate words, in the order they are tried; of a closed group, all of its
            members.
        size: How many single-token words the group keeps (the first that pass). ``None``:
            every word of a closed group, ``DEFAULT_SIZE`` of an open one. A closed group
            refuses any other number than its count of words.
        description: What the words have in common (documentation only).
        form: Which token a word maps to: ``auto``, ``initial`` or ``bare`` (see above).
        closed: The words are a whole closed set (months, weekdays): all are members.
        held_out: Alternate forms of members (Jan, Mon), only ever in the held-out
            remainder, after the single-token words beyond ``size``.
        polysemous: Members whose token has another common sense (May, Mars); each one of
            ``words``. They stay members and are flagged in ``groups.json``.
        order: The declared order of ``words``: ``none``, ``linear`` or ``cyclic``.
        min_size: The fewest members the group may keep; fewer is an error naming the
            kept and dropped words. ``None``: a group that keeps fewer than ``size`` is
            analysed, with a warning and the run tagged ``embsvd.warning.short_group``.
        display_name: How figures name the group (``EU countries``); ``None``: the
            name with ``_`` as spaces (``group_display_name``).
    """

    words: list[str] = field(default_factory=list)
    size: int | None = None
    description: str = ""
    form: Form = Form.auto
    closed: bool = False
    held_out: list[str] = field(default_factory=list)
    polysemous: list[str] = field(default_factory=list)
    order: Order = Order.none
    min_size: int | None = None
    display_name: str | None = None  # changes no number: not part of the config hash

    @property
    def n_members(self) -> int:
        """How many words the group keeps: ``size``, else all of a closed group's words,
        else ``DEFAULT_SIZE``."""
        if self.size is not None:
            return self.size
        return len(self.words) if self.closed else DEFAULT_SIZE


@dataclass(frozen=True)
class KeptToken:
    word: str
    token: str
    token_id: int
    form: str = "bare"  # "bare" or "initial": the form the token was found in


@dataclass(frozen=True)
class DroppedWord:
    word: str
    tokens: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class TokenGroup:
    """A group after the single-token rule, for one tokenizer.

    ``words`` are the configured candidates (of a closed group, its members); ``dropped``
    also records ``held_out`` alternates that are not single tokens; ``polysemous`` are the
    configured words whose token has another common sense.
    """

    name: str
    words: tuple[str, ...]
    kept: tuple[KeptToken, ...]
    dropped: tuple[DroppedWord, ...]
    held_out: tuple[KeptToken, ...] = ()
    order: str = "none"
    closed: bool = False
    polysemous: tuple[str, ...] = ()
    size: int = 0  # the members it was to keep (``GroupSpec.n_members``); 0: unknown
    display_name: str = ""  # how figures name it (``group_display_name``); "": the default

    @property
    def short(self) -> bool:
        """The tokenizer split or lacks some of its words, and it keeps fewer than its
        ``size`` (a group of fewer words than ``size`` that keeps them all is not short)."""
        return len(self.kept) < min(self.size, len(self.words))

    @property
    def token_ids(self) -> list[int]:
        return [k.token_id for k in self.kept]

    @property
    def kept_words(self) -> list[str]:
        return [k.word for k in self.kept]

    @property
    def lost_members(self) -> list[str]:
        """The words of a closed group that the single-token rule dropped ([] if open)."""
        if not self.closed:
            return []
        kept = set(self.kept_words)
        return [word for word in self.words if word not in kept]

    @property
    def incomplete(self) -> bool:
        """A closed group that lost a member to the single-token rule."""
        return bool(self.lost_members)

    def to_dict(self) -> dict[str, Any]:
        """The group's entry in the run's ``groups.json``."""
        polysemous = set(self.polysemous)
        return {
            "words": list(self.words),
            "order": self.order,
            "closed": self.closed,
            "incomplete": self.incomplete,
            "kept": [_token_dict(k, k.word in polysemous) for k in self.kept],
            "dropped": [
                {"word": d.word, "tokens": list(d.tokens), "reason": d.reason} for d in self.dropped
            ],
            "held_out": [_token_dict(k) for k in self.held_out],
            "display_name": self.display_name or default_display_name(self.name),
        }


def _token_dict(token: KeptToken, polysemous: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "word": token.word,
        "token": token.token,
        "token_id": token.token_id,
        "form": token.form,
    }
    if polysemous:  # only where it is: most tokens have a single sense worth noting
        entry["polysemous"] = True
    return entry


def select_single_tokens(
    name: str,
    spec: GroupSpec,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    forms: TokenForms | None = None,
) -> TokenGroup:
    """Apply the single-token rule to a group's words, in the group's token form.

    The first ``spec.n_members`` single-token words are kept (all of a closed group's);
    the remaining single-token words, then the single-token ``held_out`` alternates, are
    the held-out remainder. A closed group that loses members is logged as a warning.

    Args:
        name: The group's name (used in messages).
        spec: Its candidate words, size and form.
        tokenizer: The checkpoint's tokenizer.
        model_name: The checkpoint's name (used in messages).
        forms: ``TokenForms(tokenizer)``, when several groups share it (building it
            reads the whole vocabulary: 0.1 s for a 49k-token one).

    Raises:
        ValueError: the spec is malformed, or fewer than 2 words survive.
    """
    check_group_spec(name, spec)
    forms = forms or TokenForms(tokenizer)
    owner: dict[int, str] = {}
    single, dropped = _single_tokens(spec.words, spec.form, forms, owner)
    alternates, dropped_alternates = _single_tokens(spec.held_out, spec.form, forms, owner)
    size = spec.n_members
    group = TokenGroup(
        name,
        tuple(spec.words),
        kept=tuple(single[:size]),
        dropped=tuple(dropped + dropped_alternates),
        held_out=tuple(single[size:] + alternates),
        order=spec.order,
        closed=spec.closed,
        polysemous=tuple(spec.polysemous),
        size=size,
        display_name=group_display_name(name, spec),
    )
    if len(group.kept) < MIN_GROUP_SIZE:
        # the form matters only where the vocabulary has word-initial tokens
        form = f" in form {spec.form}" if forms.marker else ""
        other_form = f", or another groups.{name}.form ({', '.join(FORMS)})" if form else ""
        raise ValueError(
            f"groups.{name}: only {len(group.kept)} of {len(spec.words)} words are single "
            f"tokens{form} for model {model_name} (at least {MIN_GROUP_SIZE} are needed); "
            f"dropped: {describe_dropped(group)}; add words that the tokenizer keeps whole"
            f"{other_form}"
        )
    if spec.min_size is not None and len(group.kept) < spec.min_size:
        raise ValueError(
            f"groups.{name}: keeps {describe_short(group)} for model {model_name}, fewer "
            f"than groups.{name}.min_size={spec.min_size}; kept: "
            f"{', '.join(group.kept_words)}; dropped: {describe_dropped(group)}; add words "
            f"that the tokenizer keeps whole, or lower groups.{name}.min_size"
        )
    _log_members(group, model_name)
    return group


def describe_short(group: TokenGroup) -> str:
    """``6 of its 8 words (size 8)``: what a short group kept, for messages and tags."""
    return f"{len(group.kept)} of its {len(group.words)} words (size {group.size})"


def _single_tokens(
    words: list[str], form: str, forms: TokenForms, owner: dict[int, str]
) -> tuple[list[KeptToken], list[DroppedWord]]:
    """The single tokens of ``words`` and the words that have none; ``owner`` maps each
    id taken so far to its word (a later word with a taken id is dropped)."""
    single: list[KeptToken] = []
    dropped: list[DroppedWord] = []
    for word in words:
        found = forms.find(word, form)
        if isinstance(found, DroppedWord):
            dropped.append(found)
        elif found.token_id in owner:
            reason = f"same token id {found.token_id} as {owner[found.token_id]!r}"
            dropped.append(DroppedWord(word, (found.token,), reason))
        else:
            owner[found.token_id] = word
            single.append(found)
    return single, dropped


def _log_members(group: TokenGroup, model_name: str) -> None:
    if group.incomplete:
        # BERT splits "Uranus": the group stays usable, but its structure has a hole
        lost = set(group.lost_members)
        reasons = "; ".join(_describe(d) for d in group.dropped if d.word in lost)
        log.warning(
            "groups.%s: closed set incomplete for model %s, keeps %d of %d members; lost %s",
            group.name,
            model_name,
            len(group.kept),
            len(group.words),
            reasons,
        )
    polysemous = [k.word for k in group.kept if k.word in set(group.polysemous)]
    if polysemous:
        log.info(
            "groups.%s: polysemous members kept (their token has another sense): %s",
            group.name,
            ", ".join(polysemous),
        )


class TokenForms:
    """A tokenizer's bare and word-initial single tokens of words."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.vocab = tokenizer.get_vocab()
        self.marker = word_start_marker(self.vocab)

    def find(self, word: str, form: str) -> KeptToken | DroppedWord:
        """The word's token in ``form``, or why it has none."""
        if self.marker is None or form == "bare":
            return self._bare(word)
        initial = self._initial(word)
        if form == "initial" or isinstance(initial, KeptToken):
            return initial
        bare = self._bare(word)
        if isinstance(bare, KeptToken):
            return bare
        return DroppedWord(
            word, initial.tokens, f"initial form {initial.reason}, bare form {bare.reason}"
        )

    def _bare(self, word: str) -> KeptToken | DroppedWord:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        tokens = tuple(self.tokenizer.convert_ids_to_tokens(ids))
        if len(ids) == 1 and self._is_marked(tokens[0]):
            # SentencePiece prepends its marker to a text's first word: look the string up
            token_id = self.vocab.get(word)
            if token_id is None:
                return DroppedWord(word, tokens, f"no bare token {word!r}, only {tokens[0]!r}")
            return KeptToken(word, word, token_id, "bare")
        return self._single(word, ids, tokens, "bare")

    def _initial(self, word: str) -> KeptToken | DroppedWord:
        ids = self.tokenizer.encode(" " + word, add_special_tokens=False)
        tokens = tuple(self.tokenizer.convert_ids_to_tokens(ids))
        if len(ids) == 2 and tokens[0] == self.marker and self._is_marked(tokens[1]):
            ids, tokens = ids[1:], tokens[1:]  # SentencePiece: the space became its own ▁
        found = self._single(word, ids, tokens, "initial")
        if isinstance(found, KeptToken) and not self._is_marked(found.token):
            return DroppedWord(word, tokens, f"no word-initial token, only {found.token!r}")
        return found

    def _single(
        self, word: str, ids: list[int], tokens: tuple[str, ...], form: str
    ) -> KeptToken | DroppedWord:
        if len(ids) != 1:
            return DroppedWord(word, tokens, f"{len(ids)} tokens")
        if ids[0] == self.tokenizer.unk_token_id:
            return DroppedWord(word, tokens, f"unknown token {tokens[0]}")
        return KeptToken(word, tokens[0], ids[0], form)

    def _is_marked(self, token: str) -> bool:
        return self.marker is not None and token.startswith(self.marker) and token != self.marker


def describe_dropped(group: TokenGroup) -> str:
    """``'Czechia' ('czech', '##ia'): 2 tokens; ...`` for messages and logs."""
    if not group.dropped:
        return "none"
    return "; ".join(_describe(d) for d in group.dropped)


def _describe(dropped: DroppedWord) -> str:
    return f"{dropped.word!r} ({', '.join(repr(t) for t in dropped.tokens)}): {dropped.reason}"


def check_group_name(name: object) -> None:
    """Refuse a group name that could not be a metric key and a file name (``GROUP_NAME_RULE``).

    Raises:
        ValueError: naming the group, the rule and a name that follows it.
    """
    text = str(name)
    if len(text) <= GROUP_NAME_MAX and GROUP_NAME.fullmatch(text):
        return
    raise ValueError(
        f"groups: {text[:100]!r}{'...' if len(text) > 100 else ''} is not a group name: "
        f"{GROUP_NAME_RULE}; rename it, e.g. to {group_name_like(text)!r}"
    )


def group_name_like(name: str) -> str:
    """A name that follows ``GROUP_NAME_RULE``, made from ``name``: accents dropped, runs of
    other characters turned into one ``_``, cut to the length allowed."""
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    words = re.findall(r"[A-Za-z0-9-]+", ascii_text)
    text = "_".join(words).lstrip("0123456789-_")[:GROUP_NAME_MAX].rstrip("_")
    return text or "group"


def default_display_name(name: str) -> str:
    """A group name as people read it: ``_`` as spaces (``first_names`` -> ``first names``)."""
    return name.replace("_", " ")


def group_display_name(name: str, spec: GroupSpec) -> str:
    """How figures name the group: its ``display_name``, else ``default_display_name``."""
    return spec.display_name or default_display_name(name)


def check_group_bounds(name: str, spec: GroupSpec) -> None:
    """Refuse a group larger than any real one (``MAX_WORDS`` candidates, ``MAX_SIZE``
    members): the checks' cost grows with both.

    Raises:
        ValueError: naming the key, the count and the cap.
    """
    n_words = len(spec.words) + len(spec.held_out)
    if n_words > MAX_WORDS:
        raise ValueError(
            f"groups.{name}.words: {len(spec.words)} words and {len(spec.held_out)} held_out "
            f"alternates; at most {MAX_WORDS} together (the checks rank every candidate): "
            "split the group or shorten its lists"
        )
    if spec.n_members > MAX_SIZE:  # a closed group without a size keeps all its words
        key = "size" if spec.size is not None else "words"
        raise ValueError(
            f"groups.{name}.{key}: the group keeps {spec.n_members} members; at most "
            f"{MAX_SIZE} (each member is one more refit of the leave-one-out check): choose "
            "a smaller size"
        )


def check_group_spec(name: str, spec: GroupSpec) -> None:
    """Refuse a malformed group spec (no words, a size out of range, a choice that is not
    one, polysemous or held-out words that contradict ``words``), naming the key.

    Raises:
        ValueError: naming the key, the value and what is allowed.
    """
    check_group_bounds(name, spec)
    if not spec.words:
        raise ValueError(f"groups.{name}.words: the group has no words; list at least 2")
    if spec.closed and spec.size is not None and spec.size != len(spec.words):
        raise ValueError(
            f"groups.{name}.size: {spec.size} for a closed set of {len(spec.words)} words; a "
            "closed set keeps all its words (leave size unset, or set it to the count)"
        )
    if spec.n_members < MIN_GROUP_SIZE:
        raise ValueError(
            f"groups.{name}.size: must be at least {MIN_GROUP_SIZE}, got {spec.n_members}"
        )
    most = min(spec.n_members, len(spec.words))
    if spec.min_size is not None and not MIN_GROUP_SIZE <= spec.min_size <= most:
        raise ValueError(
            f"groups.{name}.min_size: {spec.min_size} is not between {MIN_GROUP_SIZE} and "
            f"{most}, the most the group can keep (size {spec.n_members}, "
            f"{len(spec.words)} words); set it to the fewest members the analysis may keep, "
            "or leave it unset"
        )
    if spec.form not in FORMS:
        raise ValueError(
            f"groups.{name}.form: {spec.form!r} is not one of {', '.join(FORMS)} (auto: the "
            "word-initial token where there is one, else the bare string)"
        )
    if spec.order not in ORDERS:
        raise ValueError(
            f"groups.{name}.order: {spec.order!r} is not one of {', '.join(ORDERS)} (linear: "
            "the words are a sequence, cyclic: one whose last word leads back to the first)"
        )
    for word in spec.polysemous:
        if word not in spec.words:
            raise ValueError(
                f"groups.{name}.polysemous: {word!r} is not one of groups.{name}.words; list "
                "only members whose token has another common sense"
            )
    for word in spec.held_out:
        if word in spec.words:
            raise ValueError(
                f"groups.{name}.held_out: {word!r} is also one of groups.{name}.words; "
                "held_out lists alternate forms that are never members"
            )
