"""Hard-negative mining for tuple training: cluster rules, order, determinism, and the epoch draw."""

from __future__ import annotations

import numpy as np
import pytest

from vitrieval.data.tuples import EpochTuples
from vitrieval.embed import ExtractionOptions
from vitrieval.training.mining import _pick, epoch_rng, hardest_negatives


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(q, pool, clusters, qc, k):
    """Rank the whole pool by inner product; keep the first image of each new cluster other than the query's."""
    out = []
    for i in range(len(q)):
        order = np.argsort(-(pool @ q[i]), kind="stable")
        taken, picked = {qc[i]}, []
        for j in order:
            if clusters[j] not in taken:
                taken.add(clusters[j])
                picked.append(j)
            if len(picked) == k:
                break
        out.append(picked)
    return np.asarray(out)


def test_hardest_negatives_match_a_full_ranking_with_one_image_per_cluster():
    rng = np.random.default_rng(0)
    pool = _unit(rng.normal(size=(400, 8)))
    clusters = rng.integers(0, 40, size=400)
    q = _unit(rng.normal(size=(30, 8)))
    qc = rng.integers(0, 40, size=30)
    rows = np.arange(1000, 1400)  # pool item j is table row 1000 + j
    negs, dist = hardest_negatives(q, pool, rows, clusters, qc, k=5, chunk=7)
    expected = _brute_force(q, pool, clusters, qc, 5)
    np.testing.assert_array_equal(negs, rows[expected])
    for i in range(30):
        chosen = clusters[negs[i] - 1000]
        assert qc[i] not in chosen and len(set(chosen)) == 5
        np.testing.assert_allclose(dist[i], np.linalg.norm(pool[negs[i] - 1000] - q[i], axis=1), rtol=1e-5)
        assert np.all(np.diff(pool[negs[i] - 1000] @ q[i]) <= 1e-6)  # hardest (most similar) first


def test_a_shortlist_dominated_by_few_clusters_falls_back_to_the_full_ranking():
    rng = np.random.default_rng(1)
    q = _unit(rng.normal(size=(1, 4)))
    close = _unit(q + 0.01 * rng.normal(size=(200, 4)))  # the 200 most similar all belong to cluster 7
    far = _unit(rng.normal(size=(50, 4)) - 3 * q)
    pool = np.concatenate([close, far])
    clusters = np.concatenate([np.full(200, 7), np.arange(100, 150)])
    negs, _ = hardest_negatives(q, pool, np.arange(250), clusters, np.array([3]), k=3)
    assert (clusters[negs[0]] == 7).sum() == 1 and len(set(clusters[negs[0]])) == 3
    np.testing.assert_array_equal(negs, _brute_force(q, pool, clusters, [3], 3))


def test_too_few_clusters_in_the_pool_is_a_clear_error():
    pool = _unit(np.eye(3, 4) + 0.1)
    with pytest.raises(ValueError, match=r"only 2 cluster\(s\) other than query 0's, 3 are needed"):
        hardest_negatives(pool[:1], pool, np.arange(3), np.array([0, 1, 2]), np.array([0]), k=3)
    assert _pick(np.arange(3), np.array([5, 5, 6]), 6, 2) is None


def test_epoch_draws_depend_only_on_seed_and_epoch():
    a, b = epoch_rng(3, 5).permutation(100), epoch_rng(3, 5).permutation(100)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, epoch_rng(3, 6).permutation(100))
    assert not np.array_equal(a, epoch_rng(4, 5).permutation(100))


def test_epoch_tuples_rows_and_state_round_trip():
    t = EpochTuples(np.array([4, 9]), np.array([5, 8]), np.array([[1, 2, 3], [0, 6, 7]]), 0.75)
    assert t.tuple_size == 5 and len(t) == 2 and t.rows(1) == [9, 8, 0, 6, 7]
    back = EpochTuples.from_state(t.state_dict())
    np.testing.assert_array_equal(back.negatives, t.negatives)
    assert back.negative_distance == 0.75


@pytest.mark.parametrize("fast_decode", [True, False])
def test_mining_extracts_with_the_configs_fast_decode(monkeypatch: pytest.MonkeyPatch, fast_decode: bool) -> None:
    """``data.fast_decode`` reaches both extractions of an epoch (queries and pool)."""
    from vitrieval.data.table import ImageTable, Record
    from vitrieval.embed import Extraction
    from vitrieval.training import mining

    calls: list[dict] = []

    def fake_extract(encoder, table, options, **kwargs):
        calls.append(options)
        rng = np.random.default_rng(len(calls))
        return Extraction(_unit(rng.normal(size=(len(table), 4)).astype(np.float32)), np.arange(len(table)))

    monkeypatch.setattr(mining, "extract", fake_extract)
    table = ImageTable([Record(f"/x/{i}.jpg", i // 2) for i in range(12)], "t")
    pairs = np.asarray([[2 * c, 2 * c + 1] for c in range(6)])
    tuples = mining.mine_epoch_tuples(None, table, pairs, 0, 0, query_size=4, pool_size=12, negatives=2,
                                      extraction=ExtractionOptions(progress=False, fast_decode=fast_decode))
    assert len(tuples) == 4 and tuples.negatives.shape == (4, 2)
    assert [c.fast_decode for c in calls] == [fast_decode, fast_decode]
    calls.clear()
    mining.mine_epoch_tuples(None, table, pairs, 0, 0, query_size=4, pool_size=12, negatives=2)
    assert [c.fast_decode for c in calls] == [True, True]  # the default: data.fast_decode's
