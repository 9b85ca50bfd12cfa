"""FastAPI app over an :class:`~vitrieval.index.Index`: search by uploaded image, thumbnails, a web page.

Endpoints
---------
- ``POST /search?k=10``: multipart upload (field ``file``) -> ``{"results": [{id, score, label, path,
  thumbnail_url}], "took_ms"}``; ``path`` is relative to the indexed folder (``obj077/290.jpg``; no absolute
  server path leaks; the base name for an index built before ``root`` was kept, or an image added from elsewhere).
  ``&rerank=aqe`` (with optional ``&rerank_n=2&rerank_alpha=3``) expands the query with αQE against the index
  (:mod:`vitrieval.index.query_rerank`); another value -> 422 naming the accepted ones.
- ``GET /images/{id}?size=256``: a JPEG thumbnail (longest side <= size) of an indexed image, made on the fly and
  kept in an in-memory LRU cache. Only ids of the index resolve to files, so no path can be traversed.
- ``GET /healthz``: count, generation, pending journal length (``pending_writes``), whether writes are on, model
  fingerprint, descriptor dimension, factory, batching (``max_batch``, ``max_wait_ms``), ``query_amp``, limits
  (``max_k``, ``max_upload_bytes``, ``max_upload_pixels``, ``max_aspect_ratio``, ``max_resized_pixels``,
  ``max_concurrent_decodes``, ``decode_memory_budget``).
- ``POST /images`` (multipart ``file``, optional ``label``) -> 201 ``{"id"}``; ``DELETE /images/{id}`` -> 204: writes,
  with ``Authorization: Bearer <token>`` when the app has a ``write_token`` (else read-only: 403), durable before
  they are answered (:mod:`vitrieval.serve.writes`, :mod:`vitrieval.serve.auth`).
- ``GET /``: a self-contained web page (inline CSS/JS, nothing loaded from elsewhere). ``/docs`` (Swagger UI) and
  ``/redoc``: the OpenAPI pages, their scripts and styles served by the app itself from ``fastapi-offline``'s copy
  (``/static-offline-docs``), so they work without internet access.

Bad input never stops the service: a non-multipart request or a non-image part -> 415, an unreadable image -> 400,
a client that disconnects mid-upload -> 400 (an INFO line, no traceback), an id that is not one of the index's
(any length) -> 404, an upload over the limit -> 413 (checked on Content-Length and again while the body streams
in), ``k`` out of range -> 422, a body that does not arrive within ``request_timeout_s`` -> 408 and the
connection closed (:mod:`vitrieval.serve.timeouts`). ``HEAD`` is answered wherever ``GET`` is.

Queries are decoded and preprocessed concurrently, then embedded in batches, one forward pass per batch
(:mod:`vitrieval.serve.batching`, ``max_batch`` / ``max_wait_ms``); searches share the index's readers-writer lock,
which a write takes alone (a search never sees half of one).

A small file can hold a huge image, so the decoded size is bounded too (:mod:`vitrieval.serve.uploads`): from the
header alone, an image over ``max_upload_pixels`` -> 413, of an aspect ratio over ``max_aspect_ratio`` -> 422,
over ``max_resized_pixels`` once resized for the model -> 413 (each message names its limit); what passes is
decoded near the model's input size (JPEG draft, else reduce) by a pool of ``max_concurrent_decodes`` threads
that hold at most ``decode_memory_budget`` bytes together.

(No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations at runtime, and ``k``'s
bound comes from ``create_app``'s arguments.)
"""

import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect

from vitrieval import __version__
from vitrieval.data.images import ImageDecodeError, load_image
from vitrieval.index import Index
from vitrieval.index.compaction import DEFAULT_INTERVAL_S, DEFAULT_MAX_PENDING
from vitrieval.index.store import display_path
from vitrieval.rerank import DEFAULT_ALPHA, DEFAULT_N, RerankOptions
from vitrieval.serve.auth import WriteAuth
from vitrieval.serve.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS
from vitrieval.serve.head import HeadAsGet
from vitrieval.serve.startup import Running, start
from vitrieval.serve.timeouts import DEFAULT_REQUEST_TIMEOUT_S, BodyDeadline
from vitrieval.serve.uploads import (
    DEFAULT_DECODE_MEMORY_BUDGET,
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_RESIZED_PIXELS,
    DEFAULT_MAX_UPLOAD_PIXELS,
    UploadLimits,
    UploadRefused,
)
from vitrieval.serve.writes import WriteHealth, add_upload, parse_class_name, parse_label, remove_image

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_K = 100
MULTIPART_OVERHEAD = 16 * 1024
"""Allowance for the multipart envelope (boundary, part headers) on top of the file itself."""
THUMBNAIL_SIZES = (16, 1024)
MAX_ID_DIGITS = 20
"""Longest image id in a URL (an int64 has 19 digits; Python refuses to parse numbers of over 4300 digits)."""
PAGE_CSP = ("default-src 'none'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; connect-src 'self'; form-action 'none'; base-uri 'none'")

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": "the query image"}},
        }}},
    }
}


