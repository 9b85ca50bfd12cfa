"""Writes over HTTP: ``POST /images`` (add an uploaded image) and ``DELETE /images/{id}`` (remove one).

- ``POST /images``: multipart ``file`` (the limits of ``/search`` apply: bytes, pixels, aspect ratio) and optional
  form fields ``label`` (an integer) and ``class_name`` (text) -> 201 ``{"id": n}``. The upload is stored under the
  index folder as ``<index>/uploads/<random>-<its sanitised file name>`` (written atomically and fsynced; its row
  names it relative to the folder, so a copied index folder is complete), embedded through the same
  :class:`~vitrieval.serve.batching.Batcher` as the queries, journalled (fsynced) and applied: the answer comes once
  the write is durable, and the next search finds the image.
- ``DELETE /images/{id}`` -> 204; the image is gone from search and from ``/images/{id}``, the thumbnail cache
  forgets it, and a file that came from ``POST /images`` is deleted (files of the indexed collection never are).

Both need ``Authorization: Bearer <token>`` (:mod:`vitrieval.serve.auth`) and are compacted into the index folder
in the background (:class:`~vitrieval.index.compaction.Compactor`).
"""

from __future__ import annotations

import errno
import io
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from PIL import Image

from vitrieval.index.store import fsync_dir
from vitrieval.io_utils import atomic_write_bytes

if TYPE_CHECKING:
    from vitrieval.index import Index

UPLOADS_DIR = "uploads"
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
               "TIFF": ".tif", "PPM": ".ppm"}


class UploadStore:
    """The images added over HTTP, kept under ``<index>/uploads/``."""

    def __init__(self, index_dir: Path) -> None:
        self.directory = index_dir / UPLOADS_DIR

    def save(self, data: bytes, name: str = "") -> Path:
        """Write ``data`` durably under a fresh name that keeps the uploaded file's (:func:`sanitised_name`; the
        extension from its format) and return the path."""
        try:
            fmt = Image.open(io.BytesIO(data)).format
        except (OSError, ValueError):  # it decoded already; the name only needs an extension
            fmt = None
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = sanitised_name(name)
        suffix = _EXTENSIONS.get(fmt or "", ".img")
        path = self.directory / f"{uuid.uuid4().hex[:12]}{'-' + stem if stem else ''}{suffix}"
        atomic_write_bytes(path, data)  # fsynced before the rename
        fsync_dir(self.directory)
        return path

    def owns(self, path: str) -> bool:
        return Path(path).parent == self.directory

    def discard(self, path: str) -> None:
        """Delete an uploaded file (never one outside ``uploads/``)."""
        if self.owns(path):
            Path(path).unlink(missing_ok=True)


def sanitised_name(name: str, limit: int = 80) -> str:
    """The stem of an uploaded file's name as it may be stored: its last path component without the extension,
    letters, digits, ``-``, ``_`` and ``.`` kept (other characters as ``_``), at most ``limit`` characters; ``""``
    when nothing is left."""
    stem = PurePath(name.replace("\\", "/")).name
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return cleaned[:limit]


def parse_class_name(fields: dict[str, Any]) -> str | None:
    """The optional ``class_name`` form field (one line of printable text, at most 200 characters; 422 otherwise)."""
    raw = fields.get("class_name")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str) or len(raw) > 200 or not raw.isprintable():
        raise HTTPException(422, f"class_name must be one line of text (at most 200 characters), got "
                                 f"{str(raw)[:40]!r}")
    return raw.strip()


def parse_label(fields: dict[str, Any]) -> int | None:
    """The optional ``label`` form field as a non-negative integer (422 otherwise)."""
    raw = fields.get("label")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str) or not raw.strip().isascii() or not raw.strip().isdigit() or len(raw.strip()) > 9:
        raise HTTPException(422, f"label must be a non-negative integer, got {str(raw)[:40]!r}")
    return int(raw.strip())


def add_upload(index: Index, store: UploadStore, data: bytes, descriptor: Any, label: int | None, name: str = "",
               class_name: str | None = None) -> int:
    """Store the upload (keeping its sanitised ``name``), then journal and apply its descriptor; returns its id (on a
    thread: both fsync). A failed write (a full disk) leaves neither the file nor the row."""
    path = store.save(data, name)
    try:
        return int(index.add_descriptors(descriptor[None], [(str(path), label, class_name)])[0])
    except BaseException:
        os.unlink(path)
        raise


@contextmanager
def write_failures() -> Iterator[None]:
    """A write the disk refused (full: 507, any other I/O error: 500) as an HTTP error that says it had no effect."""
    try:
        yield
    except OSError as exc:
        code = 507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 500
        raise HTTPException(code, f"the write was not recorded: {exc.strerror or exc}") from None


def remove_image(index: Index, store: UploadStore, image_id: int) -> bool:
    """Journal and apply the removal, then delete the file if it was uploaded; whether the id was there."""
    try:
        path = index.entry(image_id).path
    except KeyError:
        return False
    if not index.remove([image_id], save=False):
        return False
    store.discard(path)
    return True
