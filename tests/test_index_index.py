"""vitrieval.index.Index: search, reload, refusals of another model, add, and folders that are not indexes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index_world import COLOURS, build_world, good_images, make_images, make_model
from vitrieval.index import Index, IndexFormatError, ModelMismatchError
from vitrieval.index.store import generation_dir
from vitrieval.model import load


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model, 30 images + 1 corrupt file, and a Flat index of them (built once for the module)."""
    return build_world(tmp_path_factory.mktemp("index"))


def test_indexed_image_finds_itself_first(world: dict) -> None:
    index = world["index"]
    paths = good_images(world)
    results = index.search(paths, k=5)
    assert len(results) == 30 and all(len(hits) == 5 for hits in results)
    for path, hits in zip(paths, results):
        assert hits[0].path == str(path.resolve())
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[1].score < hits[0].score
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # k larger than the collection: every image once, no padding
    assert len(index.search(paths[:1], k=100)[0]) == 30


def test_reload_gives_identical_results(world: dict) -> None:
    first = world["index"].search(good_images(world)[:8], k=7)
    again = Index.load(world["index_dir"]).search(good_images(world)[:8], k=7)
    assert [[h.id for h in hits] for hits in first] == [[h.id for h in hits] for hits in again]
    np.testing.assert_allclose([[h.score for h in hits] for hits in first],
                               [[h.score for h in hits] for hits in again], atol=1e-6)


def test_search_by_descriptors_and_refusals(world: dict) -> None:
    index = world["index"]
    z = index.embed(good_images(world)[3:4])
    assert z.shape == (1, 192) and z.dtype == np.float32
    hits = index.search(z[0], k=1, fingerprint=index.encoder.fingerprint())[0]
    assert hits[0].path == str(good_images(world)[3].resolve())
    with pytest.raises(ModelMismatchError, match=r"shape \(1, 64\).*192-d"):
        index.search(np.zeros((1, 64), np.float32), k=3)
    with pytest.raises(ModelMismatchError, match="another|index was built with"):
        index.search(z, k=3, fingerprint="0123456789abcdef")
    with pytest.raises(ValueError, match="k must be"):
        index.search(z, k=0)


def test_a_changed_model_is_refused(world: dict, tmp_path: Path) -> None:
    other = make_model(tmp_path / "other", seed=1)
    index = Index.load(world["index_dir"], checkpoint=other)
    with pytest.raises(ModelMismatchError, match="changed since the index was built"):
        index.search(good_images(world)[:1], k=1)
    other_descriptors = load(other).embed([Image.open(good_images(world)[0])])
    with pytest.raises(ModelMismatchError, match="embed the queries with the index's model"):
        Index.load(world["index_dir"]).search(other_descriptors, k=1, fingerprint=load(other).fingerprint())


def test_add_grows_the_index_and_new_images_are_found(world: dict, tmp_path: Path) -> None:
    d = tmp_path / "copy.idx"
    shutil.copytree(world["index_dir"], d)
    new = make_images(tmp_path / "new", COLOURS[6:7], prefix="new", corrupt=1)
    index = Index.load(d)
    report = index.add(tmp_path / "new", num_workers=0, progress=False)
    assert (report.added, len(report.skipped), report.already_indexed) == (5, 1, 0)
    assert len(index) == 35
    reloaded = Index.load(d)
    assert len(reloaded) == 35 and json.loads((d / "index.json").read_text())["count"] == 35
    fresh = [p for p in new if "corrupt" not in p.name]
    for path, hits in zip(fresh, reloaded.search(fresh, k=2)):
        assert hits[0].path == str(path.resolve()) and hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].id >= 30
    assert len(reloaded.skipped) == 2  # the build's corrupt file and the new one
    again = reloaded.add(tmp_path / "new", num_workers=0, progress=False)
    assert (again.added, again.already_indexed) == (0, 5) and len(reloaded) == 35


def test_inconsistent_or_foreign_folders_are_refused(world: dict, tmp_path: Path) -> None:
    d = tmp_path / "broken.idx"
    shutil.copytree(world["index_dir"], d)
    db = sqlite3.connect(generation_dir(d) / "rows.sqlite")  # a row fewer than the vectors (same file size)
    with db:
        db.execute("DELETE FROM rows WHERE id = 29")
    db.close()
    with pytest.raises(IndexFormatError, match="inconsistent index.*29 rows, 30 vectors"):
        Index.load(d)
    with pytest.raises(IndexFormatError, match="not a vitrieval index"):
        Index.load(tmp_path)
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a vitrieval index; choose another -o"):
        Index.build(world["model"], good_images(world)[:2], foreign, num_workers=0, progress=False)
