"""In-Shop Clothes Retrieval (DeepFashion, Liu et al. 2016): ``list_eval_partition.txt``.

The partition file (in ``Eval/`` or the data root) starts with two header lines — the number of images, then the
column names ``image_name item_id evaluation_status`` — followed by one image a line with status ``train``,
``query`` or ``gallery``. Item ids such as ``id_00000001`` become the integer labels. Queries and gallery are
disjoint sets of test images: a query record has ``is_query=True, is_gallery=False``, a gallery record the reverse.
"""

from __future__ import annotations

import re
from pathlib import Path

from vitrieval.data.readers._common import malformed, numbered_lines, require_file
from vitrieval.data.table import ImageTable, Record

PARTITION_FILE = "list_eval_partition.txt"
LAYOUT = """  <data root>/
    Eval/list_eval_partition.txt     (or list_eval_partition.txt in the root)
                                     line 1: number of images; line 2: image_name item_id evaluation_status
                                     then: img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train|query|gallery
    img/WOMEN/Dresses/id_00000002/02_1_front.jpg"""
_ITEM_ID = re.compile(r"^(?:id_)?(\d+)$")
_FLAGS = {"train": ("train", True, True), "query": ("test", True, False), "gallery": ("test", False, True)}


def _partition_file(root: Path) -> Path:
    for candidate in (root / "Eval" / PARTITION_FILE, root / PARTITION_FILE):
        if candidate.is_file():
            return candidate
    return require_file(root / "Eval" / PARTITION_FILE, "inshop", LAYOUT)


def read_inshop(root: str | Path) -> ImageTable:
    """Read In-Shop from ``root`` (the folder holding ``Eval/`` and ``img/``).

    Image names are resolved relative to ``root`` as written (they normally start with ``img/``); names written
    without that prefix are looked up under ``root/img/`` when that is where the first image is.
    """
    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"inshop: data root {base} does not exist or is not a directory\n"
                                f"expected layout:\n{LAYOUT}")
    base = base.resolve()
    path = _partition_file(base)
    declared: int | None = None
    rows: list[tuple[int, str, int, str]] = []
    for line, fields in numbered_lines(path):
        if line == 1:
            if len(fields) != 1 or not fields[0].isdigit():
                raise malformed(path, line, f"the first line must be the number of images, got {' '.join(fields)!r}")
            declared = int(fields[0])
            continue
        if line == 2 and fields[0] == "image_name":
            continue
        if len(fields) != 3:
            raise malformed(path, line, f"expected 'image_name item_id evaluation_status', got {len(fields)} field(s)")
        name, item, status = fields
        match = _ITEM_ID.match(item)
        if match is None:
            raise malformed(path, line, f"item_id must look like 'id_00000001', got {item!r}")
        if status not in _FLAGS:
            raise malformed(path, line, f"evaluation_status must be train, query or gallery, got {status!r}")
        rows.append((line, name, int(match.group(1)), status))
    if declared is not None and declared != len(rows):
        raise ValueError(f"{path}: the first line declares {declared} images but {len(rows)} are listed "
                         "(truncated or edited file?)")
    if not rows:
        raise ValueError(f"{path}: no images listed")
    image_dir = base
    if not rows[0][1].startswith("img/") and not (base / rows[0][1]).exists() \
            and (base / "img" / rows[0][1]).exists():
        image_dir = base / "img"
    records = [Record(str(image_dir / name), label, *_FLAGS[status]) for _, name, label, status in rows]
    return ImageTable(records, "inshop")
