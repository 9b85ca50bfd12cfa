"""Write a dataset in cirtorch's retrieval-SfM-120k layout (for tests, benchmarks and real-pixel stand-ins).

:func:`write_sfm120k_layout` takes images grouped by cluster (3D model) and writes::

    OUT_ROOT/retrieval-SfM-120k/
      retrieval-SfM-120k.pkl      {"train": db, "val": db}, db = {cids, cluster, qidxs, pidxs}
      ims/<cid[-2:]>/<cid[-4:-2]>/<cid[-6:-4]>/<cid>

exactly what :func:`vitrieval.data.readers.sfm120k.read_sfm120k` (and cirtorch's ``TuplesDataset``) reads.
Image ids are 32 hex digits like cirtorch's (derived from the seed, split, cluster and position, so a run is
reproducible); query–positive pairs join images of one cluster only.

:func:`sfm120k_from_folder` converts a class-per-folder image set (class = cluster) into that layout, e.g. COIL-20
(20 objects x 72 views) as a small real-pixel stand-in.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vitrieval.data.readers.folder import class_dirs, class_images
from vitrieval.data.readers.sfm120k import DEFAULT_NAME, cid2filename
from vitrieval.io_utils import atomic_write_bytes

#: An image to write: a file to copy byte for byte, or a PIL image (saved as JPEG).
ImageSource = str | Path | Image.Image


def make_cid(seed: int, split: str, cluster: int, index: int) -> str:
    """A cirtorch-like image id: 32 hex digits, deterministic in its arguments."""
    return hashlib.md5(f"sfm120k-layout:{seed}:{split}:{cluster}:{index}".encode()).hexdigest()


def cluster_pairs(n: int, pairs_per_cluster: int | None, rng: np.random.Generator) -> list[tuple[int, int]]:
    """(query, positive) positions within a cluster of ``n`` images.

    ``None``: consecutive images, ``(0, 1), (1, 2), …`` (``n - 1`` pairs). An int ``k``: ``k`` distinct ordered
    pairs drawn at random (all ``n (n - 1)`` of them when ``k`` is larger).
    """
    if n < 2:
        return []
    if pairs_per_cluster is None:
        return [(i, i + 1) for i in range(n - 1)]
    if pairs_per_cluster < 0:
        raise ValueError(f"pairs_per_cluster must be >= 0 or None, got {pairs_per_cluster}")
    total = n * (n - 1)
    codes = range(total) if pairs_per_cluster >= total else sorted(
        rng.choice(total, size=pairs_per_cluster, replace=False).tolist())
    # code = q * (n - 1) + r, where r skips the query itself: p = r, or r + 1 from q on
    return [(c // (n - 1), c % (n - 1) + (c % (n - 1) >= c // (n - 1))) for c in codes]


def _write_image(image: ImageSource, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, Image.Image):
        from vitrieval.data.images import to_rgb

        to_rgb(image).save(target, format="JPEG", quality=95)
        return
    source = Path(image)
    if not source.is_file():
        raise FileNotFoundError(f"sfm120k layout: image to copy not found: {source}")
    shutil.copyfile(source, target)


def _write_split(split: str, clusters: Mapping[int, Sequence[ImageSource]], ims: Path,
                 pairs_per_cluster: int | None, seed: int, shuffle: bool) -> dict:
    """Write one split's images; return its pickle entry ``{cids, cluster, qidxs, pidxs}``."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    cids: list[str] = []
    cluster_of: list[int] = []
    pairs: list[tuple[int, int]] = []
    for cluster, images in clusters.items():
        if isinstance(cluster, bool) or not isinstance(cluster, (int, np.integer)):
            raise TypeError(f"sfm120k layout: {split} cluster ids must be ints, got {cluster!r}")
        first = len(cids)
        for k, image in enumerate(images):
            cid = make_cid(seed, split, int(cluster), k)
            _write_image(image, Path(cid2filename(cid, ims)))
            cids.append(cid)
            cluster_of.append(int(cluster))
        pairs.extend((first + q, first + p) for q, p in cluster_pairs(len(cids) - first, pairs_per_cluster, rng))
    order = rng.permutation(len(cids)) if shuffle else np.arange(len(cids))
    position = np.empty(len(cids), dtype=np.int64)
    position[order] = np.arange(len(cids))  # old index -> new index
    return {"cids": [cids[i] for i in order], "cluster": [cluster_of[i] for i in order],
            "qidxs": [int(position[q]) for q, _ in pairs], "pidxs": [int(position[p]) for _, p in pairs]}


