"""The P x K trainer (IRT_L / IRT_R): iterations over class-balanced batches, resumable, on CPU, one GPU or many.

Each step draws ``P`` classes x ``K`` images (:class:`~vitrieval.data.sampler.ClassBalancedBatchSampler`, a
disjoint share of the classes per rank under torchrun), gathers every rank's descriptors (and their training-table
rows) and minimises the objective ``loss.objective`` names (:func:`~vitrieval.training.objectives.make_objective`):
by default IRT's contrastive loss on the batch and against the cross-batch memory, + KoLeo, the memory optionally
fed by a momentum encoder; or NSoftmax / SNCA + KoLeo. With ``train.log_gradient_noise`` every metrics row also
holds Fig 4's γ of that step's batch (``grad_noise_nuclear``, :mod:`vitrieval.analyze.gradient_noise`).
The run folder, checkpoints and evaluation rows are the shared lifecycle's (:mod:`vitrieval.training.lifecycle`); a
checkpoint also holds the objective's state (memory, proxies), the momentum encoder and the sampler position, so a
run resumes mid-epoch to identical weights.

One DataLoader serves the whole run (:class:`~vitrieval.data.sampler.SpanningBatchSampler`): its decode workers
start once, not every epoch, and the batches are those of one loader per epoch, item seeds included.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from vitrieval.amp import autocast_context
from vitrieval.analyze.gradient_noise import GRADIENT_NOISE_KEY, gradient_noise
from vitrieval.data.dataset import SeededTableDataset, collate_skip_bad
from vitrieval.data.loading import close_loader, loader_options, resolve_num_workers
from vitrieval.data.sampler import ClassBalancedBatchSampler, SpanningBatchSampler
from vitrieval.data.transforms import train_transform
from vitrieval.progress import tqdm
from vitrieval.training.lifecycle import RunLifecycle, TrainResult
from vitrieval.training.momentum import MomentumEncoder
from vitrieval.training.objectives import Objective, make_objective
from vitrieval.training.optim import optimizer_step


class Trainer(RunLifecycle):
    """One P x K run (``train.sampler=classes``); :meth:`run` trains to ``train.iterations`` and returns a
    :class:`~vitrieval.training.lifecycle.TrainResult`."""

    train_sampler = "classes"
    skipped_key = "skipped_images"
    skipped_what = "unreadable image(s)"

    def _make_objective(self) -> Objective:
        return make_objective(self.cfg.loss, self.cfg.memory, self.encoder.feature_dim, self.train_table.labels,
                              self.device, self.cfg.train.seed, self.dist.world_size)

    def _prepare_model(self) -> None:
        momentum = self.cfg.memory.momentum
        self.momentum = MomentumEncoder(self.encoder, momentum) if momentum > 0 else None

    def _prepare_training(self) -> None:
        config = self.cfg
        self.sampler = ClassBalancedBatchSampler(self.train_table.labels, config.train.batch_size,
                                                 config.data.images_per_class, config.train.seed,
                                                 self.dist.rank, self.dist.world_size)
        skip = config.data.on_bad_image == "skip"
        self.dataset = SeededTableDataset(
            self.train_table,
            train_transform(self.encoder.data_config, config.data.train_resize_ratio, config.data.hflip,
                            config.data.train_resize, config.data.fast_decode),
            skip_bad=skip, carry_errors=not skip)  # on_bad_image=stop: the error leaves a worker whole
        self.num_workers = resolve_num_workers(config.data.num_workers, self.device, self.dist.world_size)

    def _log_start(self) -> None:
        config = self.cfg
        self.logger.info("run %s: %d train images / %d classes, %d held-out images / %d classes; %s on %s, world "
                         "size %d, %d decode worker(s)", config.name, len(self.train_table),
                         len(self.train_table.class_counts()), len(self.test_table),
                         len(self.test_table.class_counts()), config.model.name, self.device, self.dist.world_size,
                         self.num_workers)
        for line in self.objective.warnings(config.train.iterations):
            self.logger.warning("%s", line)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        return {"momentum": self.momentum.state_dict() if self.momentum is not None else None}

    def _load_extra(self, state: dict[str, Any], path: Path) -> None:
        if self.momentum is not None and state["momentum"] is not None:
            self.momentum.load_state_dict(state["momentum"])
        saved = int(state.get("world_size", 1)), int(state["config"]["train"]["batch_size"])
        now = self.dist.world_size, self.cfg.train.batch_size
        if saved[0] * saved[1] != now[0] * now[1]:
            self.logger.warning("the checkpoint was written with a global batch of %d (%d rank(s) x %d), this run "
                                "has %d (%d x %d): the remaining iterations see other batches than the original "
                                "run would", saved[0] * saved[1], *saved, now[0] * now[1], *now)

    def _position(self) -> str:
        return f"iteration {self.iteration} (epoch {self.epoch}, batch {self.batch_in_epoch})"

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
        rows = batch.get("indices")  # the items' training-table rows (what SNCA's memory is indexed by)
        rows = self.dist.gather_with_grad(rows.to(self.device)) if rows is not None else None
        terms = self.objective(z, y, self.iteration, z_for_memory=z_mem, z_local=z_local, indices=rows)
        loss = self.objective.backward_loss(terms, self.dist.world_size)
        grad_norm = optimizer_step(loss, self.optimizer, self.scaler,
                                   [*self.encoder.parameters(), *self.objective.parameters()],
                                   self.cfg.train.grad_clip)
        if self.momentum is not None:
            self.momentum.update(self.encoder)
        row = self.objective.report(terms)
        self._check_finite(row)
        if self.cfg.train.log_gradient_noise and self.dist.is_main and self._is_log_step(self.iteration + 1):
            # Fig 4's gamma of this step's (gathered) batch, before the update moved the weights
            row[GRADIENT_NOISE_KEY] = gradient_noise(z.detach(), y, self.cfg.loss.margin)
        if self.cfg.train.grad_clip > 0:
            row["grad_norm"] = grad_norm
        return row

    def _is_log_step(self, iteration: int) -> bool:
        """Whether the step that ends at ``iteration`` writes a metrics row (every ``train.log_every`` and the
        last)."""
        return iteration % self.cfg.train.log_every == 0 or iteration == self.cfg.train.iterations

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Batches from the current (epoch, position) on, forever, from one loader; tracks the position for
        checkpoints (after an epoch's last batch the position stays ``(epoch, length)`` until the next batch)."""
        spanning = SpanningBatchSampler(self.sampler, self.epoch, self.batch_in_epoch)
        # the generator only seeds the workers (augmentation is per item): the global RNG is left untouched
        loader = DataLoader(self.dataset, batch_sampler=spanning, collate_fn=collate_skip_bad,
                            generator=torch.Generator().manual_seed(self.cfg.train.seed),
                            **loader_options(self.num_workers, self.device))
        length = self.sampler.epoch_length(self.epoch)
        try:
            for batch in loader:
                if self.batch_in_epoch == length:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    length = self.sampler.epoch_length(self.epoch)
                self.batch_in_epoch += 1
                yield batch
        finally:
            close_loader(loader)

    def run(self) -> TrainResult:
        cfg = self.cfg.train
        start = time.time()
        history: list[dict[str, Any]] = []
        if self.iteration == 0 and cfg.eval_every > 0:
            self._record_recall(self.evaluate(), history, "iteration 0 (before training): %s")
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=f"train {self.cfg.name}", unit="it",
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True)
        seen_at_start = time.time()
        batches = self._batches()
        try:
            self._train_steps(batches, history, bar, seen_at_start)
        finally:
            batches.close()  # the loader's workers stop here, also when a step raised
        bar.close()
        self.save()
        recall = self.evaluate()
        self._record_recall(recall, history, "final (iteration %d): %s", self.iteration)
        return self._finish(recall, start, history)

    def _train_steps(self, batches: Iterator[dict[str, Any]], history: list[dict[str, Any]], bar: Any,
                     seen_at_start: float) -> None:
        cfg = self.cfg.train
        images_done = 0
        while self.iteration < cfg.iterations:
            batch = next(batches)
            self._count_unreadable(batch)
            row = self.step(batch)
            self.iteration += 1
            images_done += len(batch["images"]) * self.dist.world_size
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if self._is_log_step(self.iteration):
                row["iteration"] = self.iteration
                row["images_per_second"] = images_done / max(time.time() - seen_at_start, 1e-9)
                row["lr"] = self.optimizer.param_groups[0]["lr"]
                self.metrics.write(row)
                history.append(row)
                parts = ", ".join(f"{k[5:]} {v:.4f}" for k, v in row.items() if k.startswith("loss_"))
                self.logger.info("iteration %d: loss %.4f (%s), %.1f img/s", self.iteration, row["loss"], parts,
                                 row["images_per_second"])
            if cfg.eval_every > 0 and self.iteration % cfg.eval_every == 0 and self.iteration < cfg.iterations:
                self._record_recall(self.evaluate(), history, "iteration %d: %s", self.iteration)
            if self.iteration % cfg.checkpoint_every == 0 and self.iteration < cfg.iterations:
                self.save()

