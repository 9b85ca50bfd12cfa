"""runtime="onnx" end to end: Index.load / search / create_app / CLI give torch's top-k, refuse a wrong file."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pytest

from onnx_world import onnx_world
from ranking import assert_same_ranking
from vitrieval.index import Index
from vitrieval.runtime import OnnxModelError


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return onnx_world(tmp_path_factory)


def _cli(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vitrieval")
    module.add_parser(parser.add_subparsers(dest="command"))
    return module.run(parser.parse_args(argv))


def test_onnx_search_gives_torchs_top_k_and_scores(world: dict) -> None:
    torch_index = Index.load(world["index_dir"])
    onnx_index = Index.load(world["index_dir"], runtime="onnx", threads=1)
    queries = world["images"][::3]
    assert np.abs(onnx_index.embed(queries) - torch_index.embed(queries)).max() <= 1e-4
    for a, b in zip(torch_index.search(queries, k=8), onnx_index.search(queries, k=8)):
        assert_same_ranking(b, a, score_tol=1e-4)
    assert onnx_index.embedder.runtime == "onnx" and torch_index.embedder.runtime == "torch"


def test_a_missing_or_foreign_export_is_refused_in_one_line(world: dict, tmp_path: Path) -> None:
    from index_world import make_model
    from vitrieval.model import load
    from vitrieval.onnx_export import export_onnx

    moved = tmp_path / "model"
    shutil.copytree(world["model"], moved, ignore=shutil.ignore_patterns("model.onnx"))
    index = Index.load(world["index_dir"], checkpoint=moved, runtime="onnx")
    with pytest.raises(OnnxModelError, match=r"model.onnx not found: export the model first \(vitrieval export"):
        index.search(world["images"][:1])
    other = make_model(tmp_path / "other", seed=1)
    shutil.copy(world["onnx"], other / "model.onnx")  # a file of the right model, then one of another model
    export_onnx(load(other), moved / "model.onnx")
    with pytest.raises(OnnxModelError, match=r"was exported from model \w+, the index was built with model"):
        Index.load(world["index_dir"], checkpoint=moved, runtime="onnx").search(world["images"][:1])
    with pytest.raises(ValueError, match="runtime must be one of torch, onnx, got 'tf'"):
        Index.load(world["index_dir"], runtime="tf")


def test_create_app_with_the_onnx_runtime(world: dict) -> None:
    from fastapi.testclient import TestClient

    from vitrieval.serve.app import create_app

    client = TestClient(create_app(world["index_dir"], runtime="onnx"))
    query = world["images"][4]
    r = client.post("/search?k=5", files={"file": (query.name, query.read_bytes(), "image/png")})
    assert r.status_code == 200
    expected = Index.load(world["index_dir"]).search([query], k=5)[0]
    assert_same_ranking(r.json()["results"], expected, score_tol=1e-4)
    index = Index.load(world["index_dir"])
    create_app(index, runtime="onnx")
    assert index.runtime == "onnx" and index.embedder.runtime == "onnx"


def test_cli_search_and_serve_take_runtime(world: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    import json

    import uvicorn

    from vitrieval.cli import search_cmd, serve_cmd

    query = str(world["images"][2])
    assert _cli(search_cmd, ["search", "--index", str(world["index_dir"]), query, "-k", "3", "--json",
                             "--runtime", "onnx"]) == 0
    onnx_hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert _cli(search_cmd, ["search", "--index", str(world["index_dir"]), query, "-k", "3", "--json"]) == 0
    torch_hits = json.loads(capsys.readouterr().out)[0]["results"]
    assert_same_ranking(onnx_hits, torch_hits, score_tol=1e-4)
    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app))
    assert _cli(serve_cmd, ["serve", "--index", str(world["index_dir"]), "--runtime", "onnx", "--threads",
                            "1"]) == 0
    assert seen["app"].state.index.runtime == "onnx" and seen["app"].state.index.threads == 1


def test_cli_reports_a_missing_export_as_one_line(world: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    from vitrieval.cli import main

    moved = tmp_path / "model"
    shutil.copytree(world["model"], moved, ignore=shutil.ignore_patterns("model.onnx"))
    code = main(["search", "--index", str(world["index_dir"]), "--checkpoint", str(moved), "--runtime", "onnx",
                 str(world["images"][0])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("vitrieval search: error: ") and "model.onnx not found" in err[0]


def test_an_index_built_with_onnx_holds_torchs_descriptors(world: dict, tmp_path: Path) -> None:
    """``Index.build(runtime="onnx")``: same entries, descriptors within 1e-4 of the torch build, the corrupt file
    skipped and named; the pre-processing records the runtime (so its shards are not a torch build's)."""
    built = Index.build(world["model"], world["root"] / "images", tmp_path / "onnx.idx", factory="Flat",
                        num_workers=0, progress=False, runtime="onnx", batch_size=7)
    reference = Index.load(world["index_dir"])
    assert built.info["preprocessing"] == {"resize": "shorter", "amp": "off", "fast_decode": True,
                                           "runtime": "onnx"}
    assert built.runtime == "onnx" and len(built) == len(reference) == 30
    assert [e.path for e in built.entries()] == [e.path for e in reference.entries()]
    assert built.skipped == reference.skipped and built.skipped[0].endswith("img_corrupt0.jpg")
    ours = built.faiss_index.reconstruct_batch(np.arange(30))
    theirs = reference.faiss_index.reconstruct_batch(np.arange(30))
    assert np.abs(ours - theirs).max() <= 1e-4
    hits = built.search(world["images"][:3], k=5)
    for got, want in zip(hits, reference.search(world["images"][:3], k=5)):
        assert_same_ranking(got, want, score_tol=1e-4)


def test_cli_index_runtime_onnx(world: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vitrieval.cli import CLIError, index_cmd

    out = tmp_path / "cli.idx"
    assert _cli(index_cmd, ["index", "--checkpoint", str(world["model"]), "--images", str(world["root"] / "images"),
                            "-o", str(out), "--factory", "Flat", "--runtime", "onnx", "--no-progress"]) == 0
    assert Index.load(out).info["preprocessing"]["runtime"] == "onnx"
    with pytest.raises(CLIError, match="--runtime onnx builds a new index; --add embeds with the torch model"):
        _cli(index_cmd, ["index", "--checkpoint", str(world["model"]), "--images", str(world["root"] / "images"),
                         "-o", str(out), "--add", "--runtime", "onnx"])


def test_rankings_compare_equal_up_to_near_ties_only() -> None:
    """The comparison the tests above use: near-ties (within 2 · tol) may swap or cross the k boundary, nothing
    else may."""
    def hits(*pairs):
        return [{"id": i, "score": s} for i, s in pairs]

    want = hits((1, 0.9), (2, 0.8), (3, 0.70004), (4, 0.7))
    assert_same_ranking(hits((1, 0.9), (2, 0.8), (4, 0.70002), (3, 0.70001)), want, score_tol=1e-4)  # a tie swaps
    assert_same_ranking(hits((1, 0.9), (2, 0.8), (3, 0.70004), (5, 0.70001)), want, score_tol=1e-4)  # crosses k
    with pytest.raises(AssertionError):
        assert_same_ranking(hits((2, 0.9), (1, 0.8), (3, 0.70004), (4, 0.7)), want, score_tol=1e-4)
    with pytest.raises(AssertionError):  # scores beyond the tolerance
        assert_same_ranking(hits((1, 0.9), (2, 0.8), (3, 0.7), (4, 0.69)), want, score_tol=1e-4)
    with pytest.raises(AssertionError):  # another image where 2 was, with 2's score: no near-tie of the boundary
        assert_same_ranking(hits((1, 0.9), (9, 0.8), (3, 0.70004), (4, 0.7)), want, score_tol=1e-4)
