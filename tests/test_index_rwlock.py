"""index/rwlock.py: shared reads, exclusive writes, and neither side starved by a tight loop of the other."""

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


def test_a_tight_loop_of_writes_does_not_starve_a_reader():
    lock = ReadWriteLock()
    stop = threading.Event()

    def write() -> None:
        with lock.write():
            pass

    writers = [_loop(stop, write) for _ in range(2)]
    started = time.perf_counter()
    for _ in range(300):
        with lock.read():
            pass
    took = time.perf_counter() - started
    stop.set()
    for t in writers:
        t.join(10)
    assert took < 20, f"300 reads took {took:.1f} s beside a write loop"


def test_a_tight_loop_of_reads_does_not_starve_a_writer():
    lock = ReadWriteLock()
    stop = threading.Event()

    def read() -> None:
        with lock.read():
            time.sleep(0.0005)

    readers = [_loop(stop, read) for _ in range(4)]
    started = time.perf_counter()
    for _ in range(100):
        with lock.write():
            pass
    took = time.perf_counter() - started
    stop.set()
    for t in readers:
        t.join(10)
    assert took < 20, f"100 writes took {took:.1f} s beside a read loop"
