"""Trajectories across training: axes aligned with the final checkpoint's (|cos| with
signs matched, principal angles), the analysed matrix's hash, the training order of a
revision sweep, and what its parent logs, against direct computations and a real sweep
over a local Hub cache's revisions."""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from safetensors.numpy import save_file

from embsvd import tracking
from embsvd.checks.trajectory import (
    axis_alignment,
    axis_trajectory,
    check_steps,
    identical_embeddings,
    match_signs,
    principal_angles,
    step_number,
    training_order,
)
from embsvd.io import tensor_hash
from embsvd.io.checkpoint import load_checkpoint
from embsvd.io.rows import BFloat16Rows
from embsvd.io.spec import CheckpointSpec
from embsvd.pipeline.config import checked_settings, config_hash
from embsvd.pipeline.trajectory_job import log_sweep_trajectories, run_tags
from embsvd.tracking.artifacts import Table, header, write_csv
from embsvd.tracking.contract import Tag
from tests.conftest import BERT_KEY, CONFIG_DIR, D_MODEL, tiny_embeddings, write_tiny_bert

RNG = np.random.default_rng(17)


def orthonormal_rows(k: int, d: int, rng: np.random.Generator = RNG) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, k)))
    return q.T


# --- alignment and principal angles on arrays ---------------------------------------------


def test_principal_angles_of_a_known_construction():
    """Span{e1, e2} against span{cos a e1 + sin a e3, cos b e2 + sin b e4}: angles a, b."""
    a, b = 0.3, 1.1
    e = np.eye(6)
    first = np.stack([e[0], e[1]])
    second = np.stack([np.cos(a) * e[0] + np.sin(a) * e[2], np.cos(b) * e[1] + np.sin(b) * e[3]])
    np.testing.assert_allclose(principal_angles(first, second), [a, b], atol=1e-12)
    # a basis of the same subspaces (rotated inside, rescaled, signs flipped): same angles
    rotation = np.array([[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]])
    np.testing.assert_allclose(
        principal_angles(-3.0 * rotation @ first, rotation.T @ second), [a, b], atol=1e-12
    )


def test_principal_angles_match_the_projections_eigenvalues():
    """cos^2 of the principal angles are the non-zero eigenvalues of P_A P_B P_A, with
    P the orthogonal projection on a subspace: computed from the rows directly, without
    orthonormalizing them first."""
    for k, d in [(1, 5), (3, 8), (4, 20)]:
        A, B = RNG.normal(size=(k, d)), RNG.normal(size=(k, d))
        P_A = A.T @ np.linalg.inv(A @ A.T) @ A
        P_B = B.T @ np.linalg.inv(B @ B.T) @ B
        eigenvalues = np.sort(np.linalg.eigvalsh(P_A @ P_B @ P_A))[::-1][:k]
        expected = np.sort(np.arccos(np.sqrt(np.clip(eigenvalues, 0, 1))))
        np.testing.assert_allclose(principal_angles(A, B), expected, atol=1e-7)
    # one axis: the angle is arccos |cos|
    u, v = RNG.normal(size=(1, 7)), RNG.normal(size=(1, 7))
    cosine = abs(u[0] @ v[0]) / np.linalg.norm(u) / np.linalg.norm(v)
    np.testing.assert_allclose(principal_angles(u, v), [np.arccos(cosine)], atol=1e-12)
    # identical and orthogonal subspaces
    Q = orthonormal_rows(3, 9)
    np.testing.assert_allclose(principal_angles(Q, Q), 0.0, atol=1e-7)
    np.testing.assert_allclose(principal_angles(Q[:1], Q[1:2]), [np.pi / 2], atol=1e-12)


