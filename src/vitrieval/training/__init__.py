"""Fine-tuning: ``train(config, output_dir)`` runs the trainer the configuration asks for.

Modules: ``dispatch`` (``train``), ``lifecycle`` (the run every trainer shares, ``TrainResult``), ``pk_trainer``
(P x K batches) and ``tuple_trainer`` (mined tuples), ``objectives``, ``optim``, ``held_out`` (Recall during
training), ``memory``, ``momentum``, ``mining``, ``checkpoint``, ``run_dir``, ``run_log``.

The names below are imported on first use (torch, timm), so that ``vitrieval.training.run_log`` stays cheap for
the report command.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"train": "vitrieval.training.dispatch", "Trainer": "vitrieval.training.pk_trainer",
         "TrainResult": "vitrieval.training.lifecycle", "seed_everything": "vitrieval.training.lifecycle",
         "TupleTrainer": "vitrieval.training.tuple_trainer"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitrieval.training' has no attribute {name!r}")
