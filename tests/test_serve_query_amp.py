"""Query precision (QueryEmbedding.use_query_amp, serve --query-amp): searches may run their forward pass under
another autocast mode than the index's descriptors; what is stored keeps the index's own mode."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index_world import COLOURS, build_world, draw, good_images
from vitrieval.index import Index
from vitrieval.serve import create_app

TOKEN = "s3cret-token-of-the-query-amp-tests"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_world(tmp_path_factory.mktemp("query_amp"))


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_bf16_queries_are_close_to_float32_ones_and_find_the_same_images(world: dict) -> None:
    index = Index.load(world["index_dir"])
    assert index.info["preprocessing"]["amp"] == "off" and not index.query_amp_differs
    paths = good_images(world)[:8]
    exact = index.embed(paths)
    hits32 = [[h.id for h in row] for row in index.search(paths, k=3)]
    index.use_query_amp("bf16")
    assert index.query_amp_differs and index.embedder.amp == "bf16"
    low = index.embed(paths)
    # bf16 matrix products: not the float32 descriptors, but within bf16's rounding of them
    assert 1e-5 < np.abs(low - exact).max() < 3e-2
    assert np.abs((low * exact).sum(1) - 1).max() < 1e-3
    assert [[h.id for h in row] for row in index.search(paths, k=1)] == [row[:1] for row in hits32]
    # stored=True: the index's own mode (float32 here), to the last bit of a one-image forward pass
    tensors = [index.prepare(p) for p in paths[:2]]
    np.testing.assert_allclose(index.embed_prepared(tensors, stored=True), exact[:2], atol=1e-6)
    index.use_query_amp(None)
    assert not index.query_amp_differs
    np.testing.assert_allclose(index.embed(paths), exact, atol=1e-6)


@pytest.mark.parametrize("mode", ["fp32", "half", ""])
def test_an_unknown_query_amp_is_refused_naming_the_choices(world: dict, mode: str) -> None:
    index = Index.load(world["index_dir"])
    with pytest.raises(ValueError, match="auto, bf16, fp16, off"):
        index.use_query_amp(mode)


def test_the_service_searches_in_bf16_and_stores_added_images_in_the_index_mode(world: dict, tmp_path: Path) -> None:
    directory = tmp_path / "cat.idx"
    shutil.copytree(world["index_dir"], directory)
    app = create_app(Index.load(directory), write_token=TOKEN, query_amp="bf16", compact_every=1000,
                     compact_interval_s=600)
    try:
        client = TestClient(app)
        assert client.get("/healthz").json()["query_amp"] == "bf16"
        new = draw(COLOURS[9], "cross", dark=True, size=48)
        r = client.post("/images", files={"file": ("new.png", _png(new), "image/png")},
                        headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 201, r.text
        index = app.state.index
        stored = index.faiss_index.reconstruct(r.json()["id"])
        index.use_query_amp(None)
        exact = index.embed([new])[0]
        index.use_query_amp("bf16")
        np.testing.assert_allclose(stored, exact, atol=1e-6)  # the index's float32, not the queries' bf16
        hits = client.post("/search?k=1", files={"file": ("q.png", _png(new), "image/png")}).json()["results"]
        assert hits[0]["id"] == r.json()["id"] and abs(hits[0]["score"] - 1) < 1e-3
    finally:
        app.state.close()


def test_the_onnx_runtime_refuses_a_query_amp(world: dict) -> None:
    index = Index.load(world["index_dir"])
    index.runtime = "onnx"  # as use_runtime("onnx") sets it, without exporting a model
    with pytest.raises(ValueError, match="torch runtime"):
        index.use_query_amp("bf16")
    index.use_query_amp("off")  # float32 is what it runs anyway
    torch_index = Index.load(world["index_dir"])
    torch_index.use_query_amp("bf16")
    with pytest.raises(ValueError, match="float32"):
        torch_index.use_runtime("onnx")
    assert torch_index.runtime == "torch"


def test_cli_serve_refuses_query_amp_with_onnx(world: dict, capsys: pytest.CaptureFixture) -> None:
    from vitrieval.cli import main

    code = main(["serve", "--index", str(world["index_dir"]), "--runtime", "onnx", "--query-amp", "bf16",
                 "--port", "1"])
    assert code == 2 and "--query-amp bf16 needs --runtime torch" in capsys.readouterr().err


@pytest.mark.parametrize("native", [True, False])
def test_bf16_queries_on_a_cpu_without_native_bf16_are_warned_about(world: dict, native: bool, monkeypatch,
                                                                    caplog) -> None:
    """serve --query-amp bf16 made queries 2-3x slower on a CPU without native bf16 kernels, silently."""
    import vitrieval.amp as amp

    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda: native)
    index = Index.load(world["index_dir"])
    with caplog.at_level("WARNING", logger="vitrieval.index.query_embedding"):
        index.use_query_amp("bf16")
        index.use_query_amp("auto")
        index.use_query_amp("off")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ([] if native else [
        "queries under bf16 autocast: this CPU has no native bf16 kernels (AVX512-BF16 / AMX), so bf16 is emulated "
        "and queries run 2-3x slower than in float32; use query amp auto or off (serve --query-amp auto)"])
