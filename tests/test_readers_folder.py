"""The ``folder`` reader (:mod:`vitrieval.data.readers.folder`), the one class-per-folder reader: natural,
case-insensitive order of class folders and of the images in a class."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from vitrieval.data.readers.folder import natural_key, read_folder


def test_folder_classes_follow_natural_order(tmp_path):
    """ORL-style names s1..s12: s2 comes before s10, so the first half is people 1-6."""
    for k in range(1, 13):
        (tmp_path / f"s{k}").mkdir()
        for v in range(2):
            Image.new("L", (4, 4), k).save(tmp_path / f"s{k}" / f"{v}.pgm")
    table = read_folder(tmp_path)
    assert table.extras["classes"][:3] == ["s1", "s2", "s3"]
    train_people = sorted({int(r.path.split("/")[-2][1:]) for r in table.split("train")})
    assert train_people == [1, 2, 3, 4, 5, 6]


def test_natural_key_orders_numbers_by_value() -> None:
    names = ["s10", "s2", "s1", "obj03", "S11"]
    assert sorted(names, key=natural_key) == ["obj03", "s1", "s2", "s10", "S11"]
    # ties in the case-insensitive numeric order fall back on the exact name: never the file system's order
    assert sorted(["a", "A", "s1", "s01", "S1"], key=natural_key) == ["A", "a", "S1", "s01", "s1"]
    assert sorted(["10.png", "1.png", "2.png", "x", "1a"], key=natural_key) == ["1.png", "1a", "2.png", "10.png", "x"]


def test_folder_images_in_natural_order_and_classes_ignore_case(tmp_path):
    """Numbered files 1, 2, 10 in that order (not 1, 10, 2), nested ones by their path in the class folder;
    class folders ordered ignoring case (a, B, c), labels = that position."""
    for name in ("c", "B", "a", "D"):
        (tmp_path / name / "sub").mkdir(parents=True)
        for v in (10, 1, 2):
            Image.new("L", (4, 4), v).save(tmp_path / name / f"{v}.png")
        Image.new("L", (4, 4), 0).save(tmp_path / name / "sub" / "3.png")
    table = read_folder(tmp_path, train_fraction=0.5)
    assert table.extras["classes"] == ["a", "B", "c", "D"]
    rel = [Path(r.path).relative_to(tmp_path).as_posix() for r in table]
    assert rel[:4] == ["a/1.png", "a/2.png", "a/10.png", "a/sub/3.png"]
    assert [r.label for r in table] == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert [r.split for r in table] == ["train"] * 8 + ["test"] * 8
