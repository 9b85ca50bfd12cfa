"""PCA (optionally whitened) reduction of descriptors, fitted with faiss, applied before normalising.

``y = normalize(A (x − μ))`` where the rows of A are the top principal directions (scaled by
``eigenvalue^(-1/2)`` when whitening). faiss's ``PCAMatrix`` stores it as ``y = A x + b`` with ``b = −A μ``.

``x`` is the encoder's *pooled* vector, not yet L2-normalised: the paper's §3.2 order pool → PCA → L2
(:meth:`vitrieval.model.Encoder.reduce`). A reduction with ``normalize_input`` first L2-normalises ``x``
(``y = normalize(A (x/‖x‖ − μ))``): learned whitening (cirtorch whitens L2-normalised descriptors), and a PCA file
written before the order was fixed (it was fitted on L2-normalised descriptors; a file without the
``normalize_input`` record is read as such, so it keeps giving what it gave).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class PCAReduction(torch.nn.Module):
    """A fitted linear reduction ``y = normalize(x Aᵀ + b)`` (``x`` L2-normalised first with ``normalize_input``);
    buffers so it saves with the model."""

    def __init__(self, matrix: np.ndarray | torch.Tensor, bias: np.ndarray | torch.Tensor,
                 whiten: bool = False, normalize_input: bool = False) -> None:
        super().__init__()
        self.normalize_input = normalize_input
        self.register_buffer("matrix", torch.as_tensor(np.asarray(matrix), dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(np.asarray(bias), dtype=torch.float32))
        self.whiten = whiten

    @property
    def in_dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.matrix.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if self.normalize_input:
            x = torch.nn.functional.normalize(x, dim=-1)
        y = x @ self.matrix.T + self.bias
        return torch.nn.functional.normalize(y, dim=-1)

    def apply_numpy(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.forward(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

    @classmethod
    def fit(cls, descriptors: np.ndarray, dim: int, whiten: bool = False) -> PCAReduction:
        """Fit on ``descriptors`` (n × d) with ``faiss.PCAMatrix`` (eigen_power −0.5 when whitening)."""
        import faiss

        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        n, d = x.shape
        if not 0 < dim <= d:
            raise ValueError(f"PCA dimension must be in 1..{d}, got {dim}")
        if n < 2:
            raise ValueError(f"PCA needs at least 2 descriptors to fit, got {n}")
        pca = faiss.PCAMatrix(d, dim, -0.5 if whiten else 0.0)
        pca.train(x)
        matrix = faiss.vector_to_array(pca.A).reshape(d, d)[:dim] if pca.A.size() == d * d else \
            faiss.vector_to_array(pca.A).reshape(dim, d)
        bias = faiss.vector_to_array(pca.b)[:dim]
        return cls(matrix, bias, whiten)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        from vitrieval.io_utils import atomic_path

        with atomic_path(path) as tmp:
            save_file({"matrix": self.matrix.contiguous(), "bias": self.bias.contiguous()}, str(tmp),
                      metadata={"whiten": str(int(self.whiten)), "normalize_input": str(int(self.normalize_input))})

    @classmethod
    def load(cls, path: str | Path) -> PCAReduction:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            # no record: a file from before pool -> PCA -> L2, fitted on L2-normalised descriptors
            return cls(fh.get_tensor("matrix"), fh.get_tensor("bias"), meta.get("whiten", "0") == "1",
                       meta.get("normalize_input", "1") == "1")
