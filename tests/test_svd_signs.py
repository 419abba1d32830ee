"""The one sign convention of every SVD (V-based ``svd_flip``), on random and planted groups."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.extmath import svd_flip as sk_svd_flip

from embsvd.checks.stability import _decompose_stack
from embsvd.method import backend
from embsvd.method.analysis import decompose, project
from embsvd.method.geometry import global_svd
from embsvd.method.svd import svd_flip

ATOL = 1e-12
SHAPES = [(12, 5), (5, 12), (7, 7), (10, 384)]  # tall, wide (a group), square, MiniLM-wide


def random_svd(shape: tuple[int, int], seed: int) -> tuple[np.ndarray, ...]:
    M = np.random.default_rng(seed).normal(size=shape)
    return (M, *np.linalg.svd(M, full_matrices=False))


def biggest_entries(Vt: np.ndarray) -> np.ndarray:
    """The largest-|.| entry of each row of ``Vt`` (``(..., k, d)`` -> ``(..., k)``)."""
    index = np.argmax(np.abs(Vt), axis=-1)
    return np.take_along_axis(Vt, index[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("shape", SHAPES)
def test_the_largest_entry_of_every_axis_is_positive_and_the_svd_still_holds(shape):
    M, U, S, Vt = random_svd(shape, seed=sum(shape))
    U, Vt = svd_flip(U, Vt)
    assert np.all(biggest_entries(Vt) > 0)
    np.testing.assert_allclose(U @ np.diag(S) @ Vt, M, atol=1e-10)
    k = len(S)
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=ATOL)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(k), atol=ATOL)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_signs_do_not_depend_on_the_signs_the_solver_returned(shape):
    _, U, _, Vt = random_svd(shape, seed=1)
    signs = np.random.default_rng(2).choice([-1.0, 1.0], size=len(Vt))
    # another LAPACK or cuSOLVER build may negate any pair (U[:, k], Vt[k])
    flipped = svd_flip(U * signs, Vt * signs[:, None])
    for ours, again in zip(svd_flip(U, Vt), flipped, strict=True):
        np.testing.assert_array_equal(ours, again)
    # and flipping twice changes nothing
    for once, twice in zip(flipped, svd_flip(*flipped), strict=True):
        np.testing.assert_array_equal(once, twice)


def test_the_convention_is_scikit_learns_v_based_svd_flip():
    _, U, _, Vt = random_svd((9, 6), seed=3)
    ours = svd_flip(U, Vt)
    theirs = sk_svd_flip(U.copy(), Vt.copy(), u_based_decision=False)
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])
    no_U, Vt_only = svd_flip(None, Vt)
    assert no_U is None
    np.testing.assert_array_equal(Vt_only, theirs[1])


def test_ties_go_to_the_first_index_and_stacks_flip_one_by_one():
    half = np.sqrt(0.5)
    Vt = np.array([[-half, half], [-half, -half]])  # both entries of each row tie in |.|
    np.testing.assert_array_equal(svd_flip(None, Vt)[1], [[half, -half], [half, half]])
    _, U, _, Vt = random_svd((8, 5), seed=4)
    stack_U, stack_Vt = np.stack([U, -U, U]), np.stack([Vt, -Vt, Vt])
    flipped_U, flipped_Vt = svd_flip(stack_U, stack_Vt)
    single_U, single_Vt = svd_flip(U, Vt)
    for b in range(3):
        np.testing.assert_array_equal(flipped_U[b], single_U)
        np.testing.assert_array_equal(flipped_Vt[b], single_Vt)


@pytest.mark.parametrize("center", [True, False])
def test_every_decomposition_of_embsvd_follows_it(center):
    M = np.random.default_rng(5).normal(size=(10, 16)) + 2.0
    group = decompose(M, center)
    assert np.all(biggest_entries(group.Vt) > 0)
    assert np.all(biggest_entries(global_svd(M, 5).Vt) > 0)
    _, stacked = _decompose_stack(np.stack([M, M[::-1]]), center)
    k = 9 if center else 10  # centered, the 10th axis is a null direction of no fixed sign
    np.testing.assert_allclose(stacked[0, :k], group.Vt[:k], atol=1e-10)
    # the same rows in another order: the same axes, pointing the same way
    np.testing.assert_allclose(stacked[1, :k], group.Vt[:k], atol=1e-10)


@pytest.mark.parametrize("center", [True, False])
def test_the_torch_path_gives_numpys_axes_and_signs(monkeypatch, center):
    pytest.importorskip("torch")
    calls, svd_on = [], backend.svd_on

    def spied_svd_on(M, device):
        calls.append(device)
        return svd_on(M, device)

    # decompose calls backend.svd_on: the spy proves the torch path was taken
    monkeypatch.setattr("embsvd.method.backend.svd_on", spied_svd_on)
    M = np.random.default_rng(6).normal(size=(10, 24)) + 0.5
    numpy_svd = decompose(M, center)
    torch_svd = decompose(M, center, device="cpu:0")  # any device but "cpu" goes to torch
    assert calls == ["cpu:0"]
    k = 9 if center else 10  # centered, the 10th axis is a null direction of no fixed sign
    np.testing.assert_allclose(torch_svd.singular_values, numpy_svd.singular_values, atol=ATOL)
    np.testing.assert_allclose(torch_svd.Vt[:k], numpy_svd.Vt[:k], atol=1e-10)
    np.testing.assert_allclose(torch_svd.U[:, :k], numpy_svd.U[:, :k], atol=1e-10)
    assert np.all(biggest_entries(torch_svd.Vt) > 0)


# --- leave-one-out refits of a planted group --------------------------------------------

N_ROWS, D_MODEL = 12, 8
STRENGTHS = (8.0, 4.0, 2.0)  # distinct, so each planted axis is its own singular vector
# member scores on the first planted axis: member 0 is the largest (+1.0) and member 1
# nearly as large on the other side (-0.9), so a U-based sign follows whichever is present
FIRST_AXIS_SCORES = np.array([1.0, -0.9, 0.6, -0.5, 0.4, -0.3, 0.2, -0.1, 0.0, -0.2, 0.3, -0.5])


@pytest.fixture
def planted_vocabulary() -> tuple[np.ndarray, np.ndarray]:
    """``(group, W_E)``: 12 members spread along ``e_0, e_1, e_2`` (zero-mean orthonormal
    scores times ``STRENGTHS``) plus small noise, around an offset of 1; ``W_E`` holds the
    members, then six tokens far out at ``+10 e_k`` (ids 12-14) and ``-10 e_k`` (15-17)."""
    rng = np.random.default_rng(0)
    first = FIRST_AXIS_SCORES - FIRST_AXIS_SCORES.mean()
    columns = [np.ones(N_ROWS), first, *rng.normal(size=(2, N_ROWS))]
    basis, _ = np.linalg.qr(np.column_stack(columns))
    scores = np.column_stack([first / np.linalg.norm(first), basis[:, 2:4]])
    planted = scores * np.array(STRENGTHS) @ np.eye(D_MODEL)[:3]
    group = 1.0 + planted + 0.01 * rng.normal(size=(N_ROWS, D_MODEL))
    far = 1.0 + 10.0 * np.concatenate([np.eye(D_MODEL)[:3], -np.eye(D_MODEL)[:3]])
    return group, np.concatenate([group, far])


def test_leave_one_out_refits_keep_every_axis_and_its_top_token(planted_vocabulary):
    group, W_E = planted_vocabulary
    full = decompose(group, center=True)
    np.testing.assert_allclose(full.singular_values[:3], STRENGTHS, rtol=0.01)
    top = project(W_E, full, 3).argmax(axis=0)
    np.testing.assert_array_equal(top, [12, 13, 14])  # the +10 e_k tokens
    for left_out in range(N_ROWS):
        refit = decompose(np.delete(group, left_out, axis=0), center=True)
        cosines = np.sum(refit.Vt[:3] * full.Vt[:3], axis=1)
        assert np.all(cosines > 0.9), (left_out, cosines)
        np.testing.assert_array_equal(project(W_E, refit, 3).argmax(axis=0), top)


def test_u_based_signs_reverse_an_axis_when_its_largest_member_is_left_out(planted_vocabulary):
    """Why the convention is V-based. scikit-learn's old ``u_based_decision=True`` makes the
    member with the largest coordinate on an axis positive. Member 0 (+1.0) is that member
    in the full fit; without it, member 1 (-0.9) is, so the refit's axis 0 is reversed and
    its top token becomes the full fit's bottom one, although the axis barely moved."""
    group, W_E = planted_vocabulary

    def u_based(M: np.ndarray) -> np.ndarray:
        U, _, Vt = np.linalg.svd(M - M.mean(axis=0), full_matrices=False)
        return sk_svd_flip(U, Vt, u_based_decision=True)[1][0]

    full_axis = u_based(group)
    refit_axis = u_based(np.delete(group, 0, axis=0))
    assert refit_axis @ full_axis < -0.9
    mean = np.delete(group, 0, axis=0).mean(axis=0)
    assert np.argmax((W_E - mean) @ refit_axis) == 15  # -10 e_0, the other end
    # the V-based fit of the same rows keeps the axis' direction
    refit = decompose(np.delete(group, 0, axis=0), center=True)
    assert refit.Vt[0] @ decompose(group, center=True).Vt[0] > 0.9


def test_a_near_tie_of_largest_entries_can_reverse_an_axis_that_barely_moved():
    """What the rule cannot promise, and why the stability check compares axes by ``|cos|``:
    a dense axis's two largest entries nearly tie (as in ``d_model = 384``), and a rotation
    of about a degree moves the largest one to the coordinate of the other sign."""
    axis = np.array([0.50, -0.49, 0.40, 0.35, -0.30, 0.25, 0.20, -0.18])
    axis /= np.linalg.norm(axis)
    refit = axis - 0.02 * np.eye(len(axis))[1]
    refit /= np.linalg.norm(refit)
    assert abs(refit @ axis) > 0.999
    _, both = svd_flip(None, np.stack([axis, refit]))
    assert both[0] @ both[1] < -0.999
