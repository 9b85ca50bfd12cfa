"""On real photographs (../shared/data: ORL faces, 92 x 112 grey PGM; COIL-20), search through the onnx runtime
returns torch's top-k ids with scores within 1e-4. Slow; skipped where the data is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ranking import assert_same_ranking
from vitrieval.config import ModelConfig
from vitrieval.index import Index
from vitrieval.model import Encoder
from vitrieval.onnx_export import export_onnx, parity_images

SHARED_DATA = Path(os.environ.get("VITRIEVAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
MODELS = {"deit": dict(name="deit_tiny_patch16_224", image_size=64, patch_size=8),
          "resnet-gem": dict(name="resnet18", image_size=64, pooling="gem")}

pytestmark = pytest.mark.slow


def _photos(per_class: int = 5) -> list[Path]:
    orl = sorted((SHARED_DATA / "orl_faces").glob("s*/*.pgm"))
    coil = sorted((SHARED_DATA / "coil20").glob("obj*/*.png"))
    if not orl or not coil:
        pytest.skip(f"real photos not found under {SHARED_DATA} (ORL faces and COIL-20)")
    return [p for p in orl if int(p.stem) <= per_class] + [p for p in coil if int(p.stem) % 12 == 0]


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_onnx_search_on_real_photos_equals_torch(kind: str, tmp_path: Path) -> None:
    photos = _photos()
    torch.manual_seed(0)
    model = Encoder(ModelConfig(pretrained=False, **MODELS[kind])).save(tmp_path / "model")
    from vitrieval.model import load

    report = export_onnx(load(model), model / "model.onnx", parity_images(photos[::40]))
    assert report.max_abs_diff <= 1e-4
    index = Index.build(model, photos, tmp_path / "idx", factory="Flat", num_workers=0, progress=False)
    onnx_index = Index.load(tmp_path / "idx", runtime="onnx")
    queries = photos[::7]
    torch_hits = index.search(queries, k=10)
    onnx_hits = onnx_index.search(queries, k=10)
    for got, want in zip(onnx_hits, torch_hits):
        assert_same_ranking(got, want, score_tol=1e-4)
    assert np.abs(onnx_index.embed(queries) - index.embed(queries)).max() <= 1e-4
