"""Token pooling: turn the backbone's output tokens into one vector (the paper's Table 9 ablation).

- ``cls``: the class token, token 0 (also for distilled DeiT, whose token 1 is the distillation token).
- ``avg``: mean of the patch tokens.  ``max``: element-wise max of the patch tokens.
- ``gem``: generalised mean of the patch tokens, ``(1/N Σ_n clamp(x_n, ε)^p)^(1/p)`` (Radenović et al. 2018);
  p = 3 by default, optionally learnable.
"""

from __future__ import annotations

import torch
from torch import nn


class GeM(nn.Module):
    """Generalised-mean pooling over tokens: ``(mean_n clamp(x_n, eps)^p)^(1/p)``."""

    def __init__(self, p: float = 3.0, learnable: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        p_tensor = torch.tensor(float(p))
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)
        self.eps = eps

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, D)
        p = self.p.to(torch.float32)
        x = tokens.float().clamp(min=self.eps).pow(p).mean(dim=1).pow(1.0 / p)
        return x.to(tokens.dtype)


class TokenPooling(nn.Module):
    """Pool ``(B, N, D)`` tokens into ``(B, D)``; ``num_prefix_tokens`` are the CLS (+ distillation) tokens."""

    def __init__(self, kind: str, num_prefix_tokens: int, gem_p: float = 3.0, gem_learnable: bool = False) -> None:
        super().__init__()
        if kind not in ("cls", "avg", "max", "gem"):
            raise ValueError(f"pooling must be one of cls, avg, max, gem; got {kind!r}")
        if kind == "cls" and num_prefix_tokens < 1:
            raise ValueError("cls pooling needs a backbone with a class token")
        self.kind = kind
        self.num_prefix_tokens = num_prefix_tokens
        self.gem = GeM(gem_p, gem_learnable) if kind == "gem" else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "cls":
            return tokens[:, 0]
        patches = tokens[:, self.num_prefix_tokens:]
        if self.kind == "avg":
            return patches.mean(dim=1)
        if self.kind == "max":
            return patches.amax(dim=1)
        assert self.gem is not None
        return self.gem(patches)
