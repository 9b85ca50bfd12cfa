"""vitrieval.data.preprocessing: the numpy + Pillow eval pre-processing gives the torch eval transform's pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitrieval.data.preprocessing import Preprocessing, shorter_side_target
from vitrieval.data.transforms import eval_transform

DATA_CONFIG = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
               "crop_pct": 0.875, "image_size": 32}
SIZES = [(48, 48), (37, 80), (120, 33), (32, 32), (36, 36), (31, 17), (200, 150)]


def _image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("resize", ["shorter", "square"])
def test_pixels_equal_the_torch_eval_transform(interpolation: str, resize: str) -> None:
    config = {**DATA_CONFIG, "interpolation": interpolation}
    torch_tf = eval_transform(config, resize)
    numpy_tf = Preprocessing.from_data_config(config, resize)
    for i, (w, h) in enumerate(SIZES):
        img = _image(w, h, i)
        expected = torch_tf(img).numpy()
        found = numpy_tf(img)
        assert found.shape == expected.shape == (3, 32, 32) and found.dtype == np.float32
        assert np.abs(found - expected).max() <= 1e-6, (w, h)


def test_other_sizes_and_crop_pct_and_a_grey_image() -> None:
    config = {**DATA_CONFIG, "image_size": 56, "crop_pct": 0.95}
    img = _image(90, 61, 7).convert("L")  # converted to RGB by both paths
    expected = eval_transform(config, "shorter")(img.convert("RGB")).numpy()
    assert np.abs(Preprocessing.from_data_config(config)(img) - expected).max() <= 1e-6
    assert shorter_side_target(56, 0.95) == 58 and shorter_side_target(224, 0.875) == 256


def test_the_normalisation_formula_on_a_flat_image() -> None:
    """A flat image stays flat: every pixel is ``(v / 255 - mean) / std`` of its channel."""
    img = Image.new("RGB", (40, 50), (200, 100, 0))
    out = Preprocessing.from_data_config(DATA_CONFIG)(img)
    want = (np.array([200, 100, 0]) / 255 - np.array(DATA_CONFIG["mean"])) / np.array(DATA_CONFIG["std"])
    assert np.allclose(out.reshape(3, -1), want[:, None], atol=1e-6)


def test_batch_and_bad_mode() -> None:
    prep = Preprocessing.from_data_config(DATA_CONFIG, "square")
    batch = prep.batch([_image(40, 30, 1), _image(30, 40, 2)])
    assert batch.shape == (2, 3, 32, 32) and np.array_equal(batch[1], prep(_image(30, 40, 2)))
    assert prep.batch([]).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="'shorter' or 'square', got 'crop'"):
        Preprocessing.from_data_config(DATA_CONFIG, "crop")


@pytest.mark.parametrize(("size", "crop_pct"), [(32, 0.9), (224, 0.875), (56, 0.95), (64, 1.0), (384, 1.0)])
@pytest.mark.parametrize("resize", ["shorter", "square"])
def test_min_side_is_the_eval_transforms(size: int, crop_pct: float, resize: str) -> None:
    """Fast decoding: the torch-free preprocessing asks for the decode size the torch eval transform does."""
    config = {**DATA_CONFIG, "image_size": size, "crop_pct": crop_pct}
    fast = Preprocessing.from_data_config(config, resize, fast_decode=True)
    assert fast.min_side == eval_transform(config, resize, fast_decode=True).min_side
    assert fast.min_side == (size if resize == "square" else max(size, int(size / crop_pct)))
    assert Preprocessing.from_data_config(config, resize).min_side is None
    assert eval_transform(config, resize).min_side is None
