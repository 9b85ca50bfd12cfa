"""Learned whitening from matching pairs ("Lw", Radenović, Tolias & Chum, TPAMI 2018 §3.3; after Mikolajczyk &
Matas 2007), the supervised alternative to PCA-whitening (:mod:`vitrieval.pca`).

From descriptors ``X`` (N × d, unit rows) and matching (query, positive) pairs ``(q_k, p_k)``, k = 1..P:

    μ   = (1/P) Σ_k x_{q_k}                                     mean of the pairs' query descriptors
    S_w = (1/P) Σ_k (x_{q_k} − x_{p_k})(x_{q_k} − x_{p_k})ᵀ     scatter of matching pairs (intra-class)
    S_w = L Lᵀ  (Cholesky; ε·I added, ε = 1e-10, 1e-9, ..., until positive definite)
    S_b = Σ_i L⁻¹ (x_i − μ)(x_i − μ)ᵀ L⁻ᵀ                       scatter of all descriptors, once whitened by L⁻¹
    S_b = E Λ Eᵀ  (eigenvalues in decreasing order)
    P   = Eᵀ L⁻¹ ;   y = L2( P_{1..D} (x − μ) )

so that ``P S_w Pᵀ = I`` (matching pairs become isotropic) and ``P S_b' Pᵀ`` is diagonal, decreasing
(``S_b'`` = the scatter of ``X`` itself): the rows of ``P`` are the generalised eigenvectors of ``(S_b', S_w)``,
scaled by ``S_w``. Keeping the first ``D`` rows keeps the most discriminative directions. The map is stored as a
:class:`~vitrieval.pca.PCAReduction` (``y = normalize(x Aᵀ + b)`` with ``A = P_{1..D}``, ``b = −A μ``,
``whiten=True``), so it saves and loads with the model exactly like a PCA.
"""

from __future__ import annotations

import logging

import numpy as np

from vitrieval.pca import PCAReduction

log = logging.getLogger(__name__)

__all__ = ["learn_whitening", "regularised_cholesky"]


def regularised_cholesky(s: np.ndarray, max_tries: int = 20) -> np.ndarray:
    """Lower-triangular ``L`` with ``L Lᵀ = S + ε I``: ε = 0, then 1e-10, growing ×10 until ``S + ε I`` is
    positive definite (cirtorch's rule: fewer pairs than dimensions leave ``S_w`` singular)."""
    eps = 0.0
    eye = np.eye(s.shape[0], dtype=s.dtype)
    for _ in range(max_tries):
        try:
            return np.linalg.cholesky(s + eps * eye)
        except np.linalg.LinAlgError:
            eps = 1e-10 if eps == 0 else eps * 10
            log.info("learned whitening: pair scatter not positive definite, adding %.0e on the diagonal", eps)
    raise ValueError("learned whitening: the scatter of the matching pairs is not positive definite even with "
                     f"{eps:.0e} added on its diagonal")


def learn_whitening(descriptors: np.ndarray, pairs: np.ndarray, dim: int | None = None) -> PCAReduction:
    """Lw (module docstring) of ``descriptors`` (N × d) from ``pairs`` ((P, 2) row indices: query, positive);
    ``dim`` keeps the first components (default: all ``d``). Computed in float64 on the L2-normalised rows (as
    cirtorch whitens normalised descriptors); the reduction normalises its input the same way (``normalize_input``)."""
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim == 2:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"learned whitening needs an (N >= 2) x d array of descriptors, got shape {x.shape}")
    n, d = x.shape
    pr = np.asarray(pairs)
    if pr.ndim != 2 or pr.shape[1] != 2 or len(pr) == 0 or pr.dtype.kind not in "iu":
        raise ValueError(f"pairs must be a non-empty (P, 2) integer array of (query, positive) rows, got {pr.shape}")
    if pr.min() < 0 or pr.max() >= n:
        raise ValueError(f"pairs index rows outside 0..{n - 1}")
    dim = d if dim is None else int(dim)
    if not 0 < dim <= d:
        raise ValueError(f"learned whitening dimension must be in 1..{d}, got {dim}")
    mu = x[pr[:, 0]].mean(axis=0)
    diff = x[pr[:, 0]] - x[pr[:, 1]]
    s_w = diff.T @ diff / len(pr)
    l_inv = np.linalg.inv(regularised_cholesky((s_w + s_w.T) / 2))
    centred = (x - mu) @ l_inv.T
    s_b = centred.T @ centred
    eigval, eigvec = np.linalg.eigh((s_b + s_b.T) / 2)
    order = np.argsort(eigval)[::-1]
    projection = eigvec[:, order].T @ l_inv
    matrix = projection[:dim]
    return PCAReduction(matrix.astype(np.float32), (-matrix @ mu).astype(np.float32), whiten=True,
                        normalize_input=True)
