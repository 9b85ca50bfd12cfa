"""vitrieval.runtime.extraction: the one loop; a table's readable images in order, bboxes applied, unreadable files
named (the torch-free batch source)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vitrieval.data.table import ImageTable, Record
from vitrieval.runtime.extraction import embed_table


class MeanColour:
    """An embedder whose descriptor is the mean RGB of the image (and which records its batch sizes)."""

    runtime = "test"
    descriptor_dim = 3

    def __init__(self) -> None:
        self.batches: list[int] = []

    def prepare(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(0)

    def embed_prepared(self, inputs: np.ndarray) -> np.ndarray:
        self.batches.append(len(inputs))
        return np.asarray(inputs, dtype=np.float32)


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
    assert embedder.batches == [2, 2, 1]  # readable images per batch (the unreadable one left out)
    assert np.allclose(out.descriptors[3], [0, 200, 0])  # row 4 = image 3, cropped to its green box
    assert np.allclose(out.descriptors[0], [0, 100, 0]) and np.allclose(out.descriptors[4], [20, 100, 0])
    empty = embed_table(embedder, ImageTable([Record(str(bad), 0)], "t"))
    assert empty.descriptors.shape == (0, 3) and empty.indices.shape == (0,)


def test_min_side_decodes_large_jpegs_as_load_image_does(tmp_path: Path) -> None:
    """Fast decoding in the onnx build path: the pixels of ``load_image(min_side=, bbox=)``, the torch dataset's."""
    from vitrieval.data.images import load_image

    rng = np.random.default_rng(0)
    p = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((640, 480)).save(p, quality=90)
    box = (40.0, 20.0, 600.0, 460.0)
    records = [Record(str(p), 0), Record(str(p), 1, bbox=box)]
    seen: list[tuple[int, int]] = []

    class Sizes(MeanColour):
        def prepare(self, image: Image.Image) -> np.ndarray:
            seen.append(image.size)
            return super().prepare(image)

    out = embed_table(Sizes(), ImageTable(records, "t"), min_side=35)
    assert seen == [(80, 60), (140, 110)]  # 1/8 whole; the box (560 x 440) keeps 2 x 35: 1/4
    for row, (rec, bbox) in enumerate(((records[0], None), (records[1], box))):
        expected = np.asarray(load_image(rec.path, min_side=35, bbox=bbox), dtype=np.float32).reshape(-1, 3).mean(0)
        assert np.allclose(out.descriptors[row], expected)
    full = embed_table(Sizes(), ImageTable(records[:1], "t"))
    assert full.indices.tolist() == [0] and seen[-1] == (640, 480)
