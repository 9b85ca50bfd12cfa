"""Cost of multi-scale extraction (:class:`vitrieval.multiscale.MultiScaleEncoder`) against single-scale.

    python benchmarks/multiscale.py                                  # deit_small_patch16_224, 224 px, batch 16
    python benchmarks/multiscale.py --model deit_tiny_patch16_224 --batches 3

Forward passes only (random-init weights, random pixels: the cost does not depend on them), best of
``--batches`` timed batches after one warm-up batch, for ``--scales`` (default cirtorch's 1, 0.707, 0.5) against
scale 1. For a ViT the scaled inputs are 224, 160 and 112 px (multiples of the patch): 196 + 100 + 49 patch
tokens, so about 1.75x the tokens of one scale, and a little less than that in attention (quadratic in tokens).

Measured (``--batch 8``, deit_small_patch16_224, 2-core CPU under a load average of about 10): 4.92 s per batch
at one scale, 9.85 s at 1, 0.707, 0.5 (2.0x; noisy on the shared machine).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--scales", default="1,0.707,0.5")
    args = ap.parse_args(argv)

    import torch

    from vitrieval.config import ModelConfig
    from vitrieval.model import Encoder
    from vitrieval.multiscale import MultiScaleEncoder, parse_scales

    torch.manual_seed(0)
    enc = Encoder(ModelConfig(name=args.model, pretrained=False, image_size=args.size)).eval()
    scales = parse_scales(args.scales)
    x = torch.randn(args.batch, 3, args.size, args.size)
    times = {}
    with torch.inference_mode():
        for name, model in (("1", enc), (args.scales, MultiScaleEncoder(enc, scales))):
            model(x)  # warm-up (and the per-size copies)
            best = float("inf")
            for _ in range(args.batches):
                t0 = time.perf_counter()
                model(x)
                best = min(best, time.perf_counter() - t0)
            times[name] = best
            print(f"scales {name:<14} {best:7.3f} s / batch of {args.batch}  ({args.batch / best:6.1f} images/s)",
                  flush=True)
    print(f"multi-scale / single-scale: {times[args.scales] / times['1']:.2f}x  "
          f"({args.model}, {args.size} px, torch threads {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
