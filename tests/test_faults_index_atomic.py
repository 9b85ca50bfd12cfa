"""Issue 14, case 3: an index folder is atomic as a whole. An update writes a new generation folder, then swaps
``index.json`` to it, then removes the old one; killed at any moment (SIGKILL included), the folder loads and
answers as before the update or as after it, and the next update clears what the killed one left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from index_world import COLOURS, build_world, good_images, make_images, make_model, read_rows
from vitrieval.index import FORMAT_VERSION, Index, IndexFormatError, faiss_store, store
from vitrieval.index.store import generation_dir

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("atomic")
    world = build_world(root)
    world["new"] = make_images(root / "new", COLOURS[6:8], prefix="new")
    world["other_model"] = make_model(root / "other_model", seed=3)
    return world


def _answers(directory: Path, queries: list[Path]) -> tuple[int, list[list[tuple[int, float]]]]:
    index = Index.load(directory)
    hits = index.search([str(q) for q in queries], k=3)
    return len(index), [[(h.id, round(h.score, 5)) for h in row] for row in hits]


def _copy(world: dict, tmp_path: Path) -> Path:
    directory = tmp_path / "cat.idx"
    shutil.copytree(world["index_dir"], directory)
    return directory


class Killed(BaseException):
    """Stands for the process dying at that point (not an Exception: nothing may catch and carry on)."""


CRASH_POINTS = {
    "after the new rows": (faiss_store.FaissSnapshot, "write_rows", "after"),
    "while writing the new index.faiss": (faiss_store, "atomic_path", "inside"),
    "before the swap": (store, "write_manifest", "before"),
    "after the swap, before the old generation is removed": (store, "_remove_other_generations", "before"),
}


def _crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    owner, name, when = CRASH_POINTS[point]
    original = getattr(owner, name)

    if when == "inside":
        from contextlib import contextmanager

        @contextmanager
        def crashing(target):
            with original(target) as tmp:
                tmp.write_bytes(b"half a faiss file")
                raise Killed(point)
                yield tmp  # pragma: no cover

        monkeypatch.setattr(owner, name, crashing)
        return

    def crashing(*args, **kwargs):
        if when == "after":
            original(*args, **kwargs)
        raise Killed(point)

    monkeypatch.setattr(owner, name, crashing)


@pytest.mark.parametrize("point", list(CRASH_POINTS))
@pytest.mark.parametrize("update", ["add", "rebuild with another model"])
def test_a_crash_at_any_point_leaves_the_index_before_or_after(world, tmp_path, monkeypatch, point, update):
    directory = _copy(world, tmp_path)
    queries = good_images(world)[:3] + world["new"][:1]
    before = _answers(directory, queries)
    _crash_at(monkeypatch, point)
    with pytest.raises(Killed):
        if update == "add":
            Index.load(directory).add(world["root"] / "new", num_workers=0, progress=False)
        else:
            Index.build(world["other_model"], world["root"] / "images", directory, factory="Flat", num_workers=0,
                        progress=False)
    monkeypatch.undo()
    now = _answers(directory, queries)
    # an add is journalled (fsynced) before its generation is written: replayed at load, it is always "after"
    swapped = point.startswith("after the swap") or update == "add"
    if not swapped:
        assert now == before  # the old generation, whole
    else:
        assert now != before and now[0] == (before[0] + 10 if update == "add" else before[0])
    for query, row in zip(queries[:3], now[1][:3]):
        assert row[0][1] == pytest.approx(1.0, abs=1e-4), query  # an image's match with itself
    # the next update clears what the killed one left: one generation, no temporary file
    extra = make_images(tmp_path / "extra", COLOURS[8:9], prefix="x")[:1]
    assert Index.load(directory).add(extra, num_workers=0, progress=False).added == 1
    names = sorted(p.name for p in directory.iterdir())
    assert len([n for n in names if n.startswith("g")]) == 1 and not [n for n in names if n.endswith(".tmp")]
    assert not list(generation_dir(directory).glob("*.tmp"))


KILLER = textwrap.dedent("""
    import os, signal, sys
    from vitrieval.index import Index, faiss_store, store
    directory, point, update, new, images, model = sys.argv[1:7]
    owner = faiss_store.FaissSnapshot if point == "write_rows" else store
    original = getattr(owner, point)
    def die(*args, **kwargs):
        if point == "write_rows":
            original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    setattr(owner, point, die)
    if update == "add":
        Index.load(directory).add(new, num_workers=0, progress=False)
    else:
        Index.build(model, images, directory, factory="Flat", num_workers=0, progress=False)
