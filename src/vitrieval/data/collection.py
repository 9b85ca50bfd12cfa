"""A collection to index or search, given the way a user names it: a folder, a CSV table, paths or a table.

Every image of a collection is read through the dataset readers (one reader per on-disk format): a folder through
:func:`~vitrieval.data.readers.folder.list_images` (every image under it, recursively; labelled by class folder
when laid out that way, see :func:`folder_collection`), a ``.csv``
through the strict :func:`~vitrieval.data.readers.csv_table.read_csv` (``path`` column, optional ``label``,
``split``...; relative paths against the CSV's folder). Paths are absolute; an unknown label is ``-1``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitrieval.data.readers.csv_table import read_csv
from vitrieval.data.readers.folder import list_images, natural_key
from vitrieval.data.table import ImageTable, Record

ImagesArg = str | Path | ImageTable | Sequence[str | Path]
"""A folder, a ``.csv`` table, one image file, a list of image paths, or an :class:`ImageTable`."""


def absolute(path: Path) -> str:
    """``path`` resolved (links followed); a link that leads nowhere (dangling, a loop) keeps its own name."""
    if path.is_symlink() and not path.exists():
        return os.path.abspath(path)
    return str(path.resolve())


def folder_collection(root: Path) -> ImageTable:
    """Every image under ``root``; labelled by class folder when ``root`` is laid out as the folder reader's
    datasets are (``ROOT/<class>/…`` or ``ROOT/train|test/<class>/…``, at least two classes, every image in one):
    labels number the class names in natural order, as :func:`~vitrieval.data.readers.folder.read_folder` does.

    ``extras``: ``root`` (the folder, absolute) and, when labelled, ``classes`` (the names, label order).
    """
    files = list_images(root)
    split_layout = (root / "train").is_dir() and (root / "test").is_dir()
    class_of: list[str | None] = []
    for p in files:
        parts = p.relative_to(root).parts
        if split_layout:
            class_of.append(parts[1] if len(parts) > 2 and parts[0] in ("train", "test") else None)
        else:
            class_of.append(parts[0] if len(parts) > 1 else None)
    names = sorted({c for c in class_of if c is not None}, key=natural_key)
    extras: dict[str, Any] = {"root": str(root.resolve())}
    if None in class_of or len(names) < 2:
        return ImageTable([Record(absolute(p), -1) for p in files], root.name, extras)
    label_of = {name: i for i, name in enumerate(names)}
    extras["classes"] = names
    return ImageTable([Record(absolute(p), label_of[c]) for p, c in zip(files, class_of)], root.name, extras)


def collection_root(table: ImageTable) -> str | None:
    """The folder a collection's paths are named relative to: the indexed folder, else the images' deepest common
    folder; ``None`` when that is the file system's root (or there is none)."""
    root = table.extras.get("root")
    if root:
        return str(root)
    try:
        common = os.path.commonpath([os.path.dirname(r.path) for r in table.records])
    except ValueError:  # no paths, relative and absolute mixed, other drives
        return None
    return common if common and os.path.dirname(common) != common else None


def collection_table(images: ImagesArg) -> ImageTable:
    """The :class:`ImageTable` of ``images`` (see :data:`ImagesArg`); an empty collection is a ``ValueError``."""
    if isinstance(images, ImageTable):
        table = images
    elif isinstance(images, (str, Path)):
        path = Path(images).expanduser()
        if path.is_dir():
            table = folder_collection(path)
        elif path.suffix.lower() == ".csv" and path.is_file():
            table = read_csv(path)
        elif path.is_file():
            table = ImageTable([Record(absolute(path), -1)], path.stem)
        else:
            raise FileNotFoundError(f"images to index: {path} is neither a folder, a .csv table nor an image file")
    else:
        table = ImageTable([Record(absolute(Path(p).expanduser()), -1) for p in images], "images")
    if len(table) == 0:
        raise ValueError(f"no images to index in {images if isinstance(images, (str, Path)) else table.name}")
    return table
