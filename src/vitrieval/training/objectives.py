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

- :class:`NSoftmaxObjective` (P x K batches, ``loss.objective=nsoftmax``; Zhai & Wu 2018)::

      L = L_NSoftmax(batch; proxies) + λ · L_KoLeo(batch)

  one learned proxy per training class (:func:`vitrieval.losses.normalized_softmax_loss`).

- :class:`SNCAObjective` (P x K batches, ``loss.objective=snca``; Wu et al. 2018)::

      L = L_SNCA(batch; memory) + λ · L_KoLeo(batch),   then  memory[i] <- n(m · memory[i] + (1 − m) · z_i)

  against a memory of every training image (:func:`vitrieval.losses.snca_loss`, each anchor's own row left out).

- :class:`TupleObjective` (mined tuples, cirtorch's procedure)::

      L = L_tuple + λ · L_KoLeo

  with ``L_tuple`` the distance-based contrastive loss summed over the tuples
  (:func:`vitrieval.losses.tuple_contrastive_loss`).

Which trainer uses which: ``train.sampler=classes`` the one ``loss.objective`` names (:func:`make_objective`),
``tuples`` the tuple objective. Under torchrun the P x K objectives see the gathered global batch; every rank then
holds the same proxies and the same memory (they are updated from the same gathered values).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vitrieval.config import LossConfig, MemoryConfig
from vitrieval.losses import (
    contrastive_loss,
    koleo_loss,
    normalized_softmax_loss,
    snca_loss,
    tuple_contrastive_loss,
)
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
                 z_for_memory: torch.Tensor | None = None, tuple_size: int | None = None,
                 indices: torch.Tensor | None = None) -> LossTerms:
        """The loss terms of one batch.

        ``z``: the descriptors the objective is computed over, ``(N, D)``, with their ``labels`` ``(N,)``;
        ``iteration``: the 0-based optimizer step. Under torchrun ``z`` is what the trainer passes (the gathered
        global batch with ``z_local`` this rank's part, or this rank's share alone). ``z_for_memory``: what an
        objective with a memory enqueues (e.g. a momentum encoder's embeddings of the batch). ``tuple_size``: for
        tuple objectives, the images per tuple, ``z`` holding whole tuples in order ``(q, p, n_1, …)``.
        ``indices``: the training-table rows of the items of ``z`` (what an objective with a memory of every
        training image reads and updates).
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

        The lifecycle optimises them with the encoder's, in a parameter group of their own at
        ``train.lr × lr_multiplier``. Under torchrun DDP averages only the wrapped encoder's gradients, so an
        objective with parameters must give every rank the same gradient itself (:class:`NSoftmaxObjective`: the
        loss over the gathered batch is the same on every rank; its ``world_size`` factor is undone in the graph).
        """
        return []

    @property
    def lr_multiplier(self) -> float:
        """The learning rate of :meth:`parameters` as a multiple of ``train.lr``."""
        return 1.0

    def warnings(self, iterations: int) -> list[str]:
        """Settings that cannot take effect in a run of ``iterations`` steps, each a line naming the fix (the
        trainer logs them at the start)."""
        return []

    def attach(self, optimizer: torch.optim.Optimizer, encoder: torch.nn.Module) -> None:  # noqa: B027
        """Called once with the run's optimizer and (unwrapped) encoder; a no-op unless the objective steers the
        optimisation (:class:`NSoftmaxObjective`'s proxy warm-up)."""

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

    def warnings(self, iterations: int) -> list[str]:
        """The memory never starts when ``memory.start_iteration`` is not below ``train.iterations``."""
        start = self.memory_cfg.start_iteration
        if self.memory is None or start < iterations:
            return []
        return [f"memory.size={self.memory_cfg.size} but memory.start_iteration={start} >= train.iterations="
                f"{iterations}: the cross-batch memory never starts; set memory.start_iteration below {iterations} "
                f"(e.g. --set memory.start_iteration={iterations // 2})"]

    def __call__(self, z: torch.Tensor, labels: torch.Tensor, iteration: int, *, z_local: torch.Tensor | None = None,
                 z_for_memory: torch.Tensor | None = None, tuple_size: int | None = None,
                 indices: torch.Tensor | None = None) -> LossTerms:
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
                 z_for_memory: torch.Tensor | None = None, tuple_size: int | None = None,
                 indices: torch.Tensor | None = None) -> LossTerms:
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


class _GlobalBatchObjective(Objective):
    """Shared by NSoftmax and SNCA: one term (:attr:`term`) over the (gathered) batch + λ · KoLeo, scaled like IRT's.
    """

    term = "main"

    def __init__(self, loss: LossConfig) -> None:
        self.loss_cfg = loss

    def _koleo(self, z: torch.Tensor, z_local: torch.Tensor | None) -> torch.Tensor:
        koleo_input = z if (z_local is None or self.loss_cfg.koleo_global) else z_local
        if self.loss_cfg.koleo_weight > 0 and len(koleo_input) > 1:
            return koleo_loss(koleo_input, self.loss_cfg.koleo_eps)
        return z.new_zeros(())

    def backward_loss(self, terms: LossTerms, world_size: int = 1) -> torch.Tensor:
        """``world_size · L_main + λ · L_KoLeo`` (KoLeo × ``world_size`` too when global), as for IRT."""
        if world_size == 1:
            return terms.total
        koleo_scale = world_size if self.loss_cfg.koleo_global else 1
        return world_size * terms[self.term] + self.loss_cfg.koleo_weight * koleo_scale * terms["koleo"]


