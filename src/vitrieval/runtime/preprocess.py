"""The eval pre-processing of :mod:`vitrieval.data.transforms` in Pillow + numpy, for the torch-free runtime.

``EvalPreprocess(data_config, resize)`` maps a PIL image to the ``(3, size, size)`` float32 array that
``eval_transform(data_config, resize)`` gives as a tensor, pixel for pixel (pinned to <= 1e-6 by
``tests/test_runtime_preprocess.py``), by the same steps torchvision takes on a PIL image:

- ``shorter``: the shorter side to ``s = max(size, int(size / crop_pct))`` and the longer to
  ``int(s · long / short)`` (``Image.resize`` with the data config's filter; skipped when the size is already
  that), then the centre ``size × size`` crop at ``(round((h − size) / 2), round((w − size) / 2))``;
- ``square``: ``Image.resize`` to ``size × size``;
- ``x = (p · (1 / 255) − mean) / std`` per channel, ``p`` the 8-bit pixel, in float32 (torchvision's order of
  operations), channels first.

Since ``s >= size`` the crop never needs padding.

``fast_decode`` (``data.fast_decode``, an index's ``preprocessing.fast_decode``): :attr:`EvalPreprocess.min_side` is
then the ``min_side`` of ``eval_transform(data_config, resize, fast_decode=True)`` (``s`` for ``shorter``, ``size``
for ``square``), the shorter side a JPEG may be decoded down to
(:func:`vitrieval.data.images.load_image`); ``None`` without it (decode at full size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

RESIZE_MODES = ("shorter", "square")
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def shorter_side_target(size: int, crop_pct: float) -> int:
    """The shorter side an image is resized to before the centre crop: ``max(size, int(size / crop_pct))``."""
    return max(size, int(size / float(crop_pct)))


@dataclass(frozen=True)
class EvalPreprocess:
    """Resize (+ centre crop) and normalise, as the torch eval transform; ``__call__`` one image, ``batch`` many."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    resize: str = "shorter"
    fast_decode: bool = False

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"eval resize must be 'shorter' or 'square', got {self.resize!r}")

    @classmethod
    def from_data_config(cls, data_config: dict[str, Any], resize: str = "shorter",
                         fast_decode: bool = False) -> EvalPreprocess:
        """From a model's ``data_config`` (``Encoder.data_config``, ``index.json``, the ONNX sidecar)."""
        return cls(int(data_config["image_size"]), tuple(float(v) for v in data_config["mean"]),
                   tuple(float(v) for v in data_config["std"]), str(data_config.get("interpolation", "bicubic")),
                   float(data_config.get("crop_pct", 0.875)), resize, bool(fast_decode))

    @property
    def min_side(self) -> int | None:
        """The decoded shorter side the first resize needs (``eval_transform(...).min_side``): with
        :attr:`fast_decode` ``size`` (``square``) or ``max(size, int(size / crop_pct))`` (``shorter``); ``None``
        without it."""
        if not self.fast_decode:
            return None
        return self.size if self.resize == "square" else shorter_side_target(self.size, self.crop_pct)

    def resized(self, image: Image.Image) -> Image.Image:
        """The image resized and cropped to ``size × size`` (still 8-bit RGB)."""
        resample = _FILTERS.get(self.interpolation, Image.Resampling.BICUBIC)
        if self.resize == "square":
            return image if image.size == (self.size, self.size) else \
                image.resize((self.size, self.size), resample=resample)
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short = shorter_side_target(self.size, self.crop_pct)
        new_long = int(new_short * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample=resample)
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        return image.crop((left, top, left + self.size, top + self.size))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """``(3, size, size)`` float32: ``(pixel · (1 / 255) − mean) / std``, channels first."""
        pixels = np.asarray(self.resized(image.convert("RGB")), dtype=np.float32) * np.float32(1.0 / 255.0)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(B, 3, size, size)`` float32 of the images, in order."""
        if not images:
            return np.zeros((0, 3, self.size, self.size), dtype=np.float32)
        return np.stack([self(im) for im in images])
