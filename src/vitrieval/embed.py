"""The torch extraction over a table: DataLoader workers, the one torch forward (``TorchEmbedder``), the one loop
(:func:`vitrieval.runtime.extraction.collect`), sharded over ranks; its settings are one :class:`ExtractionOptions`.

Under ``torch.distributed`` (a process group initialised, e.g. by ``DistContext.from_env()`` under torchrun) the
table is split into the same batches one process would make, each rank embeds a contiguous run of whole batches
(no padding, no duplicates; a rank may get none when there are fewer batches than ranks), and the parts are
gathered on every rank in rank order: every rank gets exactly the one-process result, rows in table order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from vitrieval.config import DataConfig
from vitrieval.data.dataset import TableDataset, collate_skip_bad
from vitrieval.data.images import ImageDecodeError
from vitrieval.data.loading import loader_options, resolve_num_workers
from vitrieval.data.preprocessing import Preprocessing
from vitrieval.data.table import ImageTable
from vitrieval.distributed import DistContext
from vitrieval.progress import tqdm
from vitrieval.runtime.extraction import Extraction, PreparedBatch, collect
from vitrieval.runtime.torch_embedder import OUTPUTS, TorchEmbedder

log = logging.getLogger(__name__)

FAST_DECODE: bool = DataConfig.fast_decode
"""``extract``'s default for ``fast_decode``: the same as ``data.fast_decode``'s."""


@dataclass(frozen=True)
class ExtractionOptions:
    """How images are embedded, one value for every extraction: ``batch_size`` images per forward pass,
    ``num_workers`` decode processes (``"auto"``: the rule of :mod:`vitrieval.data.loading`), the autocast policy
    ``amp`` (:func:`vitrieval.amp.autocast_context`), the eval ``resize``, ``skip_bad`` (list unreadable files
    instead of stopping), ``output`` (``descriptor``: the final ones; ``normalized``: L2 before any PCA;
    ``pooled``: what a PCA is fitted on; :class:`~vitrieval.runtime.torch_embedder.TorchEmbedder`), a progress
    bar, and ``fast_decode`` (``data.fast_decode``: large JPEGs decoded at a reduced DCT scale that still covers
    the eval resize)."""

    batch_size: int = 64
    num_workers: int | str = "auto"
    amp: str = "auto"
    resize: str = "shorter"
    skip_bad: bool = False
    output: str = "descriptor"
    progress: bool = True
    fast_decode: bool = FAST_DECODE

    def __post_init__(self) -> None:
        if self.batch_size < 1 or (self.num_workers != "auto" and self.num_workers < 0):
            raise ValueError(f"batch size must be >= 1 and workers >= 0, got {self.batch_size} and "
                             f"{self.num_workers}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")


def shard_bounds(n_items: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of rank ``rank``: a contiguous run of whole ``batch_size`` batches (disjoint,
    covering)."""
    n_batches = -(-n_items // batch_size)
    first, last = rank * n_batches // world_size, (rank + 1) * n_batches // world_size
    return min(first * batch_size, n_items), min(last * batch_size, n_items)


def resolve_distributed(distributed: bool | DistContext | None) -> DistContext:
    """The process group a ``distributed=`` argument names (see :func:`extract`); one process when there is none."""
    if isinstance(distributed, DistContext):
        return distributed
    if distributed is False:
        return DistContext()
    ctx = DistContext.current()
    if distributed is True and not ctx.enabled:
        ctx = DistContext.from_env()  # under torchrun: initialise the group; one process otherwise
    return ctx


def extract(model: torch.nn.Module, table: ImageTable, options: ExtractionOptions | None = None, *,
            desc: str = "embedding", distributed: bool | DistContext | None = None) -> Extraction:
    """Embed every image of ``table`` with ``model`` (an encoder or its multi-scale wrapper, run in eval mode);
    rows come back in table order. The one torch extraction: a ``DataLoader`` over the table, each batch through
    :class:`~vitrieval.runtime.torch_embedder.TorchEmbedder` in the loop of :func:`vitrieval.runtime.extraction.
    collect`.

    ``options`` (:class:`ExtractionOptions`, the one value of its settings; the defaults when ``None``; another
    value is ``dataclasses.replace(options, ...)``): the rows are the final descriptors (``output="descriptor"``:
    ``L2(PCA(pooled))``, or ``L2(pooled)`` without a PCA), ``L2(pooled)`` (``normalized``), or the pooled vectors
    themselves (``pooled``, what a PCA is fitted on).

    ``skip_bad=True`` lists unreadable files in ``bad_paths`` (and logs them) instead of stopping; otherwise the
    first unreadable file raises its :class:`~vitrieval.data.images.ImageDecodeError` (``.path``, ``.reason``)
    itself, with or without DataLoader workers (the dataset carries it out of the worker as data, see
    :class:`~vitrieval.data.dataset.TableDataset`); sharded, every rank raises the first one in table order.
    ``distributed``: ``None`` (default) shards over the ranks when a process group is initialised, ``False``
    never does (one process embeds everything), ``True`` also initialises the group from torchrun's environment,
    a :class:`~vitrieval.distributed.DistContext` names the group. Sharded, every rank must call ``extract`` with
    the same table and ``batch_size``, and every rank gets the whole result. Pass the plain encoder, not a
    ``DistributedDataParallel`` wrapper. Pinned memory on CUDA.
    """
    opts = options or ExtractionOptions()
    ctx = resolve_distributed(distributed)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    num_workers = resolve_num_workers(opts.num_workers, next(model.parameters()).device, ctx.world_size)
    if not ctx.enabled:
        ext, error = _extract_rows(model, table, range(len(table)), opts, num_workers, opts.progress, desc)
        if error is not None:
            raise error
        if ext.bad_paths:
            log.warning("%d unreadable image(s) skipped, first: %s", len(ext.bad_paths), ext.bad_paths[0])
        return ext
    start, stop = shard_bounds(len(table), opts.batch_size, ctx.rank, ctx.world_size)
    part, error = _extract_rows(model, table, range(start, stop), opts, num_workers, opts.progress and ctx.is_main,
                                desc)
    # The error travels with the parts: a rank that stopped still joins the gather, and every rank raises.
    parts = ctx.all_gather_object((part.descriptors, part.indices, part.bad_paths, error))
    errors = [p[3] for p in parts if p[3] is not None]
    if errors:
        raise errors[0]
    descriptors = np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False)
    indices = np.concatenate([p[1] for p in parts]).astype(np.int64, copy=False)
    bad_paths = [path for p in parts for path in p[2]]
    if bad_paths and ctx.is_main:  # every rank has the list; one warning
        log.warning("%d unreadable image(s) skipped, first: %s", len(bad_paths), bad_paths[0])
    return Extraction(descriptors, indices, bad_paths)


