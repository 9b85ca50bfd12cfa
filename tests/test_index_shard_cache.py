"""vitrieval.index.shard_cache: the key of a shard, its files, reading it back, and removing stale shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vitrieval.data.table import Record
from vitrieval.index.shard_cache import (
    read_cached_shards,
    read_shard,
    remove_stale_shards,
    shard_key,
    split_records,
    write_shard,
)

PREP = {"resize": "shorter", "amp": "off"}
RECORDS = [Record(f"/data/{i}.png", i % 3) for i in range(5)]


def test_the_key_is_stable_and_changes_with_model_preprocessing_and_records() -> None:
    key = shard_key([Record("/data/a.png", 3), Record("/data/b.png", -1, bbox=(1.0, 2.0, 30.0, 40.0))],
                    "0123456789abcdef", PREP)
    assert key == "63a705ad6290ed19f03c301c"  # shard caches written before this key stay valid
    base = shard_key(RECORDS, "fp", PREP)
    assert base == shard_key(list(RECORDS), "fp", {"amp": "off", "resize": "shorter"})  # key order is irrelevant
    assert len({base, shard_key(RECORDS, "fp2", PREP), shard_key(RECORDS, "fp", {**PREP, "amp": "auto"}),
                shard_key(RECORDS[:4], "fp", PREP), shard_key(RECORDS[::-1], "fp", PREP)}) == 5


def test_split_records_into_consecutive_shards() -> None:
    assert [len(s) for s in split_records(list(range(25)), 10)] == [10, 10, 5]
    assert split_records(RECORDS, 10)[0] == RECORDS and split_records([], 10) == []
    with pytest.raises(ValueError, match="shard_size must be > 0, got 0"):
        split_records(RECORDS, 0)


def test_a_written_shard_reads_back_only_for_its_key(tmp_path: Path) -> None:
    key = shard_key(RECORDS, "fp", PREP)
    descriptors = np.arange(4 * 6, dtype=np.float64).reshape(4, 6)
    write_shard(tmp_path, 3, key, descriptors, RECORDS[:4], ["/data/4.png"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00003.csv", "00003.json", "00003.npy"]
    # the open-format table beside the descriptors: path,label of its rows, in order
    assert (tmp_path / "00003.csv").read_text().splitlines() == ["path,label"] + [f"{r.path},{r.label}"
                                                                                   for r in RECORDS[:4]]
    found = read_shard(tmp_path, 3, key)
    assert found is not None
    got, records, bad = found
    assert got.dtype == np.float32 and np.array_equal(got, descriptors.astype(np.float32))
    assert records == RECORDS[:4] and bad == ["/data/4.png"]
    assert read_shard(tmp_path, 3, "another key") is None and read_shard(tmp_path, 2, key) is None
    assert list(read_cached_shards(tmp_path, ["k0", "k1", "k2", key])) == [3]
    (tmp_path / "00003.npy").write_bytes(b"not a numpy file")
    assert read_shard(tmp_path, 3, key) is None  # unreadable: embedded again


def test_stale_shards_are_removed_and_nothing_else(tmp_path: Path) -> None:
    names = [f"{s:05d}.{x}" for s in range(4) for x in ("csv", "json", "npy")] + ["notes.txt", "00003.npy.tmp"]
    for name in names:
        (tmp_path / name).write_text("x")
    remove_stale_shards(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.csv", "00000.json", "00000.npy", "00001.csv",
                                                          "00001.json", "00001.npy", "00003.npy.tmp", "notes.txt"]
