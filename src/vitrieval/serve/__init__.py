"""The HTTP service: ``create_app(index)`` -> a FastAPI app (search by upload, thumbnails, a web page).

``create_app`` is imported on first use, so that ``vitrieval serve --help`` reads the batching defaults
(:mod:`vitrieval.serve.batching`) without importing FastAPI and the index.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from vitrieval.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'vitrieval.serve' has no attribute {name!r}")
