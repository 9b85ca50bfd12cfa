"""The ``folder`` dataset: ``ROOT/<class>/<image>``, or ``ROOT/train/<class>/…`` and ``ROOT/test/<class>/…``.

Without explicit ``train/`` and ``test/`` sub-folders, classes are sorted by name in natural order (``s2`` before
``s10``, so ORL's people 1-20 come first) and the first
``train_fraction`` of them (rounded down, at least one on each side) go to training; the rest are held out, as in
the deep-metric-learning convention (test classes are never seen in training). Every test image is both a query
and a gallery item (leave-one-out, as for SOP and CUB).

One order rule for class folders and for the images in a class (:func:`natural_key`): natural order, ignoring
case (``s1, S2, s10``; ``1.png, 2.png, 10.png``), images by their path inside the class folder. This is the only
class-per-folder reader: the demo, training (``data.dataset=folder``) and the SfM-120k converter all use it.

:func:`walk_files` is the only folder walker: it follows directory links (catalogues are often assembled from
links), and a link that leads back to a folder above it (a loop) is not followed but reported in one warning line.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from vitrieval.data.table import ImageTable, Record

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                              ".pbm"})


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def natural_key(name: str) -> tuple[list[int | str], str]:
    """Natural, case-insensitive sort key: digit runs compare as numbers, the rest lower-cased.

    ``s2 < s10``, ``obj09 < obj10``, ``S11`` after ``s10``. Names equal but for case or leading zeros (``A`` /
    ``a``, ``s01`` / ``s1``) are ordered by the exact name, so the order never depends on the file system's.
    """
    # re.split with a capture group alternates text (even positions) and digit runs (odd positions)
    parts = [int(t) if i % 2 else t.lower() for i, t in enumerate(re.split(r"(\d+)", name))]
    return parts, name


def walk_files(root: Path) -> list[Path]:
    """Every non-folder entry under ``root`` (recursively, files and links that lead to no folder), named through
    the links that reach it; directory links are followed, except one that leads back to a folder above it (a loop,
    reported in one warning line naming them). Unreadable folders are passed over, as ``os.walk`` does."""
    found: list[Path] = []
    loops: list[str] = []

    def identity(path: str) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    def visit(folder: Path, above: frozenset[tuple[int, int]]) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            path = folder / entry.name
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if not is_dir:
                found.append(path)
                continue
            key = identity(entry.path)
            if key in above:
                loops.append(path.relative_to(root).as_posix())
            else:
                visit(path, above | {key})

    visit(root, frozenset({identity(str(root))}))
    if loops:
        loops.sort()
        shown = ", ".join(loops[:3]) + (f" and {len(loops) - 3} more" if len(loops) > 3 else "")
        log.warning("%s: %d directory link(s) lead back to a folder above them (a loop), not followed: %s", root,
                    len(loops), shown)
    return found


def class_dirs(root: Path) -> list[Path]:
    """The class sub-folders of ``root`` (hidden ones skipped) in natural order."""
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def class_images(class_dir: Path) -> list[Path]:
    """The image files under ``class_dir`` (recursively) in natural order of their path inside it."""
    return sorted((p for p in walk_files(class_dir) if is_image_file(p)),
                  key=lambda p: natural_key(p.relative_to(class_dir).as_posix()))


def read_folder(root: str | Path, train_fraction: float = 0.5) -> ImageTable:
    """Read a class-per-folder dataset into the canonical table (labels = index of the sorted class name)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"folder dataset: data root {root} does not exist or is not a directory")
    if (root / "train").is_dir() and (root / "test").is_dir():
        split_dirs = {s: class_dirs(root / s) for s in ("train", "test")}
    else:
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"folder dataset: train_fraction must be in (0, 1), got {train_fraction}")
        classes = class_dirs(root)
        if len(classes) < 2:
            raise ValueError(f"folder dataset {root}: needs at least 2 class sub-folders (ROOT/<class>/<image>), "
                             f"found {len(classes)}")
        n_train = min(max(1, int(len(classes) * train_fraction)), len(classes) - 1)
        split_dirs = {"train": classes[:n_train], "test": classes[n_train:]}
    names = sorted({d.name for dirs in split_dirs.values() for d in dirs}, key=natural_key)
    label_of = {name: i for i, name in enumerate(names)}
    records: list[Record] = []
    for split, dirs in split_dirs.items():
        for d in dirs:
            records.extend(Record(str(p), label_of[d.name], split) for p in class_images(d))
    if not records:
        raise ValueError(f"folder dataset {root}: no image files found (extensions: {sorted(IMAGE_EXTENSIONS)})")
    return ImageTable(records, root.name, {"classes": names})


def is_broken_link(path: Path) -> bool:
    """A symbolic link with an image's name that leads to no file (dangling, or a loop)."""
    return (path.is_symlink() and not path.exists() and path.suffix.lower() in IMAGE_EXTENSIONS
            and not path.name.startswith("."))


def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursively, sorted): a collection to index, labels unknown.

    Directory links are followed (:func:`walk_files`). Links with an image's name that lead to no file are listed
    too, so that the index reports them as skipped (unreadable) instead of leaving them out silently.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    return sorted(p for p in walk_files(root) if is_image_file(p) or is_broken_link(p))
