"""The IRT losses: contrastive loss with margin (Eq. 1), the KoLeo differential-entropy regulariser (Eq. 5), and
cirtorch's distance-based contrastive loss over mined tuples (landmark fine-tuning on SfM-120k); and the two other
objectives of the paper's Table 4: the normalised softmax over class proxies (NSoftmax, Zhai & Wu 2018) and scalable
neighbourhood component analysis over a memory of training descriptors (SNCA, Wu et al. 2018).

All take unit-norm descriptors ``z`` (the encoder's output) and are computed in float32 even under autocast
(float64 inputs stay float64, for ``gradcheck``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _full_precision(z: torch.Tensor) -> torch.Tensor:
    return z if z.dtype == torch.float64 else z.float()


def contrastive_loss(z: torch.Tensor, labels: torch.Tensor, margin: float = 0.5,
                     ref_z: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
    r"""Contrastive loss with margin, summed per anchor and averaged over anchors (the paper's Eq. 1).

    With ``s_ij = z_iᵀ r_j`` (cosine similarity of unit vectors) and ``N`` anchors::

        L = 1/N Σ_i [ Σ_{j ∈ P(i)} (1 − s_ij)  +  Σ_{j ∈ N(i)} max(0, s_ij − β) ]

    where ``P(i)`` are the references with the anchor's label and ``N(i)`` the others; ``β = margin``.

    - Without ``ref_z`` the references are the batch itself and self-pairs ``j = i`` are excluded.
    - With ``ref_z`` (e.g. the cross-batch memory) every anchor × reference pair counts; the caller passes the
      memory *without* the batch's own just-queued copies.

    This is the XBM reference normalisation (sum over pairs, divide by the number of anchors), not
    pytorch-metric-learning's ``ContrastiveLoss`` (which averages the positive and negative terms separately over
    their non-zero pairs): only the former reproduces the paper's KoLeo gain.
    """
    if z.ndim != 2:
        raise ValueError(f"z must be (N, D), got shape {tuple(z.shape)}")
    if labels.shape != (z.shape[0],):
        raise ValueError(f"labels must be ({z.shape[0]},), got {tuple(labels.shape)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        zf = _full_precision(z)
        if ref_z is None:
            ref, ref_y = zf, labels
        else:
            if ref_labels is None or ref_labels.shape != (ref_z.shape[0],):
                raise ValueError("ref_labels must be given with ref_z, one label per reference row")
            if ref_z.shape[1] != z.shape[1]:
                raise ValueError(f"ref_z has dimension {ref_z.shape[1]}, z has {z.shape[1]}")
            ref, ref_y = ref_z.to(zf.dtype), ref_labels
        if z.shape[0] == 0 or ref.shape[0] == 0:
            return zf.sum() * 0.0
        sim = zf @ ref.T
        same = labels[:, None] == ref_y[None, :]
        if ref_z is None:
            eye = torch.eye(len(zf), dtype=torch.bool, device=zf.device)
            pos = same & ~eye
            neg = ~same
        else:
            pos, neg = same, ~same
        pos_term = torch.where(pos, 1.0 - sim, torch.zeros_like(sim)).sum()
        neg_term = torch.where(neg, F.relu(sim - margin), torch.zeros_like(sim)).sum()
        return (pos_term + neg_term) / z.shape[0]


def koleo_loss(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    r"""KoLeo differential-entropy regulariser (Sablayrolles et al. 2019; the paper's Eq. 5).

    ::

        L_KoLeo = −1/N Σ_i log(ρ_i + ε),    ρ_i = min_{j ≠ i} ‖z_i − z_j‖₂

    The nearest neighbour ``j`` of each ``z_i`` within the batch is found without gradient (largest inner product,
    diagonal excluded: for unit vectors that is the smallest distance); the distance is then computed with
    gradient, as ``‖z_i − z_j + ε‖`` (``torch.nn.functional.pairwise_distance``), which keeps the gradient finite
    for exact duplicates. Computed in float32 even under autocast.
    """
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"koleo_loss needs (N >= 2, D) descriptors, got shape {tuple(z.shape)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        zf = _full_precision(z)
        with torch.no_grad():
            dots = zf @ zf.T
            dots.fill_diagonal_(float("-inf"))
            nearest = dots.argmax(dim=1)
        rho = F.pairwise_distance(zf, zf[nearest], p=2, eps=eps)
        return -torch.log(rho + eps).mean()


def tuple_contrastive_loss(z: torch.Tensor, tuple_size: int, margin: float = 0.85,
                           eps: float = 1e-6) -> torch.Tensor:
    r"""Distance-based contrastive loss over training tuples (cirtorch's form, used on SfM-120k).

    ``z`` holds ``T`` tuples of ``S = tuple_size`` descriptors each, in order ``(q, p, n_1, …, n_{S-2})`` per tuple.
    Every non-query image ``x`` of a tuple is paired with the tuple's query ``q``; with ``y = 1`` for the positive
    and ``y = 0`` for the negatives, ``d = ‖q − x + ε‖₂`` and ``τ = margin``::

        L = Σ_tuples Σ_{x ≠ q} [ ½ · y · d²  +  ½ · (1 − y) · max(0, τ − d)² ]

    summed (not averaged) over the pairs of all tuples, as cirtorch does (its ``contrastive_loss``, where the ``ε``
    inside the norm keeps the gradient finite for identical descriptors). Computed in float32 under autocast.
    """
    if z.ndim != 2:
        raise ValueError(f"z must be (T * S, D), got shape {tuple(z.shape)}")
    if tuple_size < 2 or z.shape[0] % tuple_size:
        raise ValueError(f"z has {z.shape[0]} rows, not a whole number of tuples of {tuple_size} "
                         "(query, positive, negatives)")
    with torch.autocast(device_type=z.device.type, enabled=False):
        tuples = _full_precision(z).view(-1, tuple_size, z.shape[1])
        query, others = tuples[:, :1], tuples[:, 1:]
        d = (query - others + eps).pow(2).sum(dim=-1).sqrt()  # (T, S - 1): positive first, then the negatives
        positive = 0.5 * d[:, 0].pow(2)
        negative = 0.5 * F.relu(margin - d[:, 1:]).pow(2)
        return positive.sum() + negative.sum()


def normalized_softmax_loss(z: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor,
                            temperature: float = 0.05) -> torch.Tensor:
    r"""Normalised softmax loss over class proxies (NSoftmax; Zhai & Wu 2018, "Classification is a strong baseline
    for deep metric learning"; the paper's Table 4).

    With the descriptors ``z_i`` (unit norm, as the encoder outputs them; not re-normalised here), one proxy
    ``p_c`` per training class, ``p̂_c = p_c / ‖p_c‖₂`` and ``τ = temperature``::

        L = −1/N Σ_i log( exp(z_iᵀ p̂_{y_i} / τ) / Σ_c exp(z_iᵀ p̂_c / τ) )

    i.e. the mean cross-entropy of the logits ``z · normalise(proxies)ᵀ / τ``, without bias. ``proxies`` is
    ``(num_classes, D)``, a learned parameter owned by the caller; ``labels`` are class indices into its rows.
    The gradient reaches both ``z`` and ``proxies`` (through the normalisation).

    Reference settings (Zhai & Wu's code, github.com/azgo14/classification_metric_learning): τ = 0.05; the proxies
    are initialised like ``nn.Linear`` (uniform ±1/√D) and trained in the same SGD parameter group as the network,
    i.e. with a learning-rate multiplier of **1** (its ``--lr_mult`` flag defaults to 1 and every published
    reproduction command, SOP included, passes ``--lr_mult 1``). Its one special treatment of the new parameters
    is a warm-up (``--pretrain_epochs 1``) in which only they (proxies and embedding layer) are trained, at
    ``lr · lr_mult``, before the end-to-end fine-tuning. I could not check the paper's text for a different value.

    Identical to pytorch-metric-learning's ``NormalizedSoftmaxLoss`` (``W = proxiesᵀ``) for unit-norm ``z``; that
    one also normalises ``z``. Computed in float32 even under autocast (float64 stays float64).
    """
    if z.ndim != 2:
        raise ValueError(f"z must be (N, D), got shape {tuple(z.shape)}")
    if labels.shape != (z.shape[0],):
        raise ValueError(f"labels must be ({z.shape[0]},), got {tuple(labels.shape)}")
    if proxies.ndim != 2 or proxies.shape[1] != z.shape[1]:
        raise ValueError(f"proxies must be (num_classes, {z.shape[1]}), got shape {tuple(proxies.shape)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        zf = _full_precision(z)
        if z.shape[0] == 0:
            return zf.sum() * 0.0 + proxies.to(zf.dtype).sum() * 0.0
        logits = zf @ F.normalize(proxies.to(zf.dtype), dim=1).T / temperature
        return F.cross_entropy(logits, labels)


def snca_loss(z: torch.Tensor, labels: torch.Tensor, ref_z: torch.Tensor, ref_labels: torch.Tensor,
              temperature: float = 0.05, self_index: torch.Tensor | None = None) -> torch.Tensor:
    r"""Scalable neighbourhood component analysis (SNCA; Wu et al. 2018, "Improving generalization via scalable
    neighborhood component analysis"; the paper's Table 4).

    With anchors ``z_i`` (labels ``y_i``), references ``r_j`` (labels ``y_j``; in training a memory of every
    training image) and ``τ = temperature``::

        p_ij = exp(z_iᵀ r_j / τ) / Σ_{k ≠ s(i)} exp(z_iᵀ r_k / τ)
        L    = −1/N Σ_i log Σ_{j ≠ s(i), y_j = y_i} p_ij

    where ``s(i) = self_index[i]`` is the reference row that holds anchor ``i`` itself, left out of both sums
    (a negative entry, or ``self_index=None``, means the anchor has no row among the references).
    Computed stably as ``logsumexp`` over all (non-self) references minus ``logsumexp`` over the positives.

    An anchor without any positive among the references (its class has no other row) has no defined term: it is
    left out of the sum and contributes nothing, and the sum is still divided by ``N``, the number of anchors, as
    the reference implementation does (``NCACrossEntropy`` of github.com/Microsoft/snca.pytorch drops anchors whose
    probability is 0 and divides by the batch size). With no anchor having a positive the loss is 0 (with a zero
    gradient). The reference uses τ = 0.05 and updates its memory with momentum 0.5 (the memory is the caller's).

    The gradient reaches ``z`` and, if it requires one, ``ref_z`` (a memory is normally a buffer).
    Computed in float32 even under autocast (float64 stays float64).
    """
    if z.ndim != 2:
        raise ValueError(f"z must be (N, D), got shape {tuple(z.shape)}")
    if labels.shape != (z.shape[0],):
        raise ValueError(f"labels must be ({z.shape[0]},), got {tuple(labels.shape)}")
    if ref_z.ndim != 2 or ref_z.shape[1] != z.shape[1]:
        raise ValueError(f"ref_z must be (M, {z.shape[1]}), got shape {tuple(ref_z.shape)}")
    if ref_labels.shape != (ref_z.shape[0],):
        raise ValueError(f"ref_labels must be ({ref_z.shape[0]},), got {tuple(ref_labels.shape)}")
    if self_index is not None and self_index.shape != (z.shape[0],):
        raise ValueError(f"self_index must be ({z.shape[0]},), got {tuple(self_index.shape)}")
    with torch.autocast(device_type=z.device.type, enabled=False):
        zf = _full_precision(z)
        if z.shape[0] == 0 or ref_z.shape[0] == 0:
            return zf.sum() * 0.0
        logits = zf @ ref_z.to(zf.dtype).T / temperature  # (N, M)
        positive = labels[:, None] == ref_labels[None, :]
        if self_index is not None:
            has_self = self_index >= 0
            rows, cols = torch.arange(z.shape[0], device=z.device)[has_self], self_index[has_self]
            logits = logits.index_put((rows, cols), torch.tensor(float("-inf"), dtype=logits.dtype,
                                                                 device=logits.device))
            positive = positive.index_put((rows, cols), torch.tensor(False, device=positive.device))
        has_positive = positive.any(dim=1)
        # A row without a positive is replaced by zeros (and all its references counted as "positive"), so that
        # no logsumexp runs over an all -inf row (its backward would be NaN); the row's term is then dropped.
        logits = torch.where(has_positive[:, None], logits, torch.zeros((), dtype=logits.dtype, device=z.device))
        positive = positive | ~has_positive[:, None]
        log_all = logits.logsumexp(dim=1)
        log_pos = logits.masked_fill(~positive, float("-inf")).logsumexp(dim=1)
        per_anchor = torch.where(has_positive, log_all - log_pos, torch.zeros_like(log_all))
        return per_anchor.sum() / z.shape[0]
