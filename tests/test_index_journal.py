"""The journal of an index folder (vitrieval.index.journal, ``journal.sqlite``): writes round-trip exactly with the
sequence numbers the writer gives them; a failed commit (the disk full) leaves it as it was; the high-water mark
makes an emptied, cut or edited journal, and a ``journal_seq`` beyond it, an error naming what is missing; a
format-3 ``journal.log`` is moved in by the first write; one writer per folder."""

from __future__ import annotations

import json
import os
import sqlite3

import numpy as np
import pytest

from vitrieval.index.journal import (
    JOURNAL_FILE,
    JournalError,
    JournalGap,
    JournalLocked,
    JournalWriter,
    Write,
    read_journal,
)
from vitrieval.index.journal_log import LEGACY_JOURNAL_FILE, encode_record

NOT_UTF8 = b"caf\xe9.png".decode("utf-8", "surrogateescape")


def _writes() -> list[Write]:
    rng = np.random.default_rng(0)
    return [Write("add", np.array([5, 6]), [("a.png", 3, "cats"), (NOT_UTF8, None)],
                  rng.standard_normal((2, 8)).astype(np.float32)),
            Write("remove", np.array([5])),
            Write("add", np.array([7]), [("c.png", 1)], rng.standard_normal((1, 8)).astype(np.float32))]


def _journal(directory, writes=None):
    writer = JournalWriter(directory)
    seqs = [writer.append(w) for w in (_writes() if writes is None else writes)]
    writer.close()
    return seqs


def _same(a: Write, b: Write) -> bool:
    same_vectors = (a.vectors is None and b.vectors is None) or np.array_equal(a.vectors, b.vectors)
    return (a.op, a.ids.tolist(), list(a.entries)) == (b.op, b.ids.tolist(), list(b.entries)) and same_vectors


def test_writes_round_trip_exactly_with_the_writers_sequence_numbers(tmp_path):
    written = _writes()
    assert _journal(tmp_path, written) == [1, 2, 3]
    state = read_journal(tmp_path)
    assert state.path == tmp_path / JOURNAL_FILE and state.marked and state.last_seq == 3
    assert [w.seq for w in state.writes] == [1, 2, 3]
    assert all(_same(r, w) for r, w in zip(state.writes, written))
    assert state.writes[0].entries[1] == (NOT_UTF8, None, None)  # a non-UTF-8 name keeps its bytes
    assert state.writes[0].vectors.dtype == np.float32 and state.writes[1].vectors is None


def test_a_committed_write_is_in_the_file_before_append_returns(tmp_path):
    writer = JournalWriter(tmp_path)
    writer.append(_writes()[0])
    assert [w.seq for w in read_journal(tmp_path).writes] == [1]  # another connection, the writer still open
    writer.close()


def test_the_journal_file_gets_the_umasks_mode(tmp_path):
    old = os.umask(0o027)
    try:
        _journal(tmp_path)
    finally:
        os.umask(old)
    assert oct((tmp_path / JOURNAL_FILE).stat().st_mode & 0o777) == oct(0o640)


def test_a_commit_the_disk_refuses_leaves_the_journal_as_it_was(tmp_path):
    """SQLite's own page limit stands in for a full disk (SQLITE_FULL, as ENOSPC gives); the real one is
    tests/test_faults_storage.py."""
    _journal(tmp_path)
    before = (tmp_path / JOURNAL_FILE).read_bytes()
    writer = JournalWriter(tmp_path)
    db = writer._open()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    big = Write("add", np.arange(100, 400), [(f"{i}.png", None) for i in range(300)],
                np.ones((300, 64), np.float32))
    with pytest.raises(OSError) as refused:
        writer.append(big)
    assert refused.value.errno == 28 and refused.value.filename == str(tmp_path / JOURNAL_FILE)  # ENOSPC
    assert writer.last_seq == 3 and (tmp_path / JOURNAL_FILE).read_bytes() == before
    db.execute("PRAGMA max_page_count = 1073741823")
    assert writer.append(Write("remove", np.array([6]))) == 4  # the failed write took no sequence number
    writer.close()
    assert [w.seq for w in read_journal(tmp_path).writes] == [1, 2, 3, 4]


