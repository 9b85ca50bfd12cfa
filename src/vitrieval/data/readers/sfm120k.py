"""retrieval-SfM-120k (Radenović, Tolias & Chum): the landmark fine-tuning set of cirtorch, ``sfm120k``.

Layout (cirtorch's ``data/train/``)::

    retrieval-SfM-120k/
      retrieval-SfM-120k.pkl      {"train": db, "val": db}
      ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>     (no file extension; cirtorch's ``cid2filename``)

Each ``db`` is a dict with ``cids`` (image ids, strings), ``cluster`` (one 3D-model id per image), ``qidxs`` and
``pidxs`` (the query–positive pairs, indices into ``cids``) and possibly ``bbxs`` (ignored). The official file
holds 91,642 train images (551 models, 181,697 pairs) and 6,403 val images (162 models, 1,691 pairs).

The table lists every ``train`` image in pickle order (split ``train``), then every ``val`` image (split ``test``,
query and gallery), label = the image's cluster (3D-model) id, ``bbox`` ``None``.

Extras
------
``pairs``
    ``{"train": (n, 2) int64, "test": (m, 2) int64}``: the (query, positive) pairs. **Indices are relative to the
    split**: row ``(q, p)`` of ``pairs["train"]`` means ``table.split("train")[q]`` and ``[p]`` (the pickle's own
    ``train`` indices); ``pairs["test"]`` indexes ``table.split("test")``. :meth:`ImageTable.split` and
    :meth:`ImageTable.select` copy ``extras`` unchanged, so the indices stay right after ``split()`` but not after
    any other selection.
``clusters_are_labels``
    ``True``: labels are 3D-model ids (images of one model are positives only where a pair says so).
``pkl``
    The pickle that was read (absolute path).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vitrieval.data.readers._common import load_restricted_pickle
from vitrieval.data.table import ImageTable, Record

DEFAULT_NAME = "retrieval-SfM-120k"
#: The pickle's split names and the table split each becomes.
SPLIT_OF = {"train": "train", "val": "test"}
_LAYOUT = (f"  {DEFAULT_NAME}/                     (the data root, its parent, or the .pkl itself)\n"
           f"    {DEFAULT_NAME}.pkl              dict: train / val -> cids, cluster, qidxs, pidxs\n"
           f"    ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>")


def cid2filename(cid: str, prefix: str | Path) -> str:
    """cirtorch's image path of ``cid`` under ``prefix`` (the ``ims`` folder), as a string.

    Same result as ``os.path.join(prefix, cid[-2:], cid[-4:-2], cid[-6:-4], cid)``, three times faster (the real
    file lists ~98k images).
    """
    base = os.fspath(prefix)
    lead = base if base.endswith(os.sep) else base + os.sep
    return os.sep.join((lead + cid[-2:], cid[-4:-2], cid[-6:-4], cid))


def find_sfm120k_files(root: str | Path, name: str = DEFAULT_NAME) -> tuple[Path, Path]:
    """``(pkl, ims)`` for ``root`` = the dataset folder, its parent, or the ``.pkl``; raises naming what was sought."""
    given = Path(root).expanduser()
    if given.is_file():
        pkl = given
    else:
        if not given.exists():
            raise FileNotFoundError(f"sfm120k: data root {given} does not exist\nexpected layout:\n{_LAYOUT}")
        candidates = [given / f"{name}.pkl", given / name / f"{name}.pkl"]
        pkl = next((c for c in candidates if c.is_file()), None)
        if pkl is None:
            looked = "\n".join(f"  {c}" for c in candidates)
            raise FileNotFoundError(f"sfm120k: no {name}.pkl under {given}; looked for\n{looked}\n"
                                    f"expected layout:\n{_LAYOUT}")
    pkl = pkl.resolve()
    ims = pkl.parent / "ims"
    if not ims.is_dir():
        raise FileNotFoundError(f"sfm120k: image folder not found: {ims} (beside {pkl.name})\n"
                                f"expected layout:\n{_LAYOUT}")
    return pkl, ims


def _int_list(values: Any, pkl: Path, where: str) -> np.ndarray:
    try:
        arr = np.asarray(list(values))
    except TypeError:
        raise ValueError(f"{pkl}: {where} must be a list of integers, got {type(values).__name__}") from None
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{pkl}: {where} must be a flat list of integers, got dtype {arr.dtype} shape {arr.shape}")
    return arr.astype(np.int64)


def _cids(values: Any, pkl: Path, split: str) -> list[str]:
    cids = [v.decode() if isinstance(v, bytes) else v for v in values]
    for i, cid in enumerate(cids):
        if not isinstance(cid, str) or len(cid) < 6:
            raise ValueError(f"{pkl}: {split}['cids'][{i}] must be an image id of at least 6 characters "
                             f"(cid2filename needs them), got {cid!r}")
    return cids


def _pairs(db: dict, clusters: np.ndarray, cids: Sequence[str], pkl: Path, split: str) -> np.ndarray:
    """Validated ``(n, 2)`` int64 (query, positive) pairs of one split."""
    q = _int_list(db["qidxs"], pkl, f"{split}['qidxs']")
    p = _int_list(db["pidxs"], pkl, f"{split}['pidxs']")
    if len(q) != len(p):
        raise ValueError(f"{pkl}: {split} has {len(q)} qidxs but {len(p)} pidxs (one positive per query)")
    n = len(cids)
    for what, idx in (("qidxs", q), ("pidxs", p)):
        bad = np.flatnonzero((idx < 0) | (idx >= n))
        if len(bad):
            raise ValueError(f"{pkl}: {len(bad):,} {split}['{what}'] out of range [0, {n}); first: "
                             f"{what}[{bad[0]}] = {idx[bad[0]]}")
    cross = np.flatnonzero(clusters[q] != clusters[p])
    if len(cross):
        k = int(cross[0])
        qi, pi = int(q[k]), int(p[k])
        raise ValueError(f"{pkl}: {len(cross):,} {split} pair(s) join different clusters; first: pair {k} = "
                         f"(query {qi} {cids[qi]!r}, cluster {clusters[qi]}; positive {pi} {cids[pi]!r}, "
                         f"cluster {clusters[pi]})")
    return np.stack([q, p], axis=1) if len(q) else np.zeros((0, 2), dtype=np.int64)


def _read_split(db: Any, pkl: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(cids, clusters, pairs)`` of one pickle split, validated."""
    required = ("cids", "cluster", "qidxs", "pidxs")
    if not isinstance(db, dict) or not set(required) <= set(db):
        keys = sorted(db) if isinstance(db, dict) else type(db).__name__
        raise ValueError(f"{pkl}: {split!r} must be a dict with keys {', '.join(required)}; got {keys}")
    cids = _cids(db["cids"], pkl, split)
    clusters = _int_list(db["cluster"], pkl, f"{split}['cluster']")
    if len(clusters) != len(cids):
        raise ValueError(f"{pkl}: {split} has {len(cids)} cids but {len(clusters)} cluster ids (one per image)")
    return cids, clusters, _pairs(db, clusters, cids, pkl, split)


