"""Atomic writes keep the user's umask: every file vitrieval writes is ``0o666 & ~umask`` (0644 under 022), not
``mkstemp``'s 0600, whichever library writes into the temporary path (safetensors, torch.save, faiss, JSON, HTML)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from vitrieval.config import ModelConfig
from vitrieval.index import Index
from vitrieval.io_utils import atomic_path, atomic_write_json
from vitrieval.model import Encoder
from vitrieval.pca import PCAReduction
from vitrieval.report.html import write_report
from vitrieval.training.checkpoint import save_checkpoint


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def test_every_writer_gives_the_umask_mode(tmp_path, umask):
    expected = 0o666 & ~umask
    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8,
                                  depth=2))
    encoder.save(tmp_path / "model")                                    # safetensors + config.json
    save_checkpoint(tmp_path / "run", {"step": 1, "weights": torch.ones(3)})  # torch.save
    PCAReduction.fit(np.random.default_rng(0).normal(size=(20, 8)).astype("float32"), 4).save(tmp_path / "pca.st")
    dim = encoder.descriptor_dim  # faiss index, rows.sqlite, index.json
    vectors = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, 4)))[0].T.astype("float32")
    Index.from_descriptors(tmp_path / "model", vectors, [f"{i}.png" for i in range(4)], out_dir=tmp_path / "index",
                           factory="Flat")
    write_report(tmp_path / "report.html", "r", {"a": {"1": 0.5}}, [])
    atomic_write_json(tmp_path / "eval.json", {"recall": 1.0})
    modes = _modes(tmp_path)
    assert {"model/model.safetensors", "model/config.json", "run/last.pt", "pca.st", "index/index.json",
            "report.html", "eval.json"} <= set(modes)
    assert any(name.endswith("index.faiss") for name in modes) and any(n.endswith("rows.sqlite") for n in modes)
    assert modes == dict.fromkeys(modes, expected), {k: oct(v) for k, v in modes.items()}


def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path, umask):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_replacing_a_file_takes_the_umask_mode_not_the_old_one(tmp_path, umask):
    target = tmp_path / "eval.json"
    target.write_text("{}")
    target.chmod(0o600)
    atomic_write_json(target, {"a": 1})
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert target.read_text() == '{\n  "a": 1\n}\n'
