"""The one interface between :class:`~vitrieval.index.Index` and where its vectors and rows live.

Two stores implement it: :class:`~vitrieval.index.faiss_store.FaissStore` (a faiss index in this process, the rows in
``rows.sqlite`` beside it in the generation folder) and :class:`~vitrieval.index.milvus_store.MilvusStore` (a Milvus
collection by URI, the rows as its fields). :class:`~vitrieval.index.Index` knows nothing of either beyond this
protocol: it embeds, journals, allocates ids and names hits; the store adds, removes, searches, hands back vectors
and rows by id, and writes itself at a compaction (:meth:`VectorStore.snapshot` under the read lock, then
:meth:`Snapshot.write` outside any lock, then :meth:`VectorStore.installed` under the write lock).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from vitrieval.index.manifest import Manifest
from vitrieval.index.rows import IndexEntry


@dataclass
class Found:
    """The answer of a search: ``scores`` and ``ids`` (``(m, k)``, id ``-1`` where there are fewer hits) and the
    rows of every id found."""

    scores: np.ndarray
    ids: np.ndarray
    rows: dict[int, IndexEntry]


class Snapshot(Protocol):
    """A store's state at one moment, written at a compaction into a new generation of the folder."""

    def write(self, directory: Path, manifest: Manifest) -> None:
        """Write the data files and then ``index.json`` (``manifest``, updated in place) into ``directory``."""


class VectorStore(Protocol):
    """Vectors under int64 ids with their rows (id, path, label, class name); the caller serialises writes and
    holds the index's readers-writer lock (read side for the reads, write side for :meth:`add` / :meth:`remove`)."""

    journals: bool
    """Whether writes go through the folder's journal (Milvus acknowledges durable writes itself: ``False``)."""

    def __len__(self) -> int: ...

    def add(self, ids: np.ndarray, x: np.ndarray, rows: Sequence[IndexEntry]) -> None:
        """Store unit vectors ``x`` under ``ids`` with their rows (applied whole or, on error, not at all)."""

    def remove(self, ids: np.ndarray) -> None:
        """Remove these (held) ids."""

    def search(self, x: np.ndarray, k: int, with_rows: bool = True) -> Found:
        """The top ``k`` live vectors of each unit row of ``x`` (inner product), with their rows."""

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored unit vectors of ``ids``, in that order."""

    def rows(self, ids: Sequence[int]) -> dict[int, IndexEntry]:
        """The rows of those of ``ids`` that are held."""

    def held_paths(self, paths: Sequence[str]) -> set[str]:
        """Those of ``paths`` that are held."""

    def all_rows(self) -> Iterator[IndexEntry]:
        """Every row, in id order (page by page)."""

    def free_from(self, first: int, n: int) -> int:
        """The first id >= ``first`` from which ``n`` new ids follow every id the store holds or held."""

    def search_params(self) -> dict[str, int]:
        """The search parameters that apply (``nprobe`` / ``ef_search`` / ``k_factor``) and their values."""

    def set_search_param(self, name: str, value: int) -> dict[str, int]:
        """Set one (``AttributeError`` when it does not apply); returns them all."""

    def snapshot(self) -> Snapshot:
        """The state to write at a compaction (taken under the read lock, cheap)."""

    def installed(self, snapshot: Snapshot, directory: Path) -> None:
        """``snapshot`` is now ``directory``'s generation (called under the write lock)."""

    def close(self) -> None: ...
