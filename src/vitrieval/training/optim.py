"""Optimisation, shared by every trainer: the DDP wrapper (SyncBatchNorm), the parameter groups, the optimizer, the
AMP loss scaler and one scaled step.

Parameter groups (:func:`parameter_groups`), every one at ``train.lr`` unless said otherwise:

- the backbone, split by timm's :func:`timm.optim.param_groups_weight_decay` (what ``timm.optim.create_optimizer_v2``
  and hence DeiT's training code do) when ``train.weight_decay_exempt`` (the default): every 1-d parameter (norm
  weights and biases, every bias) and the names of the backbone's ``no_weight_decay()`` (a ViT's ``pos_embed``,
  ``cls_token``, ``dist_token``) get no weight decay, the other weights ``train.weight_decay``; with
  ``train.weight_decay_exempt=false`` one group, every parameter decayed;
- the projection (its bias exempt like the backbone's);
- a learnable GeM ``p`` at ``train.lr × train.gem_p_lr_multiplier`` (10, as cirtorch's ``train.py``) and no weight
  decay (also cirtorch's);
- the objective's own parameters (NSoftmax's proxies) at ``train.lr × Objective.lr_multiplier``
  (``loss.proxy_lr_multiplier``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from vitrieval.amp import amp_dtype
from vitrieval.config import Config
from vitrieval.distributed import DistContext

log = logging.getLogger(__name__)


def has_batchnorm(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer (a convnet's; ViTs use LayerNorm)."""
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def uses_sync_batchnorm(encoder: torch.nn.Module, world_size: int, device: torch.device, sync_bn: bool) -> bool:
    """Whether :func:`wrap_for_ranks` converts ``encoder``'s BatchNorm layers to :class:`torch.nn.SyncBatchNorm`:
    ``train.sync_bn``, more than one rank, a BatchNorm layer, and a device torch's SyncBatchNorm runs on (CUDA; it
    refuses CPU tensors, so under gloo on CPU each rank's BatchNorm keeps normalising its own share, with a
    warning)."""
    if not (sync_bn and world_size > 1 and has_batchnorm(encoder)):
        return False
    if device.type == "cpu":
        log.warning("train.sync_bn: torch's SyncBatchNorm needs a GPU; on CPU each rank's BatchNorm normalises its "
                    "own share of the batch (set train.batchnorm=frozen for rank-independent training)")
        return False
    return True


def wrap_for_ranks(encoder: torch.nn.Module, dist: DistContext, device: torch.device,
                   sync_bn: bool = True) -> torch.nn.Module:
    """``encoder`` in DistributedDataParallel under torchrun (gradients averaged over ranks), else itself.

    When :func:`uses_sync_batchnorm` (``train.sync_bn``), the BatchNorm layers of ``encoder`` are first replaced
    in place by :class:`torch.nn.SyncBatchNorm` (``convert_sync_batchnorm``: the same parameter objects and
    buffers, the same state-dict keys), so a convnet normalises with the global batch's statistics, as one
    process does.
    """
    if not dist.enabled:
        return encoder
    if uses_sync_batchnorm(encoder, dist.world_size, device, sync_bn):
        encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(encoder)  # the encoder itself, children swapped
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(encoder, device_ids=ids)


def parameter_groups(encoder: torch.nn.Module, config: Config, objective_params: Sequence[torch.nn.Parameter] = (),
                     objective_lr_multiplier: float = 1.0) -> list[dict[str, Any]]:
    """The optimizer's parameter groups (module docstring): backbone and projection with or without the weight-decay
    exemption, a learnable GeM ``p`` at its lr multiplier, the objective's parameters at theirs."""
    from timm.optim import param_groups_weight_decay

    tr = config.train
    wd = tr.weight_decay

    def split(module: torch.nn.Module, names: Iterable[str] = ()) -> list[dict[str, Any]]:
        if not tr.weight_decay_exempt:
            params = [p for p in module.parameters() if p.requires_grad]
            return [{"params": params, "weight_decay": wd}] if params else []
        return param_groups_weight_decay(module, wd, no_weight_decay_list=tuple(names))

    backbone = encoder.backbone
    no_decay_names = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else ()
    groups = [*split(backbone, no_decay_names), *split(encoder.projection)]
    gem = [p for p in encoder.pool.parameters() if p.requires_grad]
    if gem:
        groups.append({"params": gem, "lr": tr.lr * tr.gem_p_lr_multiplier, "weight_decay": 0.0})
    if objective_params:
        groups.append({"params": list(objective_params), "lr": tr.lr * objective_lr_multiplier})
    counted = sum(len(g["params"]) for g in groups)
    expected = sum(1 for p in encoder.parameters() if p.requires_grad) + len(objective_params)
    if counted != expected:  # a parameter outside backbone / projection / pool would silently not train
        raise RuntimeError(f"parameter groups hold {counted} parameters, the model and objective {expected}")
    return groups


def make_optimizer(params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], config: Config
                   ) -> torch.optim.Optimizer:
    """``train.optimizer``: AdamW (decoupled weight decay, the category-level recipe), Adam (weight decay as an L2
    penalty in the gradient, as cirtorch trains on SfM-120k) or SGD with ``train.sgd_momentum`` (weight decay as an
    L2 penalty; an update linear in the gradients, with no per-coordinate normalisation); ``params`` may be
    :func:`parameter_groups`' groups, whose own ``lr`` / ``weight_decay`` win over ``train.lr`` /
    ``train.weight_decay``."""
    tr = config.train
    if tr.optimizer == "sgd":
        return torch.optim.SGD(params, lr=tr.lr, momentum=tr.sgd_momentum, weight_decay=tr.weight_decay)
    cls = torch.optim.AdamW if tr.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=tr.lr, weight_decay=tr.weight_decay)


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
