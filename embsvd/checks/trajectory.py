"""How a group's axes move across training: each checkpoint's axes against the final one's.

A training-checkpoint suite (Pythia's ``step1000`` ... ``step143000``) gives one run per
step of the same configuration. Their axes live in the same ``d_model`` coordinates (one
training run's parameters), so an axis at an earlier step can be compared with the axis
of the same index at the final step:

- per axis, ``|cos|`` after matching signs: an axis is defined up to sign (``svd_flip``
  picks one by its largest entry, which a small rotation can flip), so each earlier axis
  is negated where its dot product with the final axis is negative; the cosine is then
  ``|cos|``, and the sign that matched it is kept;
- per step, the principal angles between the subspaces the first ``k`` axes span, which
  do not care about order, sign or rotation inside the subspace: two axes that trade
  places keep angles of 0 while their per-axis ``|cos|`` drops.

What it cannot tell: axes of different runs of training (seeds) or of geometries whose
coordinates differ per checkpoint (``analysis.geometry=whitened``: each checkpoint is
whitened by its own covariance) are not in one coordinate system, and their cosines say
nothing; compare only runs of one configuration of one training run.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from embsvd.io.spec import CheckpointSpec


def _unit_rows(axes: np.ndarray) -> np.ndarray:
    """``axes`` with each row scaled to unit length (a zero row is kept as zeros)."""
    axes = np.asarray(axes, dtype=np.float64)
    if axes.ndim != 2:
        raise ValueError(f"axes: expected a 2-D array (n_components, d_model), got {axes.shape}")
    norms = np.linalg.norm(axes, axis=1, keepdims=True)
    return np.divide(axes, norms, out=np.zeros_like(axes), where=norms > 0)


def _check_pair(axes: np.ndarray, reference: np.ndarray) -> None:
    if axes.shape[1] != reference.shape[1]:
        raise ValueError(
            f"axes have {axes.shape[1]} coordinates, the reference {reference.shape[1]}: "
            "axes are compared only between checkpoints of one model (the same d_model)"
        )


def match_signs(axes: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``axes`` with each row negated where it points away from the reference row of the
    same index, and the signs applied.

    Args:
        axes: Rows ``(k, d_model)``.
        reference: Rows ``(k_ref, d_model)``; the first ``min(k, k_ref)`` rows are paired.

    Returns:
        ``(matched, signs)``: ``matched`` of shape ``(m, d_model)`` and ``signs`` of shape
        ``(m,)`` (+1 or -1), ``m = min(k, k_ref)``. A dot product of exactly 0 keeps +1.
    """
    axes, reference = np.asarray(axes, np.float64), np.asarray(reference, np.float64)
    _check_pair(axes, reference)
    m = min(len(axes), len(reference))
    dots = np.einsum("ij,ij->i", axes[:m], reference[:m])
    signs = np.where(dots < 0, -1.0, 1.0)
    return axes[:m] * signs[:, None], signs


