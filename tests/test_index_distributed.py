"""``vitrieval index`` and ``Index.build`` under torchrun: 2 CPU ranks (gloo) build exactly the one-process index.

One launch (``python -m torch.distributed.run --nproc_per_node 2 tests/test_index_distributed.py WORKDIR``) runs
every scenario in one process group, and the tests compare its folders with one-process builds made here:

1. ``vitrieval index`` (the sub-command's ``run``) builds 22 images (one unreadable) in shards of 10 with batches of
   4: 22 is not a multiple of 2 ranks x 4, shard 1 has a ragged last batch, shard 2 (2 images, one batch) leaves
   rank 0 nothing to embed;
2. ``Index.build`` resumes a build whose shard 1 is already there: only shards 0 and 2 are embedded, by both ranks;
3. a factory the collection is too small for fails on rank 0 (faiss training): the error is raised on rank 1 too
   instead of leaving it waiting, and the command prints it once (rank 0) and exits with 2 on both ranks;
4. ``vitrieval index --add`` appends 5 new images, 1 already indexed one and 1 unreadable file.

Every writer of the ``vitrieval.index`` modules is wrapped to leave ``marks/<what>.rank<r>``, and every ``extract``
of a row range is recorded, so the tests see who wrote and who embedded what. Descriptors, ids and paths are compared
exactly (the shards are whole batches of the one-process batching). About 25 s on two busy cores.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from index_world import read_rows
from torchrun_launch import launch, torchrun, write_tracker

BATCH, SHARD = 4, 10
N_GOOD, BAD_AT = 21, 12  # 22 paths, the unreadable one 13th (shard 1, first batch: rank 0's part)
N_NEW = 5  # --add: 5 new images, then one already indexed, then an unreadable one (last batch: rank 1's part)
TIMEOUT = 180


# ------------------------------------------------------------------------------------------------------------
# data (made by the test process, read by the launched ranks)

def _make_world(work: Path) -> None:
    import torch
    from PIL import Image, ImageDraw

    from vitrieval.config import ModelConfig
    from vitrieval.model import Encoder

    torch.manual_seed(0)
    Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8,
                        depth=2)).save(work / "model")
    rng = np.random.default_rng(0)

    def image(path: Path) -> None:
        img = Image.new("RGB", (40, 40), tuple(int(v) for v in rng.integers(0, 256, 3)))
        x, y = (int(v) for v in rng.integers(2, 16, 2))
        ImageDraw.Draw(img).ellipse([x, y, x + 20, y + 18], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        img.save(path)

    (work / "images").mkdir()
    for i in range(N_GOOD + 1):
        path = work / "images" / f"img{i:03d}.png"
        path.write_bytes(b"not an image") if i == BAD_AT else image(path)
    (work / "new").mkdir()
    for i in range(N_NEW):
        image(work / "new" / f"new{i}.png")
    (work / "new" / "zz_broken.png").write_bytes(b"not an image either")
    # the --add input, in this order: the new images, one the index already holds, the unreadable file
    rows = [work / "new" / f"new{i}.png" for i in range(N_NEW)] + [work / "images" / "img000.png",
                                                                      work / "new" / "zz_broken.png"]
    (work / "add.csv").write_text("path\n" + "".join(f"{p}\n" for p in rows))


# ------------------------------------------------------------------------------------------------------------
# the worker (runs in the launched ranks)

def _instrument(marks: Path, rank: int, rows: list) -> None:
    """Leave ``marks/<what>.rank<r>`` on every write of the index modules; record every extracted row range."""
    import vitrieval.embed
    import vitrieval.index.build
    import vitrieval.index.shard_cache
    import vitrieval.index.store
    from vitrieval.index import Index

    tracked = write_tracker(marks, rank)

    # every writer, where the index modules look it up: (module, name) -> mark
    writers = {(vitrieval.index.build, "write_shard"): "_write_shard",
               (vitrieval.index.build, "remove_stale_shards"): "_remove_stale_shards",
               (vitrieval.index.shard_cache, "save_npy"): "_save_npy"}
    for module in (vitrieval.index.shard_cache, vitrieval.index.store):
        for name in ("atomic_write_json", "atomic_write_text", "atomic_path"):
            if hasattr(module, name):
                writers[module, name] = name
    for (module, name), mark in writers.items():
        setattr(module, name, tracked(getattr(module, name), mark))
    Index.save = tracked(Index.save, "save")
    real_rows = vitrieval.embed._extract_rows

    def recording(encoder, table, row_range, *args, **kwargs):
        rows.append([table.name, row_range.start, row_range.stop])
        return real_rows(encoder, table, row_range, *args, **kwargs)

    vitrieval.embed._extract_rows = recording


def _command(argv: list[str]) -> int:
    import argparse

    from vitrieval.cli import index_cmd

    parser = argparse.ArgumentParser(prog="vitrieval")
    index_cmd.add_parser(parser.add_subparsers(dest="command"))
    return index_cmd.run(parser.parse_args(argv))


def _worker(work: Path) -> None:
    import logging

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from vitrieval.distributed import DistContext
    from vitrieval.index import INFO_FILE, Index

    ctx = DistContext.from_env()
    out = work / "out"
    rows: list = []
    _instrument(work / "marks", ctx.rank, rows)
    common = ["--checkpoint", str(work / "model"), "--batch-size", str(BATCH), "--shard-size", str(SHARD),
              "--workers", "0", "--device", "cpu", "--no-progress"]
    result: dict = {"world": ctx.world_size}

    # 1. the command builds
    code = _command(["index", "--images", str(work / "images"), "-o", str(out / "cli.idx"), "--factory", "Flat",
                     *common])
    result["build"] = {"code": code, "rows": rows[:], "complete": (out / "cli.idx" / INFO_FILE).is_file()}

    # 2. the Python API resumes a build of which shard 1 is finished
    rows.clear()
    if ctx.is_main:
        (out / "api.idx" / "shards").mkdir(parents=True)
        for suffix in ("npy", "csv", "json"):  # a shard a previous build wrote
            shutil.copy(out / "cli.idx" / "shards" / f"00001.{suffix}", out / "api.idx" / "shards")
    ctx.barrier()
    index = Index.build(work / "model", work / "images", out / "api.idx", factory="Flat", batch_size=BATCH,
                        num_workers=0, shard_size=SHARD, device="cpu", progress=False)
    result["resume"] = {"returned": type(index).__name__, "rows": rows[:],
                        "complete": (out / "api.idx" / INFO_FILE).is_file(),
                        "len": None if index is None else len(index)}

    # 3. rank 0's factory check fails before any embedding: every rank raises (the command: rank 0 prints it,
    # every rank returns 2)
    rows.clear()
    try:
        Index.build(work / "model", work / "images", out / "cli.idx", factory="IVF64,Flat", batch_size=BATCH,
                    num_workers=0, shard_size=SHARD, device="cpu", progress=False)
        api_error = None
    except ValueError as exc:
        api_error = [str(exc), getattr(exc, "raised_on_rank", None)]
    code = _command(["index", "--images", str(work / "images"), "-o", str(out / "cli.idx"), "--factory",
                     "IVF64,Flat", *common])
    result["failure"] = {"api": api_error, "cli_code": code, "rows": rows[:]}

    # 4. the command appends
    rows.clear()
    if ctx.is_main:
        shutil.copytree(out / "cli.idx", out / "add.idx")
    ctx.barrier()
    code = _command(["index", "--table", str(work / "add.csv"), "-o", str(out / "add.idx"), "--add",
                     "--batch-size", str(BATCH), "--workers", "0", "--device", "cpu", "--no-progress"])
    result["add"] = {"code": code, "rows": rows[:]}

    (work / f"result.rank{ctx.rank}.json").write_text(json.dumps(result))
    ctx.barrier()
    ctx.shutdown()


# ------------------------------------------------------------------------------------------------------------
# the launch and the one-process references

def _launch(work: Path) -> str:
    return launch(torchrun([str(Path(__file__).resolve()), str(work)]), work, work / "launch.log", TIMEOUT)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    from vitrieval.index import Index

    work = tmp_path_factory.mktemp("index_dist").resolve()
    _make_world(work)
    output = _launch(work)
    ref = work / "reference"
    Index.build(work / "model", work / "images", ref / "one.idx", factory="Flat", batch_size=BATCH,
                num_workers=0, shard_size=SHARD, device="cpu", progress=False, distributed=False)
    shutil.copytree(ref / "one.idx", ref / "add.idx")
    Index.load(ref / "add.idx", device="cpu").add(work / "add.csv", batch_size=BATCH, num_workers=0,
                                                  progress=False, distributed=False)
    results = [json.loads((work / f"result.rank{r}.json").read_text()) for r in (0, 1)]
    return {"work": work, "out": work / "out", "ref": ref, "output": output, "results": results}


def _contents(directory: Path) -> dict:
    """What an index folder holds: ids, paths and labels, the vectors in id order, the info without times."""
    from vitrieval.index import Index

    index = Index.load(directory)
    entries = index.entries()
    ids = np.array([e.id for e in entries], dtype=np.int64)
    vectors = np.stack([index.faiss_index.reconstruct(int(i)) for i in ids])
    info = {k: v for k, v in index.info.items() if k not in ("created", "updated", "build_seconds")}
    return {"ids": ids, "paths": [e.path for e in entries], "labels": [e.label for e in entries],
            "vectors": vectors, "info": info}


def _assert_same_index(got: Path, want: Path) -> None:
    a, b = _contents(got), _contents(want)
    assert np.array_equal(a["ids"], b["ids"])
    assert a["paths"] == b["paths"] and a["labels"] == b["labels"]
    assert a["vectors"].shape == b["vectors"].shape and a["vectors"].dtype == np.float32
    assert float(np.abs(a["vectors"] - b["vectors"]).max()) == 0.0
    assert a["info"] == b["info"]
    from vitrieval.index.store import generation_dir

    got, want = generation_dir(got), generation_dir(want)
    assert read_rows(got) == read_rows(want)
    assert (got / "index.faiss").read_bytes() == (want / "index.faiss").read_bytes()


def _shard_ranges(rows: list, table: str) -> list[tuple[int, int]]:
    return [(start, stop) for name, start, stop in rows if name == table]


# ------------------------------------------------------------------------------------------------------------
# the checks

def test_two_ranks_build_exactly_the_one_process_index(world):
    out, ref = world["out"], world["ref"]
    _assert_same_index(out / "cli.idx", ref / "one.idx")
    _assert_same_index(out / "api.idx", ref / "one.idx")
    for s in range(3):  # the resumable shards too: descriptors and their rows
        for name in (f"{s:05d}.npy", f"{s:05d}.json"):
            for built in ("cli.idx", "api.idx"):
                assert (out / built / "shards" / name).read_bytes() == (ref / "one.idx" / "shards" / name).read_bytes()
    info = json.loads((out / "cli.idx" / "index.json").read_text())
    assert info["count"] == N_GOOD and info["skipped"] == [str(world["work"] / "images" / f"img{BAD_AT:03d}.png")]
    descriptors = np.concatenate([np.load(out / "cli.idx" / "shards" / f"{s:05d}.npy") for s in range(3)])
    assert descriptors.shape == (N_GOOD, 192) and len(np.unique(descriptors, axis=0)) == N_GOOD


def test_extraction_is_sharded_in_whole_batches_without_duplicates(world):
    r0, r1 = (r["build"]["rows"] for r in world["results"])
    sizes = {"images/shard00000": 10, "images/shard00001": 10, "images/shard00002": 2}
    for table, n in sizes.items():
        parts = sorted(_shard_ranges(r0, table) + _shard_ranges(r1, table))
        assert parts[0][0] == 0 and parts[-1][1] == n, table  # covering
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:])), table  # disjoint: no padded duplicate
        assert all(start % BATCH == 0 for start, _ in parts), table  # whole batches of the one-process batching
    assert _shard_ranges(r0, "images/shard00001") == [(0, 4)] and _shard_ranges(r1, "images/shard00001") == [(4, 10)]
    assert _shard_ranges(r0, "images/shard00002") == [(0, 0)] and _shard_ranges(r1, "images/shard00002") == [(0, 2)]


def test_resume_embeds_only_the_missing_shards_and_other_ranks_return_after_the_files(world):
    r0, r1 = world["results"]
    for r in (r0, r1):
        assert {name for name, _, _ in r["resume"]["rows"]} == {"images/shard00000", "images/shard00002"}
        assert r["resume"]["complete"] and r["build"]["complete"]  # nobody returned before index.json existed
        assert r["build"]["code"] == 0 and r["add"]["code"] == 0
    assert r0["resume"]["returned"] == "Index" and r0["resume"]["len"] == N_GOOD
    assert r1["resume"]["returned"] == "NoneType"


def test_rank_zero_failure_reaches_every_rank(world):
    r0, r1 = world["results"]
    message = r0["failure"]["api"][0]
    assert "needs at least 64 descriptors" in message and f"has {N_GOOD + 1} images" in message  # before embedding
    assert r0["failure"]["api"] == r1["failure"]["api"] == [message, 0]
    assert r0["failure"]["cli_code"] == r1["failure"]["cli_code"] == 2
    assert world["output"].count(f"vitrieval index: error: {message}") == 1  # rank 0 reports it, once
    assert r0["failure"]["rows"] == r1["failure"]["rows"] == []  # every shard reused
    _assert_same_index(world["out"] / "cli.idx", world["ref"] / "one.idx")  # the failed rebuilds changed nothing


def test_two_ranks_add_like_one_process(world):
    _assert_same_index(world["out"] / "add.idx", world["ref"] / "add.idx")
    info = json.loads((world["out"] / "add.idx" / "index.json").read_text())
    assert info["count"] == N_GOOD + N_NEW
    assert str(world["work"] / "new" / "zz_broken.png") in info["skipped"]
    r0, r1 = (r["add"]["rows"] for r in world["results"])
    assert r0 == [["add", 0, 4]] and r1 == [["add", 4, 6]]  # 6 fresh rows, the unreadable one in rank 1's part


def test_only_rank_zero_writes_prints_and_logs(world):
    marks = sorted(p.name for p in (world["work"] / "marks").iterdir())
    assert marks and all(name.endswith(".rank0") for name in marks), marks
    assert {"_write_shard.rank0", "save.rank0", "atomic_path.rank0"} <= set(marks)
    leftovers = [p for p in world["work"].rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    for built in ("cli.idx", "api.idx", "add.idx"):
        names = sorted(p.name for p in (world["out"] / built).iterdir())
        generation = json.loads((world["out"] / built / "index.json").read_text())["generation"]
        assert names == [f"g{generation:06d}", "index.json", "journal.sqlite", "shards"], (built, names)
        assert sorted(p.name for p in (world["out"] / built / names[0]).iterdir()) == ["index.faiss",
                                                                                        "rows.sqlite"]
        shards = sorted(p.name for p in (world["out"] / built / "shards").iterdir())
        assert shards == [f"{s:05d}.{x}" for s in range(3) for x in ("csv", "json", "npy")], (built, shards)
    output = world["output"]
    assert output.count(f"indexed {N_GOOD} image(s) into") == 1
    assert output.count(f"added {N_NEW} image(s) to") == 1
    assert output.count("skipped (unreadable)") == 2  # the build's and the add's, printed by rank 0 once each
    assert output.count("reusing") == 1  # resume: shard 1; the two failed rebuilds stop before reading a shard


if __name__ == "__main__":  # python tests/test_index_distributed.py WORKDIR (under torchrun)
    _worker(Path(sys.argv[1]))
