"""A class-per-folder set of drawn shapes for the multi-process training tests: class ``c`` is one colour of
ellipse (odd ``c``) or rectangle (even ``c``) at a random place on a random background, 40 x 40 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_shape_folders(root: Path, n_classes: int, per_class: int, seed: int) -> None:
    """``root/class<cc>/<i>.png`` for ``n_classes`` classes of ``per_class`` images, drawn from ``seed``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for c in range(n_classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True)
        colour = tuple(int(v) for v in rng.integers(30, 226, 3))
        for i in range(per_class):
            img = Image.new("RGB", (40, 40), tuple(int(v) for v in rng.integers(0, 256, 3)))
            draw = ImageDraw.Draw(img)
            x, y = (int(v) for v in rng.integers(2, 14, 2))
            shape = draw.ellipse if c % 2 else draw.rectangle
            shape([x, y, x + 18 + c % 5, y + 16 + c % 3], fill=colour)
            img.save(d / f"{i}.png")