def _class_rows(labels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The row of each label in the sorted ``classes``; a label outside them is an error naming it."""
    rows = torch.searchsorted(classes, labels).clamp(max=len(classes) - 1)
    bad = classes[rows] != labels
    if bool(bad.any()):
        raise ValueError(f"label {int(labels[bad][0])} is not a training class (the proxies are of "
                         f"{len(classes)} training classes)")
    return rows


class NSoftmaxObjective(_GlobalBatchObjective):
    """Normalised softmax over one learned proxy per training class + λ · KoLeo (``loss.objective=nsoftmax``).

    The proxies ``(C, D)`` are initialised like ``nn.Linear`` (uniform ±1/√D, the reference's classifier) from a
    generator seeded by ``seed``, so every rank and every rerun starts from the same ones; they are trained with
    the encoder at ``train.lr × loss.proxy_lr_multiplier`` (1, as Zhai & Wu's code). Under torchrun every rank
    computes the loss over the same gathered batch, hence the same proxy gradient: it is scaled by
    ``1 / world_size`` inside the graph to undo :meth:`backward_loss`'s ``world_size``, so no all-reduce is needed
    and the proxies stay identical on every rank.

    Proxy warm-up (``loss.proxy_warmup_iterations = N``): for optimizer steps ``0 .. N-1`` the backbone's
    parameters are left out of the step (their gradients are dropped just before it, so AdamW neither moves nor
    decays them and their moments stay empty); the proxies and the layers after the backbone (a learnable GeM p,
    the projection) train as usual. This is Zhai & Wu's ``pretrain_epochs`` (one epoch in their code): a first
    phase that "finetunes only new parameters to warm up", so the random proxies do not send large, meaningless
    gradients into the backbone. The backbone's BatchNorm statistics still update (train mode, as there). Under
    torchrun the gradients are dropped after DDP's all-reduce, on every rank alike.
    """

    term = "nsoftmax"
    checkpoint_key = "nsoftmax_proxies"

    def __init__(self, loss: LossConfig, class_labels: np.ndarray | list[int], dim: int,
                 device: torch.device | str = "cpu", seed: int = 0, world_size: int = 1) -> None:
        super().__init__(loss)
        classes = np.unique(np.asarray(class_labels, dtype=np.int64))
        if len(classes) == 0:
            raise ValueError("NSoftmax needs at least one training class")
        self.classes = torch.as_tensor(classes, device=device)
        self.world_size = world_size
        bound = 1.0 / math.sqrt(dim)
        generator = torch.Generator().manual_seed(int(seed))
        init = torch.rand(len(classes), dim, generator=generator, dtype=torch.float32) * (2 * bound) - bound
        self.proxies = torch.nn.Parameter(init.to(device))
        self.warmup_iterations = int(loss.proxy_warmup_iterations)
        self._iteration = 0
        self._frozen: list[torch.nn.Parameter] = []

    def warming_up(self) -> bool:
        """Whether the current step (the ``iteration`` of the last loss computed) is a warm-up step."""
        return self._iteration < self.warmup_iterations

    def attach(self, optimizer: torch.optim.Optimizer, encoder: torch.nn.Module) -> None:
        """With a warm-up: drop the backbone's gradients before each warm-up step (an optimizer pre-step hook)."""
        if self.warmup_iterations <= 0:
            return
        backbone = getattr(encoder, "backbone", encoder)
        self._frozen = list(backbone.parameters())

        def drop_backbone_gradients(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            if self.warming_up():
                for parameter in self._frozen:
                    parameter.grad = None

        optimizer.register_step_pre_hook(drop_backbone_gradients)

    def __call__(self, z: torch.Tensor, labels: torch.Tensor, iteration: int, *, z_local: torch.Tensor | None = None,
                 z_for_memory: torch.Tensor | None = None, tuple_size: int | None = None,
                 indices: torch.Tensor | None = None) -> LossTerms:
        """Terms ``nsoftmax`` (the cross-entropy over ``z``) and ``koleo``."""
        self._iteration = iteration
        proxies = self.proxies
        if self.world_size > 1:
            proxies = proxies.view_as(proxies)
            proxies.register_hook(lambda grad: grad / self.world_size)
        main = normalized_softmax_loss(z, _class_rows(labels, self.classes), proxies, self.loss_cfg.temperature)
        koleo = self._koleo(z, z_local)
        return LossTerms(main + self.loss_cfg.koleo_weight * koleo, {self.term: main, "koleo": koleo})

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.proxies]

    @property
    def lr_multiplier(self) -> float:
        """``loss.proxy_lr_multiplier``."""
        return self.loss_cfg.proxy_lr_multiplier

    def state_dict(self) -> dict[str, Any]:
        return {self.checkpoint_key: self.proxies.detach().cpu().clone()}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        _check_state(checkpoint, self.checkpoint_key, "nsoftmax")
        with torch.no_grad():
            self.proxies.copy_(checkpoint[self.checkpoint_key].to(self.proxies.device))


class SNCAObjective(_GlobalBatchObjective):
    """SNCA against a memory of every training image + λ · KoLeo (``loss.objective=snca``).

    Row ``i`` of the memory ``(N_train, D)`` belongs to training-table row ``i`` (``indices`` of the batch); it
    starts uniform in ±1/√D (the reference's ``LinearAverage`` initialisation; a generator seeded by ``seed``).
    After the loss, which reads the memory as it was before the step (the reference updates it in its backward),
    every row of the batch becomes ``normalise(m · memory[i] + (1 − m) · z_i)`` with ``m = loss.snca_momentum``
    (0.5 in Microsoft/snca.pytorch). An image twice in a batch is updated once, from its first copy. Under
    torchrun ``z`` and ``indices`` are the gathered global batch, so every rank applies the same update.
    """

    term = "snca"
    checkpoint_key = "snca_memory"

    def __init__(self, loss: LossConfig, labels: np.ndarray | list[int], dim: int,
                 device: torch.device | str = "cpu", seed: int = 0) -> None:
        super().__init__(loss)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
        bound = 1.0 / math.sqrt(dim)
        generator = torch.Generator().manual_seed(int(seed))
        init = torch.rand(len(self.labels), dim, generator=generator, dtype=torch.float32) * (2 * bound) - bound
        self.memory = init.to(device)

    def __call__(self, z: torch.Tensor, labels: torch.Tensor, iteration: int, *, z_local: torch.Tensor | None = None,
                 z_for_memory: torch.Tensor | None = None, tuple_size: int | None = None,
                 indices: torch.Tensor | None = None) -> LossTerms:
        """Terms ``snca`` (of ``z`` against the memory, self left out) and ``koleo``; then the memory update."""
        if indices is None:
            raise ValueError("SNCAObjective needs the training-table rows of the batch (indices)")
        indices = indices.to(self.memory.device)
        main = snca_loss(z, labels, self.memory, self.labels, self.loss_cfg.temperature, self_index=indices)
        koleo = self._koleo(z, z_local)
        self._update(z.detach().float(), indices)
        return LossTerms(main + self.loss_cfg.koleo_weight * koleo, {self.term: main, "koleo": koleo})

    def _update(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        """Momentum update of the batch's rows, out of place (the loss's graph still holds the old memory)."""
        if len(indices) == 0:
            return
        unique, inverse = torch.unique(indices, return_inverse=True)
        order = torch.arange(len(indices), device=indices.device)
        first = torch.full((len(unique),), len(indices), device=indices.device).scatter_reduce(
            0, inverse, order, reduce="amin")
        rows, values = unique, z[first]
        m = self.loss_cfg.snca_momentum
        updated = F.normalize(m * self.memory[rows] + (1.0 - m) * values, dim=1)
        self.memory = self.memory.index_copy(0, rows, updated)

    def state_dict(self) -> dict[str, Any]:
        return {self.checkpoint_key: self.memory.cpu().clone()}

    def load_state_dict(self, checkpoint: dict[str, Any]) -> None:
        _check_state(checkpoint, self.checkpoint_key, "snca")
        saved = checkpoint[self.checkpoint_key]
        if tuple(saved.shape) != tuple(self.memory.shape):
            raise ValueError(f"the checkpoint's SNCA memory is {tuple(saved.shape)}, this run's training set needs "
                             f"{tuple(self.memory.shape)}")
        self.memory = saved.to(self.memory.device).clone()


def _check_state(checkpoint: dict[str, Any], key: str, objective: str) -> None:
    if checkpoint.get(key) is None:
        raise ValueError(f"the checkpoint has no {key}: it was not written by a loss.objective={objective} run")


def make_objective(loss: LossConfig, memory: MemoryConfig, dim: int, train_labels: np.ndarray,
                   device: torch.device | str = "cpu", seed: int = 0, world_size: int = 1) -> Objective:
    """The P x K objective ``loss.objective`` names, for descriptors of ``dim`` and the training labels."""
    if loss.objective == "nsoftmax":
        return NSoftmaxObjective(loss, train_labels, dim, device, seed, world_size)
    if loss.objective == "snca":
        return SNCAObjective(loss, train_labels, dim, device, seed)
    if loss.objective == "contrastive":
        return IRTObjective(loss, memory, dim, device)
    raise ValueError(f"config key loss.objective: {loss.objective!r} is not one of contrastive, nsoftmax, snca")
