"""Real file-system faults for the tests: a shell run in a private mount namespace, where it may mount a small
tmpfs (filled up, or remounted read-only) without touching the machine's mounts.

``unshare -rm`` (a user and mount namespace) needs no privileges where unprivileged user namespaces are allowed;
elsewhere the tests that need it are skipped with a message saying why.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PYTHON = shlex.quote(sys.executable)
"""The interpreter of the tests, for the commands run inside."""


@functools.lru_cache(maxsize=1)
def _why_not() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    with tempfile.TemporaryDirectory() as probe:
        done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe}"],
                              capture_output=True, text=True)
    return None if done.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {done.stderr.strip()}"


def in_mount_namespace(shell: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``shell`` (sh) in a private mount namespace, with vitrieval's sources on ``PYTHONPATH``; skips the
    test where such namespaces are not allowed."""
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(["unshare", "-rm", "sh", "-c", shell], capture_output=True, text=True, env=env,
                          timeout=timeout)


def tmpfs_with(mount: Path, copy: Path, size: str = "8m") -> str:
    """The shell that mounts a ``size`` tmpfs at ``mount`` and copies the folder ``copy`` into it."""
    mount.mkdir(parents=True, exist_ok=True)
    return (f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount))} && "
            f"cp -r {shlex.quote(str(copy))} {shlex.quote(str(mount))}/")


def fill(mount: Path) -> str:
    """The shell that fills the file system at ``mount`` (a file of zeros until ENOSPC)."""
    return f"(dd if=/dev/zero of={shlex.quote(str(mount / 'fill'))} bs=4096 2>/dev/null; true)"


def read_only(mount: Path) -> str:
    return f"mount -o remount,ro {shlex.quote(str(mount))}"
