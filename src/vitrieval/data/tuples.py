"""Training tuples: one epoch's mined tuples (:class:`EpochTuples`, rows of the training table) and those tuples
as tensors (:class:`TupleDataset`): item ``i`` of an epoch is ``(query, positive, n_1, …, n_k)`` stacked.

A tuple with an unreadable image is dropped whole (``skip_bad``; its index is reported in ``bad``), since a
tuple without its query or positive has no loss. Each image draws its random augmentation (if the transform has
any) from a seed fixed by ``(seed, epoch, tuple, position)``, so a resumed run sees the same pixels. One loader
serves every epoch (:class:`TupleImages` + :class:`EpochTupleBatches`: the keys carry the epoch's tuples).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vitrieval.data.dataset import SeededTableDataset
from vitrieval.data.images import ImageDecodeError
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


TupleKey = tuple[int, tuple[int, ...], int]
"""What the loader asks for: ``(tuple index i, its table rows, the epoch's base seed)``."""


def epoch_base_seed(seed: int, epoch: int) -> int:
    """The base of epoch ``epoch``'s image seeds: image ``position`` of tuple ``i`` draws from
    ``((base + i) * 64 + position) mod 2**63``."""
    return (seed * 1_000_003 + epoch) * 1_000_003


class TupleImages(Dataset):
    """Key ``(i, rows, base_seed)`` -> ``(images (S, C, H, W), labels (S,), i)``: the images of one tuple.

    The key carries the tuple itself, so this dataset holds nothing that changes per epoch: persistent DataLoader
    workers (each holds its own copy of the dataset) serve every epoch's tuples, which the batch sampler
    (:class:`EpochTupleBatches`, iterated in the main process) takes from the epoch being trained. An unreadable
    image gives ``None`` in the image slot with ``skip_bad``, its :class:`ImageDecodeError` with ``carry_errors``
    (the error leaves a worker whole, see :class:`~vitrieval.data.dataset.TableDataset`), else raises.
    """

    def __init__(self, table: ImageTable, transform: Callable, skip_bad: bool = False,
                 carry_errors: bool = False) -> None:
        self.images = SeededTableDataset(table, transform, skip_bad=skip_bad, carry_errors=carry_errors)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: TupleKey) -> tuple[torch.Tensor | ImageDecodeError | None, torch.Tensor, int]:
        i, rows, base_seed = key
        tensors, labels = [], []
        for position, row in enumerate(rows):
            image, label, _ = self.images[(row, ((base_seed + i) * 64 + position) % 2**63)]
            if image is None or isinstance(image, ImageDecodeError):
                return image, torch.tensor(labels, dtype=torch.int64), i
            tensors.append(image)
            labels.append(label)
        return torch.stack(tensors), torch.tensor(labels, dtype=torch.int64), i


class TupleDataset(Dataset):
    """Item ``i`` -> ``(images (S, C, H, W) or None, labels (S,), i)`` for tuple ``i`` of ``tuples`` (one epoch's
    view of :class:`TupleImages`; the same pixels)."""

    def __init__(self, table: ImageTable, tuples: EpochTuples, transform: Callable, seed: int = 0, epoch: int = 0,
                 skip_bad: bool = False) -> None:
        self.images = TupleImages(table, transform, skip_bad=skip_bad)
        self.tuples = tuples
        self.base_seed = epoch_base_seed(seed, epoch)

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | ImageDecodeError | None, torch.Tensor, int]:
        return self.images[(i, tuple(self.tuples.rows(i)), self.base_seed)]


class EpochTupleBatches:
    """A batch sampler fed each epoch's tuples: rank ``rank``'s share of every run of ``per_batch`` tuples
    (tuples ``rank, rank + world, ...`` of it), from batch ``skip`` on, as :class:`TupleImages` keys.

    Set :meth:`set_epoch` before each pass; the DataLoader iterates it in the main process, so its persistent
    workers see the new tuples through the keys.
    """

    def __init__(self, per_batch: int) -> None:
        self.per_batch = per_batch
        self.batches: list[list[TupleKey]] = []

    def set_epoch(self, tuples: EpochTuples, base_seed: int, skip: int = 0, rank: int = 0, world: int = 1) -> None:
        n, b = len(tuples), self.per_batch
        self.batches = [[(i, tuple(tuples.rows(i)), base_seed) for i in range(start, min(start + b, n))][rank::world]
                        for start in range(0, n, b)][skip:]

    def __iter__(self) -> Iterator[list[TupleKey]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


def collate_tuples(items: list[tuple[Any, torch.Tensor, int]]) -> dict[str, Any]:
    """Concatenate readable tuples: ``images (T * S, C, H, W)``, ``labels (T * S,)`` (clusters), ``tuples (T,)``;
    ``bad`` holds the indices of tuples with an unreadable image and ``errors`` the carried decode errors."""
    good = [it for it in items if isinstance(it[0], torch.Tensor)]
    return {
        "images": torch.cat([it[0] for it in good]) if good else torch.zeros(0),
        "labels": torch.cat([it[1] for it in good]) if good else torch.zeros(0, dtype=torch.int64),
        "tuples": torch.tensor([it[2] for it in good], dtype=torch.int64),
        "bad": torch.tensor([it[2] for it in items if not isinstance(it[0], torch.Tensor)], dtype=torch.int64),
        "errors": [it[0] for it in items if isinstance(it[0], ImageDecodeError)],
    }
