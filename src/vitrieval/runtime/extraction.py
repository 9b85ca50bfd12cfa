"""The one extraction loop: batches of prepared images in, the descriptors of the readable rows out. No torch.

Every extraction runs :func:`collect`: :func:`vitrieval.embed.extract` (evaluation, index build and ``--add``,
training's held-out recall and tuple mining, distractors, ``analyze``, ``vitrieval embed``) over a torch
``DataLoader``'s batches, and the onnx runtime's builds over :func:`decoded_batches` (decoded in this process).
Each batch is embedded by one call of an :class:`~vitrieval.runtime.embedder.Embedder`'s ``embed_prepared``
(``(n, D)`` float32 out).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitrieval.data.images import ImageDecodeError, load_image
from vitrieval.data.table import ImageTable


@dataclass
class Extraction:
    """Descriptors of the readable rows of a table (row i of ``descriptors`` is table item ``indices[i]``)."""

    descriptors: np.ndarray
    indices: np.ndarray
    bad_paths: list[str] = field(default_factory=list)


@dataclass
class PreparedBatch:
    """One batch: the prepared images of the readable rows (stacked: a tensor or an array), their table rows,
    the rows that could not be read, and (when errors are carried rather than skipped) their errors."""

    images: Any
    indices: Sequence[int]
    bad: Sequence[int] = ()
    errors: Sequence[ImageDecodeError] = ()


def collect(embed: Callable[[Any], np.ndarray], batches: Iterable[PreparedBatch], table: ImageTable, dim: int
            ) -> tuple[Extraction, ImageDecodeError | None]:
    """Embed every batch with ``embed`` (one call per batch) and gather the rows in batch order.

    A batch that carries an error stops the loop: the rows embedded so far come back with that error (the caller
    raises it once it has released its loader). Unreadable rows (``bad``) are listed by path.
    """
    chunks: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    bad: list[int] = []
    error: ImageDecodeError | None = None
    for batch in batches:
        if len(batch.errors):
            error = batch.errors[0]
            break
        bad.extend(int(i) for i in batch.bad)
        if len(batch.indices) == 0:
            continue
        chunks.append(np.asarray(embed(batch.images), dtype=np.float32))
        indices.append(np.asarray(batch.indices, dtype=np.int64))
    descriptors = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    rows = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    return Extraction(descriptors, rows, [table[i].path for i in bad]), error


def decoded_batches(table: ImageTable, prepare: Callable[[Any], np.ndarray], batch_size: int,
                    min_side: int | None = None, skip_bad: bool = True,
                    progress: bool = False, desc: str = "embedding") -> Iterator[PreparedBatch]:
    """Batches of ``table``'s images decoded here, in order (:func:`~vitrieval.data.images.load_image`, cropped to
    each record's bbox, large JPEGs at the ``min_side`` of fast decoding) and ``prepare``\\ d: the batch source of
    runtimes without a torch ``DataLoader``. Unreadable files are listed in ``bad`` (``skip_bad``) or carried as
    the batch's error."""
    from vitrieval.progress import tqdm

    images: list[np.ndarray] = []
    rows: list[int] = []
    bad: list[int] = []
    for i, rec in enumerate(tqdm(table.records, desc=desc, unit="img", disable=not progress, leave=False)):
        try:
            images.append(prepare(load_image(rec.path, min_side=min_side, bbox=rec.bbox)))
            rows.append(i)
        except ImageDecodeError as exc:
            if not skip_bad:
                yield PreparedBatch(None, [], [], [exc])
                return
            bad.append(i)
        if len(images) == batch_size:
            yield PreparedBatch(np.stack(images), list(rows), list(bad))
            images, rows, bad = [], [], []
    if images or bad:
        yield PreparedBatch(np.stack(images) if images else None, rows, bad)


def embed_table(embedder: Any, table: ImageTable, batch_size: int = 64, min_side: int | None = None,
                progress: bool = False, desc: str = "embedding") -> Extraction:
    """Every readable image of ``table`` through ``embedder`` (an :class:`~vitrieval.runtime.embedder.Embedder`),
    decoded here (:func:`decoded_batches`; unreadable ones listed in ``bad_paths``), in the one loop
    (:func:`collect`): ``vitrieval index --runtime onnx``, without torch."""
    batches = decoded_batches(table, embedder.prepare, batch_size, min_side=min_side, skip_bad=True,
                              progress=progress, desc=desc)
    return collect(embedder.embed_prepared, batches, table, embedder.descriptor_dim)[0]
