"""The one pre-processing of an image before the model: built once, recorded, followed by every path.

:class:`Preprocessing` is a frozen value: the input ``size``, ``mean`` / ``std``, ``interpolation`` and
``crop_pct`` of the backbone's timm data config (:attr:`vitrieval.model.Encoder.data_config`), the eval ``resize``
(``shorter`` or ``square``) and the decode policy (``fast_decode``). It is made from a data config
(:meth:`Preprocessing.from_data_config`) or from what a model folder / an index recorded
(:meth:`Preprocessing.from_record`), and recorded back by :meth:`Preprocessing.record`. Everything that needs the
resize rule asks it: the torch eval transform (:func:`vitrieval.data.transforms.eval_transform`), the torch-free
runtime (this class's ``__call__`` in Pillow + numpy), the decoder's ``min_side`` (fast decoding,
:func:`vitrieval.data.images.load_image`) and the upload memory plan (:mod:`vitrieval.serve.uploads`, through
:meth:`Preprocessing.resized_size`). The rule and the 0.875 default live here only:

- ``shorter``: the shorter side to ``s = max(size, int(size / crop_pct))`` (:func:`shorter_side_target`) and the
  longer to ``int(s · long / short)`` (``Image.resize`` with the data config's filter; skipped when the size is
  already that), then the centre ``size × size`` crop at ``(round((h − size) / 2), round((w − size) / 2))``;
- ``square``: ``Image.resize`` to ``size × size``;
- ``x = (p · (1 / 255) − mean) / std`` per channel, ``p`` the 8-bit pixel, in float32 (torchvision's order of
  operations), channels first.

The numpy ``__call__`` gives, pixel for pixel, the array ``eval_transform`` gives as a tensor (pinned to <= 1e-6
by ``tests/test_data_preprocessing.py``). Since ``s >= size`` the crop never needs padding.

``fast_decode`` (``data.fast_decode``, an index's ``preprocessing.fast_decode``): :attr:`Preprocessing.min_side` is
then the first resize's shorter side (``s`` for ``shorter``, ``size`` for ``square``), the shorter side a JPEG may be
decoded down to (:func:`vitrieval.data.images.load_image`); ``None`` without it (decode at full size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

RESIZE_MODES = ("shorter", "square")
DEFAULT_CROP_PCT = 0.875
"""timm's crop fraction when a data config names none: 224 px models resize the shorter side to 256."""
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def shorter_side_target(size: int, crop_pct: float) -> int:
    """The shorter side an image is resized to before the centre crop: ``max(size, int(size / crop_pct))``."""
    return max(size, int(size / float(crop_pct)))


@dataclass(frozen=True)
class Preprocessing:
    """Resize (+ centre crop), normalise, and how to decode: the one value (module docstring); ``__call__`` one
    image, ``batch`` many, in numpy (the torch transform: :func:`vitrieval.data.transforms.eval_transform`)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    crop_pct: float = DEFAULT_CROP_PCT
    resize: str = "shorter"
    fast_decode: bool = False

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"eval resize must be 'shorter' or 'square', got {self.resize!r}")

    @classmethod
    def from_data_config(cls, data_config: dict[str, Any], resize: str = "shorter",
                         fast_decode: bool = False) -> Preprocessing:
        """From a model's ``data_config`` (``Encoder.data_config``, ``index.json``, the ONNX sidecar)."""
        return cls(int(data_config["image_size"]), tuple(float(v) for v in data_config["mean"]),
                   tuple(float(v) for v in data_config["std"]), str(data_config.get("interpolation", "bicubic")),
                   float(data_config.get("crop_pct", DEFAULT_CROP_PCT)), resize, bool(fast_decode))

    @classmethod
    def from_record(cls, data_config: dict[str, Any], preprocessing: dict[str, Any] | None) -> Preprocessing:
        """From what an index (``index.json``'s ``data_config`` and ``preprocessing``) or a model folder recorded;
        a missing ``fast_decode`` is an older build, decoded at full size."""
        preprocessing = preprocessing or {}
        return cls.from_data_config(data_config, str(preprocessing.get("resize", "shorter")),
                                    bool(preprocessing.get("fast_decode", False)))

    def record(self) -> dict[str, Any]:
        """What an index records of it beside the model's ``data_config`` (the keys :meth:`from_record` reads)."""
        return {"resize": self.resize, "fast_decode": self.fast_decode}

    @property
    def data_config(self) -> dict[str, Any]:
        """The timm-style data config it was made from (``image_size``, ``mean``, ``std``, ...)."""
        return {"image_size": self.size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    @property
    def first_side(self) -> int:
        """The shorter side after the first resize: ``size`` (``square``) or ``max(size, int(size / crop_pct))``."""
        return self.size if self.resize == "square" else shorter_side_target(self.size, self.crop_pct)

    @property
    def min_side(self) -> int | None:
        """The decoded shorter side the first resize needs: :attr:`first_side` with :attr:`fast_decode`, ``None``
        (decode at full size) without it."""
        return self.first_side if self.fast_decode else None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The ``(width, height)`` of a ``width × height`` image after the first resize (before the crop)."""
        if self.resize == "square":
            return self.size, self.size
        short = self.first_side
        if width <= height:
            return short, int(short * height / width)
        return int(short * width / height), short

    def describe(self) -> str:
        """The first resize in words (the upload limits' messages)."""
        side = self.first_side
        return f"a {side} x {side} square" if self.resize == "square" else f"a shorter side of {side} px"

    def resized(self, image: Image.Image) -> Image.Image:
        """The image resized and cropped to ``size × size`` (still 8-bit RGB)."""
        resample = _FILTERS.get(self.interpolation, Image.Resampling.BICUBIC)
        if self.resize == "square":
            return image if image.size == (self.size, self.size) else \
                image.resize((self.size, self.size), resample=resample)
        w, h = image.size
        new_w, new_h = self.resized_size(w, h)
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