def _extract_rows(model: torch.nn.Module, table: ImageTable, rows: range, opts: ExtractionOptions,
                  num_workers: int, progress: bool, desc: str) -> tuple[Extraction, ImageDecodeError | None]:
    """Embed the table rows ``rows`` (batches of ``batch_size`` from ``rows.start``); indices are table rows.

    Without ``skip_bad`` it stops at the first unreadable image and returns its error with the rows embedded so
    far; the loader is released before the caller raises it (no worker outlives the call).
    """
    device = next(model.parameters()).device
    embedder = TorchEmbedder(model, Preprocessing.from_data_config(model.data_config, opts.resize, opts.fast_decode),
                             amp=opts.amp, output=opts.output)
    dataset = TableDataset(table, embedder.transform, skip_bad=opts.skip_bad, carry_errors=not opts.skip_bad)
    sampler = rows if (rows.start, rows.stop) != (0, len(table)) else None
    loader = DataLoader(dataset, batch_size=opts.batch_size, shuffle=False, sampler=sampler,
                        collate_fn=collate_skip_bad, **loader_options(num_workers, device))
    batches = (PreparedBatch(b["images"], b["indices"].tolist(), b["bad"].tolist(), b["errors"])
               for b in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False))
    return collect(embedder.embed_prepared, batches, table, embedder.descriptor_dim)
