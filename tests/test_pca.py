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


# -- learned whitening (Lw) -----------------------------------------------------------------------------------------

def _pairs_data(seed: int = 0, n_classes: int = 40, per_class: int = 4, d: int = 6):
    """Unit descriptors of classes with a few members each, and every (first member, other member) pair."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d)) * np.linspace(3, 0.5, d)
    noise = rng.standard_normal((n_classes, per_class, d)) * np.linspace(0.1, 1.0, d)
    x = (centres[:, None] + noise).reshape(-1, d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pairs = np.array([(c * per_class, c * per_class + j) for c in range(n_classes) for j in range(1, per_class)])
    return x.astype(np.float32), pairs


def test_learned_whitening_is_the_generalised_eigenproblem_of_the_two_scatters():
    """Independent computation: scipy's generalised symmetric eigensolver on (S_b', S_w), eigenvectors scaled so
    that vᵀ S_w v = 1, in decreasing order of eigenvalue; Lw's rows are those vectors, up to their signs."""
    import scipy.linalg

    from vitrieval.whitening import learn_whitening

    x, pairs = _pairs_data()
    lw = learn_whitening(x, pairs)
    x64 = x.astype(np.float64)
    mu = x64[pairs[:, 0]].mean(0)
    diff = x64[pairs[:, 0]] - x64[pairs[:, 1]]
    s_w = diff.T @ diff / len(pairs)
    s_b = (x64 - mu).T @ (x64 - mu)
    vals, vecs = scipy.linalg.eigh(s_b, s_w)
    expected = vecs[:, ::-1].T  # rows, decreasing eigenvalue
    got = lw.matrix.numpy().astype(np.float64)
    signs = np.sign(np.sum(got * expected, axis=1))
    np.testing.assert_allclose(got, signs[:, None] * expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(lw.bias.numpy(), -(got @ mu), rtol=1e-4, atol=1e-5)
    # matching pairs are isotropic after the map; the whole set's scatter is diagonal and decreasing
    np.testing.assert_allclose(got @ s_w @ got.T, np.eye(6), atol=1e-4)
    sb_w = got @ s_b @ got.T
    np.testing.assert_allclose(sb_w, np.diag(np.diag(sb_w)), atol=1e-3 * sb_w.max())
    assert np.all(np.diff(np.diag(sb_w)) < 0)
    # applied like a PCA: y = normalize(P (x - mu)), the first D rows when a dimension is given
    lw3 = learn_whitening(x, pairs, dim=3)
    y = (x64 - mu) @ got[:3].T
    np.testing.assert_allclose(lw3.apply_numpy(x), y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-4)
    assert (lw3.in_dim, lw3.out_dim, lw3.whiten) == (6, 3, True)


def test_learned_whitening_with_fewer_pairs_than_dimensions_regularises_and_checks_its_input():
    from vitrieval.whitening import learn_whitening

    x, pairs = _pairs_data(d=6)
    lw = learn_whitening(x, pairs[:3], dim=2)  # S_w of rank <= 3 in 6-d: ε·I is added until Cholesky succeeds
    assert np.all(np.isfinite(lw.matrix.numpy())) and lw.out_dim == 2
    for bad_pairs, dim in ((np.array([[0, 999]]), None), (np.zeros((0, 2), dtype=np.int64), None),
                           (pairs, 7), (pairs.astype(np.float32), None)):
        with pytest.raises(ValueError):
            learn_whitening(x, bad_pairs, dim)


def test_normalize_input_is_saved_and_a_file_without_the_record_reads_as_normalising(tmp_path):
    """A PCA fitted on pooled vectors applies to them as they are (pool -> PCA -> L2); one with ``normalize_input``
    (learned whitening, and files from before that record existed, fitted on L2-normalised vectors) first
    normalises: y = L2(A x/|x| + b)."""
    from safetensors.torch import save_file

    from vitrieval.whitening import learn_whitening

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5)).astype(np.float32) * rng.uniform(0.5, 3, size=(30, 1)).astype(np.float32)
    pca = PCAReduction.fit(x, 3)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    by_hand = x @ pca.matrix.numpy().T + pca.bias.numpy()
    np.testing.assert_allclose(pca.apply_numpy(x), by_hand / np.linalg.norm(by_hand, axis=1, keepdims=True),
                               atol=1e-5)
    pca.save(tmp_path / "new.safetensors")
    assert PCAReduction.load(tmp_path / "new.safetensors").normalize_input is False
    save_file({"matrix": pca.matrix, "bias": pca.bias}, str(tmp_path / "old.safetensors"), metadata={"whiten": "0"})
    old = PCAReduction.load(tmp_path / "old.safetensors")
    assert old.normalize_input is True
    by_hand = unit @ pca.matrix.numpy().T + pca.bias.numpy()
    np.testing.assert_allclose(old.apply_numpy(x), by_hand / np.linalg.norm(by_hand, axis=1, keepdims=True),
                               atol=1e-5)
    assert learn_whitening(x, np.array([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]), 3).normalize_input
