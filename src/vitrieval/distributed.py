"""torch.distributed helpers for torchrun: process group set-up and a gradient-keeping all_gather.

One process (no ``WORLD_SIZE`` in the environment) is the default and needs no process group. Under torchrun,
``gather_with_grad`` returns the concatenation of every rank's tensor in rank order, where the local part is the
autograd-tracked input itself, so the contrastive loss and the cross-batch memory see the global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
    def from_env(cls, backend: str | None = None) -> "DistContext":
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

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
