"""The faiss store: the vectors in a faiss index in this process, the rows in the generation's ``rows.sqlite``.

A generation folder holds ``index.faiss`` (an ``IndexIDMap2``, ids = row ids) and ``rows.sqlite``
(:mod:`vitrieval.index.rows`), written together and named together by ``index.json``
(:func:`vitrieval.index.store.write_generation`). In memory the store holds the faiss index, the generation's rows
file open read-only (SQLite pages, not a Python object per image) and a small overlay of the rows written since
(added rows, removed ids), which the journal holds durably and a compaction folds into the next generation.

Removed ids that faiss cannot remove in place (anything but a flat index: :mod:`vitrieval.index.removal`) are
tombstones, filtered *inside* faiss's search by an ID selector in the search parameters
(:func:`vitrieval.index.faiss_utils.selector_params`), so a search asks for exactly ``k``.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitrieval.index.faiss_utils import get_search_params, search_with_exclusions, set_search_params
from vitrieval.index.manifest import Manifest
from vitrieval.index.query_rerank import stored_vectors
from vitrieval.index.removal import rebuilt_without, removes_in_place
from vitrieval.index.rows import ROWS_FILE, IndexEntry, RowsFile, as_row
from vitrieval.index.store import INDEX_FILE, write_generation
from vitrieval.index.vector_store import Found
from vitrieval.io_utils import atomic_path

if TYPE_CHECKING:
    import faiss


@dataclass
class FaissSnapshot:
    """The store at one moment: a clone of the faiss index, its tombstones, the rows file and the overlay."""

    index: faiss.Index
    tombstones: set[int]
    base: RowsFile
    added: dict[int, IndexEntry]
    removed: set[int]
    writes: int
    rebuilt: faiss.Index | None = field(default=None)

    def write(self, directory: Path, manifest: Manifest) -> None:
        import faiss

        manifest.search_params = get_search_params(self.index)
        self.rebuilt = rebuilt_without(self.index, self.tombstones) if self.tombstones else None
        index = self.rebuilt if self.rebuilt is not None else self.index
        manifest.tombstones = [] if self.rebuilt is not None else sorted(self.tombstones)

        def files(data: Path) -> list[str]:
            self.write_rows(data / ROWS_FILE)
            with atomic_path(data / INDEX_FILE) as tmp:
                faiss.write_index(index, str(tmp))
            return [ROWS_FILE, INDEX_FILE]

        write_generation(directory, manifest, files)

    def write_rows(self, path: Path) -> None:
        """The generation's rows: the current file with the overlay applied, in one transaction, fsynced."""
        self.base.copy_to(path)
        db = sqlite3.connect(path)
        try:
            with db:
                gone = sorted(self.removed)
                for s in range(0, len(gone), 500):
                    part = gone[s:s + 500]
                    db.execute(f"DELETE FROM rows WHERE id IN ({','.join('?' * len(part))})", part)
                db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?)", map(as_row, self.added.values()))
        finally:
            db.close()
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())


class FaissStore:
    """Vectors in a faiss ``IndexIDMap2``, rows in SQLite plus an overlay (the module docstring)."""

    journals = True

    def __init__(self, faiss_index: faiss.Index, rows: RowsFile, tombstones: Sequence[int] = (),
                 search_params: dict[str, int] | None = None) -> None:
        self.index = faiss_index
        self._base = rows
        self._tombstones = {int(i) for i in tombstones}
        self._added: dict[int, IndexEntry] = {}
        self._added_paths: dict[str, int] = {}
        self._removed: set[int] = set()
        self._writes = 0
        if search_params:
            set_search_params(faiss_index, **search_params)

    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self._tombstones)

    # -- writes ----------------------------------------------------------------------------------------------
    def add(self, ids: np.ndarray, x: np.ndarray, rows: Sequence[IndexEntry]) -> None:
        self.index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), np.asarray(ids, dtype=np.int64))
        for row in rows:
            self._added[row.id] = row
            self._added_paths[row.path] = row.id
        self._writes += 1

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if removes_in_place(self.index):
            self.index.remove_ids(ids)
        else:
            self._tombstones.update(int(i) for i in ids)
        for i in ids.tolist():
            row = self._added.pop(i, None)
            if row is not None:
                self._added_paths.pop(row.path, None)
            self._removed.add(i)
        self._writes += 1

    # -- reads -----------------------------------------------------------------------------------------------
    def search(self, x: np.ndarray, k: int, with_rows: bool = True) -> Found:
        scores, ids = search_with_exclusions(self.index, x, k, self._tombstones)
        rows = self.rows(ids[ids >= 0].tolist()) if with_rows else {}
        return Found(scores, ids, rows)

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        return stored_vectors(self.index, ids)

    def rows(self, ids: Sequence[int]) -> dict[int, IndexEntry]:
        wanted = [int(i) for i in ids if int(i) not in self._removed]
        out = {i: self._added[i] for i in wanted if i in self._added}
        rest = [i for i in wanted if i not in out]
        if rest:
            out.update(self._base.by_ids(rest))
        return out

    def held_paths(self, paths: Sequence[str]) -> set[str]:
        held = {p for p in paths if p in self._added_paths}
        rest = [p for p in paths if p not in held]
        if rest:
            held.update(p for p, i in self._base.ids_of_paths(rest).items() if i not in self._removed)
        return held

    def all_rows(self) -> Iterator[IndexEntry]:
        for row in self._base:
            if row.id not in self._removed:
                yield row
        yield from sorted(self._added.values(), key=lambda e: e.id)

    def free_from(self, first: int, n: int) -> int:
        return max(int(first), self._base.max_id() + 1, max(self._added, default=-1) + 1)

    def count_rows(self) -> int:
        """The rows held (the generation's file and the overlay): equal to ``len(self)`` in a consistent store."""
        return self._base.count() - len(self._removed - self._added.keys()) + len(self._added)

    def search_params(self) -> dict[str, int]:
        return get_search_params(self.index)

    def set_search_param(self, name: str, value: int) -> dict[str, int]:
        return set_search_params(self.index, **{name: value})

    # -- compaction ------------------------------------------------------------------------------------------
    def snapshot(self) -> FaissSnapshot:
        import faiss

        return FaissSnapshot(faiss.clone_index(self.index), set(self._tombstones), self._base, dict(self._added),
                             set(self._removed), self._writes)

    def installed(self, snapshot: FaissSnapshot, directory: Path) -> None:
        from vitrieval.index.store import generation_dir

        old, self._base = self._base, RowsFile(generation_dir(directory) / ROWS_FILE)
        old.close()
        for i in snapshot.added:
            row = self._added.pop(i, None)
            if row is not None:
                self._added_paths.pop(row.path, None)
        self._removed -= snapshot.removed
        if snapshot.rebuilt is not None and snapshot.writes == self._writes:  # nothing written since: swap it in
            self.index, self._tombstones = snapshot.rebuilt, set()

    def close(self) -> None:
        self._base.close()