def test_axis_alignment_matches_signs_and_is_abs_cos():
    final = orthonormal_rows(3, 10)
    flipped = final * np.array([[-1.0], [1.0], [-1.0]])
    np.testing.assert_allclose(axis_alignment(flipped, final), 1.0, atol=1e-12)
    matched, signs = match_signs(flipped, final)
    assert signs.tolist() == [-1.0, 1.0, -1.0]
    np.testing.assert_allclose(matched, final, atol=1e-12)
    # any axes: the cosine after matching is |cos| computed directly, and never negative
    axes = RNG.normal(size=(3, 10)) * 5.0
    direct = [
        abs(x @ y) / np.linalg.norm(x) / np.linalg.norm(y) for x, y in zip(axes, final, strict=True)
    ]
    np.testing.assert_allclose(axis_alignment(axes, final), direct, atol=1e-12)
    # fewer axes on one side: the first of each are paired
    assert axis_alignment(axes[:2], final).shape == (2,)
    with pytest.raises(ValueError, match="axes have 10 coordinates, the reference 4"):
        axis_alignment(axes, final[:, :4])


def test_axis_trajectory_ends_at_one_and_zero():
    final = orthonormal_rows(2, 6)
    start = orthonormal_rows(2, 6)
    swapped = final[::-1]  # the axes trade places: |cos| drops, the subspace does not move
    found = axis_trajectory([start, swapped, -final, final])
    np.testing.assert_allclose(found.abs_cos[-1], 1.0)
    np.testing.assert_allclose(found.abs_cos[2], 1.0)
    assert found.signs[2].tolist() == [-1.0, -1.0]
    np.testing.assert_allclose(found.angles[1], 0.0, atol=1e-7)
    assert found.abs_cos[1].max() < 1 - 1e-6
    np.testing.assert_allclose(found.angles[-1], 0.0, atol=1e-7)
    assert found.abs_cos.shape == found.angles.shape == (4, 2)


# --- the order of revisions ----------------------------------------------------------------


def test_step_numbers_and_the_training_order():
    assert [step_number(r) for r in ("step0", "step143000", "ckpt-step_20", "main", None)] == [
        0,
        143000,
        20,
        None,
        None,
    ]
    assert training_order(["step2000", "step0", "step1000", "step0"]) == [
        "step0",
        "step1000",
        "step2000",
    ]
    assert training_order(["late", "early"], steps=["early", "late"]) == ["early", "late"]


def test_revisions_without_an_order_name_model_steps():
    with pytest.raises(ValueError, match=r"alpha, beta give no step .*model\.steps=\[alpha,beta\]"):
        training_order(["alpha", "beta"])
    with pytest.raises(ValueError, match=r"step1, step01 give the same step.*model\.steps"):
        training_order(["step1", "step01"])
    with pytest.raises(ValueError, match=r"revisions gamma are not in model\.steps \(a, b\)"):
        training_order(["a", "gamma"], steps=["a", "b"])


def test_model_steps_is_checked_where_it_enters():
    spec = CheckpointSpec(name="m", hub_id="org/m", revision="step3", steps=["step1", "step2"])
    with pytest.raises(ValueError, match=r"model\.revision: 'step3' is not in model\.steps"):
        check_steps(spec)
    with pytest.raises(ValueError, match=r"model\.steps: step1 listed twice"):
        check_steps(CheckpointSpec(name="m", hub_id="o/m", revision="step1", steps=["step1"] * 2))
    with pytest.raises(ValueError, match=r"model\.steps: \[\] is not a training order"):
        check_steps(CheckpointSpec(name="m", hub_id="o/m", steps=[]))
    check_steps(CheckpointSpec(name="m", hub_id="o/m", revision="step2", steps=["step1", "step2"]))


def test_model_steps_changes_no_config_hash(tiny_bert: Path):
    def settings(*overrides: str):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(
                "config",
                overrides=["model=local", f"model.path={tiny_bert}", "model.name=t", *overrides],
            )
        return checked_settings(cfg)

    plain, ordered = settings(), settings("model.steps=[main]")
    assert ordered.model.steps == ["main"]
    assert config_hash(plain) == config_hash(ordered)
    with pytest.raises(ValueError, match=r"model\.revision: 'main' is not in model\.steps"):
        settings("model.steps=[step1,step2]")


def test_identical_embeddings_are_grouped():
    hashes = {"step0": "a", "step1000": "a", "step2000": "b", "step3000": "a", "x": ""}
    assert identical_embeddings(hashes) == [["step0", "step1000", "step3000"]]
    assert identical_embeddings({"s1": "a", "s2": "b"}) == []


