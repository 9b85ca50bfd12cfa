"""Training checkpoints: everything needed to continue a run bit-for-bit, written atomically.

A checkpoint holds the model, optimizer, loss scaler, position (iteration, epoch, batch in the epoch), every rank's
RNG states (python, numpy, torch CPU and CUDA) and what the trainer and its objective add (the P x K trainer: the
cross-batch memory and the momentum encoder; the tuple trainer: the epoch's tuples and the lr scheduler), so an
interrupted run resumed from its last checkpoint ends with the same weights as an uninterrupted one. Written by
:meth:`vitrieval.training.lifecycle.RunLifecycle.save`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitrieval.config import Config
from vitrieval.distributed import DistContext
from vitrieval.io_utils import atomic_path

LAST = "last.pt"


def capture_rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/last.pt`` atomically (a crash mid-write keeps the previous one)."""
    target = Path(directory) / LAST
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    return target


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / LAST
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"checkpoint {path} is unreadable ({exc})") from None


def check_checkpoint_model(state: dict[str, Any], config: Config, path: Path) -> None:
    """Refuse a checkpoint written for other model settings than ``config``'s, naming the file and both."""
    saved, wanted = state["config"]["model"], config.to_dict()["model"]
    if saved != wanted:
        raise ValueError(f"checkpoint {path} was written for model settings {saved}, not {wanted}")


def restore_rank_rng(state: dict[str, Any], dist: DistContext) -> None:
    """This rank's RNG state from a checkpoint (rank 0's when it was written with another number of ranks)."""
    per_rank = state.get("rng_per_rank")
    restore_rng_state(per_rank[dist.rank] if per_rank and len(per_rank) == dist.world_size else state["rng"])
