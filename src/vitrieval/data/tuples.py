"""Training tuples as tensors: item ``i`` of an epoch is ``(query, positive, n_1, …, n_k)`` stacked.

A tuple with an unreadable image is dropped whole (``skip_bad``; its index is reported in ``bad``), since a
tuple without its query or positive has no loss. Each image draws its random augmentation (if the transform has
any) from a seed fixed by ``(seed, epoch, tuple, position)``, so a resumed run sees the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from vitrieval.data.dataset import SeededTableDataset
from vitrieval.data.table import ImageTable
from vitrieval.training.mining import EpochTuples


class TupleDataset(Dataset):
    """Item ``i`` -> ``(images (S, C, H, W) or None, labels (S,), i)`` for tuple ``i`` of ``tuples``."""

    def __init__(self, table: ImageTable, tuples: EpochTuples, transform: Callable, seed: int = 0, epoch: int = 0,
                 skip_bad: bool = False) -> None:
        self.images = SeededTableDataset(table, transform, skip_bad=skip_bad)
        self.tuples = tuples
        self.base_seed = (seed * 1_000_003 + epoch) * 1_000_003

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor, int]:
        rows = self.tuples.rows(i)
        tensors, labels = [], []
        for position, row in enumerate(rows):
            image, label, _ = self.images[(row, ((self.base_seed + i) * 64 + position) % 2**63)]
            if image is None:
                return None, torch.tensor(labels, dtype=torch.int64), i
            tensors.append(image)
            labels.append(label)
        return torch.stack(tensors), torch.tensor(labels, dtype=torch.int64), i


def collate_tuples(items: list[tuple[Any, torch.Tensor, int]]) -> dict[str, torch.Tensor]:
    """Concatenate readable tuples: ``images (T * S, C, H, W)``, ``labels (T * S,)`` (clusters), ``tuples (T,)``;
    ``bad`` holds the indices of tuples with an unreadable image."""
    good = [it for it in items if it[0] is not None]
    return {
        "images": torch.cat([it[0] for it in good]) if good else torch.zeros(0),
        "labels": torch.cat([it[1] for it in good]) if good else torch.zeros(0, dtype=torch.int64),
        "tuples": torch.tensor([it[2] for it in good], dtype=torch.int64),
        "bad": torch.tensor([it[2] for it in items if it[0] is None], dtype=torch.int64),
    }
