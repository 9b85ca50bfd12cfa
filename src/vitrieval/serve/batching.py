"""Batched inference for the service: concurrent queries embedded together, one forward pass per batch.

Each request is decoded (the bounded :class:`~vitrieval.serve.uploads.DecodePool`) and preprocessed on its own
thread, then hands its input tensor to the :class:`Batcher`: one model thread takes the first waiting tensor, adds
whatever else arrives within ``max_wait_ms`` (up to ``max_batch``), runs one forward pass and hands each request
its row. The wait happens only while other requests are known to be on their way (:meth:`Batcher.incoming`,
held while a request decodes and preprocesses), so a lone request never waits. While the model runs, the next
requests are decoded, preprocessed and parsed (HTTP) in parallel, and they form the next batch: most of the gain
on a CPU comes from that overlap, on a GPU from the batch itself.

A request's descriptor is the unbatched one up to float rounding (the forward pass is per image; only the matrix
products' blocking changes with the batch size): pinned by ``tests/test_serve_batching.py`` (scores within 1e-6,
the same ids). ``max_batch=1`` is the unbatched service (each request its own forward pass, in arrival order).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_WAIT_MS = 0.0
"""Measured by ``benchmarks/serve_latency.py --concurrency 8 --max-batch 1,8,16 --max-wait-ms 0,2,10`` (DeiT-Tiny
at 224 px, 10k index, a shared 2-core CPU): 0 ms gave the highest throughput at both batch sizes (1.37x and 1.52x
the unbatched service; 2 and 10 ms: 1.03-1.34x). On a CPU the batch fills while the model runs, so waiting only
adds latency; on a GPU, whose forward pass is short, a few ms can help (``--max-wait-ms``)."""

_STOP = object()


class Batcher:
    """Embeds inputs handed in by concurrent requests in batches, on one thread of its own.

    ``embed_batch``: a list of ``B`` preprocessed images ``(3, H, W)`` (torch tensors or numpy arrays, by runtime)
    -> descriptors ``(B, D)`` in one forward pass (``Index.embed_prepared``).
    """

    def __init__(self, embed_batch: Callable[[list[Any]], np.ndarray], max_batch: int = DEFAULT_MAX_BATCH,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self.embed_batch = embed_batch
        self.max_batch = max_batch
        self.max_wait_ms = float(max_wait_ms)
        self.batches = 0
        self.images = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._upstream = 0
        self._upstream_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="vitrieval-batcher", daemon=True)
        self._thread.start()

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Held by a request while it decodes and preprocesses: a batch then waits for it (within max_wait_ms)."""
        with self._upstream_lock:
            self._upstream += 1
        try:
            yield
        finally:
            with self._upstream_lock:
                self._upstream -= 1

    @property
    def queued(self) -> int:
        """Inputs handed in and not yet taken into a batch."""
        return self._queue.qsize()

    def submit(self, tensor: Any) -> Future[np.ndarray]:
        """Queue one preprocessed image ``(3, H, W)``; the future gives its descriptor ``(D,)``."""
        future: Future[np.ndarray] = Future()
        self._queue.put((tensor, future))
        return future

    async def embed(self, tensor: Any) -> np.ndarray:
        """:meth:`submit`, awaited."""
        return await asyncio.wrap_future(self.submit(tensor))

    def _collect(self, first: Any) -> tuple[list[Any], bool]:
        """``first`` and what else arrives within ``max_wait_ms`` (at most ``max_batch``); whether to stop."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait_ms / 1000
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if not self._upstream:  # nobody else on the way: do not wait for them
                remaining = 0
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._collect(first)
            try:
                out = self.embed_batch([tensor for tensor, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error; the thread goes on
                for _, future in batch:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(batch)
            for row, (_, future) in zip(out, batch):
                future.set_result(row)

    def close(self) -> None:
        """Finish the queued work and stop the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)
