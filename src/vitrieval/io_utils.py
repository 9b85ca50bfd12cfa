"""Atomic file writes: a crash never leaves a half-written checkpoint, index or report behind.

Write to a temporary file in the same directory, flush and fsync it, then ``os.replace`` it over the target
(atomic on POSIX and Windows for a same-filesystem rename).

The temporary file is created with mode ``0o666`` filtered by the process umask (what ``open(path, "w")`` gives),
not ``tempfile.mkstemp``'s ``0o600``: a model, index or report is readable by whoever the user's umask lets read it
(0644 under umask 022), e.g. a service account that serves the index. Every writer (safetensors, ``torch.save``,
``faiss.write_index``, ONNX, JSON, HTML) writes into this path; its mode is set again before the rename, since some
(safetensors) replace the file with one of their own.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp(target)
    mode = stat.S_IMODE(tmp_path.stat().st_mode)  # 0o666 & ~umask, as the kernel applied it
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)  # a writer that replaced the file (safetensors writes its own 0600 file) gets it too
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def create_empty(path: Path) -> None:
    """Create the new, empty file ``path`` with the umask's mode (``0o666 & ~umask``); ``FileExistsError`` if it
    exists. For writers that create their own file with another mode (SQLite: 0644 whatever the umask), which keep
    the mode of a file that already exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    os.close(fd)


def _create_temp(target: Path) -> Path:
    """Create a new, empty, uniquely named file beside ``target`` with the umask's mode (``0o666 & ~umask``)."""
    for _ in range(100):
        candidate = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            create_empty(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary file beside {target}")


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | Path, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")
