"""The rows of a faiss-backed index on disk: ``rows.sqlite`` in the generation folder (the standard library's SQLite).

One table, ``rows(id INTEGER PRIMARY KEY, path TEXT, label INTEGER, class_name TEXT)`` with an index on ``path``:
looked up by id (the hits of a search, ``/images/{id}``) and by path (``--add``'s "already indexed"), never loaded
whole into memory. A generation's file is written once (:func:`write_rows`, fsynced, before ``index.json`` names the
generation) and opened read-only and immutable afterwards (:class:`RowsFile`), so it is swapped atomically with the
generation and readable in a read-only folder. The rows written since the generation (not yet compacted) are the
:class:`~vitrieval.index.faiss_store.FaissStore`'s small overlay in memory and in the journal.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from vitrieval.data.table import Record
from vitrieval.index.manifest import IndexFormatError
from vitrieval.io_utils import create_empty

ROWS_FILE = "rows.sqlite"
_SCHEMA = ("CREATE TABLE rows (id INTEGER PRIMARY KEY, path BLOB NOT NULL, label INTEGER, class_name BLOB);"
           "CREATE INDEX rows_path ON rows(path);")
_CHUNK = 500  # bound parameters per IN (...) query (SQLite allows 999 or more)


def encode_name(text: str | None) -> bytes | None:
    """A path or name as stored: its exact bytes (a file name that is not UTF-8 keeps them, surrogateescape)."""
    return None if text is None else text.encode("utf-8", "surrogateescape")


def decode_name(data: bytes | str | None) -> str | None:
    if data is None or isinstance(data, str):
        return data
    return data.decode("utf-8", "surrogateescape")


def _row(row: tuple) -> IndexEntry:
    return IndexEntry(int(row[0]), decode_name(row[1]) or "", row[2], decode_name(row[3]))


def as_row(e: IndexEntry) -> tuple:
    """``e`` as the values of a row of the table."""
    return (e.id, encode_name(e.path), e.label, encode_name(e.class_name))


@dataclass(frozen=True)
class IndexEntry:
    """One indexed image: its id, its path, its label (``None`` when unknown) and its class name (the class
    folder's name, or the table's label value when it is not an integer; ``None`` when unknown)."""

    id: int
    path: str
    label: int | None = None
    class_name: str | None = None

    @classmethod
    def from_record(cls, image_id: int, record: Record, classes: Sequence[str] | None = None) -> IndexEntry:
        """The entry of ``record`` under ``image_id`` (a negative label, "unknown" in a table, is ``None``); its
        class name from ``classes`` (label order) or the record's own."""
        label = record.label
        label = None if label is None or int(label) < 0 else int(label)
        name = record.class_name
        if name is None and label is not None and classes and label < len(classes):
            name = classes[label]
        return cls(int(image_id), record.path, label, name)


def drop_stale_rollback_journal(path: Path) -> None:
    """Remove the SQLite rollback journal left beside ``path`` (``NAME-journal``) before a new database takes that
    name: SQLite would take it as a commit a crash left half done and play it into the new file."""
    path.with_name(path.name + "-journal").unlink(missing_ok=True)


def _fresh_database_file(path: Path) -> None:
    """An empty file at ``path`` for a new database, replacing a leftover of an interrupted write (and its SQLite
    journal), created with the umask's mode (SQLite would create it 0644); SQLite takes an empty file as new."""
    path.unlink(missing_ok=True)
    drop_stale_rollback_journal(path)
    create_empty(path)


def write_rows(path: Path, rows: Iterable[IndexEntry]) -> None:
    """Write a new rows file at ``path`` (replacing a leftover of an interrupted write), fsynced."""
    _fresh_database_file(path)
    db = sqlite3.connect(path)
    try:
        db.executescript(_SCHEMA)
        with db:
            db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)", map(as_row, rows))
    finally:
        db.close()
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


class RowsFile:
    """A generation's rows, read-only (``rows.sqlite``), or an empty in-memory table for an index without a folder
    or a legacy one (``metadata.jsonl`` rows filled in by :meth:`from_entries`). Safe to share between threads."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path is None:
            self._db = sqlite3.connect(":memory:", check_same_thread=False)
            self._db.executescript(_SCHEMA)
        else:
            if not path.is_file():
                raise IndexFormatError(f"{path} is missing (an interrupted build? rerun it)")
            uri = f"file:{quote(str(path))}?mode=ro&immutable=1"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            try:
                self._db.execute("SELECT id, path, label, class_name FROM rows LIMIT 1").fetchall()
            except sqlite3.DatabaseError as exc:
                self._db.close()
                raise IndexFormatError(f"{path} is not a rows database ({exc}): a damaged copy? rebuild the index "
                                       "(vitrieval index) or copy it again") from None

    @classmethod
    def from_entries(cls, entries: Iterable[IndexEntry]) -> RowsFile:
        """An in-memory table of ``entries`` (an index built without a folder, or a version-2 folder's rows)."""
        rows = cls(None)
        with rows._db:
            rows._db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)", map(as_row, entries))
        return rows

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as exc:
                raise IndexFormatError(f"{self.path or 'the rows table'}: {exc}: a damaged copy? rebuild the index "
                                       "or copy it again") from None

    def count(self) -> int:
        return int(self._query("SELECT count(*) FROM rows")[0][0])

    def max_id(self) -> int:
        """The largest id (-1 when empty)."""
        found = self._query("SELECT max(id) FROM rows")[0][0]
        return -1 if found is None else int(found)

    def by_ids(self, ids: Sequence[int]) -> dict[int, IndexEntry]:
        out: dict[int, IndexEntry] = {}
        keys = [int(i) for i in ids]
        for s in range(0, len(keys), _CHUNK):
            part = keys[s:s + _CHUNK]
            marks = ",".join("?" * len(part))
            for row in self._query(f"SELECT id, path, label, class_name FROM rows WHERE id IN ({marks})", part):
                out[int(row[0])] = _row(row)
        return out

    def ids_of_paths(self, paths: Sequence[str]) -> dict[str, int]:
        """``path -> id`` for those of ``paths`` that are held."""
        out: dict[str, int] = {}
        for s in range(0, len(paths), _CHUNK):
            part = [encode_name(p) for p in paths[s:s + _CHUNK]]
            marks = ",".join("?" * len(part))
            out.update((decode_name(row[0]), int(row[1])) for row in
                       self._query(f"SELECT path, id FROM rows WHERE path IN ({marks})", part))
        return out

    def __iter__(self) -> Iterator[IndexEntry]:
        """Every row in id order, page by page."""
        last = -(2 ** 63)
        while True:
            page = self._query("SELECT id, path, label, class_name FROM rows WHERE id > ? ORDER BY id LIMIT 10000",
                               (last,))
            if not page:
                return
            yield from map(_row, page)
            last = int(page[-1][0])

    def copy_to(self, path: Path) -> None:
        """Copy the whole table to a new file ``path`` (SQLite's backup), fsynced."""
        _fresh_database_file(path)
        target = sqlite3.connect(path)
        try:
            with self._lock:
                self._db.backup(target)
        finally:
            target.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()
