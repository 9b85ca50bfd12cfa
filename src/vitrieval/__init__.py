"""vitrieval: train, evaluate and serve image-retrieval descriptors from Vision Transformers (IRT).

``vitrieval.load(path)`` returns a trained :class:`~vitrieval.model.Encoder`; ``encoder.embed(images)`` gives
L2-normalised descriptors. Heavy modules (torch, timm, faiss) are imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"load": ("vitrieval.model", "load"), "Encoder": ("vitrieval.model", "Encoder"),
         "Index": ("vitrieval.index", "Index"), "train": ("vitrieval.training", "train"),
         "Config": ("vitrieval.config", "Config")}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'vitrieval' has no attribute {name!r}")
