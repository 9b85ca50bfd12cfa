"""Training objectives behind one interface: ``objective(z, labels, iteration, ...) -> LossTerms``.

Every objective turns a batch of unit descriptors into named loss terms and their weighted total
(:class:`LossTerms`), says what to back-propagate under DDP (:meth:`Objective.backward_loss`) and what to report
(:meth:`Objective.report`, the ``loss`` / ``loss_<term>`` metric row). An objective may own trainable parameters
(:meth:`Objective.parameters`, optimised with the encoder) and state that a checkpoint must keep
(:meth:`Objective.state_dict`: top-level checkpoint entries). Two are defined here:

- :class:`IRTObjective` (P x K batches)::

      L = L_contr(batch) + w · L_contr(batch, memory) + λ · L_KoLeo(batch)

  IRT_L is λ = 0, IRT_R is λ > 0 (0.7 for SOP / CUB / In-Shop). The memory term starts at
  ``memory.start_iteration``; from then on the batch is enqueued first and compared with the memory without its
  own copies (the XBM reference order).

- :class:`TupleObjective` (mined tuples, cirtorch's procedure)::

      L = L_tuple + λ · L_KoLeo

  with ``L_tuple`` the distance-based contrastive loss summed over the tuples
  (:func:`vitrieval.losses.tuple_contrastive_loss`).

Which trainer uses which: ``train.sampler=classes`` the IRT objective, ``tuples`` the tuple objective.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from vitrieval.config import LossConfig, MemoryConfig
from vitrieval.losses import contrastive_loss, koleo_loss, tuple_contrastive_loss
from vitrieval.training.memory import CrossBatchMemory


@dataclass
class LossTerms:
    """``total`` (the objective in one process) and its named, unweighted ``terms`` (reported as ``loss_<name>``)."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.terms[name]

    def as_floats(self) -> dict[str, float]:
        """``{"loss": total, "loss_<name>": term, ...}`` as Python floats."""
        return {"loss": float(self.total.detach()),
                **{f"loss_{name}": float(value.detach()) for name, value in self.terms.items()}}


class Objective(ABC):
    """One training objective (see the module docstring for the interface)."""

    @abstractmethod
    def __call__(self, z: torch.Tensor, labels: torch.Tensor, iteration: int, *, z_local: torch.Tensor | None = None,
                 z_for_memory: torch.Tensor | None = None, tuple_size: int | None = None) -> LossTerms:
        """The loss terms of one batch.

        ``z``: the descriptors the objective is computed over, ``(N, D)``, with their ``labels`` ``(N,)``;
        ``iteration``: the 0-based optimizer step. Under torchrun ``z`` is what the trainer passes (the gathered
        global batch with ``z_local`` this rank's part, or this rank's share alone). ``z_for_memory``: what an
        objective with a memory enqueues (e.g. a momentum encoder's embeddings of the batch). ``tuple_size``: for
        tuple objectives, the images per tuple, ``z`` holding whole tuples in order ``(q, p, n_1, …)``.
        """

    @abstractmethod
    def backward_loss(self, terms: LossTerms, world_size: int = 1) -> torch.Tensor:
        """What to back-propagate so that DDP's gradient *average* over ``world_size`` ranks is the gradient of
        the objective of the whole batch (``terms.total`` in one process)."""

    def report(self, terms: LossTerms) -> dict[str, float]:
        """The metric row of one step: ``loss`` and ``loss_<term>``."""
        return terms.as_floats()

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters of the objective itself (e.g. class proxies); none by default.

        The lifecycle optimises them with the encoder's. Under torchrun DDP averages only the wrapped encoder's
        gradients, so an objective that has parameters must also get them averaged (e.g. by being wrapped with it).
        """
        return []

    def state_dict(self) -> dict[str, Any]:
        """Top-level checkpoint entries holding the objective's state; none by default."""
        return {}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:  # noqa: B027 - a no-op unless there is state
        """Restore the objective's state from a checkpoint (the whole checkpoint dict)."""


