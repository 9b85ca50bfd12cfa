"""The IRT training objective: ``L = L_contr(batch) + w · L_contr(batch, memory) + λ · L_KoLeo(batch)``.

IRT_L is λ = 0, IRT_R is λ > 0 (0.7 for SOP / CUB / In-Shop). The memory term starts at
``memory.start_iteration``; from then on the batch is enqueued first and compared with the memory without its own
copies (the XBM reference order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vitrieval.config import LossConfig, MemoryConfig
from vitrieval.losses import contrastive_loss, koleo_loss
from vitrieval.training.memory import CrossBatchMemory


@dataclass
class LossTerms:
    total: torch.Tensor
    contrastive: torch.Tensor
    memory: torch.Tensor
    koleo: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), "loss_contrastive": float(self.contrastive.detach()),
                "loss_memory": float(self.memory.detach()), "loss_koleo": float(self.koleo.detach())}


class IRTObjective:
    """Contrastive (batch and cross-batch memory) + KoLeo, as configured."""

    def __init__(self, loss: LossConfig, memory: MemoryConfig, dim: int, device: torch.device | str = "cpu") -> None:
        self.loss_cfg = loss
        self.memory_cfg = memory
        self.memory = CrossBatchMemory(memory.size, dim, device) if memory.size > 0 else None

    def memory_active(self, iteration: int) -> bool:
        return self.memory is not None and iteration >= self.memory_cfg.start_iteration

    def __call__(self, z: torch.Tensor, labels: torch.Tensor, iteration: int,
                 z_for_memory: torch.Tensor | None = None, z_local: torch.Tensor | None = None) -> LossTerms:
        """Loss terms for one batch of unit descriptors ``z`` at ``iteration`` (0-based optimizer step).

        ``z_for_memory`` (e.g. the momentum encoder's embeddings of the same batch) is what gets enqueued;
        by default the detached ``z``. Under torchrun ``z`` is the gathered global batch and ``z_local`` this
        rank's part, on which KoLeo is computed unless ``loss.koleo_global``.
        """
        margin = self.loss_cfg.margin
        l_batch = contrastive_loss(z, labels, margin)
        zero = l_batch.new_zeros(())
        l_mem = zero
        if self.memory_active(iteration):
            assert self.memory is not None
            self.memory.enqueue(z_for_memory if z_for_memory is not None else z.detach(), labels)
            ref_z, ref_y = self.memory.contents(exclude_last_batch=True)
            if len(ref_z):
                l_mem = contrastive_loss(z, labels, margin, ref_z, ref_y)
        koleo_input = z if (z_local is None or self.loss_cfg.koleo_global) else z_local
        l_koleo = koleo_loss(koleo_input, self.loss_cfg.koleo_eps) if self.loss_cfg.koleo_weight > 0 else zero
        total = l_batch + self.memory_cfg.weight * l_mem + self.loss_cfg.koleo_weight * l_koleo
        return LossTerms(total, l_batch, l_mem, l_koleo)

    def backward_loss(self, terms: LossTerms, world_size: int = 1) -> torch.Tensor:
        """What to back-propagate so that DDP's gradient *average* equals the global objective's gradient.

        Terms over the gathered batch only reach the local part's parameters through that rank, so they are
        scaled by ``world_size``; a per-rank KoLeo is already the quantity whose rank average is wanted.
        """
        if world_size == 1:
            return terms.total
        koleo_scale = world_size if self.loss_cfg.koleo_global else 1
        return (world_size * (terms.contrastive + self.memory_cfg.weight * terms.memory)
                + self.loss_cfg.koleo_weight * koleo_scale * terms.koleo)
