"""Issue 14, case 10: HTTP results name an image by its path relative to the indexed folder (``obj077/290.jpg``),
never by an absolute server path, and a folder laid out in classes gives labels, as the folder reader does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index_world import COLOURS, make_images, make_model
from vitrieval.data.collection import collection_table
from vitrieval.index import Index
from vitrieval.index.store import display_path
from vitrieval.serve import create_app


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two class folders holding files of the same names (every object has an ``img000_ellipse.png``)."""
    root = tmp_path_factory.mktemp("paths")
    model = make_model(root / "model")
    images = root / "collection"
    a = make_images(images / "obj077", COLOURS[:2])
    b = make_images(images / "obj10", COLOURS[2:4])
    index = Index.build(model, images, root / "cat.idx", factory="Flat", num_workers=0, progress=False)
    return {"root": root, "model": model, "images": images, "a": a, "b": b, "index": index}


def _search(app, path: Path, k: int = 3) -> list[dict]:
    r = TestClient(app).post(f"/search?k={k}", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_hits_are_named_relative_to_the_indexed_folder(classes):
    query = classes["b"][0]
    results = _search(create_app(classes["index"]), query)
    assert results[0]["path"] == f"obj10/{query.name}"  # not "img000_ellipse.png", which both objects have
    served = str(classes["root"])
    for hit in results:
        assert not hit["path"].startswith("/") and served not in hit["path"] and ".." not in hit["path"]
        assert hit["path"].split("/")[0] in ("obj077", "obj10")


def test_class_folders_give_labels_in_natural_order(classes):
    info = json.loads((classes["root"] / "cat.idx" / "index.json").read_text())
    assert info["root"] == str(classes["images"].resolve()) and info["classes"] == ["obj10", "obj077"]
    labels = {Path(e.path).parent.name: e.label for e in classes["index"].entries()}
    assert labels == {"obj10": 0, "obj077": 1}  # 10 before 77, as folder.read_folder orders them
    results = _search(create_app(classes["index"]), classes["a"][3])
    assert results[0]["label"] == 1


def test_an_index_without_a_root_falls_back_to_the_base_name(classes, tmp_path):
    old = tmp_path / "old.idx"
    shutil.copytree(classes["root"] / "cat.idx", old)
    info = json.loads((old / "index.json").read_text())
    del info["root"], info["classes"]  # as written before the root was kept
    (old / "index.json").write_text(json.dumps(info))
    query = classes["a"][1]
    assert _search(create_app(Index.load(old)), query)[0]["path"] == query.name


def test_display_path_never_leaks_a_server_path():
    assert display_path("/srv/data/obj077/290.jpg", "/srv/data") == "obj077/290.jpg"
    assert display_path("/elsewhere/290.jpg", "/srv/data") == "290.jpg"
    assert display_path("/srv/data/obj077/290.jpg", None) == "290.jpg"


def test_a_flat_folder_or_a_mixed_one_has_no_labels(tmp_path):
    make_images(tmp_path / "flat", COLOURS[:1])
    assert set(collection_table(tmp_path / "flat").labels.tolist()) == {-1}
    mixed = tmp_path / "mixed"
    make_images(mixed / "a", COLOURS[:1])
    make_images(mixed / "b", COLOURS[1:2])
    make_images(mixed, COLOURS[2:3], prefix="top")  # images outside any class folder: not a class layout
    assert set(collection_table(mixed).labels.tolist()) == {-1}
    split = tmp_path / "split"
    make_images(split / "train" / "s1", COLOURS[:1])
    make_images(split / "test" / "s2", COLOURS[1:2])
    table = collection_table(split)
    assert table.extras["classes"] == ["s1", "s2"] and sorted(set(table.labels.tolist())) == [0, 1]


def test_add_numbers_class_folders_by_the_index_classes(classes, tmp_path):
    index_dir = tmp_path / "grow.idx"
    shutil.copytree(classes["root"] / "cat.idx", index_dir)
    index = Index.load(index_dir)
    more = tmp_path / "more"
    make_images(more / "obj077", COLOURS[4:5], prefix="new")
    make_images(more / "obj200", COLOURS[5:6], prefix="new")
    assert index.add(more, num_workers=0, progress=False).added == 10
    assert index.info["classes"] == ["obj10", "obj077", "obj200"]
    added = {Path(e.path).parent.name: e.label for e in index.entries() if Path(e.path).name.startswith("new")}
    assert added == {"obj077": 1, "obj200": 2}
    # every row names its class folder: the built ones and the added ones alike, in hits too
    assert all(e.class_name == Path(e.path).parent.name for e in index.entries())
    top = _search(create_app(index), more / "obj200" / "new000_ellipse.png")[0]
    assert (top["path"], top["class_name"], top["label"]) == ("new000_ellipse.png", "obj200", 2)
