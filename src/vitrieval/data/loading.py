"""How images reach the model: how many decode workers, pinned memory, prefetch: one rule for training and
extraction.

``num_workers="auto"`` (the default of ``data.num_workers`` and of :func:`vitrieval.embed.extract`) gives each
rank the cores the model's own threads leave free, at most :data:`MAX_AUTO_WORKERS`::

    cores_per_rank = available cores // world size
    model_cores    = 1 on CUDA / MPS (the Python thread launching kernels), else torch.get_num_threads()
    workers        = clamp(cores_per_rank - model_cores, 0, MAX_AUTO_WORKERS)

On a CPU box the model's intra-op threads already use every core (torch's default is one per core), so a decode
worker only takes time from the matrix multiplies: ``auto`` is 0 and images are decoded in the main process
between steps. Measured on a 2-core CPU with the cpu-tiny preset (``benchmarks/input_pipeline.py``, one loader per
run, 20 steps, best of 2), img/s with 0 / 1 / 2 workers: ORL 84 / 72 / 58, COIL-20 90 / 71 / 62, 1024 x 768 JPEGs
45 / 41 / 41. With a GPU the model needs about one core, so a 16-core single-GPU machine gets 8 workers and an
8-GPU node with 96 cores 8 per rank. An explicit number always wins.

Pinned memory is used exactly when the batches go to a CUDA device (host-to-device copies can then be asynchronous,
``non_blocking=True``); each worker keeps torch's default of two batches in flight.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
MAX_AUTO_WORKERS = 8
"""``auto`` never starts more decode processes than this per rank (beyond it a loader is rarely the limit)."""

_logged: set[tuple[str, int, int]] = set()


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports it, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def auto_num_workers(device: torch.device | str, world_size: int = 1, cores: int | None = None,
                     model_threads: int | None = None) -> int:
    """The ``auto`` rule (module docstring): decode workers per rank for ``device`` with ``world_size`` ranks."""
    device = torch.device(device)
    per_rank = max(1, (available_cores() if cores is None else cores) // max(1, world_size))
    if device.type in ("cuda", "mps"):
        model_cores = 1
    else:
        model_cores = torch.get_num_threads() if model_threads is None else model_threads
    return max(0, min(MAX_AUTO_WORKERS, per_rank - min(per_rank, model_cores)))


def resolve_num_workers(num_workers: int | str, device: torch.device | str, world_size: int = 1) -> int:
    """``num_workers`` itself when it is a number (an explicit choice wins), else :func:`auto_num_workers`; the
    automatic choice is logged once per process (per device and rank count)."""
    if num_workers != AUTO:
        workers = int(num_workers)
        if workers < 0:
            raise ValueError(f"num_workers must be >= 0 or 'auto', got {num_workers}")
        return workers
    workers = auto_num_workers(device, world_size)
    key = (torch.device(device).type, world_size, workers)
    if key not in _logged:
        _logged.add(key)
        log.info("data.num_workers=auto: %d decode worker(s) per rank (%d core(s), %d rank(s), model on %s with %s)",
                 workers, available_cores(), world_size, torch.device(device).type,
                 "1 core" if key[0] in ("cuda", "mps") else f"{torch.get_num_threads()} thread(s)")
    return workers


def loader_options(num_workers: int, device: torch.device | str, persistent: bool = False) -> dict[str, Any]:
    """The ``DataLoader`` keyword arguments of the one rule: ``num_workers``, ``pin_memory`` on CUDA, and
    ``persistent_workers`` (only meaningful with workers) when the loader is iterated once per epoch."""
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": torch.device(device).type == "cuda"}
    if num_workers > 0:
        options["persistent_workers"] = persistent
        options["prefetch_factor"] = 2
    return options


def close_loader(loader: Any) -> None:
    """Stop a loader's worker processes now (a persistent loader keeps them until it is garbage-collected)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        loader._iterator = None