""")


@pytest.mark.parametrize("update, point", [("add", "write_rows"), ("add", "write_manifest"),
                                           ("add", "_remove_other_generations"), ("rebuild", "write_manifest")])
def test_sigkill_during_an_update(world, tmp_path, point, update):
    directory = _copy(world, tmp_path)
    queries = good_images(world)[:2]
    before = _answers(directory, queries)
    done = subprocess.run([sys.executable, "-c", KILLER, str(directory), point, update, str(world["root"] / "new"),
                           str(world["root"] / "images"), str(world["other_model"])],
                          env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    count, answers = _answers(directory, queries)
    if point == "_remove_other_generations":  # killed after the swap: the new index, whole
        assert count == (before[0] + 10 if update == "add" else before[0])
        assert len([p for p in directory.iterdir() if p.name.startswith("g")]) == 2
    elif update == "add":  # killed before the swap: the journalled add is replayed, whole
        assert count == before[0] + 10 and answers[0][0] == before[1][0][0]
    else:
        assert (count, answers) == before
    for row in answers:
        assert row[0][1] == pytest.approx(1.0, abs=1e-4)


def test_the_parts_must_belong_together(world, tmp_path):
    directory = _copy(world, tmp_path)
    data = generation_dir(directory)
    db = sqlite3.connect(data / "rows.sqlite")  # a row more than the vectors: refused, naming the folder
    with db:
        db.execute("INSERT INTO rows VALUES (999, '/x.png', NULL, NULL)")
    db.close()
    info = json.loads((directory / "index.json").read_text())
    info["bytes"]["rows.sqlite"] = (data / "rows.sqlite").stat().st_size
    (directory / "index.json").write_text(json.dumps(info))
    with pytest.raises(IndexFormatError, match="inconsistent index.*31 rows, 30 vectors"):
        Index.load(directory)
    directory = _copy(world, tmp_path / "b")
    rows = generation_dir(directory) / "rows.sqlite"
    rows.write_bytes(rows.read_bytes() + b"\0" * 512)  # the same rows, but not the file index.json describes
    with pytest.raises(IndexFormatError, match="rows.sqlite is .* bytes.*says .*do not belong together"):
        Index.load(directory)


def _legacy(world: dict, directory: Path, version: int) -> None:
    """Rewrite the current folder ``directory`` as format ``version`` (1 or 2) wrote it: ``metadata.jsonl`` rows,
    in a generation (2) or beside ``index.json`` (1)."""
    data = generation_dir(directory)
    rows = read_rows(data)
    (data / "rows.sqlite").unlink()
    (data / "metadata.jsonl").write_text("".join(json.dumps({"id": r["id"], "path": r["path"], "label": r["label"]})
                                                 + "\n" for r in rows))
    info = json.loads((directory / "index.json").read_text())
    info["bytes"] = {name: (data / name).stat().st_size for name in ("metadata.jsonl", "index.faiss")}
    if version == 1:
        for name in ("index.faiss", "metadata.jsonl"):
            shutil.move(data / name, directory / name)
        data.rmdir()
        for key in ("generation", "bytes"):
            del info[key]
    for key in ("backend", "journal_seq", "tombstones"):
        info.pop(key, None)
    info["version"] = version
    (directory / "index.json").write_text(json.dumps(info))


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_folder_still_loads_and_becomes_a_current_generation(world, tmp_path, version):
    directory = _copy(world, tmp_path)
    _legacy(world, directory, version)
    old = Index.load(directory)
    assert len(old) == 30 and [e.path for e in old.entries()] == [str(p.resolve()) for p in good_images(world)]
    old.add(world["new"][:2], num_workers=0, progress=False)
    assert sorted(p.name for p in directory.iterdir()) == [f"g00000{2 if version == 2 else 1}", "index.json",
                                                           "journal.sqlite", "shards"]
    assert sorted(p.name for p in generation_dir(directory).iterdir()) == ["index.faiss", "rows.sqlite"]
    again = Index.load(directory)
    assert len(again) == 32 and again.info["version"] == FORMAT_VERSION
    vectors = np.stack([again.faiss_index.reconstruct(i) for i in range(30)])
    assert np.allclose(vectors, np.stack([old.faiss_index.reconstruct(i) for i in range(30)]))
