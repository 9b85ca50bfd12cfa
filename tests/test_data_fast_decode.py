"""data.fast_decode: large JPEGs decoded at a reduced DCT scale (images.py ``min_side``) keep at least the size the
first resize needs, stay close to a full decode + resize, leave other formats alone, and change no Recall."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitrieval.data.dataset import TableDataset
from vitrieval.data.images import dct_reduction, load_image
from vitrieval.data.table import ImageTable, Record
from vitrieval.data.transforms import eval_transform, train_transform

SHARED_DATA = Path(os.environ.get("VITRIEVAL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
DATA_CONFIG = {"image_size": 64, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "crop_pct": 0.875,
               "interpolation": "bicubic"}


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus mild noise: photo-like frequency content."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height),
                                                                                      Image.BICUBIC)
    noise = rng.integers(-6, 7, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, np.int16) + noise, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92, **kw)
    return out.getvalue()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


@pytest.mark.parametrize(("region", "min_side", "expected"), [
    (768, 73, 8), (768, 96, 8), (768, 97, 4), (768, 256, 2), (768, 385, 1), (100, 73, 1), (768, None, 1),
    (768, 0, 1)])
def test_dct_reduction_is_the_largest_scale_that_keeps_min_side(region, min_side, expected):
    assert dct_reduction(region, min_side) == expected


@pytest.mark.parametrize(("min_side", "size"), [(73, (128, 96)), (100, (256, 192)), (256, (512, 384)),
                                                 (400, (1024, 768))])
def test_a_drafted_jpeg_keeps_min_side_and_is_close_to_full_decode(min_side, size):
    data = _jpeg(_photo(1024, 768))
    fast = load_image(data, min_side=min_side)
    assert fast.mode == "RGB" and fast.size == size and min(fast.size) >= min_side
    full = load_image(data).resize(fast.size, Image.BICUBIC, reducing_gap=None)
    assert _psnr(np.asarray(fast), np.asarray(full)) > 32.0


def test_the_eval_tensor_from_a_drafted_jpeg_matches_full_decode_within_a_grey_level():
    data = _jpeg(_photo(1024, 768, seed=3))
    full_tf, fast_tf = eval_transform(DATA_CONFIG), eval_transform(DATA_CONFIG, fast_decode=True)
    assert full_tf.min_side is None and fast_tf.min_side == 73
    full = full_tf(load_image(data, min_side=full_tf.min_side))
    fast = fast_tf(load_image(data, min_side=fast_tf.min_side))
    assert full.shape == fast.shape == (3, 64, 64)
    mean_abs_grey_levels = float((full - fast).abs().mean()) * 0.5 * 255  # std 0.5: one unit = 127.5 grey levels
    assert mean_abs_grey_levels < 1.0


def test_other_formats_and_small_jpegs_decode_unchanged(tmp_path):
    big = _photo(800, 600)
    png = tmp_path / "big.png"
    big.save(png)
    assert np.array_equal(np.asarray(load_image(png, min_side=73)), np.asarray(big))
    small = _jpeg(_photo(120, 90))
    assert np.array_equal(np.asarray(load_image(small, min_side=73)), np.asarray(load_image(small)))


def test_the_bbox_region_keeps_min_side_and_matches_the_full_resolution_crop():
    img = _photo(1024, 768, seed=5)
    data = _jpeg(img)
    box = (100.0, 200.0, 612.0, 584.0)  # 512 x 384: a box keeps 2 x min_side = 90: 1/4 gives 96
    fast = load_image(data, min_side=45, bbox=box)
    assert fast.size == (128, 96)
    full = load_image(data, bbox=box).resize(fast.size, Image.BICUBIC)
    assert _psnr(np.asarray(fast), np.asarray(full)) > 30.0


def test_a_rotated_jpeg_scales_its_bbox_in_the_displayed_frame():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: the 1024 x 768 file shows as 768 x 1024
    data = _jpeg(_photo(1024, 768, seed=7), exif=exif.tobytes())
    box = (50.0, 100.0, 450.0, 900.0)  # 400 x 800 in the displayed frame: 1/4 keeps 100 = 2 x min_side
    fast = load_image(data, min_side=50, bbox=box)
    assert fast.size == (100, 200)
    full = load_image(data, bbox=box).resize(fast.size, Image.BICUBIC)
    assert _psnr(np.asarray(fast), np.asarray(full)) > 30.0


def test_train_transform_needs_the_square_resize_side():
    assert train_transform(DATA_CONFIG, 256 / 224, fast_decode=True).min_side == 73
    assert train_transform(DATA_CONFIG, 256 / 224, resize="square", fast_decode=True).min_side == 64
    assert train_transform(DATA_CONFIG, 256 / 224).min_side is None
    assert eval_transform(DATA_CONFIG, "square", fast_decode=True).min_side == 64


def test_the_dataset_decodes_with_the_transforms_min_side(tmp_path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.jpg"))
        Path(paths[-1]).write_bytes(_jpeg(_photo(1024, 768, seed=i)))
    table = ImageTable([Record(p, i, "test", bbox=(3, 5, 903, 705) if i == 2 else None)
                        for i, p in enumerate(paths)], "t")
    full = TableDataset(table, eval_transform(DATA_CONFIG))
    fast = TableDataset(table, eval_transform(DATA_CONFIG, fast_decode=True))
    for i in range(3):
        a, b = full[i][0], fast[i][0]
        assert isinstance(a, torch.Tensor) and a.shape == b.shape == (3, 64, 64)
        assert float((a - b).abs().mean()) * 127.5 < 1.0  # grey levels (std 0.5)


@pytest.mark.slow
def test_recall_on_real_photos_is_the_same_with_fast_decode(tmp_path):
    """ORL faces upsampled 4x to 368 x 448 JPEGs; a random-init ResNet-18 (64 px, GeM): R@1 with and without
    fast decoding (1/4 scale) stay within sampling noise (measured 0.66 and 0.67)."""
    root = SHARED_DATA / "orl_faces"
    if not root.is_dir():
        pytest.skip(f"ORL faces not found at {root} (set VITRIEVAL_SHARED_DATA)")
    from vitrieval.config import ModelConfig
    from vitrieval.embed import ExtractionOptions, extract
    from vitrieval.metrics.recall import recall_at_k
    from vitrieval.model import Encoder

    records = []
    for person in range(21, 41):  # the unseen half of the usual protocol
        for view in range(1, 11):
            path = tmp_path / f"s{person}_{view}.jpg"
            Image.open(root / f"s{person}" / f"{view}.pgm").convert("RGB").resize((368, 448), Image.BICUBIC) \
                .save(path, quality=90)
            records.append(Record(str(path), person, "test"))
    table = ImageTable(records, "orl-large")
    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(name="resnet18", pretrained=False, image_size=64, patch_size=None,
                                  pooling="gem")).eval()
    recalls = {}
    for fast in (False, True):
        ext = extract(encoder, table, ExtractionOptions(batch_size=50, num_workers=0, progress=False,
                                                        fast_decode=fast))
        recalls[fast] = recall_at_k(ext.descriptors, table.labels[ext.indices], [1])[1]
    assert recalls[False] > 0.2  # the check means something: far above chance (about 0.05)
    # within 4 of 200 queries: under the binomial noise of R@1 itself (sqrt(0.66 * 0.34 / 200) = 3.3 points)
    assert abs(recalls[True] - recalls[False]) <= 4 / 200 + 1e-9, recalls
