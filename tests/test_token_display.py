"""Tokens as people read them: real tokenizers (byte-level BPE, SentencePiece, WordPiece)
built here, their decoders against embsvd's display text, and the display text where
people read it (top_tokens.csv, the paper tables, the sweep table)."""

from __future__ import annotations

import csv
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from embsvd.checks.run import ChecksResult
from embsvd.figures.tables import latex_tables, markdown_tables
from embsvd.io.checkpoint import load_checkpoint, load_tokenizer
from embsvd.io.display import (
    BYTE_OF_CHARACTER,
    DisplayTexts,
    Step,
    TokenDecoding,
    display_text,
    escape_text,
    guess_decoding,
    token_decoding,
)
from embsvd.io.spec import CheckpointSpec
from embsvd.io.tokenizer import FastTokenizer, word_start_marker
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import analyze
from embsvd.tracking.artifacts import Table, write_tables
from embsvd.tracking.contract import Tag, result_tags
from embsvd.tracking.store import RunRecord
from embsvd.tracking.sweeps import format_sweep_table
from tests.conftest import BPE_EOS, VOCAB, byte_level_bpe, token_group, write_tokenizer

BYTE_LEVEL = TokenDecoding((Step("byte_level"),))
# byte-level strings built by merges: "öm", "ζω", " strugg", two spaces, a space + newline
BPE_MERGED = ["Ã¶m", "Î¶Ïī", "Ġstrugg", "ĠĠ", "ĠĊ"]


def write_byte_level_bpe(folder: Path) -> None:
    """A byte-level BPE tokenizer.json (GPT-2 / SmolLM2 style): the 256 byte characters,
    ``BPE_MERGED`` built from them by merges, and one special token."""
    bpe = byte_level_bpe(BPE_MERGED)
    bpe.add_special_tokens([BPE_EOS])
    folder.mkdir(parents=True)
    bpe.save(str(folder / "tokenizer.json"))


def write_sentencepiece(folder: Path, decoder: str) -> None:
    """A SentencePiece-style tokenizer.json: a Unigram model over ``▁`` pieces with byte
    fallback (``<0x0A>``), decoded as Llama does (``replace``: Replace, ByteFallback,
    Fuse, Strip) or as T5 does (``metaspace``)."""
    pieces = [("<unk>", 0.0)] + [(f"<0x{b:02X}>", -10.0) for b in range(256)]
    pieces += [("▁", -2.0), ("▁the", -1.0), ("▁th", -3.0), ("ing", -1.5), ("▁ζω", -1.0)]
    pieces += [(ch, -4.0) for ch in "theing"]
    spm = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    if decoder == "replace":
        spm.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
    else:
        spm.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    spm.add_special_tokens(["<unk>"])
    folder.mkdir(parents=True)
    spm.save(str(folder / "tokenizer.json"))


def shown(tokenizer, text: str) -> list[str]:
    """The display text of each token ``tokenizer`` cuts ``text`` into."""
    decoding = token_decoding(tokenizer)
    return [
        display_text(token, decoding)
        for token in tokenizer.convert_ids_to_tokens(
            tokenizer.encode(text, add_special_tokens=False)
        )
    ]


# --- the display text, tokenizer by tokenizer -----------------------------------------------


def test_byte_level_tokens_are_decoded_to_text_and_spaces_shown(tmp_path):
    write_byte_level_bpe(tmp_path / "bpe")
    tokenizer = load_tokenizer(tmp_path / "bpe")
    assert isinstance(tokenizer, FastTokenizer)
    decoding = token_decoding(tokenizer)
    assert decoding.steps == (Step("byte_level"),) and BPE_EOS in decoding.literal
    # one token each, as the tokenizer cuts these texts
    assert shown(tokenizer, "öm") == ["öm"]
    assert shown(tokenizer, "ζω") == ["ζω"]
    assert shown(tokenizer, " strugg") == ["␣strugg"]
    assert shown(tokenizer, "\n") == ["\\n"]
    assert shown(tokenizer, " \n") == ["␣\\n"]
    assert shown(tokenizer, "  ") == ["␣␣"]
    assert shown(tokenizer, "\t") == ["\\t"]
    lone = {
        "Ġ": "␣",  # a lone word-start marker
        "Ã": "\\xc3",  # the first byte of ö: not a whole character
        "Ï": "\\xcf",
        "ī": "\\x89",  # the last byte of ω
        "Ā": "\\x00",
        "\\": "\\\\",
        BPE_EOS: BPE_EOS,  # special: shown as stored
    }
    assert {token: display_text(token, decoding) for token in lone} == lone


