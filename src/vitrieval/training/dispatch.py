"""``train(config, output_dir)``: run the trainer the configuration asks for (``train.sampler``)."""

from __future__ import annotations

import os
from pathlib import Path

from vitrieval.config import Config
from vitrieval.data.images import ImageDecodeError
from vitrieval.distributed import process_group
from vitrieval.training.checkpoint import LAST
from vitrieval.training.lifecycle import TrainResult
from vitrieval.training.pk_trainer import Trainer
from vitrieval.training.run_dir import discard_unstarted_run
from vitrieval.training.tuple_trainer import TupleTrainer


def train(config: Config, output_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train ``config`` into ``output_dir`` (continuing the last checkpoint with ``resume``).

    ``train.sampler=classes``: :class:`~vitrieval.training.pk_trainer.Trainer` (P x K batches, Eq. 1, memory,
    KoLeo); ``tuples``: :class:`~vitrieval.training.tuple_trainer.TupleTrainer` (mined landmark tuples, cirtorch's
    loss, KoLeo). A set-up that fails (no data, a refused resume) in a folder this call created leaves no folder, nor
    does a run that fails before its first checkpoint there. An unreadable training image with
    ``data.on_bad_image=stop`` is raised naming ``data.on_bad_image=skip``.
    """
    with process_group():  # under torchrun: the group of this run, destroyed at its end
        return _train(config, Path(output_dir), resume, progress)


def _train(config: Config, out: Path, resume: bool, progress: bool) -> TrainResult:
    kind = TupleTrainer if config.train.sampler == "tuples" else Trainer
    fresh = not out.exists()
    try:
        trainer = kind(config, out, resume=resume, progress=progress)
    except BaseException:
        if fresh and int(os.environ.get("RANK", "0")) == 0:
            discard_unstarted_run(out)
        raise
    try:
        return trainer.run()
    except BaseException as exc:
        trainer.run_dir.close()
        if fresh and int(os.environ.get("RANK", "0")) == 0 and not (trainer.ckpt_dir / LAST).is_file():
            trainer.metrics.close()
            discard_unstarted_run(out)
        if isinstance(exc, ImageDecodeError):
            raise ImageDecodeError(exc.path, f"{exc.reason} ({_bad_image_hint(trainer, exc.path)})") from None
        raise


def _bad_image_hint(trainer: Trainer | TupleTrainer, path: str) -> str:
    """How to go on past an unreadable image: skipping it in training, or replacing it for the held-out Recall
    (which embeds every held-out image)."""
    if any(r.path == path for r in trainer.train_table.records):
        return "--set data.on_bad_image=skip trains on without the unreadable images, counting them in train.log"
    return "a held-out image, embedded for the held-out Recall whatever data.on_bad_image says: replace or remove it"
