"""Class-balanced P × K batches for metric learning, deterministic by (seed, epoch), resumable mid-epoch.

Each epoch shuffles the classes with its own generator (seed + epoch; never the global RNG) and walks through
them, taking K images of each class (a random subset, or all of a class with fewer than K) until the batch is
full. Classes with a single image cannot form a positive pair and are left out (reported). Every item comes with
its own augmentation seed, so the crops do not depend on the number of DataLoader workers or on resuming.
Under ``torch.distributed`` each rank takes a disjoint set of classes for its share of the batch.
:class:`SpanningBatchSampler` chains the epochs, so one DataLoader (its workers started once) serves a whole run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)


class ClassBalancedBatchSampler:
    """Yields batches ``[(dataset_index, item_seed), ...]`` of ``batch_size`` items: P classes × K images."""

    def __init__(self, labels: Sequence[int] | np.ndarray, batch_size: int, images_per_class: int = 4,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if batch_size % images_per_class:
            raise ValueError(f"batch_size {batch_size} must be a multiple of images_per_class {images_per_class}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.batch_size = batch_size
        self.k = images_per_class
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0
        self._lengths: dict[int, int] = {}
        by_class: dict[int, list[int]] = defaultdict(list)
        for i, y in enumerate(labels.tolist()):
            by_class[y].append(i)
        self.singletons = sorted(c for c, idx in by_class.items() if len(idx) < 2)
        self.small_classes = sorted(c for c, idx in by_class.items() if 2 <= len(idx) < images_per_class)
        self.class_indices = {c: np.asarray(idx) for c, idx in sorted(by_class.items()) if len(idx) >= 2}
        self.classes = np.asarray(sorted(self.class_indices), dtype=np.int64)
        per_batch = batch_size * world_size // images_per_class
        if len(self.classes) < per_batch:
            raise ValueError(f"a batch needs {per_batch} classes with >= 2 images (batch {batch_size} x "
                             f"{world_size} rank(s) / K={images_per_class}) but the training split has "
                             f"{len(self.classes)}")
        if self.singletons or self.small_classes:
            log.warning("sampler: %d class(es) with one image left out (no positive pair); %d class(es) with fewer "
                        "than K=%d images contribute all their images", len(self.singletons),
                        len(self.small_classes), images_per_class)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's shuffle; ``skip_batches`` resumes mid-epoch after that many batches."""
        self.epoch = epoch
        self.skip = skip_batches

    def _epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.classes)
        global_batch = self.batch_size * self.world_size
        batches: list[list[tuple[int, int]]] = []
        current: list[list[int]] = [[] for _ in range(self.world_size)]
        slot = 0  # which rank's share is being filled; classes go to one rank each (disjoint)
        for c in order.tolist():
            idx = self.class_indices[c]
            take = idx if len(idx) <= self.k else rng.choice(idx, self.k, replace=False)
            share = current[slot]
            room = self.batch_size - len(share)
            share.extend(int(i) for i in take[:room])
            if len(share) == self.batch_size:
                slot += 1
            if slot == self.world_size:
                seeds = rng.integers(0, 2**31 - 1, size=global_batch)
                flat = [i for part in current for i in part]
                batches.append(list(zip(flat, seeds.tolist())))
                current = [[] for _ in range(self.world_size)]
                slot = 0
        return batches

    def global_batches(self) -> list[list[tuple[int, int]]]:
        """This epoch's batches for all ranks (rank r's share is items ``r*B : (r+1)*B``), after the skip."""
        return self._epoch_batches(self.epoch)[self.skip:]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.shares(self.epoch, self.skip)

    def __len__(self) -> int:
        return len(self._epoch_batches(self.epoch)) - self.skip

    def epoch_length(self, epoch: int) -> int:
        """The number of batches of epoch ``epoch`` (it may vary a little with the shuffle when classes have
        fewer than K images)."""
        if epoch not in self._lengths:
            self._lengths[epoch] = len(self._epoch_batches(epoch))
        return self._lengths[epoch]

    def shares(self, epoch: int, skip: int = 0) -> Iterator[list[tuple[int, int]]]:
        """This rank's shares of epoch ``epoch``'s batches after the first ``skip``."""
        b = self.batch_size
        for batch in self._epoch_batches(epoch)[skip:]:
            yield batch[self.rank * b:(self.rank + 1) * b]


class SpanningBatchSampler:
    """``sampler``'s batches from batch ``skip`` of epoch ``epoch`` on, epoch after epoch, without end.

    The batches are those of ``sampler.set_epoch(e)`` for ``e = epoch, epoch + 1, ...`` in order, so a DataLoader
    over it sees the same items (and item seeds) as one loader per epoch would, while its worker processes start
    once. The consumer tracks its position with :meth:`ClassBalancedBatchSampler.epoch_length` (the loader runs
    ahead of it by its prefetch).
    """

    def __init__(self, sampler: ClassBalancedBatchSampler, epoch: int = 0, skip: int = 0) -> None:
        self.sampler = sampler
        self.epoch = epoch
        self.skip = skip

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, skip = self.epoch, self.skip
        while True:
            yield from self.sampler.shares(epoch, skip)
            epoch, skip = epoch + 1, 0