def write_sfm120k_layout(out_root: str | Path, train: Mapping[int, Sequence[ImageSource]],
                         val: Mapping[int, Sequence[ImageSource]], pairs_per_cluster: int | None = None,
                         seed: int = 0, shuffle: bool = True, name: str = DEFAULT_NAME) -> Path:
    """Write ``train`` and ``val`` (cluster id -> images) as ``out_root/<name>/`` in cirtorch's layout.

    ``out_root`` plays cirtorch's ``data/train/``. Images are paths (copied byte for byte, format kept; the file
    gets no extension, as in cirtorch) or PIL images (saved as JPEG). ``pairs_per_cluster``: see
    :func:`cluster_pairs` (``None``: consecutive images of each cluster). ``shuffle`` interleaves the clusters in
    the pickle (as in the real file, whose images are not grouped by model); ``seed`` fixes ids, pairs and order.
    Returns the path of the written ``.pkl`` (written last, atomically).
    """
    root = Path(out_root).expanduser() / name
    ims = root / "ims"
    cids_seen: set[str] = set()
    db = {}
    for split, clusters in (("train", train), ("val", val)):
        db[split] = _write_split(split, clusters, ims, pairs_per_cluster, seed, shuffle)
        clash = cids_seen.intersection(db[split]["cids"])
        if clash:
            raise ValueError(f"sfm120k layout: image ids repeat across splits: {sorted(clash)[:3]}")
        cids_seen.update(db[split]["cids"])
    pkl = root / f"{name}.pkl"
    atomic_write_bytes(pkl, pickle.dumps(db, protocol=4))
    return pkl.resolve()


def _class_images(folder_root: Path) -> list[tuple[str, list[Path]]]:
    """``(class name, sorted image files)`` per sub-folder of ``folder_root``, in natural class order."""
    if not folder_root.is_dir():
        raise FileNotFoundError(f"sfm120k_from_folder: {folder_root} does not exist or is not a directory")
    out = []
    for d in class_dirs(folder_root):
        files = class_images(d)
        if files:
            out.append((d.name, files))
    return out


def sfm120k_from_folder(folder_root: str | Path, out_root: str | Path, val_fraction: float = 0.25,
                        pairs_per_cluster: int | None = None, max_classes: int | None = None,
                        max_images_per_class: int | None = None, seed: int = 0, shuffle: bool = True,
                        name: str = DEFAULT_NAME) -> Path:
    """Convert ``folder_root/<class>/<image>`` into the SfM-120k layout under ``out_root/<name>/``; return the pkl.

    Each class becomes one cluster (id = its position in natural name order, ``obj2`` before ``obj10``). The first
    ``max_classes`` classes are used (all when ``None``), each with its first ``max_images_per_class`` images; the
    last ``val_fraction`` of them (at least one, and at least one left for training) become ``val``. Images are
    copied byte for byte.
    """
    classes = _class_images(Path(folder_root).expanduser())
    if max_classes is not None:
        classes = classes[:max_classes]
    if len(classes) < 2:
        raise ValueError(f"sfm120k_from_folder: {folder_root} needs at least 2 class folders with images, "
                         f"found {len(classes)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"sfm120k_from_folder: val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(max(1, round(len(classes) * val_fraction)), len(classes) - 1)
    grouped = {i: files[:max_images_per_class] for i, (_, files) in enumerate(classes)}
    n_train = len(classes) - n_val
    train = {i: grouped[i] for i in range(n_train)}
    val = {i: grouped[i] for i in range(n_train, len(classes))}
    return write_sfm120k_layout(out_root, train, val, pairs_per_cluster, seed, shuffle, name)
