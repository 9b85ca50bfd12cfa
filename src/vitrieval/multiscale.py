"""Multi-scale descriptors: the L2-normalised mean of the descriptors of the same batch at several scales.

    z(x) = L2( (1 / |S|) Σ_{s ∈ S} f(resize_s(x)) ),   f = the encoder (unit descriptors, before any PCA)

cirtorch's multi-scale extraction with its default power 1 (a plain mean; Radenović et al. use
``S = {1, 1/√2, 1/2}``). :class:`MultiScaleEncoder` wraps an :class:`~vitrieval.model.Encoder` and behaves like one
for :class:`~vitrieval.runtime.torch_embedder.TorchEmbedder` (``data_config``, ``feature_dim``, ``descriptor_dim``,
``pooled``, ``reduce``), so the extraction, its sharding and the PCA after it are unchanged: the PCA is applied to
the multi-scale mean.

``resize_s`` resizes the pre-processed batch (``B × 3 × H × W``) to ``(round(sH), round(sW))`` (bilinear,
antialiased). A ViT (a timm backbone with ``set_input_size``) gets a copy of the encoder per input size whose
position embeddings are resampled by timm (:func:`vitrieval.model.at_image_size` does the same for one square
size), and the scaled size is rounded to a multiple of the patch size instead (at least one patch); a
convolutional backbone takes any size directly. Scale 1 runs the wrapped encoder itself.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_SCALES", "MultiScaleEncoder", "parse_scales"]

#: cirtorch's multi-scale setting.
DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.707, 0.5)


def parse_scales(text: str | Sequence[float]) -> tuple[float, ...]:
    """``"1,0.707,0.5"`` (or numbers) -> distinct positive scales in the given order."""
    values = [v for v in text.split(",") if v.strip()] if isinstance(text, str) else list(text)
    try:
        scales = tuple(dict.fromkeys(float(v) for v in values))
    except ValueError:
        raise ValueError(f"scales must be comma-separated numbers, got {text!r}") from None
    if not scales or any(not s > 0 or s != s or s == float("inf") for s in scales):
        raise ValueError(f"scales must be positive finite numbers, got {text!r}")
    return scales


class MultiScaleEncoder(nn.Module):
    """``encoder`` run on the batch at each of ``scales``; the mean of the unit descriptors, re-normalised."""

    def __init__(self, encoder: nn.Module, scales: Sequence[float] = DEFAULT_SCALES) -> None:
        super().__init__()
        self.encoder = encoder
        self.scales = parse_scales(scales)
        backbone = getattr(encoder, "backbone", None)
        self.resamples_positions = backbone is not None and hasattr(backbone, "set_input_size")
        patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", 1) if self.resamples_positions else 1
        self.patch = tuple(int(p) for p in patch) if isinstance(patch, (tuple, list)) else (int(patch), int(patch))
        # Copies per input size (not submodules: they are caches, not part of the state dict).
        self._resized: dict[tuple[int, int], nn.Module] = {}

    # -- what embed.extract and the evaluation read from an Encoder ------------------------------------------------
    @property
    def data_config(self) -> dict[str, Any]:
        return self.encoder.data_config

    @property
    def feature_dim(self) -> int:
        return int(self.encoder.feature_dim)

    @property
    def descriptor_dim(self) -> int:
        return int(self.encoder.descriptor_dim)

    @property
    def pca(self) -> Any:
        return getattr(self.encoder, "pca", None)

    @property
    def config(self) -> Any:
        return self.encoder.config

    def reduce(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.encoder.reduce(pooled)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The multi-scale descriptor (:meth:`forward`) is what a PCA of multi-scale descriptors takes."""
        return self.forward(images)

    # -- the multi-scale forward -------------------------------------------------------------------------------
    def scaled_size(self, height: int, width: int, scale: float) -> tuple[int, int]:
        """The input size at ``scale``: ``round(s·H) × round(s·W)``, to a multiple of the patch size for a ViT."""
        ph, pw = self.patch
        return (max(ph, round(height * scale / ph) * ph), max(pw, round(width * scale / pw) * pw))

    def _encoder_for(self, size: tuple[int, int], original: tuple[int, int]) -> nn.Module:
        if size == original or not self.resamples_positions:
            return self.encoder
        if size not in self._resized:
            resized = copy.deepcopy(self.encoder)
            resized.backbone.set_input_size(img_size=size)
            self._resized[size] = resized
        model = self._resized[size]
        model.train(self.encoder.training)
        return model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, D)`` unit descriptors: ``L2(mean_s encoder(resize_s(images)))``."""
        h, w = int(images.shape[-2]), int(images.shape[-1])
        total: torch.Tensor | None = None
        for scale in self.scales:
            size = (h, w) if scale == 1 else self.scaled_size(h, w, scale)
            x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear",
                                                             align_corners=False, antialias=True)
            z = self._encoder_for(size, (h, w))(x).float()
            total = z if total is None else total + z
        assert total is not None
        return F.normalize(total / len(self.scales), dim=-1)
