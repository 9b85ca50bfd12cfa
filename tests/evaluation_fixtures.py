"""Shared by the evaluation tests (``test_evaluation_protocol.py``, ``test_cli_evaluate.py``): a tiny random-init
DeiT and a class-per-folder collection of drawn shapes, with the extraction that every expected number is computed
from."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vitrieval.config import ModelConfig
from vitrieval.embed import extract
from vitrieval.evaluation.protocol import ExtractionOptions
from vitrieval.model import Encoder

TINY = dict(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8, depth=2)
COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (240, 200, 20), (150, 40, 180), (20, 180, 190),
           (250, 120, 10), (90, 90, 90)]
SHAPES = ("ellipse", "rectangle", "triangle", "cross", "stripes")
CATEGORY_KEYS = {"dataset", "model", "descriptor_dim", "image_size", "num_queries", "num_gallery", "protocol",
                 "recall_at_k", "map_at_r", "pca"}
#: the settings of every ``extract`` here; ``EVAL``: the same settings for ``evaluate_model``.
OPTS = ExtractionOptions(batch_size=16, num_workers=0, progress=False)
EVAL = dict(extraction=OPTS)


def draw(colour: tuple[int, int, int], shape: str, dark: bool, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A coloured shape on a light or dark background (non-square: 'shorter' and 'square' resizes differ)."""
    w, h = size
    img = Image.new("RGB", size, (20, 20, 20) if dark else (250, 250, 250))
    d = ImageDraw.Draw(img)
    if shape == "ellipse":
        d.ellipse((w * 0.15, h * 0.15, w * 0.85, h * 0.85), fill=colour)
    elif shape == "rectangle":
        d.rectangle((w * 0.2, h * 0.3, w * 0.8, h * 0.7), fill=colour)
    elif shape == "triangle":
        d.polygon([(w / 2, h * 0.1), (w * 0.9, h * 0.9), (w * 0.1, h * 0.9)], fill=colour)
    elif shape == "cross":
        d.rectangle((w * 0.4, 0, w * 0.6, h), fill=colour)
        d.rectangle((0, h * 0.4, w, h * 0.6), fill=colour)
    else:
        for x in range(0, w, 8):
            d.rectangle((x, 0, x + 3, h - 1), fill=colour)
    return img


def tiny_encoder(seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder(ModelConfig(**TINY)).eval()


def write_shapes_folder(root: Path) -> Path:
    """``ROOT/<class>/<image>``: 6 classes x 5 images; the first 3 classes train, the last 3 test."""
    for c in range(6):
        for i, shape in enumerate(SHAPES):
            p = root / f"class{c}" / f"{shape}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            draw(COLOURS[c], shape, dark=bool((c + i) % 2)).save(p)
    return root


def direct(encoder: Encoder, table, resize: str = "shorter", output: str = "descriptor") -> np.ndarray:
    """``extract`` descriptors (or the ``output`` named, e.g. ``pooled``) of every row of ``table``, in table
    order."""
    ext = extract(encoder, table, replace(OPTS, resize=resize, output=output))
    assert ext.indices.tolist() == list(range(len(table)))
    return ext.descriptors
