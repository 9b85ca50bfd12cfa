"""Issue 14, case 4: a file without read permission is treated like a corrupt image: skipped and listed by
``index``, skipped and counted by ``train`` with ``on_bad_image=skip``, a 404 for its thumbnail (no traceback).

CI runs as root, whom ``chmod 000`` does not stop, so the refusal is simulated where the file is read
(``Path.read_bytes`` raising ``PermissionError``, as the kernel does); the real ``chmod`` runs where it can."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index_world import COLOURS, make_images, make_model
from vitrieval.cli import main
from vitrieval.config import apply_overrides
from vitrieval.presets import load_preset
from vitrieval.serve import create_app
from vitrieval.training import train

_read_bytes = Path.read_bytes


def _lock(monkeypatch: pytest.MonkeyPatch, *locked: Path) -> None:
    """Reading any of ``locked`` fails as it does without read permission."""
    names = {str(p) for p in locked}

    def read_bytes(self: Path) -> bytes:
        if str(self) in names or str(self.resolve()) in names:
            raise PermissionError(13, "Permission denied", str(self))
        return _read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("unreadable")
    return {"root": root, "model": make_model(root / "model"), "images": make_images(root / "images", COLOURS[:2])}


def test_index_skips_and_lists_an_unreadable_file(world, tmp_path, capsys, monkeypatch):
    locked = world["images"][3]
    _lock(monkeypatch, locked)
    out = tmp_path / "cat.idx"
    assert main(["index", "--checkpoint", str(world["model"]), "--images", str(world["root"] / "images"), "-o",
                 str(out), "--no-progress", "--workers", "0"]) == 0
    assert json.loads((out / "index.json").read_text())["skipped"] == [str(locked)]
    assert f"skipped (unreadable): {locked}" in capsys.readouterr().out


def test_a_thumbnail_of_an_unreadable_file_is_a_404(world, tmp_path, monkeypatch):
    from vitrieval.index import Index

    index = Index.build(world["model"], world["root"] / "images", None, factory="Flat", num_workers=0,
                        progress=False)
    entry = next(e for e in index.entries() if e.path == str(world["images"][5]))
    _lock(monkeypatch, world["images"][5])
    r = TestClient(create_app(index), raise_server_exceptions=False).get(f"/images/{entry.id}")
    assert r.status_code == 404 and "no longer readable" in r.json()["detail"]


def test_train_with_skip_counts_an_unreadable_file(products_32, tmp_path, monkeypatch):
    identities = sorted(p for p in products_32.iterdir() if p.is_dir())
    _lock(monkeypatch, *[sorted(folder.iterdir())[0] for folder in identities[:8]])  # a view of each training one
    config = apply_overrides(load_preset("cpu-tiny"), [
        f"data.root={products_32}", "model.image_size=32", "model.patch_size=8", "model.depth=2",
        "model.embed_dim=64", "model.num_heads=2", "data.num_workers=0", "train.amp=off", "train.batch_size=16",
        "train.iterations=3", "train.eval_every=0", "data.on_bad_image=skip"])
    result = train(config, tmp_path / "run", progress=False)
    assert result.iterations == 3 and result.skipped_images >= 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_real_chmod_000_file_is_skipped(world, tmp_path, capsys):
    images = tmp_path / "images"
    make_images(images, COLOURS[:1])
    locked = sorted(images.iterdir())[0]
    locked.chmod(0)
    try:
        assert main(["index", "--checkpoint", str(world["model"]), "--images", str(images), "-o",
                     str(tmp_path / "x.idx"), "--no-progress", "--workers", "0"]) == 0
        assert f"skipped (unreadable): {locked}" in capsys.readouterr().out
    finally:
        locked.chmod(0o644)
