"""``index.json``: the typed, versioned manifest of an index folder, read and written here and nowhere else.

:class:`Manifest` is a pydantic model: reading validates every key (a missing or ill-typed one is one
:class:`~vitrieval.index.store.IndexFormatError` naming the file and the key), writing is atomic
(:func:`write_manifest`, fsynced, then the folder). Versions:

- 1: the faiss data files beside ``index.json``;
- 2: the data files in a generation folder ``gNNNNNN/`` that ``generation`` names, rows in ``metadata.jsonl``;
- 3: the rows in the store (``rows.sqlite`` in the generation, or the Milvus collection's fields) with their
  ``class_name``; ``backend`` always present; the writes since the generation in ``journal.log``;
- 4 (:data:`FORMAT_VERSION`): the writes since the generation in ``journal.sqlite``, which a faiss-backed folder
  always holds (:mod:`vitrieval.index.journal`).

An older manifest is read as it is (its folder's files as they were written) and written back as the current
version by the next update.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vitrieval.io_utils import atomic_write_json

INFO_FILE = "index.json"
FORMAT = "vitrieval-index"
FORMAT_VERSION = 4
"""4: the journal in ``journal.sqlite``; 3: rows in the store (SQLite / Milvus fields) with class names; 2: generation
folders with ``metadata.jsonl``; 1: the data files beside ``index.json``. Older ones are read and upgraded on the next
write."""


class IndexFormatError(ValueError):
    """An index folder that is missing, incomplete or inconsistent; the message names the folder and the file."""


class ManifestError(IndexFormatError):
    """``index.json`` cannot be read as a manifest; the message names the file and the key."""


class MilvusPlace(BaseModel):
    """Where a Milvus-backed index keeps its rows: the URI without secrets, the collection, its vector index."""

    model_config = ConfigDict(extra="allow")

    uri: str
    collection: str
    index_type: str = "FLAT"
    search_params: dict[str, int] = Field(default_factory=dict)


class Manifest(BaseModel):
    """The description of an index: its model, how its descriptors were made, where its rows live, its counters."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    format: str = FORMAT
    version: int = FORMAT_VERSION
    backend: str = "faiss"
    checkpoint: str
    fingerprint: str
    descriptor_dim: int
    factory: str
    requested_factory: str | None = None
    metric: str = "inner_product"
    data_config: dict[str, Any] = Field(default_factory=dict)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    count: int
    next_id: int = 0
    created: str | None = None
    updated: str | None = None
    build_seconds: float | None = None
    skipped: list[str] = Field(default_factory=list)
    search_params: dict[str, int] = Field(default_factory=dict)
    dba: dict[str, Any] | None = None
    root: str | None = None
    classes: list[str] | None = None
    generation: int | None = None
    bytes: dict[str, int] = Field(default_factory=dict)
    journal_seq: int = 0
    tombstones: list[int] = Field(default_factory=list)
    milvus: MilvusPlace | None = None

    def dump(self) -> dict[str, Any]:
        """The manifest as ``index.json`` holds it (JSON types; unset optional keys left out)."""
        return self.model_dump(mode="json", exclude_none=True)


def read_manifest(directory: Path) -> tuple[Manifest, str]:
    """The manifest of ``directory`` and the text it was read from; a :class:`ManifestError` naming the file (and
    the key) when it is missing, not JSON, not a vitrieval index, newer than this code, or a key is missing or of
    the wrong type."""
    path = directory / INFO_FILE
    if not path.is_file():
        raise ManifestError(f"{directory} is not a vitrieval index: {INFO_FILE} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): a damaged copy? rebuild "
                            "the index (vitrieval index) or copy it again") from None
    return parse_manifest(path, text), text


def parse_manifest(path: Path, text: str) -> Manifest:
    """``text`` (the file ``path``) as a :class:`Manifest` (see :func:`read_manifest`)."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}): a damaged or interrupted copy? rebuild the index "
                            "(vitrieval index) or copy it again") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ManifestError(f"{path}: not a vitrieval index (format {found!r})")
    version = raw.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ManifestError(f"{path}: key 'version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ManifestError(f"{path}: index format version {version} is newer than this vitrieval understands "
                            f"({FORMAT_VERSION}); upgrade vitrieval")
    raw.setdefault("version", 1)
    if raw.get("backend", "faiss") == "milvus":
        raw.setdefault("factory", f"milvus:{(raw.get('milvus') or {}).get('index_type', 'FLAT')}")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        what = "is missing" if error["type"] == "missing" else f"is invalid ({error['msg']}, got {error['input']!r})"
        raise ManifestError(f"{path}: key {key!r} {what}: a damaged or hand-edited {INFO_FILE}? restore it or "
                            "rebuild the index") from None


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write ``manifest`` as ``directory/index.json`` at the current version, atomically (one rename)."""
    manifest.version = FORMAT_VERSION
    atomic_write_json(directory / INFO_FILE, manifest.dump())
