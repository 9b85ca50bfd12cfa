"""vitrieval.index.compaction: a compaction the disk refuses is one WARNING line (retried later), not a traceback; any
other failure keeps its traceback."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from vitrieval.index.compaction import Compactor


class _Failing:
    """An index whose save raises ``exc`` (the compactor's only use of it here)."""

    directory = Path("/data/cat.idx")
    pending_writes = 1

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def save(self) -> None:
        raise self.exc


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_compaction_the_disk_refuses_is_one_warning_line_without_a_traceback(caplog, code):
    compactor = Compactor(_Failing(OSError(code, os.strerror(code))), max_pending=10 ** 6, interval_s=3600)
    try:
        with caplog.at_level(logging.WARNING):
            compactor.compact()
    finally:
        compactor.index.pending_writes = 0
        compactor.close()
    [record] = caplog.records
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage().startswith(f"compaction failed: cannot write /data/cat.idx: {os.strerror(code)} "
                                          f"({errno.errorcode[code]})")
    assert compactor.compactions == 0


def test_any_other_compaction_failure_keeps_its_traceback(caplog):
    compactor = Compactor(_Failing(RuntimeError("faiss: write error")), max_pending=10 ** 6, interval_s=3600)
    try:
        with caplog.at_level(logging.WARNING):
            compactor.compact()
    finally:
        compactor.index.pending_writes = 0
        compactor.close()
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
