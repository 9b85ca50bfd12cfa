"""The writes of an index folder since its generation: ``journal.sqlite`` (the standard library's SQLite).

A write (an add or a removal) is one SQLite transaction here, committed and fsynced, and only then applied in
memory and acknowledged; a compaction (:meth:`vitrieval.index.Index.save`) later writes the whole index as a new
generation whose ``index.json`` records the last write it holds (``journal_seq``), and then deletes those writes
from the journal. Loading replays the writes after the generation's ``journal_seq``.

Three tables::

    writes(seq INTEGER PRIMARY KEY, op TEXT 'add' | 'remove', dim INTEGER)
    write_rows(seq, position, id, path BLOB, label, class_name BLOB, vector BLOB)   one per id of a write
    acknowledged(last_seq)                                                       one row: the high-water mark

SQLite carries what a hand-written log would have to: a commit is atomic (rollback journal, ``synchronous=EXTRA``:
the commit is durable before it returns, the folder included), a write the disk refuses (``ENOSPC``:
``SQLITE_FULL``, any I/O error) is a failed transaction that leaves the file as it was, and a torn or damaged file is
``SQLITE_CORRUPT`` / ``SQLITE_NOTADB`` (one :class:`JournalError` naming the file, never a silent drop).

``acknowledged.last_seq`` is committed with each write and only ever grows: it is the sequence number of the last
write this folder ever acknowledged. So the journal states what it must hold: every write from the generation's
``journal_seq`` + 1 through ``last_seq``, in order. A load checks exactly that (:meth:`JournalState.after`): a
journal emptied or cut short, rows deleted by hand, or a ``journal_seq`` raised by hand in ``index.json`` is a
one-line error naming the file and the missing writes, not acknowledged writes silently dropped.

One process writes a folder at a time: :class:`JournalWriter` holds an exclusive ``flock`` on the index folder
itself (a second one, say ``vitrieval index --add`` beside a ``vitrieval serve`` taking writes, is refused with a
clear error), and a folder it cannot write (read-only, another user's, immutable) is refused when the lock is taken
(:func:`vitrieval.disk_errors.check_writable`). The writer hands out the sequence numbers, each its last + 1.

A format-3 folder's ``journal.log`` (:mod:`vitrieval.index.journal_log`) is read as it is; the first write moves its
writes into a new ``journal.sqlite`` (created whole under a temporary name, then renamed) and removes it.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from vitrieval.disk_errors import NotWritable, check_writable
from vitrieval.index.journal_log import LEGACY_JOURNAL_FILE, read_legacy_journal
from vitrieval.index.journal_write import JOURNAL_FIX, JournalError, JournalLocked, Write
from vitrieval.index.manifest import INFO_FILE, IndexFormatError
from vitrieval.index.rows import decode_name, drop_stale_rollback_journal, encode_name
from vitrieval.index.store import JOURNAL_FILE, fsync_dir
from vitrieval.io_utils import atomic_path

SEQ_KEY = "journal_seq"
"""``index.json`` key: the last journalled write a generation holds."""
APPLICATION_ID = 0x56524A31  # "VRJ1": PRAGMA application_id of a vitrieval journal
_SCHEMA = f"""
PRAGMA auto_vacuum = FULL;
PRAGMA application_id = {APPLICATION_ID};
CREATE TABLE writes (seq INTEGER PRIMARY KEY, op TEXT NOT NULL CHECK (op IN ('add', 'remove')), dim INTEGER);
CREATE TABLE write_rows (seq INTEGER NOT NULL, position INTEGER NOT NULL, id INTEGER NOT NULL, path BLOB,
                         label INTEGER, class_name BLOB, vector BLOB, PRIMARY KEY (seq, position)) WITHOUT ROWID;
