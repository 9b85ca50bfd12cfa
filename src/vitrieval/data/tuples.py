"""Training tuples: one epoch's mined tuples (:class:`EpochTuples`, rows of the training table) and those tuples
as tensors (:class:`TupleDataset`): item ``i`` of an epoch is ``(query, positive, n_1, …, n_k)`` stacked.

A tuple with an unreadable image is dropped whole (``skip_bad``; its index is reported in ``bad``), since a
tuple without its query or positive has no loss. Each image draws its random augmentation (if the transform has
any) from a seed fixed by ``(seed, epoch, tuple, position)``, so a resumed run sees the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vitrieval.data.dataset import SeededTableDataset
from vitrieval.data.table import ImageTable


@dataclass
class EpochTuples:
    """One epoch's tuples; indices are rows of the training table.

    ``queries``/``positives``: ``(n,)``; ``negatives``: ``(n, k)``; ``negative_distance``: the mean L2 distance
    between a query and its mined negatives (cirtorch's statistic; it rises as the model separates clusters).
    """

    queries: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    negative_distance: float = float("nan")

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def tuple_size(self) -> int:
        return 2 + self.negatives.shape[1]

    def rows(self, i: int) -> list[int]:
        """Table rows of tuple ``i``: query, positive, then the negatives."""
        return [int(self.queries[i]), int(self.positives[i]), *map(int, self.negatives[i])]

    def state_dict(self) -> dict[str, Any]:
        return {"queries": self.queries, "positives": self.positives, "negatives": self.negatives,
                "negative_distance": self.negative_distance}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochTuples:
        return cls(np.asarray(state["queries"], np.int64), np.asarray(state["positives"], np.int64),
                   np.asarray(state["negatives"], np.int64), float(state["negative_distance"]))


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
