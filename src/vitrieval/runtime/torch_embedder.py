"""Query embedding with the torch :class:`~vitrieval.model.Encoder` and the torch eval transform (the reference)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

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

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def embed_prepared(self, inputs: Sequence[torch.Tensor]) -> np.ndarray:
        import torch

        if not len(inputs):
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        return self.encoder.embed(torch.stack(list(inputs)), batch_size=len(inputs), amp=self.amp)

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        out = [self.embed_prepared([self.prepare(im) for im in images[i:i + batch_size]])
               for i in range(0, len(images), batch_size)]
        if not out:
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        return np.concatenate(out)
