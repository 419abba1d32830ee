"""The single-token rule, applied with the tiny BERT tokenizer of conftest's VOCAB."""

from __future__ import annotations

import json
import logging
import random
import re
from typing import TYPE_CHECKING

import pytest
from omegaconf import OmegaConf

from embsvd.groups import (
    DEFAULT_SIZE,
    GROUP_NAME,
    MAX_SIZE,
    MAX_WORDS,
    DroppedWord,
    GroupSpec,
    KeptToken,
    TokenGroup,
    check_group_name,
    describe_dropped,
    describe_short,
    group_name_like,
    select_single_tokens,
)
from embsvd.io.checkpoint import load_checkpoint, load_tokenizer
from tests.conftest import DIGITS, VOCAB, write_tokenizer
from tests.test_config import compose_config

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
        "order": "none",
        "closed": False,
        "incomplete": False,
        "display_name": "g",  # no display_name configured: the name, '_' as spaces
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


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            GroupSpec(words=DIGITS, size=MAX_SIZE + 1),
            rf"groups\.g\.size: the group keeps {MAX_SIZE + 1} members; at most {MAX_SIZE} ",
        ),
        (
            GroupSpec(words=DIGITS, held_out=[f"w{i}" for i in range(MAX_WORDS)]),
            rf"groups\.g\.words: 10 words and {MAX_WORDS} held_out alternates; at most "
            f"{MAX_WORDS} together",
        ),
    ],
)
def test_a_group_beyond_the_caps_is_refused_before_any_word_is_tokenized(
    tokenizer: PreTrainedTokenizerBase, spec: GroupSpec, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        select_single_tokens("g", spec, tokenizer, MODEL)


@pytest.mark.parametrize("name", ["../evil", "café", "x" * 300, "a__b", "b_", "9", "", "é_é"])
def test_a_name_outside_the_rule_is_refused_with_a_name_inside_it(name: str) -> None:
    suggestion = group_name_like(name)
    assert GROUP_NAME.fullmatch(suggestion) and len(suggestion) <= 64
    with pytest.raises(ValueError, match=rf"rename it, e\.g\. to '{suggestion}'$"):
        check_group_name(name)


def test_group_name_like_always_follows_the_rule() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        name = "".join(rng.choices("aZ9_-./ é\x00", k=rng.randint(0, 80)))
        like = group_name_like(name)
        assert GROUP_NAME.fullmatch(like) and len(like) <= 64, (name, like)
        check_group_name(like)


def test_group_spec_defaults() -> None:
    spec = GroupSpec()

    assert (spec.words, spec.size, spec.description) == ([], None, "")
    assert (spec.closed, spec.held_out, spec.polysemous, spec.order) == (False, [], [], "none")
    assert spec.n_members == DEFAULT_SIZE == 10
    assert GroupSpec().words is not spec.words
    assert GroupSpec().held_out is not spec.held_out


def test_tokenizer_fixture_matches_the_vocabulary(tokenizer: PreTrainedTokenizerBase) -> None:
    # guards the other tests: ids above are VOCAB positions
    assert tokenizer.convert_ids_to_tokens(list(range(len(VOCAB)))) == VOCAB


# --- closed sets, held-out alternates, polysemous members, declared order ---------------

MONTHS = [
    *["January", "February", "March", "April", "May", "June", "July", "August"],
    *["September", "October", "November", "December"],
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTH_ABBREVIATIONS = [
    *["Jan", "Feb", "Mar", "Apr", "Jun", "Jul"],
    *["Aug", "Sep", "Sept", "Oct", "Nov", "Dec"],
]
PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
# conftest's VOCAB, plus the months, three abbreviations and the planets, where "uranus"
# is two tokens as in bert-base-uncased
CALENDAR_VOCAB = [
    *VOCAB,
    *(m.lower() for m in MONTHS),
    *["jan", "feb", "mar", "spring"],
    *(p.lower() for p in PLANETS if p != "Uranus"),
    *["ur", "##anus"],
]


@pytest.fixture(scope="module")
def calendar(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerBase:
    folder = tmp_path_factory.mktemp("calendar")
    write_tokenizer(folder, CALENDAR_VOCAB)
    return load_tokenizer(folder)


def select_spec(tokenizer: PreTrainedTokenizerBase, name: str, **spec: object) -> TokenGroup:
    return select_single_tokens(name, GroupSpec(**spec), tokenizer, MODEL)


def test_closed_group_keeps_all_its_words_without_a_size(
    calendar: PreTrainedTokenizerBase,
) -> None:
    spec = GroupSpec(words=MONTHS, closed=True)

    group = select_single_tokens("months", spec, calendar, MODEL)

    assert spec.n_members == 12
    assert group.kept_words == MONTHS  # not the first 10: a closed set is kept whole
    assert group.held_out == () and group.dropped == ()
    assert group.closed and not group.incomplete


def test_closed_group_accepts_its_own_count_as_size(calendar: PreTrainedTokenizerBase) -> None:
    group = select_spec(calendar, "months", words=MONTHS, closed=True, size=12)

    assert group.kept_words == MONTHS


@pytest.mark.parametrize("size", [10, 13, 1])
def test_closed_group_refuses_a_size_other_than_its_count(
    calendar: PreTrainedTokenizerBase, size: int
) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"groups.months.size: {size} for a closed set of 12 words; a closed set keeps all "
            "its words (leave size unset, or set it to the count)"
        ),
    ):
        select_spec(calendar, "months", words=MONTHS, closed=True, size=size)


def test_closed_group_of_one_word_is_refused(calendar: PreTrainedTokenizerBase) -> None:
    with pytest.raises(ValueError, match=r"groups\.one\.size: must be at least 2, got 1$"):
        select_spec(calendar, "one", words=["May"], closed=True)


def test_held_out_alternates_are_only_in_the_remainder(calendar: PreTrainedTokenizerBase) -> None:
    group = select_spec(
        calendar, "months", words=MONTHS, closed=True, held_out=["Jan", "Sept", "Feb", "MAY"]
    )

    assert group.kept_words == MONTHS
    assert [k.word for k in group.held_out] == ["Jan", "Feb"]
    assert [k.token_id for k in group.held_out] == [
        CALENDAR_VOCAB.index("jan"),
        CALENDAR_VOCAB.index("feb"),
    ]
    # alternates the tokenizer splits, or that are a member's token, are dropped with why
    may = CALENDAR_VOCAB.index("may")
    assert [(d.word, d.reason) for d in group.dropped] == [
        ("Sept", "unknown token [UNK]"),
        ("MAY", f"same token id {may} as 'May'"),
    ]
    assert group.words == tuple(MONTHS) and not group.incomplete


def test_open_group_holds_out_alternates_after_its_own_remainder(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    group = select_spec(
        tokenizer, "g", words=["France", "Germany", "Italy"], size=2, held_out=["Spain", "FRANCE"]
    )

    assert group.kept_words == ["France", "Germany"]
    assert [k.word for k in group.held_out] == ["Italy", "Spain"]
    assert [d.word for d in group.dropped] == ["FRANCE"]


def test_a_member_listed_as_held_out_is_refused(calendar: PreTrainedTokenizerBase) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "groups.months.held_out: 'May' is also one of groups.months.words; held_out lists "
            "alternate forms that are never members"
        ),
    ):
        select_spec(calendar, "months", words=MONTHS, closed=True, held_out=["Jan", "May"])


