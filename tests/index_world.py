"""The small world of the index tests: the tiny test model, ~30 generated images, and a Flat index of them.

Imported by the ``test_index_*`` / ``test_cli_index`` / ``test_serve*`` files (each builds its own in a module-scoped
fixture: ``world = build_world(tmp_path_factory.mktemp("index"))``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from vitrieval.config import ModelConfig
from vitrieval.index import Index
from vitrieval.model import Encoder

COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (240, 200, 20), (150, 40, 180), (20, 180, 190),
           (250, 120, 10), (90, 90, 90), (255, 105, 180), (120, 70, 20), (0, 90, 60)]
SHAPES = ("ellipse", "rectangle", "triangle", "cross", "stripes")


def make_model(directory: Path, seed: int = 0) -> Path:
    """The tiny test encoder (DeiT-Tiny layout, 32 px, patch 8, random weights) saved to ``directory``."""
    torch.manual_seed(seed)
    return Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8)).save(
        directory)


def draw(colour: tuple[int, int, int], shape: str, dark: bool, size: int = 48) -> Image.Image:
    """A coloured shape on a light or dark background."""
    img = Image.new("RGB", (size, size), (20, 20, 20) if dark else (250, 250, 250))
    d = ImageDraw.Draw(img)
    s = size / 48
    if shape == "ellipse":
        d.ellipse((8 * s, 8 * s, 40 * s, 40 * s), fill=colour)
    elif shape == "rectangle":
        d.rectangle((10 * s, 14 * s, 38 * s, 34 * s), fill=colour)
    elif shape == "triangle":
        d.polygon([(24 * s, 6 * s), (42 * s, 40 * s), (6 * s, 40 * s)], fill=colour)
    elif shape == "cross":
        d.rectangle((20 * s, 4 * s, 28 * s, 44 * s), fill=colour)
        d.rectangle((4 * s, 20 * s, 44 * s, 28 * s), fill=colour)
    else:
        for x in range(0, size, int(8 * s)):
            d.rectangle((x, 0, x + 3 * s, size - 1), fill=colour)
    return img


def make_images(root: Path, colours: list[tuple[int, int, int]], prefix: str = "img", corrupt: int = 0,
                size: int = 48) -> list[Path]:
    """One image per (colour, shape), alternating backgrounds, plus ``corrupt`` unreadable files; sorted paths."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    i = 0
    for colour in colours:
        for shape in SHAPES:
            p = root / f"{prefix}{i:03d}_{shape}.png"
            draw(colour, shape, dark=bool(i % 2), size=size).save(p)
            paths.append(p)
            i += 1
    for j in range(corrupt):
        p = root / f"{prefix}_corrupt{j}.jpg"
        p.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
        paths.append(p)
    return sorted(paths)


def build_world(root: Path) -> dict:
    """A model, 30 images + 1 corrupt file, and a Flat index of them, under ``root``."""
    model = make_model(root / "model")
    images = make_images(root / "images", COLOURS[:6], corrupt=1)
    index = Index.build(model, root / "images", root / "flat.idx", factory="Flat", num_workers=0, progress=False)
    return {"root": root, "model": model, "images": images, "index_dir": root / "flat.idx", "index": index}


def good_images(world: dict) -> list[Path]:
    return [p for p in world["images"] if "corrupt" not in p.name]


def read_rows(generation: Path) -> list[dict]:
    """The rows of an index generation folder (``rows.sqlite``), in id order."""
    import sqlite3

    db = sqlite3.connect(generation / "rows.sqlite")
    try:
        return [{"id": i, "path": p.decode("utf-8", "surrogateescape"), "label": lab,
                 "class_name": None if c is None else c.decode("utf-8", "surrogateescape")}
                for i, p, lab, c in db.execute("SELECT id, path, label, class_name FROM rows ORDER BY id")]
    finally:
        db.close()
