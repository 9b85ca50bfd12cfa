"""A format-3 folder's ``journal.log`` (vitrieval.index.journal_log), read to load such a folder and to move its
writes into ``journal.sqlite``: a torn last record (a write killed before it was acknowledged) is left out with a
warning naming the offset; a damaged record with records after it is an error naming the file and the offset."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from vitrieval.index.journal import JournalError, Write
from vitrieval.index.journal_log import LEGACY_JOURNAL_FILE, encode_record, read_legacy_journal


def _log(tmp_path):
    rng = np.random.default_rng(0)
    writes = [Write("add", np.array([5, 6]), [("a.png", 3), ("b.png", None, "dogs")],
                    rng.standard_normal((2, 8)).astype(np.float32)),
              Write("remove", np.array([5])),
              Write("add", np.array([7]), [("c.png", 1)], rng.standard_normal((1, 8)).astype(np.float32))]
    path = tmp_path / LEGACY_JOURNAL_FILE
    path.write_bytes(b"".join(encode_record(i + 1, w) for i, w in enumerate(writes)))
    return path, writes


def test_records_round_trip_exactly(tmp_path):
    path, written = _log(tmp_path)
    read = read_legacy_journal(path)
    assert [(w.seq, w.op, w.ids.tolist(), w.entries) for w in read] == \
        [(i + 1, w.op, w.ids.tolist(), w.entries) for i, w in enumerate(written)]
    assert np.array_equal(read[0].vectors, written[0].vectors) and read[1].vectors is None


@pytest.mark.parametrize("cut", [1, 5, 9, 30])
def test_a_torn_last_record_is_left_out_with_a_warning(tmp_path, caplog, cut):
    path, _ = _log(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole[:-cut])
    with caplog.at_level(logging.WARNING):
        assert [w.seq for w in read_legacy_journal(path)] == [1, 2]
    assert "incomplete record" in caplog.text and str(path) in caplog.text


def test_a_last_record_with_a_bad_checksum_is_a_torn_one(tmp_path):
    path, _ = _log(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [w.seq for w in read_legacy_journal(path)] == [1, 2]


def test_a_damaged_middle_record_is_an_error_naming_file_and_offset(tmp_path):
    path, _ = _log(tmp_path)
    data = bytearray(path.read_bytes())
    first_len = int.from_bytes(data[:4], "little")
    data[8 + first_len + 10] ^= 0xFF  # inside the second record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match=rf"journal.log: the record at byte {8 + first_len} is damaged"):
        read_legacy_journal(path)
