"""Index.search(rerank="aqe") and DBA at build time, against an independent numpy brute force on Flat indexes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from index_world import build_world, good_images
from vitrieval.index import Index
from vitrieval.index.faiss_utils import make_faiss_index, train_faiss_index
from vitrieval.index.query_rerank import query_rerank_options, stored_vectors
from vitrieval.rerank import RerankOptions


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_world(tmp_path_factory.mktemp("qrerank"))


def shard_vectors(index_dir) -> np.ndarray:
    """The build's descriptors as written in its shard (row i = id i), unit rows: not read through faiss."""
    x = np.load(index_dir / "shards" / "00000.npy").astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_aqe(q: np.ndarray, db: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """q' = L2(q + Σ_{top-n} max(qᵀd, 0)^α d), numpy, float64."""
    out = []
    for row in q:
        s = db @ row
        top = np.argsort(-s, kind="stable")[:n]
        v = row + (np.maximum(s[top], 0) ** alpha) @ db[top]
        out.append(v / np.linalg.norm(v))
    return np.asarray(out)


def brute_dba(db: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """d' = L2(d + Σ_{top-n other rows} max(dᵀd_j, 0)^α d_j), numpy, float64."""
    s = db @ db.T
    np.fill_diagonal(s, -np.inf)
    out = []
    for i, row in enumerate(db):
        top = np.argsort(-s[i], kind="stable")[:n]
        v = row + (np.maximum(s[i, top], 0) ** alpha) @ db[top]
        out.append(v / np.linalg.norm(v))
    return np.asarray(out)


def test_aqe_search_equals_the_brute_force(world: dict) -> None:
    index = world["index"]
    db = shard_vectors(world["index_dir"])
    rng = np.random.default_rng(0)
    q = db[rng.choice(len(db), 6, replace=False)] + 0.3 * rng.standard_normal((6, db.shape[1])) / np.sqrt(db.shape[1])
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for n, alpha in ((2, 3.0), (5, 0.0), (4, 1.0)):
        results = index.search(q.astype(np.float32), k=8, rerank=RerankOptions(("aqe",), n, alpha))
        expanded = brute_aqe(q, db, n, alpha)
        s = expanded @ db.T
        for row_scores, hits in zip(s, results):
            want = np.argsort(-row_scores, kind="stable")[:8]
            assert [h.id for h in hits] == want.tolist()
            np.testing.assert_allclose([h.score for h in hits], row_scores[want], atol=1e-5)
    # the defaults of "aqe" are n = 2, alpha = 3, and re-ranking changes the scores of the plain search
    plain = index.search(q.astype(np.float32), k=8)
    default = index.search(q.astype(np.float32), k=8, rerank="aqe")
    assert [[h.id for h in r] for r in default] == [[h.id for h in r]
                                                    for r in index.search(q.astype(np.float32), k=8,
                                                                          rerank=RerankOptions(("aqe",), 2, 3.0))]
    assert max(abs(a.score - b.score) for ra, rb in zip(plain, default) for a, b in zip(ra, rb)) > 1e-3


def test_aqe_on_images_and_n_beyond_the_collection(world: dict) -> None:
    index = world["index"]
    paths = good_images(world)[:3]
    db = shard_vectors(world["index_dir"])
    q = index.embed(paths).astype(np.float64)
    hits = index.search(paths, k=5, rerank=RerankOptions(("aqe",), 100, 3.0))  # n clamped to the 30 images
    s = brute_aqe(q, db, len(db), 3.0) @ db.T
    assert [[h.id for h in r] for r in hits] == [np.argsort(-r, kind="stable")[:5].tolist() for r in s]


def test_rerank_values_are_checked() -> None:
    assert query_rerank_options(None) is None and query_rerank_options("none") is None
    assert query_rerank_options("AQE") == RerankOptions(("aqe",))
    with pytest.raises(ValueError, match="not a query option"):
        query_rerank_options("dba")
    with pytest.raises(ValueError, match="not a query option"):
        query_rerank_options(RerankOptions(("aqe", "dba")))
    with pytest.raises(ValueError, match="not a query option"):
        query_rerank_options("aqe,dba")
    with pytest.raises(ValueError, match="must be among"):
        query_rerank_options("bogus")


def test_stored_vectors_of_an_ivf_index_get_a_direct_map() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx = make_faiss_index("IVF4,Flat", 8)
    train_faiss_index(idx, "IVF4,Flat", [x])
    idx.add_with_ids(x, np.arange(400, dtype=np.int64) + 1000)
    np.testing.assert_array_equal(stored_vectors(idx, np.array([1003, 1399])), x[[3, 399]])


def test_dba_build_stores_the_augmented_vectors(world: dict, tmp_path) -> None:
    out = tmp_path / "dba.idx"
    index = Index.build(world["model"], world["root"] / "images", out, factory="Flat", num_workers=0,
                        progress=False, dba=(3, 2.0))
    db = shard_vectors(out)
    np.testing.assert_array_equal(db, shard_vectors(world["index_dir"]))  # the shards keep the plain descriptors
    augmented = brute_dba(db, 3, 2.0)
    stored = index.faiss_index.reconstruct_batch(np.arange(len(index), dtype=np.int64))
    np.testing.assert_allclose(stored, augmented, atol=1e-5)
    assert json.loads((out / "index.json").read_text())["dba"] == {"n": 3, "alpha": 2.0}
    # αQE on the DBA index expands against the augmented vectors
    q = db[:4]
    s = brute_aqe(q, augmented, 2, 3.0) @ augmented.T
    hits = Index.load(out).search(q.astype(np.float32), k=6, rerank="aqe")
    assert [[h.id for h in r] for r in hits] == [np.argsort(-r, kind="stable")[:6].tolist() for r in s]
    with pytest.raises(ValueError, match="database-side augmented"):
        index.add(good_images(world)[:1], num_workers=0, progress=False)
