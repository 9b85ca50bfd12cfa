"""Glue from a model and a table to retrieval metrics (the paper's protocols)."""

from __future__ import annotations

import numpy as np
import torch

from vitrieval.data.table import ImageTable
from vitrieval.embed import extract
from vitrieval.metrics import recall_at_k


def recall_on_table(encoder: torch.nn.Module, table: ImageTable, ks: list[int], batch_size: int = 64,
                    num_workers: int = 2, amp: str = "auto", resize: str = "shorter",
                    progress: bool = True) -> dict[int, float]:
    """Recall@K of ``encoder`` on the test split of ``table``.

    Leave-one-out (every test image queries all the *other* test images) when every test image is both query and
    gallery (SOP, CUB, folder datasets); queries against a separate gallery otherwise (In-Shop).
    """
    test = table.split("test") if any(r.split == "train" for r in table) else table
    ext = extract(encoder, test, batch_size=batch_size, num_workers=num_workers, amp=amp, resize=resize,
                  progress=progress, desc="embedding test images")
    labels = test.labels[ext.indices]
    if test.is_leave_one_out():
        return recall_at_k(ext.descriptors, labels, ks)
    is_query = np.asarray([test[i].is_query for i in ext.indices])
    is_gallery = np.asarray([test[i].is_gallery for i in ext.indices])
    return recall_at_k(ext.descriptors[is_query], labels[is_query], ks,
                       gallery=ext.descriptors[is_gallery], gallery_labels=labels[is_gallery])
