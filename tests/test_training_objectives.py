"""The training objectives, directly (no torchrun): the memory order against a brute-force reference, the DDP loss
scaling on simulated ranks, and the tuple objective against the formula the tuple trainer used inline."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from vitrieval.config import LossConfig, MemoryConfig
from vitrieval.losses import koleo_loss, tuple_contrastive_loss
from vitrieval.training.objectives import IRTObjective, LossTerms, Objective, TupleObjective

MARGIN = 0.3


def _unit(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


def _eq1(z: torch.Tensor, y: torch.Tensor, refs: list[tuple[torch.Tensor, int]], margin: float,
         skip_self: bool) -> float:
    """Eq. 1 by loops: per anchor, Σ_pos (1 − s) + Σ_neg max(0, s − β), averaged over the anchors."""
    total = 0.0
    for i in range(len(z)):
        for j, (r, label) in enumerate(refs):
            if skip_self and j == i:
                continue
            s = float(z[i].double() @ r.double())
            total += (1.0 - s) if label == int(y[i]) else max(0.0, s - margin)
    return total / len(z)


def test_objectives_share_one_interface():
    irt = IRTObjective(LossConfig(), MemoryConfig(), 8)
    tup = TupleObjective(LossConfig())
    for objective in (irt, tup):
        assert isinstance(objective, Objective)
        assert objective.parameters() == []  # neither owns trainable parameters
    assert tup.state_dict() == {}
    assert irt.state_dict() == {"memory": None}  # memory.size=0: the checkpoint entry is None


def test_memory_term_enqueues_first_and_skips_the_batchs_own_copies():
    """Batches of 4 into a memory of 10 from iteration 1 on: each active step first queues the batch (the oldest
    entries fall out once it is full), then compares the batch with what is left without its own 4 copies."""
    objective = IRTObjective(LossConfig(margin=MARGIN), MemoryConfig(size=10, start_iteration=1, weight=0.5), 6)
    fifo: list[tuple[torch.Tensor, int]] = []  # the reference queue, newest last
    for iteration in range(5):
        z = _unit(4, 6, seed=iteration)
        y = torch.tensor([iteration % 3, 1, 1, 2 + iteration % 2])
        terms = objective(z, y, iteration)
        batch = [(z[i], int(y[i])) for i in range(4)]
        assert float(terms["contrastive"]) == pytest.approx(_eq1(z, y, batch, MARGIN, skip_self=True), abs=1e-6)
        if iteration == 0:  # not started: nothing queued, no memory term
            assert len(objective.memory) == 0 and float(terms["memory"]) == 0.0
            continue
        fifo = (fifo + batch)[-10:]
        others = fifo[:-4]  # the memory after the enqueue, without the batch's own copies
        assert len(objective.memory) == len(fifo)
        expected = _eq1(z, y, others, MARGIN, skip_self=False) if others else 0.0
        assert float(terms["memory"]) == pytest.approx(expected, abs=1e-6), iteration
        assert float(terms.total) == pytest.approx(float(terms["contrastive"]) + 0.5 * float(terms["memory"]),
                                                   abs=1e-6)
    assert len(fifo) == 10 and len(others) == 6  # the last steps ran on a full, wrapped-around memory
    stored, labels = objective.memory.contents(exclude_last_batch=False)
    got = sorted((tuple(v.tolist()), int(label)) for v, label in zip(stored, labels))
    assert got == sorted((tuple(v.tolist()), label) for v, label in fifo)


def test_the_memory_holds_z_for_memory_not_z():
    objective = IRTObjective(LossConfig(margin=MARGIN), MemoryConfig(size=8, start_iteration=0), 5)
    z, z_mem = _unit(4, 5, seed=1), _unit(4, 5, seed=2)
    objective(z, torch.tensor([0, 0, 1, 1]), 0, z_for_memory=z_mem)
    stored, _ = objective.memory.contents(exclude_last_batch=False)
    assert torch.equal(stored, z_mem)


def test_irt_row_keys_and_koleo_on_the_local_part():
    loss = LossConfig(margin=MARGIN, koleo_weight=0.7)
    objective = IRTObjective(loss, MemoryConfig(), 6)
    z = _unit(8, 6, seed=3)
    y = torch.arange(8) // 2
    terms = objective(z, y, 0, z_local=z[:4])
    assert list(objective.report(terms)) == ["loss", "loss_contrastive", "loss_memory", "loss_koleo"]
    assert torch.equal(terms["koleo"], koleo_loss(z[:4], loss.koleo_eps))  # per rank by default
    assert objective.backward_loss(terms, 1) is terms.total
    global_koleo = IRTObjective(LossConfig(margin=MARGIN, koleo_weight=0.7, koleo_global=True), MemoryConfig(), 6)
    assert torch.equal(global_koleo(z, y, 0, z_local=z[:4])["koleo"], koleo_loss(z, loss.koleo_eps))


# -- DDP scaling: two simulated ranks ------------------------------------------------------------------------------
#
# Under torchrun each rank computes the objective on the gathered batch, in which only its own part carries a
# gradient (``DistContext.gather_with_grad``), back-propagates ``backward_loss(terms, 2)`` and DDP averages the two
# gradients. That average must be the gradient of the one-process objective of the whole batch.

def _simulated_ranks(objective_at, x: torch.Tensor, y: torch.Tensor, iteration: int, world: int = 2
                     ) -> torch.Tensor:
    """DDP's average over ``world`` simulated ranks of the gradient of ``backward_loss`` w.r.t. the weights ``w``."""
    grads = []
    shares = x.chunk(world)
    for rank in range(world):
        w = WEIGHTS.clone().requires_grad_(True)
        parts = [F.normalize(share @ w, dim=1) for share in shares]
        z = torch.cat([p if r == rank else p.detach() for r, p in enumerate(parts)])
        objective = objective_at(rank)
        terms = objective(z, y, iteration, z_local=parts[rank])
        objective.backward_loss(terms, world).backward()
        grads.append(w.grad)
    return torch.stack(grads).mean(0)