def test_polysemous_members_are_kept_and_flagged(
    calendar: PreTrainedTokenizerBase, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="embsvd.groups"):
        group = select_spec(
            calendar, "months", words=MONTHS, closed=True, polysemous=["May", "March"]
        )

    assert group.kept_words == MONTHS and group.polysemous == ("May", "March")
    kept = group.to_dict()["kept"]
    assert [k["word"] for k in kept if k.get("polysemous")] == ["March", "May"]
    assert kept[4] == {
        "word": "May",
        "token": "may",
        "token_id": CALENDAR_VOCAB.index("may"),
        "form": "bare",
        "polysemous": True,
    }
    assert "polysemous" not in kept[0]  # the flag is on the polysemous tokens only
    assert "groups.months: polysemous members kept" in caplog.text
    assert "March, May" in caplog.text


def test_polysemous_word_that_is_not_a_member_is_refused(
    calendar: PreTrainedTokenizerBase,
) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "groups.months.polysemous: 'Jan' is not one of groups.months.words; list only "
            "members whose token has another common sense"
        ),
    ):
        select_spec(
            calendar, "months", words=MONTHS, closed=True, held_out=["Jan"], polysemous=["Jan"]
        )


@pytest.mark.parametrize("order", ["none", "linear", "cyclic"])
def test_declared_order_is_carried_to_the_group(
    calendar: PreTrainedTokenizerBase, order: str
) -> None:
    group = select_spec(calendar, "months", words=MONTHS, closed=True, order=order)

    assert group.order == order and group.to_dict()["order"] == order


def test_unknown_order_is_refused(calendar: PreTrainedTokenizerBase) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            "groups.months.order: 'circular' is not one of none, linear, cyclic (linear: the "
            "words are a sequence, cyclic: one whose last word leads back to the first)"
        ),
    ):
        select_spec(calendar, "months", words=MONTHS, order="circular")


def test_closed_group_that_loses_a_member_is_incomplete_and_warns(
    calendar: PreTrainedTokenizerBase, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="embsvd.groups"):
        group = select_spec(calendar, "planets", words=PLANETS, closed=True, order="linear")

    assert group.kept_words == [p for p in PLANETS if p != "Uranus"]
    assert group.lost_members == ["Uranus"] and group.incomplete
    assert group.held_out == ()
    as_dict = group.to_dict()
    assert (as_dict["closed"], as_dict["incomplete"], as_dict["order"]) == (True, True, "linear")
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"groups.planets: closed set incomplete for model {MODEL}, keeps 7 of 8 members; "
        "lost 'Uranus' ('ur', '##anus'): 2 tokens"
    )


