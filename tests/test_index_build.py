"""vitrieval.index.build: building an index (shard by shard, resumable), from images, a CSV or descriptors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index_world import build_world, good_images, read_rows
from vitrieval.index import APPROXIMATE_FACTORY, AUTO_EXACT_LIMIT, Index, ModelMismatchError, resolve_factory
from vitrieval.index.store import generation_dir
from vitrieval.model import load


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model, 30 images + 1 corrupt file, and a Flat index of them (built once for the module)."""
    return build_world(tmp_path_factory.mktemp("index"))


def test_build_writes_complete_index_and_lists_the_corrupt_file(world: dict) -> None:
    index, d = world["index"], world["index_dir"]
    assert len(index) == 30
    corrupt = [str(p.resolve()) for p in world["images"] if "corrupt" in p.name]
    assert index.skipped == corrupt
    info = json.loads((d / "index.json").read_text())
    assert info["count"] == 30 and info["factory"] == "Flat" and info["descriptor_dim"] == 192
    assert info["checkpoint"] == str(world["model"].resolve()) and Path(info["checkpoint"]).is_absolute()
    assert info["fingerprint"] == load(world["model"]).fingerprint() == index.fingerprint
    assert info["data_config"]["image_size"] == 32 and info["skipped"] == corrupt
    assert info["preprocessing"] == {"resize": "shorter", "amp": "off", "fast_decode": True}
    assert info["generation"] == 1
    assert sorted(p.name for p in d.iterdir()) == ["g000001", "index.json", "journal.sqlite", "shards"]
    data = generation_dir(d)
    rows = read_rows(data)
    assert [r["id"] for r in rows] == list(range(30))
    assert {r["path"] for r in rows} == {str(p.resolve()) for p in good_images(world)}
    assert all(r["label"] is None for r in rows)
    assert (data / "index.faiss").stat().st_size > 30 * 192 * 4
    assert sorted(p.name for p in (d / "shards").iterdir()) == ["00000.csv", "00000.json", "00000.npy"]


def test_too_few_descriptors_for_the_factory_is_a_clear_error(world: dict, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked before any image is embedded (a typo used to cost the whole collection's embedding) and before the
    index folder or its shards are made."""
    import vitrieval.index.build as build

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded images before checking the factory")

    monkeypatch.setattr(build, "extract", no_embedding)
    with pytest.raises(ValueError, match=r"could not parse index string Flatt \(e.g. Flat, HNSW32"):
        Index.build(world["model"], good_images(world), tmp_path / "x.idx", factory="Flatt", num_workers=0,
                    progress=False)
    with pytest.raises(ValueError, match=r"needs at least 64 descriptors.*IVF64.*has 30"):
        Index.build(world["model"], good_images(world), tmp_path / "x.idx", factory="IVF64,Flat", num_workers=0,
                    progress=False)
    with pytest.raises(ValueError, match=r"needs at least 256 descriptors.*PQ8"):
        Index.build(world["model"], good_images(world), factory="IVF2,PQ8", num_workers=0, progress=False)
    with pytest.raises(ValueError, match="faiss cannot build index 'Nonsense12'"):
        Index.build(world["model"], good_images(world), factory="Nonsense12", num_workers=0, progress=False)
    assert not (tmp_path / "x.idx").exists()


def test_auto_factory_is_exact_for_small_collections(world: dict) -> None:
    assert resolve_factory("auto", 30) == "Flat"
    assert resolve_factory("auto", AUTO_EXACT_LIMIT - 1) == "Flat"
    assert resolve_factory("auto", AUTO_EXACT_LIMIT) == APPROXIMATE_FACTORY
    index = Index.build(world["model"], good_images(world)[:5], num_workers=0, progress=False)
    assert index.factory == "Flat" and index.info["requested_factory"] == "auto" and index.directory is None


def test_resume_reuses_finished_shards(world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vitrieval.index.build as index_module

    real_extract = index_module.extract
    calls: list[int] = []

    def failing_on_third(encoder, table, *args, **kwargs):
        calls.append(len(table))
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_extract(encoder, table, *args, **kwargs)

    d = tmp_path / "resume.idx"
    monkeypatch.setattr(index_module, "extract", failing_on_third)
    with pytest.raises(KeyboardInterrupt):
        Index.build(world["model"], world["images"], d, factory="Flat", num_workers=0, shard_size=10, progress=False)
    assert calls == [10, 10, 10]
    assert sorted(p.name for p in (d / "shards").iterdir()) == [f"0000{s}.{x}" for s in (0, 1)
                                                                for x in ("csv", "json", "npy")]
    assert not (d / "index.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (d / "shards").iterdir()}

    calls.clear()
    monkeypatch.setattr(index_module, "extract", lambda encoder, table, *a, **kw: (
        calls.append(len(table)), real_extract(encoder, table, *a, **kw))[1])
    index = Index.build(world["model"], world["images"], d, factory="Flat", num_workers=0, shard_size=10,
                        progress=False)
    assert calls == [10, 1]  # shards 2 and 3 (the corrupt file is the 31st path) embedded, 0 and 1 reused
    assert {p.name: p.stat().st_mtime_ns for p in (d / "shards").iterdir() if p.name in mtimes} == mtimes
    assert len(index) == 30 and len(index.skipped) == 1
    reference = world["index"]
    assert [e.path for e in index.entries()] == [e.path for e in reference.entries()]
    q = good_images(world)[:5]
    np.testing.assert_allclose([[h.score for h in r] for r in index.search(q, k=4)],
                               [[h.score for h in r] for r in reference.search(q, k=4)], atol=1e-5)

    calls.clear()  # a complete rerun embeds nothing
    Index.build(world["model"], world["images"], d, factory="Flat", num_workers=0, shard_size=10, progress=False)
    assert calls == []


def test_csv_table_labels_reach_the_hits(world: dict, tmp_path: Path) -> None:
    paths = good_images(world)[:10]
    csv = tmp_path / "table.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{i % 3}\n" for i, p in enumerate(paths)))
    index = Index.build(world["model"], csv, num_workers=0, progress=False)
    hits = index.search(paths, k=1)
    assert [h[0].label for h in hits] == [i % 3 for i in range(10)]


def test_from_descriptors_and_single_path_queries(world: dict, tmp_path: Path) -> None:
    paths = good_images(world)[:6]
    z = world["index"].embed(paths)
    index = Index.from_descriptors(world["model"], z, paths, labels=[7] * 6, out_dir=tmp_path / "d.idx",
                                   factory="Flat")
    hits = Index.load(tmp_path / "d.idx").search(str(paths[4]), k=2)[0]
    assert hits[0].path == str(paths[4].resolve()) and hits[0].label == 7
    assert hits[0].score == pytest.approx(1, abs=1e-4)
    assert len(index) == 6 and index.info["preprocessing"]["amp"] == "off"
    with pytest.raises(ModelMismatchError, match="descriptors are 32-d"):
        Index.from_descriptors(world["model"], np.ones((6, 32), np.float32), paths)
    with pytest.raises(ValueError, match="do not match 5 paths"):
        Index.from_descriptors(world["model"], z, paths[:5])
