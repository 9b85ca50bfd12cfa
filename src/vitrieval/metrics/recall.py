"""Recall@K for category-level retrieval (SOP, CUB, In-Shop).

A query scores 1 if at least one of its K nearest neighbours (inner product, i.e. cosine for L2-normalised
descriptors; ties by lower gallery index) has its label:

    Recall@K = (1 / |Q|) * sum_{q in Q} 1[ exists j in NN_K(q) : y_j = y_q ]

Leave-one-out (SOP, CUB: no gallery given): every item queries all *other* items. Query/gallery (In-Shop): every
query searches the gallery. Every query counts in the mean, including one whose label has no other item
(it scores 0); pytorch-metric-learning's ``precision_at_1`` leaves such "lone" queries out instead.

Only the rank of each query's *first* relevant neighbour matters, so it is found in two exact stages per chunk
of queries (scores from :func:`~vitrieval.metrics.knn.iter_score_chunks`):

1. ``select_topk`` with a small ``k1 = min(max K, 128)``: most queries meet a relevant item there;
2. for the others only, the rank is counted directly: with ``b`` the best score of a relevant item (the lowest
   index among equal ones, ``j_b``), ``rank = #{j : s_j > b} + #{j < j_b : s_j = b}``, the position of that
   item in the stable ranking.

This avoids a ``topk`` with ``k = 1000`` for every query (the dominant cost after the matrix product).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ._inputs import ArrayLike, Retrieval, as_ks, retrieval_inputs
from .knn import DEFAULT_MEMORY_BUDGET, iter_score_chunks, select_topk

__all__ = ["first_relevant_ranks", "recall_at_k"]

#: Neighbours looked at in the first stage; queries without a relevant item among them are ranked by counting.
FIRST_STAGE_K = 128


def _first_relevant_rank(scores: torch.Tensor, gallery_labels: torch.Tensor,
                         query_labels: torch.Tensor) -> torch.Tensor:
    """0-based rank of the first same-label item in each row's stable ranking (``>= n_gallery`` minus the
    excluded items when there is none: a -inf best score counts every finite score as better)."""
    relevant = gallery_labels[None, :] == query_labels[:, None]
    best, best_idx = scores.masked_fill(~relevant, -torch.inf).max(dim=1)  # first (lowest) index among equal maxima
    best = best[:, None]
    better = (scores > best).sum(dim=1, dtype=torch.int64)
    columns = torch.arange(scores.shape[1])[None, :]
    tied_before = ((scores == best) & (columns < best_idx[:, None])).sum(dim=1, dtype=torch.int64)
    return better + tied_before


def first_relevant_ranks(
    queries: ArrayLike,
    query_labels: ArrayLike | Iterable[int],
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | Iterable[int] | None = None,
    max_rank: int | None = None,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    exclude_self: bool = False,
) -> np.ndarray:
    """0-based rank of each query's first same-label neighbour, clamped to ``max_rank``:

        rank(q) = min(max_rank, min{ p : y_{NN(q)[p]} = y_q })      (NN(q): the stable ranking, as in Recall@K)

    ``max_rank`` defaults to the number of items a query can retrieve (``n - 1`` leave-one-out, the gallery size
    otherwise), so a query without any relevant item gets exactly that value. Recall@K is the fraction of
    ranks ``< K``. Arguments as in :func:`recall_at_k`; returns an int64 array, one rank per query.
    """
    r = retrieval_inputs(queries, query_labels, gallery, gallery_labels, exclude_self)
    return _first_ranks(r, r.n_candidates if max_rank is None else int(max_rank), chunk_size, memory_budget)


def _first_ranks(r: Retrieval, max_rank: int, chunk_size: int | None, memory_budget: int) -> np.ndarray:
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    k1 = min(max_rank, FIRST_STAGE_K, r.n_candidates)
    q_labels = torch.from_numpy(r.query_labels)
    g_labels = torch.from_numpy(r.gallery_labels)
    out = np.empty(len(r.query_labels), dtype=np.int64)
    chunks = iter_score_chunks(
        r.queries, r.gallery, exclude_self=r.leave_one_out, chunk_size=chunk_size, memory_budget=memory_budget
    )
    with torch.inference_mode():
        for chunk in chunks:
            labels = q_labels[chunk.start : chunk.stop]
            _, idx = select_topk(chunk.scores, k1)
            match = g_labels[idx] == labels[:, None]
            found = match.any(dim=1)
            first = torch.where(found, match.to(torch.uint8).argmax(dim=1), max_rank)
            if k1 < max_rank:
                missing = (~found).nonzero().flatten()
                # Second stage in groups of rows so that its temporaries stay within about one score block.
                step = max(1, chunk.scores.shape[0] // 4)
                for s in range(0, len(missing), step):
                    rows = missing[s : s + step]
                    first[rows] = _first_relevant_rank(chunk.scores[rows], g_labels, labels[rows]).clamp(max=max_rank)
            out[chunk.start : chunk.stop] = first.clamp(max=max_rank).numpy()
    return out


def recall_at_k(
    queries: ArrayLike,
    query_labels: ArrayLike | Iterable[int],
    ks: int | Iterable[int],
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | Iterable[int] | None = None,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    exclude_self: bool = False,
) -> dict[int, float]:
    """Recall@K for each K in ``ks``: the fraction of queries with a same-label item among their K neighbours.

        Recall@K = (1 / |Q|) * sum_{q in Q} 1[ exists j in NN_K(q) : y_j = y_q ]

    ``NN_K(q)`` are the K items with the largest inner product with ``q`` (descriptors should be L2-normalised),
    ties by lower index, found exactly in chunks of ``chunk_size`` queries (default: from ``memory_budget``
    bytes), so memory stays bounded.

    Without ``gallery`` it is leave-one-out: query ``i`` searches all the other queries. With ``gallery`` (and
    ``gallery_labels``) each query searches the gallery; ``exclude_self=True`` with a gallery is leave-one-out with
    other query vectors (query ``i`` is gallery item ``i``, same labels: a query-expanded copy). Labels are
    integers (cast to int64; float labels are refused). Every K must be at most the number of items a query can
    retrieve (``n - 1`` in leave-one-out, the gallery size otherwise), else ``ValueError`` naming it. Returns
    ``{K: recall}`` sorted by K.
    """
    r = retrieval_inputs(queries, query_labels, gallery, gallery_labels, exclude_self)
    k_list = as_ks(ks, r.n_candidates)
    first = _first_ranks(r, k_list[-1], chunk_size, memory_budget)
    n_q = len(r.query_labels)
    return {k: float(np.count_nonzero(first < k)) / n_q for k in k_list}
