"""Concept axes from word pairs and sets: the estimators on planted directions, the sign
rule, the random-pair null (uniform p under no direction, small with one), leave-one-out,
the single-token rule on pairs, the config's refusals, the bundled MiniLM's gender axis, a
tracked run and a real multirun over concepts."""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from embsvd.checks.concept_null import (
    analyse_concept,
    concept_null,
    concept_stability,
)
from embsvd.groups import KeptToken, TokenForms
from embsvd.io.checkpoint import load_tokenizer
from embsvd.io.vocabulary import Vocabulary
from embsvd.method import geometry
from embsvd.method.concepts import (
    ESTIMATORS,
    ConceptSpec,
    ConceptTokens,
    check_concept_spec,
    concept_axis,
    leave_one_out,
    ledoit_wolf_from_gram,
    select_concept_tokens,
)
from embsvd.pipeline.config import checked_settings
from embsvd.pipeline.job import run_job
from embsvd.tracking.artifacts import CONCEPT_COLUMNS, ConceptTable
from tests.conftest import PROJECT_ROOT, write_tiny_bert
from tests.test_config import compose_config

DOCS = PROJECT_ROOT / "docs"


def planted(seed: int, n: int = 12, d: int = 24, shift: float = 3.0, spread: float = 1.0):
    """Pairs that share a direction ``u``: negative rows ``base + noise``, positive rows
    ``base + shift u + noise``."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    base = rng.normal(size=(n, d)) * spread
    negative = base + 0.3 * rng.normal(size=(n, d))
    positive = base + shift * u + 0.3 * rng.normal(size=(n, d))
    return negative, positive, u


# --- estimators -------------------------------------------------------------------------


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_each_estimator_recovers_a_planted_direction_with_its_sign(estimator, paired):
    # sets carry no pairing: their PCA sees the words' own spread, kept small here
    negative, positive, u = planted(1, spread=1.0 if paired else 0.2)
    found = concept_axis(negative, positive, estimator, paired)
    assert np.linalg.norm(found.axis) == pytest.approx(1.0)
    assert found.axis @ u > 0.9  # the direction, pointing to the positive pole
    assert found.separation > 0
    # the poles swapped: the same line, the other way
    swapped = concept_axis(positive, negative, estimator, paired)
    assert swapped.axis @ found.axis == pytest.approx(-1.0, abs=1e-9)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_the_positive_pole_projects_above_the_negative_whatever_the_data(estimator):
    """The sign rule on data with no direction at all, where an SVD's sign is a coin."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        negative, positive = rng.normal(size=(2, 6, 10))
        for paired in (True, False):
            found = concept_axis(negative, positive, estimator, paired)
            assert (positive.mean(axis=0) - negative.mean(axis=0)) @ found.axis >= 0
            assert positive.mean(axis=0) @ found.axis >= negative.mean(axis=0) @ found.axis


def test_the_estimators_against_direct_computations():
    negative, positive, _ = planted(3, n=10, d=30)
    differences = positive - negative
    mean = differences.mean(axis=0)
    assert concept_axis(negative, positive, "difference").axis == pytest.approx(
        mean / np.linalg.norm(mean)
    )
    # pca: the first right singular vector of the pair-centred rows, its share s1^2/sum s^2
    middle = (negative + positive) / 2
    centred = np.concatenate([negative - middle, positive - middle])
    _, S, Vt = np.linalg.svd(centred)
    found = concept_axis(negative, positive, "pca")
    assert abs(found.axis @ Vt[0]) == pytest.approx(1.0)
    assert found.first_pc_share == pytest.approx(S[0] ** 2 / (S**2).sum())
    cosines = differences @ found.axis / np.linalg.norm(differences, axis=1)
    assert found.consistency == pytest.approx(cosines.mean())
    # lda: a direct solve with the shrunk within-pole covariance
    X = np.concatenate([negative - negative.mean(0), positive - positive.mean(0)])
    a = geometry.ledoit_wolf_shrinkage(X)
    assert ledoit_wolf_from_gram((X @ X.T)[None], X.shape[1])[0] == pytest.approx(a)
    S_w = X.T @ X / len(X)
    shrunk = (1 - a) * S_w + a * np.trace(S_w) / X.shape[1] * np.eye(X.shape[1])
    direct = np.linalg.solve(shrunk, positive.mean(0) - negative.mean(0))
    lda = concept_axis(negative, positive, "lda").axis
    assert lda @ direct / np.linalg.norm(direct) == pytest.approx(1.0)


