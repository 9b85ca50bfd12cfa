"""data.fast_decode through the index: builds record it (and key their shards by it), queries, ``add``, the onnx
runtime and the service's uploads decode large JPEGs exactly as the build did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index_world import make_model
from vitrieval.data.images import load_image
from vitrieval.index import Index

MIN_SIDE = 35  # the 32 px test model: max(32, int(32 / crop_pct 0.9))


def write_jpegs(root: Path, n: int = 6, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[Path]:
    """``n`` JPEGs (quality 90) of smooth noise: random 8 x 6 colour fields upsampled bicubically."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        path = root / f"photo{i:02d}.jpg"
        field.resize(size, Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fast_decode")
    model = make_model(root / "model")
    images = write_jpegs(root / "photos")
    common = {"factory": "Flat", "num_workers": 0, "progress": False, "batch_size": 4}
    fast = Index.build(model, root / "photos", root / "fast.idx", **common)
    full = Index.build(model, root / "photos", root / "full.idx", fast_decode=False, **common)
    return {"root": root, "model": model, "images": images, "fast": fast, "full": full}


def stored(index: Index, path: Path) -> np.ndarray:
    """The index's (unit) vector of ``path``."""
    (entry,) = [e for e in index.entries() if e.path == str(path)]
    return index.faiss_index.reconstruct(int(entry.id))


def test_builds_record_fast_decode_and_key_their_shards_by_it(world: dict) -> None:
    fast, full = world["fast"], world["full"]
    assert fast.info["preprocessing"] == {"resize": "shorter", "amp": "off", "fast_decode": True}
    assert full.info["preprocessing"] == {"resize": "shorter", "amp": "off", "fast_decode": False}
    assert fast.fast_decode and fast.decode_min_side == MIN_SIDE
    assert not full.fast_decode and full.decode_min_side is None
    keys = [json.loads((world["root"] / name / "shards" / "00000.json").read_text())["key"]
            for name in ("fast.idx", "full.idx")]
    assert keys[0] != keys[1]
    # the two decodes really differ for these 640 x 480 JPEGs (1/8 scale: 80 x 60), and so do the vectors
    path = world["images"][0]
    assert load_image(path, min_side=MIN_SIDE).size == (80, 60)
    assert np.abs(stored(fast, path) - stored(full, path)).max() > 1e-3


@pytest.mark.parametrize("which", ["fast", "full"])
def test_a_query_is_decoded_as_the_build_decoded_it(world: dict, which: str) -> None:
    index = world[which]
    for path in world["images"]:
        (hit,) = index.search([path], k=1)[0]
        assert index.entry(hit.id).path == str(path) and hit.score >= 1 - 1e-5
        np.testing.assert_allclose(index.embed([path])[0], stored(index, path), atol=1e-6)
        np.testing.assert_allclose(index.embed([path.read_bytes()])[0], stored(index, path), atol=1e-6)
    # the old query path (always a full decode) misses the fast build's vector by far more than that
    full_query = world["full"].embed([Image.open(world["images"][0])])[0]
    assert np.abs(full_query - stored(world["fast"], world["images"][0])).max() > 1e-3


def test_an_index_without_the_key_decodes_queries_at_full_size(world: dict, tmp_path: Path) -> None:
    """index.json of an older build (no ``fast_decode``): queries keep decoding at full size."""
    old = tmp_path / "old.idx"
    shutil.copytree(world["root"] / "full.idx", old)
    info = json.loads((old / "index.json").read_text())
    del info["preprocessing"]["fast_decode"]
    (old / "index.json").write_text(json.dumps(info))
    index = Index.load(old)
    assert not index.fast_decode and index.decode_min_side is None
    path = world["images"][2]
    np.testing.assert_allclose(index.embed([path])[0], stored(world["full"], path), atol=1e-6)


def test_add_decodes_as_the_index_records(world: dict, tmp_path: Path) -> None:
    extra = write_jpegs(tmp_path / "more", n=2, seed=1)
    for which in ("fast", "full"):
        shutil.copytree(world["root"] / f"{which}.idx", tmp_path / f"{which}.idx")  # add journals into the folder
        index = Index.load(tmp_path / f"{which}.idx")
        assert index.add(tmp_path / "more", num_workers=0, progress=False, save=False).added == 2
        for path in extra:
            np.testing.assert_allclose(stored(index, path), index.embed([path])[0], atol=1e-6)


def test_from_descriptors_records_fast_decode_only_when_told(world: dict) -> None:
    fast = world["fast"]
    paths = [e.path for e in fast.entries()]
    x = fast.faiss_index.reconstruct_batch(np.arange(len(paths)))
    plain = Index.from_descriptors(world["model"], x, paths, factory="Flat")
    assert "fast_decode" not in plain.info["preprocessing"] and plain.decode_min_side is None
    told = Index.from_descriptors(world["model"], x, paths, factory="Flat", fast_decode=True)
    assert told.info["preprocessing"]["fast_decode"] is True and told.decode_min_side == MIN_SIDE
    (hit,) = told.search([world["images"][3]], k=1)[0]
    assert hit.path == str(world["images"][3]) and hit.score >= 1 - 1e-5


def test_an_uploaded_jpeg_gets_the_descriptor_of_the_same_file_in_the_build(world: dict) -> None:
    """A fast-decode index: the upload is decoded as load_image(min_side) (the build's pixels), so the score is
    ``index.search([path])``'s. Without fast decode the memory-bound rule stays (draft to >= 2 x the target, then
    reduce()): close, not equal, to the full decode of the build."""
    from vitrieval.serve import create_app

    for which in ("fast", "full"):
        index = world[which]
        client = TestClient(create_app(index))
        for path in world["images"][:3]:
            r = client.post("/search?k=1", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
            assert r.status_code == 200, r.text
            (top,) = r.json()["results"]
            (hit,) = index.search([path], k=1)[0]
            assert top["id"] == hit.id and hit.score >= 1 - 1e-5
            if which == "fast":
                assert abs(top["score"] - hit.score) <= 1e-5
            else:
                assert top["score"] >= 0.999


def test_an_onnx_build_decodes_as_the_torch_build(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("onnxruntime")
    from onnx_world import onnx_world

    model = onnx_world(tmp_path_factory)["model"]
    root = tmp_path_factory.mktemp("fast_decode_onnx")
    images = write_jpegs(root / "photos")
    common = {"factory": "Flat", "num_workers": 0, "progress": False, "batch_size": 4}
    for fast in (True, False):
        torch_index = Index.build(model, root / "photos", root / f"torch{fast}.idx", fast_decode=fast, **common)
        onnx_index = Index.build(model, root / "photos", root / f"onnx{fast}.idx", fast_decode=fast,
                                 runtime="onnx", **common)
        assert onnx_index.info["preprocessing"]["fast_decode"] is fast
        for path in images:
            assert np.abs(stored(onnx_index, path) - stored(torch_index, path)).max() <= 1e-4
            (hit,) = onnx_index.search([path], k=1)[0]
            assert hit.path == str(path) and hit.score >= 1 - 1e-5
