"""Pooling: turn a backbone's output into one vector per image.

Token sequences ``(B, N, D)`` of a ViT/DeiT (the paper's Table 9 ablation), :class:`TokenPooling`:

- ``cls``: the class token, token 0 (also for distilled DeiT, whose token 1 is the distillation token).
- ``avg``: mean of the patch tokens.  ``max``: element-wise max of the patch tokens.
- ``gem``: generalised mean of the patch tokens, ``(1/N Σ_n clamp(x_n, ε)^p)^(1/p)`` (Radenović et al. 2018);
  p = 3 by default, optionally learnable.

Feature maps ``(B, C, H, W)`` of a convnet (cirtorch's poolings), the functions :func:`mac`, :func:`spoc`,
:func:`gem`, :func:`rmac` and the module :class:`FeatureMapPooling`:

- ``mac``: spatial max;  ``spoc``: spatial mean;  ``gem``: spatial generalised mean (p = 3, optionally learnable);
- ``rmac``: the sum of the L2-normalised MACs of the whole map and of a multi-scale grid of square regions
  (Tolias et al. 2016, laid out as cirtorch does).
"""

from __future__ import annotations

import math
from functools import lru_cache

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


# -- feature maps (B, C, H, W) -> (B, C) ---------------------------------------------------------------------------

FEATURE_MAP_POOLINGS = ("mac", "spoc", "gem", "rmac")


