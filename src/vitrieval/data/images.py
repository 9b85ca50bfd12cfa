"""Image decoding that turns any common file into RGB, or fails with an error that names the file.

Grayscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images become 8-bit RGB; the EXIF orientation
is applied; missing, unreadable (no permission), truncated, empty or non-image files and links that lead nowhere
raise :class:`ImageDecodeError` naming the file; images above
``max_pixels`` (a decompression bomb) are refused before their pixels are decoded.

Fast decoding (``min_side``, ``data.fast_decode``): a JPEG much larger than the pre-processing needs is decoded at
a reduced DCT scale 1/a, a in {1, 2, 4, 8} (Pillow's ``Image.draft``), the largest a that keeps the needed region
(the whole image, or its bounding box) at least ``min_side`` pixels on its shorter side::

    a = max{a in (1, 2, 4, 8) : min(region width, region height) // a >= m}

with m = ``min_side`` for the whole image and 2 ``min_side`` for a bounding box (the box is cut at the reduced
scale, rounded to its pixels: the headroom keeps that rounding below half a pixel of the first resize). The
decoder then skips the inverse DCT of the discarded frequencies (about a^2 fewer pixels to produce). Other
formats decode as before. Measured (``benchmarks/input_pipeline.py``, 2 shared CPU cores, cpu-tiny at 64 px,
1024 x 768 JPEGs): decode + train transform 7.1 -> 2.2 ms per image, training 20.4 -> 32.7 img/s (0.65x -> 1.05x
the model-only step), extraction 116 -> 234 img/s; the descriptors' R@1 on upsampled ORL faces 0.66 vs 0.67.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default for Image.MAX_IMAGE_PIXELS (~ 0.25 GB of RGBA)


class ImageDecodeError(ValueError):
    """A file that cannot be turned into an RGB image; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # pickled whole: carried out of DataLoader workers as data
        return (type(self), (self.path, self.reason))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white, 16-bit scaled to 8-bit)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
        arr8 = np.clip((arr - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@contextmanager
def decoding(label: str) -> Iterator[None]:
    """Pillow's failures inside the block (opening, ``load()``) as one :class:`ImageDecodeError` naming ``label``:
    not an image, a decompression bomb, or truncated / corrupt data."""
    try:
        yield
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(label, "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(label, f"refused as a decompression bomb ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - truncated / corrupt data: OSError, SyntaxError, EOFError, struct.error, ...
        raise ImageDecodeError(label, f"corrupt or truncated image data ({type(exc).__name__}: {exc})") from None


def rgb_or_error(img: Image.Image, label: str) -> Image.Image:
    """:func:`to_rgb`, a conversion failure an :class:`ImageDecodeError` naming ``label``."""
    try:
        return to_rgb(img)
    except Exception as exc:  # noqa: BLE001 - any conversion failure names the file
        raise ImageDecodeError(label, f"cannot convert mode {img.mode} to RGB ({type(exc).__name__}: {exc})") \
            from None


Box = tuple[float, float, float, float]

_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that transpose the image (width and height swap)


def dct_reduction(region_min_side: float, min_side: int | None) -> int:
    """The JPEG draft scale divisor: the largest a in (8, 4, 2, 1) with ``region_min_side // a >= min_side``
    (1 when ``min_side`` is ``None`` or the region is already small)."""
    if min_side is None or min_side <= 0:
        return 1
    for a in (8, 4, 2):
        if region_min_side // a >= min_side:
            return a
    return 1


def _swaps_axes(img: Image.Image) -> bool:
    """Whether the EXIF orientation transposes the image on display (width and height swap)."""
    try:
        return img.getexif().get(0x0112) in _SWAPPING_ORIENTATIONS
    except Exception:  # noqa: BLE001 - an unreadable EXIF block: exif_transpose will skip it too
        return False


def draft_reduced(img: Image.Image, min_side: int | None, bbox: Box | None = None) -> int:
    """Ask a JPEG's decoder for the reduced scale 1/a of :func:`dct_reduction` and return a (1 for other formats,
    or when no reduction keeps ``min_side``). ``bbox`` is in the oriented (displayed) image's frame. Nothing is
    decoded yet: ``img`` is one just opened (the service's uploads, :mod:`vitrieval.serve.uploads`, call it too so
    that an uploaded JPEG gets the pixels :func:`load_image` gives the same file)."""
    if min_side is None or img.format != "JPEG":
        return 1
    width, height = img.size
    region = min(width, height)
    if bbox is not None:
        x1, y1, x2, y2 = bbox
        bw, bh = (y2 - y1, x2 - x1) if _swaps_axes(img) else (x2 - x1, y2 - y1)
        region = min(min(bw, width), min(bh, height))
    a = dct_reduction(region, min_side if bbox is None else 2 * min_side)
    if a > 1:
        img.draft("RGB", (width // a, height // a))  # Pillow picks exactly 1/a for this request (see its draft())
    return a


def _crop_reduced(img: Image.Image, bbox: Box, full_size: tuple[int, int], a: int) -> Image.Image:
    """:func:`crop_bbox` of the full-resolution image (size ``full_size``), taken from ``img`` decoded at 1/a."""
    x1, y1, x2, y2 = crop_box(bbox, full_size)
    return img.crop(crop_box((x1 / a, y1 / a, x2 / a, y2 / a), img.size))


def load_image(source: str | Path | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               name: str | None = None, min_side: int | None = None, bbox: Box | None = None) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) into an RGB image with EXIF orientation applied.

    ``bbox`` ``(x1, y1, x2, y2)`` (full-resolution pixels of the oriented image) crops to it (:func:`crop_bbox`;
    an empty box is an :class:`ImageDecodeError`). ``min_side``: a JPEG may be decoded at a reduced scale as long
    as the result (or its ``bbox`` region) keeps at least that many pixels on its shorter side (module docstring);
    the box is scaled with it.

    Raises :class:`ImageDecodeError` for a missing, empty, truncated or non-image file, or one whose pixel count
    exceeds ``max_pixels`` (``None`` disables that check). Pillow's own process-wide guard still applies on top:
    above ``Image.MAX_IMAGE_PIXELS`` it warns, above twice that it refuses (also reported as
    :class:`ImageDecodeError`); set ``PIL.Image.MAX_IMAGE_PIXELS`` to lift it.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<uploaded bytes>")
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            if path.is_dir():
                raise ImageDecodeError(label, f"is a directory, not an image file (name the images in it, e.g. "
                                              f"{path / '*.jpg'})")
            if path.is_symlink():
                raise ImageDecodeError(label, "a symbolic link that leads to no file (dangling, or a loop)")
            raise ImageDecodeError(label, "file not found")
        try:
            data = path.read_bytes()
        except OSError as exc:  # no read permission, an I/O error...: like any other unreadable image
            raise ImageDecodeError(label, f"the file cannot be read ({exc.strerror or type(exc).__name__})") \
                from None
    if not data:
        raise ImageDecodeError(label, "the file is empty")
    with decoding(label):
        # Image.open reads only the header; the size is checked before any pixel is decoded. No warnings-filter
        # juggling here (it is process-global, hence unsafe when several threads decode at once).
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageDecodeError(label, f"{width}x{height} = {width * height} pixels exceeds the limit of "
                                          f"{max_pixels} (possible decompression bomb)")
        full_size = (height, width) if bbox is not None and _swaps_axes(img) else (width, height)
        reduction = draft_reduced(img, min_side, bbox)
        img.load()
    try:  # in place: without an orientation tag there is then no full-resolution copy of the pixels
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost an image whose pixels decoded fine
        pass
    if bbox is not None:
        try:
            img = crop_bbox(img, bbox) if reduction == 1 else _crop_reduced(img, bbox, full_size, reduction)
        except ValueError as exc:
            raise ImageDecodeError(label, str(exc)) from None
    return rgb_or_error(img, label)


def crop_bbox(img: Image.Image, bbox: Box | None) -> Image.Image:
    """Crop to ``(x1, y1, x2, y2)`` clipped to the image; ``None`` returns the image unchanged."""
    if bbox is None:
        return img
    return img.crop(crop_box(bbox, img.size))


def crop_box(bbox: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``bbox`` rounded to whole pixels and clipped to an image of ``size``; ``ValueError`` when nothing is left."""
    x1, y1, x2, y2 = bbox
    w, h = size
    box = (max(0, int(round(x1))), max(0, int(round(y1))), min(w, int(round(x2))), min(h, int(round(y2))))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"bounding box {bbox} is empty inside an image of size {w}x{h}")
    return box
