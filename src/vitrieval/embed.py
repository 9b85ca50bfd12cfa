"""Batched descriptor extraction over a table: DataLoader workers, autocast, progress bar, optional PCA.

Under ``torch.distributed`` (a process group initialised, e.g. by ``DistContext.from_env()`` under torchrun) the
table is split into the same batches one process would make, each rank embeds a contiguous run of whole batches
(no padding, no duplicates; a rank may get none when there are fewer batches than ranks), and the parts are
gathered on every rank in rank order: every rank gets exactly the one-process result, rows in table order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from vitrieval.amp import autocast_context
from vitrieval.config import DataConfig
from vitrieval.data.dataset import TableDataset, collate_skip_bad
from vitrieval.data.images import ImageDecodeError
from vitrieval.data.loading import loader_options, resolve_num_workers
from vitrieval.data.table import ImageTable
from vitrieval.data.transforms import eval_transform
from vitrieval.distributed import DistContext
from vitrieval.progress import tqdm

log = logging.getLogger(__name__)

FAST_DECODE: bool = DataConfig.fast_decode
"""``extract``'s default for ``fast_decode``: the same as ``data.fast_decode``'s."""


@dataclass
class Extraction:
    """Descriptors of the readable rows of a table (row i of ``descriptors`` is table item ``indices[i]``)."""

    descriptors: np.ndarray
    indices: np.ndarray
    bad_paths: list[str] = field(default_factory=list)


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


@torch.no_grad()
def extract(encoder: torch.nn.Module, table: ImageTable, batch_size: int = 64, num_workers: int | str = "auto",
            amp: str = "auto", resize: str = "shorter", skip_bad: bool = False, apply_pca: bool = True,
            progress: bool = True, desc: str = "embedding",
            distributed: bool | DistContext | None = None, pooled: bool = False,
            fast_decode: bool = FAST_DECODE) -> Extraction:
    """Embed every image of ``table`` with ``encoder`` (eval mode); rows come back in table order.

    The rows are the final descriptors (``encoder.reduce``: ``L2(PCA(pooled))``, or ``L2(pooled)`` without a PCA),
    ``L2(pooled)`` with ``apply_pca=False``, or with ``pooled=True`` the pooled vectors themselves, before PCA and
    normalisation (what a PCA is fitted on: :meth:`vitrieval.model.Encoder.pooled`).

    ``skip_bad=True`` lists unreadable files in ``bad_paths`` (and logs them) instead of stopping; otherwise the
    first unreadable file raises its :class:`~vitrieval.data.images.ImageDecodeError` (``.path``, ``.reason``)
    itself, with or without DataLoader workers (the dataset carries it out of the worker as data, see
    :class:`~vitrieval.data.dataset.TableDataset`); sharded, every rank raises the first one in table order.
    ``distributed``: ``None`` (default) shards over the ranks when a process group is initialised, ``False``
    never does (one process embeds everything), ``True`` also initialises the group from torchrun's environment,
    a :class:`~vitrieval.distributed.DistContext` names the group. Sharded, every rank must call ``extract`` with
    the same table and ``batch_size``, and every rank gets the whole result. Pass the plain encoder, not a
    ``DistributedDataParallel`` wrapper. ``num_workers``: decode processes, or ``"auto"`` (the rule of
    :mod:`vitrieval.data.loading`, the same as training's); pinned memory on CUDA. ``fast_decode``: large JPEGs
    decoded at a reduced DCT scale that still covers the eval resize (``data.fast_decode``,
    :mod:`vitrieval.data.images`).
    """
    ctx = resolve_distributed(distributed)
    if isinstance(encoder, torch.nn.parallel.DistributedDataParallel):
        encoder = encoder.module
    num_workers = resolve_num_workers(num_workers, next(encoder.parameters()).device, ctx.world_size)
    if not ctx.enabled:
        ext, error = _extract_rows(encoder, table, range(len(table)), batch_size, num_workers, amp, resize,
                                   skip_bad, apply_pca, progress, desc, pooled=pooled, fast_decode=fast_decode)
        if error is not None:
            raise error
        return ext
    start, stop = shard_bounds(len(table), batch_size, ctx.rank, ctx.world_size)
    part, error = _extract_rows(encoder, table, range(start, stop), batch_size, num_workers, amp, resize, skip_bad,
                                apply_pca, progress and ctx.is_main, desc, log_bad=False, pooled=pooled,
                                fast_decode=fast_decode)
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


def _extract_rows(encoder: torch.nn.Module, table: ImageTable, rows: range, batch_size: int, num_workers: int,
                  amp: str, resize: str, skip_bad: bool, apply_pca: bool, progress: bool, desc: str,
                  log_bad: bool = True, pooled: bool = False,
                  fast_decode: bool = FAST_DECODE) -> tuple[Extraction, ImageDecodeError | None]:
    """Embed the table rows ``rows`` (batches of ``batch_size`` from ``rows.start``); indices are table rows.

    Without ``skip_bad`` it stops at the first unreadable image and returns its error with the rows embedded so
    far; the loader is released before the caller raises it (no worker outlives the call).
    """
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    dataset = TableDataset(table, eval_transform(encoder.data_config, resize, fast_decode), skip_bad=skip_bad,
                           carry_errors=not skip_bad)
    sampler = rows if (rows.start, rows.stop) != (0, len(table)) else None
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, collate_fn=collate_skip_bad,
                        **loader_options(num_workers, device))
    chunks: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    bad: list[int] = []
    error: ImageDecodeError | None = None
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        if batch["errors"]:
            error = batch["errors"][0]
            break
        bad.extend(batch["bad"].tolist())
        if len(batch["indices"]) == 0:
            continue
        with autocast_context(device, amp):
            z = encoder.pooled(batch["images"].to(device, non_blocking=True))
        z = z.float()
        if not pooled:
            z = encoder.reduce(z) if apply_pca else torch.nn.functional.normalize(z, dim=-1)
        chunks.append(z.cpu().numpy())
        indices.append(batch["indices"].numpy())
    encoder.train(was_training)
    bad_paths = [table[i].path for i in bad]
    if bad_paths and log_bad:
        log.warning("%d unreadable image(s) skipped, first: %s", len(bad_paths), bad_paths[0])
    dim = encoder.descriptor_dim if apply_pca and not pooled else encoder.feature_dim
    desc_arr = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros((0, dim), np.float32)
    idx_arr = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    return Extraction(desc_arr, idx_arr, bad_paths), error
