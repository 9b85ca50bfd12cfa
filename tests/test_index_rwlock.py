"""index/rwlock.py: shared reads, exclusive writes, and the phase-fair order that starves neither side."""

from __future__ import annotations

import threading
import time

from vitrieval.index.rwlock import ReadWriteLock


def _loop(stop: threading.Event, body) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            body()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_write_is_exclusive_and_reads_are_shared():
    lock = ReadWriteLock()
    inside = {"readers": 0, "writers": 0, "max_readers": 0, "overlap": 0}
    guard = threading.Lock()

    def reader() -> None:
        with lock.read():
            with guard:
                inside["readers"] += 1
                inside["max_readers"] = max(inside["max_readers"], inside["readers"])
                inside["overlap"] += inside["writers"]
            time.sleep(0.001)
            with guard:
                inside["readers"] -= 1

    def writer() -> None:
        with lock.write():
            with guard:
                inside["writers"] += 1
                inside["overlap"] += inside["readers"] + (inside["writers"] - 1)
            time.sleep(0.001)
            with guard:
                inside["writers"] -= 1

    stop = threading.Event()
    threads = [_loop(stop, reader) for _ in range(4)] + [_loop(stop, writer) for _ in range(2)]
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(10)
    assert inside["overlap"] == 0 and inside["max_readers"] >= 2


def _until(predicate) -> None:
    """Wait until ``predicate()`` (another thread reached a point); a hang guard of 60 s, not a speed bound."""
    for _ in range(6000):
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("the other thread never got there")


def _enter(lock: ReadWriteLock, kind: str, name: str, order: list[str], release: threading.Event | None = None
           ) -> threading.Thread:
    def run() -> None:
        with lock.read() if kind == "read" else lock.write():
            order.append(name)
            if release is not None:
                assert release.wait(60)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_readers_that_waited_through_a_write_go_before_the_next_writer():
    """A stream of writes cannot starve searches: a reader that arrived during a write enters before a writer
    that arrived after it."""
    lock, order, release = ReadWriteLock(), [], threading.Event()
    first = _enter(lock, "write", "w1", order, release)
    _until(lambda: order == ["w1"])
    reader = _enter(lock, "read", "r", order)
    _until(lambda: lock._readers_waiting == 1)
    writer = _enter(lock, "write", "w2", order)
    _until(lambda: lock._writers_waiting == 1)
    release.set()
    for t in (first, reader, writer):
        t.join(60)
    assert order == ["w1", "r", "w2"]


def test_a_waiting_writer_goes_before_readers_that_arrive_after_it():
    """A stream of searches cannot starve writes: while a writer waits for the current readers, new readers
    wait behind it."""
    lock, order, release = ReadWriteLock(), [], threading.Event()
    first = _enter(lock, "read", "r1", order, release)
    _until(lambda: order == ["r1"])
    writer = _enter(lock, "write", "w", order)
    _until(lambda: lock._writers_waiting == 1)
    late = _enter(lock, "read", "r2", order)
    _until(lambda: lock._readers_waiting == 1)
    assert order == ["r1"]  # r2 did not slip in beside r1 while the writer waits
    release.set()
    for t in (first, writer, late):
        t.join(60)
    assert order == ["r1", "w", "r2"]
