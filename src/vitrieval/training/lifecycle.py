"""The run lifecycle every trainer shares (:class:`RunLifecycle`): set-up, checkpoints, the recall row, the tail.

A run writes one output folder, whichever trainer runs it::

    OUT/config.yaml          the resolved configuration
    OUT/model/               model.safetensors + config.json (what ``vitrieval.load(OUT)`` reads)
    OUT/checkpoints/last.pt  model, optimizer, scaler, position, RNG states + the trainer's and objective's state
    OUT/train.log            readable log;  OUT/metrics.jsonl  one JSON row per logged iteration / evaluation
    OUT/tensorboard/         the same scalars for TensorBoard;  OUT/eval.json  final Recall@K on the held-out split

The set-up runs in a fixed order: validate the configuration, join the process group (torchrun), pick the device,
open the run folder, seed every RNG, read the tables, build the encoder (so every rank and every rerun starts
from the same weights), the objective, the DDP wrapper, the optimizer and the loss scaler, then resume from the
checkpoint when there is one. A trainer (:mod:`~vitrieval.training.pk_trainer`,
:mod:`~vitrieval.training.tuple_trainer`) supplies its batches, its step and its loop, and adds its own state
to the checkpoint through :meth:`RunLifecycle._extra_state` / :meth:`RunLifecycle._load_extra`. Messages go to
the trainer module's logger.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from vitrieval.amp import resolve_device
from vitrieval.config import Config
from vitrieval.data.readers import read_dataset
from vitrieval.data.table import ImageTable
from vitrieval.distributed import DistContext
from vitrieval.io_utils import atomic_write_json
from vitrieval.model import Encoder
from vitrieval.training.checkpoint import (
    LAST,
    capture_rng_state,
    check_checkpoint_model,
    restore_rank_rng,
    save_checkpoint,
)
from vitrieval.training.held_out import format_recall, held_out_recall
from vitrieval.training.objectives import Objective
from vitrieval.training.optim import make_optimizer, make_scaler, parameter_groups, wrap_for_ranks
from vitrieval.training.run_dir import RunDir
from vitrieval.training.run_log import MetricsWriter


@dataclass
class TrainResult:
    output_dir: Path
    iterations: int
    recall_at_k: dict[str, float]
    seconds: float
    skipped_images: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_tables(config: Config) -> tuple[ImageTable, ImageTable]:
    """The training split and the held-out split of the configured dataset."""
    if not config.data.root:
        raise ValueError("no data root: pass --data-root DIR (or set data.root)")
    options: dict[str, Any] = {}
    if config.data.dataset == "folder":
        options["train_fraction"] = config.data.train_fraction
    table = read_dataset(config.data.dataset, config.data.root, **options)
    train, test = table.split("train"), table.split("test")
    if len(train) == 0:
        raise ValueError(f"dataset {config.data.dataset} at {config.data.root} has no training images")
    return train, test


class RunLifecycle:
    """One run's state and everything about it that does not depend on how batches are formed.

    Subclasses set :attr:`train_sampler` (the ``train.sampler`` they run), :attr:`skipped_key` (the checkpoint and
    ``eval.json`` key counting what unreadable images cost) and :attr:`skipped_what`, and implement
    :meth:`_make_objective`, :meth:`_position` and :meth:`_log_start`; the other hooks default to nothing.
    """

    train_sampler: ClassVar[str] = ""
    skipped_key: ClassVar[str] = "skipped_images"
    skipped_what: ClassVar[str] = "unreadable image(s)"

    def __init__(self, config: Config, output_dir: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.cfg = config.validate()
        if config.train.sampler != self.train_sampler:
            raise ValueError(f"{type(self).__name__} runs train.sampler={self.train_sampler}, not "
                             f"{config.train.sampler!r} (vitrieval.training.train picks the trainer a configuration "
                             "asks for)")
        self.logger = logging.getLogger(type(self).__module__)
        self.out = Path(output_dir)
        self.progress = progress
        self.dist = DistContext.from_env()
        self._check_ranks()
        self.device = resolve_device(config.train.device)
        self.run_dir = RunDir.open(config, self.out, resume, self.dist)
        self.ckpt_dir = self.run_dir.checkpoints
        self.resume = self.run_dir.resume
        try:
            self._set_up()
        except BaseException:  # a failed set-up leaves no train.log handler or TensorBoard writer behind
            if getattr(self, "metrics", None) is not None:
                self.metrics.close()
            self.run_dir.close()
            raise

    def _set_up(self) -> None:
        config = self.cfg
        seed_everything(config.train.seed)  # same initial weights on every rank and in every rerun
        self.train_table, self.test_table = load_tables(config)
        self._prepare_data()
        self.encoder = Encoder(config.model).to(self.device)
        self.encoder.batchnorm_frozen = config.train.batchnorm == "frozen"
        self.objective: Objective = self._make_objective()
        self._prepare_model()
        self.model = wrap_for_ranks(self.encoder, self.dist, self.device, config.train.sync_bn)
        # weight-decay exemptions, GeM p and the objective's own parameters (NSoftmax's proxies): optim.py
        self.optimizer = make_optimizer(parameter_groups(self.encoder, config, self.objective.parameters(),
                                                         self.objective.lr_multiplier), config)
        self.objective.attach(self.optimizer, self.encoder)  # e.g. NSoftmax's proxy warm-up
        self.scaler = make_scaler(self.device, config.train.amp)
        self._prepare_training()
        self.iteration = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.skipped = 0
        self.metrics = MetricsWriter(self.out, enabled=self.dist.is_main)
        if self.resume:
            self._load(self.run_dir.read_checkpoint())
        elif self.dist.is_main and self.metrics.path.exists():
            self.metrics.path.unlink()
        self._log_start()

    # -- what a trainer supplies ---------------------------------------------------------------------------------
    def _check_ranks(self) -> None:
        """Refuse settings that do not fit ``self.dist`` (called before anything is written)."""

    def _prepare_data(self) -> None:
        """Derive what the trainer needs from the tables (called before the encoder is built)."""

    def _make_objective(self) -> Objective:
        raise NotImplementedError

    def _prepare_model(self) -> None:
        """Parts built from the fresh encoder before DDP wraps it (e.g. a momentum encoder)."""

    def _prepare_training(self) -> None:
        """The sampler / data set / scheduler, once the optimizer exists (before a resume loads their state)."""

    def _extra_state(self) -> dict[str, Any]:
        """The trainer's own checkpoint entries."""
        return {}

    def _load_extra(self, state: dict[str, Any], path: Path) -> None:
        """Check and restore the trainer's own checkpoint entries (before the counters are restored)."""

    def _model_extra(self) -> dict[str, Any]:
        """What ``model/config.json`` records about the training."""
        return {"trained_iterations": self.iteration, "run": self.cfg.name}

    def _position(self) -> str:
        """Where the run stands, for the resume message."""
        raise NotImplementedError

    def _log_start(self) -> None:
        raise NotImplementedError

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def save(self) -> None:
        """Checkpoint and model folder (rank 0 writes; every rank's RNG state goes in, for an exact resume)."""
        rng_per_rank = self.dist.all_gather_object(capture_rng_state())
        if self.dist.is_main:
            save_checkpoint(self.ckpt_dir, {
                "iteration": self.iteration, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                self.skipped_key: self.skipped, "config": self.cfg.to_dict(),
                "model": self.encoder.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), **self.objective.state_dict(), **self._extra_state(),
                "rng": rng_per_rank[0], "rng_per_rank": rng_per_rank, "world_size": self.dist.world_size})
            self.encoder.save(self.out / "model", extra=self._model_extra())
        self.dist.barrier()

    def _load(self, state: dict[str, Any]) -> None:
        path = self.ckpt_dir / LAST
        check_checkpoint_model(state, self.cfg, path)
        self._load_extra(state, path)
        self.encoder.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.objective.load_state_dict(state)
        self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])
        self.batch_in_epoch, self.skipped = int(state["batch_in_epoch"]), int(state[self.skipped_key])
        restore_rank_rng(state, self.dist)
        self.metrics.truncate_after(self.iteration)
        self.logger.info("resumed from %s at %s", path, self._position())

    # -- per step --------------------------------------------------------------------------------------------------
    def _count_unreadable(self, batch: dict[str, Any]) -> None:
        """Add the batch's unreadable items, summed over ranks, to :attr:`skipped` (and warn); with
        ``data.on_bad_image=stop`` raise the first carried decode error instead, on every rank."""
        n_bad = int(self.dist.all_reduce_sum(torch.tensor(len(batch["bad"]), device=self.device)).item())
        if n_bad and self.cfg.data.on_bad_image == "stop":
            errors = [e for part in self.dist.all_gather_object(batch.get("errors", [])) for e in part]
            if errors:
                raise errors[0]
        if n_bad:
            self.skipped += n_bad
            self.logger.warning("skipped %d %s at iteration %d (total %d)", n_bad, self.skipped_what,
                                self.iteration, self.skipped)

    def _check_finite(self, row: dict[str, float]) -> None:
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"loss became {row['loss']} at iteration {self.iteration}; lower train.lr or "
                                     "enable train.grad_clip (the last checkpoint is intact)")

    # -- evaluation --------------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Recall@K on the held-out split (on the main rank; empty elsewhere and when there is none)."""
        return held_out_recall(self.encoder, self.test_table, self.cfg, self.dist)

    def _record_recall(self, recall: dict[str, float], history: list[dict[str, Any]], message: str, *args: Any,
                       **fields: Any) -> None:
        """A non-empty ``recall`` as a row ``{iteration, **fields, recall@k...}`` in the metrics and ``history``,
        and logged as ``message % (*args, "R@1 ..")``."""
        if recall:
            row = {"iteration": self.iteration, **fields, **{f"recall@{k}": v for k, v in recall.items()}}
            self.metrics.write(row)
            history.append(row)
            self.logger.info(message, *args, format_recall(recall))

    # -- the tail --------------------------------------------------------------------------------------------------
    def _eval_fields(self) -> dict[str, Any]:
        """``eval.json`` entries after ``iterations``."""
        return {}

    def _done_what(self) -> str:
        return f"{self.iteration} iterations"

    def _finish(self, recall: dict[str, float], start: float, history: list[dict[str, Any]]) -> TrainResult:
        """Write ``eval.json`` (rank 0), close the metrics and the log file; the run's :class:`TrainResult`."""
        if self.dist.is_main:
            atomic_write_json(self.out / "eval.json", {
                "dataset": self.cfg.data.dataset, "split": "test", "iterations": self.iteration,
                **self._eval_fields(), "recall_at_k": {str(k): v for k, v in recall.items()},
                self.skipped_key: self.skipped})
        self.metrics.close()
        seconds = time.time() - start
        self.logger.info("done: %s in %.1f s; model in %s", self._done_what(), seconds, self.out / "model")
        self.run_dir.close()
        return TrainResult(self.out, self.iteration, {str(k): v for k, v in recall.items()}, seconds,
                           self.skipped, history)