def test_byte_level_display_equals_the_tokenizers_own_decoder(tmp_path):
    write_byte_level_bpe(tmp_path / "bpe")
    tokenizer = load_tokenizer(tmp_path / "bpe")
    decoding = token_decoding(tokenizer)
    vocab = tokenizer.get_vocab()
    for token in vocab:
        decoded = tokenizer.backend.decoder.decode([token])
        if "\ufffd" in decoded:  # the decoder's stand-in for bytes that are no character
            assert "\\x" in display_text(token, decoding), token
        else:
            assert display_text(token, decoding) == escape_text(decoded), token
    # the stand-in characters are GPT-2's, the ones the tokenizers library uses
    assert set(BYTE_OF_CHARACTER) == set(pre_tokenizers.ByteLevel.alphabet())
    assert sorted(BYTE_OF_CHARACTER.values()) == list(range(256))
    # where no decoder is at hand, the vocabulary's marker implies the same decoding
    assert guess_decoding(vocab, "Ġ").steps == decoding.steps


@pytest.mark.parametrize("decoder", ["replace", "metaspace"])
def test_sentencepiece_tokens_show_the_word_start_and_their_bytes(tmp_path, decoder):
    write_sentencepiece(tmp_path / "spm", decoder)
    tokenizer = load_tokenizer(tmp_path / "spm")
    decoding = token_decoding(tokenizer)
    assert shown(tokenizer, "the thing") == ["␣the", "␣th", "ing"]
    assert shown(tokenizer, "ζω") == ["␣ζω"]
    expected = {"▁": "␣", "▁the": "␣the", "ing": "ing", "<unk>": "<unk>"}
    if decoder == "replace":  # Llama: byte fallback pieces are bytes
        expected |= {"<0x0A>": "\\n", "<0x41>": "A", "<0xC3>": "\\xc3", "<0x00>": "\\x00"}
        # the pre-tokenizer puts a word start before the text: a lone marker
        assert shown(tokenizer, "\nö") == ["␣", "\\n", "\\xc3", "\\xb6"]
    assert {token: display_text(token, decoding) for token in expected} == expected
    # mid-text the tokenizer's own decoder gives the same text (its Strip only trims
    # the start of a whole text)
    for token in ("▁the", "ing", "▁"):
        decoded = tokenizer.backend.decoder.decode(["x", token])
        assert escape_text(decoded.removeprefix("x")) == display_text(token, decoding)
    vocab = tokenizer.get_vocab()
    guessed = guess_decoding(vocab, "▁")
    assert guessed.steps == (Step("replace", "▁", " "), Step("byte_fallback"))


def test_wordpiece_pieces_after_the_first_lose_their_prefix_and_words_start_with_a_space(
    tmp_path,
):
    # the tiny BERT of the other tests: vocab.txt only, built by transformers
    write_tokenizer(tmp_path / "bert")
    tokenizer = load_tokenizer(tmp_path / "bert")
    decoding = token_decoding(tokenizer)
    assert decoding.steps == (Step("wordpiece", "##"),)
    assert shown(tokenizer, "czechia") == ["␣czech", "ia"]
    assert shown(tokenizer, "The 7") == ["␣the", "␣7"]
    assert display_text("[CLS]", decoding) == "[CLS]"  # special: as stored
    # the same text BERT's decoder gives a piece in the middle of a text
    for token in ("czech", "##ia", "7"):
        decoded = tokenizer.backend_tokenizer.decoder.decode(["x", token])
        assert escape_text(decoded.removeprefix("x")) == display_text(token, decoding)
    assert guess_decoding(VOCAB, None).steps == decoding.steps


def test_invisible_and_ambiguous_characters_are_escaped():
    cases = {
        "a b": "a␣b",
        "\x00": "\\x00",
        "\r\n": "\\r\\n",
        "\u00a0": "\\xa0",  # no-break space: not the word-start space
        "\u200b": "\\u200b",
        "\u2028": "\\u2028",
        "\\n": "\\\\n",  # a backslash and an n, not a newline
        "␣": "\\u2423",  # a literal open box, not a space
        "\udcc3": "\\xc3",  # a byte that was not a whole character
        "öm ζω": "öm␣ζω",
        "🙂": "🙂",
    }
    assert {text: escape_text(text) for text in cases} == cases
    assert display_text(None, BYTE_LEVEL) == ""
    # tokens another decoder's steps do not apply to are left as stored
    assert display_text("日本", BYTE_LEVEL) == "日本"
    assert guess_decoding(["plain", "tokens"], None).steps == ()


