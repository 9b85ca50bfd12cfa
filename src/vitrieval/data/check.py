"""Check a dataset on disk against its official description: counts, missing files, undecodable images.

``check_dataset("sop", "/data/Stanford_Online_Products")`` reads the dataset with its reader, compares the
counts per split (and the query–positive pairs per split, where a reader lists them) with
:data:`OFFICIAL_COUNTS`, looks for every listed file and (unless ``verify_images=False``) fully decodes each image
with :func:`vitrieval.data.images.load_image`, so truncated files are caught too.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitrieval.data.images import ImageDecodeError, load_image
from vitrieval.data.table import ImageTable

#: Counts of the official splits (keys as in :meth:`ImageTable.summary`); only the keys given are compared.
OFFICIAL_COUNTS: dict[str, dict[str, int]] = {
    "sop": {"train_images": 59_551, "train_classes": 11_318, "test_images": 60_502, "test_classes": 11_316,
            "queries": 60_502, "gallery": 60_502},
    "cub": {"train_images": 5_864, "train_classes": 100, "test_images": 5_924, "test_classes": 100,
            "queries": 5_924, "gallery": 5_924},
    # 7,982 item ids in all: 3,997 train, 3,985 test; 14,218 query + 12,612 gallery = 26,830 test images.
    "inshop": {"train_images": 25_882, "train_classes": 3_997, "test_images": 26_830, "test_classes": 3_985,
               "queries": 14_218, "gallery": 12_612},
    # The table holds the database images and, again, the 70 (cropped) queries.
    "roxford5k": {"train_images": 0, "test_images": 4_993 + 70, "queries": 70, "gallery": 4_993},
    "rparis6k": {"train_images": 0, "test_images": 6_322 + 70, "queries": 70, "gallery": 6_322},
    # retrieval-SfM-120k.pkl: train 91,642 images / 181,697 pairs, val (the test split) 6,403 images / 1,691 pairs
    # (len of cids / qidxs, as cirtorch and DELF's Sfm120kInfo list them); 551 / 162 3D models (classes).
    "sfm120k": {"train_images": 91_642, "train_classes": 551, "test_images": 6_403, "test_classes": 162,
                "queries": 6_403, "gallery": 6_403, "train_pairs": 181_697, "test_pairs": 1_691},
}

COUNT_KEYS = ("train_images", "train_classes", "test_images", "test_classes", "queries", "gallery")
#: Further counts, reported only for tables that have them (``extras["pairs"]``: query–positive pairs per split).
EXTRA_COUNT_KEYS = ("train_pairs", "test_pairs")


def table_counts(table: ImageTable) -> dict[str, int]:
    """:meth:`ImageTable.summary` plus ``<split>_pairs`` when the table carries ``extras["pairs"]``."""
    counts = table.summary()
    pairs = table.extras.get("pairs")
    if isinstance(pairs, dict):
        for split, rows in pairs.items():
            counts[f"{split}_pairs"] = len(rows)
    return counts


@dataclass
class DatasetCheck:
    """What :func:`check_dataset` found. ``ok`` is true when counts match and every file is present and readable."""

    name: str
    root: str
    counts: dict[str, int]
    official: dict[str, int] | None = None
    mismatches: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    warnings: list[str] = field(default_factory=list)
    images_verified: bool = False

    @property
    def ok(self) -> bool:
        return not (self.mismatches or self.missing or self.unreadable)

    def format(self, max_listed: int = 20) -> str:
        """A readable multi-line report."""
        lines = [f"dataset {self.name} at {self.root}"]
        extra = [k for k in EXTRA_COUNT_KEYS if k in self.counts or k in (self.official or {})]
        width = max(len(k) for k in (*COUNT_KEYS, *extra))
        for key in (*COUNT_KEYS, *extra):
            found = self.counts.get(key, 0)
            ref = (self.official or {}).get(key)
            note = "" if ref is None else ("  (official)" if ref == found else f"  != official {ref:,}")
            lines.append(f"  {key:<{width}}  {found:>9,}{note}")
        if self.official is None:
            lines.append("  (no official counts for this dataset)")

        def listing(title: str, items: list[str]) -> None:
            if not items:
                return
            lines.append(f"{title} ({len(items):,}):")
            lines.extend(f"  {item}" for item in items[:max_listed])
            if len(items) > max_listed:
                lines.append(f"  ... and {len(items) - max_listed:,} more")

        listing("count mismatches", self.mismatches)
        listing("missing files", self.missing)
        listing("unreadable files", [f"{path}: {reason}" for path, reason in self.unreadable])
        listing("warnings", self.warnings)
        checked = "decoded" if self.images_verified else "checked for existence only (--no-verify-images)"
        lines.append(f"images {checked}")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def _structure_warnings(table: ImageTable) -> list[str]:
    out: list[str] = []
    train = {r.label for r in table if r.split == "train" and r.label >= 0}
    test = {r.label for r in table if r.split == "test" and r.label >= 0}
    if train & test:
        out.append(f"{len(train & test):,} label(s) appear in both train and test (e.g. {sorted(train & test)[:5]})")
    n_test = sum(r.split == "test" for r in table)
    queries, gallery = table.queries(), table.gallery()
    if n_test and not len(queries):
        out.append("the test split has no queries")
    if n_test and not len(gallery):
        out.append("the test split has no gallery items")
    if len(queries) and len(gallery) and any(r.label >= 0 for r in queries):
        gallery_count = gallery.class_counts()
        lonely = 0
        for r in queries:
            if r.label < 0:
                continue
            others = gallery_count.get(r.label, 0) - (1 if r.is_gallery else 0)
            lonely += others <= 0
        if lonely:
            out.append(f"{lonely:,} quer(y/ies) have no other gallery image of their label (recall is 0 for them)")
    return out


def _decode(path: str) -> str | None:
    try:
        load_image(path)
    except ImageDecodeError as exc:
        return exc.reason
    return None


def check_dataset(name: str, root: str | Path, verify_images: bool = True, progress: bool = True,
                  workers: int | None = None, **options: Any) -> DatasetCheck:
    """Read dataset ``name`` from ``root`` and check it; reader errors (missing split files, malformed lines)
    propagate as :class:`FileNotFoundError` / :class:`ValueError`.

    ``workers`` threads decode images (Pillow releases the GIL while decoding); default ``min(8, cpu_count)``.
    ``options`` go to the reader (e.g. ``use_bbox=True`` for ``cub``).
    """
    from vitrieval.data.readers import read_dataset

    table = read_dataset(name, root, **options)
    counts = table_counts(table)
    official = OFFICIAL_COUNTS.get(name)
    result = DatasetCheck(name, str(Path(root).expanduser().resolve()), counts,
                          dict(official) if official is not None else None)
    for key, expected in (official or {}).items():
        found = counts.get(key, 0)
        if found != expected:
            result.mismatches.append(f"{key}: found {found:,}, official {expected:,} ({found - expected:+,})")
    result.warnings.extend(_structure_warnings(table))

    present: list[str] = []
    for path in dict.fromkeys(table.paths):  # unique, in table order
        try:
            size = os.stat(path).st_size
        except OSError:
            result.missing.append(path)
            continue
        if not os.path.isfile(path):
            result.missing.append(path)
        elif size == 0:
            result.unreadable.append((path, "the file is empty"))
        else:
            present.append(path)
    if verify_images and present:
        from vitrieval.progress import tqdm

        n_workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(n_workers) as pool:
            reasons = pool.map(_decode, present)
            for path, reason in zip(present, tqdm(reasons, total=len(present), disable=not progress,
                                                  desc=f"decoding {name} images", unit="img")):
                if reason is not None:
                    result.unreadable.append((path, reason))
    result.images_verified = verify_images
    return result