def test_open_group_that_drops_a_word_is_not_incomplete(
    calendar: PreTrainedTokenizerBase, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="embsvd.groups"):
        group = select_spec(calendar, "planets", words=PLANETS)

    assert [d.word for d in group.dropped] == ["Uranus"]
    assert not group.closed and group.lost_members == [] and not group.incomplete
    assert caplog.records == []


def test_open_group_without_a_size_keeps_ten_and_holds_out_the_rest(
    calendar: PreTrainedTokenizerBase,
) -> None:
    default = select_spec(calendar, "months", words=MONTHS)
    explicit = select_spec(calendar, "months", words=MONTHS, size=10)

    assert default == explicit
    assert default.kept_words == MONTHS[:10]
    assert [k.word for k in default.held_out] == ["November", "December"]
    assert (default.closed, default.order, default.polysemous) == (False, "none", ())


@pytest.mark.slow
def test_bundled_minilm_keeps_the_closed_sets_whole_and_in_order() -> None:
    settings = OmegaConf.to_object(
        compose_config("groups=[months,weekdays,digits,planets]", "target=months")
    )
    checkpoint = load_checkpoint(settings.model)
    groups = {
        name: select_single_tokens(name, spec, checkpoint.tokenizer, settings.model.name)
        for name, spec in settings.groups.items()
        if spec.words
    }

    months, weekdays = groups["months"], groups["weekdays"]
    assert months.kept_words == MONTHS and months.order == "cyclic"
    assert weekdays.kept_words == WEEKDAYS
    assert groups["digits"].kept_words == DIGITS
    assert not any(groups[name].incomplete for name in ("months", "weekdays", "digits"))
    # bert-base-uncased splits "Uranus" ('ur', '##anus')
    assert groups["planets"].lost_members == ["Uranus"]
    members = {word.lower() for group in groups.values() for word in group.kept_words}
    seasons = {"spring", "summer", "autumn", "fall", "winter"}
    day_words = {"weekend", "today", "tomorrow", "yesterday", "tonight", "week", "day"}
    assert not members & (seasons | day_words)
    # the abbreviations are only ever held out, and bert-base-uncased keeps them all
    assert [k.word for k in months.held_out] == MONTH_ABBREVIATIONS
    assert {"Mon", "Sun"} <= {k.word for k in weekdays.held_out}


# --- groups that keep fewer words than their size, and min_size --------------------------


def test_a_group_that_keeps_fewer_words_than_its_size_is_short(
    calendar: PreTrainedTokenizerBase,
) -> None:
    planets = select_spec(calendar, "planets", words=PLANETS)  # Uranus is two tokens
    months = select_spec(calendar, "months", words=MONTHS, size=8)  # 8 of 12: full
    all_planets = select_spec(calendar, "planets", words=PLANETS[:6])  # 6 words, size 10

    assert planets.short and planets.size == 10
    assert describe_short(planets) == "7 of its 8 words (size 10)"
    assert not months.short and not all_planets.short  # every word it could keep
    assert not select_spec(calendar, "planets", words=PLANETS, size=7).short


def test_min_size_turns_a_short_group_into_an_error_naming_kept_and_dropped_words(
    calendar: PreTrainedTokenizerBase,
) -> None:
    kept = ", ".join(p for p in PLANETS if p != "Uranus")
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"groups.planets: keeps 7 of its 8 words (size 8) for model {MODEL}, fewer than "
            f"groups.planets.min_size=8; kept: {kept}; dropped: 'Uranus' ('ur', '##anus'): "
            "2 tokens; add words that the tokenizer keeps whole, or lower "
            "groups.planets.min_size"
        ),
    ):
        select_spec(calendar, "planets", words=PLANETS, size=8, min_size=8)

    # a minimum the group meets: kept and short as before
    assert select_spec(calendar, "planets", words=PLANETS, size=8, min_size=7).short


@pytest.mark.parametrize(("min_size", "size"), [(1, 8), (9, 8), (9, None)])
def test_a_min_size_the_group_could_never_meet_is_refused(
    calendar: PreTrainedTokenizerBase, min_size: int, size: int | None
) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"groups.planets.min_size: {min_size} is not between 2 and 8, the most the group "
            f"can keep (size {size or 10}, 8 words); set it to the fewest members"
        ),
    ):
        select_spec(calendar, "planets", words=PLANETS, size=size, min_size=min_size)


def test_min_size_is_a_config_key_of_every_group() -> None:
    settings = OmegaConf.to_object(compose_config("groups.eu_countries.min_size=9"))
    assert settings.groups["eu_countries"].min_size == 9
    assert settings.groups["digits"].min_size is None
