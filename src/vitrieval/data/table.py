"""The one canonical table every dataset reader produces.

A record is one image: ``path, label, split, is_query, is_gallery, bbox``. Everything downstream (sampler,
training, evaluation, indexing) reads only an :class:`ImageTable`, so a new dataset is one small reader.

Conventions
-----------
- ``path`` is absolute (readers resolve it against their data root).
- ``label`` is an int (class / identity / landmark id); ``-1`` when unknown (a plain collection to index).
- ``split`` is ``"train"`` or ``"test"`` (landmark databases and collections use ``"test"``).
- In the test split, ``is_query`` / ``is_gallery`` say which side of retrieval an image takes. For the
  leave-one-out protocol (SOP, CUB) every test image is both.
- ``bbox`` is ``(x1, y1, x2, y2)`` in pixels, or ``None``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Record:
    """One image of a dataset."""

    path: str
    label: int
    split: str = "test"
    is_query: bool = True
    is_gallery: bool = True
    bbox: tuple[float, float, float, float] | None = None
    class_name: str | None = None  # the name of its class, where the source gives one (a CSV's class_name column)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"record {self.path!r}: split must be one of {SPLITS}, got {self.split!r}")


@dataclass
class ImageTable:
    """An ordered list of :class:`Record` with the views downstream code needs."""

    records: list[Record]
    name: str = "table"
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.records]

    @property
    def labels(self) -> np.ndarray:
        """Labels as int64 (never float: large ids must stay exact)."""
        return np.asarray([r.label for r in self.records], dtype=np.int64)

    def select(self, keep: Iterable[bool] | np.ndarray, name: str | None = None) -> ImageTable:
        mask = list(keep)
        if len(mask) != len(self.records):
            raise ValueError(f"mask length {len(mask)} != table length {len(self.records)}")
        return ImageTable([r for r, k in zip(self.records, mask) if k], name or self.name, dict(self.extras))

    def evenly_subsampled(self, max_images: int) -> ImageTable:
        """Every k-th row (k = ceil(len / max_images)) when longer than ``max_images`` (0 = all rows): a PCA of a
        few hundred dimensions is fitted as well on 20,000 descriptors as on SfM-120k's 91,642."""
        if max_images <= 0 or len(self) <= max_images:
            return self
        stride = -(-len(self) // max_images)
        return self.select([i % stride == 0 for i in range(len(self))], f"{self.name}[::{stride}]")

    def split(self, split: str) -> ImageTable:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.select([r.split == split for r in self.records], f"{self.name}/{split}")

    def queries(self) -> ImageTable:
        """Test-split records that act as queries."""
        return self.select([r.split == "test" and r.is_query for r in self.records], f"{self.name}/query")

    def gallery(self) -> ImageTable:
        """Test-split records that act as gallery (database) items."""
        return self.select([r.split == "test" and r.is_gallery for r in self.records], f"{self.name}/gallery")

    def is_leave_one_out(self) -> bool:
        """True when every test image is both a query and a gallery item (SOP / CUB protocol)."""
        test = [r for r in self.records if r.split == "test"]
        return bool(test) and all(r.is_query and r.is_gallery for r in test)

    def class_counts(self) -> Counter:
        return Counter(r.label for r in self.records)

    def with_split(self, split: str) -> ImageTable:
        return ImageTable([replace(r, split=split) for r in self.records], self.name, dict(self.extras))

    def summary(self) -> dict[str, int]:
        """Counts per split (images and classes), queries and gallery items."""
        out: dict[str, int] = {}
        for s in SPLITS:
            recs = [r for r in self.records if r.split == s]
            out[f"{s}_images"] = len(recs)
            out[f"{s}_classes"] = len({r.label for r in recs})
        out["queries"] = sum(r.split == "test" and r.is_query for r in self.records)
        out["gallery"] = sum(r.split == "test" and r.is_gallery for r in self.records)
        return out

    # -- CSV round trip (also the `csv` dataset format) -------------------------------------------------------
    CSV_COLUMNS: tuple[str, ...] = ("path", "label", "split", "is_query", "is_gallery", "x1", "y1", "x2", "y2")

    def to_csv(self, path: str | Path) -> None:
        from vitrieval.io_utils import atomic_write_text

        rows = [",".join(self.CSV_COLUMNS)]
        for r in self.records:
            box = ["", "", "", ""] if r.bbox is None else [f"{v:g}" for v in r.bbox]
            rows.append(",".join([_csv_quote(r.path), str(r.label), r.split, str(int(r.is_query)),
                                  str(int(r.is_gallery)), *box]))
        atomic_write_text(path, "\n".join(rows) + "\n")


def _csv_quote(value: str) -> str:
    if any(c in value for c in ',"\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def records_from_rows(rows: Sequence[dict], root: Path, source: str) -> list[Record]:
    """Build records from CSV-like dict rows (keys as in ``ImageTable.CSV_COLUMNS``; only path/label required)."""
    out = []
    for line, row in enumerate(rows, start=2):
        try:
            path = row["path"]
            label = int(row["label"]) if row.get("label", "") not in ("", None) else -1
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{source}, line {line}: needs columns 'path' and an integer 'label' ({exc})") from exc
        p = Path(path)
        if not p.is_absolute():
            p = root / p
        split = row.get("split") or "test"
        box = None
        if all(row.get(k) not in (None, "") for k in ("x1", "y1", "x2", "y2")):
            box = tuple(float(row[k]) for k in ("x1", "y1", "x2", "y2"))
        out.append(Record(str(p), label, split, _flag(row.get("is_query"), True), _flag(row.get("is_gallery"), True),
                          box, (row.get("class_name") or "").strip() or None))
    return out


def _flag(value: str | None, default: bool) -> bool:
    if value in (None, ""):
        return default
    return str(value).strip().lower() in ("1", "true", "yes")