def _check_map(x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[-2] < 1 or x.shape[-1] < 1:
        raise ValueError(f"expected a (B, C, H, W) feature map with H, W >= 1, got shape {tuple(x.shape)}")


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """float64 stays float64 (for ``gradcheck``); anything else is computed in float32."""
    return x if x.dtype == torch.float64 else x.float()


def mac(x: torch.Tensor) -> torch.Tensor:
    r"""Maximum activations of convolutions: ``mac(x)_c = max_{h, w} x_{c,h,w}``.  ``(B, C, H, W) -> (B, C)``."""
    _check_map(x)
    return x.amax(dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    r"""Sum-pooled convolutional features, as a mean: ``spoc(x)_c = 1/(HW) Σ_{h, w} x_{c,h,w}``.

    ``(B, C, H, W) -> (B, C)``. (cirtorch's ``spoc`` is this average; the scale vanishes in the L2 normalisation.)
    """
    _check_map(x)
    return x.mean(dim=(-2, -1))


def gem(x: torch.Tensor, p: float | torch.Tensor = 3.0, eps: float = 1e-6) -> torch.Tensor:
    r"""Generalised-mean pooling (Radenović et al. 2018): ``gem(x)_c = (1/(HW) Σ_{h, w} max(x_{c,h,w}, ε)^p)^(1/p)``.

    ``(B, C, H, W) -> (B, C)``. ``p = 1`` is :func:`spoc` (of the clamped map), ``p -> ∞`` tends to :func:`mac`.
    ``p`` may be a (learnable) scalar tensor. Computed in float32 (float64 stays float64) and returned in the
    input's dtype, like :class:`GeM`.
    """
    _check_map(x)
    xf = _full_precision(x)
    pf = p.to(xf.dtype) if isinstance(p, torch.Tensor) else p
    return xf.clamp(min=eps).pow(pf).mean(dim=(-2, -1)).pow(1.0 / pf).to(x.dtype)


# cirtorch's ``steps``: the candidate numbers of level-1 regions along the longer side; and its ``ovr``, the desired
# overlap of neighbouring regions.
_RMAC_LONG_SIDE_STEPS = (2, 3, 4, 5, 6, 7)
_RMAC_OVERLAP = 0.4


def _extra_long_side_regions(short: int, long: int) -> int:
    """How many more regions the longer side gets than the shorter one, at every level (cirtorch's Wd / Hd).

    With ``s`` level-1 regions (side ``short``) along the longer side, neighbours are shifted by
    ``b = (long - short) / (s - 1)`` and overlap by the fraction ``(short² - short·b) / short² = 1 - b / short``;
    cirtorch picks the ``s`` in 2..7 whose overlap is closest to 0.4 (the first on a tie) and adds ``s - 1``
    regions along the longer side. A square map gets none.

    Evaluated in float32 in cirtorch's order of operations, so that where the exact values tie (e.g. 6 × 22:
    ``s`` = 5 and 6 are both 1/15 from 0.4) float32 rounding picks the same ``s`` as cirtorch (6 there).
    """
    if short == long:
        return 0
    steps = torch.tensor(_RMAC_LONG_SIDE_STEPS, dtype=torch.float32)
    shift = (long - short) / (steps - 1)
    overlap = (short ** 2 - short * shift) / short ** 2
    return int(torch.argmin((overlap - _RMAC_OVERLAP).abs())) + 1  # argmin: the first minimum, as torch.min


def _starts(length: int, side: int, count: int) -> list[int]:
    """``count`` starts of windows of ``side`` spread over ``length``: ``floor(i·(length - side)/(count - 1))``.

    Evaluated like cirtorch, as ``floor(w2 + i·b) - w2`` with ``w2 = floor(side/2 - 1)`` and ``i·b`` in float32: the
    same integers as the exact formula except where ``i·b`` is an integer that float32 rounds just below it (e.g.
    the last level-2 region of a 3 × 64 map starts at 61, not 62, in cirtorch and here).
    """
    if count == 1:
        return [0]
    step = (length - side) / (count - 1)
    w2 = math.floor(side / 2 - 1)
    starts = torch.floor(w2 + torch.arange(count, dtype=torch.float32) * step) - w2
    return [int(v) for v in starts.tolist()]


@lru_cache(maxsize=256)
def rmac_regions(height: int, width: int, levels: int = 3) -> tuple[tuple[int, int, int], ...]:
    r"""The R-MAC regions of an ``height × width`` map, as ``(top, left, side)`` squares, level 1 first.

    Tolias et al. 2016, laid out exactly as cirtorch's ``rmac`` does:

    - level ``l`` (1..``levels``) has square regions of side ``w_l = floor(2·min(H, W)/(l + 1))``;
    - ``l`` regions along the shorter side and ``l + e`` along the longer one, where ``e`` (0 for a square map) is
      the number of extra regions that makes level-1 neighbours overlap closest to 40 %
      (see :func:`_extra_long_side_regions`);
    - the ``k`` regions along a side of length ``n`` start at ``floor(i·(n − w_l)/(k − 1))``, ``i = 0..k−1``
      (at 0 when ``k = 1``), so the first touches one border and the last (up to float32 rounding, below) the
      other; cirtorch writes this as ``floor(w2 + i·b) − w2`` with ``w2 = floor(w_l/2 − 1)``, mathematically the
      same integer. Coinciding starts (possible on small maps) give repeated regions, counted as many times as
      cirtorch does;
    - a level whose side would be 0 (only when ``min(H, W) < (l + 1)/2``, e.g. levels 2 and 3 of a ``1 × N``
      map) has no region and is skipped, as in cirtorch. Level 1 always has a region (``w_1 = min(H, W) >= 1``),
      so every map ``H, W >= 1`` has one.

    The choice of the extra regions and the starts are evaluated in float32 in cirtorch's order of operations, so
    the layout is cirtorch's also in the few shapes where float32 rounding decides (exact ties of the overlap
    criterion, integer starts rounded down; see :func:`_extra_long_side_regions` and :func:`_starts`).
    """
    if height < 1 or width < 1:
        raise ValueError(f"R-MAC needs a map of at least 1 x 1, got {height} x {width}")
    if levels < 0:
        raise ValueError(f"R-MAC levels must be >= 0, got {levels}")
    short = min(height, width)
    extra = _extra_long_side_regions(short, max(height, width))
    extra_h, extra_w = (extra, 0) if height > width else (0, extra)
    regions = []
    for level in range(1, levels + 1):
        side = (2 * short) // (level + 1)
        if side == 0:
            continue
        for top in _starts(height, side, level + extra_h):
            for left in _starts(width, side, level + extra_w):
                regions.append((top, left, side))
    return tuple(regions)


def rmac(x: torch.Tensor, levels: int = 3, eps: float = 1e-6) -> torch.Tensor:
    r"""Regional MAC (Tolias et al. 2016, cirtorch's form): ``(B, C, H, W) -> (B, C)``.

    ::

        rmac(x) = n(mac(x)) + Σ_{l=1..L} Σ_{R ∈ regions_l} n(mac(x_R)),     n(v) = v / (‖v‖₂ + ε)

    the sum of the L2-normalised MAC of the whole map and of the L2-normalised MACs of the square regions of
    levels ``1..L`` (:func:`rmac_regions`), **not** normalised at the end (the encoder L2-normalises the
    descriptor after pooling / projection).

    Like cirtorch, the whole-map MAC is a term of its own *and* levels start at ``l = 1``: on a square map the
    single level-1 region is the whole map, so its MAC is counted twice; on an oblong map level 1 has
    ``1 + e`` regions of side ``min(H, W)``. ``ε = 1e-6`` is cirtorch's (added to the norm, so a zero region
    contributes zero with finite gradient). Computed in float32 (float64 stays float64), returned in x's dtype.
    """
    _check_map(x)
    xf = _full_precision(x)

    def normalised(v: torch.Tensor) -> torch.Tensor:
        return v / (v.norm(p=2, dim=1, keepdim=True) + eps)

    out = normalised(xf.amax(dim=(-2, -1)))
    regions = rmac_regions(int(x.shape[-2]), int(x.shape[-1]), levels)
    if regions:
        region_macs = torch.stack([xf[..., t:t + s, left:left + s].amax(dim=(-2, -1)) for t, left, s in regions],
                                  dim=-1)  # (B, C, R)
        out = out + normalised(region_macs).sum(dim=-1)
    return out.to(x.dtype)


class FeatureMapPooling(nn.Module):
    """Pool a convnet's ``(B, C, H, W)`` feature map into ``(B, C)``: ``mac``, ``spoc``, ``gem`` or ``rmac``.

    ``gem`` keeps its exponent in a :class:`GeM` submodule (``gem.p``, a parameter when ``gem_learnable``, as in
    :class:`TokenPooling`) and pools with :func:`gem`; ``rmac`` uses ``rmac_levels`` levels.
    """

    def __init__(self, kind: str, gem_p: float = 3.0, gem_learnable: bool = False, rmac_levels: int = 3) -> None:
        super().__init__()
        if kind not in FEATURE_MAP_POOLINGS:
            raise ValueError(f"feature-map pooling must be one of {', '.join(FEATURE_MAP_POOLINGS)}; got {kind!r}")
        self.kind = kind
        self.rmac_levels = rmac_levels
        self.gem = GeM(gem_p, gem_learnable) if kind == "gem" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "mac":
            return mac(x)
        if self.kind == "spoc":
            return spoc(x)
        if self.kind == "rmac":
            return rmac(x, self.rmac_levels)
        assert self.gem is not None
        return gem(x, self.gem.p, self.gem.eps)
