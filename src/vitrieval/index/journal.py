"""The write-ahead journal of an index folder: ``journal.log``, append-only, every record checksummed and fsynced.

A write (an add or a removal) is appended here, fsynced, and only then applied in memory and acknowledged; a
compaction (:meth:`vitrieval.index.Index.save`) later writes the whole index as a new generation whose
``index.json`` records the last journal sequence number it holds (``journal_seq``), and then drops those records
from the journal. Loading replays the records after the generation's ``journal_seq``. So after SIGKILL at any
moment every acknowledged write is in the generation or in the journal, and a write is either replayed whole or
(killed before its fsync returned, hence never acknowledged) not at all.

One record on disk::

    <length: uint32 LE> <crc32 of the payload: uint32 LE> <payload: `length` bytes of UTF-8 JSON>

    payload = {"seq": n, "op": "add", "ids": [...], "entries": [[path, label, class_name], ...],
               "vectors": base64 float32}
            | {"seq": n, "op": "remove", "ids": [...]}

A record cut short or failing its checksum *at the end* of the file is the torn tail of a write that was killed
before its fsync returned: it is left out with a warning naming the file and the offset (and cut off before the next
append). A bad record with good records after it cannot come from a crash: :class:`JournalError` names the file and
the byte offset; so does a journal that is not a file (a folder in its place).

A failed append (a full disk: ``ENOSPC``, or any I/O error of the write or its fsync) is undone before the error is
raised: the file is cut back to its length before the record, so a write answered with an error has no effect, and
the next append does not carry it along. The append goes through an unbuffered descriptor, never through a buffer
that could keep the failed bytes. Should the undo fail too, the writer refuses every later append (the folder's
journal can no longer be trusted to end where it should) until the process opens it again.

One process writes a folder at a time: the writer holds an exclusive ``flock`` on the index folder itself (a second
one, say ``vitrieval index --add`` beside a ``vitrieval serve`` taking writes, is refused with a clear error), and
a folder it cannot write (read-only, another user's, immutable) is refused when the lock is taken
(:func:`vitrieval.disk_errors.check_writable`). An emptied journal is removed, so a compacted folder holds no
journal at all.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitrieval.disk_errors import NotWritable, check_writable
from vitrieval.index.store import IndexFormatError, fsync_dir
from vitrieval.io_utils import atomic_path

JOURNAL_FILE = "journal.log"
SEQ_KEY = "journal_seq"
"""``index.json`` key: the last journal record a generation holds."""
_HEADER = struct.Struct("<II")

log = logging.getLogger(__name__)


class JournalError(IndexFormatError):
    """A journal record that is damaged although records follow it (not a torn tail): names file and offset."""


class JournalLocked(ValueError):
    """Another process holds the index folder's write lock (a ``ValueError``: the CLI reports it in one line)."""


@dataclass(frozen=True)
class Record:
    """One journalled write: ``op`` ``"add"`` (ids, entries ``(path, label)``, vectors) or ``"remove"`` (ids)."""

    seq: int
    op: str
    ids: np.ndarray
    entries: list[tuple[str, int | None, str | None]] = field(default_factory=list)
    vectors: np.ndarray | None = None

    def __post_init__(self) -> None:  # (path, label) rows get no class name
        object.__setattr__(self, "entries", [(str(e[0]), e[1], e[2] if len(e) > 2 else None) for e in self.entries])

    def encode(self) -> bytes:
        body: dict[str, Any] = {"seq": self.seq, "op": self.op, "ids": [int(i) for i in self.ids]}
        if self.op == "add":
            assert self.vectors is not None
            body["entries"] = [list(e) for e in self.entries]
            body["dim"] = int(self.vectors.shape[1])
            body["vectors"] = base64.b64encode(np.ascontiguousarray(self.vectors, dtype="<f4").tobytes()).decode()
        payload = json.dumps(body).encode("utf-8")
        return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload

    @classmethod
    def decode(cls, payload: bytes) -> Record:
        body = json.loads(payload)
        ids = np.asarray(body["ids"], dtype=np.int64)
        if body["op"] == "remove":
            return cls(int(body["seq"]), "remove", ids)
        vectors = np.frombuffer(base64.b64decode(body["vectors"]), dtype="<f4").reshape(-1, int(body["dim"]))
        entries = [(str(e[0]), None if e[1] is None else int(e[1]), None if len(e) < 3 or e[2] is None else str(e[2]))
                   for e in body["entries"]]
        return cls(int(body["seq"]), "add", ids, entries, vectors.astype(np.float32))


