"""One path from an image to a descriptor (issue 26), end to end through the commands.

A timm model as it is (``--model deit_tiny_patch16_224 --pretrained-file W``: random weights stand in for real
ones, at 32 px) indexes a folder; the same image then gets the same descriptor through evaluate's extraction, the
index build, ``search``, an HTTP upload (``POST /search``), ``vitrieval embed`` and the onnx runtime: <= 1e-6 on
the torch paths (same float32 arithmetic, same decoder and pre-processing), <= 1e-4 for onnxruntime (another
kernel library: its sums are ordered differently, ~1e-6 per value over 192 unit-norm components).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from index_world import COLOURS, make_images
from vitrieval.cli import main
from vitrieval.config import ModelConfig
from vitrieval.data.table import ImageTable, Record
from vitrieval.embed import ExtractionOptions
from vitrieval.evaluation.pca_fit import normalize_rows
from vitrieval.evaluation.protocol import extract_all
from vitrieval.index import Index
from vitrieval.model import Encoder
from vitrieval.serve import create_app

MODEL = "deit_tiny_patch16_224"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import timm

    root = tmp_path_factory.mktemp("one_path")
    torch.manual_seed(26)
    weights = root / "deit_tiny.pth"
    torch.save(timm.create_model(MODEL, pretrained=False).state_dict(), weights)
    images = make_images(root / "images", COLOURS[:3])
    big = root / "images" / "big.jpg"  # large enough for fast decoding to take a 1/8 DCT scale
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((640, 480)).save(big, quality=90)
    images.append(big)
    model_flags = ["--model", MODEL, "--pretrained-file", str(weights), "--image-size", "32"]
    assert main(["index", *model_flags, "--images", str(root / "images"), "-o", str(root / "idx"),
                 "--workers", "0", "--no-progress"]) == 0
    return {"root": root, "weights": weights, "images": images, "flags": model_flags, "idx": root / "idx"}


def entry_id(index: Index, path: Path) -> int:
    (entry,) = [e for e in index.entries() if e.path == str(path)]
    return int(entry.id)


def stored(index: Index, path: Path) -> np.ndarray:
    """The index's vector of ``path``."""
    return index.faiss_index.reconstruct(entry_id(index, path))


def test_the_index_holds_its_model_and_works_from_the_folder_alone(world: dict, tmp_path: Path) -> None:
    """``index --model``: ``OUT/model`` is the timm model; ``index.json`` names it relative to the index, so the
    folder answers searches after a move."""
    import shutil

    info = json.loads((world["idx"] / "index.json").read_text())
    assert info["checkpoint"] == "model" and (world["idx"] / "model" / "config.json").is_file()
    moved = tmp_path / "moved.idx"
    shutil.copytree(world["idx"], moved)
    index = Index.load(moved)
    assert index.model_dir == moved / "model"
    query = world["images"][4]
    (hit,) = index.search([query], k=1)[0]
    assert hit.path == str(query) and hit.score >= 0.9999


