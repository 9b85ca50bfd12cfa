"""Optimisation, shared by every trainer: the DDP wrapper, the optimizer, the AMP loss scaler and one scaled step."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from vitrieval.amp import amp_dtype
from vitrieval.config import Config
from vitrieval.distributed import DistContext


def wrap_for_ranks(encoder: torch.nn.Module, dist: DistContext, device: torch.device) -> torch.nn.Module:
    """``encoder`` in DistributedDataParallel under torchrun (gradients averaged over ranks), else itself."""
    if not dist.enabled:
        return encoder
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(encoder, device_ids=ids)


def make_optimizer(params: Iterable[torch.nn.Parameter], config: Config) -> torch.optim.Optimizer:
    """``train.optimizer``: AdamW (decoupled weight decay, the category-level recipe) or Adam (weight decay as an L2
    penalty in the gradient, as cirtorch trains on SfM-120k)."""
    cls = torch.optim.AdamW if config.train.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.train.lr, weight_decay=config.train.weight_decay)


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for float16 autocast (bf16 and float32 need none)."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(device, amp) == torch.float16)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   params: Iterable[torch.nn.Parameter], grad_clip: float) -> float:
    """Back-propagate ``loss`` (scaled) and step; clip the gradient norm to ``grad_clip`` when > 0 and return it
    (NaN when not clipping)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    grad_norm = float("nan")
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    scaler.step(optimizer)
    scaler.update()
    return grad_norm
