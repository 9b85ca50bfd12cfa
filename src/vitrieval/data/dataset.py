"""Torch datasets over the canonical table: decode (with clear errors), crop to the bbox, transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from vitrieval.data.images import ImageDecodeError, load_image
from vitrieval.data.table import ImageTable

#: One item: (image tensor, or None when unreadable and skipped, or the decode error when carried; label; row).
Item = tuple[torch.Tensor | ImageDecodeError | None, int, int]


class TableDataset(Dataset):
    """Item ``i`` -> ``(image_tensor, label, i)``, or ``None`` for an unreadable image when ``skip_bad``.

    ``None`` items are dropped by :func:`collate_skip_bad`, which also reports their indices, so a caller can count
    and log them (skip-and-count) instead of losing them silently. With ``skip_bad=False`` the decode error, which
    names the file, propagates.

    ``carry_errors=True`` returns that :class:`ImageDecodeError` in the image slot instead (``skip_bad`` is then
    moot). Raised inside a DataLoader worker, an exception reaches the main process only as torch's re-raise of
    its *type* built from the formatted traceback (``torch._utils.ExceptionWrapper``), which an exception with two
    constructor arguments does not survive (it becomes a ``RuntimeError``). Returned as data, the error is pickled
    whole (:meth:`ImageDecodeError.__reduce__`), so :func:`collate_skip_bad` can hand it to the caller intact.
    """

    def __init__(self, table: ImageTable, transform: Callable, skip_bad: bool = False, use_bbox: bool = True,
                 carry_errors: bool = False) -> None:
        self.table = table
        self.transform = transform
        self.skip_bad = skip_bad
        self.use_bbox = use_bbox
        self.carry_errors = carry_errors

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> Item:
        rec = self.table[i]
        try:  # a transform that needs less than full resolution says so (Preprocess.min_side: fast decoding)
            img = load_image(rec.path, min_side=getattr(self.transform, "min_side", None),
                             bbox=rec.bbox if self.use_bbox else None)
        except ImageDecodeError as exc:
            if self.carry_errors:
                return exc.with_traceback(None), rec.label, i
            if self.skip_bad:
                return None, rec.label, i
            raise
        return self.transform(img), rec.label, i


def collate_skip_bad(items: list[tuple[Any, int, int]]) -> dict[str, Any]:
    """Stack the readable items; ``bad`` holds the table indices of the unreadable ones (``None`` or a carried
    error in the image slot) and ``errors`` the carried :class:`ImageDecodeError` s, in item order."""
    good = [it for it in items if it[0] is not None and not isinstance(it[0], ImageDecodeError)]
    bad = [it[2] for it in items if it[0] is None or isinstance(it[0], ImageDecodeError)]
    if good:
        images = torch.stack([it[0] for it in good])
    else:
        images = torch.zeros(0)
    return {
        "images": images,
        "labels": torch.tensor([it[1] for it in good], dtype=torch.int64),
        "indices": torch.tensor([it[2] for it in good], dtype=torch.int64),
        "bad": torch.tensor(bad, dtype=torch.int64),
        "errors": [it[0] for it in items if isinstance(it[0], ImageDecodeError)],
    }


class SeededTableDataset(TableDataset):
    """Training dataset: item ``(i, seed)`` draws its random augmentation from ``seed``.

    The augmentation of an item then depends only on the sampler (not on worker count, prefetching or a resume),
    and the caller's global RNG is left untouched.
    """

    def __getitem__(self, key: tuple[int, int] | int) -> Item:  # type: ignore[override]
        if isinstance(key, tuple):
            i, seed = key
        else:
            i, seed = key, key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return super().__getitem__(int(i))
