"""Where an evaluation fails: the worst queries with what they retrieve, and Recall@K per class.

Worst queries, category-level sets: the queries whose first correct neighbour comes latest,

    rank(q) = min{ p : y_{NN(q)[p]} = y_q }      (0-based, in the evaluation's own ranking:
                                                  :func:`~vitrieval.metrics.first_relevant_ranks`)

largest first (ties by lower query index); a query with no correct item at all ranks ``n_candidates``.
Revisited landmark sets: the queries of lowest AP under the Medium protocol
(:func:`~vitrieval.metrics.revisited_map_from_descriptors`), a positive being an ``easy`` or ``hard`` image.
Their top-k neighbours come from :func:`~vitrieval.metrics.exact_knn`, the same ranking (ties by lower index).

Per-class recall (category-level): for the queries of class ``c``,

    R_c@K = #{q : y_q = c, rank(q) < K} / #{q : y_q = c}

listed worst first (by R@K at the smallest K, then the larger Ks, then the label).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitrieval.evaluation.protocol import EvaluatedSet
from vitrieval.metrics import exact_knn, first_relevant_ranks, revisited_map_from_descriptors


@dataclass(frozen=True)
class FailedQuery:
    """One of the worst queries: its row in the test split, how bad it is (``first_correct_rank``, 0-based, or
    ``ap`` for landmarks), and its ``k`` nearest neighbours as test-split rows with their cosine scores and
    whether each is correct."""

    row: int
    neighbours: np.ndarray
    scores: np.ndarray
    correct: np.ndarray
    first_correct_rank: int | None = None
    ap: float | None = None


@dataclass(frozen=True)
class ClassRecall:
    """Recall@K of the queries of one class: ``recall`` maps K to the fraction, ``num_queries`` how many."""

    label: int
    num_queries: int
    recall: dict[int, float]


def _sides(evaluated: EvaluatedSet) -> tuple[np.ndarray, np.ndarray]:
    """Test-split rows of the queries and of the gallery (every row twice in leave-one-out)."""
    n = len(evaluated.test)
    if evaluated.leave_one_out:
        rows = np.arange(n)
        return rows, rows
    return np.flatnonzero(evaluated.is_query), np.flatnonzero(evaluated.is_gallery)


def query_first_ranks(evaluated: EvaluatedSet) -> tuple[np.ndarray, np.ndarray]:
    """``(query_rows, ranks)``: each category-level query's test-split row and the 0-based rank of its first
    correct neighbour (``n_candidates`` when it has none)."""
    q_rows, g_rows = _sides(evaluated)
    labels = evaluated.test.labels
    d = evaluated.descriptors
    if evaluated.leave_one_out:
        return q_rows, first_relevant_ranks(d, labels)
    return q_rows, first_relevant_ranks(d[q_rows], labels[q_rows], d[g_rows], labels[g_rows])


def per_class_recall(labels: np.ndarray, ranks: np.ndarray, ks: Sequence[int]) -> list[ClassRecall]:
    """Recall@K per query label from the first-correct ranks, worst class first (module docstring)."""
    k_list = sorted({int(k) for k in ks})
    classes, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    ranks = np.asarray(ranks)
    hits = {k: np.bincount(inverse, weights=ranks < k, minlength=len(classes)) for k in k_list}
    out = [ClassRecall(int(c), int(n), {k: float(hits[k][i]) / int(n) for k in k_list})
           for i, (c, n) in enumerate(zip(classes, counts))]
    out.sort(key=lambda c: ([c.recall[k] for k in k_list], c.label))
    return out


def worst_queries(evaluated: EvaluatedSet, n: int, k: int,
                  ranks: tuple[np.ndarray, np.ndarray] | None = None) -> list[FailedQuery]:
    """The ``n`` worst queries (module docstring) with their ``k`` nearest neighbours, worst first.

    ``ranks`` is :func:`query_first_ranks`' result when the caller already has it (category-level only).
    """
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 worst queries and k >= 1 neighbours, got n={n}, k={k}")
    q_rows, g_rows = _sides(evaluated)
    d = evaluated.descriptors
    if evaluated.gnd is not None:
        return _worst_landmark_queries(evaluated, q_rows, g_rows, n, k)
    q_rows, first = ranks if ranks is not None else query_first_ranks(evaluated)
    labels = evaluated.test.labels
    order = np.argsort(-first, kind="stable")[:n]
    k = min(k, len(g_rows) - 1 if evaluated.leave_one_out else len(g_rows))
    extra = 1 if evaluated.leave_one_out else 0  # the query itself comes back from its own gallery
    scores, idx = exact_knn(d[q_rows[order]], k + extra, d[g_rows])
    out = []
    for i, q in enumerate(order):
        row = int(q_rows[q])
        keep = np.flatnonzero(g_rows[idx[i]] != row)[:k] if extra else np.arange(k)
        nb = g_rows[idx[i][keep]]
        out.append(FailedQuery(row, nb, scores[i][keep], labels[nb] == labels[row],
                               first_correct_rank=int(first[q])))
    return out


def medium_positives(entry: dict) -> np.ndarray:
    """The positives of a revisited query under the Medium protocol: its ``easy`` and ``hard`` database indices."""
    return np.concatenate([np.asarray(entry.get(key, []), dtype=np.int64).reshape(-1) for key in ("easy", "hard")])


def _worst_landmark_queries(evaluated: EvaluatedSet, q_rows: np.ndarray, g_rows: np.ndarray, n: int,
                            k: int) -> list[FailedQuery]:
    d = evaluated.descriptors
    gnd = evaluated.gnd
    aps = revisited_map_from_descriptors(d[g_rows], d[q_rows], gnd)["medium"]["aps"]
    scored = [(ap, i) for i, ap in enumerate(aps) if ap is not None]
    scored.sort()
    k = min(k, len(g_rows))
    picked = [i for _, i in scored[:n]]
    if not picked:
        return []
    scores, idx = exact_knn(d[q_rows[picked]], k, d[g_rows])
    out = []
    for j, i in enumerate(picked):
        correct = np.isin(idx[j], medium_positives(gnd[i]))
        out.append(FailedQuery(int(q_rows[i]), g_rows[idx[j]], scores[j], correct, ap=float(aps[i])))
    return out

