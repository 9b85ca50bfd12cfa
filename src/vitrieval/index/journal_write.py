"""One write to an index folder as its journal holds it (:class:`Write`), and the journal's errors: shared by
``journal.sqlite`` (:mod:`vitrieval.index.journal`) and a format-3 ``journal.log``
(:mod:`vitrieval.index.journal_log`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vitrieval.index.manifest import IndexFormatError

JOURNAL_FIX = "restore the index folder from a copy, or rebuild it (vitrieval index ... --overwrite)"
"""How every journal error ends: what the user can do (a build replaces a damaged journal with the index)."""


class JournalError(IndexFormatError):
    """A journal that is damaged, not a file, or does not hold the writes it acknowledged: names file and writes."""


class JournalLocked(ValueError):
    """Another process holds the index folder's write lock (a ``ValueError``: the CLI reports it in one line)."""


@dataclass(frozen=True)
class Write:
    """One journalled write: ``op`` ``"add"`` (ids, entries ``(path, label, class_name)``, vectors) or ``"remove"``
    (ids); ``seq`` is its place in the journal (0 until
    :meth:`~vitrieval.index.journal.JournalWriter.append` gives it one)."""

    op: str
    ids: np.ndarray
    entries: Sequence[tuple[str, int | None, str | None]] = field(default_factory=list)
    vectors: np.ndarray | None = None
    seq: int = 0

    def __post_init__(self) -> None:  # (path, label) rows get no class name
        object.__setattr__(self, "entries", [(str(e[0]), e[1], e[2] if len(e) > 2 else None) for e in self.entries])
        object.__setattr__(self, "ids", np.asarray(self.ids, dtype=np.int64))
