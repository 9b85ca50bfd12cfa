"""Exact k-nearest-neighbour search on inner product, in bounded memory.

Descriptors are expected to be L2-normalised, so the inner product is the cosine similarity:

    s(q, g) = <q, g>,      NN_k(q) = the k gallery items with the largest s(q, .)

Queries are processed in chunks: for a chunk of ``c`` queries only a ``c x n_gallery`` block of scores exists at
any time (float32 matrix product into a reused buffer, then ``torch.topk``), so the full ``n x n`` matrix is never
built. The chunk size is either given or derived from a memory budget (:func:`chunk_size_for_budget`).

The product is numpy's ``matmul`` (OpenBLAS sgemm) rather than ``torch.mm``: on the 2-core AMD EPYC machine
used for ``benchmarks/eval_knn.py`` it took about 0.64 s of CPU for a 1024 x 60,502 x 384 block against about
1.0 s for ``torch.mm`` (MKL) with the same preallocated output. The selection and everything after it is torch.

Ordering is deterministic: neighbours are sorted by decreasing score and **ties are broken by the lower gallery
index**. ``torch.topk`` gives no guarantee on ties, so it is asked for ``k + 1`` neighbours and each chunk is
checked:

* a row whose ``(k+1)``-th score equals its k-th score has a tie straddling the cut ("split tie"): it is
  recomputed with a stable sort of the whole row (``torch.sort(-row, stable=True)``), which keeps the lowest
  indices among the tied items;
* a row with equal scores inside its top k is reordered by a stable sort on the gallery index followed by a
  stable sort on the decreasing score.

Both cases only touch the affected rows, so on real-valued descriptors (where exact ties are rare) they cost
nothing. Results are independent of the chunk size as long as the matrix product itself is (it is for exactly
representable inputs; for arbitrary floats BLAS may round a score differently in the last bit with a different
block shape).

With ``exclude_self=True`` query ``i`` is gallery item ``i`` (leave-one-out): the score ``s(q_i, g_i)`` is set
to ``-inf`` before the selection, so an item never retrieves itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "KnnChunk",
    "ScoreChunk",
    "chunk_size_for_budget",
    "exact_knn",
    "iter_knn_chunks",
    "iter_score_chunks",
    "select_topk",
]

#: Default memory budget (bytes) for the per-chunk working set of :func:`iter_knn_chunks`.
DEFAULT_MEMORY_BUDGET = 256 * 2**20

# Bytes per (query, gallery) score entry in a chunk: the float32 score, plus margin for temporaries of the same
# shape (torch.topk's scratch, the stable sort of the rare rows with a tie at the cut).
_BYTES_PER_SCORE = 8
# Bytes per (query, neighbour) entry of the result: float32 score + int64 index, sorted copies included.
_BYTES_PER_NEIGHBOUR = 24


class KnnChunk(NamedTuple):
    """Neighbours of the queries ``start .. stop - 1``: ``scores`` and ``indices`` are ``(stop - start) x k``."""

    start: int
    stop: int
    scores: torch.Tensor
    indices: torch.Tensor


def chunk_size_for_budget(n_gallery: int, k: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Number of queries per chunk so that a chunk's working set fits in ``memory_budget`` bytes.

    ``rows = max(1, memory_budget // (n_gallery * 8 + k * 24))``: 8 bytes per score entry (the float32 score and
    temporaries of the same shape) and 24 bytes per kept neighbour (float32 score, int64 index, sorted copies).
    """
    if n_gallery < 1:
        raise ValueError(f"n_gallery must be >= 1, got {n_gallery}")
    if memory_budget < 1:
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget}")
    per_row = n_gallery * _BYTES_PER_SCORE + k * _BYTES_PER_NEIGHBOUR
    return max(1, int(memory_budget) // per_row)


def _as_float32_matrix(name: str, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        with warnings.catch_warnings():  # read-only arrays (np.load(mmap_mode="r")) are only read here
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("=")))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n x d), got shape {tuple(t.shape)}")
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    t = t.to(torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _check_k(k: int, n_gallery: int, exclude_self: bool) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer, got {k!r}")
    k = int(k)
    available = n_gallery - 1 if exclude_self else n_gallery
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if k > available:
        what = "gallery items other than the query itself" if exclude_self else "gallery items"
        raise ValueError(f"k={k} is larger than the number of {what} ({available})")
    return k


def select_topk(sims: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of each row of ``sims`` by decreasing score, ties by lower column index: ``(values, indices)``.

        indices[i] = argsort_stable(-sims[i])[:k],   values[i] = sims[i, indices[i]]

    ``torch.topk`` is asked for ``k + 1`` columns (when there are that many): if the ``(k+1)``-th score equals
    the ``k``-th, a tie straddles the cut and that row is redone with a stable sort of the whole row.
    """
    n_cols = sims.shape[1]
    kk = min(k + 1, n_cols)
    vals, idx = torch.topk(sims, kk, dim=1, largest=True, sorted=True)
    if kk > k:
        split = vals[:, k] == vals[:, k - 1]
        vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
        if bool(split.any()):
            rows = split.nonzero().flatten()
            order = torch.sort(-sims[rows], dim=1, stable=True).indices[:, :k]
            idx[rows] = order
            vals[rows] = torch.gather(sims[rows], 1, order)
    # Equal scores inside the top k: order the tied items by index (stable sorts by index, then by score).
    if k > 1:
        tied = (vals[:, 1:] == vals[:, :-1]).any(dim=1)
        if bool(tied.any()):
            rows = tied.nonzero().flatten()
            v, i = vals[rows], idx[rows]
            by_index = torch.sort(i, dim=1, stable=True).indices
            v, i = torch.gather(v, 1, by_index), torch.gather(i, 1, by_index)
            by_score = torch.sort(-v, dim=1, stable=True).indices
            vals[rows] = torch.gather(v, 1, by_score)
            idx[rows] = torch.gather(i, 1, by_score)
    return vals, idx


class ScoreChunk(NamedTuple):
    """Scores of the queries ``start .. stop - 1`` against the whole gallery: ``scores`` is
    ``(stop - start) x n_gallery`` float32 (``-inf`` on the query itself in leave-one-out)."""

    start: int
    stop: int
    scores: torch.Tensor


def _validated_search(
    queries: np.ndarray | torch.Tensor,
    k: int,
    gallery: np.ndarray | torch.Tensor | None,
    exclude_self: bool,
    chunk_size: int | None,
    memory_budget: int,
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    q = _as_float32_matrix("queries", queries)
    g = q if gallery is None else _as_float32_matrix("gallery", gallery)
    if g.shape[1] != q.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the gallery has dimension {g.shape[1]}")
    n_q, n_g = q.shape[0], g.shape[0]
    if n_g == 0:
        raise ValueError("the gallery is empty")
    if exclude_self and n_q > n_g:
        raise ValueError(
            f"exclude_self=True needs query i to be gallery item i, but there are {n_q} queries for {n_g} gallery items"
        )
    k = _check_k(k, n_g, exclude_self)
    if chunk_size is None:
        chunk_size = chunk_size_for_budget(n_g, k, memory_budget)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return q, g, k, int(chunk_size)


def _generate_scores(q: torch.Tensor, g: torch.Tensor, exclude_self: bool, chunk_size: int) -> Iterator[ScoreChunk]:
    n_q, n_g = q.shape[0], g.shape[0]
    q_np, g_np_t = q.numpy(), g.numpy().T
    # One buffer for all chunks: writing into memory that is already mapped avoids page-faulting a fresh
    # chunk-sized block every time.
    buffer = np.empty((min(chunk_size, n_q), n_g), dtype=np.float32)
    for start in range(0, n_q, chunk_size):
        stop = min(start + chunk_size, n_q)
        out = buffer[: stop - start]
        np.matmul(q_np[start:stop], g_np_t, out=out)
        scores = torch.from_numpy(out)
        if exclude_self:
            rows = torch.arange(stop - start)
            scores[rows, rows + start] = -torch.inf
        yield ScoreChunk(start, stop, scores)


def iter_score_chunks(
    queries: np.ndarray | torch.Tensor,
    gallery: np.ndarray | torch.Tensor | None = None,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[ScoreChunk]:
    """Iterate over blocks of the query x gallery score matrix ``S[i, j] = <queries[i], gallery[j]>`` (float32),
    ``chunk_size`` query rows at a time (default: from ``memory_budget`` bytes), never the whole matrix.

    ``exclude_self=True`` sets ``S[i, i] = -inf`` (leave-one-out). The yielded ``scores`` tensor is a view of a
    buffer reused by the next block: copy what must outlive the iteration step.
    """
    q, g, _, chunk_size = _validated_search(queries, 1, gallery, False, chunk_size, memory_budget)
    if exclude_self and q.shape[0] > g.shape[0]:
        raise ValueError("exclude_self=True needs query i to be gallery item i: more queries than gallery items")
    return _generate_scores(q, g, exclude_self, chunk_size)


def iter_knn_chunks(
    queries: np.ndarray | torch.Tensor,
    k: int,
    gallery: np.ndarray | torch.Tensor | None = None,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Iterator[KnnChunk]:
    """Iterate over the exact top-``k`` inner-product neighbours of the queries, one chunk of queries at a time.

    For each query ``q`` the gallery items ``g`` are ranked by decreasing ``s(q, g) = <q, g>`` (float32), ties by
    increasing gallery index, and the first ``k`` are kept. ``gallery=None`` searches the queries themselves.
    ``exclude_self=True`` is leave-one-out: query ``i`` is gallery item ``i`` and never retrieves itself (requires
    ``n_queries <= n_gallery`` and ``k <= n_gallery - 1``).

    ``chunk_size`` queries are processed at a time; by default it is derived from ``memory_budget`` bytes with
    :func:`chunk_size_for_budget`. Arguments are validated at the call; the returned iterator yields
    :class:`KnnChunk` tuples ``(start, stop, scores, indices)`` of torch tensors (float32, int64) covering the
    queries ``start .. stop - 1`` in order.
    """
    q, g, k, chunk_size = _validated_search(queries, k, gallery, exclude_self, chunk_size, memory_budget)
    return _generate_knn(q, g, k, exclude_self, chunk_size)


def _generate_knn(q: torch.Tensor, g: torch.Tensor, k: int, exclude_self: bool, chunk_size: int) -> Iterator[KnnChunk]:
    with torch.inference_mode():
        for chunk in _generate_scores(q, g, exclude_self, chunk_size):
            vals, idx = select_topk(chunk.scores, k)
            yield KnnChunk(chunk.start, chunk.stop, vals, idx)


def exact_knn(
    queries: np.ndarray | torch.Tensor,
    k: int,
    gallery: np.ndarray | torch.Tensor | None = None,
    *,
    exclude_self: bool = False,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-nearest neighbours on inner product (cosine for L2-normalised descriptors).

    ``indices[i, j]`` is the gallery index of the ``(j+1)``-th neighbour of query ``i`` and
    ``scores[i, j] = <queries[i], gallery[indices[i, j]]>`` (float32), sorted by decreasing score, ties by
    increasing gallery index::

        indices[i] = argsort_stable(-<queries[i], gallery>)[:k]

    ``gallery=None`` searches the queries themselves; ``exclude_self=True`` gives leave-one-out neighbours (query
    ``i`` is gallery item ``i`` and is left out of its own list). Memory is bounded by processing ``chunk_size``
    queries at a time (default: derived from ``memory_budget`` bytes); the result itself is
    ``n_queries x k x 12`` bytes. Returns ``(scores, indices)`` as numpy arrays (float32, int64).
    """
    chunks = iter_knn_chunks(
        queries, k, gallery, exclude_self=exclude_self, chunk_size=chunk_size, memory_budget=memory_budget
    )  # validates the arguments before anything is allocated
    scores = np.empty((len(queries), int(k)), dtype=np.float32)
    indices = np.empty(scores.shape, dtype=np.int64)
    for chunk in chunks:
        scores[chunk.start : chunk.stop] = chunk.scores.numpy()
        indices[chunk.start : chunk.stop] = chunk.indices.numpy()
    return scores, indices
