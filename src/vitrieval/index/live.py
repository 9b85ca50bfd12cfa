"""The write path of an :class:`~vitrieval.index.Index`: journal, apply, compact (one mechanism, two users).

Both ``vitrieval index --add/--remove`` (:meth:`Index.add` / :meth:`Index.remove` with ``save=True``) and the
service's ``POST /images`` / ``DELETE /images/{id}`` (``save=False``, compacted in the background by
:class:`~vitrieval.index.compaction.Compactor`) write the same way:

1. the write becomes a journal :class:`~vitrieval.index.journal.Write` (new ids from the store: never below its
   largest id + 1 nor ``next_id``), committed to ``journal.sqlite`` (:mod:`vitrieval.index.journal`), which gives
   it the next sequence number: from here on it survives SIGKILL; a commit that fails (a full disk) leaves the
   journal as it was and the write is answered with the error;
2. it is applied in memory under the write side of a :class:`~vitrieval.index.rwlock.ReadWriteLock`, so a search
   (the read side, which covers both the faiss search and the metadata lookup of its hits) sees it whole or not at
   all; only then is it acknowledged;
3. compaction (:meth:`LiveWrites.save`) takes the store's snapshot under the *read* side (for faiss a
   ``faiss.clone_index`` and the small overlay of rows written since the generation: milliseconds, searches carry
   on meanwhile), writes it as a new generation outside any lock (:func:`vitrieval.index.store.write_generation`,
   ``index.json`` swapped atomically, recording ``journal_seq``), and then drops the journal's writes it holds.
   Loading replays the writes after ``journal_seq``, checked to be every write the folder acknowledged since
   (:meth:`~vitrieval.index.journal.JournalState.after`). A Milvus store acknowledges its writes durably itself: no
   journal, and a compaction writes the manifest.

The index's journal position (``_seq``, the last write it has applied) counts in the journal of the folder it was
loaded from or last saved into; taking that folder's write lock checks that nobody wrote it meanwhile.

Writers are serialised by one mutex (ids are handed out in journal order); a compaction blocks writers only for its
snapshot and the journal rewrite, never readers. Removal uses :mod:`vitrieval.index.removal` (tombstones where
faiss cannot remove, filtered inside faiss's search and cleared when a compaction rebuilds the index).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitrieval.index.faiss_utils import normalized
from vitrieval.index.journal import JOURNAL_FILE, JOURNAL_FIX, JournalError, JournalWriter, Write, read_journal
from vitrieval.index.rows import IndexEntry
from vitrieval.index.rwlock import ReadWriteLock

if TYPE_CHECKING:
    from vitrieval.distributed import DistContext
    from vitrieval.index.manifest import Manifest
    from vitrieval.index.vector_store import VectorStore

RowSpec = tuple[str, int | None] | tuple[str, int | None, str | None]
"""A new row: ``(path, label)`` or ``(path, label, class_name)``."""


class LiveWrites:
    """Mixed into :class:`~vitrieval.index.Index`: durable adds and removals, compaction and journal replay, over
    its :class:`~vitrieval.index.vector_store.VectorStore` (the caller of a store method holds the lock)."""

    store: VectorStore
    manifest: Manifest
    directory: Path | None

    def _init_writes(self) -> None:
        self._rw = ReadWriteLock()
        self._write_mutex = threading.RLock()
        self._save_mutex = threading.Lock()
        self._writer: JournalWriter | None = None
        self._writer_users = 0
        self._seq = int(self.manifest.journal_seq)
        self._journal_dir: Path | None = None  # the folder whose journal ``_seq`` counts in (None: none yet)
        self._pending = 0

    def __len__(self) -> int:
        return len(self.store)

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def generation(self) -> int | None:
        """The generation of the folder this index was last loaded from or compacted into."""
        return self.manifest.generation

    @property
    def pending_writes(self) -> int:
        """Journalled writes not yet compacted into a generation."""
        return self._pending

    def has(self, image_id: int) -> bool:
        """Whether an image with this id is in the index."""
        with self._rw.read():
            return bool(self.store.rows([int(image_id)]))

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
                if writer is None:
                    writer = JournalWriter(self.directory)
                    if self._journals_into(self.directory) and writer.last_seq != self._seq:
                        writer.close()
                        raise JournalError(f"{self.directory} was written by another process since this index was "
                                           f"loaded (its journal is at write {writer.last_seq}, this index at "
                                           f"{self._seq}): load it again")
                self._writer = writer
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

    @contextmanager
    def _writer_held(self, ctx: DistContext) -> Iterator[None]:
        """The folder's write lock held by rank 0 (the folder's one writer) for a whole :meth:`add`, so that a
        folder another process writes is refused before anything is embedded; rank 0's refusal is raised on every
        rank."""
        from vitrieval.distributed import RankZero

        held, failure = False, None
        if ctx.is_main and self.directory is not None and self.store.journals:
            try:
                self.hold_writer()
                held = True
            except Exception as exc:  # noqa: BLE001 - re-raised below, on every rank
                failure = exc
        with RankZero(ctx) as rank0:
            rank0.share(None, failure)
        try:
            yield
        finally:
            if held:
                self.release_writer()

    def _stored_path(self, path: str) -> str:
        """How a row names ``path``: a file inside the index folder relative to it (``@index/uploads/x.png``), so
        that a copied folder is complete; any other path as it is."""
        from vitrieval.index.store import UPLOAD_PREFIX

        if self.directory is not None:
            try:
                inside = Path(path).resolve().relative_to(self.directory.resolve())
            except ValueError:
                return path
            return UPLOAD_PREFIX + inside.as_posix()
        return path

    def add_descriptors(self, x: np.ndarray, entries: Sequence[RowSpec], durable: bool = True) -> np.ndarray:
        """Append unit descriptors ``x`` for ``entries`` (path, label[, class name]); returns their new ids once
        the write is durable (journalled, with a folder and ``durable``) and visible to searches. Ids come from the
        store: never below its largest id + 1, whatever ``next_id`` says."""
        x = normalized(np.asarray(x, dtype=np.float32))
        if len(x) != len(entries):
            raise ValueError(f"{len(x)} descriptors for {len(entries)} entries")
        rows = [(self._stored_path(str(e[0])), e[1], e[2] if len(e) > 2 else None) for e in entries]
        with self._write_mutex:
            with self._rw.read():
                first = self.store.free_from(int(self.manifest.next_id), len(x))
            ids = np.arange(first, first + len(x), dtype=np.int64)
            self._commit(Write("add", ids, rows, x), durable)
        return ids

    def remove(self, ids: Iterable[int], save: bool = True, durable: bool = True) -> int:
        """Remove the images with these ids (ids not in the index are ignored); returns how many were removed.
        ``save``: compact into a new generation now (else the journal holds the removal until a compaction)."""
        with self._write_mutex:
            with self._rw.read():
                present = sorted(self.store.rows(sorted({int(i) for i in ids})))
            if present:
                self._commit(Write("remove", np.asarray(present, dtype=np.int64)), durable)
        if save and present and self.directory is not None:
            self.save()
        return len(present)

    def _commit(self, write: Write, durable: bool) -> None:
        """Journal ``write`` (committed, durable), then apply it; the caller holds the write mutex."""
        if durable and self.directory is not None and self.store.journals:
            with self._writing() as writer:
                self._seq = writer.append(write)
            self._journal_dir = self.directory
            self._pending += 1
        elif durable and self.directory is not None:
            self._pending += 1  # durable in the store itself; the manifest's count follows at the next save
        with self._rw.write():
            self._apply(write)

    def _journals_into(self, directory: Path) -> bool:
        """Whether ``_seq`` counts in ``directory``'s journal (this index was loaded from it or saved into it)."""
        return self._journal_dir is not None and self._journal_dir.resolve() == directory.resolve()

    def _apply(self, record: Write) -> None:
        """Apply a write to the store (the caller holds the write lock)."""
        if record.op == "add":
            assert record.vectors is not None
            rows = [IndexEntry(i, *e) for i, e in zip(record.ids.tolist(), record.entries)]
            self.store.add(record.ids, record.vectors, rows)
            self.manifest.next_id = max(int(self.manifest.next_id), int(record.ids.max()) + 1)
        else:
            present = np.asarray(sorted(self.store.rows(record.ids.tolist())), dtype=np.int64)
            if len(present):
                self.store.remove(present)
        self.manifest.count = len(self.store)
        self.manifest.updated = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def _replay(self) -> None:
        """Apply the journal's writes after the loaded generation's ``journal_seq`` (at load), checked to be every
        write the folder acknowledged since. :class:`~vitrieval.index.journal.JournalGap` (nothing applied) when
        writes are missing: another process compacted meanwhile (the caller reads the folder again), or damage."""
        assert self.directory is not None
        if not self.store.journals:
            return
        state = read_journal(self.directory)
        if state.path is None and self.manifest.version >= 4:
            raise JournalError(f"{self.directory / JOURNAL_FILE} is missing: the writes acknowledged since "
                               f"generation {self.generation} are in it; {JOURNAL_FIX}")
        for write in state.after(self._seq, self.directory):
            self._apply(write)
            self._seq = write.seq
            self._pending += 1
        self._journal_dir = self.directory

    # -- compaction -----------------------------------------------------------------------------------------
    def save(self, directory: str | Path | None = None) -> Path:
        """Compact: write the store into ``directory`` as one atomic update (a new generation, then ``index.json``
        swapped to it: :func:`vitrieval.index.store.write_generation`; for Milvus the manifest alone), then drop the
        journal records it holds. Searches go on meanwhile; writes wait only for the snapshot."""
        target = Path(directory) if directory is not None else self.directory
        if target is None:
            raise ValueError("Index.save: no directory given and the index was not loaded from one")
        if self.directory is not None and target.resolve() != self.directory.resolve() and self._writer is not None:
            raise ValueError(f"Index.save: this index takes writes into {self.directory}; it cannot move")
        self.directory = target
        with self._save_mutex, self._writing() as writer:
            if self.store.journals:
                writer.prepare()  # the journal exists before a generation of this format names the folder
            with self._write_mutex:
                with self._rw.read():
                    snapshot = self.store.snapshot()
                    manifest = self.manifest.model_copy(deep=True)
                # every write the folder acknowledged: this index applied them (hold_writer checked), or it is
                # another index saved over the folder, whose pending writes it replaces
                seq = writer.last_seq
                taken = self._pending
            manifest.journal_seq = seq
            snapshot.write(target, manifest)
            with self._write_mutex:
                if self.store.journals:
                    writer.drop_through(seq)
                self._seq, self._journal_dir = writer.last_seq, target  # with the writes made meanwhile
                for key in ("version", "generation", "bytes", "journal_seq", "tombstones", "search_params", "milvus"):
                    setattr(self.manifest, key, getattr(manifest, key))
                with self._rw.write():
                    self.store.installed(snapshot, target)
                self._pending -= taken
        return target
