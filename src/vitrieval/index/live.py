"""The write path of an :class:`~vitrieval.index.Index`: journal, apply, compact (one mechanism, two users).

Both ``vitrieval index --add/--remove`` (:meth:`Index.add` / :meth:`Index.remove` with ``save=True``) and the
service's ``POST /images`` / ``DELETE /images/{id}`` (``save=False``, compacted in the background by
:class:`~vitrieval.index.compaction.Compactor`) write the same way:

1. the write becomes a journal :class:`~vitrieval.index.journal.Record` (new ids taken from ``next_id``),
   appended and fsynced (:mod:`vitrieval.index.journal`): from here on it survives SIGKILL;
2. it is applied in memory under the write side of a :class:`~vitrieval.index.rwlock.ReadWriteLock`, so a search
   (the read side, which covers both the faiss search and the metadata lookup of its hits) sees it whole or not at
   all; only then is it acknowledged;
3. compaction (:meth:`LiveWrites.save`) takes a snapshot under the *read* side (a ``faiss.clone_index`` and a copy
   of the metadata: milliseconds, searches carry on meanwhile), writes it as a new generation outside any lock
   (:func:`vitrieval.index.store.write_folder`, ``index.json`` swapped atomically, recording ``journal_seq``), and
   then drops the journal records it holds. Loading replays the records after ``journal_seq``.

Writers are serialised by one mutex (ids are handed out in journal order); a compaction blocks writers only for its
snapshot and the journal rewrite, never readers. Removal uses :mod:`vitrieval.index.removal` (tombstones where
faiss cannot remove, cleared when a compaction rebuilds the index).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitrieval.index.faiss_utils import normalized
from vitrieval.index.journal import SEQ_KEY, JournalWriter, Record, read_journal
from vitrieval.index.query_rerank import stored_vectors
from vitrieval.index.removal import rebuilt_without, removes_in_place, search_live
from vitrieval.index.rwlock import ReadWriteLock
from vitrieval.index.store import IndexEntry, write_folder

if TYPE_CHECKING:
    import faiss

TOMBSTONES_KEY = "tombstones"
"""``index.json`` key: removed ids still in ``index.faiss`` (an index faiss can neither remove from nor rebuild)."""


class LiveWrites:
    """Mixed into :class:`~vitrieval.index.Index`: durable adds and removals, compaction, journal replay, and the
    three vector operations every other method goes through (``_search_vectors`` / ``_add_vectors`` /
    ``_remove_vectors``; the caller holds the lock)."""

    _index: faiss.Index
    _entries: dict[int, IndexEntry]
    _paths: set[str]
    info: dict[str, Any]
    directory: Path | None

    def _init_writes(self) -> None:
        self._tombstones: set[int] = {int(i) for i in self.info.get(TOMBSTONES_KEY, [])}
        self._rw = ReadWriteLock()
        self._write_mutex = threading.RLock()
        self._save_mutex = threading.Lock()
        self._writer: JournalWriter | None = None
        self._writer_users = 0
        self._seq = int(self.info.get(SEQ_KEY, 0))
        self._pending = 0

    # -- the vector operations (a second backend replaces these) -----------------------------------------------
    def _search_vectors(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the top ``k`` live vectors for each row of ``x`` (unit rows); id -1 for none."""
        return search_live(self._index, x, k, self._tombstones)

    def _add_vectors(self, x: np.ndarray, ids: np.ndarray) -> None:
        self._index.add_with_ids(x, ids)

    def _remove_vectors(self, ids: np.ndarray) -> None:
        if removes_in_place(self._index):
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
        else:
            self._tombstones.update(int(i) for i in ids)

    def _stored_vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored unit vectors of ``ids``, in that order (query-time αQE reads its neighbours')."""
        return stored_vectors(self._index, ids)

    def __len__(self) -> int:
        return int(self._index.ntotal) - len(self._tombstones)

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def generation(self) -> int | None:
        """The generation of the folder this index was last loaded from or compacted into."""
        generation = self.info.get("generation")
        return None if generation is None else int(generation)

    @property
    def pending_writes(self) -> int:
        """Journalled writes not yet compacted into a generation."""
        return self._pending

    def has(self, image_id: int) -> bool:
        """Whether an image with this id is in the index."""
        return int(image_id) in self._entries

    # -- writing --------------------------------------------------------------------------------------------
    def hold_writer(self, writer: JournalWriter | None = None) -> None:
        """Take the folder's write lock for this index's lifetime (a service taking writes); else each
        :meth:`add` / :meth:`remove` / :meth:`save` takes it for its own duration. ``writer``: the lock this process
        took already (a build takes it before it embeds anything), handed to this index, which closes it when its
        last user releases it."""
        if self.directory is None:
            raise ValueError("an index without a folder cannot journal writes")
        with self._write_mutex:
            if self._writer is None:
                self._writer = writer if writer is not None else JournalWriter(self.directory)
            elif writer is not None and writer is not self._writer:
                raise ValueError(f"this index holds the write lock of {self.directory} already")
            self._writer_users += 1

    def release_writer(self) -> None:
        with self._write_mutex:
            self._writer_users -= 1
            if not self._writer_users and self._writer is not None:
                self._writer.close()
                self._writer = None

    @contextmanager
    def _writing(self) -> Iterator[JournalWriter]:
        self.hold_writer()
        try:
            assert self._writer is not None
            yield self._writer
        finally:
            self.release_writer()

    def add_descriptors(self, x: np.ndarray, entries: Sequence[tuple[str, int | None]],
                        durable: bool = True) -> np.ndarray:
        """Append unit descriptors ``x`` for ``entries`` (path, label); returns their new ids once the write is
        durable (journalled, with a folder and ``durable``) and visible to searches."""
        x = normalized(np.asarray(x, dtype=np.float32))
        if len(x) != len(entries):
            raise ValueError(f"{len(x)} descriptors for {len(entries)} entries")
        with self._write_mutex:
            first = int(self.info.get("next_id", len(self._entries)))
            ids = np.arange(first, first + len(x), dtype=np.int64)
            self._commit(Record(self._seq + 1, "add", ids, [(str(p), lab) for p, lab in entries], x), durable)
        return ids

    def remove(self, ids: Iterable[int], save: bool = True, durable: bool = True) -> int:
        """Remove the images with these ids (ids not in the index are ignored); returns how many were removed.
        ``save``: compact into a new generation now (else the journal holds the removal until a compaction)."""
        with self._write_mutex:
            present = sorted({int(i) for i in ids} & self._entries.keys())
            if present:
                self._commit(Record(self._seq + 1, "remove", np.asarray(present, dtype=np.int64)), durable)
        if save and present and self.directory is not None:
            self.save()
        return len(present)

    journals = True
    """Whether writes go through the folder's journal (a backend whose store is itself durable says ``False``)."""

    def _commit(self, record: Record, durable: bool) -> None:
        """Journal ``record`` (fsynced), then apply it; the caller holds the write mutex."""
        if durable and self.directory is not None and self.journals:
            with self._writing() as writer:
                writer.append(record)
            self._pending += 1
        self._seq = record.seq
        with self._rw.write():
            self._apply(record)

    def _apply(self, record: Record) -> None:
        """Apply a write to the vectors and the metadata (the caller holds the write lock)."""
        if record.op == "add":
            assert record.vectors is not None
            for i, (path, label) in zip(record.ids.tolist(), record.entries):  # first: a backend stores them too
                self._entries[i] = IndexEntry(i, path, label)
            try:
                self._add_vectors(record.vectors, record.ids)
            except BaseException:
                for i in record.ids.tolist():
                    self._entries.pop(i, None)
                raise
            self._paths.update(path for path, _ in record.entries)
            self.info["next_id"] = max(int(self.info.get("next_id", 0)), int(record.ids.max()) + 1)
        else:
            present = np.asarray([i for i in record.ids.tolist() if i in self._entries], dtype=np.int64)
            if len(present):
                self._remove_vectors(present)
            for i in present.tolist():
                self._paths.discard(self._entries.pop(i).path)
        self.info["count"] = len(self._entries)
        self.info["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def _replay(self) -> bool:
        """Apply the journal records after the loaded generation's ``journal_seq`` (at load). ``False`` (nothing
        applied) when the journal has moved past that generation: another process compacted meanwhile, so the
        caller reads the folder again (never a generation with a gap of writes)."""
        assert self.directory is not None
        records = read_journal(self.directory)[0]
        later = [r for r in records if r.seq > self._seq]
        if later and later[0].seq != self._seq + 1:
            return False
        for record in later:
            if record.seq > self._seq:
                self._apply(record)
                self._seq = record.seq
                self._pending += 1
        return True

    # -- compaction -----------------------------------------------------------------------------------------
    def save(self, directory: str | Path | None = None) -> Path:
        """Compact: write the index into ``directory`` as one atomic update (a new generation of ``index.faiss``
        and ``metadata.jsonl``, then ``index.json`` swapped to it, :func:`vitrieval.index.store.write_folder`),
        then drop the journal records it holds. Searches go on meanwhile; writes wait only for the snapshot."""
        target = Path(directory) if directory is not None else self.directory
        if target is None:
            raise ValueError("Index.save: no directory given and the index was not loaded from one")
        if self.directory is not None and target.resolve() != self.directory.resolve() and self._writer is not None:
            raise ValueError(f"Index.save: this index takes writes into {self.directory}; it cannot move")
        self.directory = target
        with self._save_mutex, self._writing() as writer:
            with self._write_mutex:
                with self._rw.read():
                    snapshot, tombstones = self._vector_snapshot()
                    entries = list(self._entries.values())
                    info = copy.deepcopy(self.info)
                seq = max(self._seq, writer.last_seq)
                taken = self._pending
            rebuilt = rebuilt_without(snapshot, tombstones) if tombstones else None
            if rebuilt is not None:
                snapshot = rebuilt
            info[SEQ_KEY] = seq
            info[TOMBSTONES_KEY] = [] if rebuilt is not None else sorted(tombstones)
            write_folder(target, snapshot, entries, info)
            with self._write_mutex:
                writer.drop_through(seq)
                self._pending -= taken
                self._seq = max(self._seq, seq)
                for key in ("version", "generation", "bytes", SEQ_KEY, TOMBSTONES_KEY):
                    self.info[key] = info[key]
                if rebuilt is not None and self._seq == seq:  # nothing written since the snapshot: swap it in
                    with self._rw.write():
                        self._index, self._tombstones = rebuilt, set()
        return target

    def _vector_snapshot(self) -> tuple[faiss.Index, set[int]]:
        """A copy of the vectors to write and their tombstones (the caller holds the read lock)."""
        import faiss

        return faiss.clone_index(self._index), set(self._tombstones)
