"""An :class:`~vitrieval.index.Index` whose vectors and metadata live in Milvus (Milvus Lite file or a cluster).

The index folder holds a manifest only, ``index.json`` (``backend: "milvus"``): the Milvus URI without secrets,
the collection, the Milvus index type and search parameters, the model reference (checkpoint, fingerprint,
dimension, preprocessing), count, root and skipped files, as for faiss. The rows (id, L2-normalised vector, path
relative to the root, label) are in the collection (:mod:`vitrieval.index.milvus_backend`). Everything else
(embedding queries, :meth:`~vitrieval.index.Index.search`, ``add``, ``remove``, ``vitrieval search`` / ``serve``)
is the base class's, which reaches the vectors only through the methods overridden here.

A build embeds the collection shard by shard exactly as for faiss (resumable, torchrun-sharded:
:mod:`vitrieval.index.build`), then rank 0 inserts the descriptors in batches. Ids are deterministic (the readable
images numbered from 0 in collection order) and the collection records which build it holds, so a rerun of an
interrupted build inserts only the ids the collection does not hold yet: no duplicate, nothing missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrieval.data.collection import ImagesArg
from vitrieval.index.build import BuildOptions, Built, Chunk, build_index, from_descriptors
from vitrieval.index.faiss_utils import AUTO_EXACT_LIMIT, normalized
from vitrieval.index.index import Index
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
from vitrieval.index.shard_cache import DEFAULT_SHARD_SIZE
from vitrieval.index.store import FORMAT, FORMAT_VERSION, INFO_FILE, IndexEntry, IndexFormatError
from vitrieval.io_utils import atomic_write_json

if TYPE_CHECKING:
    from vitrieval.distributed import DistContext
    from vitrieval.model import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MilvusOptions:
    """Where and how a build stores its vectors in Milvus.

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


def collect(encoder: Encoder, checkpoint: Path, chunks: list[Chunk], directory: Path | None,
            options: BuildOptions, preprocessing: dict[str, Any], skipped: list[str], started: float) -> Built:
    """The build's assembler for Milvus (:func:`vitrieval.index.build.build_index`): the entries (ids consecutive
    from 0, as :func:`~vitrieval.index.build.assemble` numbers them) and the manifest; the descriptors are handed
    on, not put in a faiss index."""
    entries: list[IndexEntry] = []
    for _, kept in chunks:
        start = len(entries)
        entries.extend(IndexEntry.from_record(start + j, r) for j, r in enumerate(kept))
    dim = next(int(d.shape[1]) for d, k in chunks if len(k))
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info = {"format": FORMAT, "version": FORMAT_VERSION, "backend": MilvusIndex.backend,
            "checkpoint": str(checkpoint), "fingerprint": encoder.fingerprint(), "descriptor_dim": dim,
            "metric": "inner_product", "data_config": encoder.data_config, "preprocessing": preprocessing,
            "count": len(entries), "next_id": len(entries), "created": now, "updated": now,
            "build_seconds": round(time.time() - started, 3), "skipped": list(skipped)}
    return Built(None, entries, info, encoder, directory, options.device, pending=chunks)


