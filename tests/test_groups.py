"""The single-token rule, applied with the tiny BERT tokenizer of conftest's VOCAB."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest

from embsvd.checkpoint import load_tokenizer
from embsvd.groups import (
    DroppedWord,
    GroupSpec,
    KeptToken,
    TokenGroup,
    describe_dropped,
    select_single_tokens,
)
from tests.conftest import DIGITS, VOCAB, write_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

MODEL = "tiny-bert"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    folder = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(folder)
    return load_tokenizer(folder)


def select(
    tokenizer: PreTrainedTokenizerBase, words: list[str], size: int = 10, name: str = "g"
) -> TokenGroup:
    return select_single_tokens(name, GroupSpec(words=words, size=size), tokenizer, MODEL)


def test_digits_are_kept_in_order_with_their_ids(tokenizer: PreTrainedTokenizerBase) -> None:
    group = select(tokenizer, DIGITS, name="digits")

    assert group.name == "digits"
    assert group.words == tuple(DIGITS)
    assert group.kept_words == DIGITS
    assert group.token_ids == [VOCAB.index(d) for d in DIGITS]
    assert group.kept == tuple(KeptToken(d, d, VOCAB.index(d)) for d in DIGITS)
    assert group.dropped == ()
    assert group.held_out == ()
    assert describe_dropped(group) == "none"


def test_word_of_two_tokens_is_dropped(tokenizer: PreTrainedTokenizerBase) -> None:
    group = select(tokenizer, ["France", "Czechia", "Germany"])

    assert group.kept_words == ["France", "Germany"]
    assert group.dropped == (DroppedWord("Czechia", ("czech", "##ia"), "2 tokens"),)
    assert describe_dropped(group) == "'Czechia' ('czech', '##ia'): 2 tokens"


def test_word_outside_the_vocabulary_is_dropped_as_unknown(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    group = select(tokenizer, ["Zanzibar", "France", "Germany"])

    assert group.kept_words == ["France", "Germany"]
    assert group.dropped == (DroppedWord("Zanzibar", ("[UNK]",), "unknown token [UNK]"),)


def test_empty_word_is_dropped_as_zero_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    group = select(tokenizer, ["", "France", "Germany"])

    assert group.dropped == (DroppedWord("", (), "0 tokens"),)


def test_lower_cased_token_is_kept_under_the_configured_word(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    group = select(tokenizer, ["France", "ITALY", "spain"])

    assert group.kept == (
        KeptToken("France", "france", VOCAB.index("france")),
        KeptToken("ITALY", "italy", VOCAB.index("italy")),
        KeptToken("spain", "spain", VOCAB.index("spain")),
    )


def test_second_word_with_the_same_id_is_dropped(tokenizer: PreTrainedTokenizerBase) -> None:
    group = select(tokenizer, ["France", "Germany", "FRANCE"])

    france = VOCAB.index("france")
    assert group.token_ids == [france, VOCAB.index("germany")]
    assert group.dropped == (
        DroppedWord("FRANCE", ("france",), f"same token id {france} as 'France'"),
    )


def test_single_tokens_beyond_size_are_held_out_not_dropped(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    words = ["France", "Czechia", "Germany", "Italy", "Zanzibar", "Spain", "ITALY"]

    group = select(tokenizer, words, size=2)

    assert group.kept_words == ["France", "Germany"]
    assert [k.word for k in group.held_out] == ["Italy", "Spain"]
    assert [k.token_id for k in group.held_out] == [VOCAB.index("italy"), VOCAB.index("spain")]
    # a held-out word still owns its id: a later duplicate of it is dropped
    assert [(d.word, d.reason) for d in group.dropped] == [
        ("Czechia", "2 tokens"),
        ("Zanzibar", "unknown token [UNK]"),
        ("ITALY", f"same token id {VOCAB.index('italy')} as 'Italy'"),
    ]
    assert group.words == tuple(words)


BARE = {"form": "bare"}  # WordPiece has no word-initial marker


def test_to_dict_holds_words_kept_dropped_and_held_out(tokenizer: PreTrainedTokenizerBase) -> None:
    group = select(tokenizer, ["France", "Czechia", "Germany", "Italy"], size=2)

    as_dict = group.to_dict()

    assert as_dict == {
        "words": ["France", "Czechia", "Germany", "Italy"],
        "kept": [
            {"word": "France", "token": "france", "token_id": VOCAB.index("france"), **BARE},
            {"word": "Germany", "token": "germany", "token_id": VOCAB.index("germany"), **BARE},
        ],
        "dropped": [{"word": "Czechia", "tokens": ["czech", "##ia"], "reason": "2 tokens"}],
        "held_out": [{"word": "Italy", "token": "italy", "token_id": VOCAB.index("italy"), **BARE}],
    }
    assert json.loads(json.dumps(as_dict)) == as_dict  # groups.json needs plain JSON types


def test_fewer_than_two_survivors_name_the_group_model_and_dropped_words(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    words = ["France", "Czechia", "Zanzibar", "FRANCE"]
    france = VOCAB.index("france")

    with pytest.raises(
        ValueError,
        match=re.escape(
            f"groups.eu_countries: only 1 of 4 words are single tokens for model {MODEL} "
            "(at least 2 are needed); dropped: 'Czechia' ('czech', '##ia'): 2 tokens; "
            "'Zanzibar' ('[UNK]'): unknown token [UNK]; "
            f"'FRANCE' ('france'): same token id {france} as 'France'; "
            "add words that the tokenizer keeps whole"
        ),
    ):
        select(tokenizer, words, name="eu_countries")


def test_no_survivors_at_all(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ValueError, match=r"groups\.g: only 0 of 1 words are single tokens"):
        select(tokenizer, ["Czechia"])


def test_group_without_words_is_refused(tokenizer: PreTrainedTokenizerBase) -> None:
    with pytest.raises(
        ValueError, match=r"groups\.empty\.words: the group has no words; list at least 2"
    ):
        select(tokenizer, [], name="empty")


@pytest.mark.parametrize("size", [1, 0, -3])
def test_size_below_two_is_refused(tokenizer: PreTrainedTokenizerBase, size: int) -> None:
    with pytest.raises(ValueError, match=rf"groups\.digits\.size: must be at least 2, got {size}$"):
        select(tokenizer, DIGITS, size=size, name="digits")


def test_group_spec_defaults() -> None:
    spec = GroupSpec()

    assert (spec.words, spec.size, spec.description) == ([], 10, "")
    assert GroupSpec().words is not spec.words


def test_tokenizer_fixture_matches_the_vocabulary(tokenizer: PreTrainedTokenizerBase) -> None:
    # guards the other tests: ids above are VOCAB positions
    assert tokenizer.convert_ids_to_tokens(list(range(len(VOCAB)))) == VOCAB
