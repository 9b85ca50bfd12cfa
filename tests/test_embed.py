"""vitrieval.embed.extract: rows in table order, skip-and-count, shard bounds, decode errors out of workers.

A tiny random-init DeiT (32 px, patch 8, 2 blocks) embeds a dozen generated images; every descriptor is checked
against the encoder's own forward on the same pre-processed pixels.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vitrieval.config import ModelConfig
from vitrieval.data.images import ImageDecodeError, load_image
from vitrieval.data.table import ImageTable, Record
from vitrieval.data.transforms import eval_transform
from vitrieval.distributed import DistContext
from vitrieval.embed import ExtractionOptions, extract, shard_bounds
from vitrieval.model import Encoder
from vitrieval.pca import PCAReduction

TINY = dict(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8, depth=2)
OPTS = ExtractionOptions(batch_size=4, num_workers=0, amp="off", progress=False)
N_IMAGES = 11  # not a multiple of the batch size: the last batch is short


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder(ModelConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embed")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"img_{i:02d}.png")
    return root


def _table(paths: list[Path]) -> ImageTable:
    return ImageTable([Record(str(p), i % 3) for i, p in enumerate(paths)], name="embed")


def _reference(encoder: Encoder, paths: list[Path]) -> np.ndarray:
    """The encoder's forward on each image alone (eval transform, no PCA)."""
    tf = eval_transform(encoder.data_config, "shorter")
    with torch.no_grad():
        return torch.cat([encoder(tf(load_image(p))[None]) for p in paths]).numpy()


def _with_corrupt_file(image_dir: Path, tmp_path: Path, position: int) -> tuple[list[Path], Path]:
    bad = tmp_path / "zz_corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    paths = sorted(image_dir.glob("*.png"))
    return paths[:position] + [bad] + paths[position:], bad


def test_rows_come_back_in_table_order_with_their_indices(encoder: Encoder, image_dir: Path) -> None:
    paths = sorted(image_dir.glob("*.png"))
    ext = extract(encoder, _table(paths), OPTS)
    assert ext.indices.dtype == np.int64 and ext.indices.tolist() == list(range(N_IMAGES))
    assert ext.descriptors.dtype == np.float32 and ext.descriptors.shape == (N_IMAGES, 192)
    assert ext.bad_paths == []
    assert np.allclose(ext.descriptors, _reference(encoder, paths), atol=1e-5)
    # the batch size changes nothing but the batching
    assert np.allclose(extract(encoder, _table(paths), replace(OPTS, batch_size=16)).descriptors,
                       ext.descriptors, atol=1e-5)


def test_settings_are_one_value_not_loose_keywords(encoder: Encoder, image_dir: Path) -> None:
    """The settings travel as one ExtractionOptions; a loose keyword such as ``batch_size=`` is refused."""
    with pytest.raises(TypeError, match="batch_size"):
        extract(encoder, _table(sorted(image_dir.glob("*.png"))), batch_size=4)


def test_pca_is_applied_unless_asked_not_to(encoder: Encoder, image_dir: Path) -> None:
    paths = sorted(image_dir.glob("*.png"))
    raw = _reference(encoder, paths)
    pooled = extract(encoder, _table(paths), replace(OPTS, output="pooled")).descriptors
    pca = PCAReduction.fit(pooled, 4)  # pool -> PCA -> L2: fitted on and applied to the pooled vectors
    encoder.set_pca(pca)
    try:
        reduced = extract(encoder, _table(paths), OPTS)
        plain = extract(encoder, _table(paths), replace(OPTS, output="normalized"))
    finally:
        encoder.set_pca(None)
    assert reduced.descriptors.shape == (N_IMAGES, 4) and plain.descriptors.shape == (N_IMAGES, 192)
    assert np.allclose(reduced.descriptors, pca.apply_numpy(pooled), atol=1e-5)
    assert np.allclose(plain.descriptors, raw, atol=1e-5)
    assert np.allclose(pooled / np.linalg.norm(pooled, axis=1, keepdims=True), raw, atol=1e-5)


