"""Descriptors of an image collection cached on disk, keyed by the model that made them: the +R1M distractors.

:func:`cached_descriptors` embeds a collection with the shard machinery of an index build
(:mod:`vitrieval.index.build`, :mod:`vitrieval.index.shard_cache`): shards of ``shard_size`` images, each written
when finished, so an interrupted run resumes where it stopped; under torchrun every shard is embedded by all ranks
together and written by rank 0, so the descriptors are bit for bit those of one process. Its settings are one
:class:`~vitrieval.embed.ExtractionOptions` (plus ``shard_size``, the cache's own); what the cache keys on, the
``preprocessing`` below, is derived from that value and the model (:func:`preprocessing_key`). The folder is

    <cache_root>/<fingerprint>-<h>/      h = sha256(preprocessing, collection)[:12]
        shards/NNNNN.npy, NNNNN.json     the resumable shards (their keys hash fingerprint, preprocessing, records)
        descriptors.npy                  every readable image's descriptor, in collection order (float32, N x D)
        cache.json                       {"fingerprint", "preprocessing", "collection", "digest", "count",
                                          "paths", "skipped"}; written last: the folder is complete

A complete folder whose ``digest`` (one hash of every shard key) equals the request's is read back memory-mapped
without loading the model's work again; a folder of another model or preprocessing is never used (another name,
and shard keys that do not match). ``descriptors.npy`` is a second copy of the shards (disk: 2 x N x D x 4 bytes);
the shards are kept so that a collection that grows re-embeds only its new shards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitrieval.data.collection import ImagesArg, collection_root, collection_table
from vitrieval.distributed import DistContext, RankZero
from vitrieval.embed import ExtractionOptions, resolve_distributed
from vitrieval.index.build import _embed_shards, _Plan
from vitrieval.index.shard_cache import DEFAULT_SHARD_SIZE
from vitrieval.io_utils import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

__all__ = ["CACHE_FILE", "DESCRIPTORS_FILE", "CachedDescriptors", "cache_folder", "cached_descriptors",
           "preprocessing_key"]

CACHE_FILE = "cache.json"
DESCRIPTORS_FILE = "descriptors.npy"


@dataclass
class CachedDescriptors:
    """The cached descriptors (memory-mapped), the paths of their rows, the unreadable files, where they are and
    whether anything had to be embedded."""

    descriptors: np.ndarray
    paths: list[str]
    skipped: list[str]
    directory: Path
    embedded: bool


def cache_folder(cache_root: str | Path, fingerprint: str, preprocessing: dict[str, Any], collection: str) -> Path:
    """``<cache_root>/<fingerprint>-<sha256(preprocessing, collection)[:12]>``."""
    h = hashlib.sha256(json.dumps([preprocessing, collection], sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_root).expanduser() / f"{fingerprint}-{h}"


def _complete(folder: Path, digest: str) -> CachedDescriptors | None:
    """The folder's descriptors when ``cache.json`` says they are those of ``digest``, else ``None``."""
    try:
        meta = json.loads((folder / CACHE_FILE).read_text())
        if not isinstance(meta, dict) or meta.get("digest") != digest:
            return None
        x = np.load(folder / DESCRIPTORS_FILE, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if x.ndim != 2 or len(x) != int(meta.get("count", -1)):
        return None
    return CachedDescriptors(x, list(meta["paths"]), list(meta.get("skipped", [])), folder, embedded=False)


def preprocessing_key(model: Any, options: ExtractionOptions) -> dict[str, Any]:
    """Everything besides the model's weights that changes the descriptors ``model`` makes under ``options``, as the
    cache records it (``cache.json``'s ``"preprocessing"``) and hashes it (folder name, shard keys): derived from
    the two, so the key cannot disagree with the extraction.

    ``resize``, ``amp`` (as asked: ``auto`` resolves by ``device``), ``fast_decode``, the model's ``device`` type,
    ``image_size`` and ``scales`` (1.0 for a plain encoder), and ``pca``: the stage of pool -> [PCA] -> L2 the rows
    are taken at (``options.output``: ``descriptor`` after the PCA, ``normalized`` before it, ``pooled`` before
    the L2 too).
    """
    return {"resize": options.resize, "amp": options.amp, "device": next(model.parameters()).device.type,
            "pca": _PCA_STAGE[options.output], "image_size": int(model.data_config["image_size"]),
            "scales": [float(s) for s in getattr(model, "scales", (1.0,))], "fast_decode": bool(options.fast_decode)}


_PCA_STAGE = {"descriptor": "after", "normalized": "before", "pooled": "pooled"}
"""``preprocessing_key``'s ``pca`` for each :attr:`~vitrieval.embed.ExtractionOptions.output`."""


def cached_descriptors(model: Any, fingerprint: str, images: ImagesArg, cache_root: str | Path,
                       options: ExtractionOptions, *, shard_size: int = DEFAULT_SHARD_SIZE,
                       distributed: bool | DistContext | None = None) -> CachedDescriptors:
    """Descriptors of ``images`` by ``model`` (an encoder, or a wrapper of one such as a ``MultiScaleEncoder``),
    from the cache folder of ``fingerprint`` and :func:`preprocessing_key` (module docstring), embedding what is
    missing in shards of ``shard_size`` images.

    ``options`` (:class:`~vitrieval.embed.ExtractionOptions`) is how they are embedded: its ``output`` says which
    rows are cached (``normalized``: the descriptors before the model's PCA, whose ``fingerprint`` then need not
    name the PCA); unreadable images are always skipped and listed (``skip_bad`` is set). Every rank of a process
    group must call it with the same arguments; every rank gets the result once rank 0 has written the folder.
    """
    ctx = resolve_distributed(distributed)
    table = collection_table(images)
    collection = collection_root(table) or table.name
    preprocessing = preprocessing_key(model, options)
    folder = cache_folder(cache_root, fingerprint, preprocessing, str(collection))
    plan = _Plan.make(table, folder, shard_size, fingerprint, preprocessing)
    with RankZero(ctx) as rank0:
        rank0.check_same(plan.digest, f"the ranks see different distractor images or models ({len(table)} here)")
        done = rank0.share(_complete(folder, plan.digest) is not None if ctx.is_main else None)
        if not done:
            todo = plan.shards_to_embed(ctx, rank0)
            chunks, skipped = _embed_shards(model, plan, todo, dataclasses.replace(options, skip_bad=True), ctx)
            failure = None
            if ctx.is_main:
                try:
                    _write_complete(folder, chunks, skipped, plan.digest, fingerprint, preprocessing, collection)
                except (OSError, ValueError) as exc:
                    failure = exc
            rank0.share(None, failure)
    found = _complete(folder, plan.digest)
    if found is None:
        raise RuntimeError(f"the descriptor cache {folder} is incomplete after extraction")
    found.embedded = not done
    return found


def _write_complete(folder: Path, chunks: list, skipped: list[str], digest: str, fingerprint: str,
                    preprocessing: dict[str, Any], collection: str) -> None:
    """Rank 0: stream the shards into ``descriptors.npy`` (atomically), then ``cache.json``."""
    kept = [(d, records) for d, records in chunks if len(records)]
    if not kept:
        raise ValueError(f"none of the images of {collection} could be read (first: {skipped[:1]})")
    count = sum(len(r) for _, r in kept)
    dim = int(kept[0][0].shape[1])
    with atomic_path(folder / DESCRIPTORS_FILE) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, dim))
        start = 0
        for d, records in kept:
            out[start:start + len(records)] = d
            start += len(records)
        out.flush()
        del out
    atomic_write_json(folder / CACHE_FILE, {
        "fingerprint": fingerprint, "preprocessing": preprocessing, "collection": collection, "digest": digest,
        "count": count, "paths": [r.path for _, records in kept for r in records], "skipped": list(skipped)})
    log.info("%d descriptors cached in %s (%d unreadable skipped)", count, folder, len(skipped))