def _one_process_grad(loss_of_z, x: torch.Tensor) -> torch.Tensor:
    w = WEIGHTS.clone().requires_grad_(True)
    loss_of_z(F.normalize(x @ w, dim=1), w).backward()
    return w.grad


WEIGHTS = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("koleo_global", [False, True])
def test_backward_loss_makes_the_rank_average_the_global_gradient(koleo_global):
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    loss = LossConfig(margin=MARGIN, koleo_weight=0.4, koleo_global=koleo_global)
    memory = MemoryConfig(size=12, start_iteration=0, weight=0.5)
    start = IRTObjective(loss, memory, 4)
    start.memory.enqueue(_unit(6, 4, seed=9), torch.tensor([0, 1, 2, 0, 1, 2]))  # a memory from earlier steps
    ranks = [copy.deepcopy(start) for _ in range(2)]  # every rank holds the same memory
    averaged = _simulated_ranks(lambda r: ranks[r], x, y, iteration=1)

    def one_process(z, w):
        terms = copy.deepcopy(start)(z, y, 1)
        if koleo_global:  # the global objective is exactly the one-process objective
            return terms.total
        # per-rank KoLeo: the objective is the contrastive terms of the whole batch + λ · the ranks' mean KoLeo
        koleo = (koleo_loss(z[:4], loss.koleo_eps) + koleo_loss(z[4:], loss.koleo_eps)) / 2
        return terms["contrastive"] + memory.weight * terms["memory"] + loss.koleo_weight * koleo

    expected = _one_process_grad(one_process, x)
    torch.testing.assert_close(averaged, expected, rtol=1e-10, atol=1e-12)
    check = copy.deepcopy(start)(F.normalize(x @ WEIGHTS, dim=1), y, 1)
    assert float(check["memory"]) > 0 and float(check["koleo"]) != 0  # every term takes part
    # without the scaling the average would be half the contrastive gradient: the scaling is what makes it right
    unscaled = _simulated_ranks(lambda r: _Unscaled(copy.deepcopy(start)), x, y, iteration=1)
    assert not torch.allclose(unscaled, expected)


class _Unscaled(Objective):
    def __init__(self, inner: Objective) -> None:
        self.inner = inner

    def __call__(self, *args, **kwargs) -> LossTerms:
        return self.inner(*args, **kwargs)

    def backward_loss(self, terms: LossTerms, world_size: int = 1) -> torch.Tensor:
        return terms.total


# -- the tuple objective ---------------------------------------------------------------------------------------------

def _inline(z: torch.Tensor, tuple_size: int, loss: LossConfig, world_size: int) -> tuple[torch.Tensor, dict]:
    """What ``TupleTrainer.step`` computed inline before the objective existed."""
    l_tuple = tuple_contrastive_loss(z, tuple_size, loss.margin) if len(z) else z.float().sum() * 0.0
    weight = loss.koleo_weight
    l_koleo = koleo_loss(z, loss.koleo_eps) if weight > 0 and len(z) > 1 else l_tuple.new_zeros(())
    row = {"loss_tuple": float(l_tuple.detach()), "loss_koleo": float(l_koleo.detach())}
    row["loss"] = row["loss_tuple"] + weight * row["loss_koleo"]
    return world_size * l_tuple + weight * l_koleo, row


