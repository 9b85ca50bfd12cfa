"""Two ranks × B against one process × 2B: what may differ, by how much, and why (the distributed training tests).

Two ranks compute the same global loss as one process; what differs is the order of float32 sums. Each rank
back-propagates its half of the batch and DDP adds the halves, so every gradient coordinate is the same
mathematical sum taken in another order. That is the only source of difference, and these tests bound its effect
instead of trusting an observed margin of one CPU (another CPU kind picks other kernels, hence other orders).

**Why SGD.** Adam(W) divides each coordinate's step by its own running RMS: a coordinate whose exact gradient is
(almost) zero receives rounding noise only (about 1e-12), and the normalised step turns that noise into a step of up
to ``lr`` in a noise-chosen direction, a different one in each run. No bound on the weights follows from the
arithmetic then. The equivalence runs therefore train with ``train.optimizer=sgd``: heavy-ball momentum ``μ``, an
update *linear* in the gradients. (Which optimizer applies the gradient is not what DDP can get wrong; the ranks'
bit-identical weights and the optimizer's own unit test cover the rest.)

**The weight bound.** With learning rate ``η_t``, momentum ``μ`` and weight decay ``λ``,

    w_T − w_0 = − Σ_t η_t · c_t · (g_t + λ·w_{t−1}),   0 < c_t = Σ_{s ≤ T−t} μ^s ≤ 1 / (1 − μ).

Let ``δg_t`` be the gradient's difference between the two runs at step ``t``. Reordering a sum of ``n`` float32
terms changes it by at most ``(n − 1)·ε·Σ|terms|`` (Higham, Accuracy and Stability, §4.2; ``ε = 2⁻²⁴``). The
longest reduction here is a weight gradient over batch × positions (16 × 64 = 1,024 terms for the ResNet's layer2,
16 × 17 tokens for the ViT), so ``(n − 1)·ε < 6.2e-5``; we bound a tensor's coordinate errors by
``ρ · G_t`` with ``ρ = REORDER_RTOL = 1e-4`` and ``G_t`` the tensor's largest |gradient| at step ``t``, i.e. we assume
the summed terms are no larger than the gradient they add up to, within a factor 1.6. Earlier weight gaps feed back
through the curvature (``δg_t`` also holds ``H·δw_{t−1}``) and the decay; over ``T`` steps this multiplies the bound
by at most ``κ = (1 + η·(L + λ) / (1 − μ))^T``, which we cap at ``FEEDBACK = 10`` (for ``η/(1−μ) = 0.01`` and 6
steps, a curvature ``L`` up to 40). Hence, per tensor,

    max |w_T(two ranks) − w_T(one process)| ≤ FEEDBACK · ρ · Σ_t η_t · G_t / (1 − μ) + 2 · T · ε · max |w_T|

(the bound). The last term is the weights' own rounding: each step stores ``w_t`` rounded to float32 (at most
``ε·|w|`` off), so a gradient gap far below an ulp can still flip a weight's last bit in one run and not the other.
:func:`weight_bounds` computes it from the step sizes and gradient maxima that :func:`record_gradient_maxima`
logs in the one-process run. A broken run (each rank training on the same half of the batch, or a memory that
differs per rank) changes the gradients by a sizeable fraction of themselves, not by ``1e-4`` of them, and fails it:
``test_training_pk_distributed.py`` trains such a run and checks that it is caught (``assert_outside_bounds``).

**Losses** are means of ``n`` non-negative terms (pair terms ``[s − β]₊``, ``1 − s``, softmax cross-entropies),
so reordering changes them by at most ``(n − 1)·ε`` relative; the forward pass adds the weight gap above, far
smaller. :func:`loss_rtol` gives ``(n − 1)·ε`` with ``n`` the number of terms, doubled for the forward pass.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

EPS32 = 2.0 ** -24  # float32 unit roundoff
REORDER_RTOL = 1e-4  # ρ: ≥ (n − 1)·ε for every reduction of the gradient in these tests (n ≤ 1,677)
FEEDBACK = 10.0  # κ: the curvature / decay feedback of earlier gaps over the few steps these tests run


def loss_rtol(terms: int) -> float:
    """Relative tolerance of a mean of ``terms`` non-negative float32 terms summed in two orders, doubled for the
    forward pass's own reordering (batch 8 vs 16 picks other kernel blockings)."""
    return 2 * (terms - 1) * EPS32


def record_gradient_maxima() -> dict[int, list[tuple[float, float]]]:
    """Patch :class:`torch.optim.SGD` so that every step logs, per parameter, ``(lr, max |grad|)``; keyed by
    ``id(param)`` (map to names with :func:`by_name`). Call once in a worker process, before training."""
    import torch

    log: dict[int, list[tuple[float, float]]] = defaultdict(list)
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    log[id(p)].append((float(group["lr"]), float(p.grad.detach().abs().max())))
        return real_step(self, *args, **kwargs)

    torch.optim.SGD.step = step
    return log


def by_name(log: Mapping[int, list[tuple[float, float]]], named: Iterable) -> dict[str, list[tuple[float, float]]]:
    """``log`` keyed by parameter name (``named``: a module's ``named_parameters()``); emptied for the next run."""
    out = {name: list(log.get(id(p), [])) for name, p in named}
    log.clear()
    return out


def weight_bounds(steps: Mapping[str, list[tuple[float, float]]], momentum: float, weights: Mapping
                  ) -> dict[str, float]:
    """The bound of the module docstring, per trained parameter, from the one-process run's ``(lr, max |grad|)``
    per step and its final ``weights``."""
    return {name: FEEDBACK * REORDER_RTOL * sum(lr * g for lr, g in rows) / (1.0 - momentum)
            + 2 * len(rows) * EPS32 * float(weights[name].abs().max())
            for name, rows in steps.items() if rows}


def weight_gaps(got: Mapping, want: Mapping, names: Iterable[str]) -> dict[str, float]:
    """``max |got − want|`` per tensor."""
    return {name: float((got[name].double() - want[name].double()).abs().max()) for name in names}


def assert_within_bounds(got: Mapping, want: Mapping, bounds: Mapping[str, float]) -> None:
    """Every trained tensor of ``got`` within its bound of ``want``."""
    gaps = weight_gaps(got, want, bounds)
    over = {n: (gaps[n], bounds[n]) for n in bounds if not gaps[n] <= bounds[n]}
    assert not over, f"{len(over)} tensors beyond the bound (gap, bound): {dict(list(over.items())[:5])}"


def assert_outside_bounds(got: Mapping, want: Mapping, bounds: Mapping[str, float], factor: float = 100.0) -> None:
    """A broken run is caught: some tensor is ``factor`` × beyond its bound (not a near miss)."""
    gaps = weight_gaps(got, want, bounds)
    worst = max(gaps[n] / bounds[n] for n in bounds if bounds[n] > 0)
    assert worst > factor, f"a broken run stayed within {worst:.3g} x the bound: the check would not catch it"


def assert_losses_close(got: list[list[float]], want: list[list[float]], terms: int) -> None:
    """Per-iteration losses within :func:`loss_rtol` (plus ``ε`` absolute, for terms that are exactly 0)."""
    np.testing.assert_allclose(got, want, rtol=loss_rtol(terms), atol=EPS32)

