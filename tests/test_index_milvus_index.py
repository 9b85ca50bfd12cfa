"""The Milvus backend on a real engine (Milvus Lite, one .db file per module): the same answers as faiss Flat from
the API, the CLI and the service; add / remove; the manifest; one-line errors; resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from index_world import COLOURS, build_world, good_images, make_images, make_model
from vitrieval.cli import main as cli_main
from vitrieval.index import (
    INFO_FILE,
    CollectionMismatchError,
    CollectionMissingError,
    Index,
    MilvusOptions,
    MilvusUnreachableError,
)
from vitrieval.index.milvus_backend import open_collection
from vitrieval.serve import create_app

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The index world (30 images, a faiss Flat index) and a FLAT Milvus index of the same images."""
    w = build_world(tmp_path_factory.mktemp("milvus"))
    w["db"] = str(w["root"] / "milvus.db")
    w["milvus"] = Index.build(w["model"], w["root"] / "images", w["root"] / "milvus.idx", num_workers=0,
                                    progress=False, milvus=MilvusOptions(w["db"], "world", index_type="FLAT"))
    return w


def _ids_scores(results: list) -> tuple[list[list[int]], np.ndarray]:
    return [[h.id for h in hits] for hits in results], np.array([[h.score for h in hits] for hits in results])


def test_flat_top_k_is_faiss_flat_top_k(world: dict) -> None:
    faiss_index, milvus = world["index"], world["milvus"]
    assert len(milvus) == len(faiss_index) == 30
    assert [(e.id, e.path, e.label) for e in milvus.entries()] == [(e.id, e.path, e.label)
                                                                   for e in faiss_index.entries()]
    queries = np.random.default_rng(0).normal(size=(25, milvus.descriptor_dim)).astype(np.float32)
    f_ids, f_scores = _ids_scores(faiss_index.search(queries, k=10))
    m_ids, m_scores = _ids_scores(milvus.search(queries, k=10))
    assert m_ids == f_ids
    np.testing.assert_allclose(m_scores, f_scores, atol=1e-4)
    # brute force on the stored descriptors, independently of both engines
    x = faiss_index.faiss_index.index.reconstruct_n(0, 30)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_allclose(m_scores, -np.sort(-(q @ x.T), axis=1)[:, :10], atol=1e-4)
    images = good_images(world)[3:6]
    assert _ids_scores(milvus.search(images, k=5))[0] == _ids_scores(faiss_index.search(images, k=5))[0]
    assert milvus.search(images[0], k=1)[0][0].path == str(images[0])


def test_query_expansion_over_milvus_is_the_faiss_flat_one(world: dict) -> None:
    """αQE at query time reads the neighbours' stored vectors back from Milvus (``store.vectors``)."""
    faiss_index, milvus = world["index"], world["milvus"]
    ids = np.array([4, 0, 17])
    np.testing.assert_allclose(milvus.store.vectors(ids), faiss_index.store.vectors(ids), atol=1e-6)
    queries = np.random.default_rng(1).normal(size=(6, milvus.descriptor_dim)).astype(np.float32)
    f_ids, f_scores = _ids_scores(faiss_index.search(queries, k=8, rerank="aqe"))
    m_ids, m_scores = _ids_scores(milvus.search(queries, k=8, rerank="aqe"))
    assert m_ids == f_ids and m_ids != _ids_scores(milvus.search(queries, k=8))[0]
    np.testing.assert_allclose(m_scores, f_scores, atol=1e-4)


def test_manifest_and_rows_in_milvus(world: dict) -> None:
    info = json.loads((world["root"] / "milvus.idx" / INFO_FILE).read_text())
    assert info["backend"] == "milvus" and info["count"] == 30 and info["descriptor_dim"] == 192
    assert info["milvus"] == {"uri": world["db"], "collection": "world", "index_type": "FLAT", "search_params": {}}
    assert info["fingerprint"] == world["index"].fingerprint and info["factory"] == "milvus:FLAT"
    assert not any(p.name.startswith("g0") for p in (world["root"] / "milvus.idx").iterdir())  # no faiss data
    loaded = Index.load(world["root"] / "milvus.idx")
    assert loaded.backend == "milvus" and len(loaded) == 30
    rows = sorted(loaded.store.collection.rows(), key=lambda r: r["id"])
    assert [r["path"] for r in rows] == [Path(e.path).name for e in world["index"].entries()]  # relative to root
    assert {r["label"] for r in rows} == {-1}
    with pytest.raises(AttributeError, match="nprobe does not apply"):
        _ = loaded.nprobe