@pytest.mark.parametrize("koleo_weight", [0.0, 1.0])
@pytest.mark.parametrize("world_size", [1, 2])
def test_tuple_objective_equals_the_inline_formula(koleo_weight, world_size):
    loss = LossConfig(margin=0.85, koleo_weight=koleo_weight)
    objective = TupleObjective(loss)
    z = _unit(3 * 5, 8, seed=5).requires_grad_(True)  # 3 tuples of 5 (q, p, 3 negatives)
    terms = objective(z, torch.zeros(15, dtype=torch.int64), 0, tuple_size=5)
    expected_loss, expected_row = _inline(z, 5, loss, world_size)
    assert torch.equal(objective.backward_loss(terms, world_size), expected_loss)
    row = objective.report(terms)
    assert row == expected_row and list(row) == ["loss_tuple", "loss_koleo", "loss"]
    assert row["loss_tuple"] > 0 and (row["loss_koleo"] != 0) == (koleo_weight > 0)


def test_an_empty_tuple_share_gives_zero_and_still_reaches_the_parameters():
    objective = TupleObjective(LossConfig(margin=0.85, koleo_weight=1.0))
    w = torch.ones(4, 3, requires_grad=True)
    z = torch.zeros(0, 4) @ w
    terms = objective(z, torch.zeros(0, dtype=torch.int64), 0, tuple_size=5)
    assert objective.report(terms) == {"loss_tuple": 0.0, "loss_koleo": 0.0, "loss": 0.0}
    objective.backward_loss(terms, 2).backward()
    assert w.grad is not None and torch.equal(w.grad, torch.zeros(4, 3))  # joins the all-reduce with zeros
    with pytest.raises(ValueError, match="tuple_size"):
        objective(z, torch.zeros(0, dtype=torch.int64), 0)


def test_tuple_scaling_makes_the_rank_average_the_gradient_of_the_whole_batchs_sum():
    """Each rank holds a disjoint share of the tuples (here 2 of 4) and no gathered batch: λ = 0 gives exactly the
    one-process gradient, λ > 0 the gradient of the tuple sum + λ · the ranks' mean KoLeo."""
    x = torch.randn(4 * 4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # 4 tuples of 4
    for weight in (0.0, 0.5):
        loss = LossConfig(margin=0.85, koleo_weight=weight)
        objective = TupleObjective(loss)
        grads = []
        for share in x.chunk(2):
            w = WEIGHTS.clone().requires_grad_(True)
            z = F.normalize(share @ w, dim=1)
            objective.backward_loss(objective(z, torch.zeros(len(z)), 0, tuple_size=4), 2).backward()
            grads.append(w.grad)

        def one_process(z, w, loss=loss):
            koleo = (koleo_loss(z[:8], loss.koleo_eps) + koleo_loss(z[8:], loss.koleo_eps)) / 2
            return tuple_contrastive_loss(z, 4, loss.margin) + loss.koleo_weight * koleo

        torch.testing.assert_close(torch.stack(grads).mean(0), _one_process_grad(one_process, x), rtol=1e-10,
                                   atol=1e-12)


@pytest.mark.parametrize("start, iterations", [(150, 100), (100, 100), (99, 100), (0, 1), (1, 1)])
def test_a_memory_that_can_never_start_is_warned_about(start, iterations):
    """The warning is given exactly when memory_active is false at every step 0 .. iterations-1 the trainer runs."""
    objective = IRTObjective(LossConfig(), MemoryConfig(size=64, start_iteration=start), dim=8)
    never = not any(objective.memory_active(i) for i in range(iterations))
    warnings = objective.warnings(iterations)
    assert bool(warnings) == never == (start >= iterations)
    if never:
        assert warnings == [f"memory.size=64 but memory.start_iteration={start} >= train.iterations={iterations}: "
                            f"the cross-batch memory never starts; set memory.start_iteration below {iterations} "
                            f"(e.g. --set memory.start_iteration={iterations // 2})"]
    assert IRTObjective(LossConfig(), MemoryConfig(size=0, start_iteration=start), dim=8).warnings(iterations) == []
