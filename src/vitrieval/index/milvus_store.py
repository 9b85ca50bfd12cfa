"""The Milvus store: the vectors and the rows of an index in a Milvus collection (Milvus Lite file or a cluster).

The index folder holds a manifest only, ``index.json`` (``backend: "milvus"``, :mod:`vitrieval.index.manifest`): the
Milvus URI without secrets, the collection, the Milvus index type and search parameters, the model reference, the
count, root and skipped files. The rows (id, L2-normalised vector, path relative to the root, label, class name) are
the collection's fields (:mod:`vitrieval.index.milvus_backend`), returned with the hits, inserted and deleted with
the vectors. Opening an index reads the manifest and checks the collection's model and dimension; it reads no row,
so its memory and time do not grow with the collection.

A build embeds the collection shard by shard exactly as for faiss (resumable, torchrun-sharded:
:mod:`vitrieval.index.build`), then rank 0 inserts the descriptors in batches (:func:`store_built`). Ids are
deterministic (the readable images numbered from 0 in collection order) and the collection records which build it
holds, so a rerun of an interrupted build inserts only the ids the collection does not hold yet.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrieval.index.faiss_utils import AUTO_EXACT_LIMIT, normalized
from vitrieval.index.manifest import Manifest, MilvusPlace, write_manifest
from vitrieval.index.milvus_backend import (
    DEFAULT_COLLECTION,
    INDEX_TYPES,
    INSERT_BATCH,
    SEARCH_PARAM_NAMES,
    MilvusBackendError,
    MilvusCollection,
    is_local,
    open_collection,
    public_uri,
)
from vitrieval.index.rows import IndexEntry
from vitrieval.index.vector_store import Found

if TYPE_CHECKING:
    from vitrieval.index.build import Built

log = logging.getLogger(__name__)

INDEX_PREFIX = "@index/"  # rows naming a file inside the index folder (vitrieval.index.store.UPLOAD_PREFIX)


@dataclass(frozen=True)
class MilvusOptions:
    """Where and how a build stores its vectors in Milvus (:attr:`vitrieval.index.BuildOptions.milvus`).

    ``uri``: a local ``.db`` file (Milvus Lite) or ``http(s)://host:port`` (token from ``$MILVUS_TOKEN``);
    ``index_type``: a Milvus vector index (:data:`~vitrieval.index.milvus_backend.INDEX_TYPES`) or ``auto`` (exact
    FLAT up to 100k images, HNSW above); ``params`` override its build parameters; ``overwrite`` drops a
    collection of the same name first (it is refused otherwise when it holds another model or build).
    """

    uri: str
    collection: str = DEFAULT_COLLECTION
    index_type: str = "auto"
    params: dict[str, Any] = field(default_factory=dict)
    insert_batch: int = INSERT_BATCH
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.index_type != "auto" and self.index_type not in INDEX_TYPES:
            raise MilvusBackendError(f"unknown Milvus index type {self.index_type!r} (auto or one of "
                                     f"{', '.join(INDEX_TYPES)})")
        if self.insert_batch < 1:
            raise ValueError(f"insert_batch must be >= 1, got {self.insert_batch}")
        if not self.collection.replace("_", "a").isalnum() or self.collection[0].isdigit():
            raise MilvusBackendError(f"--collection {self.collection!r}: a Milvus collection name is letters, "
                                     "digits and _ and does not start with a digit")

    def resolved_index_type(self, count: int) -> str:
        if self.index_type != "auto":
            return self.index_type
        return "FLAT" if count <= AUTO_EXACT_LIMIT else "HNSW"


def build_key(fingerprint: str, entries: Sequence[IndexEntry]) -> str:
    """What a build wrote: sha256 of the model and every (id, path, label) (24 hex), stored with the collection."""
    h = hashlib.sha256(fingerprint.encode())
    for e in entries:
        h.update(f"{e.id}\t{e.path}\t{e.label}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def writes_here() -> bool:
    """Whether this process writes to Milvus: under torchrun every rank's copy of the index records the rows of an
    ``add`` (or ``remove``), rank 0 alone sends them (Milvus does not refuse a primary key sent twice)."""
    dist = sys.modules.get("torch.distributed")  # never imported here: no group without it
    return dist is None or not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def stored_path(path: str, root: str | None) -> str:
    """How a path is stored in the collection: relative to the collection root, absolute outside it."""
    if root and not path.startswith(INDEX_PREFIX):
        try:
            return PurePath(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return path


def full_path(stored: str, root: str | None) -> str:
    """The path of a stored one (:func:`stored_path`); one inside the index folder stays as it is."""
    if stored.startswith(INDEX_PREFIX) or PurePath(stored).is_absolute() or not root:
        return stored
    return str(PurePath(root) / stored)


@dataclass
class MilvusSnapshot:
    """Nothing to copy: the rows are in Milvus; a compaction writes the manifest (with the search parameters)."""

    place: MilvusPlace

    def write(self, directory: Path, manifest: Manifest) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        manifest.milvus = self.place
        write_manifest(directory, manifest)


class MilvusStore:
    """Vectors and rows in a Milvus collection (the module docstring)."""

    journals = False  # a write is durable once Milvus acknowledges it: no folder journal

    def __init__(self, collection: MilvusCollection, place: MilvusPlace, root: str | None, count: int) -> None:
        self.collection = collection
        self.place = place
        self.root = root
        self._count = int(count)
        self._fields = ["path", "label"] + (["class_name"] if "class_name" in collection.fields() else [])

    @classmethod
    def open(cls, manifest: Manifest, directory: Path) -> MilvusStore:
        """Connect to the manifest's collection and check its model and dimension (no row is read)."""
        place = manifest.milvus
        assert place is not None
        if is_local(place.uri) and not writes_here():
            raise MilvusBackendError(f"{directory}: its Milvus Lite file {place.uri} serves one process: under "
                                     "torchrun open it on rank 0 only, or use a Milvus server (docs/SCALING.md)")
        collection = open_collection(place.uri, place.collection)
        collection.check(manifest.descriptor_dim, manifest.fingerprint)
        return cls(collection, place, manifest.root, manifest.count)

    def __len__(self) -> int:
        return self._count

    def _entry(self, row: dict[str, Any]) -> IndexEntry:
        label = row.get("label")
        return IndexEntry(int(row["id"]), full_path(str(row["path"]), self.root),
                          None if label is None or int(label) < 0 else int(label), row.get("class_name") or None)

    # -- writes ----------------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, x: np.ndarray, rows: Sequence[IndexEntry]) -> None:
        if writes_here():
            self.collection.insert(np.asarray(ids, dtype=np.int64), np.asarray(x, dtype=np.float32),
                                   [stored_path(e.path, self.root) for e in rows],
                                   [-1 if e.label is None else e.label for e in rows],
                                   [e.class_name or "" for e in rows] if "class_name" in self._fields else None)
        self._count += len(ids)

    def remove(self, ids: np.ndarray) -> None:
        if writes_here():
            self.collection.delete(np.asarray(ids).tolist())
        self._count -= len(ids)

    # -- reads -----------------------------------------------------------------------------------------------
    def search(self, x: np.ndarray, k: int, with_rows: bool = True) -> Found:
        params = dict(self.place.search_params)
        if "ef" in params:
            params["ef"] = max(int(params["ef"]), k)  # HNSW needs ef >= k
        scores, ids, rows = self.collection.search(np.asarray(x, dtype=np.float32), k, params,
                                                   self._fields if with_rows else ())
        return Found(scores, ids, {i: self._entry(r) for i, r in rows.items()})

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.collection.vectors(ids)

    def rows(self, ids: Sequence[int]) -> dict[int, IndexEntry]:
        return {int(r["id"]): self._entry(r) for r in self.collection.get(list(ids), self._fields)}

    def held_paths(self, paths: Sequence[str]) -> set[str]:
        by_stored = {stored_path(p, self.root): p for p in paths}
        return {by_stored[r["path"]] for r in self.collection.where_path_in(list(by_stored), ["path"])}

    def all_rows(self) -> Iterator[IndexEntry]:
        return (self._entry(r) for r in self.collection.rows(["id", *self._fields]))

    def free_from(self, first: int, n: int) -> int:
        """The first id >= ``first`` from which ``n`` ids are free in the collection."""
        while True:
            held = self.collection.existing_ids(np.arange(first, first + n, dtype=np.int64))
            if not held:
                return first
            first = max(held) + 1

    def search_params(self) -> dict[str, int]:
        held = self.place.search_params
        return {ours: int(held[theirs]) for ours, theirs in SEARCH_PARAM_NAMES.items() if theirs in held}

    def set_search_param(self, name: str, value: int) -> dict[str, int]:
        if name not in self.search_params():
            raise AttributeError(f"{name} does not apply to this index (milvus:{self.place.index_type})")
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        self.place.search_params[SEARCH_PARAM_NAMES[name]] = int(value)
        return self.search_params()

    # -- compaction ------------------------------------------------------------------------------------------
    def snapshot(self) -> MilvusSnapshot:
        return MilvusSnapshot(self.place.model_copy(deep=True))

    def installed(self, snapshot: MilvusSnapshot, directory: Path) -> None:
        pass

    def close(self) -> None:
        pass


