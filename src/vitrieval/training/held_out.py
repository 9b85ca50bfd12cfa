"""Held-out Recall@K during training: the metric of the evaluation rows and of ``eval.json``, and its log form."""

from __future__ import annotations

import torch

from vitrieval.config import Config
from vitrieval.data.table import ImageTable
from vitrieval.distributed import DistContext
from vitrieval.embed import ExtractionOptions, extract
from vitrieval.evaluation.protocol import recall_on_table


def held_out_recall(encoder: torch.nn.Module, table: ImageTable, config: Config,
                    dist: DistContext) -> dict[str, float]:
    """Recall@K (``train.eval_ks``) on ``table``, at most ``train.eval_max_images`` of it (an even subsample).

    Rank 0 gets the result, the other ranks ``{}``. Under torchrun every rank embeds its shard of the table with the
    plain encoder (no DDP forward, so no collective the other ranks would not join) and rank 0 computes the metric.
    """
    if len(table) < 2:
        return {}
    table = table.evenly_subsampled(config.train.eval_max_images)
    ks = [k for k in config.train.eval_ks if k < len(table)]
    options = ExtractionOptions(batch_size=max(64, config.train.batch_size), num_workers=config.data.num_workers,
                                amp=config.train.amp, resize=config.data.eval_resize, progress=False,
                                fast_decode=config.data.fast_decode)
    if not dist.is_main:  # the same sharded extraction as rank 0's recall_on_table, result unused
        extract(encoder, table, options, distributed=dist)
        return {}
    return recall_on_table(encoder, table, ks, options)


def format_recall(recall: dict) -> str:
    """``R@1 45.0, R@10 80.1``: recalls (fractions) in percent."""
    return ", ".join(f"R@{k} {100 * v:.1f}" for k, v in recall.items())
