"""Tuple training for particular-object retrieval (the paper's landmark track: SfM-120k, cirtorch's procedure).

Per epoch: mine tuples with the current model (:mod:`vitrieval.training.mining`), then take them ``tuples.per_batch`` at a
time; a step minimises ::

    L = L_tuple + λ · L_KoLeo

with ``L_tuple`` cirtorch's distance-based contrastive loss (:func:`vitrieval.losses.tuple_contrastive_loss`,
margin ``loss.margin`` = 0.85 in the presets) summed over the batch's tuples, and KoLeo (Eq. 5) over the batch's
descriptors (on each rank's part under torchrun). Adam (``train.optimizer``), lr decayed by
``exp(-tuples.lr_decay)`` after every epoch.

The run folder is the one :class:`vitrieval.training.pk_trainer.Trainer` writes (``model/``, ``checkpoints/last.pt``,
``train.log``, ``metrics.jsonl``, TensorBoard, ``eval.json``). A checkpoint holds the epoch's tuples and the
position in them, so an interrupted run resumes mid-epoch without mining again. Under torchrun mining is sharded
(every rank gets the same tuples) and each rank takes a disjoint share of every batch's tuples; the loss is scaled
by the world size so that DDP's gradient average equals the gradient of the whole batch's sum.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vitrieval.amp import autocast_context, resolve_device
from vitrieval.config import Config
from vitrieval.data.transforms import train_transform
from vitrieval.data.tuples import TupleDataset, collate_tuples
from vitrieval.distributed import DistContext
from vitrieval.io_utils import atomic_write_json
from vitrieval.losses import koleo_loss, tuple_contrastive_loss
from vitrieval.model import Encoder
from vitrieval.training.checkpoint import capture_rng_state, save_checkpoint
from vitrieval.training.mining import EpochTuples, mine_epoch_tuples
from vitrieval.training.parts import (
    check_checkpoint_model,
    make_optimizer,
    make_scaler,
    optimizer_step,
    restore_rank_rng,
    wrap_for_ranks,
)
from vitrieval.training.pk_trainer import TrainResult, format_recall, held_out_recall, load_tables, seed_everything
from vitrieval.training.run_dir import RunDir
from vitrieval.training.run_log import MetricsWriter

log = logging.getLogger(__name__)


def training_pairs(table: Any, dataset: str) -> np.ndarray:
    """The training split's query-positive pairs (``extras["pairs"]["train"]``, rows of the split), checked."""
    pairs = (table.extras.get("pairs") or {}).get("train")
    if pairs is None:
        raise ValueError(f"dataset {dataset!r} has no query-positive pairs; train.sampler=tuples needs a reader "
                         "that provides them (sfm120k), or use train.sampler=classes")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= len(table)):
        raise ValueError(f"dataset {dataset!r}: a training pair points outside the {len(table)} training images")
    return pairs


