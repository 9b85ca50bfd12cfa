"""The one interface an index embeds its queries through, whatever runs the model (``runtime=torch|onnx``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

RUNTIMES = ("torch", "onnx")
"""``torch``: the :class:`~vitrieval.model.Encoder` (:mod:`.torch_embedder`); ``onnx``: onnxruntime on the file of
``vitrieval export`` (:mod:`.onnx_embedder`, imports no torch)."""


class Embedder(Protocol):
    """The one interface from images to descriptors: a batch of prepared images in, ``(n, D)`` float32 unit-norm
    descriptors out (after PCA when the model has one). Implementations: :class:`~vitrieval.runtime.
    torch_embedder.TorchEmbedder` (the encoder, or its multi-scale wrapper) and :class:`~vitrieval.runtime.
    onnx_embedder.OnnxEmbedder`; every extraction loop (:mod:`vitrieval.runtime.extraction`) and every query
    goes through one."""

    runtime: str
    descriptor_dim: int

    def prepare(self, image: Image.Image) -> Any:
        """One RGB image as the model's input ``(3, H, W)`` (the pre-processing), for :meth:`embed_prepared`."""
        ...

    def embed_prepared(self, inputs: Any) -> np.ndarray:
        """Descriptors of inputs made by :meth:`prepare` (a sequence of them, or them stacked), in order: one
        forward pass."""
        ...


def embed_images(embedder: Embedder, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
    """Descriptors of decoded images, in order, ``batch_size`` per forward pass of ``embedder``."""
    out = [embedder.embed_prepared([embedder.prepare(im) for im in images[i:i + batch_size]])
           for i in range(0, len(images), batch_size)]
    if not out:
        return np.zeros((0, embedder.descriptor_dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


class RuntimeUnavailableError(ValueError):
    """The runtime asked for cannot run here (``torch`` in a torch-free serving install)."""


def torch_missing(exc: ImportError) -> RuntimeUnavailableError | None:
    """The one-line error for ``exc`` when it is torch (or timm / torchvision) that is not installed, else None."""
    name = (exc.name or "").split(".")[0]
    if name not in ("torch", "torchvision", "timm"):
        return None
    return RuntimeUnavailableError(f"runtime torch needs {name}, which is not installed here: use runtime onnx "
                                   "(--runtime onnx) with the model's model.onnx from `vitrieval export`")


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`, else a one-line ``ValueError``."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime
