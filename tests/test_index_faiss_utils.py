"""vitrieval.index.faiss_utils: factories, training needs and the search parameters (nprobe, efSearch, k_factor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index_world import build_world, good_images
from vitrieval.index import (
    APPROXIMATE_FACTORY,
    Index,
    default_search_params,
    get_search_params,
    make_faiss_index,
    parse_training_needs,
    set_search_params,
    train_faiss_index,
)
from vitrieval.index.faiss_utils import normalized


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model, 30 images + 1 corrupt file, and a Flat index of them (built once for the module)."""
    return build_world(tmp_path_factory.mktemp("index"))


@pytest.mark.parametrize("factory, params", [("IVF4,Flat", {"nprobe": 4}), ("HNSW8", {"ef_search": 32}),
                                              ("IVF2,PQ16x4fs,RFlat", {"nprobe": 2, "k_factor": 16})])
def test_approximate_factories(world: dict, tmp_path: Path, factory: str, params: dict) -> None:
    index = Index.build(world["model"], good_images(world), tmp_path / "a.idx", factory=factory, num_workers=0,
                        progress=False, **params)
    assert len(index) == 30 and index.factory == factory
    for name, value in params.items():
        assert getattr(index, name) == value
    results = index.search(good_images(world), k=3)
    top1 = sum(hits[0].path == str(p.resolve()) for p, hits in zip(good_images(world), results))
    assert top1 == 30
    reloaded = Index.load(tmp_path / "a.idx")
    for name, value in params.items():
        assert getattr(reloaded, name) == value
    if "nprobe" in params:
        reloaded.nprobe = 1
        assert reloaded.nprobe == 1 and Index.load(tmp_path / "a.idx").nprobe == params["nprobe"]
        with pytest.raises(AttributeError, match="ef_search applies to HNSW"):
            reloaded.ef_search = 10


# -- the helpers on bare faiss indexes ---------------------------------------------------------------------------

@pytest.mark.parametrize("factory, expected", [
    ("Flat", {}),
    ("IVF16,Flat", {"nprobe": 8}),  # max(8, 16 / 128)
    ("IVF2048,Flat", {"nprobe": 16}),  # 2048 / 128
    ("HNSW8", {"ef_search": 128}),
    ("IVF16,PQ8x4fs,RFlat", {"nprobe": 8, "k_factor": 4}),  # IDMap -> Refine -> IVF
    ("PCA8,IVF16,Flat", {"nprobe": 8}),  # IDMap -> PreTransform -> IVF
    ("HNSW8,RFlat", {"ef_search": 128, "k_factor": 4}),
    (APPROXIMATE_FACTORY, {"nprobe": 32, "k_factor": 8}),
])
def test_default_search_params_reach_the_layer_below_the_wrappers(factory: str, expected: dict) -> None:
    index = make_faiss_index(factory, 32)
    defaults = default_search_params(index, factory)
    assert defaults == expected
    assert set_search_params(index, **defaults) == expected == get_search_params(index)


def test_set_search_params_clips_ignores_none_and_refuses_what_does_not_apply() -> None:
    ivf = make_faiss_index("IVF16,PQ8x4fs,RFlat", 32)
    assert set_search_params(ivf, nprobe=100, k_factor=3, ef_search=None) == {"nprobe": 16, "k_factor": 3}
    assert set_search_params(ivf, nprobe=5) == {"nprobe": 5, "k_factor": 3}
    with pytest.raises(AttributeError, match="ef_search applies to HNSW indexes only"):
        set_search_params(ivf, ef_search=64)
    with pytest.raises(ValueError, match="nprobe must be >= 1, got 0"):
        set_search_params(ivf, nprobe=0)
    with pytest.raises(ValueError, match="unknown search parameter 'efSearch'"):
        set_search_params(ivf, efSearch=64)
    hnsw = make_faiss_index("HNSW8", 32)
    assert set_search_params(hnsw, ef_search=48) == {"ef_search": 48}
    with pytest.raises(AttributeError, match="nprobe applies to IVF indexes only"):
        set_search_params(hnsw, nprobe=4)
    assert set_search_params(make_faiss_index("Flat", 32)) == {}


def test_factories_and_their_training_needs() -> None:
    assert parse_training_needs("Flat") == (0, "")
    assert parse_training_needs("IVF64,Flat") == (64, "IVF64 has 64 lists")
    assert parse_training_needs("IVF2,PQ8") == (256, "PQ8 has 256 centroids per sub-quantizer")
    assert parse_training_needs("IVF2,PQ16x4fs,RFlat") == (16, "PQ16x4 has 16 centroids per sub-quantizer")
    assert parse_training_needs(APPROXIMATE_FACTORY) == (4096, "IVF4096 has 4096 lists")
    with pytest.raises(ValueError, match="leave out IDMap"):
        make_faiss_index("IDMap,Flat", 8)
    index = make_faiss_index("IVF4,Flat", 8)
    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"needs at least 4 descriptors.*has 3; use fewer lists \(e.g. IVF1\)"):
        train_faiss_index(index, "IVF4,Flat", [x[:2], x[2:3]])
    train_faiss_index(index, "IVF4,Flat", [x[:25], x[25:]])
    assert index.is_trained


def test_normalized_rows_are_unit_and_zero_rows_stay_zero() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float64)
    out = normalized(x)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, np.array([[0.6, 0.8], [0.0, 0.0]], dtype=np.float32))
    assert x[0, 0] == 3.0  # a copy


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW8", "IVF8,PQ4x4fs,RFlat", "PCA32,IVF8,Flat"])
def test_excluded_ids_are_filtered_inside_faiss_as_brute_force_without_them(factory: str) -> None:
    """``search_with_exclusions``: an ID selector in the search parameters (no over-fetching), the index's own
    nprobe / efSearch / k_factor kept; the answer is brute force over the ids that are left."""
    from vitrieval.index.faiss_utils import search_with_exclusions

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(600, dtype=np.int64) * 3 + 7  # ids are not positions
    index = make_faiss_index(factory, 32)
    if not index.is_trained:
        index.train(x)
    index.add_with_ids(x, ids)
    set_search_params(index, **{k: v for k, v in {"nprobe": 8, "ef_search": 256, "k_factor": 64}.items()
                                if k in get_search_params(index)})
    dead = set(ids[rng.choice(600, 300, replace=False)].tolist())
    q = x[:40]
    scores, found = search_with_exclusions(index, q, 10, dead)
    live = np.array([i not in dead for i in ids.tolist()])
    exact = q @ x[live].T
    want = ids[live][np.argsort(-exact, axis=1)[:, :10]]
    if factory.startswith("PCA"):  # centred and rotated: the reference is the same index holding only the live ids
        import faiss

        reference = faiss.clone_index(index)
        reference.reset()
        reference.add_with_ids(x[live], ids[live])
        want = reference.search(q, 10)[1]
    assert not (set(found.ravel().tolist()) & dead)
    recall = np.mean([len(set(f) & set(w)) / 10 for f, w in zip(found.tolist(), want.tolist())])
    assert recall >= (0.9 if factory in ("HNSW8", "IVF8,PQ4x4fs,RFlat") else 0.999)
    assert get_search_params(index).get("nprobe", 8) == 8  # the parameters object did not change the index
