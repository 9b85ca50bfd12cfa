"""Background compaction of an index that takes writes: a thread folds the journal into a new generation.

It compacts (:meth:`vitrieval.index.Index.save`) when ``max_pending`` writes are journalled, or when writes have
waited ``interval_s`` seconds; searches carry on meanwhile and writes wait only for the snapshot
(:mod:`vitrieval.index.live`). :meth:`Compactor.close` compacts what is left. A failed compaction (a full disk)
is logged (one WARNING line when the disk refused it: full, read-only, not this user's) and retried at the next
wake-up: the writes stay safe in the journal.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from vitrieval.disk_errors import describe, is_disk_error

if TYPE_CHECKING:
    from vitrieval.index.index import Index

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 256
DEFAULT_INTERVAL_S = 5.0


class Compactor:
    """Compacts ``index`` on its own thread; call :meth:`notify` after each write."""

    def __init__(self, index: Index, max_pending: int = DEFAULT_MAX_PENDING,
                 interval_s: float = DEFAULT_INTERVAL_S) -> None:
        if max_pending < 1 or interval_s <= 0:
            raise ValueError(f"max_pending must be >= 1 and interval_s > 0, got {max_pending}, {interval_s}")
        self.index = index
        self.max_pending = max_pending
        self.interval_s = interval_s
        self.compactions = 0
        self._wake = threading.Event()
        self._stop = False
        self._since: float | None = None
        self._thread = threading.Thread(target=self._run, name="vitrieval-compactor", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A write was journalled: compact now if enough are pending."""
        if self._since is None:
            self._since = time.monotonic()
        if self.index.pending_writes >= self.max_pending:
            self._wake.set()

    def _due(self) -> bool:
        pending = self.index.pending_writes
        waited = self._since is not None and time.monotonic() - self._since >= self.interval_s
        return pending >= self.max_pending or (pending > 0 and waited)

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.interval_s / 4)
            self._wake.clear()
            if not self._stop and self._due():
                self.compact()

    def compact(self) -> None:
        """Compact now (on the calling thread); a failure is logged, the writes stay in the journal."""
        self._since = None
        try:
            self.index.save()
            self.compactions += 1
        except Exception as exc:  # the service goes on; the journal still holds every write
            if isinstance(exc, OSError) and is_disk_error(exc):  # a full or read-only disk: one line, no traceback
                log.warning("compaction failed: cannot write %s; the writes stay in the journal, retrying later",
                            describe(exc, self.index.directory))
            else:
                log.exception("compaction of %s failed; the writes stay in its journal, retrying later",
                              self.index.directory)
            self._since = time.monotonic()

    def close(self) -> None:
        """Stop the thread and compact what is pending."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=60)
        if self.index.pending_writes:
            self.compact()
