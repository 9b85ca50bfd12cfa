"""The raw-pixel baseline (:mod:`vitrieval.demo.baseline`): unit-norm, zero-mean 16 x 16 x 3 descriptors, the same
from image files as from images. How weak it is on the products is pinned in ``test_synthetic.py``."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vitrieval.data.synthetic import render_product
from vitrieval.demo.baseline import RAW_PIXEL_SIZE, description, raw_pixel_descriptors, raw_pixels


def test_raw_pixel_descriptor_shape_and_normalisation() -> None:
    d = raw_pixel_descriptors([render_product(0, 0), render_product(1, 0, size=48)], size=16)
    assert d.shape == (2, 16 * 16 * 3) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(d.mean(axis=1), 0.0, atol=1e-6)


def test_raw_pixels_of_files_and_their_description(tmp_path) -> None:
    images = [render_product(k, 0, size=32) for k in range(3)]
    paths = []
    for k, im in enumerate(images):
        paths.append(str(tmp_path / f"{k}.png"))
        im.save(paths[-1])
    d = raw_pixels(paths)
    np.testing.assert_array_equal(d, raw_pixel_descriptors(images, size=16))  # PNG is lossless
    assert RAW_PIXEL_SIZE == 16 and d.shape == (3, 768)
    # a hand computation for one flat-grey-plus-one-pixel image: x - mean, then unit norm
    im = np.full((16, 16, 3), 100, dtype=np.uint8)
    im[0, 0, 0] = 200
    x = im.reshape(-1).astype(np.float64)
    expected = (x - x.mean()) / np.linalg.norm(x - x.mean())
    np.testing.assert_allclose(raw_pixel_descriptors([Image.fromarray(im)])[0], expected, atol=1e-6)
    assert description(768) == "16x16 RGB pixels, mean-subtracted, L2-normalised (768-d)"
