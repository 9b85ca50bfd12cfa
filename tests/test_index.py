"""vitrieval.index and the index / search commands, on ~30 generated images and the tiny test model."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vitrieval.config import ModelConfig
from vitrieval.index import (
    APPROXIMATE_FACTORY,
    AUTO_EXACT_LIMIT,
    Index,
    IndexFormatError,
    ModelMismatchError,
    resolve_factory,
)
from vitrieval.model import Encoder, load

COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (240, 200, 20), (150, 40, 180), (20, 180, 190),
           (250, 120, 10), (90, 90, 90), (255, 105, 180), (120, 70, 20), (0, 90, 60)]
SHAPES = ("ellipse", "rectangle", "triangle", "cross", "stripes")


def make_model(directory: Path, seed: int = 0) -> Path:
    """The tiny test encoder (DeiT-Tiny layout, 32 px, patch 8, random weights) saved to ``directory``."""
    torch.manual_seed(seed)
    return Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8)).save(
        directory)


def draw(colour: tuple[int, int, int], shape: str, dark: bool, size: int = 48) -> Image.Image:
    """A coloured shape on a light or dark background."""
    img = Image.new("RGB", (size, size), (20, 20, 20) if dark else (250, 250, 250))
    d = ImageDraw.Draw(img)
    s = size / 48
    if shape == "ellipse":
        d.ellipse((8 * s, 8 * s, 40 * s, 40 * s), fill=colour)
    elif shape == "rectangle":
        d.rectangle((10 * s, 14 * s, 38 * s, 34 * s), fill=colour)
    elif shape == "triangle":
        d.polygon([(24 * s, 6 * s), (42 * s, 40 * s), (6 * s, 40 * s)], fill=colour)
    elif shape == "cross":
        d.rectangle((20 * s, 4 * s, 28 * s, 44 * s), fill=colour)
        d.rectangle((4 * s, 20 * s, 44 * s, 28 * s), fill=colour)
    else:
        for x in range(0, size, int(8 * s)):
            d.rectangle((x, 0, x + 3 * s, size - 1), fill=colour)
    return img


def make_images(root: Path, colours: list[tuple[int, int, int]], prefix: str = "img", corrupt: int = 0,
                size: int = 48) -> list[Path]:
    """One image per (colour, shape), alternating backgrounds, plus ``corrupt`` unreadable files; sorted paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    i = 0
    for colour in colours:
        for shape in SHAPES:
            p = root / f"{prefix}{i:03d}_{shape}.png"
            draw(colour, shape, dark=bool(i % 2), size=size).save(p)
            paths.append(p)
            i += 1
    for j in range(corrupt):
        p = root / f"{prefix}_corrupt{j}.jpg"
        p.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
        paths.append(p)
    return sorted(paths)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model, 30 images + 1 corrupt file, and a Flat index of them (built once for the module)."""
    root = tmp_path_factory.mktemp("index")
    model = make_model(root / "model")
    images = make_images(root / "images", COLOURS[:6], corrupt=1)
    index = Index.build(model, root / "images", root / "flat.idx", factory="Flat", num_workers=0, progress=False)
    return {"root": root, "model": model, "images": images, "index_dir": root / "flat.idx", "index": index}


def good_images(world: dict) -> list[Path]:
    return [p for p in world["images"] if "corrupt" not in p.name]


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
    assert info["preprocessing"] == {"resize": "shorter", "amp": "off"}
    rows = [json.loads(line) for line in (d / "metadata.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(30))
    assert {r["path"] for r in rows} == {str(p.resolve()) for p in good_images(world)}
    assert all(r["label"] is None for r in rows)
    assert (d / "index.faiss").stat().st_size > 30 * 192 * 4
    assert sorted(p.name for p in (d / "shards").iterdir()) == ["00000.json", "00000.npy"]


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


def test_too_few_descriptors_for_the_factory_is_a_clear_error(world: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs at least 64 descriptors.*IVF64.*has 30"):
        Index.build(world["model"], good_images(world), tmp_path / "x.idx", factory="IVF64,Flat", num_workers=0,
                    progress=False)
    with pytest.raises(ValueError, match=r"needs at least 256 descriptors.*PQ8"):
        Index.build(world["model"], good_images(world), factory="IVF2,PQ8", num_workers=0, progress=False)
    with pytest.raises(ValueError, match="faiss cannot build index 'Nonsense12'"):
        Index.build(world["model"], good_images(world), factory="Nonsense12", num_workers=0, progress=False)


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

    def failing_on_third(encoder, table, **kwargs):
        calls.append(len(table))
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real_extract(encoder, table, **kwargs)

    d = tmp_path / "resume.idx"
    monkeypatch.setattr(index_module, "extract", failing_on_third)
    with pytest.raises(KeyboardInterrupt):
        Index.build(world["model"], world["images"], d, factory="Flat", num_workers=0, shard_size=10, progress=False)
    assert calls == [10, 10, 10]
    assert sorted(p.name for p in (d / "shards").iterdir()) == ["00000.json", "00000.npy", "00001.json", "00001.npy"]
    assert not (d / "index.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in (d / "shards").iterdir()}

    calls.clear()
    monkeypatch.setattr(index_module, "extract", lambda encoder, table, **kw: (calls.append(len(table)),
                                                                               real_extract(encoder, table, **kw))[1])
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


def test_inconsistent_or_foreign_folders_are_refused(world: dict, tmp_path: Path) -> None:
    d = tmp_path / "broken.idx"
    shutil.copytree(world["index_dir"], d)
    lines = (d / "metadata.jsonl").read_text().splitlines()
    (d / "metadata.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(IndexFormatError, match="inconsistent index.*29 metadata rows, 30 vectors"):
        Index.load(d)
    with pytest.raises(IndexFormatError, match="not a vitrieval index"):
        Index.load(tmp_path)
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a vitrieval index; choose another -o"):
        Index.build(world["model"], good_images(world)[:2], foreign, num_workers=0, progress=False)


def test_csv_table_labels_reach_the_hits(world: dict, tmp_path: Path) -> None:
    paths = good_images(world)[:10]
    csv = tmp_path / "table.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{i % 3}\n" for i, p in enumerate(paths)))
    index = Index.build(world["model"], csv, num_workers=0, progress=False)
    hits = index.search(paths, k=1)
    assert [h[0].label for h in hits] == [i % 3 for i in range(10)]


def _cli(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vitrieval")
    sub = parser.add_subparsers(dest="command")
    module.add_parser(sub)
    return module.run(parser.parse_args(argv))


def test_cli_index_add_and_search(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vitrieval.cli import CLIError, index_cmd, search_cmd

    out = tmp_path / "cli.idx"
    images = tmp_path / "images"
    shutil.copytree(world["root"] / "images", images)
    assert _cli(index_cmd, ["index", "--checkpoint", str(world["model"]), "--images", str(images), "-o", str(out),
                            "--factory", "Flat", "--num-workers", "0", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "indexed 30 image(s)" in text and "1 unreadable skipped" in text and "img_corrupt0.jpg" in text

    make_images(tmp_path / "more", COLOURS[7:8], prefix="more")
    assert _cli(index_cmd, ["index", "--images", str(tmp_path / "more"), "-o", str(out), "--add",
                            "--num-workers", "0", "--no-progress"]) == 0
    assert "30 -> 35" in capsys.readouterr().out
    assert len(Index.load(out)) == 35

    query = sorted((tmp_path / "more").iterdir())[2]
    assert _cli(search_cmd, ["search", "--index", str(out), str(query), "-k", "3", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload[0]["query"] == str(query) and len(payload[0]["results"]) == 3
    top = payload[0]["results"][0]
    assert top["rank"] == 1 and top["path"] == str(query.resolve()) and top["score"] == pytest.approx(1, abs=1e-4)
    assert set(top) == {"rank", "id", "path", "label", "score"}

    assert _cli(search_cmd, ["search", "--index", str(out), str(query), "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"query: {query}" and lines[1].split() == ["rank", "score", "label", "path"]
    assert lines[2].split()[0] == "1" and lines[2].split()[-1] == str(query.resolve()) and len(lines) == 4

    with pytest.raises(CLIError, match="cannot read image"):
        _cli(search_cmd, ["search", "--index", str(out), str(images / "img_corrupt0.jpg")])
    with pytest.raises(CLIError, match="--checkpoint is required"):
        _cli(index_cmd, ["index", "--images", str(images), "-o", str(tmp_path / "x.idx")])
    with pytest.raises(CLIError, match="nprobe applies to IVF"):
        _cli(search_cmd, ["search", "--index", str(out), str(query), "--nprobe", "4"])


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


def test_cli_serve_builds_the_app_for_uvicorn(world: dict, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    import uvicorn
    from fastapi.testclient import TestClient

    from vitrieval.cli import CLIError, serve_cmd

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    assert _cli(serve_cmd, ["serve", "--index", str(world["index_dir"]), "--port", "8123",
                            "--max-upload-mb", "2", "--max-k", "20"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8123
    assert "serving 30 images" in capsys.readouterr().out
    health = TestClient(seen["app"]).get("/healthz").json()
    assert health["count"] == 30 and health["max_k"] == 20 and health["max_upload_bytes"] == 2 * 2 ** 20
    with pytest.raises(CLIError, match="--port"):
        _cli(serve_cmd, ["serve", "--index", str(world["index_dir"]), "--port", "70000"])
