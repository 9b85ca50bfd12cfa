"""The ``csv`` dataset: a CSV with columns ``path,label`` and optionally ``split,is_query,is_gallery,x1,y1,x2,y2``
and ``class_name`` (the label's name: an index shows it with the hits).

This is also the format :meth:`ImageTable.to_csv` writes. Relative paths are resolved against the CSV's folder
(or ``image_root``). Missing ``split`` means ``test``; missing flags mean ``True``; a missing or empty label is
``-1``. Every row is validated first so that an error names the file and the line.
"""

from __future__ import annotations

import csv
from pathlib import Path

from vitrieval.data.readers._common import require_file
from vitrieval.data.table import SPLITS, ImageTable, records_from_rows

DEFAULT_NAME = "table.csv"
LAYOUT = """  <data root>/table.csv   (or pass the CSV file itself as the root)
    path,label[,split,is_query,is_gallery,x1,y1,x2,y2]
    images/a.jpg,3,train,1,1,,,,"""
_FLAG_VALUES = {"", "0", "1", "true", "false", "yes", "no"}


def _check_row(row: dict, source: Path, line: int) -> None:
    def bad(reason: str) -> ValueError:
        return ValueError(f"{source}, line {line}: {reason}")

    if None in row:
        raise bad(f"more fields than the {len(row) - 1} header columns")
    if not (row.get("path") or "").strip():
        raise bad("empty 'path'")
    label = (row.get("label") or "").strip()
    if label:
        try:
            int(label)
        except ValueError:
            raise bad(f"'label' must be an integer, got {label!r}") from None
    split = row.get("split") or ""
    if split and split not in SPLITS:
        raise bad(f"'split' must be one of {SPLITS}, got {split!r}")
    for key in ("is_query", "is_gallery"):
        if str(row.get(key) or "").strip().lower() not in _FLAG_VALUES:
            raise bad(f"{key!r} must be 0/1 or true/false, got {row.get(key)!r}")
    box = [row.get(k) or "" for k in ("x1", "y1", "x2", "y2")]
    if any(box):
        if not all(box):
            raise bad(f"a bounding box needs all of x1, y1, x2, y2, got {box}")
        try:
            x1, y1, x2, y2 = (float(v) for v in box)
        except ValueError:
            raise bad(f"bounding box values must be numbers, got {box}") from None
        if x2 <= x1 or y2 <= y1:
            raise bad(f"bounding box must have x2 > x1 and y2 > y1, got {box}")


def read_csv(root: str | Path, image_root: str | Path | None = None) -> ImageTable:
    """Read a CSV table: ``root`` is the CSV file or a folder holding ``table.csv``."""
    root = Path(root).expanduser()
    path = require_file(root if root.suffix.lower() == ".csv" or root.is_file() else root / DEFAULT_NAME,
                        "csv", LAYOUT).resolve()
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{path}, line 1: the header must contain a 'path' column, got {reader.fieldnames}")
        rows = []
        for row in reader:
            _check_row(row, path, reader.line_num)
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no images listed")
    base = Path(image_root).expanduser().resolve() if image_root else path.parent
    return ImageTable(records_from_rows(rows, base, str(path)), path.stem)
