"""The torch :class:`~vitrieval.runtime.embedder.Embedder`: the one forward pass from a prepared batch to
descriptors, for an :class:`~vitrieval.model.Encoder` or its :class:`~vitrieval.multiscale.MultiScaleEncoder`.

    descriptor = reduce(pooled(x))   (``output="descriptor"``: L2(PCA(pooled)), or L2(pooled) without a PCA)
    normalized = L2(pooled(x))       (``output="normalized"``: before any PCA)
    pooled     = pooled(x)           (``output="pooled"``: what a PCA is fitted on)

``pooled`` runs under the autocast mode ``amp`` (:func:`vitrieval.amp.autocast_context`), in eval mode and without
gradients; the rest in float32. Every torch extraction (:func:`vitrieval.embed.extract`) and query runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

    from vitrieval.data.preprocessing import Preprocessing

OUTPUTS = ("descriptor", "normalized", "pooled")


class TorchEmbedder:
    """:class:`~vitrieval.runtime.embedder.Embedder` of ``model`` (an encoder or its multi-scale wrapper): the torch
    eval transform of ``preprocessing`` (default: the model's own), then the forward of the module docstring under
    the mixed-precision mode ``amp``."""

    runtime = "torch"

    def __init__(self, model: Any, preprocessing: Preprocessing | None = None, amp: str = "off",
                 output: str = "descriptor") -> None:
        from vitrieval.data.preprocessing import Preprocessing
        from vitrieval.data.transforms import eval_transform

        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.model = model
        self.preprocessing = preprocessing or Preprocessing.from_data_config(model.data_config)
        self.transform = eval_transform(self.preprocessing)
        self.amp = amp
        self.output = output
        self.descriptor_dim = int(model.descriptor_dim if output == "descriptor" else model.feature_dim)

    @property
    def encoder(self) -> Any:
        """The model it runs (kept for callers that read ``embedder.encoder``)."""
        return self.model

    def prepare(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def embed_prepared(self, inputs: Sequence[torch.Tensor] | torch.Tensor) -> np.ndarray:
        """One forward pass of a prepared batch (a tensor ``(B, 3, H, W)`` or a sequence of ``(3, H, W)``)."""
        import torch

        from vitrieval.amp import autocast_context

        if not len(inputs):
            return np.zeros((0, self.descriptor_dim), dtype=np.float32)
        x = inputs if isinstance(inputs, torch.Tensor) else torch.stack(list(inputs))
        model = self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                with autocast_context(device, self.amp):
                    z = model.pooled(x.to(device, non_blocking=True))
                z = z.float()
                if self.output == "descriptor":
                    z = model.reduce(z)
                elif self.output == "normalized":
                    z = torch.nn.functional.normalize(z, dim=-1)
        finally:
            model.train(was_training)
        return z.cpu().numpy().astype(np.float32, copy=False)