class IRTObjective(Objective):
    """Contrastive (batch and cross-batch memory) + KoLeo, as configured."""

    def __init__(self, loss: LossConfig, memory: MemoryConfig, dim: int, device: torch.device | str = "cpu") -> None:
        self.loss_cfg = loss
        self.memory_cfg = memory
        self.memory = CrossBatchMemory(memory.size, dim, device) if memory.size > 0 else None

    def memory_active(self, iteration: int) -> bool:
        return self.memory is not None and iteration >= self.memory_cfg.start_iteration

    def __call__(self, z: torch.Tensor, labels: torch.Tensor, iteration: int, *, z_local: torch.Tensor | None = None,
                 z_for_memory: torch.Tensor | None = None, tuple_size: int | None = None) -> LossTerms:
        """Terms ``contrastive``, ``memory``, ``koleo`` for unit descriptors ``z`` at ``iteration``.

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
        return LossTerms(total, {"contrastive": l_batch, "memory": l_mem, "koleo": l_koleo})

    def backward_loss(self, terms: LossTerms, world_size: int = 1) -> torch.Tensor:
        """Terms over the gathered batch only reach the local part's parameters through that rank, so they are
        scaled by ``world_size``; a per-rank KoLeo is already the quantity whose rank average is wanted."""
        if world_size == 1:
            return terms.total
        koleo_scale = world_size if self.loss_cfg.koleo_global else 1
        return (world_size * (terms["contrastive"] + self.memory_cfg.weight * terms["memory"])
                + self.loss_cfg.koleo_weight * koleo_scale * terms["koleo"])

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict() if self.memory is not None else None}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        if self.memory is not None and checkpoint["memory"] is not None:
            self.memory.load_state_dict(checkpoint["memory"])


class TupleObjective(Objective):
    """cirtorch's tuple contrastive loss + λ · KoLeo over this rank's share of the batch's tuples."""

    def __init__(self, loss: LossConfig) -> None:
        self.loss_cfg = loss

    def __call__(self, z: torch.Tensor, labels: torch.Tensor, iteration: int, *, z_local: torch.Tensor | None = None,
                 z_for_memory: torch.Tensor | None = None, tuple_size: int | None = None) -> LossTerms:
        """Terms ``tuple`` (summed over the tuples of ``z``) and ``koleo`` (over ``z``; 0 when λ = 0 or fewer than
        2 descriptors). An empty ``z`` (a rank with no tuples in this batch) gives a zero tuple loss that still
        depends on the parameters, so the rank joins DDP's gradient all-reduce."""
        if tuple_size is None:
            raise ValueError("TupleObjective needs tuple_size (images per tuple)")
        l_tuple = (tuple_contrastive_loss(z, tuple_size, self.loss_cfg.margin) if len(z)
                   else z.float().sum() * 0.0)
        weight = self.loss_cfg.koleo_weight
        l_koleo = koleo_loss(z, self.loss_cfg.koleo_eps) if weight > 0 and len(z) > 1 else l_tuple.new_zeros(())
        return LossTerms(l_tuple + weight * l_koleo, {"tuple": l_tuple, "koleo": l_koleo})

    def backward_loss(self, terms: LossTerms, world_size: int = 1) -> torch.Tensor:
        """``world_size · L_tuple + λ · L_KoLeo``: DDP averages gradients over ranks, so the tuple sum (each rank
        holds a disjoint share of the tuples) is scaled back up; the per-rank KoLeo is already an average."""
        return world_size * terms["tuple"] + self.loss_cfg.koleo_weight * terms["koleo"]

    def report(self, terms: LossTerms) -> dict[str, float]:
        """``loss_tuple``, ``loss_koleo`` and ``loss = loss_tuple + λ · loss_koleo`` (in Python floats)."""
        row = {"loss_tuple": float(terms["tuple"].detach()), "loss_koleo": float(terms["koleo"].detach())}
        row["loss"] = row["loss_tuple"] + self.loss_cfg.koleo_weight * row["loss_koleo"]
        return row
