"""The demo's pretraining: its small encoder learns to classify a separate set of generated identities (the demo's
stand-in for ImageNet), with the ordinary trainer and run folder; the backbone's weights are then written as a
plain timm state dict, the kind of file ``model.pretrained_file`` takes for real DeiT weights, and IRT_O, IRT_L and
IRT_R all start from that file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vitrieval.demo.variants import PRETRAIN_OBJECTIVE, pretrain_config

log = logging.getLogger(__package__)

WEIGHTS_FILE = "backbone.safetensors"
"""The pretrained backbone in the pretraining run folder: timm's parameter names, no classifier."""


def write_backbone_weights(model_dir: Path, path: Path) -> Path:
    """Write the backbone of the model folder ``model_dir`` to ``path`` as a timm state dict (safetensors,
    atomically): what ``model.pretrained_file`` loads."""
    from safetensors.torch import save_file

    from vitrieval.io_utils import atomic_path
    from vitrieval.model import load

    state = {k: v.detach().cpu().contiguous() for k, v in load(model_dir).backbone.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "source": "vitrieval demo pretraining"})
    return path


def pretrain(run_dir: Path, table_csv: Path, preset: str, seed: int, source: str,
             progress: bool) -> dict[str, Any]:
    """Train the preset's encoder from random weights to classify the identities of ``table_csv`` (``source``
    describes them) into ``run_dir`` and write :data:`WEIGHTS_FILE` there; what ``results.json`` records of it."""
    from vitrieval.training import train

    cfg = pretrain_config(preset, table_csv, seed)
    log.info("pretraining the encoder: %s classification of %s, %d iterations of %d images", PRETRAIN_OBJECTIVE,
             source, cfg.train.iterations, cfg.train.batch_size)
    result = train(cfg, run_dir, progress=progress)
    weights = write_backbone_weights(run_dir / "model", run_dir / WEIGHTS_FILE)
    last = next((r for r in reversed(result.history) if "loss" in r), {})
    log.info("pretrained in %.0f s (last logged loss %.3f): %s", result.seconds, last.get("loss", float("nan")),
             weights)
    return {"data": source, "objective": f"{PRETRAIN_OBJECTIVE} (classification: softmax over one learned proxy "
                                         f"per identity, temperature {cfg.loss.temperature:g})",
            "iterations": result.iterations, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
            "log_every": cfg.train.log_every,
            "init": "random", "weights": str(weights), "train_seconds": round(result.seconds, 1)}
