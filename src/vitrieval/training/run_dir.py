"""A run's output folder, shared by every trainer: fresh-or-resume check, readable log, saved config, checkpoints.

A refused ``--resume`` (a checkpoint for other model settings, an unreadable one) leaves the folder untouched: the
checkpoint is read and checked before ``config.yaml`` or ``train.log`` is written. A fresh run whose set-up fails
leaves no folder behind (:func:`discard_unstarted_run`).

Rank 0 decides and writes (the folder may be local to the first machine); the other ranks read rank 0's
checkpoint when they cannot see the file themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitrieval.config import Config, save_config
from vitrieval.distributed import DistContext
from vitrieval.training.checkpoint import LAST, check_checkpoint_model, load_checkpoint
from vitrieval.training.run_log import attach_file_log

log = logging.getLogger(__name__)

RUN_FILES: tuple[str, ...] = ("config.yaml", "train.log", "metrics.jsonl")
"""The files a run writes at set-up, before its first checkpoint."""
RUN_FOLDERS: tuple[str, ...] = ("checkpoints", "tensorboard")


@dataclass
class RunDir:
    """``out`` (the run folder), ``checkpoints`` (``out/checkpoints``) and whether this run continues one."""

    out: Path
    checkpoints: Path
    resume: bool
    dist: DistContext
    _log_handler: logging.Handler | None = None
    _checked: dict[str, Any] | None = None  # rank 0's checkpoint, read once for the check before anything is written

    @classmethod
    def open(cls, config: Config, output_dir: str | Path, resume: bool, dist: DistContext) -> RunDir:
        """Check the folder (a run already there needs ``resume``), attach ``train.log``, write ``config.yaml``."""
        if not dist.is_main and logging.getLogger("vitrieval").getEffectiveLevel() < logging.WARNING:
            logging.getLogger("vitrieval").setLevel(logging.WARNING)  # rank 0 reports; the others only warn
        out = Path(output_dir)
        ckpt_dir = out / "checkpoints"
        has_checkpoint = bool(dist.broadcast_object((ckpt_dir / "last.pt").is_file()))
        if has_checkpoint and not resume:
            raise ValueError(f"{out} already holds a run (checkpoints/last.pt); pass --resume to continue it "
                             "or choose another --output")
        if resume and not has_checkpoint:
            log.warning("--resume: no checkpoint in %s yet, starting from scratch", ckpt_dir)
        run = cls(out, ckpt_dir, resume and has_checkpoint, dist)
        if run.resume:
            run._check_resume(config)
        if dist.is_main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            run._log_handler = attach_file_log(out / "train.log")
            save_config(config, out / "config.yaml")
        dist.barrier()
        return run

    def _check_resume(self, config: Config) -> None:
        """Rank 0 reads ``last.pt`` and checks its model settings; every rank raises rank 0's refusal, if any."""
        refusal = None
        if self.dist.is_main:
            try:
                self._checked = load_checkpoint(self.checkpoints)
                check_checkpoint_model(self._checked, config, self.checkpoints / LAST)
                check_not_finished(self._checked, config, self.out)
            except (ValueError, KeyError) as exc:
                self._checked, refusal = None, str(exc)
        refusal = self.dist.broadcast_object(refusal)
        if refusal:
            raise ValueError(refusal)

    def read_checkpoint(self) -> dict[str, Any]:
        """``last.pt`` on every rank: read from disk where visible, else rank 0's copy (no shared file system)."""
        checked, self._checked = self._checked, None
        visible = self.dist.all_gather_object((self.checkpoints / LAST).is_file())
        if all(visible):
            return checked if checked is not None else load_checkpoint(self.checkpoints)
        if self.dist.is_main:
            return self.dist.broadcast_object(checked if checked is not None else load_checkpoint(self.checkpoints))
        return self.dist.broadcast_object(None)

    def close(self) -> None:
        """Detach ``train.log``."""
        if self._log_handler is not None:
            logging.getLogger("vitrieval").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


def check_not_finished(state: dict[str, Any], config: Config, out: Path) -> None:
    """Refuse ``--resume`` of a run that already ran all its steps and wrote ``eval.json`` (it would only evaluate
    again): a ``ValueError`` that says so and how to train further."""
    if config.train.sampler == "tuples":
        done, total, key = int(state["epoch"]), config.tuples.epochs, "tuples.epochs"
    else:
        done, total, key = int(state["iteration"]), config.train.iterations, "train.iterations"
    if done >= total and (out / "eval.json").is_file():
        what = key.split(".")[1]
        raise ValueError(f"{out} is already finished ({done} {what}; its model is {out / 'model'}): to train it "
                         f"further, --resume with --set {key}=N for an N over {done}; or choose another --output")


def discard_unstarted_run(out: Path) -> None:
    """Remove what a fresh run's set-up wrote in ``out`` (a folder it created) when the set-up failed.

    Only :data:`RUN_FILES` and empty :data:`RUN_FOLDERS` (a ``tensorboard`` folder holding event files only) go,
    then ``out`` if it is empty: anything else in it stays.
    """
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        folder = out / name
        if folder.is_dir():
            for event in folder.glob("events.out.tfevents.*"):
                event.unlink()
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty: not only ours
    try:
        out.rmdir()
    except OSError:
        pass