def build_key(fingerprint: str, entries: Sequence[IndexEntry]) -> str:
    """What a build wrote: sha256 of the model and every (id, path, label) (24 hex), stored with the collection."""
    h = hashlib.sha256(fingerprint.encode())
    for e in entries:
        h.update(f"{e.id}\t{e.path}\t{e.label}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


class MilvusIndex(Index):
    """An index whose vectors and metadata are a Milvus collection (the module docstring)."""

    backend = "milvus"
    journals = False  # a write is durable once Milvus acknowledges it: no folder journal

    def __init__(self, collection: MilvusCollection, entries: Sequence[IndexEntry], info: dict[str, Any],
                 directory: str | Path | None = None, device: str = "auto", *, runtime: str = "torch",
                 threads: int = 0) -> None:
        super().__init__(None, entries, info, directory, device, runtime=runtime, threads=threads)
        self._collection = collection

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def build(cls, checkpoint_dir: str | Path, images: ImagesArg, out_dir: str | Path | None = None,
              factory: str = "auto", batch_size: int = 64, num_workers: int | str = "auto",
              shard_size: int = DEFAULT_SHARD_SIZE, *, milvus: MilvusOptions | None = None, device: str = "auto",
              amp: str = "auto", resize: str = "shorter", nprobe: int | None = None, ef_search: int | None = None,
              k_factor: int | None = None, progress: bool = True,
              distributed: bool | DistContext | None = None,
              scales: Sequence[float] | None = None, fast_decode: bool = True) -> MilvusIndex | None:
        """:meth:`Index.build` into the Milvus of ``milvus`` (required, as is ``out_dir``: the manifest);
        ``factory`` and ``k_factor`` are faiss's and are ignored. A rerun resumes (embedding and insertion)."""
        if milvus is None or out_dir is None:
            raise ValueError("a Milvus-backed index needs milvus=MilvusOptions(uri=...) and an out_dir for its "
                             "manifest")
        options = BuildOptions(batch_size=batch_size, num_workers=num_workers, shard_size=shard_size,
                               device=device, amp=amp, resize=resize, progress=progress, scales=scales,
                               fast_decode=bool(fast_decode))
        finish = partial(cls._store_built, milvus, {"nprobe": nprobe, "ef_search": ef_search})
        return build_index(checkpoint_dir, images, out_dir, options, distributed, finish, assembler=collect)

    @classmethod
    def from_descriptors(cls, checkpoint_dir: str | Path, descriptors: np.ndarray, paths: Sequence[str | Path],
                         labels: Sequence[int] | None = None, out_dir: str | Path | None = None,
                         factory: str = "auto", *, milvus: MilvusOptions | None = None, device: str = "auto",
                         resize: str = "shorter", amp: str = "auto", nprobe: int | None = None,
                         ef_search: int | None = None, k_factor: int | None = None,
                         fast_decode: bool | None = None) -> MilvusIndex:
        """:meth:`Index.from_descriptors` into the Milvus of ``milvus`` (required, as is ``out_dir``)."""
        if milvus is None or out_dir is None:
            raise ValueError("a Milvus-backed index needs milvus=MilvusOptions(uri=...) and an out_dir for its "
                             "manifest")
        options = BuildOptions(device=device, amp=amp, resize=resize, fast_decode=fast_decode)
        built = from_descriptors(checkpoint_dir, descriptors, paths, labels, out_dir, options, assembler=collect)
        return cls._store_built(milvus, {"nprobe": nprobe, "ef_search": ef_search}, built)

    @classmethod
    def _store_built(cls, milvus: MilvusOptions, search: dict[str, int | None], built: Built) -> MilvusIndex:
        """Create (or check and resume) the collection, insert what it lacks of the build, write the manifest."""
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
        params.update({SEARCH_PARAM_NAMES[k]: int(v) for k, v in search.items() if v is not None})
        info.update({"factory": f"milvus:{index_type}",
                     "milvus": {"uri": public_uri(collection.uri), "collection": milvus.collection,
                                "index_type": index_type, "search_params": params}})
        root = info.get("root")
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
                                              [-1 if e.label is None else e.label for e in rows], milvus.insert_batch)
        with collection.calls():
            collection.client.flush(collection.name)
        log.info("%s: inserted %d rows (%d already there)", collection.where, inserted, held)
        index = cls(collection, entries, info, built.directory, device=built.device)
        index._encoder = built.encoder
        index.save(built.directory)
        return index

    @classmethod
    def load(cls, directory: str | Path, checkpoint: str | Path | None = None, device: str = "auto",
             mmap: bool = False, *, runtime: str = "torch", threads: int = 0) -> MilvusIndex:
        """Open a Milvus index folder: connect to its URI (token from ``$MILVUS_TOKEN``), check the collection's
        model and dimension, read its rows' metadata. ``mmap`` is faiss's and is ignored."""
        directory = Path(directory).expanduser()
        info = read_manifest(directory)
        if checkpoint is not None:
            info["checkpoint"] = str(Path(checkpoint).expanduser().resolve())
        where = info["milvus"]
        if is_local(where["uri"]) and not writes_here():
            raise MilvusBackendError(f"{directory}: its Milvus Lite file {where['uri']} serves one process: under "
                                     "torchrun open it on rank 0 only, or use a Milvus server (docs/SCALING.md)")
        collection = open_collection(where["uri"], where["collection"])
        collection.check(int(info["descriptor_dim"]), str(info["fingerprint"]))
        root = info.get("root")
        entries = sorted((IndexEntry(int(r["id"]), full_path(r["path"], root), None if r["label"] < 0 else
                          int(r["label"])) for r in collection.rows()), key=lambda e: e.id)
        if len(entries) != int(info["count"]):
            log.warning("%s holds %d rows, %s says %d (written by another client, or an interrupted update): "
                        "using the collection", collection.where, len(entries), directory / INFO_FILE, info["count"])
        info["count"] = len(entries)
        info["next_id"] = max(int(info.get("next_id", 0)), entries[-1].id + 1 if entries else 0)
        return cls(collection, entries, info, directory, device=device, runtime=runtime, threads=threads)

    def save(self, directory: str | Path | None = None) -> Path:
        """Write the manifest (``index.json``, atomically); the rows are already in Milvus."""
        directory = Path(directory) if directory is not None else self.directory
        if directory is None:
            raise ValueError("MilvusIndex.save: no directory given and the index was not loaded from one")
        with self._lock:
            directory.mkdir(parents=True, exist_ok=True)
            self.info["count"] = len(self)
            atomic_write_json(directory / INFO_FILE, self.info)
        self.directory = directory
        return directory

    # -- the vectors -----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def _search_vectors(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        params = dict(self.info["milvus"]["search_params"])
        if "ef" in params:
            params["ef"] = max(int(params["ef"]), k)  # HNSW needs ef >= k
        return self._collection.search(np.asarray(x, dtype=np.float32), k, params)

    def _add_vectors(self, x: np.ndarray, ids: np.ndarray) -> None:
        if not writes_here():
            return
        rows = [self._entries[i] for i in ids.tolist()]
        self._collection.insert(ids, np.asarray(x, dtype=np.float32), [stored_path(e.path, self.root) for e in rows],
                                [-1 if e.label is None else e.label for e in rows])

    def _remove_vectors(self, ids: np.ndarray) -> None:
        if writes_here():
            self._collection.delete(ids.tolist())

    def _stored_vectors(self, ids: np.ndarray) -> np.ndarray:
        return self._collection.vectors(ids)

    # -- search parameters (Milvus's, under the faiss names) -------------------------------------------------
    @property
    def collection(self) -> MilvusCollection:
        """The Milvus collection holding the rows."""
        return self._collection

    @property
    def search_params(self) -> dict[str, int]:
        held = self.info["milvus"]["search_params"]
        return {ours: int(held[theirs]) for ours, theirs in SEARCH_PARAM_NAMES.items() if theirs in held}

    def _get(self, name: str) -> int:
        if name not in self.search_params:
            raise AttributeError(f"{name} does not apply to this index ({self.factory!r})")
        return self.search_params[name]

    def _set(self, name: str, value: int) -> None:
        self._get(name)
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        self.info["milvus"]["search_params"][SEARCH_PARAM_NAMES[name]] = int(value)