# --- the analysed matrix's hash --------------------------------------------------------------


def test_tensor_hash_is_of_the_matrix_bytes_not_the_file(tmp_path: Path):
    W_E = tiny_embeddings(seed=3)
    write_tiny_bert(tmp_path / "a", W_E)
    write_tiny_bert(tmp_path / "b", W_E)
    # b: the same embedding, another tensor changed (as a suite's step branches do)
    save_file(
        {BERT_KEY: W_E, "bert.pooler.dense.weight": np.zeros((D_MODEL, D_MODEL), np.float32)},
        tmp_path / "b" / "model.safetensors",
    )
    a = load_checkpoint(CheckpointSpec(name="a", path=str(tmp_path / "a")))
    b = load_checkpoint(CheckpointSpec(name="b", path=str(tmp_path / "b")))
    assert a.weights_sha256 != b.weights_sha256
    expected = hashlib.sha256(W_E.tobytes()).hexdigest()
    assert tensor_hash.tensor_sha256(a.W) == tensor_hash.tensor_sha256(b.W) == expected
    # small blocks give the same digest as one read
    blocks = tensor_hash.HASH_BLOCK_BYTES
    try:
        tensor_hash.HASH_BLOCK_BYTES = D_MODEL * 4 * 3  # three rows a block
        assert tensor_hash.tensor_sha256(a.W) == expected
    finally:
        tensor_hash.HASH_BLOCK_BYTES = blocks
    # bfloat16: the stored 16-bit values, not the widened float32 rows
    raw = (W_E.view(np.uint32) >> 16).astype(np.uint16)
    assert tensor_hash.tensor_sha256(BFloat16Rows(raw)) == hashlib.sha256(raw.tobytes()).hexdigest()


def test_embedding_hash_is_kept_per_weights_file_and_tensor(tmp_path: Path):
    cache = tmp_path / "cache"
    W = tiny_embeddings(seed=4)
    sha = "ab" * 32
    first = tensor_hash.embedding_sha256(W, sha, BERT_KEY, "input", cache)
    kept = tensor_hash.cache_file(cache, sha, BERT_KEY, "input")
    assert kept.read_text() == first == hashlib.sha256(W.tobytes()).hexdigest()
    # another process finds it on disk: not computed again (another matrix, same key)
    tensor_hash._REMEMBERED.clear()
    assert tensor_hash.embedding_sha256(W * 2, sha, BERT_KEY, "input", cache) == first
    # a damaged entry is computed again
    kept.write_text("0" * 64)
    tensor_hash._REMEMBERED.clear()
    assert tensor_hash.embedding_sha256(W, sha, BERT_KEY, "input", cache) == first
    # another matrix of the same file is another entry
    other = tensor_hash.embedding_sha256(W.T.copy(), sha, BERT_KEY, "output", cache)
    assert other != first


def test_run_tags_name_the_hash_and_the_step(tiny_bert: Path):
    checkpoint = load_checkpoint(CheckpointSpec(name="t", path=str(tiny_bert)))
    spec = CheckpointSpec(
        name="t", hub_id="org/t", revision="step1000", steps=["step0", "step1000"]
    )
    tags = run_tags(spec, checkpoint)
    assert (
        tags[Tag.EMBEDDING_SHA256] == hashlib.sha256(np.asarray(checkpoint.W).tobytes()).hexdigest()
    )
    assert tags[Tag.STEP] == 1000 and tags[Tag.STEP_ORDER] == 1
    local = run_tags(CheckpointSpec(name="t", path=str(tiny_bert)), checkpoint)
    assert set(local) == {Tag.EMBEDDING_SHA256}


# --- the parent's close, on runs logged to a real store ------------------------------------


