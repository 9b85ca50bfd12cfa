"""The demo's data (:mod:`vitrieval.demo.data`): a user's class-per-folder dataset, read by the one folder reader and
split in natural class order."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vitrieval.data.readers import read_dataset
from vitrieval.demo import folder_table

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_folder_table_splits_classes_in_natural_order(tmp_path) -> None:
    for k in range(1, 13):
        d = tmp_path / f"s{k}"
        d.mkdir()
        for v in range(2):
            Image.new("RGB", (8, 8), (k * 10, v * 50, 0)).save(d / f"{v + 1}.png")
    table = folder_table(tmp_path, 0.5)
    train = {Path(r.path).parent.name for r in table if r.split == "train"}
    assert train == {f"s{k}" for k in range(1, 7)}  # not s1, s10, s11, s12, s2, s3 (plain sorting)
    assert table.extras["classes"][:3] == ["s1", "s2", "s3"]
    assert all(r.label == int(Path(r.path).parent.name[1:]) - 1 for r in table)


def test_folder_table_is_the_folder_readers_table(tmp_path) -> None:
    """One folder reader: the demo's table is ``read_dataset("folder", ...)``'s, record for record, on mixed-case
    class names and numbered files (natural, case-insensitive order: s1, S2, s10; 1.png, 2.png, 10.png)."""
    root = tmp_path / "faces"
    for name in ("s10", "S2", "s1", "Obj3", "obj20", "b"):
        (root / name).mkdir(parents=True)
        for v in (10, 2, 1):
            Image.new("RGB", (8, 8), (v, 0, 0)).save(root / name / f"{v}.png")
    table = folder_table(root, 0.5)
    reader = read_dataset("folder", root.resolve(), train_fraction=0.5)
    assert list(table) == list(reader)
    assert table.name == reader.name == "faces" and table.extras == reader.extras
    assert table.extras["classes"] == ["b", "Obj3", "obj20", "s1", "S2", "s10"]
    assert [(Path(r.path).parent.name, Path(r.path).name, r.label, r.split) for r in table][:6] == [
        ("b", "1.png", 0, "train"), ("b", "2.png", 0, "train"), ("b", "10.png", 0, "train"),
        ("Obj3", "1.png", 1, "train"), ("Obj3", "2.png", 1, "train"), ("Obj3", "10.png", 1, "train")]
    assert [r.split for r in table].count("test") == 9
    assert all(Path(r.path).is_absolute() for r in table)


def test_folder_table_orl_trains_on_people_1_to_20() -> None:
    root = SHARED_DATA / "orl_faces"
    if not root.is_dir():
        pytest.skip(f"ORL faces not found at {root}")
    table = folder_table(root, 0.5)
    train = {Path(r.path).parent.name for r in table if r.split == "train"}
    assert train == {f"s{k}" for k in range(1, 21)}
    assert table.summary()["test_images"] == 200
