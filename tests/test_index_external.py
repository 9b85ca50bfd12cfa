"""``vitrieval index --descriptors`` (vitrieval.index.external): descriptors computed elsewhere, as a ``.npy`` with
its CSV table or a folder of shards, indexed without embedding: each stored vector's top hit is its own path
(score >= 0.9999) with its class name, for faiss and Milvus alike."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from index_world import build_world
from vitrieval.cli import main
from vitrieval.index import Index


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    w = build_world(tmp_path_factory.mktemp("external"))
    index = w["index"]
    w["vectors"] = index.faiss_index.index.reconstruct_n(0, len(index))
    w["entries"] = index.entries()
    npy, table = w["root"] / "d.npy", w["root"] / "t.csv"
    np.save(npy, w["vectors"])
    with open(table, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["path", "label", "class_name"])
        for e in w["entries"]:
            out.writerow([e.path, e.id % 3, ["ellipses", "boxes", "other"][e.id % 3]])
    w["npy"], w["table"] = npy, table
    return w


def _check_self_hits(world: dict, out: Path) -> None:
    index = Index.load(out)
    assert len(index) == len(world["entries"])
    hits = index.search(world["vectors"], k=1)
    for e, row in zip(world["entries"], hits):
        assert row[0].path == e.path and row[0].score >= 0.9999
        assert (row[0].label, row[0].class_name) == (e.id % 3, ["ellipses", "boxes", "other"][e.id % 3])


@pytest.mark.parametrize("backend", ["faiss", "milvus"])
def test_npy_with_its_table(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture, backend: str) -> None:
    out = tmp_path / f"{backend}.idx"
    extra = ["--backend", "milvus", "--milvus-uri", str(tmp_path / "d.db")] if backend == "milvus" else []
    assert main(["index", "--descriptors", str(world["npy"]), "--table", str(world["table"]), "--checkpoint",
                 str(world["model"]), "-o", str(out), *extra]) == 0
    assert f"indexed 30 descriptor(s) into {out}" in capsys.readouterr().out
    _check_self_hits(world, out)
    assert json.loads((out / "index.json").read_text())["backend"] == backend


def test_a_folder_of_shards_is_the_build_itself(world: dict, tmp_path: Path) -> None:
    out = tmp_path / "shards.idx"
    assert main(["index", "--descriptors", str(world["index_dir"]), "--checkpoint", str(world["model"]), "-o",
                 str(out)]) == 0
    index = Index.load(out)
    assert [(e.id, e.path) for e in index.entries()] == [(e.id, e.path) for e in world["entries"]]
    x = index.faiss_index.index.reconstruct_n(0, len(index))
    assert np.array_equal(x, world["vectors"])


def test_mismatches_are_one_line(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    np.save(tmp_path / "short.npy", world["vectors"][:10])
    assert main(["index", "--descriptors", str(tmp_path / "short.npy"), "--table", str(world["table"]),
                 "--checkpoint", str(world["model"]), "-o", str(tmp_path / "x.idx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has 10 rows but --table" in err and "\n" not in err
    np.save(tmp_path / "narrow.npy", world["vectors"][:, :16])
    assert main(["index", "--descriptors", str(tmp_path / "narrow.npy"), "--table", str(world["table"]),
                 "--checkpoint", str(world["model"]), "-o", str(tmp_path / "y.idx")]) == 2
    assert "descriptors are 16-d but the model" in capsys.readouterr().err
    assert main(["index", "--descriptors", str(world["npy"]), "--checkpoint", str(world["model"]), "-o",
                 str(tmp_path / "z.idx")]) == 2
    assert "needs --table" in capsys.readouterr().err
    assert not (tmp_path / "x.idx").exists() and not (tmp_path / "z.idx").exists()
