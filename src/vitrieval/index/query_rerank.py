"""Query-time αQE against an index: the ``rerank=`` option of :meth:`vitrieval.index.Index.search`.

For each query ``q`` (a unit row) the index gives its top-``n`` neighbours ``d_1..d_n`` (the index's own search,
so an approximate index gives its approximate neighbours), their stored vectors are read back from the index and
:func:`vitrieval.rerank.alpha_query_expansion` forms

    q' = L2( q + Σ_{i=1..n} max(qᵀd_i, 0)^α · d_i )

which is then searched for the final top-``k`` (the scores returned are cosines to ``q'``). This is two searches
per query. The stored vectors are exact for ``Flat``, ``HNSW`` and refined (``,RFlat``) indexes; for an IVF-PQ
index without refinement they are the PQ reconstructions. An IVF index gets the direct map ``reconstruct`` needs
on first use (:func:`stored_vectors`).

DBA is not a query option: it changes the database vectors (:func:`vitrieval.rerank.database_side_augmentation`,
an O(N²·d) pass over the whole collection), so it is done once when the index is built (``Index.build(...,
dba=...)``, ``vitrieval index --dba n,alpha``) and recorded in ``index.json``; αQE on such an index expands
against the augmented vectors, as in the αQE + DBA rows of ``vitrieval evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from vitrieval.rerank import RerankOptions, alpha_query_expansion, parse_methods

if TYPE_CHECKING:
    import faiss

__all__ = ["expand_queries", "query_rerank_options", "stored_vectors"]

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``(queries, k) -> (scores, ids)``, ids ``-1`` where there are fewer than ``k`` results."""


def query_rerank_options(rerank: str | RerankOptions | None) -> RerankOptions | None:
    """``None`` / ``"none"`` -> no re-ranking; ``"aqe"`` -> αQE with the default ``n`` and ``α``; a
    :class:`~vitrieval.rerank.RerankOptions` with ``methods == ("aqe",)`` as it is. DBA is refused with the way to
    get it (module docstring)."""
    if rerank is None or (isinstance(rerank, str) and rerank.strip().lower() in ("", "none")):
        return None
    options = rerank if isinstance(rerank, RerankOptions) else RerankOptions(methods=parse_methods(str(rerank)))
    if "dba" in options.methods:
        raise ValueError("rerank='dba' is not a query option: database-side augmentation changes the indexed "
                         "vectors; build the index with dba=(n, alpha) (vitrieval index --dba N,ALPHA) and search "
                         "it with rerank='aqe' or without re-ranking")
    return options if options.methods else None


def stored_vectors(faiss_index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """The vectors stored under ``ids`` (an ``IndexIDMap2``); an IVF index gets its direct map first."""
    import faiss

    keys = np.ascontiguousarray(ids, dtype=np.int64)
    try:
        return faiss_index.reconstruct_batch(keys)
    except RuntimeError:
        ivf = faiss.extract_index_ivf(faiss_index)  # raises itself when the index is not an IVF one
        ivf.make_direct_map(True)
        return faiss_index.reconstruct_batch(keys)


def expand_queries(queries: np.ndarray, options: RerankOptions, search: Search,
                   reconstruct: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """αQE of unit ``queries`` (m × d) over each one's top-``options.n`` neighbours from ``search``, whose vectors
    ``reconstruct(ids)`` gives. A query without neighbours (an empty index) comes back unchanged."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out = q.copy()
    if len(q) == 0:
        return out
    _, ids = search(q, int(options.n))
    for i, row in enumerate(ids):
        found = row[row >= 0]
        if len(found):
            out[i] = alpha_query_expansion(q[i:i + 1], reconstruct(found), len(found), options.alpha)[0]
    return out