def load_sfm120k_db(pkl: str | Path) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    """Load and validate the pickle: ``{"train": (cids, clusters, pairs), "val": (...)}`` (restricted unpickler)."""
    pkl = Path(pkl)
    raw = load_restricted_pickle(pkl)
    if not isinstance(raw, dict) or not set(SPLIT_OF) <= set(raw):
        keys = sorted(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{pkl}: expected a dict with keys 'train' and 'val'; got {keys}")
    return {split: _read_split(raw[split], pkl, split) for split in SPLIT_OF}


def read_sfm120k(root: str | Path, name: str = DEFAULT_NAME) -> ImageTable:
    """Read retrieval-SfM-120k from ``root``: the ``retrieval-SfM-120k`` folder, its parent, or the ``.pkl``.

    ``name`` is the pickle's stem looked for in a folder (``retrieval-SfM-120k``). See the module docstring for
    the table and its ``extras`` (pair indices are relative to their split).
    """
    pkl, ims = find_sfm120k_files(root, name)
    db = load_sfm120k_db(pkl)
    records: list[Record] = []
    pairs: dict[str, np.ndarray] = {}
    for pkl_split, split in SPLIT_OF.items():
        cids, clusters, split_pairs = db[pkl_split]
        records.extend(Record(cid2filename(cid, str(ims)), int(c), split, True, True)
                       for cid, c in zip(cids, clusters.tolist()))
        pairs[split] = split_pairs
    extras = {"pairs": pairs, "clusters_are_labels": True, "pkl": str(pkl)}
    return ImageTable(records, "sfm120k", extras)