def test_the_same_image_gets_the_same_descriptor_on_every_path(world: dict, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    index = Index.load(world["idx"])
    encoder = Encoder(ModelConfig(name=MODEL, pretrained=True, pretrained_file=str(world["weights"]),
                                  image_size=32)).eval()
    assert encoder.fingerprint() == index.fingerprint
    # evaluate's extraction (pooled vectors, then pool -> L2; --amp off, the mode a CPU index records)
    table = ImageTable([Record(str(p), -1) for p in world["images"]], "q")
    pooled = extract_all(encoder, table, ExtractionOptions(batch_size=4, num_workers=0, amp="off", progress=False),
                         desc="q").descriptors
    evaluated = normalize_rows(pooled)
    built = np.stack([stored(index, p) for p in world["images"]])
    np.testing.assert_allclose(evaluated, built, atol=1e-6)
    # search: the index embeds its queries (paths, decoded as the build decoded them)
    np.testing.assert_allclose(index.embed(world["images"]), built, atol=1e-6)
    # an HTTP upload: the bytes through the service's bounded decode, the batcher's forward pass
    seen: list[np.ndarray] = []
    real = index.embed_prepared

    def spy(batch, stored=False):
        out = real(batch, stored=stored)
        seen.append(out)
        return out

    monkeypatch.setattr(index, "embed_prepared", spy)
    client = TestClient(create_app(index))
    for i in (0, len(world["images"]) - 1):  # a PNG and the big JPEG (fast-decoded at the build)
        path = world["images"][i]
        r = client.post("/search?k=3", files={"file": (path.name, path.read_bytes(), "application/octet-stream")})
        assert r.status_code == 200, r.text
        first = r.json()["results"][0]
        assert first["id"] == entry_id(index, path) and first["score"] >= 0.9999
        np.testing.assert_allclose(seen[-1][0], built[i], atol=1e-6)
    # the search command: the image itself first
    assert main(["search", "--index", str(world["idx"]), "--json", "-k", "2", str(world["images"][2])]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["results"][0]["path"] == str(world["images"][2]) and result["results"][0]["score"] >= 0.9999
    # search with --model made again (checked by fingerprint) finds the same
    assert main(["search", "--index", str(world["idx"]), *world["flags"], "--json", "-k", "1",
                 str(world["images"][3])]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["results"][0]["path"] == str(world["images"][3]) and result["results"][0]["score"] >= 0.9999


def test_embed_writes_the_index_descriptors_as_shards(world: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """``vitrieval embed``: one row per readable image (an unreadable file listed, not a row), each equal to that
    image's descriptor in the index of the same model; the CSV beside each shard names the rows; a rerun embeds
    nothing; ``index`` over the folder builds from the shards."""
    bad = tmp_path / "images" / "broken.jpg"
    (tmp_path / "images").mkdir()
    bad.write_bytes(b"not an image")
    images = [*world["images"], bad]
    table = tmp_path / "table.csv"
    table.write_text("path,label\n" + "".join(f"{p},{i % 3}\n" for i, p in enumerate(images)))
    out = tmp_path / "emb"
    argv = ["embed", *world["flags"], "--table", str(table), "-o", str(out), "--shard-size", "5", "--workers", "0",
            "--no-progress"]
    assert main(argv) == 0
    manifest = json.loads((out / "embeddings.json").read_text())
    assert manifest["count"] == len(world["images"]) and manifest["skipped"] == [str(bad)]
    assert manifest["fingerprint"] == Index.load(world["idx"]).fingerprint and len(manifest["shards"]) == 4
    rows, vectors = [], []
    for shard in manifest["shards"]:
        x = np.load(out / shard["descriptors"])
        with open(out / shard["table"], newline="") as fh:
            table_rows = list(csv.DictReader(fh))
        assert x.dtype == np.float32 and len(x) == len(table_rows) == shard["count"]
        rows += table_rows
        vectors.append(x)
    index = Index.load(world["idx"])
    assert [r["path"] for r in rows] == [str(p) for p in world["images"]]
    assert [int(r["label"]) for r in rows] == [i % 3 for i in range(len(world["images"]))]
    np.testing.assert_allclose(np.concatenate(vectors), np.stack([stored(index, p) for p in world["images"]]),
                               atol=1e-6)
    capsys.readouterr()
    assert main(argv) == 0  # resumed: every shard reused
    assert f"embedded {len(world['images'])} image(s)" in capsys.readouterr().out
    assert main(["index", "--checkpoint", str(out / "model"), "--table", str(table), "-o", str(out),
                 "--shard-size", "5", "--workers", "0", "--no-progress"]) == 0
    built = Index.load(out)
    np.testing.assert_allclose(stored(built, world["images"][1]), stored(index, world["images"][1]), atol=1e-6)


def test_onnx_runtime_gives_the_same_descriptor(world: dict) -> None:
    """``export --model`` into the index's model folder; the index's onnx runtime then embeds the queries."""
    idx = world["idx"]
    assert main(["export", *world["flags"], "-o", str(idx / "model" / "model.onnx"),
                 "--images", str(world["images"][0].parent), "--parity-images", "2"]) == 0
    torch_index = Index.load(idx)
    onnx_index = Index.load(idx, runtime="onnx")
    built = np.stack([stored(torch_index, p) for p in world["images"]])
    assert np.abs(onnx_index.embed(world["images"]) - built).max() <= 1e-4


def test_offline_without_a_weights_file_fails_in_one_line(world: dict, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """No network and no weights file: one line naming --pretrained-file, exit 2, nothing written."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    assert main(["index", "--model", MODEL, "--images", str(world["images"][0].parent), "-o",
                 str(tmp_path / "idx"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--pretrained-file" in err[0] and MODEL in err[0]
    assert not (tmp_path / "idx").exists()
