"""Token groups: words that share a property, each kept only if it is one token.

The single-token rule ("1 word = 1 token"): a word is kept when the tokenizer encodes it,
without special tokens, to exactly one id that is not the unknown token, and that id is not
already in the group. A group keeps the first ``size`` such words in its configured order;
words that fail the rule are dropped, with the reason, and single-token words beyond
``size`` are held out (later analyses can validate the group's axes on them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MIN_GROUP_SIZE = 2  # an SVD of fewer rows has nothing to compare


@dataclass
class GroupSpec:
    """A token group's candidate words; also the schema of ``conf/groups/*.yaml``.

    Attributes:
        words: Candidate words, in the order they are tried.
        size: How many single-token words the group keeps (the first that pass).
        description: What the words have in common (documentation only).
    """

    words: list[str] = field(default_factory=list)
    size: int = 10
    description: str = ""


@dataclass(frozen=True)
class KeptToken:
    word: str
    token: str
    token_id: int


@dataclass(frozen=True)
class DroppedWord:
    word: str
    tokens: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class TokenGroup:
    """A group after the single-token rule, for one tokenizer."""

    name: str
    words: tuple[str, ...]
    kept: tuple[KeptToken, ...]
    dropped: tuple[DroppedWord, ...]
    held_out: tuple[KeptToken, ...] = ()

    @property
    def token_ids(self) -> list[int]:
        return [k.token_id for k in self.kept]

    @property
    def kept_words(self) -> list[str]:
        return [k.word for k in self.kept]

    def to_dict(self) -> dict[str, Any]:
        """The group's entry in the run's ``groups.json``."""
        return {
            "words": list(self.words),
            "kept": [_token_dict(k) for k in self.kept],
            "dropped": [
                {"word": d.word, "tokens": list(d.tokens), "reason": d.reason} for d in self.dropped
            ],
            "held_out": [_token_dict(k) for k in self.held_out],
        }


def _token_dict(token: KeptToken) -> dict[str, Any]:
    return {"word": token.word, "token": token.token, "token_id": token.token_id}


def select_single_tokens(
    name: str, spec: GroupSpec, tokenizer: PreTrainedTokenizerBase, model_name: str
) -> TokenGroup:
    """Apply the single-token rule to a group's words.

    Args:
        name: The group's name (used in messages).
        spec: Its candidate words and size.
        tokenizer: The checkpoint's tokenizer.
        model_name: The checkpoint's name (used in messages).

    Raises:
        ValueError: the spec is malformed, or fewer than 2 words survive.
    """
    _check_spec(name, spec)
    single: list[KeptToken] = []
    dropped: list[DroppedWord] = []
    owner: dict[int, str] = {}
    for word in spec.words:
        ids = tokenizer.encode(word, add_special_tokens=False)
        tokens = tuple(tokenizer.convert_ids_to_tokens(ids))
        reason = _rejection(ids, tokens, tokenizer.unk_token_id, owner)
        if reason:
            dropped.append(DroppedWord(word, tokens, reason))
            continue
        owner[ids[0]] = word
        single.append(KeptToken(word, tokens[0], ids[0]))
    kept, held_out = single[: spec.size], single[spec.size :]
    group = TokenGroup(name, tuple(spec.words), tuple(kept), tuple(dropped), tuple(held_out))
    if len(kept) < MIN_GROUP_SIZE:
        raise ValueError(
            f"groups.{name}: only {len(kept)} of {len(spec.words)} words are single tokens "
            f"for model {model_name} (at least {MIN_GROUP_SIZE} are needed); dropped: "
            f"{describe_dropped(group)}; add words that the tokenizer keeps whole"
        )
    return group


def _rejection(
    ids: list[int],
    tokens: tuple[str, ...],
    unk_id: int | None,
    owner: dict[int, str],
) -> str:
    """Why a word is dropped, or '' when it is kept."""
    if len(ids) != 1:
        return f"{len(ids)} tokens"
    if unk_id is not None and ids[0] == unk_id:
        return f"unknown token {tokens[0]}"
    if ids[0] in owner:
        return f"same token id {ids[0]} as {owner[ids[0]]!r}"
    return ""


def describe_dropped(group: TokenGroup) -> str:
    """``'Czechia' ('czech', '##ia'): 2 tokens; ...`` for messages and logs."""
    if not group.dropped:
        return "none"
    return "; ".join(
        f"{d.word!r} ({', '.join(repr(t) for t in d.tokens)}): {d.reason}" for d in group.dropped
    )


def _check_spec(name: str, spec: GroupSpec) -> None:
    if not spec.words:
        raise ValueError(f"groups.{name}.words: the group has no words; list at least 2")
    if spec.size < MIN_GROUP_SIZE:
        raise ValueError(f"groups.{name}.size: must be at least {MIN_GROUP_SIZE}, got {spec.size}")
