"""Issue 14, case 3: an index folder is atomic as a whole. An update writes a new generation folder, then swaps
``index.json`` to it, then removes the old one; killed at any moment (SIGKILL included), the folder loads and
answers as before the update or as after it, and the next update clears what the killed one left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from index_world import COLOURS, build_world, good_images, make_images, make_model
from vitrieval.index import Index, IndexFormatError, store
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
    "after the new metadata": ("atomic_write_text", "after"),
    "while writing the new index.faiss": ("atomic_path", "inside"),
    "before the swap": ("atomic_write_json", "before"),
    "after the swap, before the old generation is removed": ("_remove_other_generations", "before"),
}


def _crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    name, when = CRASH_POINTS[point]
    original = getattr(store, name)

    if when == "inside":
        from contextlib import contextmanager

        @contextmanager
        def crashing(target):
            with original(target) as tmp:
                tmp.write_bytes(b"half a faiss file")
                raise Killed(point)
                yield tmp  # pragma: no cover

        monkeypatch.setattr(store, name, crashing)
        return

    def crashing(*args, **kwargs):
        if when == "after":
            original(*args, **kwargs)
        raise Killed(point)

    monkeypatch.setattr(store, name, crashing)


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
    from vitrieval.index import Index, store
    directory, point, update, new, images, model = sys.argv[1:7]
    original = getattr(store, point)
    def die(*args, **kwargs):
        if point == "atomic_write_text":
            original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    setattr(store, point, die)
    if update == "add":
        Index.load(directory).add(new, num_workers=0, progress=False)
    else:
        Index.build(model, images, directory, factory="Flat", num_workers=0, progress=False)
""")


@pytest.mark.parametrize("update, point", [("add", "atomic_write_text"), ("add", "atomic_write_json"),
                                           ("add", "_remove_other_generations"), ("rebuild", "atomic_write_json")])
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
    with open(data / "metadata.jsonl", "a") as fh:  # a row more than the vectors: refused, naming the folder
        fh.write('{"id": 999, "path": "/x.png", "label": null}\n')
    with pytest.raises(IndexFormatError, match="inconsistent index.*31 metadata rows, 30 vectors"):
        Index.load(directory)
    directory = _copy(world, tmp_path / "b")
    metadata = generation_dir(directory) / "metadata.jsonl"
    metadata.write_text(metadata.read_text() + "\n")  # the same rows, but not the file index.json describes
    with pytest.raises(IndexFormatError, match="metadata.jsonl is .* bytes.*says .*do not belong together"):
        Index.load(directory)


def test_a_version_1_folder_still_loads_and_becomes_a_generation(world, tmp_path):
    directory = _copy(world, tmp_path)
    data = generation_dir(directory)
    info = json.loads((directory / "index.json").read_text())
    for name in ("index.faiss", "metadata.jsonl"):
        shutil.move(data / name, directory / name)
    data.rmdir()
    for key in ("generation", "bytes"):
        del info[key]
    info["version"] = 1
    (directory / "index.json").write_text(json.dumps(info))
    old = Index.load(directory)
    assert len(old) == 30
    old.add(world["new"][:2], num_workers=0, progress=False)
    assert sorted(p.name for p in directory.iterdir()) == ["g000001", "index.json", "shards"]
    again = Index.load(directory)
    assert len(again) == 32 and again.info["version"] == 2
    vectors = np.stack([again.faiss_index.reconstruct(i) for i in range(30)])
    assert np.allclose(vectors, np.stack([old.faiss_index.reconstruct(i) for i in range(30)]))