def test_drop_through_keeps_the_later_writes_and_the_mark(tmp_path):
    _journal(tmp_path)
    writer = JournalWriter(tmp_path)
    writer.drop_through(2)
    assert [w.seq for w in read_journal(tmp_path).writes] == [3]
    writer.drop_through(3)
    writer.close()
    state = read_journal(tmp_path)
    assert state.writes == [] and state.last_seq == 3
    assert state.after(3, tmp_path) == []
    assert JournalWriter(tmp_path).last_seq == 3  # numbering goes on after the mark


def test_the_writes_after_a_generation_must_be_every_acknowledged_one(tmp_path):
    _journal(tmp_path)
    state = read_journal(tmp_path)
    assert [w.seq for w in state.after(0, tmp_path)] == [1, 2, 3]
    assert [w.seq for w in state.after(2, tmp_path)] == [3]
    with pytest.raises(JournalError, match=r"index.json: key 'journal_seq' is 4, beyond the last write .*"
                                           r"journal.sqlite acknowledged \(3\)"):
        state.after(4, tmp_path)  # journal_seq raised by hand


def test_writes_deleted_from_the_journal_are_named(tmp_path):
    _journal(tmp_path)
    db = sqlite3.connect(tmp_path / JOURNAL_FILE)
    with db:
        db.execute("DELETE FROM writes WHERE seq >= 2")  # acknowledged writes 2 and 3 dropped by hand
    db.close()
    with pytest.raises(JournalGap, match=r"journal.sqlite: the acknowledged writes 2..3 since the generation of "
                                         r"index.json \(journal_seq 0\) are missing"):
        read_journal(tmp_path).after(0, tmp_path)


def test_a_hole_in_the_middle_of_the_journal_is_named(tmp_path):
    _journal(tmp_path)
    db = sqlite3.connect(tmp_path / JOURNAL_FILE)
    with db:
        db.execute("DELETE FROM writes WHERE seq = 2")
    db.close()
    with pytest.raises(JournalGap, match=r"the acknowledged write 2 since the generation of index.json "
                                         r"\(journal_seq 1\) is missing"):
        read_journal(tmp_path).after(1, tmp_path)
    assert [w.seq for w in read_journal(tmp_path).after(2, tmp_path)] == [3]  # compacted past the hole: fine


