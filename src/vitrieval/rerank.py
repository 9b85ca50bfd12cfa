"""Re-ranking by descriptor expansion: α-weighted query expansion (αQE) and database-side augmentation (DBA).

Both replace a unit descriptor by the L2-normalised, similarity-weighted sum of itself and its top-n database
neighbours (inner product = cosine on unit descriptors), then the search is run again with the new vectors:

    αQE:  q' = L2( q + Σ_{i=1..n} max(qᵀd_i, 0)^α · d_i ),   d_1..d_n = the n database vectors nearest to q
    DBA:  d' = L2( d + Σ_{i=1..n} max(dᵀd_i, 0)^α · d_i ),   d_1..d_n = the n nearest *other* database vectors

(Radenović, Tolias & Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018, §"α-weighted
query expansion"; DBA after Arandjelović & Zisserman 2012 / Gordo et al. 2017, with the same α-weighting as in
the revisited Oxford / Paris evaluations). ``α = 0`` weighs every neighbour by 1 (numpy's ``0^0 = 1``): the plain
average query expansion of Chum et al. (2007), negative similarities included. "Other" in DBA means other
*rows*: a duplicate of ``d`` stored at another index is a neighbour like any other vector, only row ``i`` itself
is left out of its own list. Neighbours are ranked by decreasing score, ties by lower database index
(:mod:`vitrieval.metrics.knn`). ``n`` larger than what is available is clamped (all database vectors for αQE,
all other ones for DBA).

Memory: the neighbours come from :func:`vitrieval.metrics.knn.iter_knn_chunks` (exact search, ``chunk_size``
rows at a time or a ``memory_budget``), so no N × N matrix is ever built; each chunk is aggregated at once
(``chunk × n × d`` gathered neighbours). The result is ``N × d`` float32.

Defaults (:data:`DEFAULT_N`, :data:`DEFAULT_ALPHA`): α = 3 is the exponent of Radenović et al. (TPAMI 2018);
n = 2 is a small neighbourhood (the best n depends on the data: the number of relevant images per query bounds
it). Neither value was checked against the papers' text here; dirtorch (``test_dir.py``, ``--aqe k alpha``,
``--adba k alpha``) takes both as required arguments, with the same weighting ``sim^alpha`` and the row itself
excluded from its own DBA neighbours. Both are options of ``vitrieval evaluate``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: :data:`vitrieval.metrics.knn.DEFAULT_MEMORY_BUDGET` (torch is imported only when vectors are expanded).
DEFAULT_MEMORY_BUDGET = 256 * 2**20

__all__ = ["DEFAULT_ALPHA", "DEFAULT_N", "METHODS", "RerankOptions", "alpha_query_expansion",
           "database_side_augmentation", "parse_methods"]

#: Neighbours aggregated per vector.
DEFAULT_N = 2
#: Exponent on the (clipped) similarity that weighs each neighbour.
DEFAULT_ALPHA = 3.0
#: Re-ranking methods ``vitrieval evaluate --rerank`` accepts.
METHODS = ("aqe", "dba")


def parse_methods(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"aqe,dba"`` (or an iterable of names) -> the distinct methods in the order :data:`METHODS` lists them."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = sorted(set(names) - set(METHODS))
    if unknown or not names:
        raise ValueError(f"re-ranking methods must be among {', '.join(METHODS)}, got {text!r}")
    return tuple(m for m in METHODS if m in names)


@dataclass(frozen=True)
class RerankOptions:
    """``methods`` among ``("aqe", "dba")`` (empty: no re-ranking), ``n`` neighbours, exponent ``alpha``.

    The one set of re-ranking settings: ``vitrieval evaluate`` reports its :meth:`variants`;
    :meth:`vitrieval.index.Index.search` expands its queries with αQE, an index build augments its database with
    DBA.
    """

    methods: tuple[str, ...] = ()
    n: int = DEFAULT_N
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        if self.methods:
            object.__setattr__(self, "methods", parse_methods(self.methods))
        if isinstance(self.n, bool) or int(self.n) != self.n or self.n < 1:
            raise ValueError(f"the re-ranking neighbour count must be a positive integer, got {self.n}")
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"the re-ranking alpha must be >= 0, got {self.alpha}")

    def variants(self) -> list[tuple[str, bool, bool]]:
        """``(name, use αQE, use DBA)`` of each variant ``vitrieval evaluate`` reports:
        aqe -> "aqe"; aqe,dba -> "aqe" and "aqe+dba"; dba -> "dba"."""
        if not self.methods:
            return []
        if self.methods == ("dba",):
            return [("dba", False, True)]
        out = [("aqe", True, False)]
        if "dba" in self.methods:
            out.append(("aqe+dba", True, True))
        return out

    def record(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "n": int(self.n), "alpha": float(self.alpha)}


def _check(n: int, alpha: float) -> tuple[int, float]:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of neighbours n must be a positive integer, got {n!r}")
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    return int(n), alpha


def _as_rows(name: str, x: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n x d), got shape {arr.shape}")
    return arr


def _expand(vectors: np.ndarray, database: np.ndarray, n: int, alpha: float, exclude_self: bool,
            chunk_size: int | None, memory_budget: int) -> np.ndarray:
    """``L2(v + Σ max(s_i, 0)^α d_i)`` for every row ``v`` of ``vectors`` over its top-``n`` database rows."""
    import torch

    from vitrieval.metrics.knn import iter_knn_chunks

    db = torch.from_numpy(database)
    out = np.empty_like(vectors)
    chunks = iter_knn_chunks(vectors, n, database, exclude_self=exclude_self, chunk_size=chunk_size,
                             memory_budget=memory_budget)
    with torch.inference_mode():
        for chunk in chunks:
            weights = chunk.scores.clamp(min=0.0).double().pow(alpha).float()  # (c, n); 0^0 = 1
            neighbours = db[chunk.indices]  # (c, n, d)
            agg = torch.from_numpy(vectors[chunk.start:chunk.stop]) + torch.einsum("cn,cnd->cd", weights, neighbours)
            out[chunk.start:chunk.stop] = torch.nn.functional.normalize(agg, dim=1).numpy()
    return out


def alpha_query_expansion(queries: np.ndarray, database: np.ndarray, n: int = DEFAULT_N,
                          alpha: float = DEFAULT_ALPHA, *, exclude_self: bool = False, chunk_size: int | None = None,
                          memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """αQE: ``q' = L2(q + Σ_{i=1..n} max(qᵀd_i, 0)^α · d_i)`` over the top-``n`` database rows of each query.

    ``queries`` (m × d) and ``database`` (N × d) are unit rows; ``n`` is clamped to the number of database rows
    (to N − 1 with ``exclude_self``, leave-one-out: query ``i`` is database row ``i`` and is not its own
    neighbour). Returns m × d float32 unit rows.
    """
    n, alpha = _check(n, alpha)
    q, db = _as_rows("queries", queries), _as_rows("database", database)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"queries are {q.shape[1]}-d but the database is {db.shape[1]}-d")
    available = db.shape[0] - 1 if exclude_self else db.shape[0]
    if available < 1:
        return q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    return _expand(q, db, min(n, available), alpha, exclude_self, chunk_size, memory_budget)


def database_side_augmentation(database: np.ndarray, n: int = DEFAULT_N, alpha: float = DEFAULT_ALPHA, *,
                               chunk_size: int | None = None,
                               memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """DBA: ``d' = L2(d + Σ_{i=1..n} max(dᵀd_i, 0)^α · d_i)`` over each row's top-``n`` *other* database rows.

    Row ``i`` is never its own neighbour (duplicates at other rows are); ``n`` is clamped to N − 1 (a one-row
    database comes back normalised, unchanged). The neighbours are those of the original database (one pass,
    not iterated). Returns N × d float32 unit rows.
    """
    n, alpha = _check(n, alpha)
    db = _as_rows("database", database)
    if db.shape[0] < 2:
        return db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    return _expand(db, db, min(n, db.shape[0] - 1), alpha, True, chunk_size, memory_budget)
