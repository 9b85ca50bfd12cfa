"""Momentum encoder: an exponential moving average of the trained encoder, feeding the cross-batch memory.

After each optimizer step, ``θ_m ← m · θ_m + (1 − m) · θ`` (m = 0.999 for In-Shop in the paper); the embeddings
queued in the memory come from this slowly moving copy, so they stay consistent across iterations.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class MomentumEncoder(nn.Module):
    """A frozen EMA copy of ``encoder``; call :meth:`update` after every optimizer step."""

    def __init__(self, encoder: nn.Module, momentum: float = 0.999) -> None:
        super().__init__()
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        self.momentum = momentum
        self.encoder = copy.deepcopy(encoder)
        self.encoder.pca = None
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, encoder: nn.Module) -> None:
        m = self.momentum
        for p_m, p in zip(self.encoder.parameters(), encoder.parameters()):
            p_m.mul_(m).add_(p.detach(), alpha=1.0 - m)
        for b_m, b in zip(self.encoder.buffers(), encoder.buffers()):
            b_m.copy_(b)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.encoder.eval()
        return self.encoder(images)
