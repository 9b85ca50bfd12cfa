"""CUB-200-2011 (Wah et al. 2011) with the deep-metric-learning split: classes 1–100 train, 101–200 test.

Files: ``images.txt`` (``image_id path``), ``image_class_labels.txt`` (``image_id class_id``), optionally
``bounding_boxes.txt`` (``image_id x y width height``), images under ``images/``. The official
``train_test_split.txt`` is a classification split and is not used. The test split is leave-one-out.
"""

from __future__ import annotations

from pathlib import Path

from vitrieval.data.readers._common import find_root, malformed, numbered_lines, parse_float, parse_int, require_file
from vitrieval.data.table import ImageTable, Record

N_TRAIN_CLASSES = 100
LAYOUT = """  CUB_200_2011/                      (the data root, or its parent)
    images.txt                       image_id relative/path.jpg
    image_class_labels.txt           image_id class_id (1-200)
    bounding_boxes.txt               image_id x y width height (only needed with use_bbox=True)
    images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg"""


def _pairs(path: Path, what: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for line, fields in numbered_lines(path):
        if len(fields) < 2:
            raise malformed(path, line, f"expected 'image_id {what}', got {len(fields)} field(s)")
        image_id = parse_int(fields[0], path, line, "image_id")
        if image_id in out:
            raise malformed(path, line, f"image_id {image_id} appears twice")
        out[image_id] = " ".join(fields[1:])
    return out


def _boxes(path: Path) -> dict[int, tuple[float, float, float, float]]:
    out: dict[int, tuple[float, float, float, float]] = {}
    for line, fields in numbered_lines(path):
        if len(fields) != 5:
            raise malformed(path, line, f"expected 'image_id x y width height', got {len(fields)} field(s)")
        image_id = parse_int(fields[0], path, line, "image_id")
        x, y, w, h = (parse_float(v, path, line, name) for v, name in zip(fields[1:], ("x", "y", "width", "height")))
        if w <= 0 or h <= 0:
            raise malformed(path, line, f"bounding box width and height must be positive, got {w} x {h}")
        out[image_id] = (x, y, x + w, y + h)
    return out


def read_cub(root: str | Path, use_bbox: bool = False) -> ImageTable:
    """Read CUB-200-2011 from ``root`` (the ``CUB_200_2011`` folder or its parent).

    With ``use_bbox=True`` each record's ``bbox`` holds the official box converted to ``(x1, y1, x2, y2)`` so that
    downstream code crops to it; otherwise ``bbox`` is ``None`` (the paper's protocol uses whole images).
    """
    base = find_root(root, "images.txt", ("CUB_200_2011",))
    images_file = require_file(base / "images.txt", "cub", LAYOUT)
    labels_file = require_file(base / "image_class_labels.txt", "cub", LAYOUT)
    names = _pairs(images_file, "path")
    if not names:
        raise ValueError(f"{images_file}: no images listed")
    raw_labels = _pairs(labels_file, "class_id")
    boxes = _boxes(require_file(base / "bounding_boxes.txt", "cub", LAYOUT)) if use_bbox else {}
    records: list[Record] = []
    for image_id, name in names.items():
        if image_id not in raw_labels:
            raise ValueError(f"{labels_file}: no class for image_id {image_id} (listed in {images_file})")
        try:
            label = int(raw_labels[image_id])
        except ValueError:
            raise ValueError(f"{labels_file}: class of image_id {image_id} must be an integer, "
                             f"got {raw_labels[image_id]!r}") from None
        if use_bbox and image_id not in boxes:
            raise ValueError(f"{base / 'bounding_boxes.txt'}: no box for image_id {image_id}")
        split = "train" if label <= N_TRAIN_CLASSES else "test"
        records.append(Record(str(base / "images" / name), label, split, True, True, boxes.get(image_id)))
    return ImageTable(records, "cub", {"use_bbox": use_bbox})
