"""Removal from faiss indexes (vitrieval.index.removal) against a brute-force search of the live vectors: in place
over Flat; tombstones over IVF and HNSW (where IndexIDMap2.remove_ids is wrong or impossible), cleared by a
rebuild at compaction; persisted where the vectors cannot be read back exactly."""

from __future__ import annotations

import numpy as np
import pytest

from vitrieval.index.faiss_utils import make_faiss_index, normalized
from vitrieval.index.removal import rebuilt_without, removes_in_place, search_live

DIM = 16


def _data():
    rng = np.random.default_rng(0)
    x = normalized(rng.standard_normal((600, DIM)).astype(np.float32))
    ids = np.arange(1000, 1600, dtype=np.int64)
    return x, ids


def _index(factory, x, ids):
    import faiss

    index = make_faiss_index(factory, DIM)
    index.train(x)
    index.add_with_ids(x, ids)
    if "IVF" in factory:
        faiss.extract_index_ivf(index).nprobe = 16  # every list: exact
    if "HNSW" in factory:
        faiss.ParameterSpace().set_index_parameter(index, "efSearch", 600)
    return index


def _brute(x, ids, dead, queries, k):
    live = ~np.isin(ids, list(dead))
    scores = queries @ x[live].T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[live][order], np.take_along_axis(scores, order, axis=1)


def test_idmap_remove_ids_is_wrong_over_ivf_which_is_why_tombstones_exist():
    x, ids = _data()
    index = _index("IVF16,Flat", x, ids)
    index.remove_ids(ids[:300])
    _, found = index.search(x[400:405], 1)
    assert (found == -1).all()  # faiss' own removal: the survivors are lost
    assert not removes_in_place(index) and removes_in_place(_index("Flat", x, ids))


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16"])
def test_removed_ids_never_come_back_and_the_rest_is_the_brute_force_answer(factory):
    x, ids = _data()
    index = _index(factory, x, ids)
    dead = set(ids[::3].tolist())
    queries = x[:20]
    if removes_in_place(index):
        index.remove_ids(np.array(sorted(dead)))
        scores, found = index.search(queries, 5)
    else:
        scores, found = search_live(index, queries, 5, dead)
    want_ids, want_scores = _brute(x, ids, dead, queries, 5)
    assert not np.isin(found, list(dead)).any()
    assert np.array_equal(found, want_ids) and np.allclose(scores, want_scores, atol=1e-5)


@pytest.mark.parametrize("factory", ["IVF16,Flat", "HNSW16", "IVF16,PQ4x4fs,RFlat"])
def test_a_rebuild_drops_the_tombstones_and_keeps_the_vectors_exactly(factory):
    import faiss

    x, ids = _data()
    index = _index(factory, x, ids)
    dead = set(ids[100:400].tolist())
    rebuilt = rebuilt_without(index, dead)
    assert rebuilt is not None and rebuilt.ntotal == 300
    kept = faiss.vector_to_array(rebuilt.id_map)
    assert sorted(kept.tolist()) == sorted(set(ids.tolist()) - dead)
    for i in (0, 50, 450, 599):
        assert np.array_equal(rebuilt.reconstruct(int(ids[i])), x[i])
    if "PQ" not in factory:  # exact with these parameters: the brute-force answer
        found = rebuilt.search(x[:10], 3)[1]
        assert np.array_equal(found, _brute(x, ids, dead, x[:10], 3)[0])


def test_codes_without_the_vectors_keep_their_tombstones():
    x, ids = _data()
    index = _index("IVF4,PQ4x4", x, ids)
    assert rebuilt_without(index, {1000}) is None
    _, found = search_live(index, x[:1], 5, {1000})
    assert 1000 not in found
