"""Query embedding with the torch :class:`~vitrieval.model.Encoder` and the torch eval transform (the reference)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from vitrieval.model import Encoder


class TorchEmbedder:
    """:class:`~vitrieval.runtime.embedder.Embedder` of an encoder: ``eval_transform(data_config, resize)``, then
    ``Encoder.embed`` under the mixed-precision mode ``amp`` (what an index recorded)."""

    runtime = "torch"

    def __init__(self, encoder: Encoder, data_config: dict, resize: str = "shorter", amp: str = "off") -> None:
        from vitrieval.data.transforms import eval_transform

        self.encoder = encoder
        self.descriptor_dim = encoder.descriptor_dim
        self.transform = eval_transform(data_config, resize)
        self.amp = amp

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        import torch

        out = [self.encoder.embed(torch.stack([self.transform(im) for im in images[i:i + batch_size]]),
                                  batch_size=batch_size, amp=self.amp)
               for i in range(0, len(images), batch_size)]
        if not out:
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        return np.concatenate(out)
