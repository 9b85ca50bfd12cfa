"""The contrastive loss (Eq. 1) and KoLeo (Eq. 5) against per-pair references, gradcheck and PML."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitrieval.losses import (
    contrastive_loss,
    koleo_loss,
    normalized_softmax_loss,
    snca_loss,
    tuple_contrastive_loss,
)


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


# -- NSoftmax (Zhai & Wu 2018) -------------------------------------------------------------------------------------

def _logsumexp(values) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def brute_force_nsoftmax(z, labels, proxies, temperature) -> float:
    """Mean over anchors of -log softmax, with the proxies normalised one by one, in Python loops (float64)."""
    total = 0.0
    for i in range(len(z)):
        logits = []
        for c in range(len(proxies)):
            norm = math.sqrt(sum(float(v) ** 2 for v in proxies[c]))
            logits.append(sum(float(a) * float(b) for a, b in zip(z[i], proxies[c])) / norm / temperature)
        total += _logsumexp(logits) - logits[int(labels[i])]
    return total / len(z)


def nsoftmax_case(n=20, d=16, classes=7, seed=20, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    proxies = torch.randn(classes, d, generator=g, dtype=dtype) * 3.0  # not unit: the loss normalises them
    labels = torch.randint(0, classes, (n,), generator=g)
    return z, labels, proxies


@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
def test_nsoftmax_matches_brute_force(temperature):
    z, y, proxies = nsoftmax_case()
    got = float(normalized_softmax_loss(z, y, proxies, temperature))
    assert got == pytest.approx(brute_force_nsoftmax(z, y, proxies, temperature), rel=1e-10)


def test_nsoftmax_is_cross_entropy_of_the_normalised_logits():
    z, y, proxies = nsoftmax_case(dtype=torch.float32)
    explicit = F.cross_entropy(z @ F.normalize(proxies, dim=1).T / 0.05, y)
    torch.testing.assert_close(normalized_softmax_loss(z, y, proxies), explicit)  # default temperature 0.05


def test_nsoftmax_temperature_and_proxy_scale():
    z, y, proxies = nsoftmax_case()
    base = normalized_softmax_loss(z, y, proxies, 0.05)
    # logits z·p̂/τ: scaling z and τ together changes nothing; the proxies' norms do not matter
    torch.testing.assert_close(normalized_softmax_loss(2.5 * z, y, proxies, 0.125), base)
    scales = torch.rand(len(proxies), 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.1
    torch.testing.assert_close(normalized_softmax_loss(z, y, proxies * scales, 0.05), base)
    # a lower temperature sharpens: hotter -> towards log(C) (uniform), colder -> larger for these random proxies
    assert float(normalized_softmax_loss(z, y, proxies, 1e4)) == pytest.approx(math.log(len(proxies)), rel=1e-4)
    # anchors on their own proxy: loss -> 0 as the temperature drops
    on_proxy = F.normalize(proxies, dim=1)[y]
    assert float(normalized_softmax_loss(on_proxy, y, proxies, 0.01)) < float(
        normalized_softmax_loss(on_proxy, y, proxies, 0.1))


def test_nsoftmax_gradients():
    z, y, proxies = nsoftmax_case(n=6, d=5, classes=4)
    z.requires_grad_()
    proxies.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, p: normalized_softmax_loss(a, y, p, 0.1), (z, proxies))
    # float32 at the default temperature, with large logits: finite, and the proxies learn
    z32, _, _ = nsoftmax_case(dtype=torch.float32)
    p32 = z32[:7].clone().requires_grad_()  # proxies equal to the first 7 anchors: logits up to 1/0.05 = 20
    z32.requires_grad_()
    normalized_softmax_loss(z32, torch.arange(len(z32)) % 7, p32).backward()
    assert torch.isfinite(z32.grad).all() and torch.isfinite(p32.grad).all() and p32.grad.abs().sum() > 0


def test_nsoftmax_matches_pytorch_metric_learning():
    """PML's NormalizedSoftmaxLoss(W = proxiesᵀ) with its default mean reduction is the same number on unit z.

    PML also L2-normalises the embeddings (DotProductSimilarity(normalize_embeddings=True)); this function takes
    z as given (the encoder's output is unit-norm already), so on non-unit z the two differ.
    """
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import NormalizedSoftmaxLoss

    z, y, proxies = nsoftmax_case(dtype=torch.float32)
    pml = NormalizedSoftmaxLoss(num_classes=len(proxies), embedding_size=z.shape[1], temperature=0.05)
    pml.W.data = proxies.T.clone()
    assert float(pml(z, y)) == pytest.approx(float(normalized_softmax_loss(z, y, proxies, 0.05)), rel=1e-5)
    long_z = 1.7 * z
    assert float(pml(long_z, y)) == pytest.approx(float(normalized_softmax_loss(z, y, proxies)), rel=1e-5)
    assert abs(float(pml(long_z, y)) - float(normalized_softmax_loss(long_z, y, proxies))) > 1e-2


def test_nsoftmax_float32_under_autocast_and_errors():
    z, y, proxies = nsoftmax_case(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = normalized_softmax_loss(z.to(torch.bfloat16), y, proxies)
    assert out.dtype == torch.float32
    empty = normalized_softmax_loss(z[:0], y[:0], proxies)
    assert float(empty) == 0.0
    with pytest.raises(ValueError, match="proxies must be"):
        normalized_softmax_loss(z, y, proxies[:, :3])
    with pytest.raises(ValueError, match="labels must be"):
        normalized_softmax_loss(z, y[:3], proxies)


# -- SNCA (Wu et al. 2018) -----------------------------------------------------------------------------------------

def brute_force_snca(z, labels, ref, ref_labels, temperature, self_index=None) -> float:
    """−1/N Σ_i log(Σ_{positives} exp(s/τ) / Σ_{all} exp(s/τ)), self row skipped, anchors without positive
    skipped (still dividing by N), with Python loops in float64 (max-shifted so small τ cannot overflow)."""
    total = 0.0
    for i in range(len(z)):
        logits, positive = [], []
        for j in range(len(ref)):
            if self_index is not None and j == int(self_index[i]):
                continue
            logits.append(sum(float(a) * float(b) for a, b in zip(z[i], ref[j])) / temperature)
            positive.append(int(ref_labels[j]) == int(labels[i]))
        if not any(positive):
            continue
        total += _logsumexp(logits) - _logsumexp([v for v, p in zip(logits, positive) if p])
    return total / len(z)


def snca_case(n=12, m=40, d=8, classes=5, seed=30, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    ref = F.normalize(torch.randn(m, d, generator=g, dtype=dtype), dim=1)
    y = torch.randint(0, classes, (n,), generator=g)
    ry = torch.randint(0, classes, (m,), generator=g)
    ry[:classes] = torch.arange(classes)  # every class has at least one reference
    return z, y, ref, ry


@pytest.mark.parametrize("temperature", [0.05, 0.5, 0.001])
def test_snca_matches_brute_force(temperature):
    z, y, ref, ry = snca_case()
    got = snca_loss(z, y, ref, ry, temperature)
    assert torch.isfinite(got)
    assert float(got) == pytest.approx(brute_force_snca(z, y, ref, ry, temperature), rel=1e-10)


def test_snca_self_index_excludes_the_anchors_own_row():
    """Anchors that are rows of the memory: with self_index, the same as the memory without that row."""
    _, _, ref, ry = snca_case(m=30, seed=31)
    rows = torch.tensor([3, 7, 8, 15, 22, 29])
    z, y = ref[rows].clone(), ry[rows].clone()
    got = float(snca_loss(z, y, ref, ry, 0.05, self_index=rows))
    per_anchor = []  # anchor by anchor, its own row deleted from the memory
    for i, row in enumerate(rows.tolist()):
        keep = [j for j in range(len(ref)) if j != row]
        per_anchor.append(brute_force_snca(z[i:i + 1], y[i:i + 1], ref[keep], ry[keep], 0.05))
    assert got == pytest.approx(sum(per_anchor) / len(rows), rel=1e-10)
    assert got == pytest.approx(brute_force_snca(z, y, ref, ry, 0.05, self_index=rows), rel=1e-10)
    # without the exclusion each anchor finds itself (similarity 1, a positive): a much smaller loss
    assert float(snca_loss(z, y, ref, ry, 0.05)) < got - 0.5
    # a negative entry means "not in the memory": that anchor keeps all rows
    partial = rows.clone()
    partial[0] = -1
    expected = (brute_force_snca(z[:1], y[:1], ref, ry, 0.05) + sum(per_anchor[1:])) / len(rows)
    assert float(snca_loss(z, y, ref, ry, 0.05, self_index=partial)) == pytest.approx(expected, rel=1e-10)


def test_snca_anchor_without_positive_is_skipped_but_counted_in_n():
    z, y, ref, ry = snca_case(seed=32)
    y = y.clone()
    y[2] = 99  # no reference of class 99
    z.requires_grad_()
    loss = snca_loss(z, y, ref, ry, 0.05)
    others = [i for i in range(len(z)) if i != 2]
    expected = brute_force_snca(z[others].detach(), y[others], ref, ry, 0.05) * len(others) / len(z)
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert torch.isfinite(z.grad).all() and float(z.grad[2].abs().sum()) == 0.0 and z.grad[0].abs().sum() > 0
    # an anchor whose only positive is itself is skipped the same way
    solo_ref = torch.cat([ref, z[2:3].detach()])
    solo_ry = torch.cat([ry, torch.tensor([99])])
    self_index = torch.full((len(z),), -1)
    self_index[2] = len(ref)
    zs = z.detach().clone().requires_grad_()
    solo = snca_loss(zs, y, solo_ref, solo_ry, 0.05, self_index=self_index)
    assert float(solo) == pytest.approx(brute_force_snca(zs.detach(), y, solo_ref, solo_ry, 0.05, self_index),
                                        rel=1e-10)
    solo.backward()
    assert torch.isfinite(zs.grad).all() and float(zs.grad[2].abs().sum()) == 0.0
    # no anchor with a positive: 0, with a zero (finite) gradient
    zz = z.detach().clone().requires_grad_()
    nothing = snca_loss(zz, torch.full((len(z),), 99), ref, ry, 0.05)
    nothing.backward()
    assert float(nothing) == 0.0 and torch.equal(zz.grad, torch.zeros_like(zz))
    # a memory of one row, the anchor itself: nothing left, 0 with a finite gradient
    one = z[:1].detach().clone().requires_grad_()
    alone = snca_loss(one, y[:1], one, y[:1], 0.05, self_index=torch.tensor([0]))
    alone.backward()
    assert float(alone) == 0.0 and torch.isfinite(one.grad).all()


def test_snca_gradients_and_temperature_scaling():
    z, y, ref, ry = snca_case(n=5, m=9, d=4, seed=33)
    ry[:5] = y  # every anchor has a positive besides its own row
    self_index = torch.tensor([5, -1, 6, -1, 7])
    ry[5:8] = y[[0, 2, 4]]  # the anchors' own rows carry their labels
    z.requires_grad_()
    ref.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, r: snca_loss(a, y, r, ry, 0.2, self_index), (z, ref))
    base = snca_loss(z, y, ref, ry, 0.05, self_index)
    torch.testing.assert_close(snca_loss(3.0 * z, y, ref, ry, 0.15, self_index), base)
    # very hot: p_ij -> 1/M' for every non-self reference, so the loss -> mean of −log(#positives / #candidates)
    hot = float(snca_loss(z, y, ref, ry, 1e5, self_index))
    expected = 0.0
    for i in range(len(z)):
        candidates = [j for j in range(len(ref)) if j != int(self_index[i])]
        positives = [j for j in candidates if int(ry[j]) == int(y[i])]
        expected += -math.log(len(positives) / len(candidates))
    assert hot == pytest.approx(expected / len(z), rel=1e-4)
    # float32 at a tiny temperature: finite loss and gradient (logsumexp, no overflow)
    z32 = z.detach().float().requires_grad_()
    out = snca_loss(z32, y, ref.detach().float(), ry, 1e-3, self_index)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(z32.grad).all()


def test_snca_matches_pytorch_metric_learning_nca():
    """PML's NCALoss on the batch itself (diagonal excluded) with DotProductSimilarity and softmax_scale = 1/τ.

    Same per-anchor terms; PML drops anchors without a positive (probability 0) and its default MeanReducer
    averages over the remaining ones, while SNCA's reference divides by all N anchors. Equal when every anchor
    has a positive; otherwise sum(PML's un-reduced terms) / N is ours.
    """
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.losses import NCALoss
    from pytorch_metric_learning.reducers import DoNothingReducer

    g = torch.Generator().manual_seed(34)
    z = F.normalize(torch.randn(24, 12, generator=g), dim=1)
    y = torch.arange(24) // 3  # every anchor has two positives in the batch
    self_index = torch.arange(24)
    ours = float(snca_loss(z, y, z, y, 0.05, self_index=self_index))
    pml = NCALoss(softmax_scale=1 / 0.05, distance=DotProductSimilarity())
    assert float(pml(z, y)) == pytest.approx(ours, rel=1e-5)
    # with a PML reference set (not the batch) there is no self exclusion, like self_index=None
    ref = F.normalize(torch.randn(30, 12, generator=g), dim=1)
    ry = torch.arange(30) % 8
    with_ref = float(pml(z, y, ref_emb=ref, ref_labels=ry))
    assert with_ref == pytest.approx(float(snca_loss(z, y, ref, ry, 0.05)), rel=1e-5)
    # one anchor without a positive: the reductions differ
    y2 = y.clone()
    y2[0] = 100
    ours2 = float(snca_loss(z, y2, z, y2, 0.05, self_index=self_index))
    raw = NCALoss(softmax_scale=1 / 0.05, distance=DotProductSimilarity(), reducer=DoNothingReducer())(z, y2)
    assert float(raw["loss"]["losses"].sum()) / len(z) == pytest.approx(ours2, rel=1e-5)
    assert float(pml(z, y2)) == pytest.approx(ours2 * len(z) / (len(z) - 1), rel=1e-5)


def test_snca_float32_under_autocast_and_errors():
    z, y, ref, ry = snca_case(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = snca_loss(z.to(torch.bfloat16), y, ref.to(torch.bfloat16), ry)
    assert out.dtype == torch.float32
    assert float(snca_loss(z[:0], y[:0], ref, ry)) == 0.0
    with pytest.raises(ValueError, match="ref_z must be"):
        snca_loss(z, y, ref[:, :3], ry)
    with pytest.raises(ValueError, match="ref_labels must be"):
        snca_loss(z, y, ref, ry[:3])
    with pytest.raises(ValueError, match="self_index must be"):
        snca_loss(z, y, ref, ry, self_index=torch.arange(3))
