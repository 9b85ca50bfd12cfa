"""The shared landmark flags: ``vitrieval index --scales --dba``, ``vitrieval search --rerank aqe --scales``."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index_world import COLOURS, make_images, make_model
from vitrieval.cli import CLIError, index_cmd, search_cmd
from vitrieval.cli.retrieval_options import dba_arg, scales_arg
from vitrieval.index import Index
from vitrieval.rerank import RerankOptions


def _cli(module, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vitrieval")
    sub = parser.add_subparsers(dest="command")
    module.add_parser(sub)
    return module.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``vitrieval index --scales 1,0.5 --dba 2,3`` of 20 images with the tiny model."""
    root = tmp_path_factory.mktemp("ms")
    model = make_model(root / "model")
    images = make_images(root / "images", COLOURS[:4])
    out = root / "ms.idx"
    assert _cli(index_cmd, ["index", "--checkpoint", str(model), "--images", str(root / "images"), "-o", str(out),
                            "--factory", "Flat", "--workers", "0", "--no-progress", "--scales", "1,0.5",
                            "--dba", "2,3"]) == 0
    return {"root": root, "model": model, "images": images, "out": out}


def test_flag_parsers() -> None:
    assert scales_arg("1, 0.707,0.5") == (1.0, 0.707, 0.5)
    assert dba_arg("3") == (3, 3.0) and dba_arg("2,0.5") == (2, 0.5)
    for bad in ("0", "2,-1", "x", "2,3,4"):
        with pytest.raises(argparse.ArgumentTypeError):
            dba_arg(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="positive"):
        scales_arg("1,-0.5")


def test_index_records_scales_and_dba_and_queries_follow_the_scales(built: dict) -> None:
    from vitrieval.embed import ExtractionOptions, extract
    from vitrieval.index import collection_table
    from vitrieval.model import load
    from vitrieval.multiscale import MultiScaleEncoder

    info = json.loads((built["out"] / "index.json").read_text())
    assert info["preprocessing"]["scales"] == [1.0, 0.5] and info["dba"] == {"n": 2, "alpha": 3.0}
    encoder = load(built["model"])
    table = collection_table(built["root"] / "images")
    amp = info["preprocessing"]["amp"]
    options = ExtractionOptions(num_workers=0, amp=amp, progress=False)
    multi = extract(MultiScaleEncoder(encoder, (1.0, 0.5)), table, options).descriptors
    single = extract(encoder, table, options).descriptors
    shards = np.load(built["out"] / "shards" / "00000.npy")
    np.testing.assert_allclose(shards, multi, atol=1e-5)  # the shards hold the multi-scale descriptors
    assert np.abs(multi - single).max() > 1e-2
    index = Index.load(built["out"])
    assert index.scales == (1.0, 0.5)
    np.testing.assert_allclose(index.embed(built["images"][:3]), multi[:3], atol=1e-5)  # queries: same scales


def test_search_rerank_and_scales_flags(built: dict, capsys: pytest.CaptureFixture) -> None:
    query = built["images"][5]
    assert _cli(search_cmd, ["search", "--index", str(built["out"]), str(query), "-k", "4", "--json", "--rerank",
                             "aqe", "--rerank-n", "3", "--rerank-alpha", "1", "--scales", "1,0.5"]) == 0
    got = json.loads(capsys.readouterr().out)[0]["results"]
    want = Index.load(built["out"]).search([query], k=4, rerank=RerankOptions(("aqe",), 3, 1.0))[0]
    assert [r["id"] for r in got] == [h.id for h in want]
    assert [r["score"] for r in got] == pytest.approx([h.score for h in want], abs=1e-6)
    plain = Index.load(built["out"]).search([query], k=4)[0]
    assert abs(plain[0].score - want[0].score) > 1e-4  # the flag reaches the search
    with pytest.raises(CLIError, match="built at scales 1,0.5"):
        _cli(search_cmd, ["search", "--index", str(built["out"]), str(query), "--scales", "1"])
    with pytest.raises(CLIError, match="not available here"):
        _cli(search_cmd, ["search", "--index", str(built["out"]), str(query), "--rerank", "dba"])
    with pytest.raises(CLIError, match="go with --rerank"):
        _cli(search_cmd, ["search", "--index", str(built["out"]), str(query), "--rerank-n", "3"])


def test_index_add_refuses_new_scales_and_a_dba_index(built: dict, tmp_path: Path) -> None:
    more = tmp_path / "more"
    make_images(more, COLOURS[7:8], prefix="more")
    with pytest.raises(CLIError, match="--add follows"):
        _cli(index_cmd, ["index", "--images", str(more), "-o", str(built["out"]), "--add", "--scales", "1"])
    copy = tmp_path / "copy.idx"
    shutil.copytree(built["out"], copy)
    with pytest.raises(ValueError, match="database-side augmented"):
        _cli(index_cmd, ["index", "--images", str(more), "-o", str(copy), "--add", "--workers", "0",
                         "--no-progress"])


def test_hub_reachable_is_false_offline_or_without_an_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--model`` without ``--pretrained-file`` asks timm's hub only when it answers: HF_HUB_OFFLINE, or an endpoint
    that refuses (a closed local port) or does not answer within the probe's timeout, count as offline."""
    import socket

    import huggingface_hub.constants

    from vitrieval.cli.retrieval_options import hub_reachable

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub_reachable()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:  # a port nobody listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    assert not hub_reachable(timeout=2.0)
    with socket.socket() as server:  # a listening one answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable(timeout=2.0)
