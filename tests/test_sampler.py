"""P x K sampler: class balance, determinism by (seed, epoch), resume skip, small classes, disjoint ranks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from vitrieval.data.sampler import ClassBalancedBatchSampler


def labels_with(counts: dict[int, int]) -> np.ndarray:
    return np.asarray([c for c, n in counts.items() for _ in range(n)])


def test_batches_are_p_classes_by_k_images():
    labels = labels_with({c: 10 for c in range(20)})
    s = ClassBalancedBatchSampler(labels, batch_size=16, images_per_class=4, seed=0)
    batches = list(s)
    assert len(batches) == 5  # 20 classes / 4 per batch
    for b in batches:
        per_class = Counter(int(labels[i]) for i, _ in b)
        assert len(b) == 16 and sorted(per_class.values()) == [4, 4, 4, 4]
        assert len({i for i, _ in b}) == 16  # no image twice in a batch


def test_deterministic_per_epoch_and_independent_of_global_rng():
    labels = labels_with({c: 6 for c in range(12)})
    a = ClassBalancedBatchSampler(labels, 8, 4, seed=3)
    b = ClassBalancedBatchSampler(labels, 8, 4, seed=3)
    np.random.seed(123)
    first = list(a)
    np.random.seed(999)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first


def test_skip_resumes_mid_epoch():
    labels = labels_with({c: 5 for c in range(16)})
    s = ClassBalancedBatchSampler(labels, 8, 4, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, skip_batches=2)
    assert list(s) == full[2:] and len(s) == len(full) - 2


def test_small_classes_contribute_all_images_and_singletons_are_left_out(caplog):
    labels = labels_with({0: 1, 1: 2, 2: 3, **{c: 8 for c in range(3, 11)}})
    s = ClassBalancedBatchSampler(labels, 8, 4, seed=0)
    assert s.singletons == [0] and s.small_classes == [1, 2]
    assert "one image left out" in caplog.text
    seen = Counter(int(labels[i]) for b in s for i, _ in b)
    assert 0 not in seen
    assert seen[1] <= 2 and seen[2] <= 3


def test_too_few_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="needs 8 classes"):
        ClassBalancedBatchSampler(labels_with({c: 4 for c in range(5)}), 32, 4)


def test_ranks_get_disjoint_classes_and_concatenate_to_the_single_process_batch():
    labels = labels_with({c: 6 for c in range(24)})
    single = list(ClassBalancedBatchSampler(labels, 16, 4, seed=5))
    r0 = list(ClassBalancedBatchSampler(labels, 8, 4, seed=5, rank=0, world_size=2))
    r1 = list(ClassBalancedBatchSampler(labels, 8, 4, seed=5, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == single
    for a, b in zip(r0, r1):
        assert not {int(labels[i]) for i, _ in a} & {int(labels[i]) for i, _ in b}