def log_step_run(store, parent_id: str, revision: str, axes: np.ndarray, sha: str, **tags) -> str:
    """A FINISHED child as a job logs one: tags, params, metrics, axes.csv, spectrum.csv."""
    run = tracking.start_run(
        store,
        f"digits · centered · suite@{revision}",
        {
            Tag.PARENT_RUN_ID: parent_id,
            Tag.MODEL: "suite",
            Tag.REVISION: revision,
            Tag.TARGET_GROUP: "digits",
            Tag.EMBEDDING_SHA256: sha,
            **tags,
        },
    )
    run.log_params({"model.revision": revision, "target": "digits", "analysis.center": True})
    run.log_metrics([("group_mean_corr/digits__eu_countries", float(axes[0, 0]), 0)])
    folder = Path(store.uri.removeprefix("sqlite:///")).parent / f"tables-{revision}"
    folder.mkdir()
    write_csv(
        folder / Table.AXES,
        header(Table.AXES, range(axes.shape[1])),
        [[k, *row] for k, row in enumerate(axes)],
    )
    write_csv(folder / Table.SPECTRUM, header(Table.SPECTRUM), [[0, 2.0, 0.8], [1, 1.0, 0.2]])
    run.log_folder(folder)
    store.client.set_terminated(run.run_id, "FINISHED")
    return run.run_id


@pytest.fixture
def store(tmp_path: Path, migrated_store_file: Path) -> tracking.TrackingStore:
    """A fresh store of this test's own, copied from the migrated template."""
    shutil.copyfile(migrated_store_file, tmp_path / "mlflow.db")
    return tracking.TrackingStore(f"sqlite:///{tmp_path / 'mlflow.db'}", "embsvd")


def test_a_sweep_without_an_order_gets_the_message(store, capsys):
    parent = tracking.start_run(store, "sweep", {Tag.ROLE: "sweep"}).run_id
    for revision in ("alpha", "beta"):
        log_step_run(store, parent, revision, orthonormal_rows(2, D_MODEL), revision * 8)

    log_sweep_trajectories(store, parent)

    err = capsys.readouterr().err
    assert "warning: no trajectory for digits · centered · suite: " in err
    assert "model.steps=[alpha,beta]" in err
    tags = store.client.get_run(parent).data.tags
    assert "model.steps=[alpha,beta]" in tags[Tag.WARNING_TRAJECTORY]
    logged = {a.path for a in store.client.list_artifacts(parent)}
    assert Table.TRAJECTORY_ALIGNMENT not in logged


def test_a_declared_order_orders_the_steps(store):
    parent = tracking.start_run(store, "sweep", {Tag.ROLE: "sweep"}).run_id
    final = orthonormal_rows(2, D_MODEL)
    # declared: late (final) after early, though "late" < "early" is not what names say
    log_step_run(store, parent, "late", final, "1" * 64, **{Tag.STEP_ORDER: 1})
    log_step_run(
        store, parent, "early", orthonormal_rows(2, D_MODEL), "2" * 64, **{Tag.STEP_ORDER: 0}
    )

    log_sweep_trajectories(store, parent)

    text = Path(store.client.download_artifacts(parent, Table.TRAJECTORY_ALIGNMENT)).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["revision"] for r in rows] == ["early", "early", "late", "late"]
    assert [r["step"] for r in rows] == ["0", "0", "1", "1"]  # no stepN names: the position
    assert [float(r["abs_cos"]) for r in rows[2:]] == pytest.approx([1.0, 1.0])
    assert Tag.WARNING_IDENTICAL_EMBEDDINGS not in store.client.get_run(parent).data.tags


# --- a real sweep over a local Hub cache's revisions -------------------------------------