class SearchResult(BaseModel):
    """One indexed image in the answer to a search."""

    id: int = Field(description="id of the image in the index (also its thumbnail's id)")
    score: float = Field(description="cosine similarity to the query, 1 = identical")
    label: int | None = Field(description="the image's label, when the collection had labels")
    class_name: str | None = Field(default=None, description="the image's class: its class folder's name (e.g. "
                                                             "obj077), or the name it was added with")
    path: str = Field(description="the indexed file's path relative to the indexed folder (e.g. obj077/290.jpg); "
                                  "its base name for an index built before vitrieval kept that folder")
    thumbnail_url: str = Field(description="relative URL of a JPEG thumbnail")


class SearchResponse(BaseModel):
    results: list[SearchResult]
    took_ms: float = Field(description="server time for decoding, embedding and searching")


class Added(BaseModel):
    id: int = Field(description="id of the added image (its thumbnail is /images/{id})")


class Health(BaseModel):
    status: str
    count: int
    generation: int | None = Field(description="the index folder's generation last compacted into")
    pending_writes: int = Field(description="journalled writes not yet compacted into a generation")
    writable: bool = Field(description="whether POST /images and DELETE /images/{id} are on and can write the index "
                                       "folder now (checked at start; false after a write the disk refused)")
    write_error: str | None = Field(description="why the last write failed on the disk (full, read-only, not "
                                                "this user's); null since the last write that succeeded")
    max_batch: int
    max_wait_ms: float
    query_amp: str = Field(description="autocast of the queries' forward pass (the index's own unless overridden)")
    fingerprint: str
    descriptor_dim: int
    factory: str
    max_k: int
    max_upload_bytes: int
    max_upload_pixels: int
    max_aspect_ratio: float
    max_resized_pixels: int
    max_concurrent_decodes: int
    decode_memory_budget: int
    request_timeout_s: float = Field(description="seconds a client has for a request head, then for its body")
    version: str