def writes_here() -> bool:
    """Whether this process writes to Milvus: under torchrun every rank's copy of the index records the rows of an
    ``add`` (or ``remove``), rank 0 alone sends them (Milvus does not refuse a primary key sent twice)."""
    dist = sys.modules.get("torch.distributed")  # never imported here: no group without it
    return dist is None or not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def stored_path(path: str, root: str | None) -> str:
    """How a path is stored in the collection: relative to the collection root, absolute outside it."""
    if root:
        try:
            return PurePath(path).relative_to(root).as_posix()
        except ValueError:
            pass
    return path


def full_path(stored: str, root: str | None) -> str:
    """The absolute path of a stored one (:func:`stored_path`)."""
    return stored if PurePath(stored).is_absolute() or not root else str(PurePath(root) / stored)


def read_manifest(directory: Path) -> dict[str, Any]:
    """``index.json`` of a Milvus index folder, checked; an :class:`IndexFormatError` naming it otherwise."""
    path = directory / INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexFormatError(f"{path} is not a readable index manifest ({exc})") from None
    milvus = info.get("milvus") if isinstance(info, dict) else None
    if not isinstance(milvus, dict) or not {"uri", "collection", "search_params"} <= set(milvus):
        raise IndexFormatError(f"{path}: a Milvus index manifest without its 'milvus' uri / collection; rebuild "
                               "the index (vitrieval index --backend milvus)")
    for key in ("fingerprint", "descriptor_dim", "count", "checkpoint"):
        if key not in info:
            raise IndexFormatError(f"{path}: the manifest has no {key!r}; rebuild the index")
    return info