@pytest.mark.slow
def test_revision_sweep_logs_trajectories_and_warns_of_identical_embeddings(
    tmp_path: Path, migrated_store_file: Path
):
    from tests.test_checkpoint import write_hub_cache
    from tests.test_sweeps import offline_hub_env, parents_and_children, sweep_command

    (tmp_path / "store").mkdir()
    shutil.copyfile(migrated_store_file, tmp_path / "store" / "mlflow.db")
    cache = tmp_path / "hf" / "hub"
    shared = tiny_embeddings(seed=21)
    embeddings = {"step0": shared, "step1000": shared, "step2000": tiny_embeddings(seed=22)}
    for i, (step, W_E) in enumerate(embeddings.items()):
        upload = tmp_path / f"upload-{step}"
        write_tiny_bert(upload, W_E)
        # every step's file differs (another tensor trained on), the embedding need not
        others = {
            BERT_KEY: W_E,
            "bert.pooler.dense.weight": np.full((D_MODEL, D_MODEL), i, np.float32),
        }
        save_file(others, upload / "model.safetensors")
        commit = hashlib.sha1(step.encode()).hexdigest()
        write_hub_cache(cache, "testorg/tiny-suite", commit, upload, ref=step)
    env = offline_hub_env(tmp_path / "hf", cache)

    done = subprocess.run(
        sweep_command(
            tmp_path,
            "model=bert_base_uncased",
            "model.hub_id=testorg/tiny-suite",
            "model.name=tiny_suite",
            "model.revision=step2000,step0,step1000",  # not in training order
            "analysis=fast",
            "analysis.figures=false",
            "analysis.center=true,false",
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    store, [parent], children = parents_and_children(tmp_path)
    assert parent.status == "FINISHED" and len(children) == 6
    by_revision: dict[str, list] = {}
    for child in children:
        by_revision.setdefault(child.tags[Tag.REVISION], []).append(child)
    sha = {r: {c.tags[Tag.EMBEDDING_SHA256] for c in runs} for r, runs in by_revision.items()}
    weights = {r: {c.tags[Tag.WEIGHTS_SHA256] for c in runs} for r, runs in by_revision.items()}
    assert sha["step0"] == sha["step1000"] == {hashlib.sha256(shared.tobytes()).hexdigest()}
    assert sha["step2000"] != sha["step0"] and weights["step0"] != weights["step1000"]
    # the warning: on the console, the parent and the two runs, naming both
    message = "model tiny_suite: revisions step0, step1000 analysed byte-identical matrices"
    assert f"warning: {message}" in done.stderr
    assert message in parent.tags[Tag.WARNING_IDENTICAL_EMBEDDINGS]
    for revision, runs in by_revision.items():
        for child in runs:
            warned = Tag.WARNING_IDENTICAL_EMBEDDINGS in child.tags
            assert warned == (revision != "step2000"), (revision, child.tags)
    # the trajectories: per configuration, in training order, 1.0 at the final step
    client = store.client

    def table(name: str) -> list[dict]:
        text = Path(client.download_artifacts(parent.run_id, name)).read_text()
        return list(csv.DictReader(io.StringIO(text)))

    alignment = table(Table.TRAJECTORY_ALIGNMENT)
    configurations = sorted({r["configuration"] for r in alignment})
    assert configurations == ["digits · centered · tiny_suite", "digits · raw · tiny_suite"]
    for configuration in configurations:
        rows = [r for r in alignment if r["configuration"] == configuration]
        revisions = list(dict.fromkeys(r["revision"] for r in rows))
        assert revisions == ["step0", "step1000", "step2000"]
        assert {r["step"] for r in rows if r["revision"] == "step1000"} == {"1000"}
        final = [float(r["abs_cos"]) for r in rows if r["revision"] == "step2000"]
        assert final == pytest.approx([1.0] * len(final))
        # identical matrices, identical axes: the same alignment at step0 and step1000
        at = {rev: [r["abs_cos"] for r in rows if r["revision"] == rev] for rev in revisions}
        assert at["step0"] == at["step1000"]
    angles = table(Table.TRAJECTORY_ANGLES)
    assert all(
        float(r["angle_degrees"]) == pytest.approx(0.0, abs=1e-4)
        for r in angles
        if r["revision"] == "step2000"
    )
    steps = table(Table.TRAJECTORY_STEPS)
    assert {r["identical_to"] for r in steps if r["revision"] == "step0"} == {"step1000"}
    assert {r["identical_to"] for r in steps if r["revision"] == "step2000"} == {""}
    assert len(table(Table.TRAJECTORY_SPECTRUM)) > 0
    assert len(table(Table.TRAJECTORY_GROUP_MEAN_CORR)) == 6 * 2  # raw and centered r
    figures = {a.path for a in client.list_artifacts(parent.run_id, "figures/trajectory")}
    assert figures == {
        "figures/trajectory/digits_centered_tiny_suite.png",
        "figures/trajectory/digits_raw_tiny_suite.png",
    }
