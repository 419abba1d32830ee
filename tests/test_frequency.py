"""Word frequencies of a vocabulary's tokens, against wordfreq itself."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import wordfreq

from embsvd.io import frequency
from embsvd.io.frequency import KINDS, surface, token_frequencies

BPE = ["<s>", "Ġthe", "the", "ĠFrance", "Ġ7", "7", "Ġ1990", "Ġiscrim", "getLogger", "ĠÃ©", None]
WORDPIECE = ["[CLS]", "the", "##ing", "france", "7", "paris", "mp3", ","]


def kinds(table, tokens):
    return {token: KINDS[code] for token, code in zip(tokens, table.kind, strict=True) if token}


def test_words_numerals_and_fragments_of_a_byte_level_vocabulary():
    table = token_frequencies(BPE, "Ġ", excluded_ids={0})
    assert kinds(table, BPE) == {
        "<s>": "other",  # special
        "Ġthe": "word",
        "the": "word",
        "ĠFrance": "word",
        "Ġ7": "numeral",
        "7": "numeral",
        "Ġ1990": "numeral",
        "Ġiscrim": "other",  # a fragment: not in the word list
        "getLogger": "other",  # an identifier
        "ĠÃ©": "other",  # bytes
    }
    # the marker is stripped and the list is case-blind; numerals get wordfreq's estimate
    assert (
        table.zipf[1]
        == table.zipf[2]
        == pytest.approx(wordfreq.zipf_frequency("the", "en", "large"), abs=0.01)
    )
    assert table.zipf[3] == pytest.approx(
        wordfreq.zipf_frequency("France", "en", "large"), abs=0.01
    )
    assert table.zipf[6] == wordfreq.zipf_frequency("1990", "en", "large") > 0
    assert table.zipf[7] == table.zipf[0] == 0.0
    assert "wordfreq" in table.source and "en/large" in table.source


def test_wordpiece_continuations_are_not_words():
    table = token_frequencies(WORDPIECE, None, excluded_ids={0})
    found = kinds(table, WORDPIECE)
    assert found["##ing"] == "other" and found["france"] == found["paris"] == "word"
    assert found["mp3"] == found[","] == "other" and found["7"] == "numeral"
    assert surface("Ġthe", "Ġ") == "the" and surface("##ing", None) == "##ing"


def test_the_table_is_cached_per_vocabulary_and_a_corrupt_file_is_recomputed(tmp_path, caplog):
    first = token_frequencies(BPE, "Ġ", {0}, tmp_path)
    [cached] = (tmp_path / "frequency").iterdir()
    cached.write_bytes(b"not an npz")
    frequency._frequencies.cache_clear()  # a new process: only the disk cache is left
    with caplog.at_level(logging.WARNING, logger="embsvd.io.frequency"):
        again = token_frequencies(BPE, "Ġ", {0}, tmp_path)
    assert "unreadable" in caplog.text
    np.testing.assert_array_equal(again.zipf, first.zipf)
    frequency._frequencies.cache_clear()
    read = token_frequencies(BPE, "Ġ", {0}, tmp_path)  # the rewritten file, read back
    np.testing.assert_array_equal(read.kind, first.kind)
    assert read.source == first.source
    # another vocabulary (or marker) is another file
    token_frequencies(WORDPIECE, None, {0}, tmp_path)
    assert len(list((tmp_path / "frequency").iterdir())) == 2