def store_built(milvus: MilvusOptions, built: Built, search: dict[str, int | None]) -> MilvusStore:
    """Create (or check and resume) the collection of a build, insert what it lacks (:attr:`Built.pending`), and
    record where it is in the build's manifest."""
    info, entries = built.info, built.entries
    index_type = milvus.resolved_index_type(len(entries))
    key = build_key(info["fingerprint"], entries)
    collection = open_collection(milvus.uri, milvus.collection)
    if milvus.overwrite:
        collection.drop()
    if collection.exists():
        collection.check(info["descriptor_dim"], info["fingerprint"], build=key)
        index_type = collection.index_type()
    else:
        collection.create(info["descriptor_dim"], info["fingerprint"], key, index_type, milvus.params)
    params = dict(INDEX_TYPES.get(index_type, ({}, {}))[1])
    params.update({SEARCH_PARAM_NAMES[k]: int(v) for k, v in search.items() if v is not None and k in
                   SEARCH_PARAM_NAMES})
    place = MilvusPlace(uri=public_uri(collection.uri), collection=milvus.collection, index_type=index_type,
                        search_params=params)
    info.update({"backend": "milvus", "factory": f"milvus:{index_type}", "milvus": place.model_dump()})
    root = info.get("root")
    has_class = "class_name" in collection.fields()
    start, inserted, held = 0, 0, 0
    for descriptors, kept in built.pending:
        ids = np.arange(start, start + len(kept), dtype=np.int64)
        start += len(kept)
        have = collection.existing_ids(ids)
        todo = np.array([i not in have for i in ids.tolist()], dtype=bool)
        held += len(have)
        if todo.any():
            rows = [entries[i] for i in ids[todo].tolist()]
            inserted += collection.insert(ids[todo], normalized(np.asarray(descriptors)[todo]),
                                          [stored_path(e.path, root) for e in rows],
                                          [-1 if e.label is None else e.label for e in rows],
                                          [e.class_name or "" for e in rows] if has_class else None,
                                          batch=milvus.insert_batch)
    with collection.calls():
        collection.client.flush(collection.name)
    log.info("%s: inserted %d rows (%d already there)", collection.where, inserted, held)
    return MilvusStore(collection, place, root, len(entries))