def read_journal(directory: Path) -> tuple[list[Record], int]:
    """The records of ``directory``'s journal and the byte length of its intact part (a torn tail left out)."""
    path = directory / JOURNAL_FILE
    if not path.exists():
        return [], 0
    if not path.is_file():
        raise JournalError(f"{path} is not a file: restore the index folder's journal (or remove it to lose the "
                           "writes since the last compaction)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"{path} cannot be read ({exc.strerror}): fix its permissions or restore it") from None
    records: list[Record] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            _torn(path, offset, len(data))
            break  # a torn header
        length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if end > len(data):
            _torn(path, offset, len(data))
            break  # a torn payload
        payload = data[offset + _HEADER.size:end]
        try:
            good = zlib.crc32(payload) == crc
            record = Record.decode(payload) if good else None
        except (ValueError, KeyError, TypeError):
            record = None
        if record is None:
            if end == len(data):
                _torn(path, offset, len(data))
                break  # the torn last record
            raise JournalError(f"{path}: the record at byte {offset} is damaged (checksum or content) and "
                               f"{len(data) - end} bytes of records follow it: not a crash, a damaged copy; "
                               "restore the index folder or rebuild it")
        records.append(record)
        offset = end
    return records, offset


def _torn(path: Path, offset: int, size: int) -> None:
    log.warning("%s: the last %d byte(s), from offset %d, are an incomplete record (a write killed before it was "
                "acknowledged): left out", path, size - offset, offset)


class JournalWriter:
    """Appends records to ``directory``'s journal, each fsynced before :meth:`append` returns; holds the lock."""

    def __init__(self, directory: Path) -> None:
        import fcntl

        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise JournalLocked(f"{directory} is being written by another process (a `vitrieval serve` taking "
                                "writes, or another `vitrieval index --add/--remove`): stop it first") from None
        try:
            check_writable(directory)  # NotWritable now, in one line, rather than at the first append
        except NotWritable:
            os.close(self._lock_fd)
            raise
        records, intact = read_journal(directory)
        self.last_seq = records[-1].seq if records else 0
        """The sequence number of the last record in the journal (0: none)."""
        self._fd: int | None = None
        self._broken: str | None = None
        path = directory / JOURNAL_FILE
        if path.is_file() and path.stat().st_size > intact:  # cut off a torn tail before appending after it
            with open(path, "r+b") as fh:
                fh.truncate(intact)
                os.fsync(fh.fileno())

    def append(self, record: Record) -> None:
        """Write ``record`` and fsync: when this returns, the record survives a crash; when it raises, the journal
        is as it was before (the module docstring)."""
        if self._broken is not None:
            raise OSError(errno.EIO, self._broken)
        path = self.directory / JOURNAL_FILE
        if self._fd is None:
            created = not path.exists()
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            if created:
                fsync_dir(self.directory)
        data = record.encode()
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)
                os.fsync(self._fd)
            except OSError as undo:
                self._broken = (f"{path}: a failed write ({exc.strerror}) could not be undone ({undo.strerror}); "
                                "restart the process to reopen the index")
            raise OSError(exc.errno, exc.strerror, str(path)) from None  # the write was not recorded
        self.last_seq = max(self.last_seq, record.seq)

    def drop_through(self, seq: int) -> None:
        """Rewrite the journal without the records up to ``seq`` (held by a generation now), atomically."""
        self._close_fd()
        kept = [r for r in read_journal(self.directory)[0] if r.seq > seq]
        if kept:
            with atomic_path(self.directory / JOURNAL_FILE) as tmp:
                tmp.write_bytes(b"".join(r.encode() for r in kept))
        else:
            (self.directory / JOURNAL_FILE).unlink(missing_ok=True)
        fsync_dir(self.directory)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Close the journal and release the lock (a second call does nothing)."""
        self._close_fd()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
