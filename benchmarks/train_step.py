"""Cost of the IRT objective: an IRT_R step (contrastive + cross-batch memory + KoLeo) vs a plain step, and the cost
of logging Fig 4's gradient noise γ (``train.log_gradient_noise``) on top of an IRT_R step.

Both steps run the same model on the same batch with the same AdamW; the plain step back-propagates the mean of the
descriptors (a loss that costs nothing), the IRT_R step the full objective with a memory of ``--memory`` entries
(60,000 ≈ the SOP training set, the paper's setting), already full. Timings alternate between the two kinds so
machine noise hits both alike; the table reports medians and their ratio (goal: ≤ 1.05). The γ row is an IRT_R step
that also computes γ of its batch (:func:`vitrieval.analyze.gradient_noise.gradient_noise`), as the trainer does on
a logged step; with ``train.log_every`` = N the run pays 1/N of that extra per step.

    python benchmarks/train_step.py                       # DeiT-S 224, batch 64 (the paper's setting)
    python benchmarks/train_step.py --model deit_tiny_patch16_224 --image-size 64 --patch-size 8 --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vitrieval.amp import autocast_context, resolve_device
from vitrieval.analyze.gradient_noise import gradient_noise
from vitrieval.config import LossConfig, MemoryConfig, ModelConfig
from vitrieval.model import Encoder
from vitrieval.training.objectives import IRTObjective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--memory", type=int, default=60000)
    parser.add_argument("--steps", type=int, default=3, help="timed steps of each kind (after one warm-up each)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(name=args.model, pretrained=False, image_size=args.image_size,
                                  patch_size=args.patch_size)).to(device)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=3e-5, weight_decay=5e-4)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    labels = torch.arange(args.batch, device=device) // 4
    objective = IRTObjective(LossConfig(margin=0.5, koleo_weight=0.7),
                             MemoryConfig(size=args.memory, start_iteration=0), encoder.feature_dim, device)
    assert objective.memory is not None
    fill = torch.nn.functional.normalize(torch.randn(args.memory, encoder.feature_dim, device=device), dim=1)
    objective.memory.enqueue(fill, torch.randint(0, args.memory // 5, (args.memory,), device=device))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def plain_step() -> None:
        with autocast_context(device, args.amp):
            z = encoder(images)
        loss = z.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def irt_step(log_gamma: bool = False) -> None:
        with autocast_context(device, args.amp):
            z = encoder(images)
        terms = objective(z, labels, iteration=10**6)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        optimizer.step()
        if log_gamma:
            gradient_noise(z.detach().float(), labels, 0.5)

    times: dict[str, list[float]] = {"plain": [], "irt_r": [], "irt_r_gamma": []}
    steps = {"plain": plain_step, "irt_r": irt_step, "irt_r_gamma": lambda: irt_step(log_gamma=True)}
    for rep in range(args.steps + 1):
        for name, fn in steps.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if rep > 0:  # the first of each kind is a warm-up
                times[name].append(time.perf_counter() - t0)

    plain, irt = statistics.median(times["plain"]), statistics.median(times["irt_r"])
    gamma = statistics.median(times["irt_r_gamma"])
    with torch.no_grad():
        z_batch = encoder(images).float()
    alone = []
    for _ in range(20):  # γ by itself: small next to a step, so timed on its own too (less exposed to noise)
        sync()
        t0 = time.perf_counter()
        gradient_noise(z_batch, labels, 0.5)
        sync()
        alone.append(time.perf_counter() - t0)
    gamma_alone = statistics.median(alone)
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch threads {torch.get_num_threads()}, amp {args.amp}")
    print(f"model {args.model} @ {args.image_size}px, batch {args.batch}, memory {args.memory} x "
          f"{encoder.feature_dim}, {args.steps} timed steps each\n")
    print("| step | median s | images/s | ratio vs plain |")
    print("|---|---:|---:|---:|")
    print(f"| plain forward + backward + AdamW | {plain:.3f} | {args.batch / plain:.1f} | 1.000 |")
    print(f"| IRT_R (contrastive + memory {args.memory} + KoLeo) | {irt:.3f} | {args.batch / irt:.1f} | "
          f"{irt / plain:.3f} |")
    print(f"| IRT_R + γ logged (train.log_gradient_noise, a logged step) | {gamma:.3f} | {args.batch / gamma:.1f} | "
          f"{gamma / plain:.3f} |")
    print(f"\ngoal: ratio <= 1.05 -> {'met' if irt / plain <= 1.05 else 'NOT met'}")
    print(f"γ logging: a logged step costs {gamma / irt:.3f}x an IRT_R step (same run, alternating); γ alone "
          f"{gamma_alone * 1e3:.2f} ms = {gamma_alone / irt:.5f} of an IRT_R step; at train.log_every=10, "
          f"{1 + gamma_alone / irt / 10:.5f}x on average")


if __name__ == "__main__":
    main()