@pytest.mark.parametrize("damage", ["emptied", "cut", "garbage"])
def test_a_damaged_journal_is_one_error_naming_the_file(tmp_path, damage):
    _journal(tmp_path, _writes() * 40)
    path = tmp_path / JOURNAL_FILE
    data = path.read_bytes()
    if damage == "emptied":
        path.write_bytes(b"")
        match = r"journal.sqlite is empty \(0 bytes\)"
    elif damage == "cut":
        path.write_bytes(data[:len(data) // 2 // 4096 * 4096])  # a copy cut at a page boundary
        match = r"journal.sqlite is damaged"
    else:
        path.write_bytes(data[:4096] + bytes(range(256)) * 16 + data[8192:])  # page 2 overwritten
        match = r"journal.sqlite is damaged"
    with pytest.raises(JournalError, match=match):
        read_journal(tmp_path)
    with pytest.raises(JournalError, match=match):
        JournalWriter(tmp_path)
    assert path.read_bytes() != data  # and nothing rewrote it


def test_a_journal_replaced_by_a_folder_is_an_error(tmp_path):
    (tmp_path / JOURNAL_FILE).mkdir()
    with pytest.raises(JournalError, match="journal.sqlite is not a file"):
        read_journal(tmp_path)


def test_a_format_3_journal_log_is_moved_in_by_the_first_write(tmp_path):
    legacy = _writes()
    (tmp_path / "index.json").write_text(json.dumps({"format": "vitrieval-index", "version": 3, "checkpoint": "m",
                                                     "fingerprint": "f", "descriptor_dim": 8, "factory": "Flat",
                                                     "count": 0, "journal_seq": 1}))
    (tmp_path / LEGACY_JOURNAL_FILE).write_bytes(b"".join(encode_record(i + 2, w) for i, w in enumerate(legacy)))
    state = read_journal(tmp_path)  # read as it is
    assert state.path == tmp_path / LEGACY_JOURNAL_FILE and not state.marked and [w.seq for w in state.writes] == \
        [2, 3, 4]
    assert [w.seq for w in state.after(1, tmp_path)] == [2, 3, 4]
    writer = JournalWriter(tmp_path)
    assert writer.append(Write("remove", np.array([7]))) == 5
    writer.close()
    assert not (tmp_path / LEGACY_JOURNAL_FILE).exists()
    moved = read_journal(tmp_path)
    assert moved.marked and moved.last_seq == 5 and [w.seq for w in moved.writes] == [2, 3, 4, 5]
    assert all(_same(a, b) for a, b in zip(moved.writes, legacy))


def test_a_new_journal_starts_its_mark_at_the_folders_journal_seq(tmp_path):
    """A format-3 folder with no journal left, compacted through write 9: the new journal's mark starts at 9, so
    the generation's ``journal_seq`` is never beyond it."""
    (tmp_path / "index.json").write_text(json.dumps({"format": "vitrieval-index", "version": 3, "checkpoint": "m",
                                                     "fingerprint": "f", "descriptor_dim": 8, "factory": "Flat",
                                                     "count": 0, "journal_seq": 9}))
    writer = JournalWriter(tmp_path)
    assert writer.last_seq == 9  # an index loaded from the folder is at write 9 too: no "written meanwhile"
    writer.prepare()
    writer.close()
    state = read_journal(tmp_path)
    assert state.last_seq == 9 and state.after(9, tmp_path) == []


def test_one_writer_per_folder(tmp_path):
    first = JournalWriter(tmp_path)
    with pytest.raises(JournalLocked, match="being written by another process"):
        JournalWriter(tmp_path)
    first.close()
    JournalWriter(tmp_path).close()


CRASH_MID_COMMIT = """
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA cache_size = 1")  # pages spill into the file before the commit: a hot rollback journal
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO writes VALUES (4, 'remove', NULL)")
for p in range(3000):
    db.execute("INSERT INTO write_rows (seq, position, id, path) VALUES (4, ?, ?, ?)", (p, p, os.urandom(300)))
db.execute("UPDATE acknowledged SET last_seq = 4")
os._exit(0)  # killed before COMMIT
"""


def test_a_commit_a_crash_left_half_done_is_rolled_back_or_named(tmp_path, monkeypatch):
    """A writer killed inside its transaction leaves SQLite's hot rollback journal: a reader who may write rolls it
    back (write 4 was never acknowledged, and is absent); one who may not is told so in one line."""
    import subprocess
    import sys

    _journal(tmp_path)
    path = tmp_path / JOURNAL_FILE
    subprocess.run([sys.executable, "-c", CRASH_MID_COMMIT, str(path)], check=True)
    hot = tmp_path / f"{JOURNAL_FILE}-journal"
    assert hot.is_file() and hot.stat().st_size > 0
    with monkeypatch.context() as m:
        m.setattr(os, "access", lambda *a, **k: False)  # as a user who may not write the folder (read-only open)
        with pytest.raises(JournalError, match=r"journal.sqlite: a write a crash left half done "
                                               r"\(journal.sqlite-journal\) must be rolled back"):
            read_journal(tmp_path)
    state = read_journal(tmp_path)  # may write: SQLite rolls the half-done write back
    assert state.last_seq == 3 and [w.seq for w in state.writes] == [1, 2, 3]
    assert not hot.exists() or hot.stat().st_size == 0


def test_a_new_journal_does_not_take_a_stale_rollback_journal_left_beside_its_name(tmp_path):
    """A journal deleted while a crash had left its hot rollback journal beside it: the new journal a writer then
    creates must not have that rollback journal played into it (SQLite would, on the first open)."""
    import subprocess
    import sys

    _journal(tmp_path)
    subprocess.run([sys.executable, "-c", CRASH_MID_COMMIT, str(tmp_path / JOURNAL_FILE)], check=True)
    assert (tmp_path / f"{JOURNAL_FILE}-journal").is_file()
    (tmp_path / JOURNAL_FILE).unlink()
    writer = JournalWriter(tmp_path)
    assert writer.append(Write("remove", np.array([1]))) == 1
    writer.close()
    state = read_journal(tmp_path)
    assert state.last_seq == 1 and [(w.seq, w.op, w.ids.tolist()) for w in state.writes] == [(1, "remove", [1])]
