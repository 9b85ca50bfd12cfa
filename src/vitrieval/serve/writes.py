"""Writes over HTTP: ``POST /images`` (add an uploaded image) and ``DELETE /images/{id}`` (remove one).

- ``POST /images``: multipart ``file`` (the limits of ``/search`` apply: bytes, pixels, aspect ratio) and optional
  form fields ``label`` (an integer from 0 to :data:`MAX_LABEL`, given once) and ``class_name`` (text) -> 201
  ``{"id": n}``. The upload is stored under the index folder as ``<index>/uploads/<random>-<its sanitised file
  name>`` (written atomically and fsynced; its row names it relative to the folder, so a copied index folder is
  complete), embedded through the same
  :class:`~vitrieval.serve.batching.Batcher` as the queries, journalled (fsynced) and applied: the answer comes once
  the write is durable, and the next search finds the image.
- ``DELETE /images/{id}`` -> 204; the image is gone from search and from ``/images/{id}``, the thumbnail cache
  forgets it, and a file that came from ``POST /images`` is deleted (files of the indexed collection never are).

A write the disk refuses (full: 507; read-only or not this user's: 503) is answered with one line naming the file
(relative to the index folder: no server path is shown to clients), the cause and the fix, logged as one WARNING
line with the full path (no traceback), and kept by :class:`WriteHealth` for ``/healthz``.

Both need ``Authorization: Bearer <token>`` (:mod:`vitrieval.serve.auth`) and are compacted into the index folder
in the background (:class:`~vitrieval.index.compaction.Compactor`). A service taking writes holds the folder's
write lock from its start (:func:`hold_for_writes`, before its model loads) to its close.
"""

from __future__ import annotations

import io
import logging
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException
from PIL import Image

from vitrieval.disk_errors import FULL, NotWritable, describe, is_disk_error, naming
from vitrieval.index.store import fsync_dir
from vitrieval.io_utils import atomic_write_bytes

if TYPE_CHECKING:
    from vitrieval.index import Index

log = logging.getLogger(__name__)

UPLOADS_DIR = "uploads"
_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp",
               "TIFF": ".tif", "PPM": ".ppm"}


def hold_for_writes(index: Index) -> None:
    """Take ``index``'s folder write lock for a service's lifetime: refused in one line if another process writes
    the folder (``JournalLocked``) or this one cannot (``NotWritable``: read-only, not this user's, immutable)."""
    if index.directory is None:
        raise ValueError("writes need an index folder: give create_app the folder, or an Index loaded from one")
    try:
        index.hold_writer()
    except NotWritable as exc:  # refused now, in one line, rather than a 500 at the first write
        raise NotWritable(f"writes are on but {exc}; or serve it read-only (no write token)") from None


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
        with naming(path):  # a failed write of the temporary file names none
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


MAX_LABEL = 999_999_999
"""Largest ``label`` a write may give (9 digits: every label fits an int32 and a JSON number exactly)."""


def parse_label(fields: dict[str, Any]) -> int | None:
    """The optional ``label`` form field as an integer from 0 to :data:`MAX_LABEL`; 422 naming the limit otherwise
    (a second ``label`` field is refused with the upload, ``app._read_upload``)."""
    raw = fields.get("label")
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    text = raw.strip() if isinstance(raw, str) else ""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_LABEL)) or int(text) > MAX_LABEL:
        shown = repr(raw[:40]) if isinstance(raw, str) else "a file"
        raise HTTPException(422, f"label must be an integer from 0 to {MAX_LABEL}, got {shown}")
    return int(text)


class WriteHealth:
    """Whether the service's writes reach its index folder, as ``/healthz`` tells it: the folder was checked at start
    (:func:`vitrieval.disk_errors.check_writable`, by ``create_app``), the last write did not fail on the disk (a
    full disk clears once a write succeeds again), and the folder is still writable for this process (one
    ``access`` call, so a folder remounted read-only or made immutable meanwhile shows)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.last_error: str | None = None
        """The one-line message of the last write the disk refused (``None``: none since the last success)."""

    @property
    def writable(self) -> bool:
        return self.directory is not None and self.last_error is None and os.access(
            self.directory, os.W_OK, effective_ids=os.access in os.supports_effective_ids)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Run one write: a disk error becomes its HTTP answer (507 full, else 503) and a WARNING line."""
        try:
            yield
        except OSError as exc:
            if not is_disk_error(exc):
                raise
            log.warning("a write was refused by the disk: cannot write %s", describe(exc, self.directory))
            self.last_error = f"cannot write {describe(self._relative(exc))}"  # no server path to clients
            raise HTTPException(507 if exc.errno in FULL else 503, self.last_error) from None
        self.last_error = None

    def _relative(self, exc: OSError) -> OSError:
        """``exc`` naming its file relative to the index folder (``the index folder's uploads/...``)."""
        where = "the index folder"
        if exc.filename is not None and self.directory is not None:
            try:
                relative = Path(exc.filename).relative_to(self.directory)
            except ValueError:
                relative = Path(Path(exc.filename).name)
            if str(relative) != ".":
                where = f"{where}'s {relative}"
        return OSError(exc.errno, exc.strerror, where)


def add_upload(index: Index, store: UploadStore, data: bytes, descriptor: Any, label: int | None,
               health: WriteHealth, name: str = "", class_name: str | None = None) -> int:
    """Store the upload (keeping its sanitised ``name``), then journal and apply its descriptor; returns its id (on a
    thread: both fsync). A write the disk refuses leaves neither the file nor the row."""
    with health.writing():
        path = store.save(data, name)
        try:
            return int(index.add_descriptors(descriptor[None], [(str(path), label, class_name)])[0])
        except BaseException:
            path.unlink(missing_ok=True)
            raise


def remove_image(index: Index, store: UploadStore, image_id: int, health: WriteHealth) -> bool:
    """Journal and apply the removal, then delete the file if it was uploaded; whether the id was there."""
    try:
        path = index.entry(image_id).path
    except KeyError:
        return False
    with health.writing():
        if not index.remove([image_id], save=False):
            return False
        store.discard(path)
    return True
