"""vitrieval.onnx_export and ``vitrieval export``: one graph equal to torch's embed, dynamic batch, atomic write."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from onnx_world import onnx_world
from vitrieval.config import ModelConfig
from vitrieval.data.transforms import eval_transform
from vitrieval.model import Encoder, load
from vitrieval.onnx_export import ExportParityError, export_onnx, parity_images
from vitrieval.runtime.embedder import embed_images
from vitrieval.runtime.onnx_embedder import OnnxEmbedder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return onnx_world(tmp_path_factory)


def test_the_graph_is_the_encoders_embed_at_any_batch_size(world: dict) -> None:
    encoder = load(world["model"])
    embedder = OnnxEmbedder(world["onnx"])
    assert world["parity"] <= 1e-4
    assert embedder.fingerprint == encoder.fingerprint() and embedder.descriptor_dim == 192
    tf = eval_transform(encoder.data_config)
    for n in (1, 3, 7):  # the batch axis is dynamic
        pixels = torch.stack([tf(parity_images()[i % 4]) for i in range(n)])
        expected = encoder.embed(pixels, amp="off")
        found = embedder.run(pixels.numpy())
        assert found.shape == (n, 192)
        assert np.abs(found - expected).max() <= 1e-5
        assert np.allclose(np.linalg.norm(found, axis=1), 1.0, atol=1e-5)


def test_the_file_records_fingerprint_and_preprocessing(world: dict) -> None:
    model = onnx.load(str(world["onnx"]))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["vitrieval.fingerprint"] == load(world["model"]).fingerprint()
    assert meta["vitrieval.resize"] == "shorter" and meta["vitrieval.descriptor_dim"] == "192"
    assert '"image_size": 32' in meta["vitrieval.data_config"]
    shape = model.graph.input[0].type.tensor_type.shape.dim
    assert shape[0].dim_param and [d.dim_value for d in shape[1:]] == [3, 32, 32]


def test_parity_failure_writes_nothing_and_keeps_the_old_file(world: dict, tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous export")
    with pytest.raises(ExportParityError, match=r"differ from torch's by .* over the tolerance 0: .* not written"):
        export_onnx(load(world["model"]), out, tolerance=0.0)
    assert out.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_convnet_with_rmac_and_pca_exports(tmp_path: Path) -> None:
    """R-MAC's region layout is a constant of the graph; the PCA is part of it."""
    from vitrieval.pca import PCAReduction

    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(name="resnet18", pretrained=False, image_size=64, pooling="rmac")).eval()
    rng = np.random.default_rng(0)
    encoder.set_pca(PCAReduction.fit(rng.normal(size=(600, 512)).astype(np.float32), 32))
    report = export_onnx(encoder, tmp_path / "m.onnx")
    assert report.max_abs_diff <= 1e-4 and report.info.descriptor_dim == 32
    images = parity_images()
    tf = eval_transform(encoder.data_config)
    expected = encoder.embed(torch.stack([tf(im) for im in images]), amp="off")
    found = embed_images(OnnxEmbedder(tmp_path / "m.onnx"), images)
    assert found.shape == (4, 32) and np.abs(found - expected).max() <= 1e-4


def test_cli_export_writes_beside_the_model_and_prints_the_parity(world: dict, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    import shutil

    from vitrieval.cli import CLIError, export_cmd

    run = tmp_path / "run"
    shutil.copytree(world["model"], run / "model", ignore=shutil.ignore_patterns("model.onnx"))
    parser = argparse.ArgumentParser(prog="vitrieval")
    export_cmd.add_parser(parser.add_subparsers(dest="command"))
    images = [str(p) for p in world["images"][:3]]
    assert export_cmd.run(parser.parse_args(["export", "--checkpoint", str(run), "--images", images[0].rsplit(
        "/", 1)[0], "--parity-images", "2"])) == 0
    out = capsys.readouterr().out
    assert "parity: max abs difference" in out and "on 2 images" in out
    assert (run / "model" / "model.onnx").is_file()
    with pytest.raises(CLIError, match="is a folder"):
        export_cmd.run(parser.parse_args(["export", "--checkpoint", str(run), "-o", str(tmp_path)]))
