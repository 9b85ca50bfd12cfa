"""vitrieval.data.images: every common mode becomes 8-bit RGB with the right pixels; bad files fail clearly."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitrieval.data.images import ImageDecodeError, crop_bbox, load_image, to_rgb


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


def _pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB, nor lie about the size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


# -- modes -----------------------------------------------------------------------------------------------------

def test_rgb_jpeg_path_and_bytes(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (8, 6), (200, 30, 60)), tmp_path / "a.png")
    for source in (path, str(path), path.read_bytes()):
        img = load_image(source)
        assert img.size == (8, 6)
        assert tuple(_pixels(img)[0, 0]) == (200, 30, 60)


def test_grayscale_l(tmp_path: Path) -> None:
    arr = np.array([[0, 77], [128, 255]], dtype=np.uint8)
    img = load_image(_save(Image.fromarray(arr, mode="L"), tmp_path / "g.png"))
    out = _pixels(img)
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[..., 0], arr)
    np.testing.assert_array_equal(out[..., 1], arr)
    np.testing.assert_array_equal(out[..., 2], arr)


def test_bilevel_mode_1(tmp_path: Path) -> None:
    img = Image.new("1", (2, 1), 0)
    img.putpixel((1, 0), 1)
    out = _pixels(load_image(_save(img, tmp_path / "b.png")))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 255, 255]


def _palette_image() -> Image.Image:
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    return img


def test_palette_without_transparency(tmp_path: Path) -> None:
    out = _pixels(load_image(_save(_palette_image(), tmp_path / "p.png")))
    assert out[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_composited_on_white(tmp_path: Path, fmt: str) -> None:
    path = _save(_palette_image(), tmp_path / f"p.{fmt.lower()}", format=fmt, transparency=1)
    assert "transparency" in Image.open(path).info
    out = _pixels(load_image(path))
    assert out[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 255]]


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 255), (0, 0, 255, 0), (0, 0, 0, 128)])
    out = _pixels(load_image(_save(img, tmp_path / "rgba.png")))
    assert out[0, 0].tolist() == [255, 0, 0]          # opaque: unchanged
    assert out[0, 1].tolist() == [255, 255, 255]      # transparent: the white background
    assert out[0, 2].tolist() == [127, 127, 127]      # half black over white (255 * (1 - 128/255))


def test_la_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("LA", (2, 1))
    img.putdata([(40, 255), (40, 0)])
    out = _pixels(load_image(_save(img, tmp_path / "la.png")))
    assert out[0].tolist() == [[40, 40, 40], [255, 255, 255]]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (32, 16))
    img.paste((255, 0, 0, 0), (0, 0, 16, 16))   # pure cyan
    img.paste((0, 0, 0, 0), (16, 0, 32, 16))    # no ink: white
    path = _save(img, tmp_path / "cmyk.jpg", quality=100)
    assert Image.open(path).mode == "CMYK"
    out = _pixels(load_image(path)).astype(int)
    assert np.abs(out[8, 4] - [0, 255, 255]).max() <= 3
    assert np.abs(out[8, 28] - [255, 255, 255]).max() <= 3


def test_16bit_grayscale_png(tmp_path: Path) -> None:
    arr = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    path = _save(Image.fromarray(arr), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I;16")
    out = _pixels(load_image(path))
    assert out[..., 0].tolist() == [[0, 255], [128, 4]]   # scaled by 255/65535, rounded
    assert (out[..., 0] == out[..., 2]).all()


def test_32bit_integer_and_float_modes() -> None:
    small = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), mode="I")
    assert _pixels(to_rgb(small))[0, :, 0].tolist() == [0, 100, 255]          # 8-bit range kept
    wide = Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I")
    assert _pixels(to_rgb(wide))[0, :, 0].tolist() == [0, 255]               # 16-bit range scaled
    flt = Image.fromarray(np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), mode="F")
    assert _pixels(to_rgb(flt))[0, :, 0].tolist() == [0, 128, 255]           # min-max stretched


def test_16bit_rgb_png_keeps_high_byte() -> None:
    row = b"\x00" + struct.pack(">6H", 0xFF00, 0x8000, 0x00FF, 0xFFFF, 0x0000, 0x4000)
    out = _pixels(load_image(_raw_png(2, 1, 16, 2, row)))
    assert out[0].tolist() == [[255, 128, 0], [255, 0, 64]]


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    # stored 4 wide x 2 high, left half red, right half blue; orientation 6 = rotate 90° clockwise on display
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(img, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.size == (20, 40)
    arr = _pixels(out).astype(int)
    assert np.abs(arr[5, 10] - [255, 0, 0]).max() < 40   # the stored left half is now on top
    assert np.abs(arr[35, 10] - [0, 0, 255]).max() < 40  # the stored right half is at the bottom


def test_broken_exif_is_ignored(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (4, 4), (10, 20, 30)), tmp_path / "e.jpg", exif=b"Exif\x00\x00garbage-not-tiff")
    out = _pixels(load_image(path)).astype(int)
    assert np.abs(out[0, 0] - [10, 20, 30]).max() <= 3


# -- failures --------------------------------------------------------------------------------------------------

def _jpeg_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    Image.open(path)  # the header alone still parses: only a full decode notices
    with pytest.raises(ImageDecodeError, match="truncated") as info:
        load_image(path)
    assert str(path) in str(info.value) and info.value.path == str(path)


def test_truncated_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageDecodeError, match=str(path)):
        load_image(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageDecodeError, match="not a recognised image format") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_bytes_use_the_given_name() -> None:
    with pytest.raises(ImageDecodeError, match="upload.png"):
        load_image(b"garbage", name="upload.png")
    with pytest.raises(ImageDecodeError, match="uploaded bytes"):
        load_image(b"garbage")


def test_max_pixels_refused_before_decoding(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (50, 50)), tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match="2500 pixels exceeds the limit of 100") as info:
        load_image(path, max_pixels=100)
    assert "decompression bomb" in str(info.value) and str(path) in str(info.value)
    assert load_image(path, max_pixels=2500).size == (50, 50)
    assert load_image(path, max_pixels=None).size == (50, 50)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_png_header_claiming_a_huge_size_is_refused() -> None:
    # 100,000 x 100,000 pixels claimed by a file of a few dozen bytes: refused from the header alone
    bomb = _raw_png(100_000, 100_000, 8, 2, b"\x00" * 16)
    assert len(bomb) < 100
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(bomb, name="bomb.png")
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_image(bomb, max_pixels=None)  # Pillow's own hard limit still holds
    # 12,000 x 12,000: above our default limit, below Pillow's hard one -> our check, with our message
    with pytest.raises(ImageDecodeError, match="144000000 pixels exceeds the limit"):
        load_image(_raw_png(12_000, 12_000, 8, 2, b"\x00" * 16))


# -- crop ------------------------------------------------------------------------------------------------------

def test_crop_bbox() -> None:
    img = Image.new("RGB", (10, 8))
    assert crop_bbox(img, None) is img
    assert crop_bbox(img, (2, 1, 6, 5)).size == (4, 4)
    assert crop_bbox(img, (-5, -5, 100, 100)).size == (10, 8)  # clipped to the image
    with pytest.raises(ValueError, match="empty"):
        crop_bbox(img, (20, 20, 30, 30))


def test_decode_error_survives_pickling_for_dataloader_workers():
    import pickle

    from vitrieval.data.images import ImageDecodeError

    err = pickle.loads(pickle.dumps(ImageDecodeError("/data/x.jpg", "truncated")))
    assert isinstance(err, ImageDecodeError) and err.path == "/data/x.jpg" and "x.jpg: truncated" in str(err)


def test_empty_bbox_error_names_the_file(tmp_path):
    from PIL import Image

    from vitrieval.data.dataset import TableDataset
    from vitrieval.data.images import ImageDecodeError
    from vitrieval.data.table import ImageTable, Record

    path = tmp_path / "a.png"
    Image.new("RGB", (10, 10)).save(path)
    ds = TableDataset(ImageTable([Record(str(path), 0, bbox=(5, 5, 5, 9))]), transform=lambda im: im)
    with pytest.raises(ImageDecodeError, match="a.png.*empty"):
        ds[0]


def test_a_folder_given_as_an_image_is_named_a_directory(tmp_path: Path) -> None:
    """`vitrieval search --index x DIR` used to say "file not found" for a folder that exists."""
    with pytest.raises(ImageDecodeError) as raised:
        load_image(tmp_path)
    assert str(raised.value) == (f"cannot read image {tmp_path}: is a directory, not an image file (name the images "
                                 f"in it, e.g. {tmp_path / '*.jpg'})")
