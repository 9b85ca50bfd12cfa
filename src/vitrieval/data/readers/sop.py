"""Stanford Online Products (Song et al. 2016): ``Ebay_train.txt`` / ``Ebay_test.txt``.

Each split file has a header ``image_id class_id super_class_id path`` and one image a line; ``path`` is
relative to the dataset folder. Class ids are 1-based and disjoint between the splits (11,318 training classes,
11,316 test classes). The test split is leave-one-out: every test image is both a query and a gallery item.
"""

from __future__ import annotations

from pathlib import Path

from vitrieval.data.readers._common import find_root, malformed, numbered_lines, parse_int, require_file
from vitrieval.data.table import ImageTable, Record

SPLIT_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
LAYOUT = """  Stanford_Online_Products/          (the data root, or its parent)
    Ebay_train.txt                   header: image_id class_id super_class_id path
    Ebay_test.txt
    bicycle_final/111085122871_0.JPG (paths as written in the split files)"""


def read_sop(root: str | Path) -> ImageTable:
    """Read Stanford Online Products from ``root`` (the folder with ``Ebay_*.txt`` or its parent).

    Labels are the official ``class_id``; ``extras["super_class_of"]`` maps each class id to its super-class id.
    """
    base = find_root(root, SPLIT_FILES["train"], ("Stanford_Online_Products",))
    records: list[Record] = []
    super_of: dict[int, int] = {}
    for split, filename in SPLIT_FILES.items():
        path = require_file(base / filename, "sop", LAYOUT)
        for line, fields in numbered_lines(path):
            if line == 1 and fields[0] == "image_id":
                continue
            if len(fields) < 4:
                raise malformed(path, line, "expected 'image_id class_id super_class_id path', "
                                            f"got {len(fields)} field(s)")
            parse_int(fields[0], path, line, "image_id")
            label = parse_int(fields[1], path, line, "class_id")
            super_of[label] = parse_int(fields[2], path, line, "super_class_id")
            records.append(Record(str(base / " ".join(fields[3:])), label, split, True, True))
        if not any(r.split == split for r in records):
            raise ValueError(f"{path}: no images listed")
    return ImageTable(records, "sop", {"super_class_of": super_of})
