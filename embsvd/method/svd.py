"""The one sign convention of every singular and eigenvector decomposition in embsvd.

A singular vector is defined only up to sign: ``U[:, k]`` and ``Vt[k]`` can both be negated
and ``U diag(S) Vt`` is unchanged, and which of the two a LAPACK, BLAS or torch build
returns is arbitrary. Every decomposition whose vectors reach a user or a statistic (the
group SVD on numpy or torch, the global SVD, the checks' refits) passes through
:func:`svd_flip`, so that they all agree.
"""

from __future__ import annotations

import numpy as np


def svd_flip(U: np.ndarray | None, Vt: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Make the largest-|.| entry of each row of ``Vt`` positive, flipping ``U`` to match.

    This is scikit-learn's ``svd_flip(u, v, u_based_decision=False)``, the convention of its
    ``PCA`` and ``TruncatedSVD`` since 1.5. It is V-based because the rows of ``Vt`` (axes in
    ``d_model`` space) are what users read and project the vocabulary on, and because a
    V-based sign depends only on the axis itself, not on which rows were decomposed: a refit
    on part of the group (leave-one-out, the jackknife, a held-out split) whose axis keeps
    its largest entry at the same coordinate points the same way, so its top and bottom
    tokens stay at the same ends. A U-based sign makes the member with the largest
    coordinate positive, so leaving out that one member can reverse an axis that barely
    moved. Ties go to the first index (``argmax``), so equal magnitudes still give one
    answer.

    What it cannot promise: the rule is a step function of the axis. A dense axis in a wide
    space has near-equal largest entries (0.142, 0.138, 0.136 for the bundled MiniLM's
    centered digit axis, ``d_model = 384``), so a refit rotated by a few degrees can move the
    largest entry to a coordinate of the other sign and come back reversed. Code that
    compares a refit with the full fit must align them itself (``|cos|``, or the sign of
    their dot product), as ``embsvd.checks.stability`` does.

    Args:
        U: Left singular vectors as columns, ``(..., n, k)``, or None (an
            eigendecomposition, or an SVD whose ``U`` is not kept).
        Vt: Right singular vectors as rows, ``(..., k, d_model)``; leading axes batch a
            stack of decompositions.

    Returns:
        ``(U, Vt)`` flipped (new arrays), ``U`` None when it was None.
    """
    Vt = np.asarray(Vt)
    biggest = np.argmax(np.abs(Vt), axis=-1)  # (..., k)
    signs = np.sign(np.take_along_axis(Vt, biggest[..., None], axis=-1))[..., 0]
    signs[signs == 0] = 1.0  # an all-zero row has no direction to fix
    if U is None:
        return None, Vt * signs[..., :, None]
    return np.asarray(U) * signs[..., None, :], Vt * signs[..., :, None]
