"""Recall@K and the exact k-NN it is built on: hand-computed values, chunking, ties, agreement with
pytorch-metric-learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vitrieval.metrics import exact_knn, iter_knn_chunks, recall_at_k
from vitrieval.metrics.knn import chunk_size_for_budget


def on_circle(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def clustered(n: int, d: int, n_classes: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised descriptors around one random centre per class; every class has >= 2 items."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(n_classes), np.arange(n_classes), rng.integers(0, n_classes, n - 2 * n_classes)])
    labels = rng.permutation(labels)
    centres = rng.standard_normal((n_classes, d))
    x = centres[labels] + noise * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64)


def brute_force_order(q: np.ndarray, g: np.ndarray, exclude_self: bool) -> np.ndarray:
    """Reference ranking: decreasing float64 score, ties by lower gallery index (stable sort)."""
    s = q.astype(np.float64) @ g.astype(np.float64).T
    if exclude_self:
        s[np.arange(len(q)), np.arange(len(q))] = -np.inf
    return np.argsort(-s, axis=1, kind="stable")


# ---------------------------------------------------------------------------------------------- hand-computed


def test_recall_leave_one_out_by_hand() -> None:
    # Angles 0, 15, 40, 90, 185, 200 degrees; labels 0, 1, 0, 1, 2, 2. Rank of the first same-label neighbour
    # among the *other* items: item0 -> 2 (15 deg is label 1, then 40 deg), item1 -> 3, item2 -> 2, item3 -> 2,
    # item4 -> 1, item5 -> 1.
    x = on_circle([0, 15, 40, 90, 185, 200])
    labels = np.array([0, 1, 0, 1, 2, 2])
    r = recall_at_k(x, labels, [1, 2, 3, 5])
    assert list(r) == [1, 2, 3, 5]
    assert r[1] == pytest.approx(2 / 6)
    assert r[2] == pytest.approx(5 / 6)
    assert r[3] == pytest.approx(1.0)
    assert r[5] == pytest.approx(1.0)


def test_recall_query_gallery_by_hand() -> None:
    # Queries at 0 (label 0), 100 (label 1) and 270 degrees (label 2: absent from the gallery, always a miss).
    # Gallery: 10 deg label 1, 30 deg label 0, 90 deg label 1, 180 deg label 0.
    q = on_circle([0, 100, 270])
    g = on_circle([10, 30, 90, 180])
    r = recall_at_k(q, np.array([0, 1, 2]), (4, 1, 2, 2), gallery=g, gallery_labels=np.array([1, 0, 1, 0]))
    assert r == pytest.approx({1: 1 / 3, 2: 2 / 3, 4: 2 / 3})
    assert list(r) == [1, 2, 4]


def test_recall_single_k_and_torch_inputs() -> None:
    x = on_circle([0, 15, 40, 90, 185, 200])
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    assert recall_at_k(torch.from_numpy(x), labels, 2) == pytest.approx({2: 5 / 6})


# ---------------------------------------------------------------------------------------------- exact k-NN


def test_knn_matches_brute_force_with_many_ties() -> None:
    # Small integer entries: every score is exact in float32 and there are lots of ties, including at the k-th
    # place. The order must be decreasing score, then increasing gallery index, whatever the chunk size.
    rng = np.random.default_rng(3)
    g = rng.integers(-1, 2, size=(60, 3)).astype(np.float32)
    q = rng.integers(-1, 2, size=(25, 3)).astype(np.float32)
    ref_qg = brute_force_order(q, g, exclude_self=False)
    ref_loo = brute_force_order(g, g, exclude_self=True)
    for k in (1, 5, 17, 59):
        for chunk_size in (1, 4, 25, 1000):
            scores, idx = exact_knn(q, k, g, chunk_size=chunk_size)
            np.testing.assert_array_equal(idx, ref_qg[:, :k])
            np.testing.assert_array_equal(scores, (q @ g.T)[np.arange(len(q))[:, None], idx])
            _, idx_loo = exact_knn(g, k, exclude_self=True, chunk_size=chunk_size)
            np.testing.assert_array_equal(idx_loo, ref_loo[:, :k])
            assert not np.any(idx_loo == np.arange(len(g))[:, None])


def test_knn_ties_broken_by_lower_index() -> None:
    g = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0, 1], [2, 0]], dtype=np.float32)
    q = np.array([[1, 0]], dtype=np.float32)
    assert exact_knn(q, 2, g)[1].tolist() == [[5, 0]]
    assert exact_knn(q, 4, g)[1].tolist() == [[5, 0, 2, 3]]
    scores, idx = exact_knn(q, 6, g)
    assert idx.tolist() == [[5, 0, 2, 3, 1, 4]]
    assert scores.tolist() == [[2, 1, 1, 1, 0, 0]]
    # All items identical: leave-one-out lists every other item in index order.
    same = np.ones((7, 4), dtype=np.float32)
    _, idx = exact_knn(same, 6, exclude_self=True, chunk_size=3)
    expected = [[j for j in range(7) if j != i] for i in range(7)]
    assert idx.tolist() == expected


def test_knn_chunked_equals_unchunked_on_real_valued_data() -> None:
    x, labels = clustered(500, 32, 90, noise=0.8, seed=1)
    full_scores, full_idx = exact_knn(x, 20, exclude_self=True, chunk_size=len(x))
    ref = brute_force_order(x, x, exclude_self=True)[:, :20]
    assert (full_idx == ref).mean() > 0.999  # float32 vs float64 may swap near-equal neighbours
    for chunk_size in (1, 33, 256):
        scores, idx = exact_knn(x, 20, exclude_self=True, chunk_size=chunk_size)
        np.testing.assert_allclose(scores, full_scores, rtol=0, atol=1e-6)
        assert (idx == full_idx).mean() > 0.999
    # Concatenated chunks from the iterator cover every query once, in order.
    chunks = list(iter_knn_chunks(x, 5, exclude_self=True, chunk_size=200))
    assert [(c.start, c.stop) for c in chunks] == [(0, 200), (200, 400), (400, 500)]
    ks = [1, 2, 4, 8, 16]
    r_full = recall_at_k(x, labels, ks, chunk_size=len(x))
    for chunk_size in (1, 33, None):
        assert recall_at_k(x, labels, ks, chunk_size=chunk_size) == r_full
    assert recall_at_k(x, labels, ks, memory_budget=50_000) == r_full


def test_chunk_size_from_memory_budget() -> None:
    assert chunk_size_for_budget(60_502, 1000, 256 * 2**20) == 256 * 2**20 // (60_502 * 8 + 1000 * 24)
    assert chunk_size_for_budget(10**9, 10, 1) == 1


def test_recall_matches_brute_force() -> None:
    x, labels = clustered(400, 16, 80, noise=1.0, seed=2)
    order = brute_force_order(x, x, exclude_self=True)
    hit = labels[order] == labels[:, None]
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), len(x))
    ks = [1, 3, 10, 100, 399]
    r = recall_at_k(x, labels, ks)
    assert r == pytest.approx({k: float(np.mean(first < k)) for k in ks}, abs=1e-12)
    assert 0.2 < r[1] < 0.95  # the data is neither trivial nor hopeless


@pytest.mark.parametrize("first_stage_k", [1, 3, 128])
def test_recall_two_stages_with_ties_match_brute_force(monkeypatch: pytest.MonkeyPatch, first_stage_k: int) -> None:
    # Queries whose first relevant item lies beyond the first-stage top-k are ranked by counting; with integer
    # descriptors (many exact ties) that count must reproduce the stable ranking exactly.
    import vitrieval.metrics.recall as recall_module

    monkeypatch.setattr(recall_module, "FIRST_STAGE_K", first_stage_k)
    rng = np.random.default_rng(4)
    x = rng.integers(-1, 2, size=(150, 4)).astype(np.float32)
    labels = rng.integers(0, 12, size=150)
    labels[0] = 99  # a lone query: never a hit
    ks = [1, 2, 5, 20, 149]
    for q, ql, g, gl in [(x, labels, None, None), (x[:40], labels[:40], x[40:], labels[40:])]:
        loo = g is None
        order = brute_force_order(q, x if loo else g, exclude_self=loo)
        hit = (labels if loo else gl)[order] == ql[:, None]
        if loo:
            hit[:, -1] = False  # the query itself, ranked last at -inf
        first = np.where(hit.any(axis=1), hit.argmax(axis=1), len(x))
        ks_here = [k for k in ks if k <= (len(x) - 1 if loo else len(g))]
        expected = {k: float(np.mean(first < k)) for k in ks_here}
        assert recall_at_k(q, ql, ks_here, g, gl, chunk_size=16) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------------------------- validation


def test_k_too_large_is_an_error_naming_k() -> None:
    x = on_circle([0, 10, 20, 30])
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match="K=4"):
        recall_at_k(x, labels, [1, 4])  # leave-one-out: only 3 other items
    assert recall_at_k(x, labels, [3])[3] == 1.0
    with pytest.raises(ValueError, match="K=5"):
        recall_at_k(x[:2], labels[:2], [5], gallery=x, gallery_labels=labels)
    with pytest.raises(ValueError, match="k=4"):
        exact_knn(x, 4, exclude_self=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ks": []}, "ks is empty"),
        ({"ks": [0]}, "K=0"),
        ({"ks": [1.5]}, "integer"),
        ({"query_labels": np.array([0.0, 0.0, 1.0, 1.0])}, "integer class labels"),
        ({"query_labels": np.array([0, 0, 1])}, "3 labels for 4"),
        ({"queries": np.zeros(4, dtype=np.float32)}, "2-D"),
        ({"gallery": np.zeros((3, 2), dtype=np.float32)}, "both gallery and gallery_labels"),
        ({"queries": np.full((4, 2), np.nan, dtype=np.float32)}, "NaN"),
    ],
)
def test_recall_input_errors(kwargs: dict, message: str) -> None:
    args = {"queries": on_circle([0, 10, 20, 30]), "query_labels": np.array([0, 0, 1, 1]), "ks": [1]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        recall_at_k(**args)


def test_query_gallery_dimension_mismatch() -> None:
    with pytest.raises(ValueError, match="dimension"):
        recall_at_k(np.zeros((2, 3), np.float32), [0, 1], [1], np.zeros((2, 4), np.float32), [0, 1])


# ---------------------------------------------------------------------------------------------- pytorch-metric-learning


def pml_precision_at_1(*args, **kwargs) -> float:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("precision_at_1",), k=1, device=torch.device("cpu"))
    return calc.get_accuracy(*args, **kwargs)["precision_at_1"]


def test_recall_at_1_matches_pytorch_metric_learning() -> None:
    pytest.importorskip("pytorch_metric_learning")
    x, labels = clustered(1500, 48, 300, noise=0.9, seed=5)
    ours = recall_at_k(x, labels, [1])[1]
    assert 0.5 < ours < 0.99
    # Leave-one-out: with no reference set the calculator uses the queries with ref_includes_query=True.
    assert ours == pytest.approx(pml_precision_at_1(x, labels), abs=1e-12)
    # Query/gallery: every query label present in the gallery (else the calculator drops "lone" queries).
    q, ql, g, gl = x[:500], labels[:500], x[500:], labels[500:]
    keep = np.isin(ql, gl)
    ours_qg = recall_at_k(q[keep], ql[keep], [1], gallery=g, gallery_labels=gl)[1]
    theirs = pml_precision_at_1(q[keep], ql[keep], g, gl, ref_includes_query=False)
    assert ours_qg == pytest.approx(theirs, abs=1e-12)


def test_exclude_self_with_other_query_vectors_is_leave_one_out():
    """Query i is gallery item i (a changed copy of it): never retrieves item i; equal to plain leave-one-out
    when the query vectors are the gallery itself."""
    import numpy as np

    from vitrieval.metrics import map_at_r, recall_at_k

    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(6), 5)
    assert recall_at_k(x, labels, [1, 4], gallery=x, gallery_labels=labels, exclude_self=True) == \
        recall_at_k(x, labels, [1, 4])
    assert map_at_r(x, labels, gallery=x, gallery_labels=labels, exclude_self=True) == map_at_r(x, labels)
    q = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    s = q @ x.T
    np.fill_diagonal(s, -np.inf)
    top1 = labels[s.argmax(axis=1)] == labels
    assert recall_at_k(q, labels, [1], gallery=x, gallery_labels=labels, exclude_self=True)[1] == top1.mean()
