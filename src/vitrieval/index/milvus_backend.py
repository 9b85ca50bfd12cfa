"""The Milvus side of a Milvus-backed index: connecting by URI, the collection's schema and checks, batched writes.

A URI is either a local file ending in ``.db`` (Milvus Lite, embedded in this process: tests and laptops) or
``http(s)://host:port`` (a Milvus standalone server or a distributed cluster). A server's token is read from the
environment (:data:`TOKEN_ENV`, ``user:password`` or an API key) and never written anywhere; :func:`public_uri` is
the URI as it may be stored (no user, password or query string).

A collection holds one row per indexed image::

    id      INT64 primary key   the index's id (deterministic: a build numbers the readable images from 0)
    vector  FLOAT_VECTOR(d)     the L2-normalised descriptor (metric IP = cosine on unit vectors)
    path    VARCHAR             the image path relative to the collection root (absolute when outside it)
    label   INT64               the label, -1 when unknown
    class_name VARCHAR          the class name, "" when unknown (absent from collections of vitrieval < 0.3)

and its properties record the model fingerprint and the build it belongs to (:data:`FINGERPRINT_KEY`,
:data:`BUILD_KEY`), so that a collection of another model or dimension is refused with one line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)

TOKEN_ENV = "MILVUS_TOKEN"
"""The environment variable holding a Milvus server's token (``user:password`` or an API key)."""
FINGERPRINT_KEY = "vitrieval.fingerprint"
BUILD_KEY = "vitrieval.build"
DEFAULT_COLLECTION = "vitrieval"
MAX_PATH_LENGTH = 4096
INSERT_BATCH = 5_000
"""Rows per insert request (well under Milvus's 64 MB message limit for descriptors up to 2048-d)."""
SEARCH_BATCH = 1_024
"""Queries per search request."""
QUERY_BATCH = 10_000
"""Rows per page when reading a collection's ids and metadata."""

INDEX_TYPES: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "FLAT": ({}, {}),
    "IVF_FLAT": ({"nlist": 1024}, {"nprobe": 16}),
    "IVF_SQ8": ({"nlist": 1024}, {"nprobe": 16}),
    "IVF_PQ": ({"nlist": 1024, "m": 16, "nbits": 8}, {"nprobe": 16}),
    "HNSW": ({"M": 16, "efConstruction": 200}, {"ef": 64}),
    "HNSW_SQ": ({"M": 16, "efConstruction": 200, "sq_type": "SQ8"}, {"ef": 64}),  # type: ignore[dict-item]
    "AUTOINDEX": ({}, {}),
}
"""Milvus vector index types: (build parameters, default search parameters). FLAT is exact; Milvus Lite builds
FLAT, IVF_FLAT, IVF_SQ8, HNSW and HNSW_SQ, a server also IVF_PQ and AUTOINDEX."""
SEARCH_PARAM_NAMES = {"nprobe": "nprobe", "ef_search": "ef"}
"""The index's search-parameter names (as for faiss) -> Milvus's."""


class MilvusBackendError(ValueError):
    """A Milvus-backed index cannot be used as asked; the message is one line naming the URI or collection."""


class MilvusUnreachableError(MilvusBackendError):
    """The Milvus server (or the Milvus Lite file) cannot be opened."""


class CollectionMissingError(MilvusBackendError):
    """The index's collection is not in Milvus (dropped, or another server)."""


