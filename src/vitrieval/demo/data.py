"""The demo's data: the built-in synthetic products (generated, or reused from an earlier run) or a user's
class-per-folder dataset read by the ``folder`` reader, split into training classes and unseen test classes and
written to ``OUT/data/table.csv`` for the trainer."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitrieval.config import Config
from vitrieval.data.readers.folder import read_folder
from vitrieval.data.table import ImageTable, Record
from vitrieval.demo.variants import DEMO_PRESET, QUICK_PRESET

log = logging.getLogger(__package__)


@dataclass(frozen=True)
class SyntheticSpec:
    """How much of the built-in "products" data a demo generates: identities (train + unseen test) x views, and
    the separate pretraining set (the demo's ImageNet stand-in): ``pretrain_classes`` x ``pretrain_views``."""

    train_classes: int
    test_classes: int
    views: int
    pretrain_classes: int
    pretrain_views: int

    @property
    def num_classes(self) -> int:
        return self.train_classes + self.test_classes


SYNTHETIC: dict[str, SyntheticSpec] = {
    DEMO_PRESET: SyntheticSpec(train_classes=300, test_classes=100, views=6, pretrain_classes=200, pretrain_views=12),
    QUICK_PRESET: SyntheticSpec(train_classes=120, test_classes=30, views=6, pretrain_classes=60, pretrain_views=10),
}
"""Generated data per preset (images at the preset's ``model.image_size``). The test identities are the last ones."""

PRODUCTS_SEED = 0
"""Generator seed of the products the demo fine-tunes and tests on."""
PRETRAIN_SEED = 1
"""Generator seed of the pretraining identities. Every identity is drawn from ``SeedSequence([seed, 0, identity])``
(:mod:`vitrieval.data.synthetic`), so no pretraining identity is one of the fine-tuning or test identities: the two
sets are independent draws (``tests/test_demo_data.py`` checks that no rendered object is shared)."""


def folder_table(root: str | Path, train_fraction: float) -> ImageTable:
    """A class-per-folder dataset split into training classes and unseen test classes, read by the ``folder``
    reader (:func:`~vitrieval.data.readers.folder.read_folder`) with absolute paths.

    ``ROOT/train/<class>/…`` + ``ROOT/test/<class>/…`` keeps that split. Otherwise the class folders are put in
    *natural* order (``s1, s2, …, s10``, not ``s1, s10, s11, …``) and the first ``train_fraction`` of them
    (rounded down, at least one on each side) are the training classes, the rest the test classes; labels are
    the class's position in that order. ORL faces (``s1``..``s40``) thus trains on people 1-20 and tests on 21-40.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"demo --data: {root} does not exist or is not a directory")
    return read_folder(root, train_fraction=train_fraction)


def synthetic_table(root: Path, spec: SyntheticSpec, size: int, progress: bool) -> ImageTable:
    """Generate (or reuse) the products dataset under ``root``; the last ``spec.test_classes`` are the test split."""
    from vitrieval.data.synthetic import generate_products

    workers = _workers(spec.num_classes * spec.views)
    generate_products(root, spec.num_classes, spec.views, size=size, seed=PRODUCTS_SEED, progress=progress,
                      workers=workers)
    table = read_folder(root, train_fraction=spec.train_classes / spec.num_classes)
    n_train = len({r.label for r in table if r.split == "train"})
    if n_train != spec.train_classes:  # int() rounding of the fraction: pin the exact split
        table = ImageTable([Record(r.path, r.label, "train" if r.label < spec.train_classes else "test")
                            for r in table], table.name, table.extras)
    return table


def _workers(images: int) -> int:
    """Rendering processes: two on a machine with two cores or more, for a set worth the start-up (~1,000 images)."""
    return 2 if (os.cpu_count() or 1) >= 2 and images >= 1200 else 1


def pretrain_data(data_dir: Path, preset: str, size: int, progress: bool) -> tuple[ImageTable, str]:
    """The pretraining set (the demo's ImageNet stand-in): ``spec.pretrain_classes`` generated identities x
    ``spec.pretrain_views`` views drawn with :data:`PRETRAIN_SEED` (none of them is a fine-tuning or test identity),
    all in the train split, written to ``data_dir/pretrain_table.csv``; and its description."""
    from vitrieval.data.synthetic import generate_products

    spec = SYNTHETIC[preset]
    root = data_dir / "pretrain"
    generate_products(root, spec.pretrain_classes, spec.pretrain_views, size=size, seed=PRETRAIN_SEED,
                      progress=progress, workers=_workers(spec.pretrain_classes * spec.pretrain_views))
    table = read_folder(root)  # classes in identity order; every one is a training class here
    table = ImageTable([Record(r.path, r.label, "train") for r in table], "demo-pretrain", table.extras)
    table.to_csv(data_dir / "pretrain_table.csv")
    source = (f"{spec.pretrain_classes} generated identities x {spec.pretrain_views} views ({size} px, generator "
              f"seed {PRETRAIN_SEED}: none of them is a fine-tuning or test identity)")
    return table, source


def prepare_data(data_dir: Path, data: str | Path | None, preset: str, cfg: Config,
                 progress: bool) -> tuple[ImageTable, dict[str, Any]]:
    """The demo's table (generated products, or the ``data`` folder split in natural class order), written to
    ``data_dir/table.csv`` for the trainer, and its description for ``results.json``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if data is None:
        spec = SYNTHETIC[preset]
        table = synthetic_table(data_dir / "products", spec, cfg.model.image_size, progress)
        source = (f"built-in synthetic products ({spec.num_classes} identities x {spec.views} views, "
                  f"{cfg.model.image_size} px): identities 1-{spec.train_classes} train, "
                  f"{spec.train_classes + 1}-{spec.num_classes} test")
    else:
        table = folder_table(data, cfg.data.train_fraction)
        names = table.extras.get("classes", [])
        train_labels = sorted({r.label for r in table if r.split == "train"})
        source = f"folder dataset {Path(data).expanduser().resolve()}"
        if names and train_labels:
            source += (f" (classes in natural order; train: {names[train_labels[0]]}..{names[train_labels[-1]]}, "
                       f"test: the other {len(names) - len(train_labels)})")
    test = table.split("test")
    if len(test) < 3 or len(test.class_counts()) < 2:
        raise ValueError(f"the test split has {len(test)} image(s) in {len(test.class_counts())} class(es); "
                         "the demo needs at least 2 unseen classes")
    table.to_csv(data_dir / "table.csv")
    info = _describe(table, source)
    log.info("data: %d train images / %d classes, %d test images / %d unseen classes (%s)", info["train_images"],
             info["train_classes"], info["test_images"], info["test_classes"], source)
    return table, info


def _describe(table: ImageTable, source: str) -> dict[str, Any]:
    s = table.summary()
    return {"source": source, "train_images": s["train_images"], "train_classes": s["train_classes"],
            "test_images": s["test_images"], "test_classes": s["test_classes"],
            "protocol": "leave-one-out on the unseen test classes (every test image queries all other test images)"}
