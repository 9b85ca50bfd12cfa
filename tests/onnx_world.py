"""The index tests' small world (:mod:`index_world`) with its model exported to ONNX, made once per session.

Exporting takes ~20 s on the shared 2-core box, so every ONNX test file shares one copy, kept under pytest's session
base temp folder (``onnx_world(tmp_path_factory)``).
"""

from __future__ import annotations

import pytest

from index_world import build_world
from vitrieval.index import Index


def onnx_world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``build_world``'s model, images and Flat index, plus ``<model>/model.onnx`` and the export report."""
    root = tmp_path_factory.getbasetemp() / "onnx_world"
    if not (root / "model" / "model.onnx").is_file():
        from vitrieval.model import load
        from vitrieval.onnx_export import export_onnx

        world = build_world(root)
        report = export_onnx(load(world["model"]), world["model"] / "model.onnx")
        (root / "parity.txt").write_text(repr(report.max_abs_diff))
    images = sorted(p for p in (root / "images").iterdir() if "corrupt" not in p.name)
    return {"root": root, "model": root / "model", "onnx": root / "model" / "model.onnx", "images": images,
            "index_dir": root / "flat.idx", "parity": float((root / "parity.txt").read_text()),
            "index": Index.load(root / "flat.idx")}