def axis_alignment(axes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per axis, the cosine with the reference axis of the same index after matching
    signs (``match_signs``), that is ``|cos|``: 1 for the same axis, 0 for orthogonal
    ones. Shape ``(min(k, k_ref),)``."""
    matched, _ = match_signs(_unit_rows(axes), _unit_rows(reference))
    m = len(matched)
    cosines = np.einsum("ij,ij->i", matched, _unit_rows(reference)[:m])
    return np.clip(cosines, 0.0, 1.0)


def principal_angles(axes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The principal angles (radians, ascending) between the subspaces spanned by the
    rows of ``axes`` and of ``reference``: ``arccos`` of the singular values of
    ``Q1^T Q2``, where ``Q1``, ``Q2`` are orthonormal bases of the two row spaces (QR).
    As many angles as the smaller subspace has dimensions; 0 where they share a direction,
    pi/2 where they are orthogonal."""
    axes, reference = np.asarray(axes, np.float64), np.asarray(reference, np.float64)
    _check_pair(axes, reference)
    q1, _ = np.linalg.qr(axes.T)
    q2, _ = np.linalg.qr(reference.T)
    cosines = np.linalg.svd(q1.T @ q2, compute_uv=False)
    # rounding can push a cosine of identical subspaces a hair above 1
    return np.sort(np.arccos(np.clip(cosines, -1.0, 1.0)))


@dataclass(frozen=True)
class AxisTrajectory:
    """Each checkpoint's axes against the final checkpoint's, in training order.

    Attributes:
        abs_cos: ``(n_steps, k)``: per step and axis, ``|cos|`` with the final axis.
        signs: ``(n_steps, k)``: the sign that matched each axis to the final one.
        angles: ``(n_steps, k)``: the principal angles (radians, ascending) between the
            subspaces of the first ``k`` axes of each step and of the final step.
    """

    abs_cos: np.ndarray
    signs: np.ndarray
    angles: np.ndarray


def axis_trajectory(axes_by_step: list[np.ndarray]) -> AxisTrajectory:
    """Align every step's axes with the last step's (``axis_alignment``,
    ``principal_angles``), on the ``k`` axes every step has.

    Args:
        axes_by_step: One ``(k_i, d_model)`` array of axes per checkpoint, in training
            order; the last is the reference.

    Raises:
        ValueError: no steps, or steps whose axes have different ``d_model``.
    """
    if not axes_by_step:
        raise ValueError("axes_by_step: no checkpoints to align")
    k = min(len(axes) for axes in axes_by_step)
    final = np.asarray(axes_by_step[-1], np.float64)[:k]
    abs_cos, signs, angles = [], [], []
    for axes in axes_by_step:
        axes = np.asarray(axes, np.float64)[:k]
        abs_cos.append(axis_alignment(axes, final))
        signs.append(match_signs(axes, final)[1])
        angles.append(principal_angles(axes, final))
    return AxisTrajectory(np.array(abs_cos), np.array(signs), np.array(angles))


STEP_NAME = re.compile(r"step[_-]?(\d+)$", re.IGNORECASE)


def step_number(revision: str | None) -> int | None:
    """The training step a revision's name gives, ``stepN`` (Pythia's branches, also
    ``ckpt-step_1000``'s tail); ``None`` for any other name (``main``, a commit)."""
    if not revision:
        return None
    match = STEP_NAME.search(revision)
    return int(match[1]) if match else None


def training_order(revisions: list[str], steps: list[str] | None = None) -> list[str]:
    """``revisions`` in training order: as ``steps`` (``model.steps``) lists them when it
    is given, else by the step their ``stepN`` names give.

    Raises:
        ValueError: a revision not in ``steps``, or (without ``steps``) a name that gives
            no step, or two names that give the same step; the message names
            ``model.steps``, which fixes each.
    """
    unique = list(dict.fromkeys(revisions))
    if steps:
        missing = [r for r in unique if r not in steps]
        if missing:
            raise ValueError(
                f"revisions {', '.join(missing)} are not in model.steps ({', '.join(steps)}): "
                "list every swept revision there, in training order"
            )
        return sorted(unique, key=steps.index)
    numbers = {revision: step_number(revision) for revision in unique}
    unnamed = [r for r, n in numbers.items() if n is None]
    counts = Counter(numbers.values())
    clashing = [r for r, n in numbers.items() if n is not None and counts[n] > 1]
    if unnamed or clashing:
        problem = (
            f"{', '.join(unnamed)} give no step (names like step1000 do)"
            if unnamed
            else f"{', '.join(clashing)} give the same step"
        )
        raise ValueError(
            f"the sweep's revisions have no training order: {problem}; declare it with "
            f"model.steps=[{','.join(unique)}] (in training order)"
        )
    return sorted(unique, key=numbers.__getitem__)


def identical_embeddings(hashes: Mapping[str, str]) -> list[list[str]]:
    """The revisions whose analysed matrices have the same hash (``revision -> SHA-256``):
    one list per hash that more than one revision shares, in the order given. A
    checkpoint suite that saved a step without training it (or copied a branch) shows up
    here; its runs are the same analysis, not a trajectory."""
    by_hash: dict[str, list[str]] = {}
    for revision, digest in hashes.items():
        if digest:
            by_hash.setdefault(digest, []).append(revision)
    return [revisions for revisions in by_hash.values() if len(revisions) > 1]


def check_steps(model: CheckpointSpec) -> None:
    """Refuse a ``model.steps`` that cannot order a sweep: not a list of distinct,
    non-empty revision names, or one that leaves out ``model.revision`` (``main`` when
    none is set).

    Raises:
        ValueError: naming ``model.steps``, what is wrong and the fix.
    """
    steps = model.steps
    if steps is None:
        return
    names = [str(step) for step in steps]
    if not names or any(not name.strip() for name in names):
        raise ValueError(
            f"model.steps: {names!r} is not a training order: list the revisions, e.g. "
            "model.steps=[step0,step1000,step2000], or set it to null for the order stepN "
            "names give"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"model.steps: {', '.join(repeated)} listed twice; list each once")
    revision = model.revision or "main"
    if revision not in names:
        raise ValueError(
            f"model.revision: {revision!r} is not in model.steps ({', '.join(names)}); add it "
            "where it comes in training, or sweep only the listed revisions"
        )
