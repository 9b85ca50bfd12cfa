"""vitrieval.runtime.table_embed: a table's readable images in order, bboxes applied, unreadable files named."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vitrieval.data.table import ImageTable, Record
from vitrieval.runtime.table_embed import embed_table


class MeanColour:
    """An embedder whose descriptor is the mean RGB of the image (and which records its batch sizes)."""

    runtime = "test"
    descriptor_dim = 3

    def __init__(self) -> None:
        self.batches: list[int] = []

    def embed(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        self.batches.append(len(images))
        return np.stack([np.asarray(im, dtype=np.float32).reshape(-1, 3).mean(0) for im in images])


def test_rows_bboxes_and_skipped_files(tmp_path: Path) -> None:
    records = []
    for i in range(5):
        p = tmp_path / f"{i}.png"
        img = Image.new("RGB", (20, 10), (10 * i, 0, 0))
        img.paste((0, 200, 0), (10, 0, 20, 10))  # right half green
        img.save(p)
        records.append(Record(str(p), i, bbox=(10, 0, 20, 10) if i == 3 else None))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    records.insert(2, Record(str(bad), 9))
    embedder = MeanColour()
    out = embed_table(embedder, ImageTable(records, "t"), batch_size=2)
    assert out.indices.tolist() == [0, 1, 3, 4, 5] and out.bad_paths == [str(bad)]
    assert embedder.batches == [2, 2, 1]
    assert np.allclose(out.descriptors[3], [0, 200, 0])  # row 4 = image 3, cropped to its green box
    assert np.allclose(out.descriptors[0], [0, 100, 0]) and np.allclose(out.descriptors[4], [20, 100, 0])
    empty = embed_table(embedder, ImageTable([Record(str(bad), 0)], "t"))
    assert empty.descriptors.shape == (0, 3) and empty.indices.shape == (0,)
