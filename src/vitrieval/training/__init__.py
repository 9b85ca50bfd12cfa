"""Fine-tuning: ``train(config, output_dir)`` runs the trainer the configuration asks for.

Imported lazily (torch, timm) so that ``vitrieval.training.run_log`` stays cheap for the report command.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"train": "vitrieval.training.pk_trainer", "Trainer": "vitrieval.training.pk_trainer",
         "TrainResult": "vitrieval.training.pk_trainer", "seed_everything": "vitrieval.training.pk_trainer",
         "TupleTrainer": "vitrieval.training.tuple_trainer"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitrieval.training' has no attribute {name!r}")
