"""The worst queries and per-class recall of ``vitrieval evaluate --report`` (:mod:`vitrieval.evaluation.failures`),
checked against a brute-force ranking of the full similarity matrix (stable sort: ties by lower index)."""

from __future__ import annotations

import numpy as np
import pytest

from vitrieval.data.table import ImageTable, Record
from vitrieval.evaluation.failures import (
    per_class_recall,
    query_first_ranks,
    worst_queries,
)
from vitrieval.evaluation.protocol import EvaluatedSet
from vitrieval.metrics import compute_ap, first_relevant_ranks, recall_at_k


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _set(n: int, n_classes: int, seed: int, queries: np.ndarray | None = None) -> EvaluatedSet:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    z = _unit(rng.normal(size=(n, 8)) + 1.5 * np.eye(n_classes, 8)[labels])
    is_q = np.ones(n, bool) if queries is None else queries
    is_g = np.ones(n, bool) if queries is None else ~queries
    table = ImageTable([Record(f"/x/{i}.png", int(y), "test", bool(q), bool(g))
                        for i, (y, q, g) in enumerate(zip(labels, is_q, is_g))])
    return EvaluatedSet(table, z, is_q, is_g, leave_one_out=queries is None)


def _brute(ev: EvaluatedSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query rows, the gallery row order of each query's full stable ranking, first-correct ranks."""
    y, z = ev.test.labels, ev.descriptors.astype(np.float64)
    if ev.leave_one_out:
        q_rows = g_rows = np.arange(len(y))
    else:
        q_rows, g_rows = np.flatnonzero(ev.is_query), np.flatnonzero(ev.is_gallery)
    s = z[q_rows] @ z[g_rows].T
    orders, firsts = [], []
    for i, q in enumerate(q_rows):
        order = [g for g in g_rows[np.argsort(-s[i], kind="stable")] if g != q]
        hits = [p for p, g in enumerate(order) if y[g] == y[q]]
        orders.append(order)
        firsts.append(hits[0] if hits else len(order))
    return q_rows, np.asarray(orders), np.asarray(firsts)


@pytest.mark.parametrize("split", [False, True], ids=["leave-one-out", "query-gallery"])
def test_worst_queries_and_neighbours_match_brute_force(split: bool) -> None:
    queries = np.arange(60) % 3 == 0 if split else None
    ev = _set(60, 6, seed=1, queries=queries)
    q_rows, orders, firsts = _brute(ev)
    rows, ranks = query_first_ranks(ev)
    assert rows.tolist() == q_rows.tolist() and ranks.tolist() == firsts.tolist()
    worst = worst_queries(ev, 5, 4)
    expected = q_rows[np.argsort(-firsts, kind="stable")[:5]]
    assert [f.row for f in worst] == expected.tolist()
    assert worst[0].first_correct_rank == firsts.max()
    y = ev.test.labels
    for f in worst:
        i = int(np.flatnonzero(q_rows == f.row)[0])
        assert f.neighbours.tolist() == list(orders[i][:4])
        assert f.correct.tolist() == (y[f.neighbours] == y[f.row]).tolist()
        np.testing.assert_allclose(f.scores, ev.descriptors[f.neighbours] @ ev.descriptors[f.row], atol=1e-6)


def test_first_ranks_give_recall_and_clamp() -> None:
    ev = _set(80, 5, seed=2)
    ranks = first_relevant_ranks(ev.descriptors, ev.test.labels)
    rec = recall_at_k(ev.descriptors, ev.test.labels, [1, 2, 4, 8])
    assert {k: float(np.mean(ranks < k)) for k in (1, 2, 4, 8)} == rec
    clamped = first_relevant_ranks(ev.descriptors, ev.test.labels, max_rank=3)
    assert clamped.tolist() == np.minimum(ranks, 3).tolist()


def test_per_class_recall_matches_brute_force_worst_first() -> None:
    ev = _set(90, 7, seed=3)
    _, _, firsts = _brute(ev)
    y = ev.test.labels
    classes = per_class_recall(y, firsts, [4, 1])
    assert sorted(c.label for c in classes) == sorted(set(y.tolist()))
    for c in classes:
        mine = firsts[y == c.label]
        assert c.num_queries == len(mine)
        assert c.recall == {1: np.mean(mine < 1), 4: np.mean(mine < 4)}
    keys = [(c.recall[1], c.recall[4], c.label) for c in classes]
    assert keys == sorted(keys)


def _landmark_set() -> EvaluatedSet:
    rng = np.random.default_rng(4)
    n_db, n_q = 30, 4
    z = _unit(rng.normal(size=(n_db + n_q, 6)))
    is_q = np.r_[np.zeros(n_db, bool), np.ones(n_q, bool)]
    gnd = [{"easy": rng.choice(20, 3, replace=False), "hard": np.array([q + 20]), "junk": np.array([q + 25])}
           for q in range(n_q)]
    gnd[2] = {"easy": np.array([], dtype=np.int64), "hard": np.array([], dtype=np.int64), "junk": np.array([1])}
    table = ImageTable([Record(f"/x/{i}.jpg", -1, "test", bool(q), not q) for i, q in enumerate(is_q)])
    return EvaluatedSet(table, z, is_q, ~is_q, leave_one_out=False, gnd=gnd)


def test_landmark_worst_queries_are_lowest_medium_ap() -> None:
    ev = _landmark_set()
    db, q = ev.descriptors[~ev.is_query], ev.descriptors[ev.is_query]
    aps = {}
    for i, entry in enumerate(ev.gnd):
        ok = set(entry["easy"].tolist()) | set(entry["hard"].tolist())
        if not ok:
            continue  # no positives: no AP, never listed
        order = [g for g in np.argsort(-(db @ q[i]), kind="stable") if g not in set(entry["junk"].tolist())]
        aps[i] = compute_ap([p for p, g in enumerate(order) if g in ok], len(ok))
    worst = worst_queries(ev, 10, 5)
    expected = sorted(aps, key=lambda i: (aps[i], i))
    assert [f.row - 30 for f in worst] == expected
    for f in worst:
        i = f.row - 30
        assert f.ap == pytest.approx(aps[i], abs=1e-12)
        assert (f.neighbours - 0).tolist() == np.argsort(-(db @ q[i]), kind="stable")[:5].tolist()
        ok = set(ev.gnd[i]["easy"].tolist()) | set(ev.gnd[i]["hard"].tolist())
        assert f.correct.tolist() == [int(g) in ok for g in f.neighbours]
