"""Bounded decoding of uploaded query images: every limit is checked from the header, before a pixel is decoded.

A query upload is at most a few MB, but a small file can hold a huge image (a 1.2 KB PNG of 2 x 400,000 pixels,
a 47 KB PNG of 7000 x 7000), and the eval transform resizes the *shorter* side, so the resized image grows with
the aspect ratio (2 x 400,000 becomes 73 x 14.6 M pixels for a 64 px model: 4 GB). So each upload is

1. opened lazily (``Image.open`` reads the header only) and refused when
   - its pixel count exceeds ``max_pixels`` (413),
   - its aspect ratio (long side / short side) exceeds ``max_aspect_ratio`` (422), or
   - its size after the index's first resize (:meth:`vitrieval.data.preprocessing.Preprocessing.resized_size`) exceeds
     ``max_resized_pixels`` (413);
2. decoded near the size the model needs: a JPEG through ``draft()`` (libjpeg's DCT scaling by 1/2, 1/4 or 1/8,
   so the full-size image never exists), any other format decoded and then ``reduce()``d by an integer factor.
   Both keep at least :data:`REDUCING_GAP` times the resize target (Pillow's own ``thumbnail`` rule), so the final
   resize of the eval transform, and hence the descriptor, is practically unchanged;
   For an index built with fast decoding (``preprocessing.fast_decode: true``, :mod:`vitrieval.index.build`) a
   JPEG is instead decoded exactly as :func:`vitrieval.data.images.load_image` with the eval transform's
   ``min_side`` (``Preprocessing.min_side``) decodes it, the build's and ``vitrieval search``'s decode: the draft
   scale of :func:`~vitrieval.data.images.dct_reduction` (the largest 1/2, 1/4, 1/8 keeping ``min_side``) and no
   ``reduce()``, so an uploaded JPEG gets the descriptor the same file has in the index. That is still bounded:
   the header limits of step 1 hold, and a draft that stays at full size leaves a shorter side under
   2 ``min_side``. Other formats (MPO too: ``load_image`` does not draft it), and every upload to an index without
   fast decoding (or built before it was recorded), keep the memory-bound rule above;
3. in a :class:`DecodePool`: at most ``max_concurrent_decodes`` decodes at once (its own threads, not the web
   server's), which together hold at most ``decode_memory_budget`` bytes of estimated decode memory, served in
   arrival order (a decode estimated above the whole budget runs alone).

Why 20:1 by default: the eval transform keeps a centred square of the shorter side, so a query of aspect ratio r
is described by 1/r of its area; at 20:1 that is 5 %, already far from the object the user meant, while phone
panoramas (a full 360 degree sweep is about 6:1 to 10:1) are kept. Refused images come back with a message that
names the limit, so a client can crop.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from PIL import Image

from vitrieval.data.images import ImageDecodeError, decoding, draft_reduced, load_image
from vitrieval.data.preprocessing import Preprocessing

DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000
"""Largest pixel count of an upload, read from its header (7000 x 7000 is 49 M)."""
DEFAULT_MAX_ASPECT_RATIO = 20.0
"""Largest long side / short side of an upload (see the module docstring for why 20)."""
DEFAULT_MAX_RESIZED_PIXELS = 8_000_000
"""Largest pixel count after the eval transform's resize (32 MB in Pillow's 4 bytes a pixel). With 20:1 this
binds only for models whose resize target is above 632 px; it is the absolute bound for any model."""
DEFAULT_DECODE_MEMORY_BUDGET = 512 * 2 ** 20
"""Estimated decode memory that all decodes in flight may hold together."""
MAX_DEFAULT_DECODE_WORKERS = 4
REDUCING_GAP = 2.0
"""Decode to at least this many times the resize target (then the eval transform resizes the rest of the way)."""

_ONE_BYTE_MODES = ("1", "L", "P")
_TWO_BYTE_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_CONVERT_BEFORE_REDUCE = ("1", "P", "PA", *_TWO_BYTE_MODES)
"""Modes ``load_image(reduce=...)`` converts before reducing (their copy is part of the memory plan)."""


def default_decode_workers() -> int:
    """Decode threads when not given: the CPU count, at most :data:`MAX_DEFAULT_DECODE_WORKERS`."""
    return max(1, min(MAX_DEFAULT_DECODE_WORKERS, os.cpu_count() or 1))


class UploadRefused(Exception):
    """An upload refused by a limit, before its pixels were decoded: the HTTP status and a message naming it."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class UploadLimits:
    """What an uploaded query image may be (see the module docstring)."""

    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
    max_resized_pixels: int = DEFAULT_MAX_RESIZED_PIXELS
    max_concurrent_decodes: int = field(default_factory=default_decode_workers)
    decode_memory_budget: int = DEFAULT_DECODE_MEMORY_BUDGET

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_resized_pixels", "max_concurrent_decodes", "decode_memory_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.max_aspect_ratio, (int, float)) and self.max_aspect_ratio >= 1):
            raise ValueError(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio!r}")


@dataclass(frozen=True)
class DecodePlan:
    """How one upload will be decoded, decided from its header alone."""

    name: str
    format: str | None
    mode: str
    size: tuple[int, int]  # in the file
    decode_size: tuple[int, int]  # what the decoder produces (smaller than ``size`` after a JPEG draft)
    reduce_factor: int  # then reduce() by this (1 = not at all)
    cost: int  # estimated bytes held while decoding


