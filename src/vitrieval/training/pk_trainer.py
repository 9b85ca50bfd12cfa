"""The iteration-based training loop (IRT_L / IRT_R), resumable, on CPU, one GPU or many (torchrun).

Output folder::

    OUT/config.yaml          the resolved configuration
    OUT/model/               model.safetensors + config.json (what ``vitrieval.load(OUT)`` reads)
    OUT/checkpoints/last.pt  model, optimizer, memory, momentum encoder, sampler position, RNG states
    OUT/train.log            readable log;  OUT/metrics.jsonl  one JSON row per logged iteration / evaluation
    OUT/tensorboard/         the same scalars for TensorBoard;  OUT/eval.json  final Recall@K on held-out classes
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vitrieval.amp import autocast_context, resolve_device
from vitrieval.config import Config
from vitrieval.data.dataset import SeededTableDataset, collate_skip_bad
from vitrieval.data.readers import read_dataset
from vitrieval.data.sampler import ClassBalancedBatchSampler
from vitrieval.data.table import ImageTable
from vitrieval.data.transforms import train_transform
from vitrieval.distributed import DistContext
from vitrieval.embed import extract
from vitrieval.evaluate import recall_on_table
from vitrieval.io_utils import atomic_write_json
from vitrieval.model import Encoder
from vitrieval.training.checkpoint import capture_rng_state, save_checkpoint
from vitrieval.training.momentum import MomentumEncoder
from vitrieval.training.objectives import IRTObjective
from vitrieval.training.parts import (
    check_checkpoint_model,
    make_optimizer,
    make_scaler,
    optimizer_step,
    restore_rank_rng,
    wrap_for_ranks,
)
from vitrieval.training.run_dir import RunDir
from vitrieval.training.run_log import MetricsWriter

log = logging.getLogger(__name__)


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
    options = dict(batch_size=max(64, config.train.batch_size), num_workers=config.data.num_workers,
                   amp=config.train.amp, resize=config.data.eval_resize, progress=False)
    if not dist.is_main:  # the same sharded extraction as rank 0's recall_on_table, result unused
        extract(encoder, table, distributed=dist, **options)
        return {}
    return recall_on_table(encoder, table, ks, **options)


class Trainer:
    """Holds the state of one run; :meth:`run` trains to ``train.iterations`` and returns a :class:`TrainResult`."""

    def __init__(self, config: Config, output_dir: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.cfg = config.validate()
        if config.train.sampler != "classes":
            raise ValueError(f"Trainer runs train.sampler=classes; for {config.train.sampler!r} use "
                             "vitrieval.training.tuple_trainer.TupleTrainer (vitrieval.training.pk_trainer.train picks the right one)")
        self.out = Path(output_dir)
        self.progress = progress
        self.dist = DistContext.from_env()
        self.device = resolve_device(config.train.device)
        self.run_dir = RunDir.open(config, self.out, resume, self.dist)
        self.ckpt_dir = self.run_dir.checkpoints
        self.resume = self.run_dir.resume

        seed_everything(config.train.seed)  # same initial weights on every rank and in every rerun
        self.train_table, self.test_table = load_tables(config)
        self.encoder = Encoder(config.model).to(self.device)
        self.momentum = MomentumEncoder(self.encoder, config.memory.momentum) if config.memory.momentum > 0 else None
        self.objective = IRTObjective(config.loss, config.memory, self.encoder.feature_dim, self.device)
        self.model = wrap_for_ranks(self.encoder, self.dist, self.device)
        self.optimizer = make_optimizer(self.encoder.parameters(), config)
        self.scaler = make_scaler(self.device, config.train.amp)
        self.sampler = ClassBalancedBatchSampler(self.train_table.labels, config.train.batch_size,
                                                 config.data.images_per_class, config.train.seed,
                                                 self.dist.rank, self.dist.world_size)
        self.dataset = SeededTableDataset(
            self.train_table,
            train_transform(self.encoder.data_config, config.data.train_resize_ratio, config.data.hflip,
                            config.data.train_resize),
            skip_bad=config.data.on_bad_image == "skip")
        self.iteration = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.skipped_images = 0
        self.metrics = MetricsWriter(self.out, enabled=self.dist.is_main)
        if self.resume:
            self._load(self.run_dir.read_checkpoint())
        elif self.dist.is_main and self.metrics.path.exists():
            self.metrics.path.unlink()
        log.info("run %s: %d train images / %d classes, %d held-out images / %d classes; %s on %s, world size %d",
                 config.name, len(self.train_table), len(self.train_table.class_counts()), len(self.test_table),
                 len(self.test_table.class_counts()), config.model.name, self.device, self.dist.world_size)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "skipped_images": self.skipped_images, "config": self.cfg.to_dict(),
            "model": self.encoder.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "memory": self.objective.memory.state_dict() if self.objective.memory is not None else None,
            "momentum": self.momentum.state_dict() if self.momentum is not None else None,
            "rng": capture_rng_state(),
        }

    def _load(self, state: dict[str, Any]) -> None:
        check_checkpoint_model(state, self.cfg, self.ckpt_dir / "last.pt")
        self.encoder.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.objective.memory is not None and state["memory"] is not None:
            self.objective.memory.load_state_dict(state["memory"])
        if self.momentum is not None and state["momentum"] is not None:
            self.momentum.load_state_dict(state["momentum"])
        self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])
        self.batch_in_epoch, self.skipped_images = int(state["batch_in_epoch"]), int(state["skipped_images"])
        saved = int(state.get("world_size", 1)), int(state["config"]["train"]["batch_size"])
        now = self.dist.world_size, self.cfg.train.batch_size
        if saved[0] * saved[1] != now[0] * now[1]:
            log.warning("the checkpoint was written with a global batch of %d (%d rank(s) x %d), this run has %d "
                        "(%d x %d): the remaining iterations see other batches than the original run would",
                        saved[0] * saved[1], *saved, now[0] * now[1], *now)
        restore_rank_rng(state, self.dist)
        self.metrics.truncate_after(self.iteration)
        log.info("resumed from %s at iteration %d (epoch %d, batch %d)", self.ckpt_dir / "last.pt", self.iteration,
                 self.epoch, self.batch_in_epoch)

    def save(self) -> None:
        rng_per_rank = self.dist.all_gather_object(capture_rng_state())  # every rank's, for an exact resume
        if self.dist.is_main:
            save_checkpoint(self.ckpt_dir, {**self._state(), "rng_per_rank": rng_per_rank,
                                            "world_size": self.dist.world_size})
            self.encoder.save(self.out / "model", extra={"trained_iterations": self.iteration,
                                                         "run": self.cfg.name})
        self.dist.barrier()

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Recall@K on the held-out split (on the main rank; empty elsewhere and when there is none)."""
        return held_out_recall(self.encoder, self.test_table, self.cfg, self.dist)

    # -- one optimizer step --------------------------------------------------------------------------------------
    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        self.model.train()
        images = batch["images"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device)
        with autocast_context(self.device, self.cfg.train.amp):
            z_local = self.model(images)
            z_mem_local = self.momentum(images) if self.momentum is not None else None
        z = self.dist.gather_with_grad(z_local)
        y = self.dist.gather_with_grad(labels)
        z_mem = self.dist.gather_with_grad(z_mem_local.float()) if z_mem_local is not None else None
        terms = self.objective(z, y, self.iteration, z_for_memory=z_mem, z_local=z_local)
        loss = self.objective.backward_loss(terms, self.dist.world_size)
        grad_norm = optimizer_step(loss, self.optimizer, self.scaler, self.encoder.parameters(),
                                   self.cfg.train.grad_clip)
        if self.momentum is not None:
            self.momentum.update(self.encoder)
        row = terms.as_floats()
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"loss became {row['loss']} at iteration {self.iteration}; lower train.lr or "
                                     "enable train.grad_clip (the last checkpoint is intact)")
        if self.cfg.train.grad_clip > 0:
            row["grad_norm"] = grad_norm
        return row

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Batches from the current (epoch, position) on, forever; tracks the position for checkpoints."""
        while True:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            generator = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + self.epoch)
            loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=self.cfg.data.num_workers,
                                collate_fn=collate_skip_bad, pin_memory=self.device.type == "cuda",
                                generator=generator)
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            self.epoch += 1
            self.batch_in_epoch = 0

    def run(self) -> TrainResult:
        cfg = self.cfg.train
        start = time.time()
        history: list[dict[str, Any]] = []
        if self.iteration == 0 and cfg.eval_every > 0:
            recall = self.evaluate()
            if recall:
                row = {"iteration": 0, **{f"recall@{k}": v for k, v in recall.items()}}
                self.metrics.write(row)
                history.append(row)
                log.info("iteration 0 (before training): %s", format_recall(recall))
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=f"train {self.cfg.name}", unit="it",
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        seen_at_start = time.time()
        images_done = 0
        batches = self._batches()
        while self.iteration < cfg.iterations:
            batch = next(batches)
            n_bad = int(self.dist.all_reduce_sum(torch.tensor(len(batch["bad"]), device=self.device)).item())
            if n_bad:
                self.skipped_images += n_bad
                log.warning("skipped %d unreadable image(s) at iteration %d (total %d)", n_bad, self.iteration,
                            self.skipped_images)
            row = self.step(batch)
            self.iteration += 1
            images_done += len(batch["images"]) * self.dist.world_size
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if self.iteration % cfg.log_every == 0 or self.iteration == cfg.iterations:
                row["iteration"] = self.iteration
                row["images_per_second"] = images_done / max(time.time() - seen_at_start, 1e-9)
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                self.metrics.write(row)
                history.append(row)
                log.info("iteration %d: loss %.4f (contrastive %.4f, memory %.4f, koleo %.4f), %.1f img/s",
                         self.iteration, row["loss"], row["loss_contrastive"], row["loss_memory"],
                         row["loss_koleo"], row["images_per_second"])
            if cfg.eval_every > 0 and self.iteration % cfg.eval_every == 0 and self.iteration < cfg.iterations:
                recall = self.evaluate()
                if recall:
                    eval_row = {"iteration": self.iteration, **{f"recall@{k}": v for k, v in recall.items()}}
                    self.metrics.write(eval_row)
                    history.append(eval_row)
                    log.info("iteration %d: %s", self.iteration, format_recall(recall))
            if self.iteration % cfg.checkpoint_every == 0 and self.iteration < cfg.iterations:
                self.save()
        bar.close()
        self.save()
        recall = self.evaluate()
        if self.dist.is_main:
            final = {"iteration": self.iteration, **{f"recall@{k}": v for k, v in recall.items()}}
            if recall:
                self.metrics.write(final)
                history.append(final)
                log.info("final (iteration %d): %s", self.iteration, format_recall(recall))
            atomic_write_json(self.out / "eval.json", {
                "dataset": self.cfg.data.dataset, "split": "test", "iterations": self.iteration,
                "recall_at_k": {str(k): v for k, v in recall.items()}, "skipped_images": self.skipped_images})
        self.metrics.close()
        seconds = time.time() - start
        log.info("done: %d iterations in %.1f s; model in %s", self.iteration, seconds, self.out / "model")
        self.run_dir.close()
        return TrainResult(self.out, self.iteration, {str(k): v for k, v in recall.items()}, seconds,
                           self.skipped_images, history)


def format_recall(recall: dict) -> str:
    """``R@1 45.0, R@10 80.1``: recalls (fractions) in percent."""
    return ", ".join(f"R@{k} {100 * v:.1f}" for k, v in recall.items())


def train(config: Config, output_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``config`` into ``output_dir`` (continuing the last checkpoint with ``resume``).

    ``train.sampler=classes``: :class:`Trainer` (P x K batches, Eq. 1, memory, KoLeo); ``tuples``:
    :class:`vitrieval.training.tuple_trainer.TupleTrainer` (mined landmark tuples, cirtorch's loss, KoLeo).
    """
    if config.train.sampler == "tuples":
        from vitrieval.training.tuple_trainer import TupleTrainer

        return TupleTrainer(config, output_dir, resume=resume, progress=progress).run()
    return Trainer(config, output_dir, resume=resume, progress=progress).run()
