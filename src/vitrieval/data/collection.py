"""A collection to index or search, given the way a user names it: a folder, a CSV table, paths or a table.

Every image of a collection is read through the dataset readers (one reader per on-disk format): a folder through
:func:`~vitrieval.data.readers.folder.list_images` (every image under it, recursively, labels unknown), a ``.csv``
through the strict :func:`~vitrieval.data.readers.csv_table.read_csv` (``path`` column, optional ``label``,
``split``...; relative paths against the CSV's folder). Paths are absolute; an unknown label is ``-1``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vitrieval.data.readers.csv_table import read_csv
from vitrieval.data.readers.folder import list_images
from vitrieval.data.table import ImageTable, Record

ImagesArg = str | Path | ImageTable | Sequence[str | Path]
"""A folder, a ``.csv`` table, one image file, a list of image paths, or an :class:`ImageTable`."""


def absolute(path: Path) -> str:
    """``path`` resolved (links followed); a link that leads nowhere (dangling, a loop) keeps its own name."""
    if path.is_symlink() and not path.exists():
        return os.path.abspath(path)
    return str(path.resolve())


def collection_table(images: ImagesArg) -> ImageTable:
    """The :class:`ImageTable` of ``images`` (see :data:`ImagesArg`); an empty collection is a ``ValueError``."""
    if isinstance(images, ImageTable):
        table = images
    elif isinstance(images, (str, Path)):
        path = Path(images).expanduser()
        if path.is_dir():
            table = ImageTable([Record(absolute(p), -1) for p in list_images(path)], path.name)
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
