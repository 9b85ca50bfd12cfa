"""torch.distributed helpers for torchrun: process group set-up and a gradient-keeping all_gather.

One process (no ``WORLD_SIZE`` in the environment) is the default and needs no process group. Under torchrun,
``gather_with_grad`` returns the concatenation of every rank's tensor in rank order, where the local part is the
autograd-tracked input itself, so the contrastive loss and the cross-batch memory see the global batch.
``DistContext.current()`` describes a process group that something else already initialised (``embed.extract``
uses it to shard extraction automatically); ``all_gather_object`` / ``broadcast_object`` move picklable results.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, backend: str | None = None) -> DistContext:
        """Initialise the default process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if chosen == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend=chosen)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @classmethod
    def current(cls) -> DistContext:
        """The already initialised default process group (one process when there is none); initialises nothing."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' ``x`` concatenated in rank order (sizes may differ); the local part keeps its gradient."""
        if not self.enabled:
            return x
        n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        counts = [int(s.item()) for s in sizes]
        biggest = max(counts)
        padded = x.new_zeros((biggest, *x.shape[1:]))
        padded[: x.shape[0]] = x.detach()
        parts = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        pieces = [p[:c] for p, c in zip(parts, counts)]
        pieces[self.rank] = x
        return torch.cat(pieces)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order (``[obj]`` in one process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s picklable ``obj`` on every rank (what the other ranks pass is ignored)."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
