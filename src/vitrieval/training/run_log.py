"""What a run writes for people and tools: a readable log file, JSONL metrics and TensorBoard scalars."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Append one JSON object per line to ``metrics.jsonl`` and mirror numbers to TensorBoard (if installed)."""

    def __init__(self, directory: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(directory) / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(directory) / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = None

    def truncate_after(self, iteration: int) -> None:
        """On resume, drop rows written after the checkpoint (they will be written again)."""
        if not (self.enabled and self.path.exists()):
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iteration", 0) <= iteration]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            step = int(row.get("iteration", 0))
            for key, value in row.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def attach_file_log(path: str | Path) -> logging.Handler:
    """Log INFO and above of the ``vitrieval`` loggers to ``path`` (appending, so a resume continues it)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("vitrieval")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler
