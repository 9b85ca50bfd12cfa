"""The write-ahead journal (vitrieval.index.journal): records round-trip, a torn tail is ignored and cut off, a
damaged record in the middle is a clear error, one writer per folder."""

from __future__ import annotations

import numpy as np
import pytest

from vitrieval.index.journal import JOURNAL_FILE, JournalError, JournalLocked, JournalWriter, Record, read_journal


def _records() -> list[Record]:
    rng = np.random.default_rng(0)
    return [Record(1, "add", np.array([5, 6]), [("a.png", 3), ("b.png", None)],
                   rng.standard_normal((2, 8)).astype(np.float32)),
            Record(2, "remove", np.array([5])),
            Record(3, "add", np.array([7]), [("c.png", 1)], rng.standard_normal((1, 8)).astype(np.float32))]


def _write(tmp_path, records):
    writer = JournalWriter(tmp_path)
    for r in records:
        writer.append(r)
    writer.close()
    return tmp_path / JOURNAL_FILE


def test_records_round_trip_exactly(tmp_path):
    written = _records()
    _write(tmp_path, written)
    read, intact = read_journal(tmp_path)
    assert intact == (tmp_path / JOURNAL_FILE).stat().st_size
    assert [(r.seq, r.op, r.ids.tolist(), r.entries) for r in read] == \
        [(r.seq, r.op, r.ids.tolist(), r.entries) for r in written]
    assert np.array_equal(read[0].vectors, written[0].vectors) and read[1].vectors is None


@pytest.mark.parametrize("cut", [1, 5, 9, 30])
def test_a_torn_last_record_is_ignored_and_cut_before_the_next_append(tmp_path, cut):
    path = _write(tmp_path, _records())
    whole = path.read_bytes()
    path.write_bytes(whole[:-cut])  # killed while writing the last record
    read, intact = read_journal(tmp_path)
    assert [r.seq for r in read] == [1, 2]
    writer = JournalWriter(tmp_path)
    assert writer.last_seq == 2
    writer.append(Record(3, "remove", np.array([6])))
    writer.close()
    assert [(r.seq, r.op) for r in read_journal(tmp_path)[0]] == [(1, "add"), (2, "remove"), (3, "remove")]


def test_a_last_record_with_a_bad_checksum_is_a_torn_one(tmp_path):
    path = _write(tmp_path, _records())
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert [r.seq for r in read_journal(tmp_path)[0]] == [1, 2]


def test_a_damaged_middle_record_is_an_error_naming_file_and_offset(tmp_path):
    path = _write(tmp_path, _records())
    data = bytearray(path.read_bytes())
    first_len = int.from_bytes(data[:4], "little")
    data[8 + first_len + 10] ^= 0xFF  # inside the second record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match=rf"journal.log: the record at byte {8 + first_len} is damaged"):
        read_journal(tmp_path)


def test_drop_through_keeps_the_later_records_and_removes_an_empty_journal(tmp_path):
    _write(tmp_path, _records())
    writer = JournalWriter(tmp_path)
    writer.drop_through(2)
    assert [r.seq for r in read_journal(tmp_path)[0]] == [3]
    writer.drop_through(3)
    assert not (tmp_path / JOURNAL_FILE).exists()
    writer.close()


def test_one_writer_per_folder(tmp_path):
    first = JournalWriter(tmp_path)
    with pytest.raises(JournalLocked, match="being written by another process"):
        JournalWriter(tmp_path)
    first.close()
    JournalWriter(tmp_path).close()
