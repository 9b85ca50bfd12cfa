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


def _one_failed_compaction(exc: Exception, caplog: pytest.LogCaptureFixture) -> tuple[Compactor, logging.LogRecord]:
    """One compaction of an index whose save raises ``exc``: the compactor and the one log record it wrote."""
    compactor = Compactor(_Failing(exc), max_pending=10 ** 6, interval_s=3600)
    try:
        with caplog.at_level(logging.WARNING):
            compactor.compact()
    finally:
        compactor.index.pending_writes = 0
        compactor.close()
    [record] = caplog.records
    return compactor, record


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_compaction_the_disk_refuses_is_one_warning_line_without_a_traceback(caplog, code):
    compactor, record = _one_failed_compaction(OSError(code, os.strerror(code)), caplog)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage().startswith(f"compaction failed: cannot write /data/cat.idx: {os.strerror(code)} "
                                          f"({errno.errorcode[code]})")
    assert compactor.compactions == 0


def test_any_other_compaction_failure_keeps_its_traceback(caplog):
    compactor, record = _one_failed_compaction(RuntimeError("faiss: write error"), caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None
