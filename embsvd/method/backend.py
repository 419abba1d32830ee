"""The method's linear algebra with torch on an accelerator (``analysis.device=cuda``).

numpy on the CPU is the default and the reference; torch is imported only when a config
names another device. On a GPU the vocabulary-sized product (projecting every token on
the axes) and the group's SVD run there, in float64 like the numpy path, and the
results come back as numpy arrays; ``decompose`` then fixes the SVD's signs with the same
``svd_flip`` as the numpy path's, so a run on a GPU reports the same axes.
"""

from __future__ import annotations

import numpy as np

_ON_DEVICE: dict[tuple, object] = {}  # the last matrix moved to a device, by identity


def check_device(device: str):
    """The ``torch.device`` for ``device``, or a ValueError that says why it is unusable."""
    try:
        import torch
    except ImportError as error:
        raise ValueError(
            f"analysis.device={device}: torch is not installed; install it, or use "
            "analysis.device=cpu (numpy)"
        ) from error
    try:
        target = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"analysis.device: {device!r} is not a torch device ({error})") from error
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"analysis.device={device}: this machine has no CUDA device "
            "(torch.cuda.is_available() is False); use analysis.device=cpu"
        )
    return target


def matrix_on(W: np.ndarray, device: str):
    """``W`` as a float64 tensor on ``device``, moved once while the same array is used."""
    import torch

    key = (W.__array_interface__["data"][0], W.shape, W.dtype.str, device)
    if key not in _ON_DEVICE:
        _ON_DEVICE.clear()  # one matrix at a time: a GPU holds few vocabularies
        _ON_DEVICE[key] = torch.as_tensor(np.asarray(W)).to(check_device(device)).double()
    return _ON_DEVICE[key]


def project_on(W: np.ndarray, offset: np.ndarray, axes: np.ndarray, device: str) -> np.ndarray:
    """``(W - offset) @ axes`` on ``device``: ``(d_vocab, n_components)`` as numpy."""
    import torch

    W_device = matrix_on(W, device)
    axes_device = torch.as_tensor(axes, device=W_device.device)
    shift = torch.as_tensor(offset @ axes, device=W_device.device)
    return (W_device @ axes_device - shift).cpu().numpy()


def svd_on(M: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``U, S, Vt`` of ``M`` (``full_matrices=False``) computed on ``device``, with the
    signs cuSOLVER or LAPACK gave: the caller applies ``embsvd.method.svd.svd_flip``."""
    import torch

    U, S, Vt = torch.linalg.svd(
        torch.as_tensor(M, dtype=torch.float64, device=check_device(device)), full_matrices=False
    )
    return U.cpu().numpy(), S.cpu().numpy(), Vt.cpu().numpy()
