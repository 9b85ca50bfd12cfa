"""Table 1 as a measurement: parameters, FLOPs and images/s of an encoder on this machine.

- parameters: ``Σ p.numel()`` over the encoder (backbone without its classifier, pooling, projection);
- FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` over one forward pass of one image at the model's size
  (torch counts a multiply-add as 2 FLOPs; matrix products, convolutions and attention are counted, element-wise
  operations are not). timm's fused attention (``F.scaled_dot_product_attention``) is switched off while counting:
  torch's counter does not count its CPU kernel, which would drop the attention products (``q kᵀ`` and ``A v``).
  ``gflops_without_attention`` leaves those batched products out: that is how the paper's Table 1 counts (DeiT-S
  8.48 vs the paper's 8.4, DeiT-B 33.7 vs 33.7; with them 9.20 and 35.13);
- images/s: inference throughput (no gradient) of batches of ``batch_size`` random images, the median of
  ``repeats`` timed batches after one warm-up batch, on ``device`` with torch's current thread count.

The weights do not change any of these, so the encoder is built without downloading them.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import torch

from vitrieval.config import ModelConfig


def measure(model: ModelConfig, *, image_size: int | None = None, batch_size: int = 8, repeats: int = 3,
            device: str = "cpu") -> dict[str, Any]:
    """``{"model", "image_size", "params", "params_m", "flops", "gflops", "images_per_s", ...}`` of ``model``."""
    from torch.utils.flop_counter import FlopCounterMode

    from vitrieval.model import Encoder

    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch size and repeats must be >= 1, got {batch_size} and {repeats}")
    cfg = dataclasses.replace(model, pretrained=False, pretrained_file=None,
                              image_size=image_size or model.image_size)
    encoder = Encoder(cfg).eval().to(device)
    size = int(cfg.image_size)
    params = sum(p.numel() for p in encoder.parameters())
    with torch.no_grad():
        fused = [m for m in encoder.modules() if getattr(m, "fused_attn", False) is True]
        for m in fused:
            m.fused_attn = False
        counter = FlopCounterMode(display=False)
        try:
            with counter:
                encoder(torch.randn(1, 3, size, size, device=device))
        finally:
            for m in fused:
                m.fused_attn = True
        flops = int(counter.get_total_flops())
        attention = int(sum(v for op, v in counter.get_flop_counts().get("Global", {}).items() if "bmm" in str(op)))
        batch = torch.randn(batch_size, 3, size, size, device=device)
        encoder(batch)  # warm-up
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            encoder(batch)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return {"model": cfg.name, "pooling": cfg.pooling, "image_size": size, "params": int(params),
            "params_m": params / 1e6, "flops": flops, "gflops": flops / 1e9,
            "gflops_without_attention": (flops - attention) / 1e9,
            "images_per_s": batch_size / statistics.median(times), "batch_size": batch_size, "repeats": repeats,
            "device": device, "threads": torch.get_num_threads()}
