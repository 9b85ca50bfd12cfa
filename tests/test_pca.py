"""PCAReduction: y = normalize(A (x - mu)) fitted with faiss, whitening, and its safetensors file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitrieval.pca import PCAReduction


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 12)) * np.linspace(5, 0.1, 12)).astype(np.float32)
    pca = PCAReduction.fit(x, 3)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:3].T
    proj /= np.linalg.norm(proj, axis=1, keepdims=True)
    got = pca.apply_numpy(x)
    assert np.allclose(np.abs(got), np.abs(proj), atol=1e-4)  # same principal axes (each up to its sign)


def test_whitening_equalises_the_variance_of_the_components():
    """Before the L2 normalisation: plain components keep the data's variance ratios (8^2 : 4^2 : 2^2), whitened
    ones (scaled by eigenvalue^-1/2) all have the same variance, and both are centred and decorrelated."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((2000, 6)) * np.array([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])).astype(np.float32)
    for whiten, ratios in ((False, [1.0, 0.25, 0.0625]), (True, [1.0, 1.0, 1.0])):
        pca = PCAReduction.fit(x, 3, whiten=whiten)
        assert pca.whiten is whiten and (pca.in_dim, pca.out_dim) == (6, 3)
        with torch.no_grad():
            y = (torch.from_numpy(x) @ pca.matrix.T + pca.bias).numpy()
        cov = np.cov(y, rowvar=False)
        assert np.allclose(y.mean(0), 0.0, atol=1e-3 * np.sqrt(cov[0, 0]))
        assert np.allclose(np.diag(cov) / cov[0, 0], ratios, rtol=0.1)
        assert np.all(np.abs(cov - np.diag(np.diag(cov))) < 1e-3 * cov[0, 0])
        assert np.allclose(np.linalg.norm(pca.apply_numpy(x), axis=1), 1.0, atol=1e-5)


def test_save_load_round_trip_keeps_matrix_bias_and_whitening(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    for whiten in (False, True):
        pca = PCAReduction.fit(x, 4, whiten=whiten)
        pca.save(tmp_path / "pca.safetensors")
        back = PCAReduction.load(tmp_path / "pca.safetensors")
        assert back.whiten is whiten
        assert torch.equal(back.matrix, pca.matrix) and torch.equal(back.bias, pca.bias)


def test_fit_errors():
    x = np.zeros((10, 4), np.float32)
    with pytest.raises(ValueError, match="1..4"):
        PCAReduction.fit(x, 5)
    with pytest.raises(ValueError, match="at least 2"):
        PCAReduction.fit(x[:1], 2)
