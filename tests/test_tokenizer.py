"""The tokenizers-library reader of tokenizer.json against transformers' AutoTokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from embsvd.groups import TokenForms, select_single_tokens
from embsvd.io.checkpoint import load_checkpoint, load_tokenizer
from embsvd.io.tokenizer import FastTokenizer
from embsvd.pipeline import with_group_files
from tests.conftest import CONFIG_DIR, write_tiny_bpe, write_tokenizer
from tests.test_config import compose_config

GROUP_LIBRARY = sorted(p.stem for p in (CONFIG_DIR / "groups").glob("*.yaml"))


def test_a_folder_with_tokenizer_json_loads_without_transformers(tmp_path):
    write_tiny_bpe(tmp_path / "bpe")
    assert isinstance(load_tokenizer(tmp_path / "bpe"), FastTokenizer)
    write_tokenizer(tmp_path / "wordpiece")  # vocab.txt only: transformers builds it
    assert not isinstance(load_tokenizer(tmp_path / "wordpiece"), FastTokenizer)


def test_padding_and_truncation_in_tokenizer_json_do_not_change_the_ids(tmp_path):
    write_tiny_bpe(tmp_path / "bpe")
    file = tmp_path / "bpe" / "tokenizer.json"
    spec = json.loads(file.read_text())
    spec["padding"] = {
        "strategy": {"Fixed": 16},
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "<|endoftext|>",
    }
    spec["truncation"] = {
        "direction": "Right",
        "max_length": 1,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    file.write_text(json.dumps(spec))
    tokenizer = load_tokenizer(tmp_path / "bpe")
    assert len(tokenizer.encode(" France")) == 1 and len(tokenizer.encode(" Czechia")) > 1


def test_a_broken_tokenizer_json_is_a_clear_error(tmp_path):
    write_tiny_bpe(tmp_path / "bpe")
    (tmp_path / "bpe" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model: no tokenizer could be loaded from .*bpe"):
        load_tokenizer(tmp_path / "bpe")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["all_minilm_l6_v2", "smollm2_135m"])
def test_bundled_tokenizers_equal_transformers_on_every_library_word(model, smollm2):
    settings = with_group_files(
        OmegaConf.to_object(compose_config(f"model={model}", f"groups=[{','.join(GROUP_LIBRARY)}]"))
    )
    checkpoint = smollm2 if model == "smollm2_135m" else load_checkpoint(settings.model)
    fast = checkpoint.tokenizer
    assert isinstance(fast, FastTokenizer)
    reference = AutoTokenizer.from_pretrained(Path(fast.file).parent)
    assert fast.get_vocab() == reference.get_vocab() and len(fast) == len(reference)
    assert fast.unk_token_id == reference.unk_token_id
    # tokenizer.json marks SmolLM2's 17 control tokens special; transformers names 3 of them
    assert set(reference.all_special_ids) <= set(fast.all_special_ids)
    ids = list(range(len(reference)))
    assert fast.convert_ids_to_tokens(ids) == reference.convert_ids_to_tokens(ids)
    fast_forms, reference_forms = TokenForms(fast), TokenForms(reference)
    for name, spec in settings.groups.items():
        ours = select_single_tokens(name, spec, fast, model, forms=fast_forms)
        theirs = select_single_tokens(name, spec, reference, model, forms=reference_forms)
        assert ours == theirs, name


def test_the_vocabulary_is_read_once_and_each_caller_gets_its_own_copy(tmp_path):
    write_tiny_bpe(tmp_path / "bpe")
    tokenizer = load_tokenizer(tmp_path / "bpe")
    assert isinstance(tokenizer, FastTokenizer)
    expected = tokenizer.backend.get_vocab(with_added_tokens=True)

    class CountedReads:
        """The tokenizer's backend, counting its reads of the vocabulary."""

        def __init__(self, backend):
            self.backend, self.reads = backend, 0

        def get_vocab(self, with_added_tokens):
            self.reads += 1
            return self.backend.get_vocab(with_added_tokens=with_added_tokens)

    tokenizer.backend = counted = CountedReads(tokenizer.backend)
    first = tokenizer.get_vocab()
    assert first == expected
    first["[not a token]"] = -1  # a caller's change stays its own
    second = tokenizer.get_vocab()
    assert second is not first and second == expected
    assert counted.reads == 1