def test_cli_search_answers_as_faiss(world: dict, capsys: pytest.CaptureFixture) -> None:
    query = str(good_images(world)[11])
    answers = []
    for folder in (world["index_dir"], world["root"] / "milvus.idx"):
        assert cli_main(["search", "--index", str(folder), query, "-k", "6", "--json"]) == 0
        answers.append(json.loads(capsys.readouterr().out)[0]["results"])
    assert [(r["id"], r["path"]) for r in answers[0]] == [(r["id"], r["path"]) for r in answers[1]]
    np.testing.assert_allclose([r["score"] for r in answers[0]], [r["score"] for r in answers[1]], atol=1e-4)


def test_serve_over_milvus(world: dict) -> None:
    clients = [TestClient(create_app(index)) for index in (world["index"], Index.load(world["root"] / "milvus.idx"))]
    health = clients[1].get("/healthz").json()
    assert health["count"] == 30 and health["factory"] == "milvus:FLAT"
    query = good_images(world)[7]
    bodies = []
    for client in clients:
        r = client.post("/search?k=5", files={"file": ("q.png", query.read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        bodies.append(r.json()["results"])
    assert [(h["id"], h["path"]) for h in bodies[1]] == [(h["id"], h["path"]) for h in bodies[0]]
    assert bodies[1][0]["path"] == query.name and bodies[1][0]["score"] == pytest.approx(1, abs=1e-4)
    thumb = clients[1].get(f"/images/{bodies[1][0]['id']}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_cli_index_add_remove(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db, out = str(tmp_path / "cli.db"), tmp_path / "cli.idx"
    assert cli_main(["index", "--checkpoint", str(world["model"]), "--images", str(world["root"] / "images"), "-o",
                     str(out), "--backend", "milvus", "--milvus-uri", db, "--collection", "cli", "--milvus-index",
                     "HNSW", "--workers", "0", "--no-progress"]) == 0
    assert "indexed 30 image(s)" in capsys.readouterr().out
    new = make_images(tmp_path / "new", COLOURS[8:9], prefix="new")
    assert cli_main(["index", "--images", str(tmp_path / "new"), "-o", str(out), "--add", "--workers", "0",
                     "--no-progress"]) == 0
    assert "30 -> 35" in capsys.readouterr().out
    index = Index.load(out)
    assert len(index) == 35 and index.store.collection.count() == 35 and index.factory == "milvus:HNSW"
    hit = index.search(new[2], k=1)[0][0]
    assert hit.path == str(new[2]) and hit.id == 32 and hit.score == pytest.approx(1, abs=1e-4)
    assert index.remove([32, 0, 999]) == 2
    again = Index.load(out)
    assert len(again) == 33 and again.store.collection.count() == 33
    assert {0, 32}.isdisjoint(e.id for e in again.entries())
    assert all(h.id != 32 for h in again.search(new[2], k=33)[0])
    assert again.ef_search == 64
    again.ef_search = 128
    again.save()
    assert Index.load(out).ef_search == 128


def test_one_line_errors(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = make_model(tmp_path / "other", seed=1)
    with pytest.raises(CollectionMismatchError, match="holds descriptors of model .*choose another --collection"):
        Index.build(other, world["root"] / "images", tmp_path / "other.idx", num_workers=0, progress=False,
                          milvus=MilvusOptions(world["db"], "world"))
    with pytest.raises(CollectionMismatchError, match="holds another build"):
        Index.build(world["model"], good_images(world)[:5], tmp_path / "part.idx", num_workers=0,
                          progress=False, milvus=MilvusOptions(world["db"], "world"))
    x = np.ones((3, 192), np.float32)
    open_collection(world["db"], "small").create(64, world["index"].fingerprint, "x", "FLAT")
    with pytest.raises(CollectionMismatchError, match="holds 64-d descriptors"):
        Index.from_descriptors(world["model"], x, good_images(world)[:3], out_dir=tmp_path / "s.idx",
                                     milvus=MilvusOptions(world["db"], "small"))

    folder = tmp_path / "gone.idx"
    Index.from_descriptors(world["model"], x, good_images(world)[:3], out_dir=folder,
                                 milvus=MilvusOptions(world["db"], "gone"))
    open_collection(world["db"], "gone").drop()
    with pytest.raises(CollectionMissingError, match="collection 'gone' at .*milvus.db does not exist"):
        Index.load(folder)
    assert cli_main(["search", "--index", str(folder), str(good_images(world)[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitrieval search: error: collection 'gone'") and "\n" not in err

    info = json.loads((folder / INFO_FILE).read_text())
    info["milvus"]["uri"] = "http://127.0.0.1:9"
    (folder / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(MilvusUnreachableError, match=r"cannot reach Milvus at http://127.0.0.1:9"):
        Index.load(folder)
    assert cli_main(["index", "--checkpoint", str(world["model"]), "--images", str(world["root"] / "images"), "-o",
                     str(tmp_path / "bad.idx"), "--backend", "milvus", "--milvus-uri",
                     "https://user:secret@127.0.0.1:9", "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot reach Milvus at https://127.0.0.1:9" in err and "secret" not in err and "\n" not in err
    assert cli_main(["index", "--checkpoint", str(world["model"]), "--images", str(world["root"] / "images"), "-o",
                     str(tmp_path / "bad.idx"), "--backend", "milvus"]) == 2
    assert "--backend milvus needs --milvus-uri" in capsys.readouterr().err


RESUME_SCRIPT = textwrap.dedent("""
    import logging, sys
    import numpy as np
    from vitrieval.index import Index, MilvusOptions
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s %(message)s")
    logging.getLogger("vitrieval.index.milvus_backend").setLevel(logging.DEBUG)
    logging.getLogger("vitrieval.index.milvus_store").setLevel(logging.INFO)
    model, db, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    x = np.random.default_rng(0).normal(size=(n, 192)).astype(np.float32)
    paths = [f"/photos/{i:06d}.jpg" for i in range(n)]
    index = Index.from_descriptors(model, x, paths, labels=[i % 7 for i in range(n)], out_dir=out,
                                         milvus=MilvusOptions(db, "big", index_type="FLAT", insert_batch=100))
    print("done", len(index), flush=True)
""")


def test_resume_after_sigkill_inserts_only_the_missing_rows(world: dict, tmp_path: Path) -> None:
    n = 3000
    db, out = str(tmp_path / "big.db"), str(tmp_path / "big.idx")
    argv = [sys.executable, "-c", RESUME_SCRIPT, str(world["model"]), db, out, str(n)]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    batches = 0
    for line in child.stdout:
        if line.startswith("vitrieval.index.milvus_backend inserted rows"):
            batches += 1
            if batches == 10:
                os.kill(child.pid, signal.SIGKILL)
                break
    child.wait(timeout=60)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL and batches == 10
    assert not Path(out, INFO_FILE).exists()  # killed before the manifest

    rerun = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    summary = [ln for ln in rerun.stdout.splitlines() if "already there" in ln][0]
    inserted, held = (int(w) for w in summary.replace("(", " ").split() if w.isdigit())
    assert held >= 10 * 100 and inserted + held == n and f"done {n}" in rerun.stdout
    index = Index.load(out)
    ids = sorted(r["id"] for r in index.store.collection.rows())
    assert ids == list(range(n)) and index.store.collection.count() == n and len(index) == n
    assert index.entry(2345).path == "/photos/002345.jpg" and index.entry(2345).label == 2345 % 7
    x = np.random.default_rng(0).normal(size=(n, 192)).astype(np.float32)
    hits = index.search(x[[17, 2345]], k=1)
    assert [h[0].id for h in hits] == [17, 2345] and hits[0][0].score == pytest.approx(1, abs=1e-4)


TORCHRUN_WORKER = textwrap.dedent("""
    import sys
    from vitrieval.cli import main
    model, images, out, db = sys.argv[1:5]
    sys.exit(main(["index", "--checkpoint", model, "--images", images, "-o", out, "--backend", "milvus",
                   "--milvus-uri", db, "--collection", "dist", "--milvus-index", "FLAT", "--workers", "0",
                   "--no-progress", "--batch-size", "4", "--shard-size", "10"]))
""")


def test_torchrun_build_into_milvus_is_the_one_process_build(world: dict, tmp_path: Path) -> None:
    from torchrun_launch import launch, torchrun

    script, out, db = tmp_path / "worker.py", tmp_path / "dist.idx", tmp_path / "dist.db"
    script.write_text(TORCHRUN_WORKER)
    text = launch(torchrun([str(script), str(world["model"]), str(world["root"] / "images"), str(out), str(db)]),
                  cwd=tmp_path, log=tmp_path / "torchrun.log", timeout=240)
    assert text.count("indexed 30 image(s)") == 1  # rank 0 alone reports
    assert sorted(p.name for p in (out / "shards").iterdir())[-1] == "00003.npy"  # 31 paths in shards of 10
    index = Index.load(out)
    assert [(e.id, e.path) for e in index.entries()] == [(e.id, e.path) for e in world["index"].entries()]
    assert index.store.collection.count() == 30
    queries = np.random.default_rng(1).normal(size=(8, 192)).astype(np.float32)
    m_ids, m_scores = _ids_scores(index.search(queries, k=10))
    f_ids, f_scores = _ids_scores(world["index"].search(queries, k=10))
    assert m_ids == f_ids
    np.testing.assert_allclose(m_scores, f_scores, atol=1e-4)
