"""The resumable shard cache of a build: descriptors written shard by shard, so a rerun embeds only what is missing.

A build cuts its collection into shards of ``shard_size`` consecutive images and writes each finished one into
``<index>/shards/`` as ``NNNNN.npy`` (float32 descriptors of the readable images), ``NNNNN.csv`` (``path,label``
of its rows, in order: the open-format side, for tools outside vitrieval) and ``NNNNN.json``::

    {"key": ..., "count": n, "dim": d, "rows": [[path, label], ...], "bad": [unreadable paths]}

``vitrieval embed`` writes exactly these shards (and ``index`` over the same folder, images and model reuses them).
The key (:func:`shard_key`) hashes the model fingerprint, the preprocessing and the shard's records, so a shard is
reused only for exactly the same input. Both files are written atomically, the ``.json`` last.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitrieval.data.table import Record
from vitrieval.io_utils import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
"""The cache's folder inside an index folder."""

DEFAULT_SHARD_SIZE = 10_000
"""Images per descriptor shard: the unit of work a rerun of an interrupted build does not repeat."""

CachedShard = tuple[np.ndarray, list[Record], list[str]]
"""A finished shard: its descriptors, the records of their rows, and its unreadable paths."""


def split_records(records: Sequence[Record], shard_size: int) -> list[Sequence[Record]]:
    """``records`` cut into consecutive shards of ``shard_size`` (the last one shorter)."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be > 0, got {shard_size}")
    return [records[s:s + shard_size] for s in range(0, len(records), shard_size)]


def shard_key(records: Sequence[Record], fingerprint: str, preprocessing: dict[str, Any]) -> str:
    """What a shard was made from: sha256 of the model fingerprint, the preprocessing and the records (24 hex)."""
    h = hashlib.sha256(json.dumps([fingerprint, preprocessing], sort_keys=True).encode())
    for r in records:
        # surrogateescape: a file name that is not UTF-8 (held as surrogates by Python) hashes as its own bytes
        h.update(f"{r.path}\t{r.label}\t{r.bbox}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def shard_paths(shard_dir: Path, s: int) -> tuple[Path, Path]:
    """The ``.npy`` and ``.json`` files of shard ``s``."""
    return shard_dir / f"{s:05d}.npy", shard_dir / f"{s:05d}.json"


def shard_csv(shard_dir: Path, s: int) -> Path:
    """The ``path,label`` table beside shard ``s``'s descriptors."""
    return shard_dir / f"{s:05d}.csv"


def save_npy(path: Path, array: np.ndarray) -> None:
    """``array`` as float32 ``.npy``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array, dtype=np.float32))


def write_shard(shard_dir: Path, s: int, key: str, descriptors: np.ndarray, kept: Sequence[Record],
                bad: Sequence[str]) -> None:
    """Write finished shard ``s``: its descriptors, then the metadata that makes it reusable."""
    npy, meta = shard_paths(shard_dir, s)
    save_npy(npy, descriptors)
    with atomic_path(shard_csv(shard_dir, s)) as tmp, open(tmp, "w", newline="", encoding="utf-8",
                                                            errors="surrogateescape") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows([r.path, r.label] for r in kept)
    atomic_write_json(meta, {"key": key, "count": len(kept), "dim": int(descriptors.shape[1]),
                             "rows": [[r.path, r.label] for r in kept], "bad": list(bad)})


def read_shard(shard_dir: Path, s: int, key: str) -> CachedShard | None:
    """A finished shard of this exact input (same images, model and preprocessing), or ``None``."""
    npy, meta_path = shard_paths(shard_dir, s)
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            return None
        descriptors = np.load(npy, mmap_mode="r")
    except (OSError, ValueError) as exc:
        log.warning("shard %s unreadable (%s); embedding it again", npy, exc)
        return None
    if descriptors.ndim != 2 or len(descriptors) != int(meta["count"]):
        return None
    records = [Record(p, int(label)) for p, label in meta["rows"]]
    return descriptors.astype(np.float32, copy=False), records, list(meta.get("bad", []))


def read_any_shard(shard_dir: Path, s: int) -> tuple[np.ndarray, list[Record]]:
    """Shard ``s`` whatever made it (descriptors computed elsewhere: ``vitrieval index --descriptors DIR``): its
    descriptors and the records of their rows; a ``ValueError`` naming the file when it is incomplete or damaged."""
    npy, meta_path = shard_paths(shard_dir, s)
    try:
        meta = json.loads(meta_path.read_text())
        descriptors = np.load(npy, mmap_mode="r")
        records = [Record(str(p), -1 if label is None else int(label)) for p, label in meta["rows"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"descriptor shard {npy} (or its {meta_path.name}) is incomplete or damaged ({exc}); "
                         "embed it again") from None
    if descriptors.ndim != 2 or len(descriptors) != len(records):
        raise ValueError(f"descriptor shard {npy} holds {descriptors.shape} descriptors for {len(records)} rows of "
                         f"{meta_path.name}; embed it again")
    return np.asarray(descriptors, dtype=np.float32), records


def read_cached_shards(shard_dir: Path, keys: Sequence[str]) -> dict[int, CachedShard]:
    """Every shard of ``keys`` (one per shard, in order) already in ``shard_dir`` (created if missing)."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    cached = {}
    for s, key in enumerate(keys):
        found = read_shard(shard_dir, s, key)
        if found is not None:
            cached[s] = found
    return cached


def remove_stale_shards(shard_dir: Path, n_shards: int) -> None:
    """Delete the shard files numbered ``n_shards`` and above (left by a former, larger build)."""
    for p in shard_dir.iterdir():
        m = re.fullmatch(r"(\d{5})\.(npy|json|csv)", p.name)
        if m and int(m.group(1)) >= n_shards:
            p.unlink()
