"""Cost of the objectives of the paper's Table 4 at SOP size: forward + backward of each loss, as a ratio to the
contrastive loss, measured in one run.

Only the loss is timed (the backbone's step is the same for every objective and dominates a real step): from a batch
of ``--batch`` descriptors of ``--dim`` (a leaf tensor, L2-normalised inside the timed region so the backward runs
through the normalisation as it does after the encoder) to the gradients of the descriptors and, for NSoftmax, of
the ``--classes`` proxies. SOP: 11,318 training classes, 59,551 training images.

- ``contrastive``: Eq. 1 over the batch (IRT_L); the base of the ratios.
- ``contrastive + memory``: Eq. 1 against the batch and a full cross-batch memory of ``--memory`` entries (IRT_R).
- ``nsoftmax``: normalised softmax over ``--classes`` proxies (a parameter, one per class).
- ``snca``: SNCA against a memory of every training image (``--memory`` rows), each anchor's own row excluded.

The kinds are interleaved step by step so machine noise hits them alike; medians are reported.

    python benchmarks/objective_step.py                  # batch 64, dim 384 (DeiT-S), SOP's 11,318 / 59,551
    python benchmarks/objective_step.py --dim 2048       # ResNet-50's descriptor
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from vitrieval.amp import resolve_device
from vitrieval.losses import contrastive_loss, normalized_softmax_loss, snca_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=11318)
    parser.add_argument("--memory", type=int, default=59551)
    parser.add_argument("--per-class", type=int, default=4, help="images per class in the batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind (after two warm-ups)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)

    # a P x K batch of training classes, and a memory holding every training image (labels cover every class)
    classes = torch.randperm(args.classes, generator=g)[: args.batch // args.per_class]
    labels = classes.repeat_interleave(args.per_class).to(device)
    memory_labels = torch.cat([torch.arange(args.classes),
                               torch.randint(0, args.classes, (args.memory - args.classes,), generator=g)])
    memory = F.normalize(torch.randn(args.memory, args.dim, generator=g), dim=1).to(device)
    # each anchor's own row: some row of its class
    self_index = torch.stack([torch.nonzero(memory_labels == c)[0, 0] for c in labels.cpu()]).to(device)
    memory_labels = memory_labels.to(device)
    features = torch.randn(args.batch, args.dim, generator=g).to(device).requires_grad_()
    proxies = torch.nn.Parameter(torch.empty(args.classes, args.dim).uniform_(-args.dim ** -0.5, args.dim ** -0.5)
                                 .to(device))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    kinds = {
        "contrastive": lambda z: contrastive_loss(z, labels, 0.5),
        "contrastive + memory": lambda z: contrastive_loss(z, labels, 0.5) + contrastive_loss(
            z, labels, 0.5, memory, memory_labels),
        "nsoftmax": lambda z: normalized_softmax_loss(z, labels, proxies, 0.05),
        "snca": lambda z: snca_loss(z, labels, memory, memory_labels, 0.05, self_index=self_index),
    }

    def step(loss_fn) -> float:
        features.grad = None
        proxies.grad = None
        sync()
        start = time.perf_counter()
        loss_fn(F.normalize(features, dim=1)).backward()
        sync()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in kinds}
    for i in range(args.steps + 2):
        for name, fn in kinds.items():
            t = step(fn)
            if i >= 2:
                times[name].append(t)

    base = statistics.median(times["contrastive"])
    with_memory = statistics.median(times["contrastive + memory"])
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {args.batch}, dim {args.dim}, "
          f"{args.classes} proxies, memory {args.memory}, {args.steps} steps (medians)")
    print(f"{'objective':<22} {'fwd+bwd ms':>11} {'x contrastive':>14} {'x contrastive + memory':>23}")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:<22} {median * 1e3:>11.2f} {median / base:>14.2f} {median / with_memory:>23.2f}")


if __name__ == "__main__":
    main()
