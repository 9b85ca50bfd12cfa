"""The contrastive loss (Eq. 1) and KoLeo (Eq. 5) against per-pair references, gradcheck and PML."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitrieval.losses import contrastive_loss, koleo_loss, tuple_contrastive_loss


def brute_force_contrastive(z, labels, margin, ref_z=None, ref_labels=None) -> float:
    """Eq. 1 written pair by pair with Python loops."""
    self_ref = ref_z is None
    ref_z = z if self_ref else ref_z
    ref_labels = labels if self_ref else ref_labels
    total = 0.0
    for i in range(len(z)):
        for j in range(len(ref_z)):
            if self_ref and i == j:
                continue
            s = float(z[i] @ ref_z[j])
            if int(labels[i]) == int(ref_labels[j]):
                total += 1.0 - s
            else:
                total += max(0.0, s - margin)
    return total / len(z)


def unit(n, d, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


@pytest.mark.parametrize("margin", [0.0, 0.3, 0.5, 0.9])
def test_contrastive_matches_brute_force_batch(margin):
    z = unit(24, 16, seed=1)
    labels = torch.randint(0, 6, (24,), generator=torch.Generator().manual_seed(2))
    got = float(contrastive_loss(z, labels, margin))
    assert got == pytest.approx(brute_force_contrastive(z, labels, margin), rel=1e-5, abs=1e-6)


def test_contrastive_matches_brute_force_with_reference_set():
    z, ref = unit(10, 8, seed=3), unit(37, 8, seed=4)
    y = torch.randint(0, 5, (10,), generator=torch.Generator().manual_seed(5))
    ry = torch.randint(0, 5, (37,), generator=torch.Generator().manual_seed(6))
    got = float(contrastive_loss(z, y, 0.5, ref, ry))
    assert got == pytest.approx(brute_force_contrastive(z, y, 0.5, ref, ry), rel=1e-5)


def test_hand_computed_value():
    # two positives at 60 degrees (s = 0.5) and one negative at s = 0.8 from both
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.5, math.sqrt(0.75)]])
    n = F.normalize(torch.tensor([[1.0, 0.75]]), dim=1)
    z = torch.cat([a, b, n])
    y = torch.tensor([0, 0, 1])
    s_an, s_bn = float(a @ n.T), float(b @ n.T)
    expected = ((1 - 0.5) * 2 + max(0, s_an - 0.5) * 2 + max(0, s_bn - 0.5) * 2) / 3
    assert float(contrastive_loss(z, y, 0.5)) == pytest.approx(expected, rel=1e-6)


def test_negatives_inside_margin_contribute_nothing():
    # all negatives have similarity below the margin, positives are identical: loss exactly zero
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert float(contrastive_loss(z, y, margin=0.5)) == 0.0
    # a negative at s = 0.4 < margin: still zero, and no gradient flows to it
    z2 = torch.tensor([[1.0, 0.0], [0.4, math.sqrt(1 - 0.16)]], requires_grad=True)
    loss = contrastive_loss(z2, torch.tensor([0, 1]), margin=0.5)
    loss.backward()
    assert float(loss) == 0.0 and float(z2.grad.abs().sum()) == 0.0


def test_self_pairs_excluded():
    # a single-image class has no positive: its only term is the negatives, never 1 - s_ii = 0
    z = unit(3, 4, seed=7)
    y = torch.tensor([0, 1, 2])
    sims = z @ z.T
    expected = sum(max(0.0, float(sims[i, j]) - 0.1) for i in range(3) for j in range(3) if i != j) / 3
    assert float(contrastive_loss(z, y, 0.1)) == pytest.approx(expected, rel=1e-6)


def test_contrastive_gradcheck_float64():
    z = unit(8, 5, seed=8, dtype=torch.float64).requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ref = unit(12, 5, seed=9, dtype=torch.float64)
    ry = torch.randint(0, 4, (12,), generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(lambda x: contrastive_loss(x, y, 0.2), (z,))
    assert torch.autograd.gradcheck(lambda x: contrastive_loss(x, y, 0.2, ref, ry), (z,))


def test_koleo_matches_formula():
    z = unit(32, 8, seed=10, dtype=torch.float64)
    d = torch.cdist(z, z)
    d.fill_diagonal_(float("inf"))
    rho = d.min(dim=1).values
    expected = float(-torch.log(rho + 1e-8).mean())
    assert float(koleo_loss(z)) == pytest.approx(expected, rel=1e-6)


def test_koleo_gradcheck_and_finite_on_duplicates():
    z = unit(10, 6, seed=11, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(koleo_loss, (z,))
    dup = torch.cat([unit(3, 6, seed=12), unit(3, 6, seed=12)[:1]]).requires_grad_(True)
    loss = koleo_loss(dup)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(dup.grad).all()


def test_koleo_prefers_spread_out_points():
    clustered = F.normalize(torch.ones(16, 8) + 0.05 * unit(16, 8, seed=13), dim=1)
    spread = unit(16, 8, seed=14)
    assert float(koleo_loss(spread)) < float(koleo_loss(clustered)) - 1.0


def test_losses_float32_under_bf16_autocast():
    z = unit(16, 8, seed=15).to(torch.bfloat16)
    y = torch.arange(16) // 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c, k = contrastive_loss(z, y), koleo_loss(z)
    assert c.dtype == torch.float32 and k.dtype == torch.float32


def test_matches_pytorch_metric_learning_up_to_reduction():
    """PML's ContrastiveLoss(pos_margin=1, neg_margin=beta) on cosine similarity sees the same pair terms.

    PML's per-pair positive term is [1 - s]_+ (= 1 - s for unit vectors) and the negative term [s - beta]_+, the
    same as Eq. 1. Only the reduction differs: PML averages positives and negatives separately over their
    *non-zero* pairs (AvgNonZeroReducer) and adds the two means, while Eq. 1 sums every pair term per anchor and
    divides by the number of anchors. So: sum of PML's un-reduced pair losses / N == our loss.
    """
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.losses import ContrastiveLoss
    from pytorch_metric_learning.reducers import DoNothingReducer

    z = unit(20, 12, seed=16)
    y = torch.randint(0, 5, (20,), generator=torch.Generator().manual_seed(17))
    beta = 0.5
    raw = ContrastiveLoss(pos_margin=1, neg_margin=beta, distance=CosineSimilarity(), reducer=DoNothingReducer())
    out = raw(z, y)
    pair_sum = float(out["pos_loss"]["losses"].sum() + out["neg_loss"]["losses"].sum())
    ours = float(contrastive_loss(z, y, beta))
    assert pair_sum / len(z) == pytest.approx(ours, rel=1e-5)
    # ... and PML's default reduction is a different number (the reason the paper's loss is written out here)
    default = float(ContrastiveLoss(pos_margin=1, neg_margin=beta, distance=CosineSimilarity())(z, y))
    assert abs(default - ours) > 1e-3


# -- cirtorch's distance-based contrastive loss over tuples ------------------------------------------------------

def _tuple_loss_loops(z: torch.Tensor, size: int, margin: float, eps: float = 1e-6) -> float:
    """cirtorch's formula pair by pair: 0.5 y d^2 + 0.5 (1 - y) max(0, margin - d)^2, d = ||q - x + eps||."""
    total = 0.0
    for t in range(z.shape[0] // size):
        q = z[t * size].double()
        for j in range(1, size):
            x = z[t * size + j].double()
            d = math.sqrt(float(((q - x + eps) ** 2).sum()))
            total += 0.5 * d * d if j == 1 else 0.5 * max(0.0, margin - d) ** 2
    return total


@pytest.mark.parametrize("margin", [0.85, 1.2])
def test_tuple_loss_matches_cirtorch_formula_pair_by_pair(margin):
    z = F.normalize(torch.randn(3 * 7, 16, generator=torch.Generator().manual_seed(3)), dim=1)
    assert tuple_contrastive_loss(z, 7, margin).item() == pytest.approx(_tuple_loss_loops(z, 7, margin), rel=1e-5)


def test_tuple_loss_hand_values():
    q, p = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # d(q, p) = sqrt(2)
    far, near = torch.tensor([[-1.0, 0.0]]), torch.tensor([[0.6, 0.8]])  # d = 2 (> margin), d = sqrt(0.8) = 0.894
    z = torch.cat([q, p, far, near])
    expected = 0.5 * 2.0 + 0.0 + 0.5 * (1.0 - math.sqrt(0.8)) ** 2  # margin 1.0
    assert tuple_contrastive_loss(z, 4, margin=1.0, eps=0.0).item() == pytest.approx(expected, rel=1e-6)
    # a positive identical to its query and negatives beyond the margin cost nothing (up to eps)
    assert tuple_contrastive_loss(torch.cat([q, q, far]), 3, margin=1.0).item() == pytest.approx(0.0, abs=1e-10)


def test_tuple_loss_gradcheck_and_shape_errors():
    z = torch.randn(2 * 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: tuple_contrastive_loss(x, 4, 0.85), (z,))
    with pytest.raises(ValueError, match="whole number of tuples of 4"):
        tuple_contrastive_loss(torch.randn(7, 5), 4)