class TupleTrainer:
    """One tuple-training run; :meth:`run` trains for ``tuples.epochs`` epochs and returns a ``TrainResult``."""

    def __init__(self, config: Config, output_dir: str | Path, resume: bool = False, progress: bool = True) -> None:
        self.cfg = config.validate()
        if config.train.sampler != "tuples":
            raise ValueError("TupleTrainer needs train.sampler=tuples")
        self.out = Path(output_dir)
        self.progress = progress
        self.dist = DistContext.from_env()
        tc = config.tuples
        if self.dist.world_size > tc.per_batch:
            raise ValueError(f"tuples.per_batch ({tc.per_batch}) must be at least the number of processes "
                             f"({self.dist.world_size}): each rank takes a share of every batch's tuples")
        self.device = resolve_device(config.train.device)
        self.run_dir = RunDir.open(config, self.out, resume, self.dist)

        seed_everything(config.train.seed)
        self.train_table, self.test_table = load_tables(config)
        self.pairs = training_pairs(self.train_table, config.data.dataset)
        self.encoder = Encoder(config.model).to(self.device)
        self.model = wrap_for_ranks(self.encoder, self.dist, self.device)
        self.optimizer = make_optimizer(self.encoder.parameters(), config)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=math.exp(-tc.lr_decay))
        self.scaler = make_scaler(self.device, config.train.amp)
        self.transform = train_transform(self.encoder.data_config, config.data.train_resize_ratio,
                                         config.data.hflip, config.data.train_resize)
        self.steps_per_epoch = math.ceil(min(tc.query_size, len(self.pairs)) / tc.per_batch)
        self.epoch = 0
        self.batch_in_epoch = 0
        self.iteration = 0
        self.tuples: EpochTuples | None = None
        self.skipped_tuples = 0
        self.metrics = MetricsWriter(self.out, enabled=self.dist.is_main)
        if self.run_dir.resume:
            self._load(self.run_dir.read_checkpoint())
        elif self.dist.is_main and self.metrics.path.exists():
            self.metrics.path.unlink()
        log.info("run %s: %d train images, %d query-positive pairs, %d held-out images; %d epochs x %d steps of %d "
                 "tuples (1 + 1 + %d images); %s on %s, world size %d", config.name, len(self.train_table),
                 len(self.pairs), len(self.test_table), tc.epochs, self.steps_per_epoch, tc.per_batch, tc.negatives,
                 config.model.name, self.device, self.dist.world_size)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def save(self) -> None:
        rng_per_rank = self.dist.all_gather_object(capture_rng_state())
        if self.dist.is_main:
            save_checkpoint(self.run_dir.checkpoints, {
                "iteration": self.iteration, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "skipped_tuples": self.skipped_tuples, "config": self.cfg.to_dict(),
                "model": self.encoder.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "tuples": self.tuples.state_dict() if self.tuples is not None else None,
                "rng": rng_per_rank[0], "rng_per_rank": rng_per_rank, "world_size": self.dist.world_size})
            self.encoder.save(self.out / "model", extra={"trained_iterations": self.iteration,
                                                         "trained_epochs": self.epoch, "run": self.cfg.name})
        self.dist.barrier()

    def _load(self, state: dict[str, Any]) -> None:
        path = self.run_dir.checkpoints / "last.pt"
        check_checkpoint_model(state, self.cfg, path)
        if "tuples" not in state or "scheduler" not in state:
            raise ValueError(f"checkpoint {path} is not from a tuple-training run (train.sampler=tuples)")
        self.encoder.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])
        self.batch_in_epoch, self.skipped_tuples = int(state["batch_in_epoch"]), int(state["skipped_tuples"])
        self.tuples = EpochTuples.from_state(state["tuples"]) if state["tuples"] is not None else None
        restore_rank_rng(state, self.dist)
        self.metrics.truncate_after(self.iteration)
        log.info("resumed from %s at epoch %d, step %d of %d (iteration %d)", path, self.epoch, self.batch_in_epoch,
                 self.steps_per_epoch, self.iteration)

    # -- one epoch -----------------------------------------------------------------------------------------------
    def mine(self) -> EpochTuples:
        tc, data = self.cfg.tuples, self.cfg.data
        start = time.time()
        tuples = mine_epoch_tuples(
            self.encoder, self.train_table, self.pairs, self.epoch, self.cfg.train.seed, query_size=tc.query_size,
            pool_size=tc.pool_size, negatives=tc.negatives, batch_size=tc.mining_batch_size,
            num_workers=data.num_workers, amp=self.cfg.train.amp, resize=data.eval_resize,
            skip_bad=data.on_bad_image == "skip", progress=self.progress and self.dist.is_main)
        row = {"iteration": self.iteration, "epoch": self.epoch, "mining_seconds": time.time() - start,
               "tuples": len(tuples), "negative_distance": tuples.negative_distance}
        self.metrics.write(row)
        return tuples

    def _loader(self, tuples: EpochTuples) -> DataLoader:
        """This rank's share of every batch: tuples ``rank, rank + world, …`` of each run of ``per_batch``."""
        per_batch, rank, world = self.cfg.tuples.per_batch, self.dist.rank, self.dist.world_size
        batches = [list(range(b, min(b + per_batch, len(tuples))))[rank::world]
                   for b in range(0, len(tuples), per_batch)][self.batch_in_epoch:]
        dataset = TupleDataset(self.train_table, tuples, self.transform, self.cfg.train.seed, self.epoch,
                               skip_bad=self.cfg.data.on_bad_image == "skip")
        return DataLoader(dataset, batch_sampler=batches, num_workers=self.cfg.data.num_workers,
                          collate_fn=collate_tuples, pin_memory=self.device.type == "cuda")

    def step(self, batch: dict[str, torch.Tensor], tuple_size: int) -> dict[str, float]:
        self.model.train()
        images = batch["images"].to(self.device, non_blocking=True)
        if images.ndim == 1:  # an empty share of the batch: still join DDP's gradient all-reduce, with zeros
            size = self.cfg.model.image_size
            images = images.new_zeros((0, 3, size, size))
        with autocast_context(self.device, self.cfg.train.amp):
            z = self.model(images)
        l_tuple = (tuple_contrastive_loss(z, tuple_size, self.cfg.loss.margin) if len(z)
                   else z.float().sum() * 0.0)
        weight = self.cfg.loss.koleo_weight
        l_koleo = koleo_loss(z, self.cfg.loss.koleo_eps) if weight > 0 and len(z) > 1 else l_tuple.new_zeros(())
        # DDP averages gradients over ranks: the tuple sum is scaled back up, the per-rank KoLeo is an average
        loss = self.dist.world_size * l_tuple + weight * l_koleo
        optimizer_step(loss, self.optimizer, self.scaler, self.encoder.parameters(), self.cfg.train.grad_clip)
        row = {"loss_tuple": float(l_tuple.detach()), "loss_koleo": float(l_koleo.detach())}
        row["loss"] = row["loss_tuple"] + weight * row["loss_koleo"]
        if not math.isfinite(row["loss"]):
            raise FloatingPointError(f"loss became {row['loss']} at iteration {self.iteration}; lower train.lr or "
                                     "enable train.grad_clip (the last checkpoint is intact)")
        return row

    def _sum_over_ranks(self, row: dict[str, float]) -> dict[str, float]:
        if not self.dist.enabled:
            return row
        keys = sorted(row)
        summed = self.dist.all_reduce_sum(torch.tensor([row[k] for k in keys], dtype=torch.float64,
                                                        device=self.device))
        out = dict(zip(keys, summed.tolist()))  # the tuple loss and the image count add up over ranks
        out["loss_koleo"] /= self.dist.world_size  # per-rank KoLeo: report the mean, the tuple loss is a sum
        out["loss"] = out["loss_tuple"] + self.cfg.loss.koleo_weight * out["loss_koleo"]
        return out

    # -- the loop ------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        tc, train_cfg = self.cfg.tuples, self.cfg.train
        start = time.time()
        history: list[dict[str, Any]] = []
        total_steps = tc.epochs * self.steps_per_epoch
        if self.iteration == 0 and train_cfg.eval_every > 0:
            self._evaluate(history)  # before training: the starting point of the Recall curve
        bar = tqdm(total=total_steps, initial=self.iteration, desc=f"train {self.cfg.name}", unit="it",
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        while self.epoch < tc.epochs:
            if self.tuples is None:
                self.tuples = self.mine()
                history.append({"iteration": self.iteration, "epoch": self.epoch,
                                "negative_distance": self.tuples.negative_distance})
            tuple_size = self.tuples.tuple_size
            batches_in_epoch = math.ceil(len(self.tuples) / tc.per_batch)  # fewer if unreadable queries were dropped
            epoch_rows: list[dict[str, float]] = []
            seen_at = time.time()
            images_done = 0
            for batch in self._loader(self.tuples):
                n_bad = int(self.dist.all_reduce_sum(torch.tensor(len(batch["bad"]), device=self.device)).item())
                if n_bad:
                    self.skipped_tuples += n_bad
                    log.warning("skipped %d tuple(s) with an unreadable image at iteration %d (total %d)", n_bad,
                                self.iteration, self.skipped_tuples)
                if not self.dist.enabled and len(batch["tuples"]) == 0:  # every tuple unreadable: nothing to learn
                    self.iteration += 1
                    self.batch_in_epoch += 1
                    bar.update(1)
                    continue
                row = self.step(batch, tuple_size)
                row = self._sum_over_ranks({**row, "step_tuples": float(len(batch["tuples"]))})
                self.iteration += 1
                self.batch_in_epoch += 1
                images_done += int(row.pop("step_tuples")) * tuple_size
                epoch_rows.append(row)
                bar.update(1)
                bar.set_postfix(epoch=self.epoch, loss=f"{row['loss']:.4f}")
                if self.iteration % train_cfg.log_every == 0:
                    row = {**row, "iteration": self.iteration, "epoch": self.epoch,
                           "lr": self.optimizer.param_groups[0]["lr"],
                           "images_per_second": images_done / max(time.time() - seen_at, 1e-9)}
                    self.metrics.write(row)
                    history.append(row)
                if self.iteration % train_cfg.checkpoint_every == 0 and self.batch_in_epoch < batches_in_epoch:
                    self.save()
            if epoch_rows:
                log.info("epoch %d: mean loss %.4f (tuple %.4f, koleo %.4f), lr %.3g, %.1f img/s", self.epoch,
                         np.mean([r["loss"] for r in epoch_rows]), np.mean([r["loss_tuple"] for r in epoch_rows]),
                         np.mean([r["loss_koleo"] for r in epoch_rows]), self.optimizer.param_groups[0]["lr"],
                         images_done / max(time.time() - seen_at, 1e-9))
            self.scheduler.step()
            self.epoch += 1
            self.batch_in_epoch = 0
            self.tuples = None
            if train_cfg.eval_every > 0 and self.epoch % train_cfg.eval_every == 0 and self.epoch < tc.epochs:
                self._evaluate(history)
            self.save()
        bar.close()
        recall = self._evaluate(history)
        if self.dist.is_main:
            atomic_write_json(self.out / "eval.json", {
                "dataset": self.cfg.data.dataset, "split": "test", "iterations": self.iteration,
                "epochs": self.epoch, "recall_at_k": {str(k): v for k, v in recall.items()},
                "skipped_tuples": self.skipped_tuples})
        self.metrics.close()
        seconds = time.time() - start
        log.info("done: %d epochs (%d iterations) in %.1f s; model in %s", self.epoch, self.iteration, seconds,
                 self.out / "model")
        self.run_dir.close()
        return TrainResult(self.out, self.iteration, {str(k): v for k, v in recall.items()}, seconds,
                           self.skipped_tuples, history)

    def _evaluate(self, history: list[dict[str, Any]]) -> dict[str, float]:
        """Recall@K on the held-out split with clusters as labels (a proxy; the benchmark is ROxf / RPar mAP)."""
        recall = held_out_recall(self.encoder, self.test_table, self.cfg, self.dist)
        if recall:
            row = {"iteration": self.iteration, "epoch": self.epoch, **{f"recall@{k}": v for k, v in recall.items()}}
            self.metrics.write(row)
            history.append(row)
            log.info("epoch %d: held-out %s", self.epoch, format_recall(recall))
        return recall
