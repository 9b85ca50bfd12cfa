"""Dataset readers: each turns an on-disk format into the canonical :class:`~vitrieval.data.table.ImageTable`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from vitrieval.data.readers.folder import read_folder
from vitrieval.data.table import ImageTable, read_csv_table

READERS: dict[str, Callable[..., ImageTable]] = {
    "folder": read_folder,
    "csv": lambda root, **kw: read_csv_table(Path(root) if Path(root).is_file() else Path(root) / "table.csv", **kw),
}


def read_dataset(name: str, root: str | Path, **options: Any) -> ImageTable:
    """Read dataset ``name`` from ``root`` (see ``READERS`` for the names)."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    return READERS[name](root, **options)
