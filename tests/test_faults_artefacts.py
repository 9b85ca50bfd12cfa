"""Issue 14, case 7: a corrupt artefact is one line naming the file and what to do, exit code 2, in every command
that reads it (no traceback): a truncated ``model.safetensors`` / ``pca.safetensors``, weights of another
architecture, a damaged ``config.json``, a truncated ``index.faiss``, a damaged ``index.json`` / ``rows.sqlite``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from index_world import build_world
from vitrieval.cli import main
from vitrieval.config import ModelConfig
from vitrieval.index.store import generation_dir
from vitrieval.model import Encoder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    world = build_world(root)
    Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8,
                        depth=2)).save(root / "two_blocks")
    classes = root / "classes"  # a class-per-folder copy of the images, for `evaluate`
    for i, path in enumerate(p for p in world["images"] if "corrupt" not in p.name):
        (classes / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, classes / f"c{i % 4}" / path.name)
    world["classes"] = classes
    return world


def _model(world: dict, tmp_path: Path, damage: str) -> Path:
    """A copy of the world's model folder with one damage."""
    model = tmp_path / "model"
    shutil.copytree(world["model"], model)
    if damage == "truncated weights":
        data = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(data[: len(data) // 3])
    elif damage == "empty weights":
        (model / "model.safetensors").write_bytes(b"")
    elif damage == "other architecture":
        shutil.copy(world["root"] / "two_blocks" / "model.safetensors", model / "model.safetensors")
    elif damage == "config.json":
        (model / "config.json").write_text('{"model": {"name": ')
    return model


def _index(world: dict, tmp_path: Path, damage: str) -> Path:
    shutil.copytree(world["index_dir"], tmp_path / "damaged.idx")
    index = generation_dir(tmp_path / "damaged.idx")  # the data files' folder
    if damage == "index.json":
        index = tmp_path / "damaged.idx"
    if damage == "index.faiss":
        data = (index / "index.faiss").read_bytes()
        (index / "index.faiss").write_bytes(data[:300])
    elif damage == "index.json":
        (index / "index.json").write_text("{ not json")
    elif damage == "rows.sqlite":
        data = bytearray((index / "rows.sqlite").read_bytes())
        data[:100] = b"\xff" * 100  # the database header: not SQLite any more
        (index / "rows.sqlite").write_bytes(bytes(data))
    elif damage == "rows.sqlite replaced by a folder":
        (index / "rows.sqlite").unlink()
        (index / "rows.sqlite").mkdir()
    return index


def _one_line(capsys: pytest.CaptureFixture, command: str, *names: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"vitrieval {command}: error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


MODEL_DAMAGE = {"truncated weights": ("model.safetensors is unreadable", "copy the model folder again"),
                "empty weights": ("model.safetensors is unreadable", "copy the model folder again"),
                "other architecture": ("model.safetensors does not fit the architecture in",
                                       "copy the model folder again as a whole"),
                "config.json": ("config.json is unreadable", "copy the model folder again")}


@pytest.mark.parametrize("damage", list(MODEL_DAMAGE))
def test_a_damaged_model_in_index_and_search(world, tmp_path, capsys, damage):
    model = _model(world, tmp_path, damage)
    query = str(world["images"][0])
    assert main(["index", "--checkpoint", str(model), "--images", str(world["root"] / "images"), "-o",
                 str(tmp_path / "out.idx"), "--no-progress"]) == 2
    line = _one_line(capsys, "index", str(model), *MODEL_DAMAGE[damage])
    assert main(["search", "--index", str(world["index_dir"]), "--checkpoint", str(model), query]) == 2
    assert _one_line(capsys, "search", str(model), *MODEL_DAMAGE[damage]) == line.replace("index:", "search:", 1)


@pytest.mark.parametrize("damage", ["truncated weights", "other architecture", "config.json"])
def test_a_damaged_model_in_evaluate(world, tmp_path, capsys, damage):
    model = _model(world, tmp_path, damage)
    assert main(["evaluate", "--checkpoint", str(model), "--dataset", "folder", "--data-root",
                 str(world["classes"]), "--no-progress"]) == 2
    _one_line(capsys, "evaluate", str(model), *MODEL_DAMAGE[damage])


def test_a_damaged_model_in_serve_fails_before_serving(world, tmp_path, capsys, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("served a broken model"))
    model = _model(world, tmp_path, "truncated weights")
    assert main(["serve", "--index", str(world["index_dir"]), "--checkpoint", str(model)]) == 2
    _one_line(capsys, "serve", str(model / "model.safetensors"), "is unreadable")
    assert "serving" not in capsys.readouterr().out


def test_a_truncated_pca_file_is_named(world, tmp_path, capsys):
    import torch

    from vitrieval.model import load
    from vitrieval.pca import PCAReduction

    model = _model(world, tmp_path, "none")
    encoder = load(model)
    encoder.set_pca(PCAReduction(torch.eye(encoder.feature_dim)[:16], torch.zeros(16), False))
    encoder.save(model)
    data = (model / "pca.safetensors").read_bytes()
    (model / "pca.safetensors").write_bytes(data[:40])
    assert main(["search", "--index", str(world["index_dir"]), "--checkpoint", str(model),
                 str(world["images"][0])]) == 2
    _one_line(capsys, "search", str(model / "pca.safetensors"), "is unreadable")


INDEX_DAMAGE = {"index.faiss": "index.faiss is unreadable by faiss (truncated or damaged): rebuild the index",
                "index.json": "index.json is not valid JSON",
                "rows.sqlite": "rows.sqlite is not a rows database",
                "rows.sqlite replaced by a folder": "rows.sqlite is missing"}


@pytest.mark.parametrize("damage", list(INDEX_DAMAGE))
def test_a_damaged_index_in_search_serve_and_index_add(world, tmp_path, capsys, monkeypatch, damage):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("served a broken index"))
    _index(world, tmp_path, damage)
    index = tmp_path / "damaged.idx"
    assert main(["search", "--index", str(index), str(world["images"][0])]) == 2
    _one_line(capsys, "search", str(index), INDEX_DAMAGE[damage])
    assert main(["serve", "--index", str(index)]) == 2
    _one_line(capsys, "serve", str(index), INDEX_DAMAGE[damage])
    assert main(["index", "--add", "-o", str(index), "--images", str(world["images"][0]), "--no-progress"]) == 2
    _one_line(capsys, "index", str(index), INDEX_DAMAGE[damage])


def test_the_lazy_user_errors_stay_one_line_without_importing_the_model_module():
    """``vitrieval.cli`` stays cheap: the model's error class is looked up only once that module is loaded."""
    import subprocess
    import sys

    code = ("import sys; import vitrieval.cli as c; assert 'vitrieval.model' not in sys.modules; "
            "assert c.is_user_error(ValueError('x')) and not c.is_user_error(RuntimeError('x'))")
    subprocess.run([sys.executable, "-c", code], check=True)
