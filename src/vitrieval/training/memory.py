"""Cross-batch memory (XBM, Wang et al. 2020): a FIFO ring buffer of detached embeddings and their labels.

Per iteration (after ``start_iteration``): enqueue the current batch, then add
``w · contrastive(batch, memory \\ batch's own copies)`` to the loss, so every anchor also meets the hardest
negatives of the last ``size`` images without recomputing them.
"""

from __future__ import annotations

import torch


class CrossBatchMemory:
    """Ring buffer of ``size`` (embedding, label) pairs; the oldest entries are overwritten first."""

    def __init__(self, size: int, dim: int, device: torch.device | str = "cpu") -> None:
        if size <= 0:
            raise ValueError(f"memory size must be > 0, got {size}")
        self.size = size
        self.dim = dim
        self.embeddings = torch.zeros(size, dim, dtype=torch.float32, device=device)
        self.labels = torch.full((size,), -1, dtype=torch.int64, device=device)
        self.ptr = 0  # next slot to write
        self.filled = 0  # number of valid entries
        self._last_batch = 0  # how many of the newest entries are the current batch's copies

    def __len__(self) -> int:
        return self.filled

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Append a batch (detached, float32), overwriting the oldest entries when full."""
        z = embeddings.detach().to(self.embeddings.device, torch.float32)
        y = labels.detach().to(self.labels.device, torch.int64)
        if z.shape[1] != self.dim:
            raise ValueError(f"memory holds {self.dim}-d embeddings, got {z.shape[1]}-d")
        n = z.shape[0]
        if n >= self.size:  # only the newest `size` items fit
            z, y = z[-self.size:], y[-self.size:]
            self.embeddings.copy_(z)
            self.labels.copy_(y)
            self.ptr, self.filled, self._last_batch = 0, self.size, self.size
            return
        positions = (self.ptr + torch.arange(n, device=self.embeddings.device)) % self.size
        self.embeddings[positions] = z
        self.labels[positions] = y
        self.ptr = (self.ptr + n) % self.size
        self.filled = min(self.size, self.filled + n)
        self._last_batch = n

    def contents(self, exclude_last_batch: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Valid entries (embeddings, labels), without the just-queued batch's copies by default."""
        keep = torch.zeros(self.size, dtype=torch.bool, device=self.embeddings.device)
        if self.filled == self.size:
            keep[:] = True
        else:
            keep[: self.filled] = True  # before the first wrap, entries fill slots 0..filled-1
        if exclude_last_batch and self._last_batch:
            last = (self.ptr - 1 - torch.arange(self._last_batch, device=keep.device)) % self.size
            keep[last] = False
        return self.embeddings[keep], self.labels[keep]

    def state_dict(self) -> dict:
        return {"embeddings": self.embeddings.cpu(), "labels": self.labels.cpu(), "ptr": self.ptr,
                "filled": self.filled, "last_batch": self._last_batch}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["embeddings"].shape) != (self.size, self.dim):
            raise ValueError(f"memory checkpoint holds {tuple(state['embeddings'].shape)}, expected "
                             f"({self.size}, {self.dim}): memory.size or the model changed since the checkpoint")
        self.embeddings.copy_(state["embeddings"])
        self.labels.copy_(state["labels"])
        self.ptr, self.filled, self._last_batch = int(state["ptr"]), int(state["filled"]), int(state["last_batch"])
