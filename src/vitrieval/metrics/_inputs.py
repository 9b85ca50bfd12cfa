"""Validation shared by the label-based metrics (Recall@K, MAP@R): shapes, integer labels, the list of K."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def as_labels(name: str, labels: ArrayLike | Iterable[int], n: int) -> np.ndarray:
    """``labels`` as a 1-D int64 array of length ``n``; float or boolean labels are refused, never rounded."""
    arr = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer labels, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} labels for {n} descriptors")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype} (cast them explicitly)")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds values that do not fit in int64")
    return arr.astype(np.int64, copy=False)


def n_rows(name: str, x: ArrayLike) -> int:
    shape = tuple(x.shape) if isinstance(x, torch.Tensor) else np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D array (n x d), got shape {shape}")
    return int(shape[0])


@dataclass(frozen=True)
class Retrieval:
    """Validated query/gallery description: ``gallery is None`` means leave-one-out over the queries; ``paired``
    is leave-one-out with other query vectors (query ``i`` is gallery item ``i``, e.g. a query-expanded copy)."""

    queries: ArrayLike
    query_labels: np.ndarray
    gallery: ArrayLike | None
    gallery_labels: np.ndarray  # the query labels in leave-one-out mode
    paired: bool = False

    @property
    def leave_one_out(self) -> bool:
        return self.gallery is None or self.paired

    @property
    def n_candidates(self) -> int:
        """Number of items a query can retrieve: ``n - 1`` in leave-one-out, else the gallery size."""
        return len(self.gallery_labels) - 1 if self.leave_one_out else len(self.gallery_labels)


def retrieval_inputs(
    queries: ArrayLike,
    query_labels: ArrayLike | Iterable[int],
    gallery: ArrayLike | None,
    gallery_labels: ArrayLike | Iterable[int] | None,
    exclude_self: bool = False,
) -> Retrieval:
    n_q = n_rows("queries", queries)
    if n_q == 0:
        raise ValueError("there are no queries")
    q_labels = as_labels("query_labels", query_labels, n_q)
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("pass both gallery and gallery_labels, or neither (leave-one-out over the queries)")
    if gallery is None:
        if n_q < 2:
            raise ValueError("leave-one-out needs at least 2 queries")
        return Retrieval(queries, q_labels, None, q_labels)
    n_g = n_rows("gallery", gallery)
    if n_g == 0:
        raise ValueError("the gallery is empty")
    g_labels = as_labels("gallery_labels", gallery_labels, n_g)
    if exclude_self:
        if n_g != n_q or not np.array_equal(q_labels, g_labels) or n_q < 2:
            raise ValueError("exclude_self needs query i to be gallery item i: as many queries as gallery items "
                             "(at least 2), with the same labels")
        return Retrieval(queries, q_labels, gallery, g_labels, paired=True)
    return Retrieval(queries, q_labels, gallery, g_labels)


def as_ks(ks: int | Iterable[int], n_candidates: int) -> list[int]:
    """Sorted, de-duplicated list of K; each must be an integer in ``1 .. n_candidates``."""
    values = [ks] if isinstance(ks, (int, np.integer)) else list(ks)
    if not values:
        raise ValueError("ks is empty: give at least one K")
    out = set()
    for k in values:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"K must be an integer, got {k!r}")
        if k < 1:
            raise ValueError(f"K must be >= 1, got K={k}")
        if k > n_candidates:
            raise ValueError(f"K={k} is larger than the number of items a query can retrieve ({n_candidates})")
        out.add(int(k))
    return sorted(out)
