"""``journal.log``: the journal of a format-3 index folder, read (never written) so that such a folder loads with its
pending writes and its first write moves them into ``journal.sqlite`` (:mod:`vitrieval.index.journal`).

One record on disk::

    <length: uint32 LE> <crc32 of the payload: uint32 LE> <payload: `length` bytes of UTF-8 JSON>

    payload = {"seq": n, "op": "add", "ids": [...], "entries": [[path, label, class_name], ...],
               "vectors": base64 float32, "dim": d}
            | {"seq": n, "op": "remove", "ids": [...]}

A record cut short or failing its checksum *at the end* of the file is the torn tail of a write that was killed
before its fsync returned: left out with a warning naming the file and the offset. A bad record with good records
after it cannot come from a crash: :class:`~vitrieval.index.journal_write.JournalError` names the file and the
byte offset.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np

from vitrieval.index.journal_write import JOURNAL_FIX, JournalError, Write

LEGACY_JOURNAL_FILE = "journal.log"
_HEADER = struct.Struct("<II")

log = logging.getLogger(__name__)


def encode_record(seq: int, write: Write) -> bytes:
    """``write`` as one ``journal.log`` record (the format-3 writer's bytes: for the fixtures of that format)."""
    body: dict = {"seq": seq, "op": write.op, "ids": [int(i) for i in write.ids]}
    if write.op == "add":
        assert write.vectors is not None
        body["entries"] = [list(e) for e in write.entries]
        body["dim"] = int(write.vectors.shape[1])
        body["vectors"] = base64.b64encode(np.ascontiguousarray(write.vectors, dtype="<f4").tobytes()).decode()
    payload = json.dumps(body).encode("utf-8")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes) -> Write:
    body = json.loads(payload)
    ids = np.asarray(body["ids"], dtype=np.int64)
    if body["op"] == "remove":
        return Write("remove", ids, seq=int(body["seq"]))
    vectors = np.frombuffer(base64.b64decode(body["vectors"]), dtype="<f4").reshape(-1, int(body["dim"]))
    entries = [(str(e[0]), None if e[1] is None else int(e[1]), None if len(e) < 3 or e[2] is None else str(e[2]))
               for e in body["entries"]]
    return Write("add", ids, entries, vectors.astype(np.float32), seq=int(body["seq"]))


def read_legacy_journal(path: Path) -> list[Write]:
    """The writes of the ``journal.log`` at ``path`` (a torn tail left out, with a warning)."""
    if not path.is_file():
        raise JournalError(f"{path} is not a file: {JOURNAL_FIX}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"{path} cannot be read ({exc.strerror}): fix its permissions or restore it") from None
    writes: list[Write] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            _torn(path, offset, len(data))
            break
        length, crc = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if end > len(data):
            _torn(path, offset, len(data))
            break
        payload = data[offset + _HEADER.size:end]
        try:
            write = _decode(payload) if zlib.crc32(payload) == crc else None
        except (ValueError, KeyError, TypeError):
            write = None
        if write is None:
            if end == len(data):
                _torn(path, offset, len(data))
                break
            raise JournalError(f"{path}: the record at byte {offset} is damaged (checksum or content) and "
                               f"{len(data) - end} bytes of records follow it: not a crash, a damaged copy; "
                               f"{JOURNAL_FIX}")
        writes.append(write)
        offset = end
    return writes


def _torn(path: Path, offset: int, size: int) -> None:
    log.warning("%s: the last %d byte(s), from offset %d, are an incomplete record (a write killed before it was "
                "acknowledged): left out", path, size - offset, offset)
