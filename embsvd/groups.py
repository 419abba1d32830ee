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

Variants. ``variants`` expands each word to other strings and forms of it, each a row of
its own: ``case`` (lower, Capitalised, UPPER), ``plural`` (regular English plurals: +s;
+es after s, x, z, ch, sh; a consonant and y -> ies: irregular plurals, ``mice``, must be
listed as words) and ``space`` (the same string in the other token form: ``Ġcat`` beside
``cat`` in byte-level BPE and SentencePiece, ``##cat`` beside ``cat`` in WordPiece). The
kinds combine in the order listed (``[case, plural]`` also gives ``Cats``, ``CATS``).
A variant is kept, right after its source word, when it is a single token not already
in the group; it is tried only for a word kept itself, and never counts against
``size``: ``size`` (and a closed set's completeness) counts the listed words, and each
brings its kept variants along, into the members or into the held-out remainder with
it. Each kept variant records its ``source`` word and ``variant`` kind. A group with
variants cannot declare an ``order`` (its rows are no longer the ordered words).

Multi-token words. ``subwords: skip`` (default) drops a word the tokenizer splits;
``mean`` keeps a listed member as the mean of its subword rows (in the word's token
form), under a virtual id past the vocabulary's end (``embsvd.io.augmented``). It applies
to the words that become members, not to variants nor to the held-out remainder (both
are ranked among real tokens); each such member records ``multi_token``, its subword
tokens and ids.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from embsvd.io.augmented import VirtualIds, joined_tokens
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


class MultiToken(StrEnum):
    """What a group does with a word the tokenizer splits (``groups.<name>.subwords``):
    ``skip`` drops it, ``mean`` keeps it as the mean of its subword rows."""

    skip = "skip"
    mean = "mean"


class Variant(StrEnum):
    """A kind of variant a group's words expand to (``groups.<name>.variants``)."""

    case = "case"
    plural = "plural"
    space = "space"


FORMS = tuple(Form)
ORDERS = tuple(Order)
MULTI_TOKENS = tuple(MultiToken)
VARIANTS = tuple(Variant)
WORDPIECE_CONTINUATION = "##"  # WordPiece's mark of a piece inside a word


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
        variants: Kinds of variant each word expands to: ``case``, ``plural``, ``space``
            (see above); kept variants do not count against ``size``.
        subwords: ``skip`` (drop words the tokenizer splits) or ``mean`` (keep a
            member as the mean of its subword rows, flagged wherever it is used). Not
            ``multi_token``: a key ending in ``token`` is taken for a secret and redacted.
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
    variants: list[str] = field(default_factory=list)
    subwords: MultiToken = MultiToken.skip

    @property
    def n_members(self) -> int:
        """How many words the group keeps: ``size``, else all of a closed group's words,
        else ``DEFAULT_SIZE``."""
        if self.size is not None:
            return self.size
        return len(self.words) if self.closed else DEFAULT_SIZE


@dataclass(frozen=True)
class KeptToken:
    """A word's row: its token (or, for a multi-token word kept as a mean, its virtual
    id past the vocabulary's end and the subword tokens averaged)."""

    word: str
    token: str
    token_id: int
    form: str = "bare"  # "bare" or "initial": the form the token was found in
    source: str = ""  # of a variant: the listed word it was made from ("" if listed)
    variant: str = ""  # of a variant: its kinds, e.g. "plural" or "case+space"
    subword_ids: tuple[int, ...] = ()  # of a multi-token word: the rows averaged
    subword_tokens: tuple[str, ...] = ()

    @property
    def multi_token(self) -> bool:
        """A word the tokenizer splits, read as the mean of its subword rows."""
        return bool(self.subword_ids)


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
    variants: tuple[str, ...] = ()  # the variant kinds its words expanded to
    subwords: str = "skip"  # ``GroupSpec.subwords``
    dropped_variants: tuple[DroppedWord, ...] = ()  # variants tried and not kept, with why

    @property
    def listed_members(self) -> tuple[KeptToken, ...]:
        """The kept tokens of listed words (not variants): what ``size`` counts."""
        return tuple(k for k in self.kept if not k.variant)

    @property
    def multi_token_members(self) -> tuple[KeptToken, ...]:
        """The members kept as the mean of their subword rows (``subwords: mean``)."""
        return tuple(k for k in self.kept if k.multi_token)

    @property
    def short(self) -> bool:
        """The tokenizer split or lacks some of its words, and it keeps fewer than its
        ``size`` (a group of fewer words than ``size`` that keeps them all is not short)."""
        return len(self.listed_members) < min(self.size, len(self.words))

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
        kept = {k.word for k in self.listed_members}
        return [word for word in self.words if word not in kept]

    @property
    def incomplete(self) -> bool:
        """A closed group that lost a member to the single-token rule."""
        return bool(self.lost_members)

    def to_dict(self) -> dict[str, Any]:
        """The group's entry in the run's ``groups.json``; ``variants`` and
        ``subwords`` only where the group uses them (entries as before otherwise)."""
        polysemous = set(self.polysemous)
        entry = {
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
        if self.variants:
            entry["variants"] = list(self.variants)
            entry["dropped_variants"] = [
                {"word": d.word, "tokens": list(d.tokens), "reason": d.reason}
                for d in self.dropped_variants
            ]
        if self.subwords != MultiToken.skip:
            entry["subwords"] = str(self.subwords)
        return entry


def _token_dict(token: KeptToken, polysemous: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "word": token.word,
        "token": token.token,
        "token_id": token.token_id,
        "form": token.form,
    }
    if polysemous:  # only where it is: most tokens have a single sense worth noting
        entry["polysemous"] = True
    if token.variant:
        entry |= {"source": token.source, "variant": token.variant}
    if token.multi_token:  # a mean of subword rows, not a token: said wherever it is used
        entry |= {
            "multi_token": True,
            "subword_tokens": list(token.subword_tokens),
            "subword_ids": list(token.subword_ids),
        }
    return entry


def select_single_tokens(
    name: str,
    spec: GroupSpec,
    tokenizer: PreTrainedTokenizerBase,
    model_name: str,
    forms: TokenForms | None = None,
    virtual: VirtualIds | None = None,
) -> TokenGroup:
    """Apply the single-token rule to a group's words, in the group's token form.

    The first ``spec.n_members`` single-token words are kept (all of a closed group's),
    each followed by its kept variants; the remaining single-token words (with their
    variants), then the single-token ``held_out`` alternates, are the held-out remainder.
    With ``subwords: mean`` a split word among the first ``n_members`` is kept as the
    mean of its subword rows, under an id from ``virtual``. A closed group that loses
    members is logged as a warning.

    Args:
        name: The group's name (used in messages).
        spec: Its candidate words, size and form.
        tokenizer: The checkpoint's tokenizer.
        model_name: The checkpoint's name (used in messages).
        forms: ``TokenForms(tokenizer)``, when several groups share it (building it
            reads the whole vocabulary: 0.1 s for a 49k-token one).
        virtual: The run's virtual ids (``VirtualIds(len(W))``, numbered from the rows
            of the matrix analysed), shared by its groups; needed with
            ``subwords: mean``.

    Raises:
        ValueError: the spec is malformed, ``subwords: mean`` without ``virtual``, or
            fewer than 2 words survive.
    """
    check_group_spec(name, spec)
    if spec.subwords == MultiToken.mean and virtual is None:
        raise ValueError(
            f"groups.{name}.subwords=mean: pass virtual=VirtualIds(len(W)) "
            "(embsvd.io.augmented), numbered from the rows of the matrix analysed, and "
            "read the matrix through subword_mean_rows(W, virtual)"
        )
    forms = forms or TokenForms(tokenizer)
    owner: dict[int, str] = {}
    size = spec.n_members
    entries, dropped, dropped_variants = _expanded_words(spec, forms, owner, virtual)
    members = [token for entry in entries[:size] for token in entry]
    remainder = [token for entry in entries[size:] for token in entry]
    alternates, dropped_alternates = _single_tokens(spec.held_out, spec.form, forms, owner)
    group = TokenGroup(
        name,
        tuple(spec.words),
        kept=tuple(members),
        dropped=tuple(dropped + dropped_alternates),
        held_out=tuple(remainder + alternates),
        order=spec.order,
        closed=spec.closed,
        polysemous=tuple(spec.polysemous),
        size=size,
        display_name=group_display_name(name, spec),
        variants=tuple(str(v) for v in spec.variants),
        subwords=str(spec.subwords),
        dropped_variants=tuple(dropped_variants),
    )
    if len(group.kept) > MAX_SIZE:
        raise ValueError(
            f"groups.{name}.variants: the group keeps {len(group.kept)} rows with its "
            f"variants for model {model_name}; at most {MAX_SIZE} (each row is one more "
            "refit of the leave-one-out check): choose a smaller size or fewer variants"
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


def _expanded_words(
    spec: GroupSpec, forms: TokenForms, owner: dict[int, str], virtual: VirtualIds | None
) -> tuple[list[list[KeptToken]], list[DroppedWord], list[DroppedWord]]:
    """Per listed word kept, its token (or, with ``subwords: mean``, its virtual row)
    followed by its kept variants; and the words and variants dropped, with why. A
    multi-token word is kept (under a virtual id) only while the members are not all
    found: the held-out remainder is ranked among real tokens, so it holds none."""
    entries: list[list[KeptToken]] = []
    dropped: list[DroppedWord] = []
    dropped_variants: list[DroppedWord] = []
    mean = spec.subwords == MultiToken.mean and virtual is not None
    for word in spec.words:
        found = forms.find(word, spec.form)
        member = len(entries) < spec.n_members
        if isinstance(found, DroppedWord) and mean and member and _split(found):
            found = forms.mean_of_pieces(word, spec.form, virtual)
        kept = _take(found, word, owner, dropped)
        if kept is None:
            continue
        entry = [kept]
        if not kept.multi_token:
            entry += _variants_of(kept, spec, forms, owner, dropped_variants)
        entries.append(entry)
    return entries, dropped, dropped_variants


def _split(dropped: DroppedWord) -> bool:
    """Whether a word was dropped for being several tokens (not for an unknown token)."""
    return len(dropped.tokens) > 1


def _take(
    found: KeptToken | DroppedWord, word: str, owner: dict[int, str], dropped: list[DroppedWord]
) -> KeptToken | None:
    """``found`` if it is a token no earlier word of the group took, else ``None`` with
    the reason appended to ``dropped``."""
    if isinstance(found, DroppedWord):
        dropped.append(found)
        return None
    if found.token_id in owner:
        reason = f"same token id {found.token_id} as {owner[found.token_id]!r}"
        dropped.append(DroppedWord(word, (found.token,), reason))
        return None
    owner[found.token_id] = word
    return found


def _variants_of(
    kept: KeptToken,
    spec: GroupSpec,
    forms: TokenForms,
    owner: dict[int, str],
    dropped: list[DroppedWord],
) -> list[KeptToken]:
    """The kept single-token variants of a kept word, in order: each string variant
    (case, plural) followed by its other token form where ``space`` is asked for."""
    found: list[KeptToken] = []
    for text, kind in variant_strings(kept.word, spec.variants):
        if kind:  # the word itself is ``kept``; its string variants are looked up
            lost: list[DroppedWord] = []
            token = _take(forms.find(text, spec.form), text, owner, lost)
            dropped += [_variant_dropped(d, kind, kept.word) for d in lost]
            if token is None:
                continue
            base = replace(token, source=kept.word, variant=kind)
            found.append(base)
        else:
            base = kept
        if Variant.space in spec.variants:
            kinds = f"{kind}+{Variant.space}" if kind else str(Variant.space)
            lost = []
            other = _take(forms.other_form(base), base.word, owner, lost)
            dropped += [_variant_dropped(d, kinds, kept.word) for d in lost]
            if other is not None:
                found.append(replace(other, source=kept.word, variant=kinds))
    return found


def _variant_dropped(dropped: DroppedWord, kind: str, source: str) -> DroppedWord:
    return DroppedWord(dropped.word, dropped.tokens, f"{kind} of {source!r}: {dropped.reason}")


def variant_strings(word: str, kinds: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """``word`` and its string variants with their kinds, ``[(word, ""), ("Cat", "case"),
    ("cats", "plural"), ("Cats", "case+plural"), ...]``: each kind of ``kinds`` (``space``
    aside, a form and not a string) applied to every string so far, in the order listed;
    each string once."""
    found = [(word, "")]
    for kind in kinds:
        if kind == Variant.space:
            continue
        for text, made in list(found):
            for new in _string_variants(text, kind):
                if all(new != other for other, _ in found):
                    found.append((new, f"{made}+{kind}" if made else str(kind)))
    return found


def _string_variants(text: str, kind: str) -> list[str]:
    if kind == Variant.case:
        return [text.lower(), text[:1].upper() + text[1:].lower(), text.upper()]
    if kind == Variant.plural:
        return [regular_plural(text)]
    raise ValueError(f"variant kind {kind!r} is not one of {', '.join(VARIANTS)}")


def regular_plural(word: str) -> str:
    """The regular English plural: +es after s, x, z, ch, sh; a consonant and y -> ies;
    else +s (``box`` -> ``boxes``, ``city`` -> ``cities``, ``day`` -> ``days``); an
    all-capital word keeps capitals (``CITY`` -> ``CITIES``). Irregular plurals (``mouse``
    -> ``mice``) are not guessed: list them as words."""
    lower = word.lower()
    stem, suffix = word, "s"
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        suffix = "es"
    elif len(lower) > 1 and lower.endswith("y") and lower[-2] not in "aeiou":
        stem, suffix = word[:-1], "ies"
    if word.isupper() and len(word) > 1:
        suffix = suffix.upper()
    return stem + suffix


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
    """A tokenizer's bare and word-initial single tokens of words, each word's found once
    (a sweep's runs on one checkpoint select the same groups: 2.8 ms a run of ten groups
    before, on the benchmark's sweep)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        self.vocab = tokenizer.get_vocab()
        self.marker = word_start_marker(self.vocab)
        self._found: dict[tuple[str, bool], KeptToken | DroppedWord] = {}

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

    def other_form(self, kept: KeptToken) -> KeptToken | DroppedWord:
        """The same string in the other token form (the ``space`` variant): the bare
        token of a word-initial one and the word-initial of a bare one (``Ġcat`` /
        ``cat``); in WordPiece, whose word-initial form is the bare string, the
        continuation ``##cat`` (recorded as form ``bare``: WordPiece has no other)."""
        if self.marker is None:
            token = WORDPIECE_CONTINUATION + kept.word
            token_id = self.vocab.get(token)
            if token_id is None:
                return DroppedWord(kept.word, (token,), f"no continuation token {token!r}")
            return KeptToken(kept.word, token, token_id, "bare")
        if kept.form == "initial":
            return self._bare(kept.word)
        return self._initial(kept.word)

    def mean_of_pieces(self, word: str, form: str, virtual: VirtualIds) -> KeptToken | DroppedWord:
        """A split word as the mean of its pieces: its tokens in running text (after a
        space) where the vocabulary has word-initial tokens and ``form`` is not ``bare``,
        else as a bare string; a virtual id from ``virtual``. A space that became a
        token of its own (a lone ``Ġ`` or ``▁``) is no piece of the word: left out. The
        form recorded is ``initial`` where the first piece is word-initial. A word with
        an unknown piece stays dropped."""
        initial = self.marker is not None and form != "bare"
        ids = self.tokenizer.encode((" " if initial else "") + word, add_special_tokens=False)
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        if len(ids) > 1 and tokens[0] == self.marker:
            ids, tokens = ids[1:], tokens[1:]
        if not ids or self.tokenizer.unk_token_id in ids:
            return DroppedWord(word, tuple(tokens), "an unknown piece: no mean of its rows")
        token_id = virtual.add(ids, word)
        return KeptToken(
            word,
            joined_tokens(tokens),
            token_id,
            "initial" if self._is_marked(tokens[0]) else "bare",
            subword_ids=tuple(int(i) for i in ids),
            subword_tokens=tuple(tokens),
        )

    def _bare(self, word: str) -> KeptToken | DroppedWord:
        found = self._found.get((word, False))
        if found is None:
            found = self._found[word, False] = self._find_bare(word)
        return found

    def _initial(self, word: str) -> KeptToken | DroppedWord:
        found = self._found.get((word, True))
        if found is None:
            found = self._found[word, True] = self._find_initial(word)
        return found

    def _find_bare(self, word: str) -> KeptToken | DroppedWord:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        tokens = tuple(self.tokenizer.convert_ids_to_tokens(ids))
        if len(ids) == 1 and self._is_marked(tokens[0]):
            # SentencePiece prepends its marker to a text's first word: look the string up
            token_id = self.vocab.get(word)
            if token_id is None:
                return DroppedWord(word, tokens, f"no bare token {word!r}, only {tokens[0]!r}")
            return KeptToken(word, word, token_id, "bare")
        return self._single(word, ids, tokens, "bare")

    def _find_initial(self, word: str) -> KeptToken | DroppedWord:
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
    if spec.subwords not in MULTI_TOKENS:
        raise ValueError(
            f"groups.{name}.subwords: {spec.subwords!r} is not one of "
            f"{', '.join(MULTI_TOKENS)} (skip: drop words the tokenizer splits, mean: keep "
            "them as the mean of their subword rows)"
        )
    _check_variants(name, spec)
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


def _check_variants(name: str, spec: GroupSpec) -> None:
    unknown = [kind for kind in spec.variants if kind not in VARIANTS]
    if unknown:
        raise ValueError(
            f"groups.{name}.variants: {unknown[0]!r} is not a variant kind; the kinds are "
            f"{', '.join(VARIANTS)} (case: lower, Capitalised, UPPER; plural: regular "
            "English plurals; space: the other token form, Ġword / word or word / ##word)"
        )
    if len(set(spec.variants)) != len(spec.variants):
        raise ValueError(
            f"groups.{name}.variants: {list(spec.variants)} lists a kind twice; list each once"
        )
    if spec.variants and spec.order != Order.none:
        raise ValueError(
            f"groups.{name}.variants: a group with variants cannot declare order "
            f"{spec.order!r} (its rows are no longer the ordered words); leave order unset, "
            "or list the variants as words of a group of their own"
        )
