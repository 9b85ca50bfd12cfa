"""Image decoding that turns any common file into RGB, or fails with an error that names the file.

Grayscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images become 8-bit RGB; the EXIF orientation
is applied; missing, unreadable (no permission), truncated, empty or non-image files and links that lead nowhere
raise :class:`ImageDecodeError` naming the file; images above
``max_pixels`` (a decompression bomb) are refused before their pixels are decoded.
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


def load_image(source: str | Path | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) into an RGB image with EXIF orientation applied.

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
        img.load()
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not cost an image whose pixels decoded fine
        pass
    return rgb_or_error(img, label)


def crop_bbox(img: Image.Image, bbox: tuple[float, float, float, float] | None) -> Image.Image:
    """Crop to ``(x1, y1, x2, y2)`` clipped to the image; ``None`` returns the image unchanged."""
    if bbox is None:
        return img
    x1, y1, x2, y2 = bbox
    w, h = img.size
    box = (max(0, int(round(x1))), max(0, int(round(y1))), min(w, int(round(x2))), min(h, int(round(y2))))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"bounding box {bbox} is empty inside an image of size {w}x{h}")
    return img.crop(box)
