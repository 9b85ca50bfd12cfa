"""What a service runs besides its routes, started in one place and stopped by one ``close``.

:func:`start` takes, in this order: the index folder's write lock and write probe (writes on:
:func:`~vitrieval.serve.writes.hold_for_writes`, before the model loads, so a refusal is not kept waiting), the
model (``preload_model``: loaded and fingerprint-checked now, so a wrong model fails at start-up), the
:class:`~vitrieval.serve.batching.Batcher`'s model thread, the :class:`~vitrieval.serve.uploads.DecodePool`, and
last (writes on) the :class:`~vitrieval.index.compaction.Compactor`'s thread, which may compact the folder.

Each part's stop is recorded as the part starts (one :class:`~contextlib.ExitStack`), so a start that fails
part-way stops what it had started, newest first: no thread left running, the folder unlocked for another writer.
:meth:`Running.close` is the same stops for a service that started (``app.state.close``): the compactor's last
compaction before the folder's lock is released.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vitrieval.index.compaction import Compactor
from vitrieval.serve.batching import Batcher
from vitrieval.serve.uploads import DecodePool, UploadLimits
from vitrieval.serve.writes import UploadStore, hold_for_writes

if TYPE_CHECKING:
    from vitrieval.index import Index


@dataclass(frozen=True)
class Running:
    """A started service's parts; ``compactor`` and ``store`` only with writes on."""

    batcher: Batcher
    decoder: DecodePool
    compactor: Compactor | None
    store: UploadStore | None
    close: Callable[[], None]
    """Stop them all, newest first, and release the folder's write lock (writes on)."""


def start(index: Index, *, writable: bool, limits: UploadLimits, max_batch: int, max_wait_ms: float,
          compact_every: int, compact_interval_s: float, preload_model: bool) -> Running:
    """Start a service's parts over ``index`` (``writable``: it takes writes); a failure stops what had started."""
    with ExitStack() as started:
        if writable:
            hold_for_writes(index)
            started.callback(index.release_writer)
        if preload_model:
            _ = index.embedder
        batcher = Batcher(index.embed_prepared, max_batch, max_wait_ms)
        started.callback(batcher.close)
        decoder = DecodePool(limits, index.preprocessing)
        started.callback(decoder.shutdown)
        compactor = store = None
        if writable:
            assert index.directory is not None  # hold_for_writes refused an index without a folder
            compactor = Compactor(index, compact_every, compact_interval_s)
            started.callback(compactor.close)
            store = UploadStore(index.directory)
        return Running(batcher, decoder, compactor, store, started.pop_all().close)