# --- on the vocabulary, and where people read tokens ----------------------------------------


def byte_level_vocabulary() -> tuple[Vocabulary, np.ndarray]:
    tokens = [BPE_EOS, *BPE_MERGED, "Ċ", "Ġ", "Ã", "the", *(f"Ġw{i}" for i in range(10))]
    W = np.random.default_rng(3).normal(size=(len(tokens), 4)) + 0.5
    return Vocabulary.from_matrix(W, tokens, special_ids=[0], marker="Ġ"), W


def test_the_vocabulary_shows_each_row_once_decoded():
    vocab, _ = byte_level_vocabulary()
    assert vocab.token_decoding.steps == (Step("byte_level"),)
    assert [vocab.display_text(i) for i in range(10)] == [
        *[BPE_EOS, "öm", "ζω", "␣strugg", "␣␣", "␣\\n", "\\n", "␣", "\\xc3", "the"]
    ]
    assert vocab.display_texts == tuple(vocab.display_text(i) for i in range(vocab.d_vocab))
    given = Vocabulary.from_matrix(np.ones((2, 2)), ["Ġa", "b"], decoding=TokenDecoding())
    assert given.display_texts == ("Ġa", "b")  # the decoding given is the one used


def test_texts_handed_over_are_computed_where_read_and_equal_the_vocabularys():
    """``display_texts_to_hand_over``: before the vocabulary computed its texts, a
    ``DisplayTexts`` that computes them where it is read (and pickles as its tokens and
    decoding, computed or not); after, the texts themselves."""
    vocab, _ = byte_level_vocabulary()
    lazy = vocab.display_texts_to_hand_over()
    assert isinstance(lazy, DisplayTexts) and "display_texts" not in vocab.__dict__
    size = len(pickle.dumps(lazy))
    assert "texts" not in lazy.__dict__  # nothing computed yet
    assert tuple(lazy) == vocab.display_texts and len(lazy) == vocab.d_vocab
    assert lazy[3] == "␣strugg" and lazy[:2] == vocab.display_texts[:2]
    assert len(pickle.dumps(lazy)) == size
    assert tuple(pickle.loads(pickle.dumps(lazy))) == vocab.display_texts
    assert vocab.display_texts_to_hand_over() is vocab.display_texts  # computed: as is


