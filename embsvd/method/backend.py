"""The method's linear algebra with torch on an accelerator (``analysis.device=cuda``).

numpy on the CPU is the default and the reference; torch is imported only when a config
names another device. On a GPU the vocabulary-sized product (projecting every token on
the axes) and the group's SVD run there, in float64 like the numpy path, and the
results come back as numpy arrays; ``decompose`` then fixes the SVD's signs with the same
``svd_flip`` as the numpy path's, so a run on a GPU reports the same axes.

The matrix moves to the device once, as stored (float32 as float32, a bfloat16
``BFloat16Rows`` as a bfloat16 tensor of its own size), and is widened to float64 there a
block of rows at a time, as the numpy path widens it on the CPU: no float64 copy of the
whole vocabulary is made on either side. A matrix whose rows are computed when read
(``UnitRows``) is sent a block at a time.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from embsvd.io.rows import BFloat16Rows, NarrowRows, block_rows_for, is_streamed, row_blocks

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


def matrix_on(W: Any, device: str):
    """``W`` as a tensor on ``device`` in its stored dtype (float32, float64, bfloat16,
    float16), moved once while the same matrix is used; ``None`` for a matrix whose rows
    are computed when read (sent a block at a time instead)."""
    import torch

    stored = W.raw if isinstance(W, NarrowRows) else W
    if is_streamed(stored):
        return None
    key = (stored.__array_interface__["data"][0], stored.shape, stored.dtype.str, device)
    if key not in _ON_DEVICE:
        _ON_DEVICE.clear()  # one matrix at a time: a GPU holds few vocabularies
        array = np.asarray(stored)
        with warnings.catch_warnings():  # a read-only memory-map: torch never writes it
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            tensor = torch.as_tensor(array.view(np.int16) if isinstance(W, BFloat16Rows) else array)
        if isinstance(W, BFloat16Rows):  # the stored bits, read as bfloat16 by torch
            tensor = tensor.view(torch.bfloat16)
        _ON_DEVICE[key] = tensor.to(check_device(device))
    return _ON_DEVICE[key]


def project_on(W: Any, offset: np.ndarray, axes: np.ndarray, device: str) -> np.ndarray:
    """``(W - offset) @ axes`` on ``device``: ``(d_vocab, n_components)`` as numpy, in
    float64 (each block of ``W``'s rows widened to float64 on the device)."""
    import torch

    target = check_device(device)
    # a copy: the axes may be a memoized SVD's read-only array, which torch will not wrap
    axes_device = torch.tensor(axes, dtype=torch.float64, device=target)
    shift = torch.as_tensor(offset @ axes, dtype=torch.float64, device=target)
    W_device = matrix_on(W, device)
    out = torch.empty((len(W), axes.shape[1]), dtype=torch.float64, device=target)
    if W_device is None:
        for rows, block in row_blocks(W):
            out[rows] = torch.as_tensor(block, device=target).double() @ axes_device
    else:
        step = block_rows_for(W)
        for start in range(0, len(W), step):
            rows = slice(start, start + step)
            out[rows] = W_device[rows].double() @ axes_device
    return (out - shift).cpu().numpy()


def svd_on(M: np.ndarray, device: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``U, S, Vt`` of ``M`` (``full_matrices=False``) computed on ``device``, with the
    signs cuSOLVER or LAPACK gave: the caller applies ``embsvd.method.svd.svd_flip``."""
    import torch

    U, S, Vt = torch.linalg.svd(
        torch.as_tensor(M, dtype=torch.float64, device=check_device(device)), full_matrices=False
    )
    return U.cpu().numpy(), S.cpu().numpy(), Vt.cpu().numpy()
