"""A readers-writer lock: any number of searches at once, a write alone; a waiting writer goes first.

Why not one mutex: faiss searches are read-only and release the GIL, so concurrent searches run in parallel and a
compaction (which only reads a snapshot) must not stop them; only applying a write needs them out of the way.
Phase-fair: a waiting writer goes before readers that arrive after it (a stream of searches cannot starve
writes), and the readers that waited through a write go before the next writer (a stream of writes cannot starve
searches either). Not reentrant: a thread holding the read lock must not ask for it again (a writer waiting in
between would deadlock it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteLock:
    """``with lock.read(): ...`` shared, ``with lock.write(): ...`` exclusive."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self._readers_waiting = 0
        self._readers_turn = 0  # readers that waited through the last write, let in before the next writer

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            if self._writing or (self._writers_waiting and not self._readers_turn):
                self._readers_waiting += 1
                self._cond.wait_for(lambda: not self._writing and (not self._writers_waiting or self._readers_turn))
                self._readers_waiting -= 1
                self._readers_turn = max(0, self._readers_turn - 1)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writing and not self._readers and not self._readers_turn)
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._readers_turn = self._readers_waiting
                self._cond.notify_all()
