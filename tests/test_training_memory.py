"""Cross-batch memory: FIFO order, wrap-around, exclusion of the batch's own copies, state round trip."""

from __future__ import annotations

import torch

from vitrieval.training.memory import CrossBatchMemory
from vitrieval.training.momentum import MomentumEncoder


def batch(start: int, n: int, dim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(start, start + n)
    return ids[:, None].float().repeat(1, dim), ids


def test_fills_then_wraps_keeping_the_newest():
    mem = CrossBatchMemory(size=10, dim=3)
    for start in range(0, 24, 4):  # six batches of 4: ids 0..23
        mem.enqueue(*batch(start, 4))
    z, y = mem.contents(exclude_last_batch=False)
    assert len(mem) == 10
    assert sorted(y.tolist()) == list(range(14, 24))  # the newest ten survive
    assert torch.equal(z[:, 0].long(), y)  # embeddings stay paired with their labels


def test_excludes_the_just_queued_batch_across_the_wrap():
    mem = CrossBatchMemory(size=10, dim=3)
    for start in (0, 4, 8):  # the third batch (8..11) wraps: slots 8, 9, 0, 1
        mem.enqueue(*batch(start, 4))
    _, y = mem.contents(exclude_last_batch=True)
    assert sorted(y.tolist()) == [2, 3, 4, 5, 6, 7]
    _, y_all = mem.contents(exclude_last_batch=False)
    assert sorted(y_all.tolist()) == list(range(2, 12))


def test_before_full_only_valid_entries():
    mem = CrossBatchMemory(size=100, dim=3)
    mem.enqueue(*batch(0, 5))
    mem.enqueue(*batch(5, 5))
    _, y = mem.contents()
    assert sorted(y.tolist()) == [0, 1, 2, 3, 4]


def test_batch_larger_than_memory_keeps_its_tail_and_excludes_all_of_it():
    mem = CrossBatchMemory(size=4, dim=3)
    mem.enqueue(*batch(0, 6))
    _, y = mem.contents(exclude_last_batch=False)
    assert sorted(y.tolist()) == [2, 3, 4, 5]
    assert len(mem.contents()[1]) == 0


def test_state_round_trip():
    mem = CrossBatchMemory(size=7, dim=3)
    for s in range(0, 15, 3):
        mem.enqueue(*batch(s, 3))
    clone = CrossBatchMemory(size=7, dim=3)
    clone.load_state_dict(mem.state_dict())
    for a, b in zip(mem.contents(), clone.contents()):
        assert torch.equal(a, b)


def test_momentum_encoder_is_an_exponential_moving_average():
    net = torch.nn.Linear(2, 2)
    ema = MomentumEncoder(net, momentum=0.9)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.allclose(ema.encoder.weight, 0.9 * start + 0.1 * (start + 1.0))
    assert not any(p.requires_grad for p in ema.parameters())
