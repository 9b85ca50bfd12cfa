"""The HTTP service: ``create_app(index)`` -> a FastAPI app (search by upload, thumbnails, a web page)."""

from vitrieval.serve.app import create_app

__all__ = ["create_app"]