def _stored_bytes(mode: str) -> int:
    """Bytes a pixel of ``mode`` takes in Pillow's memory (every multi-band and 32-bit mode takes 4)."""
    return 1 if mode in _ONE_BYTE_MODES else 2 if mode in _TWO_BYTE_MODES else 4


def open_upload(data: bytes, name: str) -> Image.Image:
    """The upload opened lazily (header only); :class:`ImageDecodeError` if it is not an image."""
    if not data:
        raise ImageDecodeError(name, "the file is empty")
    with decoding(name):
        return Image.open(io.BytesIO(data))


def plan_decode(img: Image.Image, name: str, limits: UploadLimits, target: Preprocessing) -> DecodePlan:
    """Check ``img``'s header against ``limits`` (:class:`UploadRefused` if over one) and plan a reduced decode.

    Sets up a JPEG's ``draft`` (on ``img`` itself: nothing is decoded yet).
    """
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(name, f"the image has no pixels ({width}x{height})")
    pixels = width * height
    if pixels > limits.max_pixels:
        raise UploadRefused(413, f"the uploaded image {name!r} is {width}x{height} = {pixels} pixels, over the "
                                 f"limit of {limits.max_pixels} pixels (max_upload_pixels)")
    short, long = min(width, height), max(width, height)
    ratio = long / short
    if ratio > limits.max_aspect_ratio:
        raise UploadRefused(422, f"the uploaded image {name!r} is {width}x{height}, an aspect ratio of "
                                 f"{ratio:.4g}:1, over the limit of {limits.max_aspect_ratio:g}:1 "
                                 f"(max_aspect_ratio); crop it to the object")
    rw, rh = target.resized_size(width, height)
    if rw * rh > limits.max_resized_pixels:
        raise UploadRefused(413, f"the uploaded image {name!r} is {width}x{height}; resized to "
                                 f"{target.describe()} for the model it would be {rw}x{rh} = {rw * rh} pixels, "
                                 f"over the limit of {limits.max_resized_pixels} (max_resized_pixels)")
    wanted = REDUCING_GAP * target.first_side  # the decoded shorter side is kept at least this long
    fmt = getattr(img, "format", None)
    drafted = short > wanted and fmt in ("JPEG", "MPO")  # MPO: phone cameras' JPEG
    full_cost = 0
    if drafted and (img.info.get("progressive") or img.info.get("progression")):
        full_cost = pixels * 6  # libjpeg keeps a progressive file's DCT coefficients at full size
    if target.fast_decode and fmt == "JPEG":  # load_image(min_side=...)'s decode: the build's pixels
        draft_reduced(img, target.min_side)
        factor = 1
    else:
        if drafted:
            scale = wanted / short
            img.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
        factor = max(1, int(min(img.size) // wanted))
    dw, dh = img.size
    mode = img.mode
    decoded = dw * dh * _stored_bytes(mode)
    if factor > 1 and mode in _CONVERT_BEFORE_REDUCE:
        decoded += dw * dh * (1 if mode == "1" else 4)
    small = math.ceil(dw / factor) * math.ceil(dh / factor) * 4
    return DecodePlan(name, getattr(img, "format", None), mode, (width, height), (dw, dh), factor,
                      full_cost + decoded + 3 * small)  # reduced, transposed and RGB copies


def decode_planned(img: Image.Image, plan: DecodePlan) -> Image.Image:
    """Decode the lazily opened ``img`` as ``plan`` says: :func:`vitrieval.data.images.load_image` with the plan's
    ``reduce`` factor (RGB, EXIF orientation applied, reduced near the target; the same errors)."""
    return load_image(img, max_pixels=None, name=plan.name, reduce=plan.reduce_factor)


class _Budget:
    """Bytes that decodes reserve before they start, granted in arrival order."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    @contextmanager
    def reserve(self, amount: int) -> Iterator[None]:
        amount = min(amount, self.total)  # one estimated above the whole budget runs alone
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._cond.wait_for(lambda: self._serving == ticket and self.used + amount <= self.total)
            self._serving += 1
            self.used += amount
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.used -= amount
                self._cond.notify_all()


class DecodePool:
    """Decodes uploads for one app: header checks, then at most ``max_concurrent_decodes`` bounded decodes.

    Runs on threads of its own, so waiting uploads hold neither the web server's threadpool nor memory beyond
    their (size-limited) bytes.
    """

    def __init__(self, limits: UploadLimits, target: Preprocessing) -> None:
        self.limits = limits
        self.target = target
        self._budget = _Budget(limits.decode_memory_budget)
        self._executor = ThreadPoolExecutor(max_workers=limits.max_concurrent_decodes,
                                            thread_name_prefix="vitrieval-decode")

    def decode_now(self, data: bytes, name: str) -> Image.Image:
        """Check and decode ``data`` in the calling thread (within the memory budget)."""
        img = open_upload(data, name)
        plan = plan_decode(img, name, self.limits, self.target)
        with self._budget.reserve(plan.cost):
            image = decode_planned(img, plan)
            del img  # the full-size decode is released before the budget is
        return image

    async def decode(self, data: bytes, name: str) -> Image.Image:
        """:meth:`decode_now` on the pool's threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.decode_now, data, name)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