def test_top_tokens_table_keeps_the_raw_token_and_adds_its_text(tmp_path):
    vocab, W = byte_level_vocabulary()
    groups = {"merged": token_group("merged", [1, 2, 3, 4, 5])}
    result = analyze(W, groups, "merged", vocab, n_components=2, top_k=4)
    assert all(t.text == vocab.display_text(t.token_id) for t in result.top_tokens)
    write_tables(result, ChecksResult(random_state=0), tmp_path)
    with open(tmp_path / Table.TOP_TOKENS, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 4
    for row in rows:
        token_id = int(row["token_id"])
        assert row["token"] == vocab.token_strings[token_id]
        assert row["text"] == vocab.display_text(token_id)
    assert any(row["text"] != row["token"] for row in rows)


def test_the_sweep_table_numbers_axes_from_1():
    tags = {Tag.AXIS0_TOP: "␣the ζω", Tag.AXIS0_BOTTOM: "\\n ia"}
    run = RunRecord("run-1", "m/g/centered", "FINISHED", tags, {}, {"stability/axis0_cos": 0.9})
    header, _, line = format_sweep_table([run]).splitlines()
    assert "axis 1 stability" in header and "axis 1 top" in header and "axis 0" not in header
    assert "0.90" in line and "␣the ζω" in line and line.endswith("\\n ia")


def test_tags_and_the_sweep_table_show_the_first_axis_ends_as_text():
    vocab, W = byte_level_vocabulary()
    groups = {"merged": token_group("merged", [1, 2, 3, 4, 5])}
    result = analyze(W, groups, "merged", vocab, n_components=2, top_k=5)
    tags = result_tags(result, ChecksResult(random_state=0))
    first = [t for t in result.top_tokens if t.component == 0 and t.side == "top"]
    assert tags[Tag.AXIS0_TOP] == " ".join(t.text for t in first)
    run = RunRecord("run-1", "m/merged/centered", "FINISHED", tags, {}, {})
    line = format_sweep_table([run]).splitlines()[2]
    assert tags[Tag.AXIS0_TOP] in line and not any(c in line for c in "ĠĊÃ")


def test_paper_tables_show_text_and_fall_back_to_the_raw_token():
    row = {"model": "m", "group": "g", "variant": "centered", "side": "top", "rank": 1}
    rows = [
        {**row, "component": 0, "token": "Ġthe", "text": "␣the", "in_group": True},
        {**row, "component": 1, "token": "Ċ", "text": "\\n", "in_group": False},
        {**row, "component": 1, "side": "bottom", "token": "old", "in_group": False},
    ]
    markdown, latex = markdown_tables(rows, 1), latex_tables(rows, 1)
    assert "**`␣the`**" in markdown and "`\\n`" in markdown and "`old`" in markdown
    assert "| rank | c1 + | c1 − | c2 + | c2 − |" in markdown  # components from 1
    assert "Ġ" not in markdown and "Ċ" not in markdown
    assert "\\textbf{\\texttt{\\textvisiblespace{}the}}" in latex
    assert "\\texttt{\\textbackslash{}n}" in latex and "Component 1" in latex


def test_displaying_a_large_vocabulary_is_cheap():
    # a 128k-token byte-level vocabulary: the analysis decodes only the ~120 tokens it
    # reports; every row at once is a vectorised pass, done once per checkpoint
    characters = sorted(BYTE_OF_CHARACTER)
    rng = np.random.default_rng(0)
    tokens = ["".join(row) for row in rng.choice(characters, size=(2**17, 6))]
    vocab = Vocabulary(tuple(tokens), np.ones(len(tokens)), marker="Ġ")
    start = time.process_time()
    texts = vocab.display_texts
    assert len(texts) == 2**17 and time.process_time() - start < 10.0  # ~0.4 s measured


# --- real checkpoints --------------------------------------------------------------------------


def test_a_checkpoints_vocabulary_shows_its_tokens(tiny_bert):
    vocab = load_checkpoint(CheckpointSpec(name="tiny_bert", path=str(tiny_bert))).vocabulary
    assert vocab.display_text(VOCAB.index("##ia")) == "ia"
    assert vocab.display_text(VOCAB.index("czech")) == "␣czech"
    assert vocab.display_text(VOCAB.index("[CLS]")) == "[CLS]"


@pytest.mark.slow
def test_bundled_smollm2_tokens_decode(smollm2):
    ids = smollm2.tokenizer.get_vocab()
    vocab = smollm2.vocabulary
    known = {"Ġthe": "␣the", "Ċ": "\\n", "Ġ": "␣", "ĠĠ": "␣␣", "Ã¶m": "öm", "Î¶Ïī": "ζω"}
    known |= {"Ã": "\\xc3", "ĉ": "\\t", "<|im_start|>": "<|im_start|>"}
    assert {token: vocab.display_text(ids[token]) for token in known} == known
    # the decoding the vocabulary guessed from its marker is the tokenizer's decoder's
    decoding = token_decoding(smollm2.tokenizer)
    assert vocab.token_decoding.steps == decoding.steps == (Step("byte_level"),)
    assert word_start_marker(ids) == "Ġ"
    backend = smollm2.tokenizer.backend
    for token_id, token in enumerate(smollm2.token_strings()):
        decoded = backend.decoder.decode([token])
        if "\ufffd" not in decoded and token not in decoding.literal:
            assert vocab.display_texts[token_id] == escape_text(decoded), token


@pytest.mark.slow
def test_bundled_minilm_tokens_decode():
    from omegaconf import OmegaConf

    from tests.conftest import PROJECT_ROOT

    spec = OmegaConf.to_object(
        OmegaConf.merge(
            OmegaConf.structured(CheckpointSpec),
            OmegaConf.load(PROJECT_ROOT / "conf" / "model" / "all_minilm_l6_v2.yaml"),
        )
    )
    checkpoint = load_checkpoint(spec)
    ids = checkpoint.tokenizer.get_vocab()
    known = {"the": "␣the", "##ia": "ia", "czech": "␣czech", "[CLS]": "[CLS]", "\\": "␣\\\\"}
    assert {t: checkpoint.vocabulary.display_text(ids[t]) for t in known} == known
    assert checkpoint.vocabulary.token_decoding.steps == token_decoding(checkpoint.tokenizer).steps
