"""MAP@R (Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020).

For a query with R relevant items (items of its label it can retrieve), rank the candidates by inner product and
look at the first R neighbours only:

    AP@R(q) = (1 / R) * sum_{i=1..R} P(i) * rel(i),    P(i) = (1 / i) * sum_{j=1..i} rel(j)

where ``rel(i)`` is 1 if the i-th neighbour has the query's label. MAP@R is the mean of AP@R over the queries
with R >= 1; queries with no relevant item are left out (as pytorch-metric-learning's ``AccuracyCalculator``
``mean_average_precision_at_r`` does, with ``k="max_bin_count"``). The value matches it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ._inputs import ArrayLike, retrieval_inputs
from .knn import DEFAULT_MEMORY_BUDGET, iter_knn_chunks

__all__ = ["map_at_r"]


def _relevant_counts(query_labels: np.ndarray, gallery_labels: np.ndarray, leave_one_out: bool) -> np.ndarray:
    """R for each query: gallery items with its label (minus the query itself in leave-one-out)."""
    uniq, counts = np.unique(gallery_labels, return_counts=True)
    pos = np.searchsorted(uniq, query_labels).clip(max=len(uniq) - 1)
    r = np.where(uniq[pos] == query_labels, counts[pos], 0)
    return r - 1 if leave_one_out else r


def map_at_r(
    queries: ArrayLike,
    query_labels: ArrayLike | Iterable[int],
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | Iterable[int] | None = None,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    exclude_self: bool = False,
) -> float:
    """Mean Average Precision at R over the queries that have at least one relevant item.

        MAP@R = mean_{q : R_q >= 1} (1 / R_q) * sum_{i=1..R_q} P_q(i) * rel_q(i)

    ``R_q`` is the number of items of the query's label it can retrieve, ``rel_q(i)`` is 1 if its i-th nearest
    neighbour (inner product, ties by lower index) shares the label and ``P_q(i)`` is the precision of the first
    i neighbours. Without ``gallery`` it is leave-one-out (``R_q`` excludes the query itself); with ``gallery``
    and ``gallery_labels`` each query searches the gallery (``exclude_self=True``: query ``i`` is gallery item
    ``i``, leave-one-out with other query vectors, e.g. query-expanded ones). The neighbour search is exact and
    chunked (``k`` = the largest ``R_q``; ``chunk_size`` queries at a time, default from ``memory_budget``
    bytes). Labels are integers (cast to int64). Returns ``nan`` when no query has a relevant item.
    """
    r = retrieval_inputs(queries, query_labels, gallery, gallery_labels, exclude_self)
    n_rel = _relevant_counts(r.query_labels, r.gallery_labels, r.leave_one_out)
    valid = n_rel > 0
    if not valid.any():
        return float("nan")
    k = int(n_rel.max())
    q_labels = torch.from_numpy(r.query_labels)
    g_labels = torch.from_numpy(r.gallery_labels)
    n_rel_t = torch.from_numpy(n_rel)
    ranks = torch.arange(1, k + 1, dtype=torch.float64)
    total = 0.0
    chunks = iter_knn_chunks(
        r.queries, k, r.gallery, exclude_self=r.leave_one_out, chunk_size=chunk_size, memory_budget=memory_budget
    )
    for chunk in chunks:
        rr = n_rel_t[chunk.start : chunk.stop]
        rel = g_labels[chunk.indices] == q_labels[chunk.start : chunk.stop, None]
        rel &= torch.arange(k)[None, :] < rr[:, None]  # only the first R_q neighbours count
        precision = torch.cumsum(rel, dim=1, dtype=torch.float64) / ranks
        ap = (precision * rel).sum(dim=1) / rr.clamp(min=1)
        total += float(ap[rr > 0].sum())
    return total / int(valid.sum())
