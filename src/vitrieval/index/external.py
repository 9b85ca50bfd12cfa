"""Descriptors computed elsewhere, as ``vitrieval index --descriptors`` reads them (the way large collections are
indexed: a cluster job embeds, another machine builds the index).

Two layouts:

- a ``.npy`` float32 array ``(n, d)`` with a CSV table (``--table``, the ``csv`` dataset's ``path[,label]``) whose
  rows match it one for one;
- a folder of descriptor shards as a build or ``vitrieval embed`` writes them (:mod:`vitrieval.index.shard_cache`:
  ``NNNNN.npy`` with ``NNNNN.json`` holding its rows), given as the folder itself, or as a folder holding them in
  ``shards/``.

:func:`read_descriptors` returns one array and its records; the index is then built by
:meth:`vitrieval.index.Index.from_descriptors`, which checks the dimension against the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitrieval.data.table import Record
from vitrieval.index.shard_cache import SHARDS_DIR, read_any_shard


def read_descriptors(source: str | Path, table: str | Path | None = None) -> tuple[np.ndarray, list[Record]]:
    """The descriptors of ``source`` (a ``.npy`` file with ``table``, or a folder of shards) and their records; a
    ``ValueError`` naming the file for anything that does not match."""
    source = Path(source).expanduser()
    if source.is_dir():
        if table is not None:
            raise ValueError(f"--descriptors {source} is a folder of shards, which name their images: leave --table "
                             "out")
        return _read_shards(source / SHARDS_DIR if (source / SHARDS_DIR).is_dir() else source)
    if source.suffix != ".npy" or not source.is_file():
        raise ValueError(f"--descriptors {source}: give a .npy file (with --table) or a folder of shards")
    if table is None:
        raise ValueError(f"--descriptors {source}: a .npy array needs --table T.csv naming its rows (path,label)")
    try:
        x = np.load(source, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ValueError(f"--descriptors {source} is not a readable .npy array ({exc})") from None
    if x.ndim != 2 or x.dtype.kind != "f":
        raise ValueError(f"--descriptors {source} holds a {x.dtype} array of shape {x.shape}; need float (n, d)")
    from vitrieval.data.collection import collection_table

    records = list(collection_table(str(table)).records)
    if len(records) != len(x):
        raise ValueError(f"--descriptors {source} has {len(x)} rows but --table {table} has {len(records)}: they "
                         "must match one for one")
    return np.asarray(x, dtype=np.float32), records


def _read_shards(folder: Path) -> tuple[np.ndarray, list[Record]]:
    names = sorted(p.stem for p in folder.glob("[0-9][0-9][0-9][0-9][0-9].npy"))
    if not names:
        raise ValueError(f"--descriptors {folder}: no descriptor shards (NNNNN.npy with NNNNN.json) in it")
    arrays, records = [], []
    for expected, name in enumerate(names):
        if int(name) != expected:
            raise ValueError(f"--descriptors {folder}: shard {expected:05d} is missing (an unfinished embedding? "
                             "rerun it)")
        x, rows = read_any_shard(folder, expected)
        arrays.append(x)
        records.extend(rows)
    return np.concatenate(arrays).astype(np.float32, copy=False), records