CREATE TABLE acknowledged (last_seq INTEGER NOT NULL);
"""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JournalState:
    """What a folder's journal holds: its writes in order, and the last write the folder acknowledged."""

    path: Path | None
    """The file read (``journal.sqlite``, or a format-3 folder's ``journal.log``); ``None``: no journal."""
    writes: list[Write]
    last_seq: int
    marked: bool
    """Whether ``last_seq`` is a recorded high-water mark (``journal.sqlite``) or only the last record read."""

    def after(self, seq: int, directory: Path) -> list[Write]:
        """The writes after the generation's ``journal_seq`` = ``seq``, checked to be every write the folder
        acknowledged since: a :class:`JournalError` (:class:`JournalGap` for a hole a concurrent compaction can
        explain) otherwise."""
        if self.marked and seq > self.last_seq:
            raise JournalError(f"{directory / INFO_FILE}: key {SEQ_KEY!r} is {seq}, beyond the last write "
                               f"{self.path} acknowledged ({self.last_seq}): a hand-edited {INFO_FILE}, or "
                               f"another folder's journal? {JOURNAL_FIX}")
        later = [w for w in self.writes if w.seq > seq]
        last = self.last_seq if self.marked else seq + len(later)
        expected = list(range(seq + 1, last + 1))
        found = [w.seq for w in later]
        if found != expected:
            missing = sorted(set(expected) - set(found))
            what = f"writes {missing[0]}..{missing[-1]}" if len(missing) > 1 else f"write {missing[0]}"
            verb = "are" if len(missing) > 1 else "is"
            raise JournalGap(f"{self.path}: the acknowledged {what} since the generation of {INFO_FILE} "
                             f"({SEQ_KEY} {seq}) {verb} missing (emptied, cut short or edited?): {JOURNAL_FIX}")
        return later


class JournalGap(JournalError):
    """The journal does not hold every write since the generation: damage, or a compaction that moved the folder
    on while it was read (the loader reads the folder again before it reports it)."""


def read_journal(directory: Path) -> JournalState:
    """The journal of ``directory``: ``journal.sqlite``, else a format-3 ``journal.log``, else none."""
    path = directory / JOURNAL_FILE
    if path.exists() or path.is_symlink():
        return _read_sqlite(path)
    legacy = directory / LEGACY_JOURNAL_FILE
    if legacy.exists() or legacy.is_symlink():
        writes = read_legacy_journal(legacy)
        return JournalState(legacy, writes, writes[-1].seq if writes else 0, marked=False)
    return JournalState(None, [], 0, marked=False)


def _read_sqlite(path: Path) -> JournalState:
    if not path.is_file():
        raise JournalError(f"{path} is not a file: {JOURNAL_FIX}")
    # read-write where this process may write (so that a commit a crash left half done is rolled back: SQLite's
    # hot journal), read-only elsewhere; never created here
    mode = "rw" if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK) else "ro"
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?mode={mode}", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise _error(exc, path) from None
    try:
        db.execute("BEGIN")  # one snapshot: the writes and the mark together
        _check_journal(db, path)
        last = db.execute("SELECT last_seq FROM acknowledged").fetchall()
        if len(last) != 1:
            raise JournalError(f"{path}: its high-water mark (table acknowledged) has {len(last)} rows, not 1: "
                               f"{JOURNAL_FIX}")
        ops = db.execute("SELECT seq, op, dim FROM writes ORDER BY seq").fetchall()
        rows: dict[int, list[tuple]] = {}
        for row in db.execute("SELECT seq, id, path, label, class_name, vector FROM write_rows "
                              "ORDER BY seq, position"):
            rows.setdefault(int(row[0]), []).append(row[1:])
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise _error(exc, path) from None
    finally:
        db.close()
    writes = [_write(int(seq), op, dim, rows.get(int(seq), []), path) for seq, op, dim in ops]
    return JournalState(path, writes, int(last[0][0]), marked=True)


def _check_journal(db: sqlite3.Connection, path: Path) -> None:
    """A :class:`JournalError` unless ``db`` is an intact vitrieval journal (``PRAGMA quick_check``)."""
    if db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
        size = path.stat().st_size
        raise JournalError(f"{path} is {'empty' if size == 0 else 'not a vitrieval journal'} ({size} bytes): "
                           f"{JOURNAL_FIX}")
    problems = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        first = next((line.strip() for p in problems for line in str(p).splitlines()
                      if line.strip() and not line.startswith("***")), "quick_check failed")
        raise JournalError(f"{path} is damaged ({first[:160]}): {JOURNAL_FIX}")


def _write(seq: int, op: str, dim: int | None, rows: list[tuple], path: Path) -> Write:
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    if op == "remove":
        return Write("remove", ids, seq=seq)
    if not dim or any(r[4] is None or len(r[4]) != 4 * dim for r in rows):
        raise JournalError(f"{path}: write {seq} has vectors of the wrong size (dim {dim}): {JOURNAL_FIX}")
    vectors = np.frombuffer(b"".join(r[4] for r in rows), dtype="<f4").reshape(len(rows), dim).astype(np.float32)
    entries = [(decode_name(r[1]) or "", None if r[2] is None else int(r[2]), decode_name(r[3])) for r in rows]
    return Write("add", ids, entries, vectors, seq=seq)


