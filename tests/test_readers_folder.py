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


def _class_store(store: Path, names: list[str], per_class: int = 2) -> None:
    for k, name in enumerate(names):
        (store / name).mkdir(parents=True)
        for v in range(per_class):
            Image.new("L", (4, 4), 10 * k + v).save(store / name / f"{v}.png")


def test_class_folders_that_are_links_are_read(tmp_path):
    """A catalogue assembled from links (class folders and a sub-folder linked from elsewhere) reads as if copied."""
    store, root = tmp_path / "store", tmp_path / "catalogue"
    _class_store(store, ["cat", "dog", "eel", "fox"])
    root.mkdir()
    for name in ("cat", "dog", "eel"):
        (root / name).symlink_to(store / name, target_is_directory=True)
    (root / "fox").mkdir()
    (root / "fox" / "more").symlink_to(store / "fox", target_is_directory=True)
    table = read_folder(root, train_fraction=0.5)
    assert table.extras["classes"] == ["cat", "dog", "eel", "fox"]
    rel = [Path(r.path).relative_to(root).as_posix() for r in table]
    assert rel == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png", "eel/0.png", "eel/1.png",
                   "fox/more/0.png", "fox/more/1.png"]
    assert [r.label for r in table] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_a_collection_of_linked_class_folders_is_labelled(tmp_path):
    from vitrieval.data.collection import collection_table

    store, root = tmp_path / "store", tmp_path / "catalogue"
    _class_store(store, ["a", "b"], per_class=3)
    root.mkdir()
    for name in ("a", "b"):
        (root / name).symlink_to(store / name, target_is_directory=True)
    table = collection_table(root)
    assert [(Path(r.path).relative_to(store).as_posix(), r.label) for r in table] == [
        ("a/0.png", 0), ("a/1.png", 0), ("a/2.png", 0), ("b/0.png", 1), ("b/1.png", 1), ("b/2.png", 1)]
    assert table.extras["classes"] == ["a", "b"]


def test_a_link_loop_is_not_followed_and_reported_in_one_line(tmp_path, caplog):
    from vitrieval.data.readers.folder import list_images

    root = tmp_path / "photos"
    _class_store(root, ["x", "y"])
    (root / "x" / "back").symlink_to(root, target_is_directory=True)      # x/back -> photos (a loop)
    (root / "y" / "self").symlink_to(root / "y", target_is_directory=True)  # y/self -> y (a loop)
    (root / "y" / "x_again").symlink_to(root / "x", target_is_directory=True)  # not a loop: x is no parent of y
    with caplog.at_level("WARNING", logger="vitrieval"):
        found = list_images(root)
    rel = [p.relative_to(root).as_posix() for p in found]
    assert rel == ["x/0.png", "x/1.png", "y/0.png", "y/1.png", "y/x_again/0.png", "y/x_again/1.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    # y/x_again/back leads back to photos too (through the link it was reached by)
    assert warnings[0].endswith("3 directory link(s) lead back to a folder above them (a loop), not followed: "
                                "x/back, y/self, y/x_again/back")
