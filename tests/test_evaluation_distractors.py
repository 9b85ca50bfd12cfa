"""The revisited protocol with distractors, against the full ranking of the concatenated database."""

from __future__ import annotations

import numpy as np
import pytest

from vitrieval.evaluation.distractors import distractor_counts, revisited_map_with_distractors
from vitrieval.metrics import revisited_map_from_descriptors


def _case(seed: int = 0, n_db: int = 60, n_x: int = 700, n_q: int = 12, d: int = 8):
    """Small-integer vectors: every inner product is exact in float32 whatever the block shape, so the ranking
    (with its many exact ties, broken by lower index) is the same for both computations."""
    rng = np.random.default_rng(seed)
    db = rng.integers(-3, 4, (n_db, d)).astype(np.float32)
    queries = (db[rng.integers(0, n_db, n_q)] + rng.integers(-2, 3, (n_q, d))).astype(np.float32)
    x = rng.integers(-3, 4, (n_x, d)).astype(np.float32)
    x[:20] = db[:20]  # exact ties with benchmark images: the benchmark image ranks first (lower index)
    gnd = []
    for _ in range(n_q):
        items = rng.permutation(n_db)
        gnd.append({"easy": items[:4].tolist(), "hard": items[4:7].tolist(), "junk": items[7:9].tolist()})
    gnd[0]["easy"] = []  # no easy positive: left out of the easy means
    gnd[1]["junk"] = gnd[1]["hard"][:1]  # an image both hard and junk
    return db, queries, x, gnd


@pytest.mark.parametrize("block", [7, 100, 10_000])
def test_equals_the_full_ranking_of_database_plus_distractors(block: int) -> None:
    db, queries, x, gnd = _case()
    got = revisited_map_with_distractors(db, queries, x, gnd, block=block)
    ref = revisited_map_from_descriptors(np.vstack([db, x]), queries, gnd)
    for p in ("easy", "medium", "hard"):
        assert got[p]["map"] == pytest.approx(ref[p]["map"], abs=1e-12)
        assert got[p]["aps"] == [None if a is None else pytest.approx(a, abs=1e-12) for a in ref[p]["aps"]]
        assert got[p]["mp_at_k"] == {k: pytest.approx(v, abs=1e-12) for k, v in ref[p]["mp_at_k"].items()}
    assert got["easy"]["aps"][0] is None
    # the distractors lower the mAP here (random distractors around the queries' neighbourhoods)
    plain = revisited_map_from_descriptors(db, queries, gnd)
    assert got["medium"]["map"] < plain["medium"]["map"]


def test_no_distractors_is_the_plain_protocol_and_counts_are_strict() -> None:
    db, queries, x, gnd = _case(1)
    none = revisited_map_with_distractors(db, queries, x[:0], gnd)
    plain = revisited_map_from_descriptors(db, queries, gnd)
    assert none["hard"]["map"] == pytest.approx(plain["hard"]["map"], abs=1e-12)
    counts = distractor_counts(db, queries, x, block=33)
    s_db, s_x = queries @ db.T, queries @ x.T
    assert np.array_equal(counts, (s_x[:, None, :] > s_db[:, :, None]).sum(axis=2))
    with pytest.raises(ValueError, match="distractors"):
        revisited_map_with_distractors(db, queries, x[:, :4], gnd)


def test_reduced_rows_reduce_each_block_as_it_is_read() -> None:
    """``ReducedRows(features, reduce)`` reads as ``reduce(features)``, block by block, for the counts too."""
    from vitrieval.evaluation.distractors import ReducedRows

    db, queries, x, gnd = _case(2)
    w = np.random.default_rng(3).integers(-2, 3, (8, 8)).astype(np.float32)
    reduce_calls: list[int] = []

    def reduce(rows: np.ndarray) -> np.ndarray:
        reduce_calls.append(len(rows))
        return rows @ w

    lazy = ReducedRows(x, reduce)
    assert lazy.shape == (700, 8) and len(lazy) == 700
    np.testing.assert_array_equal(lazy[10:20], x[10:20] @ w)
    reduce_calls.clear()
    got = revisited_map_with_distractors(db, queries, lazy, gnd, block=100)
    assert reduce_calls == [100] * 7  # never the whole array at once
    ref = revisited_map_with_distractors(db, queries, x @ w, gnd)
    assert got["medium"]["aps"] == ref["medium"]["aps"]
    with pytest.raises(ValueError, match="non-empty"):
        ReducedRows(x[:0])