class CollectionMismatchError(MilvusBackendError):
    """The collection exists but holds descriptors of another dimension, model or build."""


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a Milvus Lite file (anything but ``scheme://``)."""
    return "://" not in uri


def normalized_uri(uri: str) -> str:
    """A local path made absolute (so an index folder works from any directory); a server URI as it is."""
    if is_local(uri):
        path = Path(uri).expanduser().resolve()
        if path.suffix != ".db":
            raise MilvusBackendError(f"--milvus-uri {uri}: a Milvus Lite file must end in .db (or give "
                                     f"http(s)://host:port for a server)")
        return str(path)
    return uri


def public_uri(uri: str) -> str:
    """``uri`` without user, password or query string: what may be printed and stored in the manifest."""
    if is_local(uri):
        return uri
    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def connect(uri: str) -> MilvusClient:
    """A client of the Milvus at ``uri`` (token from :data:`TOKEN_ENV` for a server); one line if it fails."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    uri = normalized_uri(uri)
    if is_local(uri) and not Path(uri).parent.is_dir():
        raise MilvusUnreachableError(f"cannot open Milvus Lite at {uri}: the folder {Path(uri).parent} does not "
                                     "exist")
    token = "" if is_local(uri) else os.environ.get(TOKEN_ENV, "")
    if is_local(uri):  # Milvus Lite has no server timestamp: pymilvus warns about it on every page it reads
        logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)  # ... and its server logs the unimplemented call
    try:
        return MilvusClient(uri=uri, token=token, timeout=30)
    except MilvusException as exc:
        hint = (" (Milvus Lite serves one process at a time: is another one using this file?)" if is_local(uri)
                else "" if token else f" (token, if any, from ${TOKEN_ENV})")
        raise MilvusUnreachableError(f"cannot reach Milvus at {public_uri(uri)}: {exc.message}{hint}") from None


@dataclass
class MilvusCollection:
    """One collection of a Milvus: its rows are the indexed images (the module docstring's schema)."""

    client: MilvusClient
    name: str
    uri: str

    @property
    def where(self) -> str:
        return f"collection {self.name!r} at {public_uri(self.uri)}"

    @contextmanager
    def calls(self) -> Iterator[None]:
        """Milvus's own errors (a server gone, a refused request) as one line naming the collection and URI."""
        from pymilvus.exceptions import MilvusException

        try:
            yield
        except MilvusException as exc:
            raise MilvusBackendError(f"{self.where}: {exc.message}") from None

    def exists(self) -> bool:
        with self.calls():
            return bool(self.client.has_collection(self.name))

    def properties(self) -> dict[str, str]:
        with self.calls():
            return dict(self.client.describe_collection(self.name).get("properties") or {})

    def dimension(self) -> int:
        with self.calls():
            fields = self.client.describe_collection(self.name)["fields"]
        for f in fields:
            if f["name"] == "vector":
                return int(f["params"]["dim"])
        raise CollectionMismatchError(f"{self.where} has no 'vector' field: not a vitrieval collection")

    def create(self, dim: int, fingerprint: str, build: str, index_type: str,
               params: dict[str, Any] | None = None) -> None:
        """Create the collection with its vector index (``index_type``, metric IP) and its properties."""
        from pymilvus import DataType, MilvusClient

        if index_type not in INDEX_TYPES:
            raise MilvusBackendError(f"unknown Milvus index type {index_type!r} (one of {', '.join(INDEX_TYPES)})")
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("path", DataType.VARCHAR, max_length=MAX_PATH_LENGTH)
        schema.add_field("label", DataType.INT64)
        schema.add_field("class_name", DataType.VARCHAR, max_length=MAX_PATH_LENGTH)
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type=index_type, metric_type="IP",
                               params={**INDEX_TYPES[index_type][0], **(params or {})})
        with self.calls():
            self.client.create_collection(self.name, schema=schema, index_params=index_params,
                                          properties={FINGERPRINT_KEY: fingerprint, BUILD_KEY: build})
        log.info("created %s (%d-d, %s, metric IP)", self.where, dim, index_type)

    def check(self, dim: int, fingerprint: str, build: str | None = None) -> None:
        """Refuse a collection of another dimension, model or (when ``build`` is given) build; load it."""
        if not self.exists():
            raise CollectionMissingError(f"{self.where} does not exist (dropped, or another server?): rebuild the "
                                         "index (vitrieval index --backend milvus)")
        held_dim = self.dimension()
        props = self.properties()
        if held_dim != dim:
            raise CollectionMismatchError(f"{self.where} holds {held_dim}-d descriptors, this index's model gives "
                                          f"{dim}-d ones: choose another --collection")
        if props.get(FINGERPRINT_KEY) != fingerprint:
            raise CollectionMismatchError(f"{self.where} holds descriptors of model {props.get(FINGERPRINT_KEY)}, "
                                          f"not {fingerprint}: choose another --collection (or --overwrite)")
        if build is not None and props.get(BUILD_KEY) != build:
            raise CollectionMismatchError(f"{self.where} holds another build (other images) of this model: --add "
                                          "images to it, --overwrite to replace it, or choose another --collection")
        with self.calls():
            self.client.load_collection(self.name)

    def drop(self) -> None:
        if self.exists():
            with self.calls():
                self.client.drop_collection(self.name)
            log.info("dropped %s", self.where)

    def index_type(self) -> str:
        with self.calls():
            return str(self.client.describe_index(self.name, "vector").get("index_type", "FLAT"))

    def existing_ids(self, ids: np.ndarray) -> set[int]:
        """Which of ``ids`` (a consecutive run, as a build writes them) the collection already holds."""
        if len(ids) == 0:
            return set()
        lo, hi = int(ids.min()), int(ids.max())
        return {int(r["id"]) for r in self._pages(f"id >= {lo} and id <= {hi}", ["id"])}

    def fields(self) -> set[str]:
        """The names of the collection's fields."""
        with self.calls():
            return {f["name"] for f in self.client.describe_collection(self.name)["fields"]}

    def insert(self, ids: np.ndarray, vectors: np.ndarray, paths: Sequence[str], labels: Sequence[int],
               class_names: Sequence[str] | None = None, batch: int = INSERT_BATCH) -> int:
        """Insert rows in batches of ``batch``; returns how many. ``class_names`` (``""`` for none) for a
        collection with that field."""
        for s in range(0, len(ids), batch):
            rows = [{"id": int(i), "vector": v, "path": p, "label": int(label)}
                    for i, v, p, label in zip(ids[s:s + batch].tolist(), vectors[s:s + batch], paths[s:s + batch],
                                              labels[s:s + batch])]
            if class_names is not None:
                for row, name in zip(rows, class_names[s:s + batch]):
                    row["class_name"] = name
            with self.calls():
                self.client.insert(self.name, rows)
            log.debug("inserted rows %d-%d into %s", rows[0]["id"], rows[-1]["id"], self.where)
        return len(ids)

    def delete(self, ids: Sequence[int]) -> None:
        if len(ids):
            with self.calls():
                self.client.delete(self.name, ids=[int(i) for i in ids])

    def search(self, x: np.ndarray, k: int, params: dict[str, Any],
               output_fields: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray, dict[int, dict[str, Any]]]:
        """Scores (inner products) and ids of the top ``k`` of each row of ``x``, padded with ``-1`` ids, and the
        ``output_fields`` of every hit by id."""
        scores = np.full((len(x), k), -np.inf, dtype=np.float32)
        ids = np.full((len(x), k), -1, dtype=np.int64)
        rows: dict[int, dict[str, Any]] = {}
        for s in range(0, len(x), SEARCH_BATCH):
            with self.calls():
                found = self.client.search(self.name, data=list(x[s:s + SEARCH_BATCH]), limit=k,
                                           output_fields=list(output_fields),
                                           search_params={"metric_type": "IP", "params": params})
            for row, hits in enumerate(found, start=s):
                for j, hit in enumerate(hits[:k]):
                    ids[row, j] = int(hit["id"])
                    scores[row, j] = float(hit["distance"])
                    if output_fields:
                        rows[int(hit["id"])] = {"id": int(hit["id"]), **dict(hit.get("entity") or {})}
        return scores, ids, rows

    def get(self, ids: Sequence[int], fields: Sequence[str]) -> list[dict[str, Any]]:
        """The ``fields`` of the rows of ``ids`` that are held."""
        if not len(ids):
            return []
        with self.calls():
            return list(self.client.get(self.name, ids=[int(i) for i in ids], output_fields=list(fields)))

    def where_path_in(self, paths: Sequence[str], fields: Sequence[str]) -> list[dict[str, Any]]:
        """The ``fields`` of the rows whose ``path`` is one of ``paths``."""
        out: list[dict[str, Any]] = []
        for s in range(0, len(paths), 1000):
            literals = ", ".join(json.dumps(p, ensure_ascii=False) for p in paths[s:s + 1000])
            with self.calls():
                out.extend(self.client.query(self.name, filter=f"path in [{literals}]", output_fields=list(fields)))
        return out

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids``, in that order (every id must be held)."""
        keys = [int(i) for i in ids]
        with self.calls():
            found = self.client.get(self.name, ids=keys, output_fields=["vector"])
        by_id = {int(r["id"]): np.asarray(r["vector"], dtype=np.float32) for r in found}
        missing = [i for i in keys if i not in by_id]
        if missing:
            raise KeyError(f"{self.where} holds no vector for id(s) {missing[:8]}")
        return np.stack([by_id[i] for i in keys])

    def rows(self, fields: Sequence[str] = ("id", "path", "label")) -> Iterator[dict[str, Any]]:
        """Every row's ``fields`` (not the vectors), page by page."""
        return self._pages("", list(fields))

    def count(self) -> int:
        with self.calls():
            return int(self.client.query(self.name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def _pages(self, expr: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        with self.calls():
            it = self.client.query_iterator(self.name, batch_size=QUERY_BATCH, filter=expr, output_fields=fields)
        try:
            while True:
                with self.calls():
                    page = it.next()
                if not page:
                    return
                yield from page
        finally:
            it.close()


def open_collection(uri: str, name: str) -> MilvusCollection:
    """The collection ``name`` of the Milvus at ``uri`` (connected; not checked yet)."""
    uri = normalized_uri(uri)
    return MilvusCollection(connect(uri), name, uri)
