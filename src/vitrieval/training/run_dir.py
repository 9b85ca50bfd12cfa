"""A run's output folder, shared by every trainer: fresh-or-resume check, readable log, saved config, checkpoints.

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
from vitrieval.training.checkpoint import load_checkpoint
from vitrieval.training.run_log import attach_file_log

log = logging.getLogger(__name__)


@dataclass
class RunDir:
    """``out`` (the run folder), ``checkpoints`` (``out/checkpoints``) and whether this run continues one."""

    out: Path
    checkpoints: Path
    resume: bool
    dist: DistContext
    _log_handler: logging.Handler | None = None

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
        if dist.is_main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            run._log_handler = attach_file_log(out / "train.log")
            save_config(config, out / "config.yaml")
        dist.barrier()
        return run

    def read_checkpoint(self) -> dict[str, Any]:
        """``last.pt`` on every rank: read from disk where visible, else rank 0's copy (no shared file system)."""
        visible = self.dist.all_gather_object((self.checkpoints / "last.pt").is_file())
        if all(visible):
            return load_checkpoint(self.checkpoints)
        return self.dist.broadcast_object(load_checkpoint(self.checkpoints) if self.dist.is_main else None)

    def close(self) -> None:
        """Detach ``train.log``."""
        if self._log_handler is not None:
            logging.getLogger("vitrieval").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
