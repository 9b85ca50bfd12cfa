"""torch.distributed helpers for torchrun: process group set-up and a gradient-keeping all_gather.

One process (no ``WORLD_SIZE`` in the environment) is the default and needs no process group. Under torchrun,
``gather_with_grad`` returns the concatenation of every rank's tensor in rank order, where the local part is the
autograd-tracked input itself, so the contrastive loss and the cross-batch memory see the global batch.
:func:`process_group` initialises the group of one command and destroys it after; ``DistContext.current()``
describes a process group that something else already initialised (``embed.extract``
uses it to shard extraction automatically); ``all_gather_object`` / ``broadcast_object`` move picklable results.
:class:`RankZero` runs a part that rank 0 does alone (e.g. training a faiss index and writing its folder) while the
other ranks wait for its value or its error.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Any

from vitrieval.lazy import LazyModule

torch = LazyModule("torch")
dist = LazyModule("torch.distributed")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, backend: str | None = None) -> DistContext:
        """Initialise the default process group when launched by torchrun (NCCL on GPU, gloo on CPU)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
            if chosen == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend=chosen)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @classmethod
    def current(cls) -> DistContext:
        """The already initialised default process group (one process when there is none); initialises nothing."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' ``x`` concatenated in rank order (sizes may differ); the local part keeps its gradient."""
        if not self.enabled:
            return x
        n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.int64)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        counts = [int(s.item()) for s in sizes]
        biggest = max(counts)
        padded = x.new_zeros((biggest, *x.shape[1:]))
        padded[: x.shape[0]] = x.detach()
        parts = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        pieces = [p[:c] for p, c in zip(parts, counts)]
        pieces[self.rank] = x
        return torch.cat(pieces)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order (``[obj]`` in one process)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s picklable ``obj`` on every rank (what the other ranks pass is ignored)."""
        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def shutdown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def process_group(backend: str | None = None) -> Iterator[DistContext]:
    """The process group of one command (or one :func:`vitrieval.training.train`): under torchrun it is initialised
    here unless something already did (:meth:`DistContext.from_env`), and the one initialised here is destroyed on
    the way out, error or not. A process that exits with its gloo group alive can abort in the group's destructor
    ("terminate called without an active exception", SIGABRT after the work is done); one that did not create the
    group leaves it to its creator."""
    created = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (dist.is_available() and dist.is_initialized())
    ctx = DistContext.from_env(backend)
    try:
        yield ctx
    finally:
        if created:
            ctx.shutdown()


RANK0_WAIT_TIMEOUT = timedelta(hours=24)
"""How long :class:`RankZero`'s other ranks wait for rank 0 (on a gloo group of their own: NCCL's default collective
timeout, 10 min, is shorter than e.g. training a large IVF index)."""


class RankZero:
    """The parts of a job that rank 0 does alone, under torchrun: the other ranks wait for its outcome.

    They wait on a gloo group of their own with ``timeout`` (CPU objects only), so that NCCL's 10-minute default
    does not cut a long rank-0 step short. Without a process group it only re-raises::

        with RankZero(ctx) as rank0:
            value, failure = None, None
            if ctx.is_main:
                try:
                    value = work()
                except Exception as exc:
                    failure = exc
            value = rank0.share(value, failure)  # rank 0's value everywhere, or its error raised everywhere
    """

    def __init__(self, ctx: DistContext, timeout: timedelta = RANK0_WAIT_TIMEOUT) -> None:
        self.ctx = ctx
        self.timeout = timeout
        self.group: Any = None

    def __enter__(self) -> RankZero:
        if self.ctx.enabled:
            self.group = dist.new_group(backend="gloo", timeout=self.timeout)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.group is not None:
            dist.destroy_process_group(self.group)
            self.group = None

    def check_same(self, value: str, message: str) -> None:
        """Raise ``ValueError(message)`` on every rank unless every rank passes the same ``value``."""
        if self.group is None:
            return
        values: list[Any] = [None] * self.ctx.world_size
        dist.all_gather_object(values, value, group=self.group)
        if len(set(values)) > 1:
            raise ValueError(message)

    def share(self, value: Any, failure: BaseException | None = None) -> Any:
        """Rank 0's ``value`` on every rank, or rank 0's ``failure`` raised on every rank.

        Under torchrun the raised errors (rank 0's own and the others' copies) carry ``raised_on_rank = 0``, so
        that a command can have rank 0 alone report them. The other ranks' ``value`` and ``failure`` are ignored.
        """
        if self.group is not None:
            box = [(value, portable_exception(failure)) if self.ctx.is_main else None]
            dist.broadcast_object_list(box, src=0, group=self.group)
            value, remote = box[0]
            if remote is not None:
                failure = failure if self.ctx.is_main else remote
                try:
                    failure.raised_on_rank = 0
                except AttributeError:
                    pass
        if failure is not None:
            raise failure
        return value


def portable_exception(exc: BaseException | None) -> BaseException | None:
    """``exc`` if it survives pickling (to be sent to the other ranks), else a RuntimeError with its message."""
    if exc is None:
        return None
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
