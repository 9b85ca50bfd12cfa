"""Removing vectors from a faiss index: in place where faiss can, else tombstones that a rebuild clears.

Every index is an ``IndexIDMap2`` (ids = metadata ids). ``IndexIDMap2.remove_ids`` is only right over a flat
index: HNSW cannot remove at all, and IVF removes from its lists without renumbering the positions that the id map
translates, so its later answers are wrong (``-1`` ids; pinned by ``tests/test_index_removal.py``). So

- over ``IndexFlat`` a removal is ``remove_ids`` (exact, immediate);
- over anything else a removed id becomes a *tombstone*: :func:`search_live` asks faiss for
  ``k + len(tombstones)`` neighbours and drops the tombstoned ones, so the answer is the top ``k`` of the live
  vectors (the same as after a real removal, for an exact search);
- compaction (:meth:`vitrieval.index.Index.save`) calls :func:`rebuilt_without`: a clone of the index, emptied
  (``reset`` keeps IVF / PQ training) and refilled with the live vectors, read back exactly (``reconstruct``:
  HNSW-Flat, IVF-Flat and ``RFlat`` keep the original vectors). Where faiss cannot give them back exactly
  (PQ without ``RFlat``) the tombstones stay, saved in ``index.json`` (``tombstones``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss

log = logging.getLogger(__name__)


def _inner(index: faiss.Index) -> faiss.Index:
    import faiss

    return faiss.downcast_index(faiss.downcast_index(index).index)


def removes_in_place(index: faiss.Index) -> bool:
    """Whether ``remove_ids`` of this ``IndexIDMap2`` is correct (the index under the id map is flat)."""
    import faiss

    return isinstance(_inner(index), faiss.IndexFlat)


def exact_vectors(index: faiss.Index) -> np.ndarray | None:
    """The stored vectors of the ``IndexIDMap2`` ``index`` in storage order, or ``None`` when faiss keeps only
    approximations of them (codes) and cannot give them back exactly."""
    import faiss

    inner = _inner(index)
    if isinstance(inner, faiss.IndexRefine):
        source = faiss.downcast_index(inner.refine_index)
        if not isinstance(source, faiss.IndexFlat):
            return None
    elif isinstance(inner, (faiss.IndexFlat, faiss.IndexHNSWFlat)):
        source = inner
    elif isinstance(inner, faiss.IndexIVFFlat):
        inner.make_direct_map()
        source = inner
    else:
        return None
    return source.reconstruct_n(0, int(source.ntotal)).astype(np.float32, copy=False)


def search_live(index: faiss.Index, x: np.ndarray, k: int, tombstones: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) of ``x`` among the vectors of ``index`` whose id is not in ``tombstones``; rows
    with fewer live neighbours are padded with score ``-inf`` and id ``-1``."""
    if not tombstones:
        return index.search(x, k)
    wanted = int(min(k + len(tombstones), max(int(index.ntotal), 1)))
    scores, ids = index.search(x, wanted)
    out_scores = np.full((len(x), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(x), k), -1, dtype=np.int64)
    dead = np.fromiter(tombstones, dtype=np.int64, count=len(tombstones))
    for row in range(len(x)):
        keep = (ids[row] >= 0) & ~np.isin(ids[row], dead)
        found = ids[row][keep][:k]
        out_ids[row, :len(found)] = found
        out_scores[row, :len(found)] = scores[row][keep][:k]
    return out_scores, out_ids


def rebuilt_without(index: faiss.Index, tombstones: set[int]) -> faiss.Index | None:
    """A copy of the ``IndexIDMap2`` ``index`` without the ``tombstones`` ids (same type, training and search
    parameters), or ``None`` when its vectors cannot be read back exactly (then the tombstones stay)."""
    import faiss

    vectors = exact_vectors(index)
    if vectors is None:
        log.info("the index cannot give its vectors back exactly: %d removed id(s) stay as tombstones",
                 len(tombstones))
        return None
    ids = faiss.vector_to_array(faiss.downcast_index(index).id_map).astype(np.int64)
    live = ~np.isin(ids, np.fromiter(tombstones, dtype=np.int64, count=len(tombstones)))
    fresh = faiss.clone_index(index)
    fresh.reset()
    if live.any():
        fresh.add_with_ids(np.ascontiguousarray(vectors[live]), ids[live])
    return fresh