def _error(exc: sqlite3.Error, path: Path) -> Exception:
    """What a failed SQLite call on the journal ``path`` is to the user: an ``OSError`` of the disk's errno (a
    full disk, a read-only or forbidden file: :mod:`vitrieval.disk_errors` reports it in one line), else a
    :class:`JournalError` (a damaged file)."""
    extended = getattr(exc, "sqlite_errorcode", 0)
    if extended == sqlite3.SQLITE_READONLY_ROLLBACK:
        return JournalError(f"{path}: a write a crash left half done ({path.name}-journal) must be rolled back "
                            "before it can be read, which needs write access: run any vitrieval command on the "
                            "folder once as a user who may write it (vitrieval search will do)")
    code = extended & 0xFF
    if code == sqlite3.SQLITE_FULL:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if code == sqlite3.SQLITE_READONLY:
        read_only_mount = os.statvfs(path.parent).f_flag & os.ST_RDONLY
        number = errno.EROFS if read_only_mount else errno.EACCES
        return OSError(number, os.strerror(number), str(path))
    if code in (sqlite3.SQLITE_PERM, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_AUTH):
        return OSError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    if code == sqlite3.SQLITE_IOERR:
        return OSError(errno.EIO, f"{os.strerror(errno.EIO)} ({exc})", str(path))
    if code == sqlite3.SQLITE_BUSY:
        return JournalLocked(f"{path} is locked by another process ({exc}): try again")
    return JournalError(f"{path} is damaged or not a journal ({exc}): {JOURNAL_FIX}")


