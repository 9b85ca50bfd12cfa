"""γ of the paper's Fig 4: how noisy the contrastive loss's gradient directions are, for one batch.

With ``g_i = ∂L_contr/∂z_i`` (the gradient of the batch's Eq. 1 loss with respect to descriptor ``i``) and its
direction ``ĝ_i = g_i / ‖g_i‖`` (descriptors whose gradient is zero are left out)::

    C = 1/n Σ_i (ĝ_i − ḡ)(ĝ_i − ḡ)ᵀ,   ḡ = 1/n Σ_i ĝ_i,        γ = ‖C‖_*  (nuclear norm)

``C`` is symmetric positive semi-definite, so ``‖C‖_* = trace C = 1 − ‖ḡ‖²``: 0 when every descriptor is pushed
the same way, close to 1 when the directions are spread out. The paper averages γ over training iterations; this
is the per-batch value. With ``train.log_gradient_noise=true`` the P × K trainer logs it, for the batch of every
logged step (after the gather: the global batch under torchrun), as ``grad_noise_nuclear`` in ``metrics.jsonl`` and
TensorBoard; ``vitrieval report`` plots it per run and averaged against the margin β (Fig 4).
"""

from __future__ import annotations

import torch

from vitrieval.losses import contrastive_loss

#: The ``metrics.jsonl`` / TensorBoard key of γ (:func:`gradient_noise` of a logged step's batch).
GRADIENT_NOISE_KEY = "grad_noise_nuclear"


def gradient_directions(z: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> torch.Tensor:
    """``ĝ_i`` for every descriptor with a non-zero gradient of the batch contrastive loss (rows, float64)."""
    leaf = z.detach().to(torch.float64).requires_grad_(True)
    (grad,) = torch.autograd.grad(contrastive_loss(leaf, labels, margin), leaf)
    norms = grad.norm(dim=1, keepdim=True)
    keep = norms.squeeze(1) > 0
    return grad[keep] / norms[keep]


def gradient_noise(z: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> float:
    """γ = ‖Cov(ĝ)‖_* of one batch of unit descriptors ``z`` (module docstring); ``nan`` if no gradient."""
    g = gradient_directions(z, labels, margin)
    if len(g) == 0:
        return float("nan")
    centred = g - g.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / len(g)
    return float(torch.linalg.matrix_norm(cov, ord="nuc"))
