"""Under-trained tokens: the indicator against an independent computation, the rule on a
planted matrix (and its false flags), the reference sets of a WordPiece and a byte-level
BPE vocabulary, the disk cache, the null's pools with the flagged tokens left out (and as
before when not), top_tokens.csv's marks and a real tracked run."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from safetensors.numpy import save_file

from embsvd import tracking
from embsvd.checks.matching import (
    Matching,
    draw_random_groups,
    match_groups,
    token_pools,
)
from embsvd.checks.run import ChecksConfig, run_checks
from embsvd.figures.run_data import (
    RUN_FIGURE_TABLES,
    UNDERTRAINED_MARK,
    logged_figure_data,
    run_figure_data,
)
from embsvd.figures.tables import latex_tables, markdown_tables
from embsvd.io.checkpoint import load_checkpoint, load_tokenizer
from embsvd.io.spec import CheckpointSpec
from embsvd.io.undertrained import (
    MIN_REFERENCE,
    ReferenceTokens,
    checkpoint_undertrained,
    clear_memo,
    first_principal_component,
    flag_undertrained,
    reference_tokens,
)
from embsvd.method.analysis import analyze
from embsvd.pipeline import run_job
from embsvd.tracking.artifacts import Table, write_tables
from tests.conftest import BERT_KEY, BPE_EOS, CONFIG_DIR, VOCAB, write_tokenizer

D = 16
UNUSED = [f"[unused{i}]" for i in range(12)]
PLANTED_WORDS = ["dog", "cat", "red"]  # real words whose rows are set near the unused mean


def planted_matrix(n_ordinary: int = 2000, n_reference: int = 30, n_planted: int = 5, seed=0):
    """Ordinary rows: Gaussian with a strong shared first component; reference and
    planted rows: one point (initialisation) plus small noise, placed partly along the
    first component, which the indicator removes."""
    rng = np.random.default_rng(seed)
    spread = np.ones(D)
    spread[0] = 10.0  # the first principal component: every row varies along it
    ordinary = rng.normal(size=(n_ordinary, D)) * spread
    centre = np.zeros(D)
    centre[0], centre[1:4] = 8.0, 1.0
    near = lambda n: centre + 0.15 * rng.normal(size=(n, D))  # noqa: E731
    W = np.vstack([ordinary, near(n_reference), near(n_planted)])
    reference = np.arange(n_ordinary, n_ordinary + n_reference)
    planted = np.arange(n_ordinary + n_reference, len(W))
    return W, reference, planted


def test_planted_rows_are_flagged_and_ordinary_rows_are_not():
    W, reference, planted = planted_matrix()
    found = flag_undertrained(W, ReferenceTokens(reference, {"reserved": 30}), np.arange(len(W)))
    assert found.valid, found.rule
    assert set(found.flagged_ids) >= set(planted)
    false_flags = np.setdiff1d(found.flagged_ids, planted)
    # the rule's false-flag rate on ordinary rows: none of 2000 here (a row of 16
    # Gaussian dimensions is never within the reference cluster's 5th percentile)
    assert len(false_flags) / 2000 == 0.0
    assert found.excluded_ids == frozenset(reference) | frozenset(planted)
    assert "30 reserved" in found.rule and "5 of 2005" in found.rule


def test_without_the_first_component_removed_ordinary_rows_would_look_unused():
    """Why the component is removed: along it the reference point lies where many ordinary
    rows lie too; the raw cosine flags them, the indicator does not."""
    W, reference, _ = planted_matrix()
    raw = W @ W[reference].mean(axis=0)
    raw /= np.linalg.norm(W, axis=1) * np.linalg.norm(W[reference].mean(axis=0))
    found = flag_undertrained(W, ReferenceTokens(reference), np.arange(len(W)))
    assert (raw[:2000] >= found.threshold).sum() > 20
    assert (found.indicator[:2000] >= found.threshold).sum() == 0


def test_indicator_matches_an_independent_computation():
    W, reference, _ = planted_matrix(n_ordinary=300, n_reference=8, n_planted=2, seed=3)
    ordinary = np.arange(len(W) - 1)  # one row left out of the mean and the component
    found = flag_undertrained(W, ReferenceTokens(reference), ordinary)
    X = W - W[ordinary].mean(axis=0)
    pc = np.linalg.svd(X[ordinary], full_matrices=False)[2][0]
    Y = X - np.outer(X @ pc, pc)
    m = Y[reference].mean(axis=0)
    cos = Y @ m / (np.linalg.norm(Y, axis=1) * np.linalg.norm(m))
    scored = np.setdiff1d(ordinary, reference)
    np.testing.assert_allclose(found.indicator[scored], cos[scored], atol=1e-10)
    assert np.isnan(found.indicator[-1])  # not an ordinary row: not scored
    for r in reference:
        others = Y[[i for i in reference if i != r]].mean(axis=0)
        expected = Y[r] @ others / (np.linalg.norm(Y[r]) * np.linalg.norm(others))
        assert found.indicator[r] == pytest.approx(expected, abs=1e-10)
    assert found.threshold == pytest.approx(np.percentile(found.indicator[reference], 5))


def test_first_component_by_subspace_iteration_matches_the_exact_one():
    W, _, _ = planted_matrix(n_ordinary=500, seed=1)
    rows = np.arange(len(W))
    mean, exact = first_principal_component(W, rows)
    mean2, iterated = first_principal_component(W.astype(np.float32), rows, exact_max_dim=0)
    np.testing.assert_allclose(mean2, mean, atol=1e-5)
    assert abs(exact @ iterated) == pytest.approx(1.0, abs=1e-8)


def test_an_incoherent_or_small_reference_set_flags_nothing():
    W, _, _ = planted_matrix()
    ordinary_as_reference = ReferenceTokens(np.arange(40), {"reserved": 40})
    found = flag_undertrained(W, ordinary_as_reference, np.arange(len(W)))
    assert not found.valid and len(found.flagged_ids) == 0 and not found.excluded_ids
    assert "no cluster" in found.rule and "nothing flagged" in found.rule
    W, reference, _ = planted_matrix()
    few = flag_undertrained(W, ReferenceTokens(reference[: MIN_REFERENCE - 1]), np.arange(len(W)))
    assert not few.valid and f"fewer than {MIN_REFERENCE}" in few.rule
    none = flag_undertrained(W, ReferenceTokens(np.array([], dtype=np.int64)), np.arange(len(W)))
    assert not none.valid and "reference tokens: none" in none.rule
    assert np.isnan(none.indicator).all()


# --- reference sets -------------------------------------------------------------------------


def write_bert_with_unused(folder: Path, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """A tiny BERT whose vocabulary has ``[unusedN]`` tokens (BERT's placeholders), their
    rows and those of ``PLANTED_WORDS`` near one point, the others spread out."""
    vocab = VOCAB + UNUSED
    write_tokenizer(folder, vocab)
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(len(vocab), D)) * np.r_[4.0, np.ones(D - 1)]
    centre = np.r_[6.0, 3.0, 3.0, np.zeros(D - 3)]
    near = [vocab.index(t) for t in UNUSED + PLANTED_WORDS]
    W[near] = centre + 0.2 * rng.normal(size=(len(near), D))
    (folder / "config.json").write_text(
        json.dumps({"model_type": "bert", "vocab_size": len(vocab), "hidden_size": D})
    )
    save_file({BERT_KEY: W.astype(np.float32)}, folder / "model.safetensors")
    return W, vocab


def test_wordpiece_reference_tokens_are_its_unused_placeholders(tmp_path):
    _, vocab = write_bert_with_unused(tmp_path / "bert")
    checkpoint = load_checkpoint(CheckpointSpec("tiny", path=str(tmp_path / "bert")), tmp_path)
    reference = reference_tokens(
        checkpoint.tokenizer, checkpoint.token_strings(), checkpoint.special_ids()
    )
    assert [vocab[i] for i in reference.ids] == UNUSED
    assert reference.counts == {"reserved": 12, "unused special": 0, "unreachable": 0}
    found = checkpoint_undertrained(checkpoint)
    assert found.valid
    assert sorted(vocab[i] for i in found.flagged_ids) == sorted(PLANTED_WORDS)


def write_bpe_folder(folder: Path) -> None:
    """A byte-level BPE folder (tokenizer.json) with a token no merge builds (``Ġzzz``),
    an end-of-text token, a reserved placeholder, a special token no role or template
    uses (``<gh_stars>``) and a chat token the template uses (``<|im_start|>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {BPE_EOS: 0}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    merges = []
    for token in ["ĠFrance", "Ġthe"]:
        for end in range(2, len(token) + 1):
            if token[:end] not in vocab:
                vocab[token[:end]] = len(vocab)
                merges.append((token[: end - 1], token[end - 1]))
    vocab["Ġzzz"] = len(vocab)  # in the vocabulary, but no merge ever builds it
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    extra = ["<|reserved_special_token_0|>", "<gh_stars>", "<|im_start|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=BPE_EOS, additional_special_tokens=extra
    )
    tokenizer.chat_template = "{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}"
    tokenizer.save_pretrained(folder)


def test_bpe_reference_tokens_are_unreachable_reserved_and_unused_special(tmp_path):
    write_bpe_folder(tmp_path / "bpe")
    tokenizer = load_tokenizer(tmp_path / "bpe")
    strings = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    reference = reference_tokens(tokenizer, strings, tokenizer.all_special_ids)
    found = {strings[i] for i in reference.ids}
    assert found == {"Ġzzz", "<|reserved_special_token_0|>", "<gh_stars>"}
    assert reference.counts == {"reserved": 1, "unused special": 1, "unreachable": 1}
    # a lone byte of a UTF-8 character (Ã: 0xC3) decodes to U+FFFD: not counted
    assert "Ã" in strings and "Ã" not in found
    assert "Ġthe" not in found and "ĠFr" not in found  # merges build them


# --- cached per checkpoint ----------------------------------------------------------------


def test_cached_on_disk_and_in_memory_and_rebuilt_when_damaged(tmp_path, caplog):
    write_bert_with_unused(tmp_path / "bert")
    checkpoint = load_checkpoint(CheckpointSpec("tiny", path=str(tmp_path / "bert")), tmp_path)
    clear_memo()
    first = checkpoint_undertrained(checkpoint)
    assert checkpoint_undertrained(checkpoint) is first  # this process's memory
    (file,) = (tmp_path / "undertrained" / checkpoint.weights_sha256).glob("*.npz")
    stamp = os.stat(file)
    clear_memo()
    again = checkpoint_undertrained(checkpoint)  # read back, not computed: not rewritten
    after = os.stat(file)
    assert (after.st_ino, after.st_mtime_ns) == (stamp.st_ino, stamp.st_mtime_ns)
    np.testing.assert_array_equal(again.indicator, first.indicator)
    np.testing.assert_array_equal(again.flagged_ids, first.flagged_ids)
    assert (again.rule, again.valid, again.threshold) == (first.rule, first.valid, first.threshold)
    data = bytearray(file.read_bytes())
    data[-20] ^= 0xFF
    file.write_bytes(bytes(data))
    clear_memo()
    rebuilt = checkpoint_undertrained(checkpoint)
    assert "damaged" in caplog.text
    np.testing.assert_array_equal(rebuilt.flagged_ids, first.flagged_ids)


# --- the null's pools and the marks ----------------------------------------------------


@pytest.fixture
def analysed(tmp_path):
    """A tiny BERT with planted under-trained words, its groups and analysis."""
    write_bert_with_unused(tmp_path / "bert")
    checkpoint = load_checkpoint(CheckpointSpec("tiny", path=str(tmp_path / "bert")), tmp_path)
    from embsvd.groups import GroupSpec, select_single_tokens

    words = {"digits": [str(d) for d in range(10)], "people": ["man", "woman", "child", "mother"]}
    groups = {
        name: select_single_tokens(name, GroupSpec(words=w), checkpoint.tokenizer, "tiny")
        for name, w in words.items()
    }
    vocab = checkpoint.vocabulary
    result = analyze(checkpoint.W, groups, "digits", vocab, n_components=2, top_k=60)
    return checkpoint, groups, vocab, result


def test_null_pools_leave_out_flagged_tokens_and_are_unchanged_without(analysed):
    checkpoint, groups, vocab, _ = analysed
    flagged = checkpoint_undertrained(checkpoint).excluded_ids
    planted = {vocab.token_strings.index(w) for w in PLANTED_WORDS}
    assert planted <= flagged
    freq = vocab.frequencies
    before = token_pools(vocab.token_strings, vocab.special_ids, vocab.marker, freq)
    off = token_pools(vocab.token_strings, vocab.special_ids, vocab.marker, freq, ())
    on = token_pools(vocab.token_strings, vocab.special_ids, vocab.marker, freq, flagged)
    for form in before.ids:
        np.testing.assert_array_equal(off.ids[form], before.ids[form])
        assert planted <= set(before.ids[form])  # real words: in the pool before
        assert not set(on.ids[form]) & flagged
        assert set(on.ids[form]) == set(before.ids[form]) - flagged
    assert off.rule == before.rule and "under-trained excluded" in on.rule
    matching = Matching.of_matrix(checkpoint.W, "norm_frequency", freq, 10)
    members = match_groups(groups, on, matching)
    draws = draw_random_groups(
        groups["digits"], members["digits"], on, matching, 200, np.random.default_rng(0)
    )
    assert not set(draws.ravel()) & flagged
    uniform = draw_random_groups(
        groups["people"], (), on, Matching(), 200, np.random.default_rng(0)
    )
    assert not set(uniform.ravel()) & flagged


def test_run_checks_with_it_off_gives_the_numbers_of_before(analysed):
    checkpoint, groups, vocab, result = analysed
    config = ChecksConfig(n_null=50, n_resamples=0, n_global=0, null_neighbours=10)
    before = run_checks(checkpoint.W, groups, result, vocab, config)
    off = run_checks(checkpoint.W, groups, result, vocab, config, undertrained_ids=None)
    np.testing.assert_array_equal(off.null.singular_values, before.null.singular_values)
    assert off.null.pool_rule == before.null.pool_rule and off.undertrained is None
    flagged = checkpoint_undertrained(checkpoint).excluded_ids
    on = run_checks(checkpoint.W, groups, result, vocab, config, undertrained_ids=flagged)
    assert on.undertrained == flagged and "under-trained excluded" in on.null.pool_rule
    np.testing.assert_array_equal(on.heldout.precision_at_k, before.heldout.precision_at_k)


def test_top_tokens_figures_and_tables_mark_flagged_tokens(analysed, tmp_path):
    checkpoint, groups, vocab, result = analysed
    flagged = checkpoint_undertrained(checkpoint).excluded_ids
    config = ChecksConfig(n_null=0, n_resamples=0, n_global=0, heldout=False)
    for name, undertrained, expected in (("on", flagged, None), ("off", None, "")):
        checks = run_checks(
            checkpoint.W, groups, result, vocab, config, undertrained_ids=undertrained
        )
        folder = tmp_path / name
        folder.mkdir()
        write_tables(result, checks, folder)
        with open(folder / Table.TOP_TOKENS, encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            marked = "true" if int(row["token_id"]) in flagged else "false"
            assert row["undertrained"] == (marked if expected is None else expected)
    assert any(r["undertrained"] == "" for r in rows)
    checks = run_checks(checkpoint.W, groups, result, vocab, config, undertrained_ids=flagged)
    labels = [label for _, label in run_figure_data(result, "tiny", checks).projection.extremes]
    marked = [t for t in result.top_tokens if t.component == 0 and not t.in_group][:5]
    for token, label in zip(sorted(marked, key=lambda t: (t.side, t.rank)), labels, strict=False):
        assert label.endswith(UNDERTRAINED_MARK) == (token.token_id in flagged)
    row = {"model": "m", "group": "g", "variant": "v", "component": 0, "side": "top"}
    rows = [
        {**row, "rank": 1, "token": "dog", "text": "dog", "in_group": False, "undertrained": True},
        {**row, "rank": 2, "token": "cat", "text": "cat", "in_group": False, "undertrained": False},
    ]
    assert "`dog`†" in markdown_tables(rows, 2) and "`cat`†" not in markdown_tables(rows, 2)
    assert "\\texttt{dog}$^\\dagger$" in latex_tables(rows, 2)


# --- a real tracked run -------------------------------------------------------------------


def test_a_tracked_run_logs_the_flagged_tokens(tmp_path, migrated_store_file):
    import shutil

    shutil.copy(migrated_store_file, tmp_path / "mlflow.db")
    clear_memo()  # another test found this checkpoint's tokens: read from its own cache
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, vocab = write_bert_with_unused(tmp_path / "bert")
    overrides = [
        "model=local",
        f"model.path={tmp_path / 'bert'}",
        "model.name=tiny_unused",
        f"tracking.uri={store}",
        "tracking.experiment=undertrained",
        f"cache_dir={tmp_path / 'cache'}",
        "analysis=fast",
        "analysis.top_k=60",
        "analysis.figures=false",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        # analysis=fast looks for none: switched on here, then off
        run_job(compose("config", overrides=[*overrides, "analysis.undertrained=true"]))
        run_job(compose("config", overrides=[*overrides, "analysis.undertrained=false"]))
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("undertrained")
    on, off = client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])
    assert on.data.metrics["undertrained/n_reference"] == len(UNUSED)
    assert on.data.metrics["undertrained/n_flagged"] == len(PLANTED_WORDS)
    assert on.data.tags["embsvd.undertrained"].startswith("input embedding")
    assert "12 reserved" in on.data.tags["embsvd.undertrained"]
    table = Path(client.download_artifacts(on.info.run_id, Table.UNDERTRAINED, tmp_path))
    rows = list(csv.DictReader(table.open(encoding="utf-8")))
    assert {r["token"] for r in rows if r["kind"] == "flagged"} == set(PLANTED_WORDS)
    assert {r["token"] for r in rows if r["kind"] == "reference"} == set(UNUSED)
    indicators = [float(r["indicator"]) for r in rows]
    assert indicators == sorted(indicators, reverse=True)
    top = Path(client.download_artifacts(on.info.run_id, Table.TOP_TOKENS, tmp_path / "t"))
    marked = {r["token"] for r in csv.DictReader(top.open()) if r["undertrained"] == "true"}
    assert set(PLANTED_WORDS) <= marked <= set(PLANTED_WORDS) | set(UNUSED)
    assert "undertrained/n_flagged" not in off.data.metrics
    assert "embsvd.undertrained" not in off.data.tags
    top = Path(client.download_artifacts(off.info.run_id, Table.TOP_TOKENS, tmp_path / "o"))
    assert {r["undertrained"] for r in csv.DictReader(top.open())} == {""}
    assert (tmp_path / "cache" / "undertrained").is_dir()
    # the figures drawn later from the run's tables mark what the run marked
    sweep = tracking.read_sweep(
        store,
        tracking.SweepSelection(
            experiment="undertrained", filter_string=f"attributes.run_id = '{on.info.run_id}'"
        ),
    )
    logged = tracking.with_tables(client, sweep.runs[0], RUN_FIGURE_TABLES, tmp_path / "s")
    flagged_texts = {f"␣{w}" for w in PLANTED_WORDS} | {f"␣{u}" for u in UNUSED}
    for _, label in logged_figure_data(logged, "tiny").projection.extremes:
        marked = label.endswith(UNDERTRAINED_MARK)
        assert marked == (label.removesuffix(UNDERTRAINED_MARK) in flagged_texts), label
