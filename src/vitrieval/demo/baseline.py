"""The raw-pixel retrieval baseline: what Recall@K the pixels alone give (tiny, mean-subtracted, L2-normalised
thumbnails compared by cosine), the floor a trained encoder must clear."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

RAW_PIXEL_SIZE = 16
"""Raw-pixel baseline: images resized to 16 x 16 RGB, mean-subtracted, L2-normalised (768-d)."""


def raw_pixel_descriptors(images: Sequence[Image.Image], size: int = RAW_PIXEL_SIZE) -> np.ndarray:
    r"""Raw-pixel baseline descriptors: resize to ``size`` x ``size`` RGB, flatten, subtract the descriptor's own
    mean, L2-normalise. Returns a float32 array ``(len(images), size * size * 3)``.

    For the resized pixels :math:`x \in \mathbb{R}^{3 s^2}` of one image, with :math:`\bar x` the mean of its
    entries: :math:`d = (x - \bar x) / \max(\lVert x - \bar x \rVert_2, 10^{-12})`.
    """
    out = np.empty((len(images), size * size * 3), dtype=np.float32)
    for i, im in enumerate(images):
        a = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
        a = a.reshape(-1)
        a = a - a.mean()
        out[i] = a / max(float(np.linalg.norm(a)), 1e-12)
    return out


def raw_pixels(paths: Sequence[str]) -> np.ndarray:
    """Raw-pixel descriptors (:func:`raw_pixel_descriptors`, :data:`RAW_PIXEL_SIZE`) of the image files ``paths``."""
    from vitrieval.data.images import load_image

    return raw_pixel_descriptors([load_image(p) for p in paths], size=RAW_PIXEL_SIZE)


def description(dim: int) -> str:
    """How ``results.json`` and the report describe the baseline's ``dim``-d descriptor."""
    return f"{RAW_PIXEL_SIZE}x{RAW_PIXEL_SIZE} RGB pixels, mean-subtracted, L2-normalised ({dim}-d)"
