"""Export a trained encoder to ONNX as one graph, checked against torch on decoded images before it is written.

The graph is what :meth:`vitrieval.model.Encoder.embed` computes: ``images (B, 3, S, S) -> descriptors (B, D)``,
backbone -> pooling -> projection -> L2 (-> PCA -> L2), a dynamic batch axis ``B`` and the model's image size
``S``. Its ``metadata_props`` record the fingerprint and the pre-processing (:mod:`vitrieval.runtime.onnx_file`).

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript, opset 18). Measured here on the
test models, it matches torch to ~1e-7 for a ViT (CLS) and a ResNet (GeM, MAC, R-MAC), while the legacy
TorchScript exporter (``dynamo=False``), faster to run, gave ResNet descriptors 0.15 away from torch's. R-MAC's
region layout is computed in float32 tensors and turned into Python ints (a data-dependent step ``torch.export``
refuses); the layout depends only on the feature-map size, fixed by ``S``, so it is computed once here and the
traced graph sees it as a constant (:func:`_fixed_rmac_layout`).

Parity: the exported file is run by onnxruntime on the eval-transformed pixels of real decoded images (JPEG
bytes decoded by :func:`vitrieval.data.images.load_image`; generated products of several aspect ratios unless
images are given) and compared with the torch encoder on the same pixels; above ``tolerance`` (1e-4) nothing is
written. The file is written beside the target and renamed onto it (atomic).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vitrieval.data.images import load_image
from vitrieval.io_utils import atomic_path
from vitrieval.model import Encoder
from vitrieval.runtime.onnx_file import INPUT_NAME, OUTPUT_NAME, OnnxModelInfo

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4
OPSET = 18
PARITY_SHAPES = ((96, 96), (128, 80), (72, 120), (200, 150))
"""Sizes of the generated parity images (several aspect ratios, all larger than the test models' inputs)."""


class ExportParityError(ValueError):
    """The exported graph's descriptors differ from torch's by more than the tolerance; nothing was written."""


class EncoderGraph(nn.Module):
    """What is exported: ``encoder.reduce(encoder.pooled(images))`` (pool, PCA, L2)."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.reduce(self.encoder.pooled(images))


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    max_abs_diff: float
    images: int
    seconds: float
    info: OnnxModelInfo


def parity_images(paths: Sequence[str | Path] = ()) -> list[Image.Image]:
    """The images of the parity check: ``paths`` decoded, or generated products JPEG-encoded and decoded again."""
    if paths:
        return [load_image(p) for p in paths]
    from vitrieval.data.synthetic import render_product

    images = []
    for i, (w, h) in enumerate(PARITY_SHAPES):
        product = render_product(i, 0, size=max(w, h)).resize((w, h), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        product.save(buf, format="JPEG", quality=90)
        images.append(load_image(buf.getvalue()))
    return images


@contextlib.contextmanager
def _fixed_rmac_layout(encoder: Encoder) -> Iterator[None]:
    """While exporting an R-MAC encoder, ``pooling.rmac_regions`` returns the layout of the model's own feature
    map (computed here, eagerly, by the real function) so that ``torch.export`` traces a constant."""
    from vitrieval import pooling

    if encoder.family != "feature_map" or getattr(encoder.pool, "kind", None) != "rmac":
        yield
        return
    size = int(encoder.data_config["image_size"])
    with torch.no_grad():
        fmap = encoder.backbone.forward_features(torch.zeros(1, 3, size, size))
    real = pooling.rmac_regions
    layout = real(int(fmap.shape[-2]), int(fmap.shape[-1]), encoder.pool.rmac_levels)
    shape = (int(fmap.shape[-2]), int(fmap.shape[-1]), encoder.pool.rmac_levels)

    def fixed(height: int, width: int, levels: int = 3) -> tuple[tuple[int, int, int], ...]:
        if (height, width, levels) != shape:
            return real(height, width, levels)
        return layout

    pooling.rmac_regions = fixed
    try:
        yield
    finally:
        pooling.rmac_regions = real


def _export_graph(encoder: Encoder, example: torch.Tensor, path: Path) -> None:
    """``torch.onnx.export`` (dynamo) of :class:`EncoderGraph` with a dynamic batch axis into ``path``."""
    import warnings

    graph = EncoderGraph(encoder).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), _fixed_rmac_layout(encoder), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing notes are not the user's
        program = torch.onnx.export(graph, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(path))


def _with_metadata(path: Path, info: OnnxModelInfo) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in info.to_metadata().items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def export_onnx(encoder: Encoder, out: str | Path, images: Sequence[Image.Image] | None = None,
                resize: str = "shorter", tolerance: float = PARITY_TOLERANCE) -> ExportReport:
    """Export ``encoder`` to ``out`` (atomically) after the parity check on ``images`` (see the module docstring).

    Raises :class:`ExportParityError` (nothing written) when the maximum absolute difference of the descriptors
    exceeds ``tolerance``.
    """
    from vitrieval.data.transforms import eval_transform
    from vitrieval.runtime.onnx_embedder import OnnxEmbedder

    started = time.perf_counter()
    encoder = encoder.to("cpu").eval()
    images = list(images) if images else parity_images()
    transform = eval_transform(encoder.data_config, resize)
    pixels = torch.stack([transform(im) for im in images])
    with torch.no_grad():
        expected = encoder.reduce(encoder.pooled(pixels)).numpy()
    info = OnnxModelInfo(encoder.fingerprint(), dict(encoder.data_config), int(encoder.descriptor_dim), resize)
    out = Path(out).expanduser()
    with atomic_path(out) as tmp:
        _export_graph(encoder, pixels[:2] if len(pixels) > 1 else pixels, tmp)
        _with_metadata(tmp, info)
        found = OnnxEmbedder(tmp).run(pixels.numpy())
        diff = float(np.abs(found - expected).max())
        info = OnnxModelInfo(info.fingerprint, info.data_config, info.descriptor_dim, resize, diff)
        if not diff <= tolerance:  # NaN too
            raise ExportParityError(f"the ONNX graph's descriptors differ from torch's by {diff:.3e} (max abs, on "
                                    f"{len(images)} images), over the tolerance {tolerance:g}: {out} not written")
        _with_metadata(tmp, info)
    return ExportReport(out, diff, len(images), round(time.perf_counter() - started, 2), info)