class JournalWriter:
    """Commits writes to ``directory``'s journal, each durable before :meth:`append` returns; holds the folder's
    write lock (the module docstring)."""

    def __init__(self, directory: Path, *, replace_damaged: bool = False) -> None:
        """``replace_damaged``: a build, which replaces the whole index (its pending writes included), takes a
        damaged journal as none (with a warning) and writes a new one; any other writer refuses it."""
        import fcntl

        self.directory = directory
        self.path = directory / JOURNAL_FILE
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise JournalLocked(f"{directory} is being written by another process (a `vitrieval serve` taking "
                                "writes, or another `vitrieval index --add/--remove`): stop it first") from None
        self._replace = False
        try:
            check_writable(directory)  # NotWritable now, in one line, rather than at the first write
            state = self._read(replace_damaged)
        except (NotWritable, IndexFormatError, OSError):
            os.close(self._lock_fd)
            raise
        # a format-3 folder (or a replaced journal) has no mark: its writes go on from the generation's journal_seq
        self.last_seq = state.last_seq if state.marked else max(state.last_seq, self._compacted_through())
        """The sequence number of the last write the folder acknowledged (0: none)."""
        self._legacy = state.writes if state.path is not None and not state.marked else []
        self._db: sqlite3.Connection | None = None
        self._broken: str | None = None

    def _compacted_through(self) -> int:
        """The folder's ``journal_seq``: the last write its generation holds (0 without a readable ``index.json``,
        which only a build, replacing it, gets past)."""
        from vitrieval.index.manifest import ManifestError, read_manifest

        try:
            return int(read_manifest(self.directory)[0].journal_seq) if (self.directory / INFO_FILE).is_file() else 0
        except ManifestError:
            return 0

    def _read(self, replace_damaged: bool) -> JournalState:
        try:
            return read_journal(self.directory)
        except JournalError as exc:
            if not replace_damaged or self.path.is_dir() or (self.directory / LEGACY_JOURNAL_FILE).is_dir():
                raise
            log.warning("%s; this build replaces it, with the writes it held, by a new journal",
                        str(exc).split(f": {JOURNAL_FIX}")[0])
            self._replace = True
            return JournalState(None, [], 0, marked=False)

    # -- the file --------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Make sure ``journal.sqlite`` exists (before a generation that names the current format is written)."""
        self._open()

    def _open(self) -> sqlite3.Connection:
        if self._broken is not None:
            raise OSError(errno.EIO, self._broken, str(self.path))
        if self._db is None:
            if self._replace or not self.path.exists():
                self._create()
                self._replace = False
            try:
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
                db.execute("PRAGMA journal_mode = DELETE")
                db.execute("PRAGMA synchronous = EXTRA")  # the commit's unlink of the rollback journal fsynced too
                # no second quick_check: __init__ read (and checked) an existing file; a new one was just written
            except sqlite3.Error as exc:
                raise _error(exc, self.path) from None
            self._db = db
        return self._db

    def _create(self) -> None:
        """A new journal: the mark at :attr:`last_seq` (the folder's ``journal_seq`` or higher), with a format-3
        ``journal.log``'s writes moved in; written whole under a temporary name, then renamed; then the old file
        removed. A rollback journal left beside the name (of a deleted or replaced file) is removed first: SQLite
        would take it as a commit to roll back into the new file."""
        drop_stale_rollback_journal(self.path)
        try:
            with atomic_path(self.path) as tmp:
                db = sqlite3.connect(tmp, isolation_level=None)
                try:
                    db.executescript(_SCHEMA)
                    db.execute("BEGIN")
                    for write in self._legacy:
                        _insert(db, write)
                    db.execute("INSERT INTO acknowledged VALUES (?)", (self.last_seq,))
                    db.execute("COMMIT")
                finally:
                    db.close()
        except sqlite3.Error as exc:
            raise _error(exc, self.path) from None
        fsync_dir(self.directory)
        if self._legacy or (self.directory / LEGACY_JOURNAL_FILE).is_file():
            (self.directory / LEGACY_JOURNAL_FILE).unlink(missing_ok=True)
            fsync_dir(self.directory)
        self._legacy = []

    # -- writes ----------------------------------------------------------------------------------------------
    def append(self, write: Write) -> int:
        """Commit ``write`` as the next write (its ``seq`` ignored) and return its sequence number: when this
        returns, the write survives a crash; when it raises, the journal is as it was (a full disk included)."""
        db = self._open()
        seq = self.last_seq + 1
        self._transaction(db, lambda: _insert(db, write, seq), seq)
        self.last_seq = seq
        return seq

    def drop_through(self, seq: int) -> None:
        """Delete the writes up to ``seq`` (held by a generation now), in one transaction; the mark stays."""
        db = self._open()

        def drop() -> None:
            db.execute("DELETE FROM write_rows WHERE seq <= ?", (seq,))
            db.execute("DELETE FROM writes WHERE seq <= ?", (seq,))

        self._transaction(db, drop, None)

    def _transaction(self, db: sqlite3.Connection, body: Callable[[], None], seq: int | None) -> None:
        try:
            db.execute("BEGIN IMMEDIATE")
            mark = db.execute("SELECT last_seq FROM acknowledged").fetchone()[0]
            if mark != self.last_seq:
                raise JournalError(f"{self.path}: its last write is {mark}, not {self.last_seq} as when this "
                                   "process opened it: another process wrote it; load the index again")
            body()
            if seq is not None:
                db.execute("UPDATE acknowledged SET last_seq = ?", (seq,))
            db.execute("COMMIT")
        except BaseException as exc:
            self._roll_back(db, exc)
            if isinstance(exc, sqlite3.Error):
                raise _error(exc, self.path) from None
            raise

    def _roll_back(self, db: sqlite3.Connection, exc: BaseException) -> None:
        if not db.in_transaction:
            return  # SQLite rolled it back itself (a full disk)
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error as undo:
            self._broken = (f"a failed write ({exc}) could not be rolled back ({undo}); restart the process to "
                            "reopen the index")

    def close(self) -> None:
        """Close the journal and release the lock (a second call does nothing)."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _insert(db: sqlite3.Connection, write: Write, seq: int | None = None) -> None:
    seq = write.seq if seq is None else seq
    if write.op == "add":
        assert write.vectors is not None and len(write.vectors) == len(write.ids) == len(write.entries)
        x = np.ascontiguousarray(write.vectors, dtype="<f4")
        db.execute("INSERT INTO writes VALUES (?, 'add', ?)", (seq, int(x.shape[1])))
        db.executemany("INSERT INTO write_rows VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [(seq, p, int(i), encode_name(e[0]), e[1], encode_name(e[2]), x[p].tobytes())
                        for p, (i, e) in enumerate(zip(write.ids.tolist(), write.entries))])
    else:
        db.execute("INSERT INTO writes VALUES (?, 'remove', NULL)", (seq,))
        db.executemany("INSERT INTO write_rows (seq, position, id) VALUES (?, ?, ?)",
                       [(seq, p, int(i)) for p, i in enumerate(write.ids.tolist())])
