"""Launching the multi-process tests: a clean environment, a free port, torchrun, and a launch that cannot hang.

Used by the tests that run 2 gloo ranks on CPU (training, tuple training, indexing); each of those files is also
the worker script that torchrun starts.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict[str, str]:
    """One thread per process, unbuffered output, and no torchrun variables inherited from the caller."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def torchrun(args: list[str], nproc: int = 2) -> list[str]:
    """The command line that starts ``args`` (a script and its arguments) on ``nproc`` local ranks."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
            "127.0.0.1", "--master_port", str(free_port()), *args]


def launch(cmd: list[str], cwd: Path, log: Path, timeout: float = 240) -> str:
    """Run ``cmd`` (its own process group: a hang is killed with every worker), keep its output in ``log``, fail
    the test on a timeout or a non-zero exit, and return the output."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        log.write_text(out)
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s (a collective that not every rank joined?):\n"
                    f"{out[-6000:]}")
    log.write_text(out)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def write_tracker(marks: Path, rank: int) -> Callable[[Callable, str], Callable]:
    """``tracked(fn, what)``: ``fn`` wrapped so that every call first appends a line to ``marks/<what>.rank<r>``
    (the multi-process tests patch writers with it to prove that only rank 0 writes)."""
    marks.mkdir(parents=True, exist_ok=True)

    def tracked(fn: Callable, what: str) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with (marks / f"{what}.rank{rank}").open("a") as fh:
                fh.write("x\n")
            return fn(*args, **kwargs)
        return wrapper

    return tracked