class ThumbnailCache:
    """A thread-safe LRU of encoded thumbnails, bounded in entries and in bytes."""

    def __init__(self, max_entries: int = 1024, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[int, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def put(self, key: tuple[int, int], data: bytes) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= len(self._items.pop(key))
            self._items[key] = data
            self._bytes += len(data)
            while self._items and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old)

    def forget(self, image_id: int) -> None:
        """Drop every cached size of ``image_id`` (a removed image)."""
        with self._lock:
            for key in [key for key in self._items if key[0] == image_id]:
                self._bytes -= len(self._items.pop(key))

    def __len__(self) -> int:
        return len(self._items)


def make_thumbnail(path: str, size: int, quality: int = 85) -> bytes:
    """JPEG bytes of the image at ``path`` shrunk to fit ``size`` x ``size`` (never enlarged)."""
    img = load_image(path)
    img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _page() -> str:
    return (resources.files("vitrieval.serve") / "static" / "index.html").read_text(encoding="utf-8")


async def _read_form(request: Request, limit: int, max_mb: str) -> FormData:
    """The multipart form of ``request``, refusing (413) a body over ``limit`` bytes as it streams in."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise HTTPException(400, "invalid Content-Length header")
        if int(length) > limit:
            raise HTTPException(413, f"upload too large: {int(length)} bytes, the limit is {max_mb} MB")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise HTTPException(413, f"upload too large: over {limit} bytes, the limit is {max_mb} MB")
    except ClientDisconnect:  # the client went away mid-upload: nobody to answer, nothing to log as an error
        log.info("a client disconnected during its upload (%d bytes received)", len(body))
        raise HTTPException(400, "the upload was cut short (client disconnected)") from None
    replayed = False

    async def receive() -> dict[str, Any]:
        nonlocal replayed
        if replayed:
            return {"type": "http.disconnect"}
        replayed = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    return await Request(request.scope, receive).form(max_files=1, max_fields=8)


async def _read_upload(request: Request, max_upload_bytes: int, max_mb: str) -> tuple[bytes, str, dict[str, Any]]:
    """The image part ``file`` of a multipart upload (its bytes and name) and the other form fields; the HTTP
    error for anything else (415 not multipart / not an image, 413 too large, 400 missing or empty, 422 a field
    given twice: never a silent winner)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(415, "send the image as multipart/form-data in the field 'file' "
                                 f"(got Content-Type {content_type or 'none'!r})")
    form = await _read_form(request, max_upload_bytes + MULTIPART_OVERHEAD, max_mb)
    try:
        for key in dict.fromkeys(form.keys()):
            if len(given := form.getlist(key)) > 1:
                raise HTTPException(422, f"send one {key} field, got {len(given)}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "the multipart field 'file' with an image is missing")
        part_type = (upload.content_type or "application/octet-stream").lower()
        if not (part_type.startswith("image/") or part_type == "application/octet-stream"):
            raise HTTPException(415, f"'file' must be an image, got Content-Type {part_type!r}")
        data = await upload.read(max_upload_bytes + 1)
        name = upload.filename or "upload"
        fields = {key: value for key, value in form.items() if key != "file"}
    finally:
        await form.close()
    if len(data) > max_upload_bytes:
        raise HTTPException(413, f"upload too large: the limit is {max_mb} MB")
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    return data, name, fields


def create_app(index: str | Path | Index, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_k: int = DEFAULT_MAX_K, thumbnail_cache_entries: int = 1024,
               max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS, preload_model: bool = True, *,
               max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
               max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS, max_concurrent_decodes: int | None = None,
               decode_memory_budget: int = DEFAULT_DECODE_MEMORY_BUDGET, write_token: str | None = None,
               max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
               compact_every: int = DEFAULT_MAX_PENDING, compact_interval_s: float = DEFAULT_INTERVAL_S,
               runtime: str | None = None, query_amp: str | None = None,
               request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S) -> FastAPI:
    """The search service for ``index`` (an :class:`Index` or an index folder).

    ``preload_model`` loads (and fingerprint-checks) the model now, so a wrong model fails at start-up and the
    first query is not slow. The upload limits are described in :mod:`vitrieval.serve.uploads`;
    ``max_concurrent_decodes=None`` is the CPU count, at most 4. ``max_batch`` / ``max_wait_ms``: batched
    inference (:mod:`vitrieval.serve.batching`; ``max_batch=1`` embeds each query alone). ``write_token`` turns on
    ``POST /images`` / ``DELETE /images/{id}`` (the index must be a folder; this app becomes its one writer: its
    write lock is taken and the folder probed before the model loads), with
    compaction after ``compact_every`` writes or ``compact_interval_s`` seconds (and at shutdown, in the app's
    lifespan). ``app.state.close()`` stops the app's threads and releases the folder's write lock; a start that
    fails does so itself (:mod:`vitrieval.serve.startup`: nothing left running or locked).
    ``runtime`` (``torch`` / ``onnx``, see :mod:`vitrieval.runtime`) is what embeds the queries; ``None`` keeps the
    index's (``torch`` for a folder). With ``onnx`` the service imports no torch.
    ``query_amp``: the autocast of the queries' forward pass (``None``: the index's own;
    :meth:`~vitrieval.index.query_embedding.QueryEmbedding.use_query_amp`); added images keep the index's mode.
    ``request_timeout_s``: a request's body must arrive within it of its head, else 408
    (:class:`~vitrieval.serve.timeouts.BodyDeadline`; the head's deadline is uvicorn's side,
    :func:`~vitrieval.serve.timeouts.uvicorn_options`). ``HEAD`` is answered wherever ``GET`` is.
    """
    if max_upload_bytes <= 0 or max_k <= 0 or request_timeout_s <= 0:
        raise ValueError(f"max_upload_bytes, max_k and request_timeout_s must be > 0, got {max_upload_bytes}, "
                         f"{max_k}, {request_timeout_s}")
    limit_args: dict[str, Any] = {"max_pixels": max_upload_pixels, "max_aspect_ratio": max_aspect_ratio,
                                  "max_resized_pixels": max_resized_pixels,
                                  "decode_memory_budget": decode_memory_budget}
    if max_concurrent_decodes is not None:
        limit_args["max_concurrent_decodes"] = max_concurrent_decodes
    limits = UploadLimits(**limit_args)
    idx = index if isinstance(index, Index) else Index.load(index, runtime=runtime or "torch")
    if runtime is not None:
        idx.use_query_amp(None)  # a query amp left by an earlier app must not block a switch to onnx
        idx.use_runtime(runtime)
    idx.use_query_amp(query_amp)
    auth = WriteAuth(write_token)
    root = idx.root
    cache = ThumbnailCache(thumbnail_cache_entries)
    max_mb = f"{max_upload_bytes / 2 ** 20:g}"
    page = _page()
    health = WriteHealth(idx.directory if auth.writable else None)
    running: Running  # the threads and the folder's lock: started last (below), so no failed start leaves them

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if running.compactor is not None and idx.pending_writes:  # at shutdown: fold the journal into a generation
            await run_in_threadpool(running.compactor.compact)

    app = FastAPIOffline(title="vitrieval image search", version=__version__, lifespan=lifespan,
                         description=f"Search {len(idx)} indexed images by example (model {idx.fingerprint}).",
                         swagger_ui_parameters={"validatorUrl": None})  # Swagger's validator badge is remote
    app.state.index = idx
    app.state.thumbnails = cache

    async def descriptor_of(data: bytes, name: str, stored: bool = False) -> Any:
        """Decode (bounded pool), preprocess (threadpool) and embed (batched) one upload; HTTP errors for bad ones.
        ``stored``: an image to add, embedded under the index's own mode when queries use another (unbatched)."""
        try:
            with running.batcher.incoming():
                image = await running.decoder.decode(data, name)
                tensor = await run_in_threadpool(idx.prepare, image)
        except UploadRefused as exc:
            raise HTTPException(exc.status, exc.detail) from None
        except ImageDecodeError as exc:
            raise HTTPException(400, f"cannot read the uploaded image {name!r}: {exc.reason}") from None
        if stored and idx.query_amp_differs:
            return (await run_in_threadpool(idx.embed_prepared, [tensor], True))[0]
        return await running.batcher.embed(tensor)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # noqa: ANN001, ANN202 - starlette signature
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/healthz", response_model=Health, summary="Liveness and what is indexed")
    def healthz() -> Health:
        return Health(status="ok", count=len(idx), generation=idx.generation, pending_writes=idx.pending_writes,
                      writable=health.writable, write_error=health.last_error,
                      max_batch=running.batcher.max_batch, max_wait_ms=running.batcher.max_wait_ms,
                      query_amp=idx.query_amp or idx.index_amp,
                      fingerprint=idx.fingerprint, descriptor_dim=idx.descriptor_dim,
                      factory=idx.factory, max_k=max_k, max_upload_bytes=max_upload_bytes,
                      max_upload_pixels=limits.max_pixels, max_aspect_ratio=limits.max_aspect_ratio,
                      max_resized_pixels=limits.max_resized_pixels,
                      max_concurrent_decodes=limits.max_concurrent_decodes,
                      decode_memory_budget=limits.decode_memory_budget, request_timeout_s=request_timeout_s,
                      version=__version__)

    @app.post("/search", response_model=SearchResponse, summary="Find the indexed images most similar to an upload",
              openapi_extra=_UPLOAD_BODY,
              responses={400: {"description": "not a readable image"},
                         413: {"description": "upload too large, in bytes or in pixels (before or after resizing)"},
                         415: {"description": "not a multipart image upload"},
                         422: {"description": "k or a re-ranking option out of range, or an image of too extreme "
                                              "an aspect ratio"}})
    async def search(request: Request,
                     k: Annotated[int, Query(ge=1, le=max_k, description="number of results")] = 10,
                     rerank: Annotated[str, Query(description="none, or aqe: alpha-weighted query expansion "
                                                              "against the index")] = "none",
                     rerank_n: Annotated[int, Query(ge=1, le=max_k, description="aQE neighbours")] = DEFAULT_N,
                     rerank_alpha: Annotated[float, Query(ge=0, le=100, description="aQE similarity exponent")
                                             ] = DEFAULT_ALPHA,
                     ) -> SearchResponse:
        started = time.perf_counter()
        if rerank.strip().lower() not in ("none", "aqe"):
            raise HTTPException(422, f"rerank must be none or aqe, got {rerank[:40]!r} (DBA is not a query option: "
                                     "it is built into an index, vitrieval index --dba)")
        options = None if rerank.strip().lower() == "none" else RerankOptions(("aqe",), rerank_n, rerank_alpha)
        data, name, _ = await _read_upload(request, max_upload_bytes, max_mb)
        descriptor = await descriptor_of(data, name)
        hits = (await run_in_threadpool(idx.search, descriptor[None], k, rerank=options))[0]
        results = [SearchResult(id=h.id, score=round(h.score, 6), label=h.label, class_name=h.class_name,
                                path=display_path(h.path, root), thumbnail_url=f"/images/{h.id}") for h in hits]
        return SearchResponse(results=results, took_ms=round((time.perf_counter() - started) * 1000, 3))

    @app.get("/images/{image_id}", response_class=Response, summary="Thumbnail of an indexed image (JPEG)",
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no such image"}})
    def image(image_id: str,
              size: Annotated[int, Query(ge=THUMBNAIL_SIZES[0], le=THUMBNAIL_SIZES[1],
                                         description="longest side in pixels")] = 256) -> Response:
        if not (image_id.isascii() and image_id.isdigit()) or len(image_id) > MAX_ID_DIGITS:
            raise HTTPException(404, "no such image")
        try:
            entry = idx.entry(int(image_id))
        except KeyError:
            raise HTTPException(404, f"no image with id {image_id}") from None
        key = (entry.id, size)
        data = cache.get(key)
        if data is None:
            try:
                data = make_thumbnail(entry.path, size)
            except ImageDecodeError as exc:
                log.warning("thumbnail of id %d: %s", entry.id, exc)
                raise HTTPException(404, f"image {entry.id} is no longer readable on the server") from None
            cache.put(key, data)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/images", include_in_schema=False)
    def no_image() -> None:  # GET /images(/) names no image (POST /images adds one)
        raise HTTPException(404, "no such image")

    _WRITE_ERRORS = {401: {"description": "no bearer token"},
                     403: {"description": "a wrong token, or a read-only service"},
                     503: {"description": "the index folder became read-only or not this user's"},
                     507: {"description": "the disk of the index folder is full"}}

    @app.post("/images", status_code=201, response_model=Added, summary="Add an uploaded image to the index",
              openapi_extra=_UPLOAD_BODY,
              responses={**_WRITE_ERRORS, 400: {"description": "not a readable image"},
                         413: {"description": "upload too large"}, 415: {"description": "not a multipart image"},
                         422: {"description": "a label that is not an integer, or too extreme an aspect ratio"},
                         507: {"description": "the disk is full: the write was not recorded"}})
    async def add_image(request: Request) -> Added:
        auth.check(request.headers.get("authorization"))
        data, name, fields = await _read_upload(request, max_upload_bytes, max_mb)
        label = parse_label(fields)
        class_name = parse_class_name(fields)
        descriptor = await descriptor_of(data, name, stored=True)
        store, compactor = running.store, running.compactor
        assert store is not None and compactor is not None
        image_id = await run_in_threadpool(add_upload, idx, store, data, descriptor, label, health, name, class_name)
        compactor.notify()
        return Added(id=image_id)

    @app.delete("/images/{image_id}", status_code=204, response_class=Response, summary="Remove an image",
                responses={**_WRITE_ERRORS, 404: {"description": "no such image"}})
    async def delete_image(request: Request, image_id: str) -> Response:
        auth.check(request.headers.get("authorization"))
        if not (image_id.isascii() and image_id.isdigit()) or len(image_id) > MAX_ID_DIGITS:
            raise HTTPException(404, "no such image")
        store, compactor = running.store, running.compactor
        assert store is not None and compactor is not None
        if not await run_in_threadpool(remove_image, idx, store, int(image_id), health):
            raise HTTPException(404, f"no image with id {image_id}")
        cache.forget(int(image_id))
        compactor.notify()
        return Response(status_code=204)

    app.add_middleware(BodyDeadline, timeout_s=request_timeout_s)
    app.add_middleware(HeadAsGet)
    running = start(idx, writable=auth.writable, limits=limits, max_batch=max_batch, max_wait_ms=max_wait_ms,
                    compact_every=compact_every, compact_interval_s=compact_interval_s, preload_model=preload_model)
    app.state.batcher, app.state.decoder, app.state.compactor = running.batcher, running.decoder, running.compactor
    app.state.close = running.close
    return app
