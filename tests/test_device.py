"""The torch path of analysis.device against numpy, and its errors on a machine without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embsvd.method.analysis import decompose, project
from embsvd.method.backend import check_device, project_on, svd_on
from embsvd.method.svd import svd_flip

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def test_torch_projection_and_svd_equal_numpys():
    rng = np.random.default_rng(0)
    W = (rng.normal(size=(500, 12)) + 0.3).astype(np.float32)
    svd = decompose(W[:7], center=True)
    axes = svd.Vt[:3].T
    np.testing.assert_allclose(
        project_on(W, svd.offset, axes, "cpu"), project(W, svd, 3), atol=1e-12
    )
    M = W[:7].astype(np.float64) - svd.mean
    U, S, Vt = svd_on(M, "cpu")
    U, Vt = svd_flip(U, Vt)
    np.testing.assert_allclose(S, svd.singular_values, atol=1e-12)
    np.testing.assert_allclose(Vt[:6], svd.Vt[:6], atol=1e-10)  # the 7th is a null direction


@no_cuda
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match=r"analysis.device=cuda: this machine has no CUDA device"):
        check_device("cuda")
    with pytest.raises(ValueError, match=r"analysis.device: 'gpu0' is not a torch device"):
        check_device("gpu0")
    with pytest.raises(ValueError, match="no CUDA device"):
        decompose(np.ones((3, 4)), center=True, device="cuda")
