"""Retrieval metrics: pure functions on descriptor and label arrays.

- :func:`exact_knn` / :func:`iter_knn_chunks` (``knn``): exact inner-product k-NN in bounded memory, ties by
  lower gallery index.
- :func:`recall_at_k`, :func:`first_relevant_ranks` (``recall``): Recall@K, leave-one-out (SOP, CUB) or
  query/gallery (In-Shop), and the per-query rank of the first correct neighbour it counts.
- :func:`map_at_r` (``map_at_r``): MAP@R of Musgrave et al. (2020).
- :func:`revisited_map`, :func:`revisited_map_from_descriptors`, :func:`compute_ap` (``revisited``): the
  revisited Oxford / Paris protocol (easy / medium / hard mAP and mP@k).
"""

from .knn import exact_knn, iter_knn_chunks
from .map_at_r import map_at_r
from .recall import first_relevant_ranks, recall_at_k
from .revisited import compute_ap, revisited_map, revisited_map_from_descriptors

__all__ = [
    "compute_ap",
    "exact_knn",
    "first_relevant_ranks",
    "iter_knn_chunks",
    "map_at_r",
    "recall_at_k",
    "revisited_map",
    "revisited_map_from_descriptors",
]
