"""Descriptors of a table's images through an :class:`~vitrieval.runtime.embedder.Embedder` (``vitrieval index
--runtime onnx``): decode in order, skip and name the unreadable files, embed in batches. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vitrieval.data.images import ImageDecodeError, load_image
from vitrieval.data.table import ImageTable
from vitrieval.runtime.embedder import Embedder


@dataclass
class TableEmbedding:
    """Row ``i`` of ``descriptors`` is table item ``indices[i]`` (the fields of :class:`vitrieval.embed.Extraction`)."""

    descriptors: np.ndarray
    indices: np.ndarray
    bad_paths: list[str] = field(default_factory=list)


def embed_table(embedder: Embedder, table: ImageTable, batch_size: int = 64, progress: bool = False,
                desc: str = "embedding", min_side: int | None = None) -> TableEmbedding:
    """Embed every readable image of ``table`` (cropped to its bbox, as :class:`vitrieval.data.dataset.
    TableDataset` does), ``batch_size`` at a time; unreadable ones are skipped and listed in ``bad_paths``.

    ``min_side``: large JPEGs decoded at a reduced DCT scale keeping that shorter side (fast decoding, the
    ``min_side`` of the eval transform: :attr:`vitrieval.data.preprocessing.Preprocessing.min_side`), exactly as
    the torch extraction decodes them; ``None`` decodes at full size."""
    from vitrieval.progress import tqdm

    chunks: list[np.ndarray] = []
    indices: list[int] = []
    bad: list[str] = []
    images, rows = [], []

    def flush() -> None:
        if images:
            chunks.append(embedder.embed(images, batch_size=batch_size))
            indices.extend(rows)
            images.clear()
            rows.clear()

    for i, rec in enumerate(tqdm(table.records, desc=desc, unit="img", disable=not progress, leave=False)):
        try:
            img = load_image(rec.path, min_side=min_side, bbox=rec.bbox)
        except (ImageDecodeError, ValueError):
            bad.append(rec.path)
            continue
        images.append(img)
        rows.append(i)
        if len(images) == batch_size:
            flush()
    flush()
    descriptors = np.concatenate(chunks) if chunks else np.zeros((0, embedder.descriptor_dim), np.float32)
    return TableEmbedding(descriptors, np.asarray(indices, dtype=np.int64), bad)
