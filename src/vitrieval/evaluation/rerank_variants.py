"""The evaluation's re-ranking: αQE / DBA (:mod:`vitrieval.rerank`) applied to the final descriptors, metrics again.

Variants reported beside the plain metrics (``RerankOptions.methods``):

    aqe        -> "aqe":              queries q' = αQE(q, D)
    aqe, dba   -> "aqe" and "aqe+dba": D' = DBA(D), then q' = αQE(q, D') searched in D'
    dba        -> "dba":              D' = DBA(D), the queries searched in D'

Landmarks (revisited protocol): ``D`` is the database, ``q`` the (cropped) queries. Category-level,
query-gallery (In-Shop): the gallery and the queries. Leave-one-out (SOP, CUB, folder): every test image is
query and gallery, so DBA augments them all and αQE expands each image over the *other* images (its own row is
left out), then each expanded query searches the (augmented) others, never itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vitrieval.metrics import map_at_r, recall_at_k
from vitrieval.rerank import RerankOptions, alpha_query_expansion, database_side_augmentation

__all__ = ["RerankOptions", "category_rerank", "expanded", "reranked_results"]


def expanded(queries: np.ndarray, database: np.ndarray, use_aqe: bool, use_dba: bool, options: RerankOptions,
             leave_one_out: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(queries', database')`` of one variant; leave-one-out: ``queries`` is ``database`` (the same rows)."""
    db = database_side_augmentation(database, options.n, options.alpha) if use_dba else database
    q = db if leave_one_out else queries
    if use_aqe:
        q = alpha_query_expansion(q, db, options.n, options.alpha, exclude_self=leave_one_out)
    return q, db


def reranked_results(options: RerankOptions, queries: np.ndarray, database: np.ndarray,
                     metrics: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
                     leave_one_out: bool = False) -> dict[str, Any]:
    """``{**options.record(), "results": {variant: metrics(queries', database')}}``."""
    results = {name: metrics(*expanded(queries, database, aqe, dba, options, leave_one_out))
               for name, aqe, dba in options.variants()}
    return {**options.record(), "results": results}


def category_rerank(options: RerankOptions, descriptors: np.ndarray, labels: np.ndarray, is_query: np.ndarray,
                    is_gallery: np.ndarray, ks: Sequence[int], leave_one_out: bool) -> dict[str, Any]:
    """Recall@K and MAP@R of each variant (the ``ks`` the plain result reports)."""
    def _none(v: float) -> float | None:
        return None if not np.isfinite(v) else float(v)

    if leave_one_out:
        def metrics(q: np.ndarray, db: np.ndarray) -> dict[str, Any]:
            kw = dict(gallery=db, gallery_labels=labels, exclude_self=True)
            return {"recall_at_k": {str(k): float(v) for k, v in recall_at_k(q, labels, ks, **kw).items()},
                    "map_at_r": _none(map_at_r(q, labels, **kw))}

        return reranked_results(options, descriptors, descriptors, metrics, leave_one_out=True)
    q_labels, g_labels = labels[is_query], labels[is_gallery]

    def metrics_qg(q: np.ndarray, db: np.ndarray) -> dict[str, Any]:
        kw = dict(gallery=db, gallery_labels=g_labels)
        return {"recall_at_k": {str(k): float(v) for k, v in recall_at_k(q, q_labels, ks, **kw).items()},
                "map_at_r": _none(map_at_r(q, q_labels, **kw))}

    return reranked_results(options, descriptors[is_query], descriptors[is_gallery], metrics_qg)
