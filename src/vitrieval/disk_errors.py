"""What a write the machine refuses tells the user: one line naming the path, the cause and the fix.

A full disk (``ENOSPC``, ``EDQUOT``), a read-only file system (``EROFS``) and a folder or file this user may not
change (``EACCES``, ``EPERM``: another owner, or ``chattr +i``) are faults of the machine, not bugs: the CLI reports
them as its one-line errors (exit 2, :func:`vitrieval.cli.report_error`), the service as a 507 / 503 with the same
sentence (:mod:`vitrieval.serve.writes`), and ``vitrieval serve --write-token-file`` checks before it starts that it
can write its index folder at all (:func:`check_writable`).
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Errnos of a disk (or quota, or file size limit) with no room left."""
READ_ONLY = frozenset({errno.EROFS})
DENIED = frozenset({errno.EACCES, errno.EPERM})
DISK_ERRNOS = FULL | READ_ONLY | DENIED
"""The errnos reported as a fault of the machine (one line) rather than a bug (a traceback)."""

_HINTS = {**{e: "free some space (or raise the quota) and run it again" for e in FULL},
          errno.EROFS: "the file system is mounted read-only: use a folder on a writable one",
          **{e: "this user may not use it (its owner or mode, or an immutable attribute: lsattr): run as its "
                "owner, change its mode, or use another path" for e in DENIED}}


class NotWritable(ValueError):
    """A folder this process cannot write (a ``ValueError``: the CLI reports it in one line)."""


def is_disk_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` of :data:`DISK_ERRNOS`."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def describe(exc: OSError, path: str | Path | None = None) -> str:
    """``PATH: No space left on device (ENOSPC); free some space...``: the path of ``exc`` itself when it names
    one, else ``path`` (a failed ``write`` or ``fsync`` names no file; :func:`naming` gives it one)."""
    where = exc.filename if exc.filename is not None else path
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    cause = f"{exc.strerror or exc} ({name})"
    hint = _HINTS.get(exc.errno or 0)
    return f"{where if where is not None else '(a file it did not name)'}: {cause}" + (f"; {hint}" if hint else "")


@contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Give a disk error raised inside without a file name (a ``write``, ``flush`` or ``fsync`` that failed) the
    name ``path`` (the folder or file being written), so its one line says where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and is_disk_error(exc):
            exc.filename = str(path)
        raise


def check_writable(directory: str | Path) -> None:
    """Raise :class:`NotWritable` unless this process can create and remove a file in ``directory`` (a real probe:
    permissions, ``root_squash``, a read-only mount and ``chattr +i`` all answer it) and change every file and
    folder directly in it (an immutable ``index.json`` or journal would refuse the first write, not the start)."""
    directory = Path(directory)
    try:
        fd, probe = tempfile.mkstemp(prefix=".vitrieval-write-probe.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        exc.filename = str(directory)  # not the probe's own name
        raise NotWritable(f"cannot write {describe(exc)}") from None
    for entry in sorted(directory.iterdir()):
        if not entry.is_symlink() and not os.access(entry, os.W_OK, effective_ids=os.access in
                                                    os.supports_effective_ids):
            raise NotWritable(f"cannot write "
                              f"{describe(PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(entry)))}")