def test_skip_bad_lists_the_unreadable_file_and_skips_its_row(encoder: Encoder, image_dir: Path,
                                                              tmp_path: Path) -> None:
    paths, bad = _with_corrupt_file(image_dir, tmp_path, position=5)
    ext = extract(encoder, _table(paths), replace(OPTS, skip_bad=True))
    assert ext.bad_paths == [str(bad)]
    assert ext.indices.tolist() == [i for i in range(N_IMAGES + 1) if i != 5]
    good = [p for p in paths if p != bad]
    assert np.allclose(ext.descriptors, _reference(encoder, good), atol=1e-5)


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_file_raises_its_own_decode_error(encoder: Encoder, image_dir: Path, tmp_path: Path,
                                                        workers: int) -> None:
    """The caller gets the ImageDecodeError itself (not torch's RuntimeError of a worker traceback)."""
    paths, bad = _with_corrupt_file(image_dir, tmp_path, position=6)
    with pytest.raises(ImageDecodeError) as info:
        extract(encoder, _table(paths), replace(OPTS, num_workers=workers))
    assert type(info.value) is ImageDecodeError
    assert info.value.path == str(bad)
    assert info.value.reason.startswith("not a recognised image format") or "corrupt" in info.value.reason
    assert str(info.value) == f"cannot read image {bad}: {info.value.reason}"
    assert "Traceback" not in str(info.value) and "DataLoader worker" not in str(info.value)
    assert multiprocessing.active_children() == []  # the workers are gone now, not at a later gc


def test_an_empty_bounding_box_from_a_worker_names_the_file(encoder: Encoder, image_dir: Path) -> None:
    paths = sorted(image_dir.glob("*.png"))[:3]
    records = [Record(str(p), 0) for p in paths]
    records[1] = Record(str(paths[1]), 0, bbox=(400.0, 4.0, 440.0, 36.0))
    with pytest.raises(ImageDecodeError) as info:
        extract(encoder, ImageTable(records), replace(OPTS, batch_size=2, num_workers=2))
    assert info.value.path == str(paths[1])
    assert info.value.reason == "bounding box (400.0, 4.0, 440.0, 36.0) is empty inside an image of size 48x40"


@pytest.mark.parametrize(("n_items", "batch_size", "world_size"),
                         [(11, 4, 2), (11, 4, 3), (11, 4, 5), (100, 7, 4), (3, 8, 2), (0, 4, 2), (16, 4, 4)])
def test_shard_bounds_are_whole_batches_disjoint_and_covering(n_items: int, batch_size: int,
                                                              world_size: int) -> None:
    bounds = [shard_bounds(n_items, batch_size, r, world_size) for r in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n_items
    for (_, stop), (start, _) in zip(bounds, bounds[1:]):
        assert stop == start  # contiguous: no gap, no overlap
    for start, stop in bounds:
        assert start <= stop and start % batch_size == 0
        assert stop == n_items or stop % batch_size == 0  # whole batches, only the last one short
    n_batches = -(-n_items // batch_size)
    sizes = [-(-(stop - start) // batch_size) for start, stop in bounds]
    assert sum(sizes) == n_batches and max(sizes) - min(sizes) <= 1  # batches spread evenly


def test_shard_bounds_examples() -> None:
    assert [shard_bounds(11, 4, r, 2) for r in range(2)] == [(0, 4), (4, 11)]
    assert [shard_bounds(11, 4, r, 3) for r in range(3)] == [(0, 4), (4, 8), (8, 11)]
    assert [shard_bounds(3, 8, r, 2) for r in range(2)] == [(0, 0), (0, 3)]  # fewer batches than ranks


class _TwoRanks(DistContext):
    """Rank 0 of a pretend 2-process group: the gather returns this rank's part and a canned part of rank 1."""

    def __init__(self, other: tuple[Any, ...]) -> None:
        super().__init__(rank=0, world_size=2)
        object.__setattr__(self, "other", other)
        object.__setattr__(self, "gathered", [])

    def all_gather_object(self, obj: Any) -> list[Any]:
        self.gathered.append(obj)
        return [obj, self.other]


def test_sharded_extraction_gathers_rank_parts_in_order(encoder: Encoder, image_dir: Path) -> None:
    paths = sorted(image_dir.glob("*.png"))
    table = _table(paths)
    full = extract(encoder, table, OPTS)
    start, stop = shard_bounds(len(table), 4, 1, 2)
    other = (full.descriptors[start:stop], full.indices[start:stop], [], None)
    ctx = _TwoRanks(other)
    ext = extract(encoder, table, OPTS, distributed=ctx)
    mine = ctx.gathered[0]
    assert mine[1].tolist() == list(range(*shard_bounds(len(table), 4, 0, 2)))  # rank 0 embedded its shard only
    assert ext.indices.tolist() == list(range(N_IMAGES))
    assert np.allclose(ext.descriptors, full.descriptors, atol=1e-6)


def test_a_decode_error_on_another_rank_is_raised_on_every_rank(encoder: Encoder, image_dir: Path) -> None:
    paths = sorted(image_dir.glob("*.png"))
    error = ImageDecodeError("/data/rank1.jpg", "the file is empty")
    ctx = _TwoRanks((np.zeros((0, 192), np.float32), np.zeros(0, np.int64), [], error))
    with pytest.raises(ImageDecodeError) as info:
        extract(encoder, _table(paths), OPTS, distributed=ctx)
    assert info.value.path == "/data/rank1.jpg" and len(ctx.gathered) == 1
