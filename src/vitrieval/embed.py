"""Batched descriptor extraction over a table: DataLoader workers, autocast, progress bar, optional PCA."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vitrieval.amp import autocast_context
from vitrieval.data.dataset import TableDataset, collate_skip_bad
from vitrieval.data.table import ImageTable
from vitrieval.data.transforms import eval_transform

log = logging.getLogger(__name__)


@dataclass
class Extraction:
    """Descriptors of the readable rows of a table (row i of ``descriptors`` is table item ``indices[i]``)."""

    descriptors: np.ndarray
    indices: np.ndarray
    bad_paths: list[str] = field(default_factory=list)


@torch.no_grad()
def extract(encoder: torch.nn.Module, table: ImageTable, batch_size: int = 64, num_workers: int = 2,
            amp: str = "auto", resize: str = "shorter", skip_bad: bool = False, apply_pca: bool = True,
            progress: bool = True, desc: str = "embedding") -> Extraction:
    """Embed every image of ``table`` with ``encoder`` (eval mode); rows come back in table order.

    ``skip_bad=True`` lists unreadable files in ``bad_paths`` (and logs them) instead of stopping.
    """
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    dataset = TableDataset(table, eval_transform(encoder.data_config, resize), skip_bad=skip_bad)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_bad, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    chunks: list[np.ndarray] = []
    indices: list[np.ndarray] = []
    bad: list[int] = []
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        bad.extend(batch["bad"].tolist())
        if len(batch["indices"]) == 0:
            continue
        with autocast_context(device, amp):
            z = encoder(batch["images"].to(device, non_blocking=True))
        z = z.float()
        if apply_pca:
            z = encoder.reduce(z)
        chunks.append(z.cpu().numpy())
        indices.append(batch["indices"].numpy())
    encoder.train(was_training)
    bad_paths = [table[i].path for i in bad]
    if bad_paths:
        log.warning("%d unreadable image(s) skipped, first: %s", len(bad_paths), bad_paths[0])
    dim = encoder.descriptor_dim if apply_pca else encoder.feature_dim
    desc_arr = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros((0, dim), np.float32)
    idx_arr = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    return Extraction(desc_arr, idx_arr, bad_paths)
