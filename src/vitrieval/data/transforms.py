"""Pre-processing from the backbone's pretrained_cfg (mean, std, interpolation, crop_pct).

- train ``crop``: square resize to ``size * train_resize_ratio`` (256 for 224), random crop ``size``, horizontal flip.
- train ``square``: square resize to ``size`` (landmark tuples: the whole image, as at test time), optional flip.
- eval: the rule of :class:`vitrieval.data.preprocessing.Preprocessing` (``shorter``: shorter side to
  ``max(size, int(size / crop_pct))``, centre crop ``size``; ``square``: the whole image to ``size × size``).

Each transform is a :class:`Preprocess`: the ops, and with ``fast_decode`` the smallest shorter side the decoded
image may have without the first resize ever enlarging it (``min_side``, passed to
:func:`vitrieval.data.images.load_image`): ``size * train_resize_ratio`` for train ``crop`` (both sides are
squashed to it, then cropped), :attr:`Preprocessing.min_side` for eval.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torchvision.transforms import v2 as T

from vitrieval.data.preprocessing import Preprocessing

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST, "lanczos": T.InterpolationMode.LANCZOS,
}


def _interp(data_config: dict[str, Any]) -> T.InterpolationMode:
    return _INTERPOLATION.get(data_config.get("interpolation", "bicubic"), T.InterpolationMode.BICUBIC)


def _to_tensor(data_config: dict[str, Any]) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=data_config["mean"], std=data_config["std"])]


class Preprocess:
    """An image -> tensor transform (``ops``) and the decoded size it needs: ``min_side`` (the shorter side below
    which its first resize would enlarge the image), or ``None`` to always decode at full resolution."""

    def __init__(self, ops: Callable[[Any], torch.Tensor], min_side: int | None = None) -> None:
        self.ops = ops
        self.min_side = min_side

    def __call__(self, img: Any) -> torch.Tensor:
        return self.ops(img)

    @property
    def transforms(self) -> list:
        """The steps, in order (as ``torchvision``'s ``Compose.transforms``)."""
        return list(getattr(self.ops, "transforms", [self.ops]))

    def __repr__(self) -> str:
        return f"Preprocess(min_side={self.min_side}, ops={self.ops!r})"


def train_transform(data_config: dict[str, Any], resize_ratio: float = 256 / 224, hflip: bool = True,
                    resize: str = "crop", fast_decode: bool = False) -> Preprocess:
    size = int(data_config["image_size"])
    if resize == "square":
        first = size
        ops: list = [T.Resize((size, size), interpolation=_interp(data_config), antialias=True)]
    elif resize == "crop":
        first = max(size, int(round(size * resize_ratio)))
        ops = [T.Resize((first, first), interpolation=_interp(data_config), antialias=True), T.RandomCrop(size)]
    else:
        raise ValueError(f"train resize must be 'crop' or 'square', got {resize!r}")
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    return Preprocess(T.Compose(ops + _to_tensor(data_config)), first if fast_decode else None)


def eval_transform(preprocessing: Preprocessing | dict[str, Any], resize: str = "shorter",
                   fast_decode: bool = False) -> Preprocess:
    """The torch eval transform of ``preprocessing`` (:class:`~vitrieval.data.preprocessing.Preprocessing`, the one
    owner of the resize rule; a data config is made into one with ``resize`` and ``fast_decode``)."""
    spec = preprocessing if isinstance(preprocessing, Preprocessing) else \
        Preprocessing.from_data_config(preprocessing, resize, fast_decode)
    size, first = spec.size, spec.first_side
    interpolation = _INTERPOLATION.get(spec.interpolation, T.InterpolationMode.BICUBIC)
    if spec.resize == "square":
        ops: list = [T.Resize((size, size), interpolation=interpolation, antialias=True)]
    else:
        ops = [T.Resize(first, interpolation=interpolation, antialias=True), T.CenterCrop(size)]
    return Preprocess(T.Compose(ops + _to_tensor(spec.data_config)), spec.min_side)