def test_leave_one_pair_out_finds_the_pair_that_disagrees():
    negative, positive, u = planted(5, n=8, shift=2.0)
    positive[3] = negative[3] + 6.0 * np.roll(u, 5)  # one pair along another direction
    axis = concept_axis(negative, positive, "difference").axis
    cosines = leave_one_out(negative, positive, axis, "difference")
    assert cosines.shape == (8,)
    assert np.argmin(cosines) == 3
    assert np.all(cosines <= 1 + 1e-12)
    assert np.delete(cosines, 3).min() > cosines[3]


# --- the random-pair null ----------------------------------------------------------------


def synthetic_vocabulary(W: np.ndarray) -> Vocabulary:
    """Alphabetic token strings (the null's whole-word pool) for the rows of ``W``."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    names = ["".join(t) for t in itertools.product(letters, repeat=3)][: len(W)]
    return Vocabulary.from_matrix(W, names)


def random_concept(rng: np.random.Generator, d_vocab: int, n: int) -> ConceptTokens:
    ids = rng.choice(d_vocab, size=2 * n, replace=False)
    kept = [KeptToken(f"w{i}", f"w{i}", int(i)) for i in ids]
    return ConceptTokens("c", tuple(kept[:n]), tuple(kept[n:]), True)


def observed_p_values(W, vocab, concept, n_null, seed):
    negative, positive = W[concept.negative_ids], W[concept.positive_ids]
    observed = concept_axis(negative, positive, "difference")
    return concept_null(
        W, concept, observed, vocab, n_null=n_null, null_match="none", random_state=seed
    )


def test_the_null_p_value_is_uniform_when_no_direction_is_planted():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(3000, 16))
    vocab = synthetic_vocabulary(W)
    p_share, p_consistency = [], []
    for seed in range(60):
        concept = random_concept(rng, len(W), 8)
        null = observed_p_values(W, vocab, concept, 99, seed)
        p_share.append(null.first_pc_share.p_value)
        p_consistency.append(null.consistency.p_value)
        assert 1 / 100 <= null.first_pc_share.p_value <= 1.0  # the +1 estimate: never 0
    for p in (np.array(p_share), np.array(p_consistency)):
        assert 0.35 < p.mean() < 0.65
        assert (p <= 0.1).mean() < 0.25
        assert (p >= 0.5).mean() > 0.3


def test_the_null_p_value_is_small_with_a_planted_direction():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(3000, 16))
    vocab = synthetic_vocabulary(W)
    concept = random_concept(rng, len(W), 8)
    u = np.eye(16)[0]
    W[concept.positive_ids] = W[concept.negative_ids] + 2.5 * u + 0.3 * rng.normal(size=(8, 16))
    null = observed_p_values(W, vocab, concept, 199, 0)
    for summary in (null.first_pc_share, null.consistency):
        assert summary.p_value == pytest.approx(1 / 200)
        assert summary.observed > summary.q95 > summary.mean
        assert summary.percentile == 100.0
    # the same seed draws the same pairs
    again = observed_p_values(W, vocab, concept, 199, 0)
    assert np.array_equal(again.null_first_pc_share, null.null_first_pc_share)
    axis = concept_axis(W[concept.negative_ids], W[concept.positive_ids])
    stability = concept_stability(W, concept, axis)
    assert stability.min_abs_cos > 0.95 and len(stability.units) == 8


# --- the single-token rule and the config ------------------------------------------------


def test_a_pair_is_kept_only_if_both_of_its_words_are_single_tokens(tmp_path):
    write_tiny_bert(tmp_path / "bert")
    forms = TokenForms(load_tokenizer(tmp_path / "bert"))
    spec = ConceptSpec(
        pairs=[["man", "woman"], ["czechia", "france"], ["cat", "dog"], ["day", "man"]],
        negative_pole="a",
        positive_pole="b",
    )
    concept = select_concept_tokens("toy", spec, forms, "tiny")
    assert [(n.word, p.word) for n, p in zip(concept.negative, concept.positive, strict=True)] == [
        ("man", "woman"),
        ("cat", "dog"),
    ]
    dropped = {(d.negative, d.positive): d.reason for d in concept.dropped}
    assert set(dropped) == {("czechia", "france"), ("day", "man")}
    assert "2 tokens" in dropped[("czechia", "france")]
    assert "same token id" in dropped[("day", "man")]  # `man` belongs to an earlier pair
    assert concept.to_dict()["dropped"][0]["negative"] == "czechia"
    with pytest.raises(ValueError, match=r"concepts\.toy: keeps 1 pairs .* czechia/france"):
        select_concept_tokens(
            "toy", ConceptSpec(pairs=[["man", "woman"], ["czechia", "france"]]), forms, "tiny"
        )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ConceptSpec(), r"concepts\.x: no words; give pairs"),
        (
            ConceptSpec(pairs=[["a", "b"], ["c", "d"]], negative=["e", "f"]),
            r"concepts\.x: gives both pairs and negative/positive sets",
        ),
        (ConceptSpec(pairs=[["a", "b"], ["c"]]), r"concepts\.x\.pairs\[1\]: \['c'\] is not a pair"),
        (ConceptSpec(pairs=[["a", "a"], ["c", "d"]]), r"pairs\[0\].*two different words"),
        (ConceptSpec(pairs=[["a", "b"]]), r"concepts\.x\.pairs: 1 pair; give at least 2"),
        (ConceptSpec(negative=["a", "b"], positive=["c"]), r"concepts\.x\.positive: 1 words"),
        (ConceptSpec(pairs=[["a", "b"], ["c", "d"]], estimator="svm"), r"estimator: 'svm'"),
    ],
)
def test_malformed_concepts_are_refused_naming_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        check_concept_spec("x", spec)


def test_an_unknown_concept_is_refused_naming_the_configured_ones():
    with pytest.raises(ValueError) as refused:
        checked_settings(compose_config("concept=gendr"))
    assert str(refused.value).startswith(
        "concept: 'gendr' is not one of the configured concepts (capital, gender, plural, "
        "tense); did you mean 'gender'?"
    )
    assert "conf/concepts/gendr.yaml" in str(refused.value)
    with pytest.raises(ValueError, match=r"concepts\.tense\.pairs\[0\]: \['a', 'a'\]"):
        checked_settings(compose_config("concept=gender", "concepts.tense.pairs=[[a,a],[b,c]]"))


def test_the_shipped_concepts_compose_and_no_concept_changes_nothing():
    settings = checked_settings(compose_config())
    assert settings.concept is None
    assert set(settings.concepts) == {"gender", "plural", "tense", "capital"}
    for name, spec in settings.concepts.items():
        check_concept_spec(name, spec)
        assert 10 <= len(spec.pairs) <= 20, name
    assert (
        settings.concepts["gender"].negative_pole,
        settings.concepts["gender"].positive_pole,
    ) == (
        "male",
        "female",
    )
    assert ["he", "she"] in settings.concepts["gender"].pairs
    for file in (PROJECT_ROOT / "conf" / "concepts").glob("*.yaml"):
        assert "Written for this project" in file.read_text(), file.name
    # the config hash of a run without a concept does not see the concepts
    from embsvd.pipeline.config import config_hash

    plain = config_hash(settings)
    fewer = dataclasses.replace(settings, concepts={})
    assert config_hash(fewer) == plain
    assert config_hash(dataclasses.replace(settings, concept="gender")) != plain
    assert config_hash(dataclasses.replace(settings, concept="gender")) != config_hash(
        dataclasses.replace(settings, concept="plural")
    )


# --- the bundled MiniLM --------------------------------------------------------------------


@pytest.mark.slow
def test_the_gender_axis_on_the_bundled_minilm():
    from embsvd.io.checkpoint import load_checkpoint

    settings = checked_settings(compose_config())
    checkpoint = load_checkpoint(settings.model)
    forms = TokenForms(checkpoint.tokenizer)
    gender = select_concept_tokens("gender", settings.concepts["gender"], forms, "minilm")
    result = analyse_concept(checkpoint.W, gender, checkpoint.vocabulary, top_k=20, n_null=200)
    top = {t.token for t in result.top_tokens if t.side == "top"}
    assert {"she", "her", "woman"} <= top
    bottom = {t.token for t in result.top_tokens if t.side == "bottom"}
    assert {"he", "his", "man"} <= bottom
    null = result.null
    assert null.first_pc_share.observed > null.first_pc_share.q95
    assert null.consistency.observed > null.consistency.q95
    assert null.first_pc_share.p_value < 0.01


# --- a tracked run and a sweep -------------------------------------------------------------

# the shipped concepts' words, replaced by words of the tiny vocabulary (a new concept is
# a file under conf/concepts/: Hydra cannot add a typed dict entry from the command line)
TOY = [
    "concepts.gender.pairs=[[man,woman],[cat,dog],[day,night],[year,month],[school,student]]",
    "concepts.gender.estimator=pca",
    "concepts.plural.pairs=[[man,woman],[cat,dog],[day,night],[year,month],[school,student]]",
]


def tiny_run_overrides(tmp_path: Path, *more: str) -> list[str]:
    write_tiny_bert(tmp_path / "bert")
    return [
        "model=local",
        f"model.path={tmp_path / 'bert'}",
        "model.name=tiny_bert",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "analysis=fast",
        "analysis.n_null=20",
        "analysis.null_match=none",
        "analysis.n_components=2",
        "analysis.explorer=false",
        *TOY,
        *more,
    ]


def documented_concept_metrics() -> list[re.Pattern[str]]:
    text = (DOCS / "contract.md").read_text(encoding="utf-8")
    section = text.split("## Concept axes", 1)[1].split("\n## ", 1)[0]
    keys = re.findall(r"^\| `(concept/[^`]+)`", section, flags=re.MULTILINE)
    expanded = [key for pattern in keys for key in _expand(pattern)]
    return [re.compile(re.sub(r"<[^>]+>", "[^/]+", re.escape(key))) for key in expanded]


def _expand(pattern: str) -> list[str]:
    pieces = re.split(r"\{([^}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(pieces)]
    return ["".join(c) for c in itertools.product(*choices)]


def test_a_tracked_run_logs_the_concept(tmp_path):
    cfg = compose_config(*tiny_run_overrides(tmp_path, "concept=gender", "analysis.figures=true"))
    run_job(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("embsvd").experiment_id])
    assert run.info.status == "FINISHED", run.data.tags.get("embsvd.error")
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["concept/n_pairs"] == 5
    assert metrics["concept/null/n_null"] == 20
    assert 0 < metrics["concept/first_pc_share"] <= 1
    assert tags["embsvd.concept"] == "gender" and tags["embsvd.concept_estimator"] == "pca"
    assert tags["embsvd.concept_positive_end"]
    # tense keeps no pair in the tiny vocabulary: left out of the cosines; capital keeps 3
    # (france/paris, italy/rome, greece/athens); plural has gender's pairs here
    logged = sorted(m for m in metrics if m.startswith("concept/"))
    assert {m for m in logged if m.startswith("concept/axis_cos")} == {
        f"concept/{prefix}/{other}"
        for prefix in ("axis_cos", "axis_cos_whitened")
        for other in ("plural", "capital")
    }
    assert -1 <= metrics["concept/axis_cos/plural"] <= 1
    patterns = documented_concept_metrics()
    assert all(any(p.fullmatch(m) for p in patterns) for m in logged), logged
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {str(t) for t in ConceptTable} | {"concept.json"} <= files
    for table in ConceptTable:
        text = Path(client.download_artifacts(run.info.run_id, table, str(tmp_path))).read_text()
        rows = list(csv.reader(io.StringIO(text)))
        assert tuple(rows[0]) == CONCEPT_COLUMNS[table], table
    cosines = Path(client.download_artifacts(run.info.run_id, ConceptTable.COSINES, str(tmp_path)))
    rows = list(csv.DictReader(io.StringIO(cosines.read_text())))
    found = {(r["geometry"], r["concept_a"], r["concept_b"]): float(r["cosine"]) for r in rows}
    assert len(found) == 2 * 3 * 3  # two geometries, gender, plural and capital
    for (space, a, b), cosine in found.items():
        assert cosine == pytest.approx(found[(space, b, a)])
        assert cosine == pytest.approx(1.0) if a == b else abs(cosine) <= 1
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {
        "figures/concept_cosines_euclidean.png",
        "figures/concept_cosines_whitened.png",
    } <= figures


def test_the_concept_tables_are_documented_as_defined():
    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    for table, columns in CONCEPT_COLUMNS.items():
        row = re.search(rf"^\| `{re.escape(table)}` \| (.+?) \|", text, flags=re.MULTILINE)
        assert row, table
        assert tuple(re.findall(r"`([^`]+)`", row[1])) == columns, table


def test_no_concept_logs_nothing_of_concepts(tmp_path):
    run_job(compose_config(*tiny_run_overrides(tmp_path, "analysis.figures=false")))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("embsvd").experiment_id])
    assert not [m for m in run.data.metrics if m.startswith("concept/")]
    assert "embsvd.concept" not in run.data.tags
    assert not [a for a in client.list_artifacts(run.info.run_id) if "concept" in a.path]


@pytest.mark.slow
def test_a_multirun_sweeps_concepts(tmp_path, migrated_store_file):
    import os
    import shutil
    import subprocess
    import sys

    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    overrides = tiny_run_overrides(
        tmp_path, "analysis.figures=false", "concepts.gender.estimator=difference"
    )
    command = [sys.executable, str(PROJECT_ROOT / "experiments" / "run.py"), "-m"]
    command += [f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides, "concept=gender,plural"]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("embsvd").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["embsvd.concept"] for r in children) == ["gender", "plural"]
    assert all(r.info.status == "FINISHED" for r in children)
    # the two concepts are the same pairs and estimator: one axis, cosine 1 between them
    for run in children:
        other = "plural" if run.data.tags["embsvd.concept"] == "gender" else "gender"
        assert run.data.metrics[f"concept/axis_cos/{other}"] == pytest.approx(1.0)
    hashes = {r.data.tags["embsvd.config_hash"] for r in children}
    assert len(hashes) == 2


def test_settings_are_typed():
    settings = OmegaConf.to_object(compose_config("concept=gender"))
    assert isinstance(settings.concepts["gender"], ConceptSpec)
