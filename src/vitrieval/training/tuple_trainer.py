"""Tuple training for particular-object retrieval (the paper's landmark track: SfM-120k, cirtorch's procedure).

Per epoch: mine tuples with the current model (:mod:`vitrieval.training.mining`), then take them
``tuples.per_batch`` at a time; a step minimises (:class:`~vitrieval.training.objectives.TupleObjective`) ::

    L = L_tuple + λ · L_KoLeo

with ``L_tuple`` cirtorch's distance-based contrastive loss (:func:`vitrieval.losses.tuple_contrastive_loss`,
margin ``loss.margin`` = 0.85 in the presets) summed over the batch's tuples, and KoLeo (Eq. 5) over the batch's
descriptors (on each rank's part under torchrun). Adam (``train.optimizer``), lr decayed by
``exp(-tuples.lr_decay)`` after every epoch.

The run folder is the shared lifecycle's (:mod:`vitrieval.training.lifecycle`: ``model/``, ``checkpoints/last.pt``,
``train.log``, ``metrics.jsonl``, TensorBoard, ``eval.json``). A checkpoint holds the epoch's tuples and the
position in them, so an interrupted run resumes mid-epoch without mining again. Under torchrun mining is sharded
(every rank gets the same tuples) and each rank takes a disjoint share of every batch's tuples; the loss is scaled
by the world size so that DDP's gradient average equals the gradient of the whole batch's sum.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from vitrieval.amp import autocast_context
from vitrieval.data.loading import close_loader, loader_options, resolve_num_workers
from vitrieval.data.transforms import train_transform
from vitrieval.data.tuples import EpochTupleBatches, EpochTuples, TupleImages, collate_tuples, epoch_base_seed
from vitrieval.embed import ExtractionOptions
from vitrieval.progress import tqdm
from vitrieval.training.lifecycle import RunLifecycle, TrainResult
from vitrieval.training.mining import mine_epoch_tuples
from vitrieval.training.objectives import TupleObjective
from vitrieval.training.optim import optimizer_step


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


class TupleTrainer(RunLifecycle):
    """One tuple-training run (``train.sampler=tuples``); :meth:`run` trains for ``tuples.epochs`` epochs and
    returns a :class:`~vitrieval.training.lifecycle.TrainResult`."""

    train_sampler = "tuples"
    skipped_key = "skipped_tuples"
    skipped_what = "tuple(s) with an unreadable image"
    objective: TupleObjective

    def _check_ranks(self) -> None:
        per_batch = self.cfg.tuples.per_batch
        if self.dist.world_size > per_batch:
            raise ValueError(f"tuples.per_batch ({per_batch}) must be at least the number of processes "
                             f"({self.dist.world_size}): each rank takes a share of every batch's tuples")

    def _prepare_data(self) -> None:
        self.pairs = training_pairs(self.train_table, self.cfg.data.dataset)

    def _make_objective(self) -> TupleObjective:
        return TupleObjective(self.cfg.loss)

    def _prepare_training(self) -> None:
        config, tc = self.cfg, self.cfg.tuples
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=math.exp(-tc.lr_decay))
        self.transform = train_transform(self.encoder.data_config, config.data.train_resize_ratio,
                                         config.data.hflip, config.data.train_resize, config.data.fast_decode)
        self.steps_per_epoch = math.ceil(min(tc.query_size, len(self.pairs)) / tc.per_batch)
        self.tuples: EpochTuples | None = None
        self.num_workers = resolve_num_workers(config.data.num_workers, self.device, self.dist.world_size)
        skip = config.data.on_bad_image == "skip"
        # one loader for the run: persistent workers, a dataset without per-epoch state, keys fed per epoch
        self.tuple_batches = EpochTupleBatches(tc.per_batch)
        self.tuple_loader = DataLoader(TupleImages(self.train_table, self.transform, skip_bad=skip,
                                                   carry_errors=not skip),
                                       batch_sampler=self.tuple_batches, collate_fn=collate_tuples,
                                       generator=torch.Generator().manual_seed(config.train.seed),
                                       **loader_options(self.num_workers, self.device, persistent=True))

    def _log_start(self) -> None:
        config, tc = self.cfg, self.cfg.tuples
        self.logger.info("run %s: %d train images, %d query-positive pairs, %d held-out images; %d epochs x %d steps "
                         "of %d tuples (1 + 1 + %d images); %s on %s, world size %d", config.name,
                         len(self.train_table), len(self.pairs), len(self.test_table), tc.epochs,
                         self.steps_per_epoch, tc.per_batch, tc.negatives, config.model.name, self.device,
                         self.dist.world_size)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(),
                "tuples": self.tuples.state_dict() if self.tuples is not None else None}

    def _load_extra(self, state: dict[str, Any], path: Path) -> None:
        if "tuples" not in state or "scheduler" not in state:
            raise ValueError(f"checkpoint {path} is not from a tuple-training run (train.sampler=tuples)")
        self.scheduler.load_state_dict(state["scheduler"])
        self.tuples = EpochTuples.from_state(state["tuples"]) if state["tuples"] is not None else None

    def _model_extra(self) -> dict[str, Any]:
        return {"trained_iterations": self.iteration, "trained_epochs": self.epoch, "run": self.cfg.name}

    def _position(self) -> str:
        return (f"epoch {self.epoch}, step {self.batch_in_epoch} of {self.steps_per_epoch} "
                f"(iteration {self.iteration})")

    # -- one epoch -----------------------------------------------------------------------------------------------
    def mine(self) -> EpochTuples:
        tc, data = self.cfg.tuples, self.cfg.data
        start = time.time()
        tuples = mine_epoch_tuples(
            self.encoder, self.train_table, self.pairs, self.epoch, self.cfg.train.seed, query_size=tc.query_size,
            pool_size=tc.pool_size, negatives=tc.negatives,
            extraction=ExtractionOptions(batch_size=tc.mining_batch_size, num_workers=self.num_workers,
                                         amp=self.cfg.train.amp, resize=data.eval_resize,
                                         skip_bad=data.on_bad_image == "skip", output="normalized",
                                         progress=self.progress and self.dist.is_main,
                                         fast_decode=data.fast_decode))
        row = {"iteration": self.iteration, "epoch": self.epoch, "mining_seconds": time.time() - start,
               "tuples": len(tuples), "negative_distance": tuples.negative_distance}
        self.metrics.write(row)
        return tuples

    def _loader(self, tuples: EpochTuples) -> DataLoader:
        """The run's loader set to this epoch's ``tuples`` from the current step on: this rank's share of every
        batch (tuples ``rank, rank + world, …`` of each run of ``per_batch``)."""
        self.tuple_batches.set_epoch(tuples, epoch_base_seed(self.cfg.train.seed, self.epoch), self.batch_in_epoch,
                                     self.dist.rank, self.dist.world_size)
        return self.tuple_loader

    def step(self, batch: dict[str, torch.Tensor], tuple_size: int) -> dict[str, float]:
        self.model.train()
        images = batch["images"].to(self.device, non_blocking=True)
        if images.ndim == 1:  # an empty share of the batch: still join DDP's gradient all-reduce, with zeros
            size = self.cfg.model.image_size
            images = images.new_zeros((0, 3, size, size))
        with autocast_context(self.device, self.cfg.train.amp):
            z = self.model(images)
        terms = self.objective(z, batch["labels"], self.iteration, tuple_size=tuple_size)
        loss = self.objective.backward_loss(terms, self.dist.world_size)  # this rank's share of the tuples
        optimizer_step(loss, self.optimizer, self.scaler, self.encoder.parameters(), self.cfg.train.grad_clip)
        row = self.objective.report(terms)
        self._check_finite(row)
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
        try:
            return self._run()
        finally:
            close_loader(self.tuple_loader)  # the loader's workers stop with the run, also when it raised

    def _run(self) -> TrainResult:
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
                self._count_unreadable(batch)
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
                self.logger.info("epoch %d: mean loss %.4f (tuple %.4f, koleo %.4f), lr %.3g, %.1f img/s",
                                 self.epoch, np.mean([r["loss"] for r in epoch_rows]),
                                 np.mean([r["loss_tuple"] for r in epoch_rows]),
                                 np.mean([r["loss_koleo"] for r in epoch_rows]),
                                 self.optimizer.param_groups[0]["lr"], images_done / max(time.time() - seen_at, 1e-9))
            self.scheduler.step()
            self.epoch += 1
            self.batch_in_epoch = 0
            self.tuples = None
            if train_cfg.eval_every > 0 and self.epoch % train_cfg.eval_every == 0 and self.epoch < tc.epochs:
                self._evaluate(history)
            self.save()
        bar.close()
        close_loader(self.tuple_loader)
        return self._finish(self._evaluate(history), start, history)

    def _evaluate(self, history: list[dict[str, Any]]) -> dict[str, float]:
        """Recall@K on the held-out split with clusters as labels (a proxy; the benchmark is ROxf / RPar mAP)."""
        recall = self.evaluate()
        self._record_recall(recall, history, "epoch %d: held-out %s", self.epoch, epoch=self.epoch)
        return recall

    # -- the tail --------------------------------------------------------------------------------------------------
    def _eval_fields(self) -> dict[str, Any]:
        return {"epochs": self.epoch}

    def _done_what(self) -> str:
        return f"{self.epoch} epochs ({self.iteration} iterations)"
